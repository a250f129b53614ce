//! The load balancer's BPF object (`xdpvs`). Entry points only; the work is in the
//! modules, one topic each.
#![no_std]
#![no_main]

mod balance;
mod choose;
mod fib;
mod forward;
mod icmp;
mod l2;
mod maps;
mod parse;
mod stats;
mod verdict;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The load balancer, attached to every interface of the configuration.
#[xdp]
pub fn xdpvs_lb(ctx: XdpContext) -> u32 {
    let mut verdict = match balance::try_balance(&ctx) {
        Ok(v) | Err(v) => v,
    };
    if verdict.action == xdp_action::XDP_PASS && !l2::retag(&ctx) {
        verdict = verdict::Verdict::internal();
    }
    stats::count_verdict(verdict.reason);
    verdict.action
}

/// XDP_PASS and nothing else. veth hands XDP_TX'd or redirected frames only to a peer
/// with an XDP program attached; tests and the demo attach this one there.
#[xdp]
pub fn xdpvs_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
