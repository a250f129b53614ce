//! The parse of a frame into what balancing needs: the flow key and where the headers are.
//!
//! Policy, applied here:
//! - VLAN tags are already off (`l2::untag`); a frame that still has one had three,
//!   more than the data path understands: "not IP" -> kernel.
//! - IPv4 options are allowed (the header length is honoured). A fragment (IPv4, or
//!   IPv6 with a fragment header right after the fixed one) of TCP or UDP is parsed
//!   with both ports zero, whether or not it is the first: only the first carries
//!   ports, and every fragment of a datagram must reach the same real, so fragments
//!   are balanced by addresses only (`frag`), for virtual servers that take them.
//! - IPv6: TCP/UDP must follow the fixed header; extension headers -> kernel.
//! - An ICMP or ICMPv6 error (destination unreachable, packet too big, time exceeded,
//!   parameter problem) addressed to the source of the packet it quotes is parsed as
//!   the flow that packet belongs to, turned around (client -> VIP): a router's
//!   "fragmentation needed" about a real's reply from the VIP goes to the real that
//!   serves the flow. Other ICMP is not a virtual server's.
//! - Anything unreadable before the virtual server is known is passed to the kernel,
//!   which drops what is really broken; the data path never forwards what it could not read.

use aya_ebpf::programs::XdpContext;
use lb_common::{reason, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use lb_ebpf::headers::{
    ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPV6_HLEN, TCP_CSUM_OFF, TCP_HLEN, UDP_CSUM_OFF, UDP_HLEN,
};

use crate::verdict::Verdict;

/// What balancing needs to know about a frame.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Length of the IP packet (header included) as its header states, in bytes.
    pub ip_len: usize,
    /// Frame length in bytes (as received).
    pub len: u64,
    /// An ICMP error: `key` is the flow of the packet it quotes (client -> VIP), and
    /// `l4_off` the ICMP header's offset.
    pub icmp: bool,
    /// A fragment, or an ICMP error quoting one: `key` has both ports zero.
    pub frag: bool,
    /// A fragment at offset 0, the one that holds the TCP/UDP header (not set for an
    /// ICMP error's quote).
    pub frag_first: bool,
    /// A fragment's datagram identification, as [`lb_common::FragKey::id_be`] holds it.
    pub frag_id_be: u32,
    /// ICMP error: offsets of the quoted packet's IP header and of its ports.
    pub inner_l3: usize,
    pub inner_l4: usize,
}

const fn pass(reason: u32) -> Verdict {
    Verdict::pass(reason)
}

/// Parses Ethernet (untagged), IPv4/IPv6 and the TCP/UDP ports.
/// Returns: the flow key and offsets, or the verdict for a frame that is not balanced.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Verdict> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(pass(reason::PASS_MALFORMED))?;
    let proto = u16::from_be(unsafe { (*eth).proto_be });
    let mut key = FlowKey::default();
    let ip_len;
    let mut fragment = false;
    let mut frag_first = false;
    let mut frag_id_be = 0;
    let l4_off = match proto {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(pass(reason::PASS_MALFORMED))?;
            let (ver_ihl, tot_len, id_be, frag, l4proto, src, dst) = unsafe {
                (
                    (*ip).ver_ihl,
                    u16::from_be((*ip).tot_len_be) as usize,
                    (*ip).id_be,
                    u16::from_be((*ip).frag_off_be),
                    (*ip).proto,
                    (*ip).src,
                    (*ip).dst,
                )
            };
            let hlen = ((ver_ihl & 0x0f) as usize) * 4;
            if ver_ihl >> 4 != 4 || hlen < 20 || tot_len < hlen || ETH_HLEN + tot_len > len as usize
            {
                return Err(pass(reason::PASS_MALFORMED));
            }
            fragment = frag & 0x3fff != 0;
            frag_first = frag & IP_OFFSET == 0;
            frag_id_be = u32::from(id_be);
            ip_len = tot_len;
            key.family = FAMILY_V4;
            key.proto = l4proto;
            key.src[0] = src;
            key.dst[0] = dst;
            ETH_HLEN + hlen
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(pass(reason::PASS_MALFORMED))?;
            let (vtf, payload, next) = unsafe {
                (
                    (*ip).ver_tc_flow,
                    u16::from_be((*ip).payload_len_be) as usize,
                    (*ip).next_hdr,
                )
            };
            if u32::from_be(vtf) >> 28 != 6 || ETH_HLEN + IPV6_HLEN + payload > len as usize {
                return Err(pass(reason::PASS_MALFORMED));
            }
            let mut next = next;
            let mut l4 = ETH_HLEN + IPV6_HLEN;
            if next == IPPROTO_FRAGMENT {
                // Next header, reserved, offset and flags, identification.
                let fh: *const [u8; IPV6_FRAG_HLEN] =
                    ptr_at(ctx, l4).ok_or(pass(reason::PASS_MALFORMED))?;
                // SAFETY: bounds checked by ptr_at.
                let fh = unsafe { *fh };
                next = fh[0];
                if next != PROTO_TCP && next != PROTO_UDP {
                    return Err(pass(reason::PASS_FRAGMENT));
                }
                fragment = true;
                frag_first = u16::from_be_bytes([fh[2], fh[3]]) & IPV6_FRAG_OFFSET == 0;
                frag_id_be = u32::from_ne_bytes([fh[4], fh[5], fh[6], fh[7]]);
                l4 += IPV6_FRAG_HLEN;
            }
            match next {
                PROTO_TCP | PROTO_UDP | IPPROTO_ICMPV6 => {}
                // hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP, shim6
                0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
                    return Err(pass(reason::PASS_IPV6_EXT))
                }
                _ => return Err(pass(reason::PASS_NOT_VS)),
            }
            ip_len = IPV6_HLEN + payload;
            key.family = FAMILY_V6;
            key.proto = next;
            unsafe {
                key.src = (*ip).src;
                key.dst = (*ip).dst;
            }
            l4
        }
        _ => return Err(pass(reason::PASS_NOT_IP)),
    };
    let mut p = Parsed {
        key,
        l4_off,
        ip_len,
        len,
        frag: fragment,
        frag_first: fragment && frag_first,
        frag_id_be,
        icmp: false,
        inner_l3: 0,
        inner_l4: 0,
    };
    if fragment {
        if p.key.proto != PROTO_TCP && p.key.proto != PROTO_UDP {
            return Err(pass(reason::PASS_FRAGMENT));
        }
        return Ok(p);
    }
    if p.key.proto == IPPROTO_ICMP || p.key.proto == IPPROTO_ICMPV6 {
        let (key, inner_l4, frag) = quoted_flow(ctx, &p.key, l4_off, ETH_HLEN + ip_len)?;
        p.key = key;
        p.frag = frag;
        p.icmp = true;
        p.inner_l3 = l4_off + ICMP_ERR_HLEN;
        p.inner_l4 = inner_l4;
        return Ok(p);
    }
    if p.key.proto != PROTO_TCP && p.key.proto != PROTO_UDP {
        return Err(pass(reason::PASS_NOT_VS));
    }
    let ports: *const [u16; 2] = ptr_at(ctx, l4_off).ok_or(pass(reason::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        p.key.sport_be = (*ports)[0];
        p.key.dport_be = (*ports)[1];
    }
    Ok(p)
}

