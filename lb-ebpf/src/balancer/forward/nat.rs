//! NAT (LVS "masq"): requests get the real's address and port as destination; replies,
//! which the reals route back through the balancer, get the VIP and virtual port back
//! as source. Checksums are updated incrementally (RFC 1624); next hops come from the
//! kernel's FIB, kept per CPU where the route depends on the destination's address alone
//! (decision 0024): a request's by its real, a reply's by its client.
//!
//! Policy:
//! - A reply is recognised by the flow's own `FLOWS` entry (decision 0015): a real whose
//!   address and port serve one NAT virtual server only is in `NAT_REALS`, which gives
//!   the VIP:port; the flow key rebuilt from it must name that real. So a NAT flow
//!   writes one table, like the other methods. For a real shared by several NAT
//!   virtual servers, the reply state (reply 5-tuple -> VIP:port) goes into `NAT_STATE`
//!   when the flow is scheduled and again by any request that finds it missing
//!   (`NAT_STATE` is an LRU of its own).
//! - A packet from a real that matches no flow or state is not a NAT reply: passed
//!   untouched.
//! - TTL is not decremented: like IPVS, the balancer is the service's endpoint.
//! - A packet too big for the egress MTU is answered with ICMP (see `icmp`).
//! - ICMP errors about NAT flows are translated both ways: a real's error goes to the
//!   client as the VIP's, an error about a flow sent to the VIP goes to the flow's
//!   real as the real's (outer address, quoted address and port, every checksum).
//! - Fragments (decision 0016), for a virtual server with `fragments: true`: every
//!   fragment of a request gets the real (chosen by addresses) as destination, the
//!   first, which holds the ports and the datagram's checksum, its port too; the first
//!   writes the reply state in `NAT_STATE` (the flow is in `FLOWS` by addresses). Of a
//!   fragmented reply, the first fragment finds its flow's state by its ports and
//!   records it in `NAT_FRAGS` by the datagram's identification; the fragments after
//!   it find it there and get the VIP as source. A later fragment that finds nothing
//!   (it overtook its first, or is no reply) is the kernel's (`pass_fragment`).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    reason, FlowKey, FlowState, NatState, RealInfo, VsInfo, VsKey, FAMILY_V4, PROTO_UDP,
    REAL_F_BY_DEST, REAL_F_SOLE_NAT, SETTING_CLIENTS_BY_DEST, SETTING_NAT,
};
use lb_ebpf::{
    csum,
    headers::{ptr_at, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ICMP_CSUM_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
};

use crate::{
    choose::{marked_to, record_flow, recorded},
    fib,
    forward::egress::{next_hop, routed, transmit, Keep},
    l2::addressed_here,
    maps::{NAT_REALS, NAT_STATE, REALS, SETTINGS},
    parse::{l4_complete, l4_csum_off, Parsed},
    verdict::Verdict,
    vs::virtual_server,
};

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}

/// Rewrites one end's address and port and fixes the IPv4 header and L4 checksums.
/// Returns: `None` if a header is out of bounds.
#[inline(always)]
fn rewrite(ctx: &XdpContext, p: &Parsed, end: End, addr: &[u32; 4], port_be: u16) -> Option<()> {
    let (old_addr, old_port) = match end {
        End::Src => (&p.key.src, p.key.sport_be),
        End::Dst => (&p.key.dst, p.key.dport_be),
    };
    let acc = csum::diff16(csum::diff_addr(0, old_addr, addr), old_port, port_be);
    let ports: *mut [u16; 2] = ptr_at(ctx, p.l4_off)?;
    let check: *mut u16 = ptr_at(ctx, l4_csum_off(p))?;
    readdress(ctx, p, end, addr)?;
    // SAFETY: bounds checked by ptr_at; parse() read these headers already.
    unsafe {
        match end {
            End::Src => (*ports)[0] = port_be,
            End::Dst => (*ports)[1] = port_be,
        }
        *check = if p.key.proto == PROTO_UDP {
            csum::apply_udp(*check, acc)
        } else {
            csum::apply(*check, acc)
        };
    }
    Some(())
}

