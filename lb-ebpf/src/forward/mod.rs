//! Forwarding methods, one module each, and what they share: leaving by the right port.

pub mod dr;
pub mod nat;
pub mod tunnel;

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_redirect, programs::XdpContext};
use lb_common::{reason, IfaceInfo};

use crate::{balance::Verdict, maps::IFACES};

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
