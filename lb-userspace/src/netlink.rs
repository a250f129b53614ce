//! What the daemon asks of the kernel's networking through rtnetlink: interfaces, VIP
//! addresses, routes to reals and their neighbour (ARP/NDP) entries, and the routes
//! that announce VIPs to a routing daemon.

use std::net::IpAddr;

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, CacheInfo},
    link::{InfoData, InfoVlan, LinkAttribute, LinkInfo, LinkXdp},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType},
    rule::{RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Route(String),
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// Opens a route netlink connection, driven by a task on the current runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// An interface: index and Ethernet address.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// Looks an interface up by name.
pub async fn interface(handle: &Handle, name: &str) -> Result<Interface, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let msg = match links.try_next().await {
        Ok(Some(m)) => m,
        Ok(None) | Err(_) => return Err(NetlinkError::NoInterface(name.to_string())),
    };
    let mut mac = [0u8; 6];
    for a in &msg.attributes {
        if let LinkAttribute::Address(bytes) = a {
            if bytes.len() == 6 {
                mac.copy_from_slice(bytes);
            }
        }
    }
    Ok(Interface {
        name: name.to_string(),
        index: msg.header.index,
        mac,
    })
}

/// Returns: the devices stacked on one of `parents` (a macvlan, keepalived's
/// `use_vmac` device, a VLAN), as (MAC, their own ifindex), for those whose MAC differs
/// from their parent's: the other MACs frames for this host arrive with.
pub async fn child_macs(
    handle: &Handle,
    parents: &[Interface],
) -> Result<std::collections::BTreeMap<[u8; 6], u32>, NetlinkError> {
    let mut out = std::collections::BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(req("listing links"))? {
        let mut parent = None;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                LinkAttribute::Link(p) => parent = Some(*p),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]])
                }
                _ => {}
            }
        }
        let (Some(parent), Some(mac)) = (parent, mac) else {
            continue;
        };
        if parents.iter().any(|p| p.index == parent && p.mac != mac) && mac != [0; 6] {
            out.insert(mac, m.header.index);
        }
    }
    Ok(out)
}

/// A link of the host, as far as the VLAN devices of the attached interfaces matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// The device it is stacked on, if any.
    pub parent: Option<u32>,
    pub mac: [u8; 6],
    /// For a VLAN device: its tag's (TPID, VLAN id), host order.
    pub vlan: Option<(u16, u16)>,
}

/// Returns: every link of the host.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, NetlinkError> {
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(req("listing links"))? {
        let mut l = Link {
            index: m.header.index,
            parent: None,
            mac: [0; 6],
            vlan: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Link(p) => l.parent = Some(*p),
                LinkAttribute::Address(b) if b.len() == 6 => l.mac.copy_from_slice(b),
                LinkAttribute::LinkInfo(infos) => l.vlan = vlan_of(infos),
                _ => {}
            }
        }
        out.push(l);
    }
    Ok(out)
}

/// Returns: the (TPID, VLAN id) of a VLAN device's link info.
fn vlan_of(infos: &[LinkInfo]) -> Option<(u16, u16)> {
    infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vlan(v)) => {
            let id = v.iter().find_map(|x| match x {
                InfoVlan::Id(id) => Some(*id),
                _ => None,
            })?;
            let tpid = v
                .iter()
                .find_map(|x| match x {
                    InfoVlan::Protocol(p) => Some(u16::from(*p)),
                    _ => None,
                })
                .unwrap_or(0x8100);
            Some((tpid, id))
        }
        _ => None,
    })
}

/// Returns: whether `addr` is already configured on interface `index`.
pub async fn has_address(handle: &Handle, index: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
    let mut s = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
        if m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(x) if *x == addr))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Adds `addr` as a host address (/32 or /128) on interface `index`. An IPv6 address
/// skips duplicate address detection, so that it answers neighbour solicitations at once.
pub async fn add_address(handle: &Handle, index: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let mut r = handle.address().add(index, addr, host_prefix(addr));
    if addr.is_ipv6() {
        r.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        // Deprecated (preferred lifetime 0, valid forever): the host still answers
        // neighbour solicitations for the VIP, but never picks it as the source of its
        // own connections, so health probes to a DR real (which holds the VIP too) are
        // not answered to the real's own loopback.
        let mut cache = CacheInfo::default();
        cache.ifa_preferred = 0;
        cache.ifa_valid = u32::MAX;
        r.message_mut()
            .attributes
            .push(AddressAttribute::CacheInfo(cache));
    }
    r.execute()
        .await
        .map_err(req(format!("adding {addr} to ifindex {index}")))
}