/// Returns: the route of `p` (source `src:sport_be`) toward `dst:dport_be`.
#[inline(always)]
fn route_of<'a>(
    p: &Parsed,
    src: &'a [u32; 4],
    dst: &'a [u32; 4],
    sport_be: u16,
    dport_be: u16,
) -> fib::Route<'a> {
    fib::Route {
        family: p.key.family,
        proto: p.key.proto,
        src,
        dst,
        sport_be,
        dport_be,
        tot_len: p.ip_len as u16,
    }
}

/// Finds the next hop of `p` (source `src:sport_be`) toward `dst:dport_be`; NAT adds no
/// bytes, so a too-big answer carries the egress MTU itself.
#[inline(always)]
fn route(
    ctx: &XdpContext,
    p: &Parsed,
    src: &[u32; 4],
    dst: &[u32; 4],
    sport_be: u16,
    dport_be: u16,
) -> Result<fib::Hop, Verdict> {
    next_hop(ctx, p, &route_of(p, src, dst, sport_be, dport_be), 0, None)
}

/// Finds the next hop of request `p` toward `real` (id `real_id`), as [`route`] does:
/// kept per CPU when the daemon found that the real's route depends on its address
/// alone (`REAL_F_BY_DEST`, decision 0024), the same then for every client.
#[inline(always)]
fn request_hop(
    ctx: &XdpContext,
    p: &Parsed,
    real_id: u32,
    real: &RealInfo,
) -> Result<fib::Hop, Verdict> {
    let r = route_of(p, &p.key.src, &real.addr, p.key.sport_be, real.port_be);
    let keep = if real.flags & REAL_F_BY_DEST != 0 {
        Keep::real(real_id, real.generation, &[0; 4])
    } else {
        None
    };
    next_hop(ctx, p, &r, 0, keep)
}

/// Forwards a request of the virtual server at `vs_index` to `real` (id `real_id`).
/// `traced`: the flow is in `FLOWS`, or its mark in `UDP_SEEN` (a SYN, a first
/// datagram: decision 0021), so that the reply of a real that serves the virtual
/// server alone is found by it; otherwise the reply state goes into `NAT_STATE`.
/// Returns: the transmit verdict, or the final verdict of a packet not forwarded.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    vs_index: u32,
    real_id: u32,
    real: &RealInfo,
    new_flow: bool,
    traced: bool,
) -> Result<Verdict, Verdict> {
    let hop = request_hop(ctx, p, real_id, real)?;
    // REAL_F_SOLE_NAT: the real's NAT_REALS entry names this virtual server.
    if !traced || real.flags & REAL_F_SOLE_NAT == 0 {
        keep_reply_state(p, vs_index, real, new_flow);
    }
    rewrite(ctx, p, End::Dst, &real.addr, real.port_be).ok_or(Verdict::internal())?;
    let out = routed(ctx, p, &hop, 0)?;
    Ok(transmit(ctx, out.xmit))
}

/// Returns: the `NAT_REALS` key of the real at `addr:port_be` for `p`'s protocol.
#[inline(always)]
fn nat_real_key(addr: &[u32; 4], port_be: u16, p: &Parsed) -> VsKey {
    VsKey {
        addr: *addr,
        port_be,
        proto: p.key.proto,
        family: p.key.family,
    }
}

