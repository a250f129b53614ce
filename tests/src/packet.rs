//! Building test packets byte by byte, with checksums computed here (independently of
//! the code under test).

/// Ones' complement sum of `data` folded to 16 bits (RFC 1071).
pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub const TCP_SYN: u8 = 0x02;

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
    pub payload: Vec<u8>,
}

impl V4Packet {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0xaa],
            src_mac: [0x02, 0, 0, 0, 0, 0xcc],
            vlan: None,
            src,
            dst,
            proto: 6,
            sport,
            dport,
            ttl: 64,
            payload: b"hello xdpvs".to_vec(),
        }
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self { proto: 17, ..Self::tcp(src, sport, dst, dport) }
    }

    /// Returns: the frame's bytes, with valid IPv4 and L4 checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 6 {
            l4.extend_from_slice(&1u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0u32.to_be_bytes()); // ack
            l4.push(5 << 4); // data offset
            l4.push(TCP_SYN);
            l4.extend_from_slice(&64240u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src);
        pseudo.extend_from_slice(&self.dst);
        pseudo.extend_from_slice(&[0, self.proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let c = csum(&pseudo);
        let at = if self.proto == 6 { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());

        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, self.ttl, self.proto, 0, 0]);
        ip.extend_from_slice(&self.src);
        ip.extend_from_slice(&self.dst);
        let c = csum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(v) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2, checksum its complement.
        assert_eq!(csum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn built_ipv4_header_verifies() {
        let f = V4Packet::tcp([10, 0, 0, 2], 1234, [10, 0, 0, 100], 80).build();
        assert_eq!(csum(&f[14..34]), 0, "a correct header sums to zero");
    }
}