/// Returns: every address configured on any interface of this host (namespace).
pub async fn all_addresses(handle: &Handle) -> Result<Vec<IpAddr>, NetlinkError> {
    let mut out = Vec::new();
    let mut s = handle.address().get().execute();
    while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(x) = a {
                out.push(*x);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Returns: the id of the XDP program attached to interface `index`, if any.
pub async fn xdp_prog_id(handle: &Handle, index: u32) -> Result<Option<u32>, NetlinkError> {
    let mut links = handle.link().get().match_index(index).execute();
    let msg = links
        .try_next()
        .await
        .map_err(req(format!("reading ifindex {index}")))?;
    let Some(msg) = msg else { return Ok(None) };
    for a in &msg.attributes {
        if let LinkAttribute::Xdp(x) = a {
            for n in x {
                if let LinkXdp::ProgId(id) = n {
                    return Ok((*id != 0).then_some(*id));
                }
            }
        }
    }
    Ok(None)
}

/// Removes whatever XDP program is attached to interface `index` through netlink, in
/// generic and in driver mode (XDP_FLAGS_SKB_MODE / XDP_FLAGS_DRV_MODE).
pub async fn detach_xdp(handle: &Handle, index: u32) -> Result<(), NetlinkError> {
    const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let mut last = Ok(());
    for flags in [XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE] {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(flags),
        ]));
        last = handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(format!("detaching XDP from ifindex {index}")));
        if xdp_prog_id(handle, index).await?.is_none() {
            return Ok(());
        }
    }
    last
}

/// Removes `addr` from interface `index`.
pub async fn del_address(handle: &Handle, index: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let mut s = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(addr)
        .execute();
    while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
        handle
            .address()
            .del(m)
            .execute()
            .await
            .map_err(req(format!("removing {addr} from ifindex {index}")))?;
    }
    Ok(())
}

/// How the kernel would reach `dst`.
#[derive(Clone, Copy, Debug)]
pub struct RouteTo {
    pub oif: u32,
    /// Next-hop router, when `dst` is not on a connected network.
    pub gateway: Option<IpAddr>,
}

/// Asks the kernel's FIB how it would send to `dst`.
pub async fn route_to(handle: &Handle, dst: IpAddr) -> Result<Option<RouteTo>, NetlinkError> {
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, host_prefix(dst))
        .map_err(|e| NetlinkError::Route(format!("route to {dst}: {e}")))?
        .build();
    let mut s = handle.route().get(msg).execute();
    let Ok(Some(r)) = s.try_next().await else {
        return Ok(None);
    };
    let mut out = RouteTo {
        oif: 0,
        gateway: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => out.oif = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => out.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => out.gateway = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    Ok((out.oif != 0).then_some(out))
}

/// What the host's routing says of the next hops the data path may keep (decision
/// 0024).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteShape {
    /// For each real address asked about, whether the route toward it depends on the
    /// address alone: every rule by destination ([`rules_by_destination`]), the route
    /// matched single-path ([`single_path`]) and, for an IPv6 real, no IPv6 route
    /// specific to a source in any table (which the daemon's own lookup, from no
    /// source, would not match).
    pub reals: Vec<(IpAddr, bool)>,
    /// Whether the route toward any address depends on the address alone: every rule
    /// by destination and every route of every table single-path ([`Tables`]).
    pub clients: bool,
    /// The tables were read, and held more than [`ROUTES_READ_AT_MOST`] routes.
    pub too_many_routes: bool,
}

/// Most routes read for [`RouteShape::clients`]: a host with more (a full BGP table)
/// has its replies looked up per packet, and its IPv6 reals too.
pub const ROUTES_READ_AT_MOST: usize = 10_000;

