//! NAT (LVS "masq"): requests get the real's address and port as destination; replies,
//! which the reals route back through the balancer, get the VIP and virtual port back
//! as source. Checksums are updated incrementally (RFC 1624); next hops come from the
//! kernel's FIB.
//!
//! Policy:
//! - The reply state (reply 5-tuple -> VIP:port) is written when a flow is scheduled and
//!   re-written by any request that finds it missing (NAT_STATE is an LRU of its own).
//! - A packet from a real that matches no state is not a NAT reply: passed untouched.
//! - TTL is not decremented: like IPVS, the balancer is the service's endpoint.
//! - A packet too big for the egress MTU is answered with ICMP (see `icmp`).

use aya_ebpf::programs::XdpContext;
use lb_common::{reason, FlowKey, NatState, RealInfo, VsInfo, FAMILY_V4, PROTO_UDP, SETTING_NAT};
use lb_ebpf::{
    csum,
    headers::{ptr_at, Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    fib,
    forward::egress::{next_hop, set_macs, transmit},
    l2::addressed_here,
    maps::{NAT_STATE, SETTINGS},
    parse::{l4_complete, l4_csum_off, Parsed},
    verdict::Verdict,
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
    // SAFETY: bounds checked by ptr_at; parse() read these headers already.
    unsafe {
        if p.key.family == FAMILY_V4 {
            let ip: *mut Ipv4Hdr = ptr_at(ctx, p.l3_off)?;
            let ip_acc = csum::diff32(0, old_addr[0], addr[0]);
            (*ip).check = csum::apply((*ip).check, ip_acc);
            match end {
                End::Src => (*ip).src = addr[0],
                End::Dst => (*ip).dst = addr[0],
            }
        } else {
            let ip: *mut Ipv6Hdr = ptr_at(ctx, p.l3_off)?;
            match end {
                End::Src => (*ip).src = *addr,
                End::Dst => (*ip).dst = *addr,
            }
        }
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
    let r = fib::Route {
        family: p.key.family,
        proto: p.key.proto,
        src,
        dst,
        sport_be,
        dport_be,
        tot_len: p.ip_len as u16,
    };
    next_hop(ctx, p, &r, 0)
}

/// Forwards a request of virtual server `vs` to `real`.
/// Returns: the transmit verdict, or the final verdict of a packet not forwarded.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    vs: &VsInfo,
    real: &RealInfo,
    new_flow: bool,
) -> Result<Verdict, Verdict> {
    if p.vlan {
        return Err(Verdict::drop(reason::DROP_VLAN));
    }
    let hop = route(ctx, p, &p.key.src, &real.addr, p.key.sport_be, real.port_be)?;
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
            vs_index: vs.vs_index,
        };
        // A full LRU evicts its oldest entry; an error leaves the reply unrestored, and
        // the next request tries again.
        let _ = NAT_STATE.insert(&reply, &state, 0);
    }
    rewrite(ctx, p, End::Dst, &real.addr, real.port_be).ok_or(Verdict::internal())?;
    set_macs(ctx, hop.dmac, hop.smac)?;
    Ok(transmit(ctx, hop.ifindex))
}

/// Restores VIP:port as the source of a reply from a real, if `p` is one.
/// Returns: the verdict (a packet that is no NAT reply is passed untouched), and the
/// virtual server index of a restored reply.
#[inline(always)]
pub fn reply(ctx: &XdpContext, p: &Parsed) -> Result<(Verdict, u32), Verdict> {
    if SETTINGS.get(0).is_none_or(|s| *s & SETTING_NAT == 0) {
        return Err(Verdict::pass(reason::PASS_NOT_VS));
    }
    // SAFETY: LRU hash value, copied out at once.
    let state = match unsafe { NAT_STATE.get(&p.key) } {
        Some(s) => *s,
        None => return Err(Verdict::pass(reason::PASS_NOT_VS)),
    };
    addressed_here(ctx)?;
    if !l4_complete(ctx, p) {
        return Err(Verdict::drop(reason::DROP_MALFORMED));
    }
    if p.vlan {
        return Err(Verdict::drop(reason::DROP_VLAN));
    }
    let hop = route(
        ctx,
        p,
        &state.vip,
        &p.key.dst,
        state.vport_be,
        p.key.dport_be,
    )?;
    rewrite(ctx, p, End::Src, &state.vip, state.vport_be).ok_or(Verdict::internal())?;
    set_macs(ctx, hop.dmac, hop.smac)?;
    let v = transmit(ctx, hop.ifindex);
    Ok((
        Verdict {
            action: v.action,
            reason: reason::FWD_NAT_REPLY,
        },
        state.vs_index,
    ))
}