/// Writes the reply state of `p`'s flow to `real` in `NAT_STATE`, for a new flow or
/// when it is missing.
#[inline(always)]
fn keep_reply_state(p: &Parsed, vs_index: u32, real: &RealInfo, new_flow: bool) {
    let reply = FlowKey {
        src: real.addr,
        dst: p.key.src,
        sport_be: real.port_be,
        dport_be: p.key.sport_be,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    // SAFETY: LRU hash lookup; only presence is used.
    if new_flow || unsafe { NAT_STATE.get(&reply) }.is_none() {
        let state = NatState {
            vip: p.key.dst,
            vport_be: p.key.dport_be,
            _pad: 0,
            vs_index,
        };
        // A full LRU evicts its oldest entry; an error leaves the reply unrestored, and
        // the next request tries again.
        let _ = NAT_STATE.insert(&reply, &state, 0);
    }
}

/// The entry of a NAT flow found by its mark, to record once its reply is known to be
/// forwarded (a UDP flow's).
type ToRecord = Option<FlowState>;

/// Returns: the NAT state of the flow whose reply direction `p.key` is, for a frame
/// addressed to this host, with the flow to record if it was found by its mark; a
/// pass verdict when NAT is off or there is none.
#[inline(always)]
fn reply_state(ctx: &XdpContext, p: &Parsed) -> Result<(NatState, ToRecord), Verdict> {
    if SETTINGS.get(0).is_none_or(|s| *s & SETTING_NAT == 0) {
        return Err(Verdict::pass(reason::PASS_NOT_VS));
    }
    let found = match flow_of_reply(ctx, p) {
        Some(f) => f,
        // SAFETY: LRU hash value, copied out at once.
        None => match unsafe { NAT_STATE.get(&p.key) } {
            Some(s) => (*s, None),
            None => return Err(Verdict::pass(reason::PASS_NOT_VS)),
        },
    };
    addressed_here(ctx)?;
    Ok(found)
}

/// Returns: the VIP:port to restore on `p` (real -> client) if the real serves one NAT
/// virtual server alone and the client's flow to it is in `FLOWS`, pinned to this
/// real, or is in no entry but left its mark in `UDP_SEEN` and is Maglev's for this
/// real (decision 0021), or is in an entry naming another real but left that mark
/// (a SYN balanced past the table during a SYN flood, decision 0025); with, for a flow
/// in no entry, the flow's entry, which a UDP reply records once it is forwarded (a
/// TCP one never: a real answers spoofed SYNs too, and the client's ACK records it).
#[inline(always)]
fn flow_of_reply(ctx: &XdpContext, p: &Parsed) -> Option<(NatState, ToRecord)> {
    let k = nat_real_key(&p.key.src, p.key.sport_be, p);
    // SAFETY: hash map value, copied out at once.
    let state = *unsafe { NAT_REALS.get(&k) }?;
    let request = request_of(p, &state);
    let flow = recorded(&request).copied();
    if let Some(f) = flow {
        let ours = f.vs_index == state.vs_index
            && REALS
                .get(f.real_id)
                .is_some_and(|r| r.addr == p.key.src && r.port_be == p.key.sport_be);
        if ours {
            return Some((state, None));
        }
    }
    // Unrecorded, or recorded to another real: a SYN balanced past the table during a
    // SYN flood (decision 0025) may have left its mark all the same, and its SYN-ACK
    // alone is looked for past the entry. Only a flow that had no entry is recorded
    // from its reply.
    if flow.is_some() && !crate::parse::syn_ack(ctx, p) {
        return None;
    }
    let vs = virtual_server(&request).filter(|vs| vs.vs_index == state.vs_index)?;
    let entry = marked_to(&request, vs, &p.key.src, p.key.sport_be)?;
    let record = flow.is_none() && p.key.proto == PROTO_UDP;
    Some((state, record.then_some(entry)))
}

/// Returns: the key of the flow whose reply `p` is, when `state`'s VIP:port is what
/// its client sent to.
#[inline(always)]
fn request_of(p: &Parsed, state: &NatState) -> FlowKey {
    FlowKey {
        src: p.key.dst,
        dst: state.vip,
        sport_be: p.key.dport_be,
        dport_be: state.vport_be,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    }
}

/// Records, as `entry`, the flow whose reply `p` is (restored to `state`'s VIP:port).
#[inline(always)]
fn record_reply_flow(p: &Parsed, state: &NatState, entry: &FlowState) {
    record_flow(&request_of(p, state), entry);
}

/// Sends `p` on to its client once `restore` has made it the VIP's, counted under
/// `reason`; its next hop kept per CPU by the client's address while the daemon says
/// routes depend on the destination alone (`SETTING_CLIENTS_BY_DEST`, decision 0024).
/// Returns: the verdict and the virtual server index.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    p: &Parsed,
    state: &NatState,
    reason: u32,
    restore: impl FnOnce() -> Option<()>,
) -> Result<(Verdict, u32), Verdict> {
    let r = route_of(p, &state.vip, &p.key.dst, state.vport_be, p.key.dport_be);
    let by_dest = SETTINGS
        .get(0)
        .is_some_and(|s| *s & SETTING_CLIENTS_BY_DEST != 0);
    let keep = if by_dest {
        Keep::client(r.dst, p.key.family)
    } else {
        None
    };
    let hop = next_hop(ctx, p, &r, 0, keep)?;
    restore().ok_or(Verdict::internal())?;
    let out = routed(ctx, p, &hop, 0)?;
    let v = transmit(ctx, out.xmit);
    Ok((
        Verdict {
            action: v.action,
            reason,
        },
        state.vs_index,
    ))
}