/// Reads the host's rules and routes (see [`RouteShape`]) for real addresses `reals`;
/// every table too when `read_tables` (the daemon skips them for a while on a host
/// that had too many). What cannot be read counts as depending on more than the
/// address (logged).
pub async fn route_shape(handle: &Handle, reals: &[IpAddr], read_tables: bool) -> RouteShape {
    let rules = rules_by_destination(handle).await.unwrap_or_else(|e| {
        tracing::error!("reading the routing rules: {e:#}");
        false
    });
    let tables = if rules && read_tables {
        match Tables::read(handle).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("reading the routing tables: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let mut out = Vec::with_capacity(reals.len());
    for &addr in reals {
        // An IPv6 source-specific route anywhere counts against every IPv6 real.
        let v6_ok = addr.is_ipv4() || tables.as_ref().is_some_and(|t| !t.v6_from);
        let one = rules
            && v6_ok
            && match single_path(handle, addr).await {
                Ok(one) => one == Some(true),
                Err(e) => {
                    tracing::error!(real = %addr, "reading the route toward a real server: {e:#}");
                    false
                }
            };
        out.push((addr, one));
    }
    let too_many_routes = tables
        .as_ref()
        .is_some_and(|t| t.read > ROUTES_READ_AT_MOST);
    RouteShape {
        reals: out,
        clients: tables
            .is_some_and(|t| t.read <= ROUTES_READ_AT_MOST && !t.multipath && !t.v6_from),
        too_many_routes,
    }
}

/// What every table of the host holds, as far as [`RouteShape`] needs it.
#[derive(Debug, Default)]
pub struct Tables {
    /// Routes read (IPv4 and IPv6; all of them, whatever their number: a dump is read
    /// to its end).
    pub read: usize,
    /// Some route has more than one path (or a next-hop object).
    pub multipath: bool,
    /// Some IPv6 route is specific to a source prefix.
    pub v6_from: bool,
}

impl Tables {
    /// Dumps every route of every table, IPv4 and IPv6.
    pub async fn read(handle: &Handle) -> Result<Tables, NetlinkError> {
        let mut t = Tables::default();
        for mut dump in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            // Every table (RT_TABLE_UNSPEC), whether or not the kernel filters dumps.
            dump.header.table = 0;
            dump.attributes
                .retain(|a| !matches!(a, RouteAttribute::Table(_)));
            let mut s = handle.route().get(dump).execute();
            while let Some(r) = s.try_next().await.map_err(req("listing routes"))? {
                t.read += 1;
                t.add(&r);
            }
        }
        Ok(t)
    }

    /// Counts route `r`.
    fn add(&mut self, r: &RouteMessage) {
        if r.header.source_prefix_length != 0 {
            self.v6_from = true;
        } else if !route_single_path(r) {
            self.multipath = true;
        }
    }
}

/// Returns: whether every policy routing rule (IPv4 and IPv6) chooses its table
/// without looking at anything that differs between the flows toward one destination
/// through this host (their source address, ports and protocol), nor at anything the
/// daemon's own route lookups cannot show (the input interface, a VRF, the user): the
/// host's routes toward an address are then the ones [`single_path`] reads.
pub async fn rules_by_destination(handle: &Handle) -> Result<bool, NetlinkError> {
    let mut all = true;
    for v in [IpVersion::V4, IpVersion::V6] {
        let mut s = handle.rule().get(v).execute();
        // Read to its end, as every dump here: a dump dropped halfway has its other
        // messages logged as undeliverable by the netlink connection.
        while let Some(rule) = s.try_next().await.map_err(req("listing routing rules"))? {
            all &= rule_by_destination(&rule);
        }
    }
    Ok(all)
}

/// Returns: whether `rule` looks at nothing but a packet's destination (and the
/// firewall mark and TOS, which the data path's lookups and the daemon's both leave
/// zero).
fn rule_by_destination(rule: &RuleMessage) -> bool {
    rule.header.src_len == 0
        && rule.attributes.iter().all(|a| {
            !matches!(
                a,
                RuleAttribute::Source(_)
                    | RuleAttribute::Iifname(_)
                    | RuleAttribute::L3MDev(true)
                    | RuleAttribute::UidRange(_)
                    | RuleAttribute::IpProtocol(_)
                    | RuleAttribute::SourcePortRange(_)
                    | RuleAttribute::DestinationPortRange(_)
            )
        })
}

/// Returns: whether the route the kernel's FIB matches for `dst` (`ip route get
/// fibmatch`, from no source) has one path: no multipath next hops, no next-hop object
/// (which may be a group), no source prefix; `None` when there is no route.
pub async fn single_path(handle: &Handle, dst: IpAddr) -> Result<Option<bool>, NetlinkError> {
    let mut msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, host_prefix(dst))
        .map_err(|e| NetlinkError::Route(format!("route to {dst}: {e}")))?
        .build();
    msg.header.flags |= RouteFlags::FibMatch;
    let mut s = handle.route().get(msg).execute();
    let Ok(Some(r)) = s.try_next().await else {
        return Ok(None);
    };
    Ok(Some(route_single_path(&r)))
}

/// Returns: whether FIB entry `r` has one path (see [`single_path`]).
fn route_single_path(r: &RouteMessage) -> bool {
    r.header.source_prefix_length == 0
        && r.attributes.iter().all(|a| match a {
            RouteAttribute::MultiPath(hops) => hops.len() <= 1,
            RouteAttribute::NhId(_) => false,
            _ => true,
        })
}

