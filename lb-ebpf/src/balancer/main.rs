//! The load balancer's BPF object (`xdpvs`). Entry points, and the end they share;
//! the work is in the modules, one topic each. `xdpvs_lb` hands fragments and ICMP
//! errors to programs of their own by tail call (`TAILS`, decision 0018); each ends
//! as it does.
#![no_std]
#![no_main]
// The BPF target offers no `fetch_or` on atomics; the intrinsic is the kernel's
// BPF_ATOMIC | BPF_OR (decision 0026).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod balance;
mod choose;
mod fib;
mod flood;
mod flow_filter;
mod forward;
mod fragment;
mod icmp;
mod icmp_error;
mod l2;
mod maps;
mod parse;
mod stats;
mod ticks;
mod verdict;
mod vs;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

// The bodies are `#[inline(always)]`: `#[xdp]` makes the function it is given a
// function of its own inside the entry point, which LLVM does not inline into a
// program this large. That was a BPF-to-BPF call, prologue, epilogue and return per
// packet, about 9 ns of an established DR packet's 100 in BPF_PROG_TEST_RUN.

/// The load balancer, attached to every interface of the configuration.
#[xdp]
#[inline(always)]
pub fn xdpvs_lb(ctx: XdpContext) -> u32 {
    let filter = balance::AddrFilter::read();
    let seen = balance::first_look(&ctx, &filter);
    if let balance::Seen::Host = seen {
        stats::count_verdict(lb_common::reason::PASS_NOT_VS);
        return xdp_action::XDP_PASS;
    }
    finish(&ctx, balance::try_balance(&ctx, &filter, seen))
}

/// TCP and UDP fragments, from `xdpvs_lb` (`TAIL_FRAGMENT`).
#[xdp]
#[inline(always)]
pub fn xdpvs_fragment(ctx: XdpContext) -> u32 {
    finish(&ctx, fragment::try_fragment(&ctx))
}

/// ICMP errors about flows, from `xdpvs_lb` (`TAIL_ICMP`).
#[xdp]
#[inline(always)]
pub fn xdpvs_icmp_error(ctx: XdpContext) -> u32 {
    finish(&ctx, icmp_error::try_icmp_error(&ctx))
}

/// Ends a packet's run: a frame passed to the kernel gets its VLAN tags back; the
/// verdict is counted. Returns: the XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, result: Result<verdict::Verdict, verdict::Verdict>) -> u32 {
    let mut verdict = match result {
        Ok(v) | Err(v) => v,
    };
    if verdict.action == xdp_action::XDP_PASS && !l2::retag(ctx) {
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
