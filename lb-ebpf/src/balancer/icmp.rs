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
use lb_ebpf::{
    csum,
    headers::{
        ptr_at, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ICMP_HLEN,
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, IP_DF,
    },
};

use crate::{
    l2::{write_header, Tags},
    parse::Parsed,
    verdict::Verdict,
};

/// Most bytes of the offending packet quoted in the answer.
pub const QUOTE_MAX: usize = 128;
/// TOS of ICMP errors (precedence "internetwork control"), as Linux sends them.
const TOS_INTERNETCONTROL: u8 = 0xc0;

/// Answers the packet `p` (not yet rewritten; the answer gets the tags it came with) with "too big, use `mtu`".
/// Returns: the final verdict: XDP_TX with the answer, or a drop.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Verdict {
    answer(ctx, p, mtu).unwrap_or(Verdict::drop(reason::DROP_TOO_BIG))
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

/// Builds the answer in place: the quote stays where the offending IP packet starts,
/// new Ethernet, IP and ICMP headers go in front of it, the rest is trimmed.
/// Returns: the XDP_TX verdict, or `None` when no answer may or can be sent.
#[inline(always)]
fn answer(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Option<Verdict> {
    let v4 = p.key.family == FAMILY_V4;
    if v4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
        // SAFETY: bounds checked by ptr_at.
        if u16::from_be(unsafe { (*ip).frag_off_be }) & IP_DF == 0 {
            return None;
        }
    }
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (mac_src, mac_dst) = unsafe { ((*eth).src, (*eth).dst) };
    let tags = Tags::received();
    let l2 = tags.header_len();
    let quote = if p.ip_len < QUOTE_MAX {
        p.ip_len
    } else {
        QUOTE_MAX
    };
    let ip_hlen = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let icmp_len = ICMP_HLEN + quote;
    reshape(
        ctx,
        l2 - ETH_HLEN + ip_hlen + ICMP_HLEN,
        l2 + ip_hlen + icmp_len,
    )?;
    let ethertype = if v4 { ETH_P_IP } else { ETH_P_IPV6 };
    write_header(ctx, mac_src, mac_dst, &tags, ethertype)?;
    // Back from the packet's destination to its source.
    let (acc, kind, code, rest_be) = if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l2)?;
        let h = Ipv4Hdr::new(
            TOS_INTERNETCONTROL,
            (IPV4_HLEN + icmp_len) as u16,
            0,
            64,
            IPPROTO_ICMP,
            p.key.dst[0],
            p.key.src[0],
        );
        // SAFETY: bounds checked by ptr_at.
        unsafe { *ip = h };
        (0, 3, 4, (mtu & 0xffff).to_be())
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l2)?;
        let h = Ipv6Hdr::new(
            0,
            0,
            icmp_len as u16,
            IPPROTO_ICMPV6,
            255,
            p.key.dst,
            p.key.src,
        );
        // SAFETY: bounds checked by ptr_at.
        unsafe { *ip = h };
        // Pseudo-header: addresses, upper-layer length, next header.
        let acc = csum::sum_addr(csum::sum_addr(0, &p.key.src), &p.key.dst);
        let acc = acc
            + u64::from((icmp_len as u16).to_be())
            + u64::from(u16::from(IPPROTO_ICMPV6).to_be());
        (acc, 2, 0, mtu.to_be())
    };
    let icmp: *mut IcmpHdr = ptr_at(ctx, l2 + ip_hlen)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        *icmp = IcmpHdr {
            kind,
            code,
            check: 0,
            rest_be,
        }
    };
    let acc = acc + sum_quote(ctx, l2 + ip_hlen + ICMP_HLEN, quote)?;
    // SAFETY: as above; the header is 8 bytes of plain integers.
    unsafe {
        let words: *const [u16; 4] = icmp as *const _;
        (*icmp).check = !csum::fold(csum::sum_words(acc, &*words));
    }
    Some(Verdict {
        action: xdp_action::XDP_TX,
        reason: reason::ICMP_TOO_BIG,
    })
}
