//! IP-in-IP tunnelling: the packet, unchanged, gets an outer IP header from the virtual
//! server's tunnel source to the real (IPv4 in IPv4, protocol 4; IPv6 in IPv6, next
//! header 41), routed by the kernel's FIB. The real strips it (`xdpvs realserver decap`)
//! and answers the client directly, as in direct routing.
//!
//! Outer header policy: DF set (IPv4), so that no router fragments the outer packet (the
//! real's decapsulator could not reassemble it); TTL/hop limit 64; TOS / traffic class
//! copied from the inner packet; IPv6 flow label from the flow hash, so that ECMP
//! between balancer and reals spreads flows (RFC 6438). A packet that would exceed the
//! egress MTU once wrapped is answered with ICMP carrying MTU minus the overhead.

use aya_ebpf::programs::XdpContext;
use lb_common::{flow_hash, reason, RealInfo, FAMILY_V4, IP6IP6_OVERHEAD, IPIP_OVERHEAD};
use lb_ebpf::headers::{ptr_at, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, IPPROTO_IPIP, IPPROTO_IPV6, IP_DF};

use crate::{
    fib,
    forward::egress::{next_hop, routed, transmit, Keep},
    parse::Parsed,
    verdict::Verdict,
};

const OUTER_TTL: u8 = 64;

/// Encapsulates a packet to `real` (id `real_id`) from its virtual server's outer
/// source `src`, its next hop from `REAL_HOPS` or the FIB (decision 0023).
/// Returns: the transmit verdict, or the final verdict of a packet not forwarded.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    src: &[u32; 4],
    real_id: u32,
    real: &RealInfo,
) -> Result<Verdict, Verdict> {
    let v4 = p.key.family == FAMILY_V4;
    let overhead = if v4 { IPIP_OVERHEAD } else { IP6IP6_OVERHEAD } as usize;
    let outer_len = p.ip_len + overhead;
    if outer_len > u16::MAX as usize {
        return Err(Verdict::drop(reason::DROP_TOO_BIG));
    }
    let proto = if v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    let r = fib::Route {
        family: p.key.family,
        proto,
        src,
        dst: &real.addr,
        sport_be: 0,
        dport_be: 0,
        tot_len: outer_len as u16,
    };
    let keep = Keep::real(real_id, real.generation, r.src);
    let hop = next_hop(ctx, p, &r, overhead as u32, keep)?;
    // Inner TOS / traffic class, read before the headers move.
    let tos = if v4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Verdict::internal())?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { (*ip).tos }
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Verdict::internal())?;
        // SAFETY: bounds checked by ptr_at.
        ((u32::from_be(unsafe { (*ip).ver_tc_flow }) >> 20) & 0xff) as u8
    };
    // The new bytes are headroom: every field of the outer header is set below.
    let out = routed(ctx, p, &hop, overhead)?;
    if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, out.l3_off).ok_or(Verdict::internal())?;
        let h = Ipv4Hdr::new(
            tos,
            outer_len as u16,
            IP_DF,
            OUTER_TTL,
            IPPROTO_IPIP,
            src[0],
            real.addr[0],
        );
        // SAFETY: bounds checked by ptr_at.
        unsafe { *ip = h };
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, out.l3_off).ok_or(Verdict::internal())?;
        let label = flow_hash(&p.key);
        let h = Ipv6Hdr::new(
            tos,
            label,
            p.ip_len as u16,
            IPPROTO_IPV6,
            OUTER_TTL,
            *src,
            real.addr,
        );
        // SAFETY: bounds checked by ptr_at.
        unsafe { *ip = h };
    }
    Ok(transmit(ctx, out.xmit))
}
