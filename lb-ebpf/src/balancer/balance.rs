//! One packet through the balancer: parse, find the virtual server, make sure the
//! frame is addressed to this host, choose the real, forward with the virtual
//! server's method. Fragments and ICMP errors go on in programs of their own, reached
//! by tail call (decision 0018): `fragment.rs` and `icmp_error.rs`. The lookups of
//! the virtual server a packet is for, which all three make, are in `vs.rs`.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    addr_filter_place,
    maps::{ADDR_FILTER_VERSION, TAIL_FRAGMENT, TAIL_ICMP},
    reason, FlowKey, FlowState, IfaceInfo, VsInfo, METHOD_DR, METHOD_NAT, METHOD_TUNNEL, PROTO_TCP,
    PROTO_UDP,
};
use lb_ebpf::headers::{
    ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN,
};

use crate::{
    choose::{self, Choice, Record},
    flood, forward, l2,
    maps::{ADDR_FILTER, TAILS},
    parse, stats,
    verdict::Verdict,
    vs::virtual_server,
};

/// Returns: `Ok` with the verdict of a forwarded packet, `Err` with the verdict of one
/// that was passed or dropped (both are final; the split keeps `?` usable).
/// `filter` and `seen`: the address filter and what [`first_look`] told by it.
#[inline(always)]
pub fn try_balance(ctx: &XdpContext, filter: &AddrFilter, seen: Seen) -> Result<Verdict, Verdict> {
    l2::untag(ctx)?;
    let p = parse::parse(ctx)?;
    if p.icmp {
        return tail_call(ctx, TAIL_ICMP);
    }
    if p.frag {
        return tail_call(ctx, TAIL_FRAGMENT);
    }
    // Decision 0022: a destination that is no VIP is not looked up as one, and a
    // source that is no NAT real not as a reply. An untagged frame's destination was
    // tested before the parse.
    // (`Seen::Host` never comes here: the entry point passes it.)
    let may_vip = match seen {
        Seen::Dst(may_vip) => may_vip,
        Seen::Host | Seen::Unread => filter.may_be(&p.key.dst, false),
    };
    // An opening SYN looks its entry up (or not, during a flood) once its virtual
    // server is known; any other packet first, so that an established flow of a
    // virtual server without persistence is forwarded by its entry and its real alone
    // (decisions 0027, 0028).
    // Port 0 is no virtual server's: the entries with a zero destination port are
    // fragments' (by addresses), never a whole packet's.
    let syn = may_vip && parse::opening_syn(ctx, &p);
    let found = if may_vip && !syn && p.key.dport_be != 0 {
        choose::recorded(&p.key)
    } else {
        None
    };
    let route = match found.and_then(choose::plain) {
        Some(plain) => Route::Plain(plain),
        None => match may_vip.then(|| virtual_server(&p.key)).flatten() {
            Some(vs) => Route::Scheduled(vs),
            None => return not_for_a_virtual_server(ctx, &p, filter),
        },
    };
    let ingress = l2::addressed_here(ctx)?;
    if !parse::l4_complete(ctx, &p) {
        return Err(Verdict::drop(reason::DROP_MALFORMED));
    }
    // The index and method are taken here, beside the route, rather than read from it
    // where they are used: LLVM then shifted the route's saved `VS_MAP` pointer to get
    // at them, which the verifier refuses (pointer arithmetic with `>>=`).
    let (vs_index, method, choice) = match route {
        Route::Plain(plain) => (plain.vs_index, plain.method, plain.choice()),
        Route::Scheduled(vs) => (vs.vs_index, vs.method, scheduled(&p, vs, syn, found)?),
    };
    let verdict = forward_to_real(ctx, &p, route, vs_index, method, &choice, ingress)?;
    stats::count_forward(vs_index, choice.real_id, p.len);
    Ok(verdict)
}

/// Forwards packet `p` of virtual server `vs_index` to the real of `choice` by
/// `method`, on the route it came (`ingress`: as [`l2::addressed_here`] gave it).
/// Returns: the transmit verdict, or the verdict that stopped the packet.
#[inline(always)]
fn forward_to_real(
    ctx: &XdpContext,
    p: &parse::Parsed,
    route: Route,
    vs_index: u32,
    method: u8,
    choice: &Choice,
    ingress: IfaceInfo,
) -> Result<Verdict, Verdict> {
    // SAFETY: array value pointer, valid for this run.
    let real = unsafe { &*choice.real };
    match method {
        METHOD_DR => forward::dr::forward(ctx, p, real, ingress),
        METHOD_NAT => {
            let traced = choice.recorded || choice.marked;
            forward::nat::forward(
                ctx,
                p,
                vs_index,
                choice.real_id,
                real,
                choice.new_flow,
                traced,
            )
        }
        METHOD_TUNNEL => {
            let src = match route {
                Route::Scheduled(vs) => vs.tunnel_src,
                Route::Plain(_) => plain_tunnel_source(&p.key, vs_index)?,
            };
            forward::tunnel::forward(ctx, p, &src, choice.real_id, real)
        }
        _ => Err(Verdict::internal()),
    }
}

