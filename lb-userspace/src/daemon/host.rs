//! The host's networking as the data path needs it: the interfaces XDP runs on, the
//! VIP addresses on them, and the next hop of every real (routes and neighbours read
//! through rtnetlink, unresolved neighbours solicited). What it learns goes into the
//! maps through the [`Reconciler`]; what it added to the host it removes on exit.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::IfaceInfo;
use rtnetlink::Handle;

use crate::{
    config::{Config, Method},
    daemon::vlans,
    dataplane::Dataplane,
    netlink,
    reconcile::{L2Next, Reconciler},
};

/// How long a host found with more routes than the daemon reads each second goes
/// before its tables are read again (decision 0024).
const TABLES_AGAIN: Duration = Duration::from_secs(60);

/// A real whose neighbour entry is not fresh is solicited at most this often.
const SOLICIT_EVERY: Duration = Duration::from_secs(5);

/// The host side of a running daemon.
pub struct Host {
    handle: Handle,
    /// Interfaces XDP is attached to (first: where VIPs are added).
    attached: Vec<netlink::Interface>,
    /// Interfaces registered in IFACES (attached ones and egress ones found by routing).
    known_ifaces: HashSet<u32>,
    /// VIPs this daemon added (and so removes), with their ifindex.
    added_vips: Vec<(u32, IpAddr)>,
    /// The other MACs of the attached interfaces, as last written to `OWN_MACS`
    /// (`None`: not written yet, so the first refresh replaces whatever is there).
    own_macs: Option<std::collections::BTreeMap<[u8; 6], u32>>,
    /// The VLAN devices on the attached interfaces, as last written (`None`: not yet).
    vlans: Option<std::collections::BTreeMap<u32, vlans::Vlan>>,
    last_solicit: HashMap<IpAddr, Instant>,
    /// Reals already warned about (no route, or not on a connected network).
    warned: HashSet<IpAddr>,
    /// Host churn (see the operator guide): configured interfaces found gone, direct
    /// routing reals whose MAC has been resolved once, and those of them whose
    /// neighbour entry is gone or failed since (each logged once per change).
    gone: HashSet<String>,
    resolved: HashSet<IpAddr>,
    lost: HashSet<IpAddr>,
    /// Routes toward clients were last found to depend on the destination alone
    /// (`None`: not read yet, so the first reading is logged).
    clients_by_dest: Option<bool>,
    /// When the routing tables, found too large, are read again (`None`: each tick).
    tables_again: Option<Instant>,
}