/// IPv6 next header of a fragment header, and its length.
const IPPROTO_FRAGMENT: u8 = 44;
const IPV6_FRAG_HLEN: usize = 8;
/// The fragment offset's bits: in IPv4's host-order flags and offset word, and in the
/// host-order offset word of IPv6's fragment header.
const IP_OFFSET: u16 = 0x1fff;
const IPV6_FRAG_OFFSET: u16 = 0xfff8;

/// Length of the ICMP and ICMPv6 error header before the quoted packet.
pub const ICMP_ERR_HLEN: usize = 8;

/// Reads the flow an ICMP error at `icmp_off` is about, from the packet it quotes: the
/// quoted packet went from `outer.dst` (the VIP) to a client, so the flow is that
/// packet turned around. (A NAT real's error about a packet it received, sent to the
/// client, reads as the reply direction of that flow: real -> client.)
/// Returns: its key, the offset of the quoted ports and whether the quoted packet is a
/// fragment, or a pass verdict for any other ICMP (an informational message, an error
/// quoting something else, a quote too short to hold the ports within the packet
/// `end`s).
#[inline(always)]
fn quoted_flow(
    ctx: &XdpContext,
    outer: &FlowKey,
    icmp_off: usize,
    end: usize,
) -> Result<(FlowKey, usize, bool), Verdict> {
    let not_ours = pass(reason::PASS_NOT_VS);
    // Type and code, read together: a one-byte bounds check compiles to a comparison
    // the verifier cannot use.
    let kind: *const [u8; 2] = ptr_at(ctx, icmp_off).ok_or(not_ours)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*kind)[0] };
    let inner_off = icmp_off + ICMP_ERR_HLEN;
    let mut key = FlowKey {
        family: outer.family,
        ..FlowKey::default()
    };
    // A quoted fragment (of a datagram a virtual server that takes fragments
    // answered) is keyed by addresses only, as its datagram was balanced.
    let mut fragment = false;
    let ports_off = if outer.family == FAMILY_V4 {
        // Destination unreachable (fragmentation needed among them), time exceeded,
        // parameter problem.
        if outer.proto != IPPROTO_ICMP || !matches!(kind, 3 | 11 | 12) {
            return Err(not_ours);
        }
        let ip: *const Ipv4Hdr = ptr_at(ctx, inner_off).ok_or(not_ours)?;
        // SAFETY: bounds checked by ptr_at.
        let (ver_ihl, frag, proto, src, dst) = unsafe {
            (
                (*ip).ver_ihl,
                u16::from_be((*ip).frag_off_be),
                (*ip).proto,
                (*ip).src,
                (*ip).dst,
            )
        };
        let hlen = ((ver_ihl & 0x0f) as usize) * 4;
        if ver_ihl >> 4 != 4 || hlen < 20 {
            return Err(not_ours);
        }
        fragment = frag & 0x3fff != 0;
        key.proto = proto;
        key.src[0] = dst;
        key.dst[0] = src;
        inner_off + hlen
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        if outer.proto != IPPROTO_ICMPV6 || !matches!(kind, 1..=4) {
            return Err(not_ours);
        }
        let ip: *const Ipv6Hdr = ptr_at(ctx, inner_off).ok_or(not_ours)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            key.proto = (*ip).next_hdr;
            key.src = (*ip).dst;
            key.dst = (*ip).src;
        }
        let mut off = inner_off + IPV6_HLEN;
        if key.proto == IPPROTO_FRAGMENT {
            let fh: *const [u8; 2] = ptr_at(ctx, off).ok_or(not_ours)?;
            // SAFETY: bounds checked by ptr_at.
            key.proto = unsafe { (*fh)[0] };
            fragment = true;
            off += IPV6_FRAG_HLEN;
        }
        off
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP || key.dst != outer.dst {
        return Err(not_ours);
    }
    // What is read (and, behind NAT, rewritten) must lie inside the IP packet: bytes
    // after it are no part of the ICMP message its checksum covers.
    if ports_off + 4 > end {
        return Err(not_ours);
    }
    if fragment {
        return Ok((key, ports_off, true));
    }
    let ports: *const [u16; 2] = ptr_at(ctx, ports_off).ok_or(not_ours)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        key.sport_be = (*ports)[1];
        key.dport_be = (*ports)[0];
    }
    Ok((key, ports_off, false))
}

