//! Direct routing: the frame goes to the real unchanged but for its two MAC addresses.
//! The real holds the VIP on a loopback and answers the client itself.

use aya_ebpf::programs::XdpContext;
use lb_common::{reason, RealInfo};

use crate::{
    forward::egress::{egress_iface, set_macs, transmit},
    verdict::Verdict,
};

/// Rewrites destination MAC to the real's and source MAC to the egress interface's.
/// Returns: the transmit verdict, or a drop while the real's MAC is unresolved.
#[inline(always)]
pub fn forward(ctx: &XdpContext, real: &RealInfo) -> Result<Verdict, Verdict> {
    if real.mac == [0; 6] {
        return Err(Verdict::drop(reason::DROP_NO_MAC));
    }
    let iface = egress_iface(real.ifindex)?;
    set_macs(ctx, real.mac, iface.mac)?;
    Ok(transmit(ctx, real.ifindex))
}