/// Restores VIP:port as the source of a reply from a real, if `p` is one.
/// Returns: the verdict (a packet that is no NAT reply is passed untouched), and the
/// virtual server index of a restored reply.
#[inline(always)]
pub fn reply(ctx: &XdpContext, p: &Parsed) -> Result<(Verdict, u32), Verdict> {
    let (state, to_record) = reply_state(ctx, p)?;
    if !l4_complete(ctx, p) {
        return Err(Verdict::drop(reason::DROP_MALFORMED));
    }
    let sent = to_client(ctx, p, &state, reason::FWD_NAT_REPLY, || {
        rewrite(ctx, p, End::Src, &state.vip, state.vport_be)
    })?;
    if let Some(entry) = to_record {
        record_reply_flow(p, &state, &entry);
    }
    Ok(sent)
}

/// Translates an ICMP error about a NAT flow in place. `outer` is the end of the outer
/// header that changes to `addr` (the source of a real's error on its way to the
/// client, the destination of an error about a NAT flow on its way to the real), where
/// it is the flow's address (a router's error keeps its own); the quoted packet
/// changes at its other end, to `addr:port_be`. Every checksum involved
/// is updated incrementally: the outer IPv4 header's, the quoted IPv4 header's, the
/// quoted TCP/UDP checksum where the quote holds it, and the ICMP checksum (with the
/// pseudo-header for ICMPv6).
/// Returns: `None` if a header is out of bounds.
#[inline(always)]
fn translate_error(
    ctx: &XdpContext,
    p: &Parsed,
    outer: End,
    addr: &[u32; 4],
    port_be: u16,
) -> Option<()> {
    let v4 = p.key.family == FAMILY_V4;
    // The outer address that changes is the quoted packet's other end.
    let (old, old_port) = match outer {
        End::Src => (&p.key.src, p.key.sport_be),
        End::Dst => (&p.key.dst, p.key.dport_be),
    };
    let addr_acc = csum::diff_addr(0, old, addr);
    let mut icmp_acc = csum::diff16(addr_acc, old_port, port_be);
    // The outer address changes only where it is the flow's end (a real's own error,
    // an error sent to the VIP); an error from a router between balancer and real
    // keeps the router's.
    let mut outer_same = true;
    // SAFETY (each block): bounds checked by ptr_at; parse() read these headers.
    if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
        let inner: *mut Ipv4Hdr = ptr_at(ctx, p.inner_l3)?;
        unsafe {
            match outer {
                End::Src if (*ip).src == old[0] => (*ip).src = addr[0],
                End::Dst if (*ip).dst == old[0] => (*ip).dst = addr[0],
                // From a router on the way, not from the flow's end: stays as it is.
                _ => outer_same = false,
            }
            if outer_same {
                (*ip).check = csum::apply((*ip).check, csum::diff32(0, old[0], addr[0]));
            }
            let before = (*inner).check;
            (*inner).check = csum::apply(before, csum::diff32(0, old[0], addr[0]));
            icmp_acc = csum::diff16(icmp_acc, before, (*inner).check);
            match outer {
                End::Src => (*inner).dst = addr[0],
                End::Dst => (*inner).src = addr[0],
            }
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
        let inner: *mut Ipv6Hdr = ptr_at(ctx, p.inner_l3)?;
        unsafe {
            match outer {
                End::Src => {
                    if (*ip).src == *old {
                        (*ip).src = *addr;
                    } else {
                        outer_same = false;
                    }
                    (*inner).dst = *addr;
                }
                End::Dst => {
                    if (*ip).dst == *old {
                        (*ip).dst = *addr;
                    } else {
                        outer_same = false;
                    }
                    (*inner).src = *addr;
                }
            }
        }
        if outer_same {
            // ICMPv6's pseudo-header holds the outer addresses.
            icmp_acc += addr_acc;
        }
    }
    let ports: *mut [u16; 2] = ptr_at(ctx, p.inner_l4)?;
    unsafe {
        match outer {
            End::Src => (*ports)[1] = port_be,
            End::Dst => (*ports)[0] = port_be,
        }
    }
    // The quoted TCP/UDP checksum, where the quote is long enough to hold it (within
    // the IP packet: bytes after it are not the ICMP message's).
    let l4_check_off = p.inner_l4
        + if p.key.proto == PROTO_UDP {
            UDP_CSUM_OFF
        } else {
            TCP_CSUM_OFF
        };
    let quoted = l4_check_off + 2 <= ETH_HLEN + p.ip_len;
    if let Some(check) = ptr_at::<u16>(ctx, l4_check_off).filter(|_| quoted) {
        let check = check as *mut u16;
        let l4_acc = csum::diff16(addr_acc, old_port, port_be);
        unsafe {
            let before = *check;
            *check = if p.key.proto == PROTO_UDP {
                csum::apply_udp(before, l4_acc)
            } else {
                csum::apply(before, l4_acc)
            };
            icmp_acc = csum::diff16(icmp_acc, before, *check);
        }
    }
    let icmp_check: *mut u16 = ptr_at(ctx, p.l4_off + ICMP_CSUM_OFF)?;
    unsafe { *icmp_check = csum::apply(*icmp_check, icmp_acc) };
    Some(())
}

