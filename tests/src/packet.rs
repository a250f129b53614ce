//! Building test packets byte by byte, with checksums computed here (independently of
//! the code under test).

/// Ones' complement sum of `data` folded to 16 bits (RFC 1071).
pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag: the default of the TCP packets built here (a segment of an established
/// connection, which the balancer records in its connection table).
pub const TCP_ACK: u8 = 0x10;

/// The destination MAC of crafted frames unless a test says otherwise: the balancer's
/// own (the fixture registers it for the interface test runs arrive on), since the
/// data path forwards only frames addressed to its host.
pub const BALANCER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 0x01];

/// An Ethernet + IPv4 + TCP/UDP frame.
#[derive(Clone, Debug)]
pub struct V4Packet {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    /// TCP flags (TCP only).
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl V4Packet {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            dst_mac: BALANCER_MAC,
            src_mac: [0x02, 0, 0, 0, 0, 0xcc],
            vlan: None,
            src,
            dst,
            proto: 6,
            sport,
            dport,
            ttl: 64,
            tcp_flags: TCP_ACK,
            payload: b"hello xdpvs".to_vec(),
        }
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            proto: 17,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// Returns: the frame's bytes, with valid IPv4 and L4 checksums.
    pub fn build(&self) -> Vec<u8> {
        let l4 = l4(
            self.proto,
            self.tcp_flags,
            self.sport,
            self.dport,
            &self.payload,
            &self.src,
            &self.dst,
        );
        let ip = ipv4_header(
            0,
            20 + l4.len(),
            0x1234,
            0x4000,
            self.ttl,
            self.proto,
            self.src,
            self.dst,
        );
        let mut f = eth(self.dst_mac, self.src_mac, self.vlan, 0x0800);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }
}

