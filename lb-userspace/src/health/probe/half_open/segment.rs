//! The segments of a half-open probe: the SYN sent, the answer read, and what the
//! answer says of the probe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// What a segment read from a raw socket says, when it is TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub real: IpAddr,
    pub real_port: u16,
    pub port: u16,
    pub ack: u32,
    pub flags: u8,
}

/// Returns: what `answer` says of the probe whose initial sequence number is `isn`:
/// `Some(true)` open (a SYN-ACK acknowledging the SYN), `Some(false)` closed (a reset
/// acknowledging it, RFC 9293 3.10.7.3), `None` nothing (not an answer to it).
pub fn verdict(answer: &Answer, isn: u32) -> Option<bool> {
    if answer.flags & ACK == 0 || answer.ack != isn.wrapping_add(1) {
        return None;
    }
    if answer.flags & RST != 0 {
        return Some(false);
    }
    (answer.flags & (SYN | FIN) == SYN).then_some(true)
}

/// Returns: the answer in an IPv4 datagram as a raw IPv4 socket reads it (from its IP
/// header), if it is an unfragmented TCP segment.
pub fn parse_v4(d: &[u8]) -> Option<Answer> {
    let ihl = usize::from(*d.first()? & 0x0f) * 4;
    if d[0] >> 4 != 4 || ihl < 20 || d.len() < ihl + 20 || d[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    if u16::from_be_bytes([d[6], d[7]]) & 0x1fff != 0 {
        return None;
    }
    let real = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
    parse_tcp(IpAddr::V4(real), &d[ihl..])
}

/// Returns: the answer in a TCP segment as a raw IPv6 socket reads it (from its TCP
/// header; the source address comes apart).
pub fn parse_v6(real: Ipv6Addr, d: &[u8]) -> Option<Answer> {
    parse_tcp(IpAddr::V6(real), d)
}

fn parse_tcp(real: IpAddr, t: &[u8]) -> Option<Answer> {
    if t.len() < 20 {
        return None;
    }
    Some(Answer {
        real,
        real_port: u16::from_be_bytes([t[0], t[1]]),
        port: u16::from_be_bytes([t[2], t[3]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
    })
}

/// Returns: a SYN from `port` to `real_port` with sequence number `isn`, a window of
/// 64,240 and an MSS option of 1,460 (as Linux's first SYN), its checksum computed over
/// `addrs` (IPv4 source and destination) or left to the kernel (IPv6: `None`).
pub fn syn_segment(
    port: u16,
    real_port: u16,
    isn: u32,
    addrs: Option<(Ipv4Addr, Ipv4Addr)>,
) -> [u8; 24] {
    let mut t = [0u8; 24];
    t[0..2].copy_from_slice(&port.to_be_bytes());
    t[2..4].copy_from_slice(&real_port.to_be_bytes());
    t[4..8].copy_from_slice(&isn.to_be_bytes());
    // Acknowledgement number 0; data offset 6 words (the header and the MSS option).
    t[12] = 6 << 4;
    t[13] = SYN;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Checksum 16..18, urgent pointer 18..20: zero. MSS (kind 2, length 4): 1460.
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    if let Some((src, dst)) = addrs {
        let sum = checksum_v4(src, dst, &t);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    t
}

/// Returns: the TCP checksum of `seg` (checksum field zero) between `src` and `dst`:
/// the ones' complement of the ones' complement sum of the pseudo-header and `seg`.
pub fn checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let hi = u32::from(c[0]) << 8;
            sum += hi | c.get(1).map_or(0, |&lo| u32::from(lo));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_carries_its_ports_sequence_and_a_checksum_that_verifies() {
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 20));
        let s = syn_segment(61000, 8080, 0xdead_beef, Some((src, dst)));
        assert_eq!(&s[0..2], &61000u16.to_be_bytes());
        assert_eq!(&s[2..4], &8080u16.to_be_bytes());
        assert_eq!(&s[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(s[12] >> 4, 6, "header of 24 bytes");
        assert_eq!(s[13], SYN);
        // Summed with its checksum in place, a segment sums to 0xffff: the checksum
        // computed again over it is zero.
        assert_eq!(checksum_v4(src, dst, &s), 0);
        // A known value: the same sum computed by hand, in 16-bit words.
        let words: u32 = [0x0a00, 0x0001, 0x0a00, 0x0014, 0x0006, 24]
            .iter()
            .sum::<u32>()
            + [
                61000, 8080, 0xdead, 0xbeef, 0, 0, 0x6002, 64240, 0, 0, 0x0204, 0x05b4,
            ]
            .iter()
            .sum::<u32>();
        let folded = (words & 0xffff) + (words >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]), !(folded as u16));
        assert_eq!(
            syn_segment(61000, 8080, 1, None)[16..18],
            [0, 0],
            "IPv6: left to the kernel"
        );
    }

    fn answer(flags: u8, ack: u32) -> Answer {
        Answer {
            real: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)),
            real_port: 80,
            port: 61000,
            ack,
            flags,
        }
    }

    #[test]
    fn only_an_answer_acknowledging_the_syn_counts() {
        let isn = u32::MAX;
        assert_eq!(
            verdict(&answer(SYN | ACK, 0), isn),
            Some(true),
            "isn + 1 wraps"
        );
        assert_eq!(verdict(&answer(RST | ACK, 0), isn), Some(false));
        assert_eq!(
            verdict(&answer(SYN | ACK, 1), isn),
            None,
            "another sequence"
        );
        assert_eq!(verdict(&answer(RST | ACK, 5), isn), None);
        assert_eq!(verdict(&answer(RST, 0), isn), None, "a reset without ACK");
        assert_eq!(verdict(&answer(SYN, 0), isn), None, "a SYN alone");
        assert_eq!(verdict(&answer(ACK, 0), isn), None, "a bare ACK");
        assert_eq!(verdict(&answer(SYN | ACK | FIN, 0), isn), None);
    }

    #[test]
    fn answers_are_read_from_ipv4_datagrams_and_ipv6_segments() {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&8080u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&61001u16.to_be_bytes());
        tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
        tcp[13] = SYN | ACK;
        // An IPv4 header with 4 bytes of options (IHL 6).
        let mut d = vec![
            0x46, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 20, 10, 0, 0, 1,
        ];
        d.extend_from_slice(&[1, 1, 1, 0]);
        d.extend_from_slice(&tcp);
        let a = parse_v4(&d).expect("a TCP segment");
        assert_eq!(
            (a.real, a.real_port, a.port, a.ack, a.flags),
            (
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)),
                8080,
                61001,
                7,
                SYN | ACK
            )
        );
        // A later fragment, another protocol, a short datagram: nothing.
        let mut frag = d.clone();
        frag[7] = 1;
        assert_eq!(parse_v4(&frag), None);
        let mut udp = d.clone();
        udp[9] = 17;
        assert_eq!(parse_v4(&udp), None);
        assert_eq!(parse_v4(&d[..30]), None);
        let real = "fd00::20".parse().expect("address");
        let a = parse_v6(real, &tcp).expect("a segment");
        assert_eq!((a.real, a.port), (IpAddr::V6(real), 61001));
        assert_eq!(parse_v6(real, &tcp[..19]), None);
    }
}