/// Sends a NAT real's ICMP error about a flow (a port unreachable for UDP, say) on to
/// the client as the VIP's: outer source and quoted destination become VIP:port. `p`
/// is the error, parsed as the flow's reply direction (real -> client).
/// Returns: the verdict and the virtual server index, or a pass verdict when the error
/// is about no NAT flow.
#[inline(always)]
pub fn icmp_from_real(ctx: &XdpContext, p: &Parsed) -> Result<(Verdict, u32), Verdict> {
    // An error records nothing, whatever found its flow.
    let (state, _) = reply_state(ctx, p)?;
    to_client(ctx, p, &state, reason::FWD_ICMP_ERROR, || {
        translate_error(ctx, p, End::Src, &state.vip, state.vport_be)
    })
}

/// Sends an ICMP error about a NAT flow, addressed to the VIP (a router's "too big"
/// about a reply), to the flow's real as the real's own: outer destination and quoted
/// source become the real's address and port.
/// Returns: the transmit verdict, or the final verdict of an error not forwarded.
#[inline(always)]
pub fn icmp_to_real(ctx: &XdpContext, p: &Parsed, real: &RealInfo) -> Result<Verdict, Verdict> {
    let hop = route(ctx, p, &p.key.src, &real.addr, p.key.sport_be, real.port_be)?;
    translate_error(ctx, p, End::Dst, &real.addr, real.port_be).ok_or(Verdict::internal())?;
    let out = routed(ctx, p, &hop, 0)?;
    Ok(transmit(ctx, out.xmit))
}

/// Rewrites one end's address only, for a fragment after the first: it carries no
/// ports, and its datagram's TCP/UDP checksum lies in the first fragment, which
/// [`rewrite`] translates. Fixes the IPv4 header checksum.
/// Returns: `None` if the IP header is out of bounds.
#[inline(always)]
fn readdress(ctx: &XdpContext, p: &Parsed, end: End, addr: &[u32; 4]) -> Option<()> {
    let old = match end {
        End::Src => &p.key.src,
        End::Dst => &p.key.dst,
    };
    // SAFETY: bounds checked by ptr_at; parse() read this header already.
    unsafe {
        if p.key.family == FAMILY_V4 {
            let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
            (*ip).check = csum::apply((*ip).check, csum::diff32(0, old[0], addr[0]));
            match end {
                End::Src => (*ip).src = addr[0],
                End::Dst => (*ip).dst = addr[0],
            }
        } else {
            let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
            match end {
                End::Src => (*ip).src = *addr,
                End::Dst => (*ip).dst = *addr,
            }
        }
    }
    Some(())
}

