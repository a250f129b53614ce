//! "Too big" answers, as a router would send them: ICMP fragmentation-needed (type 3
//! code 4, RFC 1191) and ICMPv6 packet-too-big (type 2, RFC 4443), built in place from
//! the packet that did not fit and sent back out of the interface it came in by.
//!
//! Policy:
//! - Source of the answer: the packet's own destination (the VIP, or for a NAT reply
//!   the client): the balancer needs no address of its own on the client's path, and
//!   hosts match the error by the packet it quotes, not by who sent it.
//! - The quote is the start of the offending IP packet, at most [`QUOTE_MAX`] bytes
//!   (at least its IP header and 8 bytes, which RFC 792 asks for and all a host needs
//!   to find the socket).
//! - IPv4 without DF is not answered (the sender allowed fragmentation, which XDP cannot
//!   do): dropped and counted as `DROP_TOO_BIG`.
//! - No rate limit: one answer per offending packet, each smaller than the packet.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use lb_common::{reason, FAMILY_V4};

use crate::{
    balance::Verdict,
    csum,
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, ETH_HLEN, IPV4_HLEN, IPV6_HLEN},
};

/// Most bytes of the offending packet quoted in the answer.
pub const QUOTE_MAX: usize = 128;
const ICMP_HLEN: usize = 8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IP_DF: u16 = 0x4000;
/// TOS of ICMP errors (precedence "internetwork control"), as Linux sends them.
const TOS_INTERNETCONTROL: u8 = 0xc0;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    /// IPv4: unused (2 bytes) + next-hop MTU (2 bytes); IPv6: MTU (4 bytes). Network order.
    rest_be: u32,
}

const fn dropped() -> Verdict {
    Verdict::drop(reason::DROP_TOO_BIG)
}

/// Answers the packet `p` (untagged, not yet rewritten) with "too big, use `mtu`".
/// Returns: `Err` always (the packet is not forwarded): XDP_TX with the answer, or a drop.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Result<Verdict, Verdict> {
    if p.key.family == FAMILY_V4 {
        Err(too_big_v4(ctx, p, mtu).unwrap_or(dropped()))
    } else {
        Err(too_big_v6(ctx, p, mtu).unwrap_or(dropped()))
    }
}

/// Moves the frame's start back by `grow` bytes and trims it to `total` bytes.
/// Returns: `None` if the kernel refused either.
#[inline(always)]
fn reshape(ctx: &XdpContext, grow: usize, total: usize) -> Option<()> {
    // SAFETY: helper calls on this program's own context.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) != 0 {
            return None;
        }
        // The length comes from a helper: arithmetic on data_end is not allowed.
        let now = bpf_xdp_get_buff_len(ctx.ctx) as i32;
        if bpf_xdp_adjust_tail(ctx.ctx, total as i32 - now) != 0 {
            return None;
        }
    }
    Some(())
}

