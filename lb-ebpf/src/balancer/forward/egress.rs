//! What the forwarding methods share: leaving by the right port with the right MAC
//! addresses (the next hop of the methods that route, the egress interface's facts,
//! XDP_TX or XDP_REDIRECT).

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_redirect, programs::XdpContext};
use lb_common::{reason, IfaceInfo};
use lb_ebpf::headers::{ptr_at, EthHdr};

use crate::{fib, icmp, maps::IFACES, parse::Parsed, verdict::Verdict};

/// Sets the frame's destination and source MAC addresses.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Verdict::internal())?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
    }
    Ok(())
}

/// Looks the next hop of `r` up in the kernel's FIB, for the methods that route. A
/// packet too big for the egress once the method has added `overhead` bytes is answered
/// with ICMP carrying the egress MTU less `overhead`.
/// Returns: the hop, or the final verdict of a packet not forwarded.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    p: &Parsed,
    r: &fib::Route,
    overhead: u32,
) -> Result<fib::Hop, Verdict> {
    match fib::lookup(ctx, r) {
        Ok(hop) => Ok(hop),
        // Never an ICMP error about an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4).
        Err(fib::Miss::TooBig(_)) if p.icmp => Err(Verdict::drop(reason::DROP_TOO_BIG)),
        Err(fib::Miss::TooBig(mtu)) => Err(icmp::too_big(ctx, p, mtu.saturating_sub(overhead))),
        Err(fib::Miss::Drop(v)) => Err(v),
    }
}

/// Looks up the interface a frame leaves by.
/// Returns: its facts, or the drop verdict for an interface the daemon did not register.
#[inline(always)]
pub fn egress_iface(ifindex: u32) -> Result<&'static IfaceInfo, Verdict> {
    // SAFETY: preallocated hash; the daemon only writes IFACES before attaching.
    unsafe { IFACES.get(&ifindex) }.ok_or(Verdict::drop(reason::DROP_NO_IFACE))
}

/// Sends the (rewritten) frame out of `ifindex`: XDP_TX when that is where it came
/// in, XDP_REDIRECT otherwise.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, ifindex: u32) -> Verdict {
    if ifindex as usize == ctx.ingress_ifindex() {
        return Verdict {
            action: xdp_action::XDP_TX,
            reason: reason::FWD_TX,
        };
    }
    // SAFETY: plain helper call; it only records the target for after the program returns.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    Verdict {
        action,
        reason: reason::FWD_REDIRECT,
    }
}