/// Forwards a fragment of a request to virtual server `vs` (port `vport_be`), which
/// takes fragments, to `real`, chosen by addresses so that every fragment of the
/// datagram reaches it (decision 0016). The first fragment is translated as any
/// request (destination address and port, the L4 checksum it holds for the whole
/// datagram) and writes the reply state in `NAT_STATE`; the later ones get the real's
/// address only.
/// Returns: the transmit verdict, or the final verdict of a fragment not forwarded: a
/// first fragment too short to hold its TCP/UDP header is dropped, one to another
/// port than the virtual server's is the kernel's (no port of it may be rewritten).
#[inline(always)]
pub fn forward_fragment(
    ctx: &XdpContext,
    p: &mut Parsed,
    vs: &VsInfo,
    vport_be: u16,
    real: &RealInfo,
    new_flow: bool,
) -> Result<Verdict, Verdict> {
    if p.frag_first {
        crate::parse::first_fragment_ports(ctx, p).ok_or(Verdict::drop(reason::DROP_MALFORMED))?;
        let q: &Parsed = p;
        if q.key.dport_be != vport_be {
            return Err(Verdict::pass(reason::PASS_FRAGMENT));
        }
        let hop = route(ctx, q, &q.key.src, &real.addr, q.key.sport_be, real.port_be)?;
        // The datagram's flow is in FLOWS by addresses, where its reply, which has
        // ports, does not look: the reply state goes to NAT_STATE whatever the real.
        keep_reply_state(q, vs.vs_index, real, new_flow);
        rewrite(ctx, q, End::Dst, &real.addr, real.port_be).ok_or(Verdict::internal())?;
        let out = routed(ctx, q, &hop, 0)?;
        return Ok(transmit(ctx, out.xmit));
    }
    let hop = route(ctx, p, &p.key.src, &real.addr, 0, 0)?;
    readdress(ctx, p, End::Dst, &real.addr).ok_or(Verdict::internal())?;
    let out = routed(ctx, p, &hop, 0)?;
    Ok(transmit(ctx, out.xmit))
}

/// Restores the VIP as the source of a fragment of a real's reply, if `p` is one
/// (decision 0016): the first fragment, found by its ports in the flow's reply state,
/// gets VIP:port and records that state for the datagram in `NAT_FRAGS`; a later
/// fragment finds it there and gets the VIP.
/// Returns: the verdict and the virtual server index, or `pass_fragment` for a
/// fragment that is no known NAT reply (a later one that overtook its first among
/// them).
#[inline(always)]
pub fn reply_fragment(ctx: &XdpContext, p: &mut Parsed) -> Result<(Verdict, u32), Verdict> {
    let not_reply = Verdict::pass(reason::PASS_FRAGMENT);
    if SETTINGS.get(0).is_none_or(|s| *s & SETTING_NAT == 0) {
        return Err(not_reply);
    }
    let datagram = lb_common::FragKey {
        src: p.key.src,
        dst: p.key.dst,
        id_be: p.frag_id_be,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let mut to_record = None;
    let state = if p.frag_first {
        crate::parse::first_fragment_ports(ctx, p).ok_or(not_reply)?;
        // No reply state: no NAT reply, counted as the fragment it is.
        let (state, found_by_mark) = reply_state(ctx, p).map_err(|v| {
            if v.reason == reason::PASS_NOT_VS {
                not_reply
            } else {
                v
            }
        })?;
        to_record = found_by_mark;
        // A full LRU evicts its oldest entry; an error leaves the later fragments to
        // the kernel, and the datagram is lost as on any lossy path.
        let _ = crate::maps::NAT_FRAGS.insert(&datagram, &state, 0);
        state
    } else {
        // SAFETY: LRU hash value, copied out at once.
        let state = unsafe { crate::maps::NAT_FRAGS.get(&datagram) }
            .copied()
            .ok_or(not_reply)?;
        addressed_here(ctx)?;
        state
    };
    let p: &Parsed = p;
    let sent = to_client(ctx, p, &state, reason::FWD_NAT_REPLY, || {
        if p.frag_first {
            rewrite(ctx, p, End::Src, &state.vip, state.vport_be)
        } else {
            readdress(ctx, p, End::Src, &state.vip)
        }
    })?;
    if let Some(entry) = to_record {
        record_reply_flow(p, &state, &entry);
    }
    Ok(sent)
}