/// How a packet for a virtual server finds its real.
#[derive(Clone, Copy)]
enum Route {
    /// By its flow's entry and that entry's real alone (decisions 0027, 0028).
    Plain(choose::Plain),
    /// Through its virtual server: a new flow, a SYN, a persistent virtual server's
    /// packet, or a flow whose entry's real is no longer flagged plain.
    Scheduled(&'static VsInfo),
}

/// A packet of no virtual server (by the filter, or looked up): a NAT real's reply,
/// if it is one (decision 0015). Returns: its verdict (`pass_not_vs` if it is none).
#[inline(always)]
fn not_for_a_virtual_server(
    ctx: &XdpContext,
    p: &parse::Parsed,
    filter: &AddrFilter,
) -> Result<Verdict, Verdict> {
    if !filter.may_be(&p.key.src, true) {
        return Err(Verdict::pass(reason::PASS_NOT_VS));
    }
    let (verdict, vs_index) = forward::nat::reply(ctx, p)?;
    stats::count_reply(vs_index, p.len);
    Ok(verdict)
}

/// Returns: the real of packet `p` of virtual server `vs` ([`choose::real`]), the
/// flow's entry `found` being what the caller looked up; an opening SYN (`syn`) looks
/// its entry up here, unless a SYN flood skips the table (decision 0025). A new flow
/// is counted.
#[inline(always)]
fn scheduled(
    p: &parse::Parsed,
    vs: &VsInfo,
    syn: bool,
    found: Option<&FlowState>,
) -> Result<Choice, Verdict> {
    let found = if syn && !flood::syn_skips_table() {
        choose::recorded(&p.key)
    } else {
        found
    };
    let choice = choose::real(&p.key, vs, record(p, vs, syn), found)?;
    if choice.new_flow {
        stats::count_new_flow(vs.vs_index, choice.real_id);
    }
    Ok(choice)
}

/// Returns: the outer source of flow `key`, established on a plain tunnel's real
/// (decision 0028): the one `TUNNEL_SRCS` holds for its virtual server (index
/// `vs_index`), if read whole; otherwise, the virtual server at the flow's VIP, port
/// and protocol being the entry's (the real's generation says so), that one's, looked
/// up. A packet for which that finds no tunnelling virtual server of that index (it
/// went, or changed its method while this packet ran) is passed, as any packet of no
/// virtual server.
#[inline(always)]
fn plain_tunnel_source(key: &FlowKey, vs_index: u32) -> Result<[u32; 4], Verdict> {
    let t = choose::tunnel_source(vs_index);
    if t.is_whole() {
        return Ok(t.addr);
    }
    match virtual_server(key) {
        Some(vs) if vs.method == METHOD_TUNNEL && vs.vs_index == vs_index => Ok(vs.tunnel_src),
        _ => Err(Verdict::pass(reason::PASS_NOT_VS)),
    }
}

/// Returns: when a packet of virtual server `vs` whose flow `FLOWS` does not hold
/// writes it there.
///
/// SYN guard (decision 0012): a TCP flow enters the connection table with the first
/// packet after its SYN, so a spoofed SYN flood writes nothing there, whatever the
/// method. A UDP flow enters it with its second packet (0017). Without persistence,
/// which must place a client network at once, a NAT flow's SYN or first datagram
/// leaves its mark in UDP_SEEN, where its real's reply finds it (0021). During a SYN
/// flood (decision 0025) an opening SYN does not look up the connection table: its
/// miss is most of a SYN's cost, and the ACK that follows a real handshake looks it
/// up anyway.
#[inline(always)]
fn record(p: &parse::Parsed, vs: &VsInfo, syn: bool) -> Record {
    let unpersisted = vs.persist_timeout_ns == 0;
    if syn {
        if vs.method == METHOD_NAT && unpersisted {
            Record::Mark
        } else {
            Record::Never
        }
    } else if p.key.proto == PROTO_UDP && unpersisted {
        Record::Second
    } else {
        Record::Now
    }
}

/// What [`first_look`] told of a frame, before it was untagged and parsed.
#[derive(Clone, Copy)]
pub enum Seen {
    /// The host's own traffic: passed at once.
    Host,
    /// An untagged IP packet whose destination was tested: whether it may be a VIP.
    Dst(bool),
    /// Nothing (an unwritten filter, tags, not IP, a short header).
    Unread,
}

/// Tells the host's own traffic by the address filter (decision 0022), before the
/// frame is untagged and parsed: an untagged IPv4 packet without options or IPv6
/// packet without extension headers, neither a fragment, carrying TCP or UDP ports,
/// whose destination is no VIP and whose source is no NAT real. The whole path would
/// pass it too (`pass_not_vs`), after writing and reading the frame's tags and
/// building its flow key; anything else (tags, ICMP, fragments, options, a short or
/// inconsistent header) goes the whole way.
/// Returns: `Seen::Host` for the host's own traffic; `Seen::Dst` with the test of the
/// destination if it was made (the whole path then does not make it again);
/// `Seen::Unread` otherwise.
#[inline(always)]
pub fn first_look(ctx: &XdpContext, filter: &AddrFilter) -> Seen {
    if !filter.written {
        return Seen::Unread;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Seen::Unread;
    };
    let len = ctx.data_end() - ctx.data();
    // SAFETY: bounds checked by ptr_at, here and below.
    let (src, l4_off) = match unsafe { (*eth).proto_be } {
        p if p == ETH_P_IP.to_be() => {
            let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
                return Seen::Unread;
            };
            // The destination first: a VIP's packet leaves here at once.
            let dst = [unsafe { (*ip).dst }, 0, 0, 0];
            if filter.may_be(&dst, false) {
                return Seen::Dst(true);
            }
            let (ver_ihl, tot_len, frag, proto) = unsafe {
                (
                    (*ip).ver_ihl,
                    usize::from(u16::from_be((*ip).tot_len_be)),
                    (*ip).frag_off_be,
                    (*ip).proto,
                )
            };
            let whole = tot_len >= IPV4_HLEN && ETH_HLEN + tot_len <= len;
            let plain = ver_ihl == 0x45 && frag & 0x3fff_u16.to_be() == 0;
            if !whole || !plain || (proto != PROTO_TCP && proto != PROTO_UDP) {
                return Seen::Dst(false);
            }
            ([unsafe { (*ip).src }, 0, 0, 0], ETH_HLEN + IPV4_HLEN)
        }
        p if p == ETH_P_IPV6.to_be() => {
            let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
                return Seen::Unread;
            };
            let dst = unsafe { (*ip).dst };
            if filter.may_be(&dst, false) {
                return Seen::Dst(true);
            }
            let (vtf, payload, next) = unsafe {
                (
                    (*ip).ver_tc_flow,
                    usize::from(u16::from_be((*ip).payload_len_be)),
                    (*ip).next_hdr,
                )
            };
            let whole = ETH_HLEN + IPV6_HLEN + payload <= len;
            if u32::from_be(vtf) >> 28 != 6 || !whole || (next != PROTO_TCP && next != PROTO_UDP) {
                return Seen::Dst(false);
            }
            (unsafe { (*ip).src }, ETH_HLEN + IPV6_HLEN)
        }
        _ => return Seen::Unread,
    };
    if ptr_at::<[u16; 2]>(ctx, l4_off).is_some() && !filter.may_be(&src, true) {
        Seen::Host
    } else {
        Seen::Dst(false)
    }
}