impl Host {
    /// Opens rtnetlink and looks up the configuration's interfaces.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let handle = netlink::connect().context("netlink")?;
        let mut attached = Vec::new();
        for name in &config.interfaces {
            attached.push(
                netlink::interface(&handle, name)
                    .await
                    .with_context(|| format!("interface {name}"))?,
            );
        }
        Ok(Self {
            handle,
            attached,
            known_ifaces: HashSet::new(),
            added_vips: Vec::new(),
            own_macs: None,
            vlans: None,
            last_solicit: HashMap::new(),
            warned: HashSet::new(),
            gone: HashSet::new(),
            resolved: HashSet::new(),
            lost: HashSet::new(),
            clients_by_dest: None,
            tables_again: None,
        })
    }

    /// Takes over the VIPs an earlier daemon of this instance added (it removes them
    /// when its file no longer has them, as its own).
    pub fn adopt_vips(&mut self, vips: Vec<(u32, IpAddr)>) {
        self.added_vips = vips;
    }

    /// Returns: the VIPs this instance added (interface index, address).
    pub fn added_vips(&self) -> Vec<(u32, IpAddr)> {
        self.added_vips.clone()
    }

    /// Returns: the rtnetlink handle (for the announcing routes).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Returns: the interfaces XDP is attached to, in the configuration's order.
    pub fn attached(&self) -> &[netlink::Interface] {
        &self.attached
    }

    /// Registers the attached interfaces in IFACES (frames may leave by them).
    pub fn register_attached<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
    ) -> anyhow::Result<()> {
        for i in self.attached.clone() {
            self.register_iface(rec, i.index, i.mac)?;
        }
        Ok(())
    }

    fn register_iface<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
        index: u32,
        mac: [u8; 6],
    ) -> anyhow::Result<()> {
        if self.known_ifaces.insert(index) {
            rec.set_iface(
                index,
                &IfaceInfo {
                    mac,
                    flags: 0,
                    _pad: 0,
                },
            )?;
        }
        Ok(())
    }

    /// Re-reads the configured interfaces by name. One that is gone is logged (its XDP
    /// link and addresses went with the device); one that is back as a new device (a new
    /// ifindex) is registered in IFACES under its new index, the VIPs added to it
    /// follow it, and it is returned for XDP to be attached again. A changed MAC of the
    /// same device is written to IFACES.
    /// Returns: the interfaces that came back.
    pub async fn refresh_interfaces<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
    ) -> anyhow::Result<Vec<netlink::Interface>> {
        let mut back = Vec::new();
        for k in 0..self.attached.len() {
            let old = self.attached[k].clone();
            let Ok(now) = netlink::interface(&self.handle, &old.name).await else {
                if self.gone.insert(old.name.clone()) {
                    tracing::error!(interface = %old.name, ifindex = old.index, "interface is gone, and XDP and its addresses with it: waiting for it to come back");
                }
                continue;
            };
            self.gone.remove(&old.name);
            if now.index == old.index && now.mac == old.mac {
                continue;
            }
            self.known_ifaces.remove(&old.index);
            self.known_ifaces.remove(&now.index);
            if now.index != old.index {
                rec.remove_iface(old.index)?;
            }
            self.register_iface(rec, now.index, now.mac)?;
            for (i, _) in self.added_vips.iter_mut().filter(|(i, _)| *i == old.index) {
                *i = now.index;
            }
            self.attached[k] = now.clone();
            if now.index == old.index {
                tracing::info!(interface = %now.name, mac = %crate::reconcile::fmt_mac(&now.mac), "interface MAC changed: frames leave with the new one");
            } else {
                tracing::warn!(interface = %now.name, old_ifindex = old.index, ifindex = now.index, "interface is back as a new device: attaching XDP to it again");
                back.push(now);
            }
        }
        Ok(back)
    }

    /// Adds back the VIPs this daemon added that are no longer on the host (removed by
    /// hand, or gone with their device), on the first interface.
    /// Returns: whether any was added back.
    pub async fn restore_vips(&mut self) -> anyhow::Result<bool> {
        let first = &self.attached[0];
        if self.added_vips.is_empty() || self.gone.contains(&first.name) {
            return Ok(false);
        }
        let have = netlink::all_addresses(&self.handle).await?;
        let mut restored = false;
        for (i, vip) in &mut self.added_vips {
            if have.contains(vip) {
                continue;
            }
            netlink::add_address(&self.handle, first.index, *vip).await?;
            *i = first.index;
            restored = true;
            tracing::warn!(vip = %vip, interface = %first.name, "VIP address was gone from the host (removed by hand, or with its device): added back");
        }
        Ok(restored)
    }

    /// A real went down: when it is on a connected network, its neighbour entry is
    /// deleted, so that the next probe resolves its MAC afresh by broadcast instead of
    /// the kernel holding a changed MAC for its reachable time and then re-probing the
    /// old one. Direct routing keeps the last MAC in `REALS`, so nothing is forwarded
    /// differently meanwhile.
    pub async fn forget_real_neighbour(&mut self, addr: IpAddr) {
        let forgot = match netlink::route_to(&self.handle, addr).await {
            Ok(Some(r)) if r.gateway.is_none() => netlink::forget_neighbour(&self.handle, addr)
                .await
                .map(|n| (n, r.oif))
                .map_err(anyhow::Error::from),
            Ok(_) => Ok((0, 0)),
            Err(e) => Err(e.into()),
        };
        match forgot {
            Ok((0, _)) => {}
            Ok((_, oif)) => {
                // Resolved again at once: NAT and tunnel look the entry up in XDP (the
                // FIB), and another virtual server may still send to this address.
                self.solicit(addr, oif, addr).await;
                tracing::info!(real = %addr, "real server down: its neighbour entry is dropped, so that its MAC is learnt afresh");
            }
            Err(e) => tracing::error!(real = %addr, "dropping the neighbour entry: {e:#}"),
        }
    }

    /// Re-reads the other MACs this host answers for on the attached interfaces (the
    /// devices stacked on them: a macvlan, keepalived's `use_vmac`) and writes them to
    /// `OWN_MACS` when they changed.
    pub async fn refresh_own_macs<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
    ) -> anyhow::Result<()> {
        let macs = netlink::child_macs(&self.handle, &self.attached).await?;
        if self.own_macs.as_ref() != Some(&macs) {
            rec.set_own_macs(&macs)?;
            for (mac, ifindex) in &macs {
                tracing::info!(mac = %crate::reconcile::fmt_mac(mac), ifindex, "frames to this MAC are this host's own (a device on an attached interface)");
            }
            self.own_macs = Some(macs);
        }
        Ok(())
    }

    /// Re-reads the VLAN devices stacked on the attached interfaces and writes them to
    /// `VLAN_IN`, `VLAN_OUT` and `IFACES` when they changed.
    pub async fn refresh_vlans<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
    ) -> anyhow::Result<()> {
        let links = netlink::links(&self.handle).await?;
        let attached: Vec<u32> = self.attached.iter().map(|i| i.index).collect();
        let now = vlans::stacked(&links, &attached);
        if self.vlans.as_ref() == Some(&now) {
            return Ok(());
        }
        let ins = now.values().map(|v| (v.key, v.index)).collect();
        let outs = now
            .values()
            .map(|v| (v.index, (v.iface(), v.out)))
            .collect();
        rec.set_vlans(&ins, &outs)?;
        for v in now.values() {
            // Registered here, with its tags: routing must not re-register it as plain.
            self.known_ifaces.insert(v.index);
            if self
                .vlans
                .as_ref()
                .is_none_or(|was| !was.contains_key(&v.index))
            {
                tracing::info!(interface = %ifname(v.index), on = %ifname(v.out.xmit_ifindex), vlan = ?v.key.vid_be.map(u16::from_be), "VLAN device on an attached interface: its tagged frames are routed as arriving by it");
            }
        }
        for gone in self
            .vlans
            .iter()
            .flat_map(|was| was.keys())
            .filter(|i| !now.contains_key(i))
        {
            self.known_ifaces.remove(gone);
            tracing::info!(ifindex = gone, "VLAN device gone");
        }
        self.vlans = Some(now);
        Ok(())
    }

    /// Adds the VIPs of `config` to the first interface when it manages VIPs (so the
    /// kernel answers ARP and neighbour solicitations for them), and removes those it
    /// added that are gone.
    pub async fn sync_vips(&mut self, config: &Config) -> anyhow::Result<()> {
        let index = self.attached[0].index;
        let want: BTreeSet<IpAddr> = if config.manage_vips {
            config.virtual_servers.iter().map(|v| v.address).collect()
        } else {
            BTreeSet::new()
        };
        let mut keep = Vec::new();
        for (i, vip) in std::mem::take(&mut self.added_vips) {
            if want.contains(&vip) {
                keep.push((i, vip));
            } else {
                netlink::del_address(&self.handle, i, vip).await?;
                tracing::info!(vip = %vip, "VIP address removed");
            }
        }
        self.added_vips = keep;
        for vip in want {
            if self.added_vips.iter().any(|(_, v)| *v == vip)
                || netlink::has_address(&self.handle, index, vip).await?
            {
                continue;
            }
            netlink::add_address(&self.handle, index, vip).await?;
            self.added_vips.push((index, vip));
            tracing::info!(vip = %vip, interface = %self.attached[0].name, "VIP address added");
        }
        Ok(())
    }

    /// Removes every VIP this daemon added.
    pub async fn remove_vips(&mut self) {
        for (i, vip) in std::mem::take(&mut self.added_vips) {
            match netlink::del_address(&self.handle, i, vip).await {
                Ok(()) => tracing::info!(vip = %vip, "VIP address removed"),
                Err(e) => tracing::error!(vip = %vip, "could not remove VIP address: {e}"),
            }
        }
    }

    /// Reads routes and neighbours for every real, updates the maps, solicits the
    /// unresolved. Returns: how many reals still have no resolved next hop.
    pub async fn refresh_next_hops<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
    ) -> anyhow::Result<usize> {
        if let Err(e) = self.refresh_by_dest(rec).await {
            // Retried at the next tick; the neighbours are kept resolved meanwhile.
            tracing::error!("marking the NAT next hops that may be kept: {e:#}");
        }
        let neigh = netlink::neighbours(&self.handle).await?;
        let mut missing = self.refresh_routed(rec, &neigh).await?;
        for addr in rec.real_addresses_of(true) {
            let Some(route) = self.route_to_real(addr).await? else {
                missing += 1;
                continue;
            };
            if let Some(gw) = route.gateway {
                if self.warned.insert(addr) {
                    tracing::error!(real = %addr, gateway = %gw, "real server is behind a router: direct routing needs it on a connected network");
                }
            }
            if !self.known_ifaces.contains(&route.oif) {
                // A real reached through an interface XDP is not attached to: frames are
                // redirected there, and need its MAC as their source.
                let name = ifname(route.oif);
                let i = netlink::interface(&self.handle, &name).await?;
                self.register_iface(rec, i.index, i.mac)?;
            }
            let entry = neigh
                .iter()
                .find(|n| n.addr == addr && n.ifindex == route.oif);
            if let Some(n) = entry {
                rec.set_next_hop(
                    addr,
                    L2Next {
                        ifindex: route.oif,
                        mac: n.mac,
                    },
                )?;
                self.resolved.insert(addr);
                if self.lost.remove(&addr) {
                    tracing::info!(real = %addr, mac = %crate::reconcile::fmt_mac(&n.mac), "real server's MAC resolved again");
                }
            } else {
                missing += 1;
                if self.resolved.contains(&addr) && self.lost.insert(addr) {
                    tracing::warn!(real = %addr, "real server's MAC is unresolved (its neighbour entry failed or is gone): unreachable at layer 2; its packets go to its last MAC until it answers");
                }
            }
            let hop = route.gateway.unwrap_or(addr);
            self.solicit_unless_fresh(addr, route.oif, hop, entry).await;
        }
        Ok(missing)
    }

    /// NAT: whether the kernel's route toward each NAT real, and toward any client,
    /// depends on the address alone (every rule by destination, the routes single-path),
    /// so that the data path may keep a request's next hop per real and a reply's per
    /// client (decision 0024). What cannot be read counts as no: looked up per packet.
    /// A host found with more than `ROUTES_READ_AT_MOST` routes has its tables read
    /// again only after `TABLES_AGAIN`.
    async fn refresh_by_dest<D: Dataplane>(
        &mut self,
        rec: &mut Reconciler<D>,
    ) -> anyhow::Result<()> {
        let addrs = rec.nat_real_addresses();
        let shape = if addrs.is_empty() {
            // No NAT: nothing is kept, and no mark is left for the next one.
            self.clients_by_dest = None;
            netlink::RouteShape {
                reals: Vec::new(),
                clients: false,
                too_many_routes: false,
            }
        } else {
            let now = Instant::now();
            let read_tables = self.tables_again.is_none_or(|t| now >= t);
            let shape = netlink::route_shape(&self.handle, &addrs, read_tables).await;
            if read_tables && shape.too_many_routes {
                if self.tables_again.is_none() {
                    tracing::warn!(at_most = netlink::ROUTES_READ_AT_MOST, "more routes than the daemon reads each second: NAT replies' next hops (and IPv6 reals') are looked up per packet; the tables are read again every minute");
                }
                self.tables_again = Some(now + TABLES_AGAIN);
            } else if read_tables {
                self.tables_again = None;
            }
            if self.clients_by_dest != Some(shape.clients) {
                if shape.clients {
                    tracing::info!("every route depends on its destination alone: NAT replies' next hops are kept per CPU");
                } else {
                    tracing::info!("some route or rule depends on more than the destination: NAT replies' next hops are looked up per packet");
                }
            }
            self.clients_by_dest = Some(shape.clients);
            shape
        };
        rec.set_route_shape(&shape)?;
        Ok(())
    }

    /// NAT and tunnel reals: the data path asks the FIB for their next hop (the real,
    /// or the router toward it) and drops while that neighbour is unresolved; keep it
    /// resolved. Returns: how many have no usable neighbour entry.
    async fn refresh_routed<D: Dataplane>(
        &mut self,
        rec: &Reconciler<D>,
        neigh: &[netlink::Neighbour],
    ) -> anyhow::Result<usize> {
        let mut missing = 0;
        for addr in rec.real_addresses_of(false) {
            let Some(route) = self.route_to_real(addr).await? else {
                missing += 1;
                continue;
            };
            let hop = route.gateway.unwrap_or(addr);
            let entry = neigh
                .iter()
                .find(|n| n.addr == hop && n.ifindex == route.oif);
            if entry.is_none() {
                missing += 1;
            }
            self.solicit_unless_fresh(addr, route.oif, hop, entry).await;
        }
        Ok(missing)
    }

    /// Returns: the kernel's route to real `addr`; warns once when there is none.
    async fn route_to_real(&mut self, addr: IpAddr) -> anyhow::Result<Option<netlink::RouteTo>> {
        let route = netlink::route_to(&self.handle, addr).await?;
        if route.is_none() && self.warned.insert(addr) {
            tracing::warn!(real = %addr, "no route to real server");
        }
        Ok(route)
    }

    /// Makes the kernel resolve `hop`, the next hop toward real `addr` on interface
    /// `oif`, again unless its neighbour `entry` is fresh, at most once every
    /// SOLICIT_EVERY per real.
    async fn solicit_unless_fresh(
        &mut self,
        addr: IpAddr,
        oif: u32,
        hop: IpAddr,
        entry: Option<&netlink::Neighbour>,
    ) {
        let due = self
            .last_solicit
            .get(&addr)
            .is_none_or(|t| t.elapsed() >= SOLICIT_EVERY);
        if entry.is_none_or(|n| !n.fresh) && due {
            self.solicit(addr, oif, hop).await;
        }
    }

    /// Has the kernel resolve (or re-confirm) `hop` on `oif`, the next hop toward real
    /// `addr` (an ARP request or neighbour solicitation, `netlink::resolve_neighbour`),
    /// and notes when. What XDP forwards never passes the kernel's neighbour code, so
    /// without this an entry would go stale and a changed MAC go unnoticed.
    async fn solicit(&mut self, addr: IpAddr, oif: u32, hop: IpAddr) {
        if let Err(e) = netlink::resolve_neighbour(&self.handle, oif, hop).await {
            tracing::debug!(real = %addr, next_hop = %hop, "neighbour solicitation failed: {e}");
        }
        self.last_solicit.insert(addr, Instant::now());
    }
}