/// Reads the ports of a datagram's first fragment (decision 0016): every fragment is
/// parsed with both ports zero, and a NAT virtual server translates the first one, the
/// one holding the TCP/UDP header and so the datagram's checksum, by its ports.
/// The ports go into `p`'s key in place (its choice by addresses made): a copy of
/// `Parsed` costs stack the one inlined program has little of.
/// Returns: `Some` once the ports are in, if `p` is a first fragment holding its whole
/// TCP or UDP header (one that does not, RFC 1858's tiny fragment, is no datagram to
/// translate, nor is one whose IP length ends before it, padded out by Ethernet);
/// `None`, `p` unchanged, otherwise.
#[inline(always)]
pub fn first_fragment_ports(ctx: &XdpContext, p: &mut Parsed) -> Option<()> {
    if !p.frag_first || !l4_complete(ctx, p) {
        return None;
    }
    let hlen = if p.key.proto == PROTO_TCP {
        TCP_HLEN
    } else {
        UDP_HLEN
    };
    if p.l4_off + hlen > ETH_HLEN + p.ip_len {
        return None;
    }
    let ports: *const [u16; 2] = ptr_at(ctx, p.l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        p.key.sport_be = (*ports)[0];
        p.key.dport_be = (*ports)[1];
    }
    Some(())
}

/// Returns: the offset of the TCP or UDP checksum field.
#[inline(always)]
pub fn l4_csum_off(p: &Parsed) -> usize {
    p.l4_off
        + if p.key.proto == PROTO_TCP {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        }
}

/// Returns: whether `p` is a TCP segment that opens a connection: SYN set, ACK, RST and
/// FIN clear (the one kind of packet a spoofed flood can send without an exchange).
/// A segment too short to hold its flags is none.
#[inline(always)]
pub fn opening_syn(ctx: &XdpContext, p: &Parsed) -> bool {
    tcp_flags_are(ctx, p, TCP_SYN)
}

/// Returns: whether `p` is a TCP SYN-ACK (SYN and ACK set, RST and FIN clear): a
/// real's answer to an opening SYN.
#[inline(always)]
pub fn syn_ack(ctx: &XdpContext, p: &Parsed) -> bool {
    tcp_flags_are(ctx, p, TCP_SYN | TCP_ACK)
}

/// Returns: whether `p` is a TCP segment (never an ICMP error's quote or a fragment)
/// whose SYN, ACK, RST and FIN flags are exactly those of `flags`.
#[inline(always)]
fn tcp_flags_are(ctx: &XdpContext, p: &Parsed, flags: u8) -> bool {
    if p.key.proto != PROTO_TCP || p.icmp || p.frag {
        return false;
    }
    // The data offset byte and the flags byte, read together.
    ptr_at::<[u8; 2]>(ctx, p.l4_off + TCP_FLAGS_OFF).is_some_and(|b| {
        // SAFETY: bounds checked by ptr_at.
        let have = unsafe { (*b)[1] };
        have & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK) == flags
    })
}

/// Offset in the TCP header of the data offset byte, which the flags byte follows.
const TCP_FLAGS_OFF: usize = 12;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Checks that the whole TCP or UDP header is present (done once the frame is known to
/// be for a virtual server: a truncated one is then dropped, not passed).
#[inline(always)]
pub fn l4_complete(ctx: &XdpContext, p: &Parsed) -> bool {
    if p.key.proto == PROTO_TCP {
        ptr_at::<[u8; TCP_HLEN]>(ctx, p.l4_off).is_some()
    } else {
        ptr_at::<[u8; UDP_HLEN]>(ctx, p.l4_off).is_some()
    }
}