/// Sums the quote (`len` bytes at `off`) as 16-bit words, odd byte padded with zero.
#[inline(always)]
fn sum_quote(ctx: &XdpContext, off: usize, len: usize) -> Option<u64> {
    let mut acc = 0u64;
    let mut i = 0;
    while i < QUOTE_MAX / 2 {
        if i * 2 + 1 < len {
            let w: *const u16 = ptr_at(ctx, off + i * 2)?;
            // SAFETY: bounds checked by ptr_at.
            acc += u64::from(unsafe { *w });
        } else if i * 2 < len {
            let b: *const u8 = ptr_at(ctx, off + i * 2)?;
            // SAFETY: bounds checked by ptr_at. The byte is the high-order (first) byte
            // of its word on the wire: native little-endian load puts it low.
            acc += u64::from(unsafe { *b });
        }
        i += 1;
    }
    Some(acc)
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Option<Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (frag, src, dst, mac_src, mac_dst) = unsafe {
        (
            u16::from_be((*ip).frag_off_be),
            (*ip).src,
            (*ip).dst,
            (*eth).src,
            (*eth).dst,
        )
    };
    if frag & IP_DF == 0 {
        return None;
    }
    let quote = if p.ip_len < QUOTE_MAX {
        p.ip_len
    } else {
        QUOTE_MAX
    };
    let head = IPV4_HLEN + ICMP_HLEN;
    reshape(ctx, head, ETH_HLEN + head + quote)?;

    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, ETH_HLEN + IPV4_HLEN)?;
    let tot_len = (head + quote) as u16;
    // SAFETY: bounds checked by ptr_at; the three headers do not overlap.
    unsafe {
        (*eth).dst = mac_src;
        (*eth).src = mac_dst;
        (*eth).proto_be = 0x0800u16.to_be();
        (*ip).ver_ihl = 0x45;
        (*ip).tos = TOS_INTERNETCONTROL;
        (*ip).tot_len_be = tot_len.to_be();
        (*ip).id_be = 0;
        (*ip).frag_off_be = 0;
        (*ip).ttl = 64;
        (*ip).proto = IPPROTO_ICMP;
        (*ip).check = 0;
        (*ip).src = dst;
        (*ip).dst = src;
        let words: *const [u16; 10] = ip as *const _;
        (*ip).check = !csum::fold(csum::sum_words(0, &*words));
        (*icmp).kind = 3;
        (*icmp).code = 4;
        (*icmp).check = 0;
        (*icmp).rest_be = (mtu & 0xffff).to_be();
    }
    let acc = sum_quote(ctx, ETH_HLEN + head, quote)?;
    // SAFETY: as above.
    unsafe {
        let words: *const [u16; 4] = icmp as *const _;
        (*icmp).check = !csum::fold(csum::sum_words(acc, &*words));
    }
    Some(Verdict {
        action: xdp_action::XDP_TX,
        reason: reason::ICMP_TOO_BIG,
    })
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Option<Verdict> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (src, dst, mac_src, mac_dst) = unsafe { ((*ip).src, (*ip).dst, (*eth).src, (*eth).dst) };
    let quote = if p.ip_len < QUOTE_MAX {
        p.ip_len
    } else {
        QUOTE_MAX
    };
    let head = IPV6_HLEN + ICMP_HLEN;
    reshape(ctx, head, ETH_HLEN + head + quote)?;

    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, ETH_HLEN + IPV6_HLEN)?;
    let payload = (ICMP_HLEN + quote) as u16;
    // SAFETY: bounds checked by ptr_at; the three headers do not overlap.
    let mut acc = unsafe {
        (*eth).dst = mac_src;
        (*eth).src = mac_dst;
        (*eth).proto_be = 0x86ddu16.to_be();
        (*ip).ver_tc_flow = (6u32 << 28).to_be();
        (*ip).payload_len_be = payload.to_be();
        (*ip).next_hdr = IPPROTO_ICMPV6;
        (*ip).hop_limit = 255;
        (*ip).src = dst;
        (*ip).dst = src;
        (*icmp).kind = 2;
        (*icmp).code = 0;
        (*icmp).check = 0;
        (*icmp).rest_be = mtu.to_be();
        // Pseudo-header: addresses, upper-layer length, next header.
        let addrs: *const [u16; 16] = &(*ip).src as *const _ as *const _;
        let acc = csum::sum_words(0, &*addrs);
        acc + u64::from(payload.to_be()) + u64::from(u16::from(IPPROTO_ICMPV6).to_be())
    };
    acc += sum_quote(ctx, ETH_HLEN + head, quote)?;
    // SAFETY: as above.
    unsafe {
        let words: *const [u16; 4] = icmp as *const _;
        (*icmp).check = !csum::fold(csum::sum_words(acc, &*words));
    }
    Some(Verdict {
        action: xdp_action::XDP_TX,
        reason: reason::ICMP_TOO_BIG,
    })
}
