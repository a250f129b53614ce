//! Bounds-checked header access and the parse of a frame into what balancing needs.
//!
//! Policy, applied here:
//! - One 802.1Q tag is understood; a second (QinQ) makes the frame "not IP" -> kernel.
//! - IPv4 options are allowed (the header length is honoured). Fragments are passed to
//!   the kernel: only the first carries ports, and splitting a datagram across reals
//!   would break it.
//! - IPv6: TCP/UDP must follow the fixed header; extension headers -> kernel.
//! - Anything unreadable before the virtual server is known is passed to the kernel,
//!   which drops what is really broken; the data path never forwards what it could not read.

use aya_ebpf::programs::XdpContext;
use lb_common::{reason, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use crate::{csum, verdict::Verdict};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Offset of the checksum in a TCP header.
pub const TCP_CSUM_OFF: usize = 16;
/// Offset of the checksum in a UDP header.
pub const UDP_CSUM_OFF: usize = 6;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto_be: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub ver_tc_flow: u32,
    pub payload_len_be: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl Ipv4Hdr {
    /// A header the balancer originates (tunnel outer header, ICMP answer): no options,
    /// id 0, checksum computed. Lengths and flags in host order, addresses as on the wire.
    #[inline(always)]
    pub fn new(
        tos: u8,
        tot_len: u16,
        frag_off: u16,
        ttl: u8,
        proto: u8,
        src: u32,
        dst: u32,
    ) -> Self {
        let mut h = Self {
            ver_ihl: 0x45,
            tos,
            tot_len_be: tot_len.to_be(),
            id_be: 0,
            frag_off_be: frag_off.to_be(),
            ttl,
            proto,
            check: 0,
            src,
            dst,
        };
        // SAFETY: Ipv4Hdr is 20 bytes of plain integers, readable as ten u16 words.
        let words = unsafe { &*(&h as *const Self as *const [u16; 10]) };
        h.check = !csum::fold(csum::sum_words(0, words));
        h
    }
}

impl Ipv6Hdr {
    /// A header the balancer originates. Lengths in host order, addresses as on the wire.
    #[inline(always)]
    pub fn new(
        tclass: u8,
        flow: u32,
        payload_len: u16,
        next_hdr: u8,
        hop_limit: u8,
        src: [u32; 4],
        dst: [u32; 4],
    ) -> Self {
        Self {
            ver_tc_flow: ((6u32 << 28) | (u32::from(tclass) << 20) | (flow & 0xf_ffff)).to_be(),
            payload_len_be: payload_len.to_be(),
            next_hdr,
            hop_limit,
            src,
            dst,
        }
    }
}

/// Returns: a pointer to a `T` at `off` bytes into the frame, or `None` when the frame
/// is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// What balancing needs to know about a frame.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Length of the IP packet (header included) as its header states, in bytes.
    pub ip_len: usize,
    /// The frame carries an 802.1Q tag.
    pub vlan: bool,
    /// Frame length in bytes (as received).
    pub len: u64,
}

const fn pass(reason: u32) -> Verdict {
    Verdict::pass(reason)
}

/// Parses Ethernet (+ one VLAN tag), IPv4/IPv6 and the TCP/UDP ports.
/// Returns: the flow key and offsets, or the verdict for a frame that is not balanced.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Verdict> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(pass(reason::PASS_MALFORMED))?;
    let mut proto = u16::from_be(unsafe { (*eth).proto_be });
    let mut l3_off = ETH_HLEN;
    if proto == ETH_P_8021Q {
        let inner: *const u16 = ptr_at(ctx, ETH_HLEN + 2).ok_or(pass(reason::PASS_MALFORMED))?;
        proto = u16::from_be(unsafe { *inner });
        l3_off += VLAN_HLEN;
    }
    let mut key = FlowKey::default();
    let ip_len;
    let l4_off = match proto {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(pass(reason::PASS_MALFORMED))?;
            let (ver_ihl, tot_len, frag, l4proto, src, dst) = unsafe {
                (
                    (*ip).ver_ihl,
                    u16::from_be((*ip).tot_len_be) as usize,
                    u16::from_be((*ip).frag_off_be),
                    (*ip).proto,
                    (*ip).src,
                    (*ip).dst,
                )
            };
            let hlen = ((ver_ihl & 0x0f) as usize) * 4;
            if ver_ihl >> 4 != 4 || hlen < 20 || tot_len < hlen || l3_off + tot_len > len as usize {
                return Err(pass(reason::PASS_MALFORMED));
            }
            if frag & 0x3fff != 0 {
                return Err(pass(reason::PASS_FRAGMENT));
            }
            ip_len = tot_len;
            key.family = FAMILY_V4;
            key.proto = l4proto;
            key.src[0] = src;
            key.dst[0] = dst;
            l3_off + hlen
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(pass(reason::PASS_MALFORMED))?;
            let (vtf, payload, next) = unsafe {
                (
                    (*ip).ver_tc_flow,
                    u16::from_be((*ip).payload_len_be) as usize,
                    (*ip).next_hdr,
                )
            };
            if u32::from_be(vtf) >> 28 != 6 || l3_off + IPV6_HLEN + payload > len as usize {
                return Err(pass(reason::PASS_MALFORMED));
            }
            match next {
                PROTO_TCP | PROTO_UDP => {}
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
            l3_off + IPV6_HLEN
        }
        _ => return Err(pass(reason::PASS_NOT_IP)),
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(pass(reason::PASS_NOT_VS));
    }
    let ports: *const [u16; 2] = ptr_at(ctx, l4_off).ok_or(pass(reason::PASS_MALFORMED))?;
    unsafe {
        key.sport_be = (*ports)[0];
        key.dport_be = (*ports)[1];
    }
    Ok(Parsed {
        key,
        l3_off,
        l4_off,
        ip_len,
        vlan: l3_off != ETH_HLEN,
        len,
    })
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
