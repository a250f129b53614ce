//! Direct routing: the frame goes to the real unchanged but for its two MAC addresses.
//! The real holds the VIP on a loopback and answers the client itself.

use aya_ebpf::programs::XdpContext;
use lb_common::{reason, IfaceInfo, RealInfo, IFACE_F_VLAN};

use crate::{
    forward::egress::{egress_iface, relayer, transmit, vlan_out},
    parse::Parsed,
    verdict::Verdict,
};

/// Rewrites destination MAC to the real's and source MAC to the egress interface's
/// (and the VLAN tags to the egress interface's, when it is a VLAN device).
/// `ingress` is the receiving interface's entry, if read already (a zero MAC: not):
/// the one-armed case then needs no second lookup.
/// Returns: the transmit verdict, or a drop while the real's MAC is unresolved.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    real: &RealInfo,
    ingress: IfaceInfo,
) -> Result<Verdict, Verdict> {
    if real.mac == [0; 6] {
        return Err(Verdict::drop(reason::DROP_NO_MAC));
    }
    let iface = if ingress.mac != [0; 6] && real.ifindex == ctx.ingress_ifindex() as u32 {
        ingress
    } else {
        egress_iface(real.ifindex)?
    };
    let vlan = if iface.flags & IFACE_F_VLAN != 0 {
        vlan_out(real.ifindex)
    } else {
        None
    };
    let out = relayer(ctx, p, real.ifindex, vlan, real.mac, iface.mac, 0, true)?;
    Ok(transmit(ctx, out.xmit))
}