/// A neighbour table entry with a link-layer address.
#[derive(Clone, Copy, Debug)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    /// The entry is confirmed recently or static (not stale/failed).
    pub fresh: bool,
}

/// Dumps the neighbour tables (IPv4 and IPv6).
pub async fn neighbours(handle: &Handle) -> Result<Vec<Neighbour>, NetlinkError> {
    let mut out = Vec::new();
    let mut s = handle.neighbours().get().execute();
    while let Some(m) = s.try_next().await.map_err(req("listing neighbours"))? {
        let mut addr = None;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    addr = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    addr = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]])
                }
                _ => {}
            }
        }
        let state = m.header.state;
        if matches!(
            state,
            NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
        ) {
            continue;
        }
        if let (Some(addr), Some(mac)) = (addr, mac) {
            let fresh = matches!(
                state,
                NeighbourState::Reachable | NeighbourState::Permanent | NeighbourState::Noarp
            );
            out.push(Neighbour {
                ifindex: m.header.ifindex,
                addr,
                mac,
                fresh,
            });
        }
    }
    Ok(out)
}

/// Deletes the neighbour entries of `addr` (on every interface), so that the next
/// packet to it resolves its link-layer address afresh by broadcast: an entry the
/// kernel still holds as reachable would otherwise keep a changed MAC for up to its
/// reachable time, and then be re-probed by unicast to the old one.
/// Returns: how many entries were deleted.
pub async fn forget_neighbour(handle: &Handle, addr: IpAddr) -> Result<usize, NetlinkError> {
    let mut found = Vec::new();
    let mut s = handle.neighbours().get().execute();
    while let Some(m) = s.try_next().await.map_err(req("listing neighbours"))? {
        let is_addr = m.attributes.iter().any(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => IpAddr::V4(*a) == addr,
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => IpAddr::V6(*a) == addr,
            _ => false,
        });
        if is_addr {
            found.push(m);
        }
    }
    let n = found.len();
    for m in found {
        handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(req(format!("deleting the neighbour entry of {addr}")))?;
    }
    Ok(n)
}

/// Has the kernel resolve neighbour `addr` on interface `ifindex`: an RTM_NEWNEIGH with
/// NTF_USE creates the entry if there is none and starts resolution (ARP request or
/// neighbour solicitation), as the kernel's own forwarding would on a packet to it. An
/// entry already resolved, or static, is left as it is. What XDP forwards never passes
/// the kernel's neighbour code, so the data path reports the next hops it found
/// unresolved and the daemon asks for them here (decision 0019); the daemon keeps its
/// reals' next hops fresh the same way.
pub async fn resolve_neighbour(
    handle: &Handle,
    ifindex: u32,
    addr: IpAddr,
) -> Result<(), NetlinkError> {
    handle
        .neighbours()
        .add(ifindex, addr)
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await
        .map_err(req(format!(
            "resolving neighbour {addr} on ifindex {ifindex}"
        )))
}

/// The routing protocol number of the routes that announce VIPs (`proto 250` in `ip
/// route`): xdpvs adds, and removes, only routes of its own protocol.
pub const RTPROT_XDPVS: u8 = 250;

/// The blackhole route for `vip` (/32 or /128) in `table`, protocol [`RTPROT_XDPVS`].
/// Blackhole: the table is read by a routing daemon, never consulted for forwarding.
fn announce_route(table: u32, vip: IpAddr) -> Result<RouteMessage, NetlinkError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(vip, host_prefix(vip))
        .map_err(|e| NetlinkError::Route(format!("route for {vip}: {e}")))?
        .table_id(table)
        .protocol(RouteProtocol::Other(RTPROT_XDPVS))
        .kind(RouteType::BlackHole)
        .build())
}

/// Adds (or keeps) the route announcing `vip` in `table`.
pub async fn announce(handle: &Handle, table: u32, vip: IpAddr) -> Result<(), NetlinkError> {
    handle
        .route()
        .add(announce_route(table, vip)?)
        .replace()
        .execute()
        .await
        .map_err(req(format!("adding the route of {vip} to table {table}")))
}

/// Deletes the route announcing `vip` from `table`; one already gone is no error.
pub async fn withdraw(handle: &Handle, table: u32, vip: IpAddr) -> Result<(), NetlinkError> {
    const ESRCH: i32 = 3;
    match handle
        .route()
        .del(announce_route(table, vip)?)
        .execute()
        .await
    {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ESRCH => Ok(()),
        r => r.map_err(req(format!(
            "deleting the route of {vip} from table {table}"
        ))),
    }
}