/// An Ethernet header (with an optional 802.1Q tag).
pub fn eth(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A 20-byte IPv4 header with its checksum.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_header(
    tos: u8,
    total_len: usize,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> Vec<u8> {
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&(total_len as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[ttl, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// A 40-byte IPv6 header.
pub fn ipv6_header(
    tclass: u8,
    flow: u32,
    payload_len: usize,
    next: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
) -> Vec<u8> {
    let mut ip = Vec::new();
    ip.extend_from_slice(
        &((6u32 << 28) | (u32::from(tclass) << 20) | (flow & 0xf_ffff)).to_be_bytes(),
    );
    ip.extend_from_slice(&(payload_len as u16).to_be_bytes());
    ip.extend_from_slice(&[next, hop_limit]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip
}

/// Checksum over an upper-layer message with its IPv4 or IPv6 pseudo-header.
pub fn pseudo_csum(src: &[u8], dst: &[u8], proto: u8, msg: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    if src.len() == 4 {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    }
    pseudo.extend_from_slice(msg);
    csum(&pseudo)
}

/// A TCP segment (with `flags`) or UDP datagram carrying `payload`, with its checksum.
pub fn l4(
    proto: u8,
    flags: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
    src: &[u8],
    dst: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&1u32.to_be_bytes()); // seq
        l4.extend_from_slice(&0u32.to_be_bytes()); // ack
        l4.push(5 << 4); // data offset
        l4.push(flags);
        l4.extend_from_slice(&64240u16.to_be_bytes()); // window
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let mut c = pseudo_csum(src, dst, proto, &l4);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    let at = if proto == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    l4
}

/// An Ethernet + IPv6 + TCP/UDP frame; optionally with a hop-by-hop options header.
#[derive(Clone, Debug)]
pub struct V6Packet {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tclass: u8,
    pub hop_limit: u8,
    pub hop_by_hop: bool,
    /// TCP flags (TCP only).
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl V6Packet {
    pub fn tcp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Self {
        Self {
            dst_mac: BALANCER_MAC,
            src_mac: [0x02, 0, 0, 0, 0, 0xcc],
            src,
            dst,
            proto: 6,
            sport,
            dport,
            tclass: 0,
            hop_limit: 64,
            hop_by_hop: false,
            tcp_flags: TCP_ACK,
            payload: b"hello xdpvs over IPv6".to_vec(),
        }
    }

    pub fn udp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Self {
        Self {
            proto: 17,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// Returns: the frame's bytes, with a valid L4 checksum.
    pub fn build(&self) -> Vec<u8> {
        let l4 = l4(
            self.proto,
            self.tcp_flags,
            self.sport,
            self.dport,
            &self.payload,
            &self.src,
            &self.dst,
        );
        let mut f = eth(self.dst_mac, self.src_mac, None, 0x86dd);
        if self.hop_by_hop {
            // Next header, length 0 (8 bytes), PadN option of 4 bytes of padding.
            let ext = [self.proto, 0, 1, 4, 0, 0, 0, 0];
            f.extend_from_slice(&ipv6_header(
                self.tclass,
                0,
                ext.len() + l4.len(),
                0,
                self.hop_limit,
                self.src,
                self.dst,
            ));
            f.extend_from_slice(&ext);
        } else {
            f.extend_from_slice(&ipv6_header(
                self.tclass,
                0,
                l4.len(),
                self.proto,
                self.hop_limit,
                self.src,
                self.dst,
            ));
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// The ICMPv4 "fragmentation needed" (3/4) answer to `frame` (untagged IPv4), as xdpvs
/// documents it: from the packet's destination back to its source, MACs swapped,
/// quoting the first `quote` bytes of the offending IP packet.
pub fn icmp4_too_big(frame: &[u8], mtu: u16, quote: usize) -> Vec<u8> {
    let ip = &frame[14..];
    let quote = quote.min(ip.len());
    let mut rest = [0u8; 4];
    rest[2..].copy_from_slice(&mtu.to_be_bytes());
    icmp4_error(
        frame[6..12].try_into().expect("6"),
        frame[0..6].try_into().expect("6"),
        ip[16..20].try_into().expect("4"),
        ip[12..16].try_into().expect("4"),
        3,
        4,
        rest,
        &ip[..quote],
    )
}

/// The ICMPv6 "packet too big" (2/0) answer to `frame` (IPv6), as for IPv4.
pub fn icmp6_too_big(frame: &[u8], mtu: u32, quote: usize) -> Vec<u8> {
    let ip = &frame[14..];
    let quote = quote.min(ip.len());
    icmp6_error(
        frame[6..12].try_into().expect("6"),
        frame[0..6].try_into().expect("6"),
        ip[24..40].try_into().expect("16"),
        ip[8..24].try_into().expect("16"),
        2,
        0,
        mtu.to_be_bytes(),
        &ip[..quote],
    )
}

/// An ICMPv4 error frame from `smac` to `dmac`, `src` to `dst`: `kind`, `code`, the
/// four bytes after the checksum (`rest`: unused, or the next-hop MTU) and the quoted
/// bytes, with both checksums computed here.
#[allow(clippy::too_many_arguments)]
pub fn icmp4_error(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dmac, smac, None, 0x0800);
    f.extend_from_slice(&ipv4_header(0xc0, 20 + icmp.len(), 0, 0, 64, 1, src, dst));
    f.extend_from_slice(&icmp);
    f
}

/// An ICMPv6 error frame, as [`icmp4_error`] (checksum with the pseudo-header).
#[allow(clippy::too_many_arguments)]
pub fn icmp6_error(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let c = pseudo_csum(&src, &dst, 58, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dmac, smac, None, 0x86dd);
    f.extend_from_slice(&ipv6_header(0, 0, icmp.len(), 58, 255, src, dst));
    f.extend_from_slice(&icmp);
    f
}

/// Splits the IPv4 datagram of `frame` (untagged, a 20-byte header) as a sender would:
/// fragments of at most `size` bytes of its payload (a multiple of 8), identification
/// `id`, each with the frame's Ethernet header, TOS, TTL, protocol and addresses and
/// its own header checksum.
/// Returns: the fragment frames, the first first.
pub fn fragments_v4(frame: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    assert!(
        size.is_multiple_of(8),
        "fragment payloads are multiples of 8 bytes"
    );
    let ip = &frame[14..];
    let (tos, ttl, proto) = (ip[1], ip[8], ip[9]);
    let (src, dst): ([u8; 4], [u8; 4]) = (
        ip[12..16].try_into().expect("4"),
        ip[16..20].try_into().expect("4"),
    );
    let payload = &ip[20..];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * size;
            let more = if offset + chunk.len() < payload.len() {
                0x2000
            } else {
                0
            };
            let mut f = frame[..14].to_vec();
            f.extend_from_slice(&ipv4_header(
                tos,
                20 + chunk.len(),
                id,
                more | (offset / 8) as u16,
                ttl,
                proto,
                src,
                dst,
            ));
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// Splits the IPv6 packet of `frame` (untagged, no extension header) as a sender
/// would: fragments of at most `size` bytes of its payload (a multiple of 8), each with
/// a fragment header of identification `id` after the fixed header.
/// Returns: the fragment frames, the first first.
pub fn fragments_v6(frame: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    assert!(
        size.is_multiple_of(8),
        "fragment payloads are multiples of 8 bytes"
    );
    let ip = &frame[14..];
    let next = ip[6];
    let payload = &ip[40..];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * size;
            let more = u16::from(offset + chunk.len() < payload.len());
            let mut f = frame[..14].to_vec();
            let mut fixed = ip[..40].to_vec();
            fixed[4..6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            fixed[6] = 44;
            f.extend_from_slice(&fixed);
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&(offset as u16 | more).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2, checksum its complement.
        assert_eq!(
            csum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn built_l4_checksums_verify() {
        let f = V4Packet::udp([10, 0, 0, 2], 1234, [10, 0, 0, 100], 53).build();
        assert_eq!(pseudo_csum(&f[26..30], &f[30..34], 17, &f[34..]), 0);
        let f = V6Packet::tcp([0xfd; 16], 1234, [0xfe; 16], 80).build();
        assert_eq!(pseudo_csum(&f[22..38], &f[38..54], 6, &f[54..]), 0);
    }

    #[test]
    fn fragments_carry_the_datagram_and_their_offsets() {
        let mut p = V4Packet::udp([10, 0, 0, 2], 1234, [10, 0, 0, 100], 53);
        p.payload = vec![7; 3000];
        let f = p.build();
        let parts = fragments_v4(&f, 1480, 9);
        assert_eq!(parts.len(), 3);
        let flags: Vec<u16> = parts
            .iter()
            .map(|p| u16::from_be_bytes([p[20], p[21]]))
            .collect();
        assert_eq!(flags, [0x2000, 0x2000 | 185, 370]);
        let data: Vec<u8> = parts.iter().flat_map(|p| p[34..].to_vec()).collect();
        assert_eq!(data, f[34..]);
        assert!(parts.iter().all(|p| csum(&p[14..34]) == 0));

        let mut p = V6Packet::udp([0xfd; 16], 1234, [0xfe; 16], 53);
        p.payload = vec![7; 3000];
        let f = p.build();
        let parts = fragments_v6(&f, 1232, 9);
        assert_eq!(parts.len(), 3);
        let offsets: Vec<u16> = parts
            .iter()
            .map(|p| u16::from_be_bytes([p[56], p[57]]))
            .collect();
        assert_eq!(offsets, [1, 1232 | 1, 2464]);
        let data: Vec<u8> = parts.iter().flat_map(|p| p[62..].to_vec()).collect();
        assert_eq!(data, f[54..]);
    }

    #[test]
    fn built_ipv4_header_verifies() {
        let f = V4Packet::tcp([10, 0, 0, 2], 1234, [10, 0, 0, 100], 80).build();
        assert_eq!(csum(&f[14..34]), 0, "a correct header sums to zero");
    }
}
