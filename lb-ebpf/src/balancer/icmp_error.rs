//! `xdpvs_icmp_error`: an ICMP error about a flow, tail-called by `xdpvs_lb`
//! (decision 0018): sent to the real serving the flow, or, from a NAT real, to the
//! client with the VIP restored.

use aya_ebpf::programs::XdpContext;
use lb_common::{reason, IfaceInfo, VsInfo, METHOD_DR, METHOD_NAT, METHOD_TUNNEL};

use crate::{
    choose, forward, l2, parse, stats,
    verdict::Verdict,
    vs::{fragment_taker, virtual_server},
};

/// `xdpvs_icmp_error`: an ICMP error that `balance::try_balance` parsed as about a flow (its
/// key the flow's, client -> VIP).
/// Returns: as [`balance::try_balance`].
#[inline(always)]
pub fn try_icmp_error(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = parse::parse(ctx)?;
    if !p.icmp {
        return Err(Verdict::internal());
    }
    let vs = if p.frag {
        fragment_taker(&p.key).map(|(_, vs)| vs)
    } else {
        virtual_server(&p.key)
    };
    let Some(vs) = vs else {
        // Maybe a NAT real's error about a flow, on its way to the client.
        let (verdict, vs_index) = forward::nat::icmp_from_real(ctx, &p)?;
        stats::count_reply(vs_index, p.len);
        return Ok(verdict);
    };
    let ingress = l2::addressed_here(ctx)?;
    icmp_error(ctx, &p, vs, ingress)
}

/// Forwards an ICMP error about a flow of `vs` to the real that serves the flow, by the
/// virtual server's method (NAT translates it), creating no state.
/// Returns: the verdict, `fwd_icmp_error` when forwarded.
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    p: &parse::Parsed,
    vs: &VsInfo,
    ingress: IfaceInfo,
) -> Result<Verdict, Verdict> {
    let choice = choose::serving(&p.key, vs)?;
    // SAFETY: array value pointer, valid for this run.
    let real = unsafe { &*choice.real };
    let sent = match vs.method {
        METHOD_DR => forward::dr::forward(ctx, p, real, ingress)?,
        METHOD_TUNNEL => forward::tunnel::forward(ctx, p, &vs.tunnel_src, choice.real_id, real)?,
        // An error quoting a fragment holds no ports to translate (or only the first
        // fragment's): the kernel's.
        METHOD_NAT if p.frag => return Err(Verdict::pass(reason::PASS_FRAGMENT)),
        METHOD_NAT => forward::nat::icmp_to_real(ctx, p, real)?,
        _ => return Err(Verdict::internal()),
    };
    stats::count_forward(vs.vs_index, choice.real_id, p.len);
    Ok(Verdict {
        action: sent.action,
        reason: reason::FWD_ICMP_ERROR,
    })
}
