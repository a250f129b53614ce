//! The wire formats: header structs as they lie in the frame, the builders of the
//! headers xdpvs originates, their constants, and bounds-checked access to the frame.
//! Every struct is `#[repr(C)]` with multi-byte fields in network order as loaded
//! (suffix `_be` where the value is a number; addresses are kept as on the wire).

use aya_ebpf::programs::XdpContext;

use crate::csum;

/// Ethernet header length, bytes.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1Q tag length, bytes.
pub const VLAN_HLEN: usize = 4;
/// IPv4 header length without options, bytes.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header length, bytes.
pub const IPV6_HLEN: usize = 40;
/// TCP header length without options, bytes.
pub const TCP_HLEN: usize = 20;
/// UDP header length, bytes.
pub const UDP_HLEN: usize = 8;
/// ICMP / ICMPv6 header length, bytes.
pub const ICMP_HLEN: usize = 8;
/// Offset of the checksum in a TCP header.
pub const TCP_CSUM_OFF: usize = 16;
/// Offset of the checksum in a UDP header.
pub const UDP_CSUM_OFF: usize = 6;
/// Offset of the checksum in an ICMP / ICMPv6 header.
pub const ICMP_CSUM_OFF: usize = 2;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number (next header) of IPv6-in-IPv6.
pub const IPPROTO_IPV6: u8 = 41;
/// IP protocol number (next header) of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv4 "don't fragment" flag, in the host-order flags/offset word.
pub const IP_DF: u16 = 0x4000;

/// Ethernet II header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto_be: u16,
}

/// IPv4 header (options, if any, follow it).
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

/// IPv6 fixed header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub ver_tc_flow: u32,
    pub payload_len_be: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// ICMP header of the error messages xdpvs sends; ICMPv6 shares the layout.
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// IPv4: unused (2 bytes) + next-hop MTU (2 bytes); IPv6: MTU (4 bytes). Network order.
    pub rest_be: u32,
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
