//! What the balancer does with a packet and why: the result of every step of its walk.
//! Below every other room, so that each can return one without importing the walk.

use aya_ebpf::bindings::xdp_action;
use lb_common::reason;

/// What to do with a packet and why.
#[derive(Clone, Copy)]
pub struct Verdict {
    /// The XDP action (`xdp_action::XDP_*`).
    pub action: u32,
    /// The [`lb_common::reason`] the packet is counted under.
    pub reason: u32,
}

impl Verdict {
    /// Returns: the verdict that hands the packet to the kernel, counted under `reason`.
    pub const fn pass(reason: u32) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    /// Returns: the verdict that drops the packet, counted under `reason`.
    pub const fn drop(reason: u32) -> Self {
        Self {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }

    /// Returns: the verdict for a header the program itself checked moments ago and now
    /// cannot reach, or a ring or real index out of range: a data path bug (or a
    /// daemon/data path disagreement), dropped as `drop_internal`.
    pub const fn internal() -> Self {
        Self::drop(reason::DROP_INTERNAL)
    }
}