/// Returns: the sysctl that must be 1 for the FIB lookup of NAT/tunnel traffic
/// arriving on `ifname` in `family`, if it is not.
fn forwarding_off(ifname: &str, v6: bool) -> Option<String> {
    let key = if v6 {
        format!("net.ipv6.conf.{ifname}.forwarding")
    } else {
        format!("net.ipv4.conf.{ifname}.forwarding")
    };
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => None,
        _ => Some(key),
    }
}

/// Checks what the configuration needs of the host beyond the file: NAT and tunnel
/// virtual servers route through the kernel's FIB, which answers only for interfaces
/// with forwarding enabled.
pub fn preflight(config: &Config, attached: &[netlink::Interface]) -> anyhow::Result<()> {
    // false: IPv4, true: IPv6.
    let families: BTreeSet<bool> = config
        .virtual_servers
        .iter()
        .filter(|v| v.method != Method::Dr)
        .map(|v| v.address.is_ipv6())
        .collect();
    let missing: BTreeSet<String> = families
        .iter()
        .flat_map(|&v6| {
            attached
                .iter()
                .filter_map(move |i| forwarding_off(&i.name, v6))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.into_iter().map(|k| format!("{k}=1")).collect();
    anyhow::bail!(
        "NAT and tunnel virtual servers need forwarding enabled on the interfaces XDP runs on; set: sysctl -w {}",
        list.join(" ")
    )
}

/// Returns: the name of interface `index` (empty if it has none).
fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
