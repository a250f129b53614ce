//! Whether a frame is addressed to this host at layer 2. A switch floods unicast
//! frames whose destination it has not learnt (after a topology change, an expired
//! entry, a VRRP failover), and a bridge hands a VM frames for its neighbours: every
//! balancer on the segment then sees the same frame for a VIP. Only the one it is
//! addressed to may forward it; the others pass it to their kernel, which drops it as
//! meant for another host.

use aya_ebpf::programs::XdpContext;
use lb_common::{maps::own_mac_key, reason};
use lb_ebpf::headers::{ptr_at, EthHdr};

use crate::{
    maps::{IFACES, OWN_MACS},
    verdict::Verdict,
};

/// Returns: `Ok` when the frame's destination MAC is broadcast or multicast, the
/// receiving interface's own, or one the host also answers for (`OWN_MACS`); a pass
/// verdict otherwise. An interface the daemon has not registered is given the benefit
/// of the doubt.
#[inline(always)]
pub fn addressed_here(ctx: &XdpContext) -> Result<(), Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::internal())?;
    // SAFETY: bounds checked by ptr_at.
    let dst = unsafe { (*eth).dst };
    if dst[0] & 1 != 0 {
        return Ok(());
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: hash map value, read at once.
    match unsafe { IFACES.get(&ifindex) } {
        Some(i) if i.mac == dst => return Ok(()),
        None => return Ok(()),
        Some(_) => {}
    }
    // SAFETY: hash map lookup; only presence is read.
    if unsafe { OWN_MACS.get(&own_mac_key(dst)) }.is_some() {
        return Ok(());
    }
    Err(Verdict::pass(reason::PASS_OTHER_HOST))
}
