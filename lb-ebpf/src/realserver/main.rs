//! The real server's BPF object (`xdpvs-realserver`), attached by `xdpvs realserver
//! decap` on hosts behind a tunnelling balancer. It holds none of the balancer's maps.
#![no_std]
#![no_main]

mod decap;
mod maps;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// The decapsulator: unwraps tunnelled packets for configured VIPs, passes everything
/// up the stack.
#[xdp]
pub fn xdpvs_decap(ctx: XdpContext) -> u32 {
    decap::try_decap(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
