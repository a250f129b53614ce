//! `xdpvs_fragment` (decision 0018): a TCP or UDP fragment, tail-called by
//! `xdpvs_lb`, balanced by addresses to the virtual server that takes fragments at its
//! address (decision 0008), or, for a NAT real's fragmented reply, given the VIP back
//! (decision 0016).

use aya_ebpf::programs::XdpContext;
use lb_common::{METHOD_DR, METHOD_NAT, METHOD_TUNNEL};

use crate::{
    choose::{self, Record},
    forward, l2, parse, stats,
    verdict::Verdict,
    vs::fragment_taker,
};

/// `xdpvs_fragment`: a TCP or UDP fragment that `balance::try_balance` parsed as such.
/// Returns: as [`balance::try_balance`].
#[inline(always)]
pub fn try_fragment(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let mut p = parse::parse(ctx)?;
    if !p.frag || p.icmp {
        return Err(Verdict::internal());
    }
    fragment(ctx, &mut p)
}

/// Balances a fragment of a datagram to the virtual server at its address that takes
/// fragments, by addresses only (its key's ports are zero), so that every fragment of
/// the datagram reaches the same real. A fragment of a NAT real's reply gets the VIP
/// back (decision 0016). Other fragments are passed to the kernel.
#[inline(always)]
fn fragment(ctx: &XdpContext, p: &mut parse::Parsed) -> Result<Verdict, Verdict> {
    let Some((vport_be, vs)) = fragment_taker(&p.key) else {
        // Not for a VIP: maybe a fragment of a real's reply to a NAT flow.
        let (verdict, vs_index) = forward::nat::reply_fragment(ctx, p)?;
        stats::count_reply(vs_index, p.len);
        return Ok(verdict);
    };
    let ingress = l2::addressed_here(ctx)?;
    let choice = choose::real(&p.key, vs, Record::Now, choose::recorded(&p.key))?;
    if choice.new_flow {
        stats::count_new_flow(vs.vs_index, choice.real_id);
    }
    // SAFETY: array value pointer, valid for this run.
    let real = unsafe { &*choice.real };
    let verdict = match vs.method {
        METHOD_DR => forward::dr::forward(ctx, p, real, ingress)?,
        METHOD_TUNNEL => forward::tunnel::forward(ctx, p, &vs.tunnel_src, choice.real_id, real)?,
        METHOD_NAT => forward::nat::forward_fragment(ctx, p, vs, vport_be, real, choice.new_flow)?,
        _ => return Err(Verdict::internal()),
    };
    stats::count_forward(vs.vs_index, choice.real_id, p.len);
    Ok(verdict)
}