/// Returns: the VIPs announced in `table` (its routes of protocol [`RTPROT_XDPVS`]).
pub async fn announced(handle: &Handle, table: u32) -> Result<Vec<IpAddr>, NetlinkError> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let msg = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let mut s = handle.route().get(msg).execute();
        while let Some(m) = s.try_next().await.map_err(req("listing routes"))? {
            let in_table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            if in_table != table || m.header.protocol != RouteProtocol::Other(RTPROT_XDPVS) {
                continue;
            }
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => out.push(IpAddr::V4(*d)),
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) => out.push(IpAddr::V6(*d)),
                    _ => {}
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes every route of protocol [`RTPROT_XDPVS`] from `table`, for a node whose
/// daemon is not running (`xdpvs withdraw --config`, teardown). Returns: the VIPs
/// withdrawn.
pub async fn withdraw_table(handle: &Handle, table: u32) -> Result<Vec<IpAddr>, NetlinkError> {
    let vips = announced(handle, table).await?;
    for vip in &vips {
        withdraw(handle, table, *vip).await?;
    }
    Ok(vips)
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        route::RouteNextHop,
        rule::{RulePortRange, RuleUidRange},
        IpProtocol,
    };

    use super::*;

    fn rule(src_len: u8, attributes: Vec<RuleAttribute>) -> RuleMessage {
        let mut r = RuleMessage::default();
        r.header.src_len = src_len;
        r.attributes = attributes;
        r
    }

    #[test]
    fn rules_that_look_at_more_than_the_destination_are_told_apart() {
        // The three rules of a host without policy routing, and rules on the
        // destination, mark or output interface: the same for every flow to a real.
        for r in [
            rule(
                0,
                vec![RuleAttribute::Priority(0), RuleAttribute::Table(255)],
            ),
            rule(
                0,
                vec![RuleAttribute::Priority(32766), RuleAttribute::Table(254)],
            ),
            rule(0, vec![RuleAttribute::FwMark(7), RuleAttribute::Table(100)]),
            rule(
                0,
                vec![RuleAttribute::Destination("10.0.0.0".parse().unwrap())],
            ),
            rule(0, vec![RuleAttribute::Oifname("eth1".into())]),
            rule(0, vec![RuleAttribute::L3MDev(false)]),
        ] {
            assert!(rule_by_destination(&r), "{r:?}");
        }
        let ports = RulePortRange { start: 80, end: 80 };
        for r in [
            rule(
                24,
                vec![RuleAttribute::Source("10.150.0.0".parse().unwrap())],
            ),
            rule(24, Vec::new()),
            rule(
                0,
                vec![RuleAttribute::Source("10.150.0.0".parse().unwrap())],
            ),
            rule(0, vec![RuleAttribute::Iifname("eth0".into())]),
            rule(0, vec![RuleAttribute::L3MDev(true)]),
            rule(
                0,
                vec![RuleAttribute::UidRange(RuleUidRange { start: 1, end: 2 })],
            ),
            rule(0, vec![RuleAttribute::IpProtocol(IpProtocol::Tcp)]),
            rule(0, vec![RuleAttribute::SourcePortRange(ports)]),
            rule(0, vec![RuleAttribute::DestinationPortRange(ports)]),
        ] {
            assert!(!rule_by_destination(&r), "{r:?}");
        }
    }

    #[test]
    fn a_route_has_one_path_unless_it_spreads_or_is_source_specific() {
        let mut r = RouteMessage::default();
        r.attributes = vec![
            RouteAttribute::Oif(3),
            RouteAttribute::Gateway(RouteAddress::Inet("10.0.0.1".parse().unwrap())),
        ];
        assert!(route_single_path(&r));
        let mut one = r.clone();
        one.attributes = vec![RouteAttribute::MultiPath(vec![RouteNextHop::default()])];
        assert!(route_single_path(&one));
        let mut ecmp = r.clone();
        ecmp.attributes = vec![RouteAttribute::MultiPath(vec![
            RouteNextHop::default(),
            RouteNextHop::default(),
        ])];
        assert!(!route_single_path(&ecmp));
        let mut object = r.clone();
        object.attributes.push(RouteAttribute::NhId(12));
        assert!(!route_single_path(&object));
        let mut from = r.clone();
        from.header.source_prefix_length = 64;
        assert!(!route_single_path(&from));

        // Over every table: a source-specific route is told from a multipath one.
        let mut t = Tables::default();
        t.add(&r);
        assert!(!t.multipath && !t.v6_from);
        t.add(&from);
        assert!(!t.multipath && t.v6_from);
        t.add(&ecmp);
        assert!(t.multipath);
    }
}