/// `ADDR_FILTER` as this packet reads it (decision 0022).
pub struct AddrFilter {
    /// The daemon has written the bits (with this object's version of them).
    written: bool,
}

impl AddrFilter {
    /// Returns: the filter as written now (element 0).
    #[inline(always)]
    pub fn read() -> Self {
        let written = ADDR_FILTER
            .get(0)
            .is_some_and(|w| *w == ADDR_FILTER_VERSION);
        Self { written }
    }

    /// Returns: whether `addr` may be a VIP (`nat_real` false) or a NAT real's
    /// address (true): `false` only when its bit is clear in a filter the daemon
    /// has written.
    #[inline(always)]
    fn may_be(&self, addr: &[u32; 4], nat_real: bool) -> bool {
        if !self.written {
            return true;
        }
        let (word, mask) = addr_filter_place(addr, nat_real);
        ADDR_FILTER.get(1 + word).is_none_or(|w| *w & mask != 0)
    }
}

/// Goes on in program `index` of `TAILS`. Returns: only if that failed (an empty slot,
/// which a daemon that loaded this program never leaves), with `drop_internal`.
#[inline(always)]
fn tail_call(ctx: &XdpContext, index: u32) -> Result<Verdict, Verdict> {
    // SAFETY: the programs of TAILS are this object's XDP programs, written by the
    // daemon; on success control never comes back.
    unsafe { TAILS.tail_call(ctx, index) };
    Err(Verdict::internal())
}
