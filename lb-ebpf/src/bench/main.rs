//! The benchmark object (`xdpvs-bench`): what the live bench compares xdpvs with and
//! counts with (`tests/src/live.rs`). Never loaded by the daemon. No maps: the kernel's
//! per-program statistics (`run_cnt`, `run_time_ns`) are the only counters needed.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_ebpf::headers::{ptr_at, EthHdr};

/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;

/// The MAC the bounce sends every frame to (a real's), set at load time
/// (`lb_common::bench::BOUNCE_DST`).
#[no_mangle]
static BOUNCE_DST: [u8; 6] = [0; 6];
/// The MAC the bounce sends from (the interface's own), set at load time.
#[no_mangle]
static BOUNCE_SRC: [u8; 6] = [0; 6];

/// The least any XDP load balancer does to a frame it forwards on the interface it came
/// in by: both MACs rewritten, XDP_TX. No parsing beyond Ethernet, no lookup.
#[xdp]
pub fn xdpvs_bounce(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: `ptr_at` checked that the header lies within the frame. The volatile reads
    // keep the compiler from folding the globals' zero initialisers in: the loader
    // overrides them.
    unsafe {
        (*eth).dst = core::ptr::read_volatile(&BOUNCE_DST);
        (*eth).src = core::ptr::read_volatile(&BOUNCE_SRC);
    }
    xdp_action::XDP_TX
}

/// The receivers' sink, on their interfaces' tc ingress: every frame it drops is one
/// delivered (its `run_cnt` counts them); ARP passes so that the balancer can resolve
/// the receiver, and a receiver sending (the NAT reply workload) can resolve the
/// balancer. A tc program rather than XDP: XDP on a veth needs 256 bytes of headroom
/// and copies every frame that has less, which an encapsulated frame (20 bytes of it
/// taken by its outer header) has: the receiver, not the balancer, would pay that copy.
#[classifier]
pub fn xdpvs_sink(ctx: TcContext) -> i32 {
    match ctx.load::<u16>(core::mem::offset_of!(EthHdr, proto_be)) {
        Ok(proto_be) if u16::from_be(proto_be) == ETH_P_ARP => TC_ACT_OK as i32,
        _ => TC_ACT_SHOT as i32,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
