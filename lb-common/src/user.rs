//! Userspace-only impls: `aya::Pod` for every balancer map type and conversions from std
//! types (the real server's are in `realserver::user`).

use core::net::IpAddr;

use crate::{
    Counters, FlowKey, FlowState, FragKey, IfaceInfo, NatState, NeighMiss, PersistKey,
    PersistState, RealInfo, SynRate, TunnelSource, VlanKey, VlanOut, VsInfo, VsKey, FAMILY_V4,
    FAMILY_V6,
};

// SAFETY: all of these are repr(C), built only of integers and byte arrays, with
// explicit padding fields: every bit pattern is valid and none has hidden padding.
unsafe impl aya::Pod for VsKey {}
unsafe impl aya::Pod for VsInfo {}
unsafe impl aya::Pod for RealInfo {}
unsafe impl aya::Pod for TunnelSource {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowState {}
unsafe impl aya::Pod for IfaceInfo {}
unsafe impl aya::Pod for VlanKey {}
unsafe impl aya::Pod for VlanOut {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for NatState {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for PersistKey {}
unsafe impl aya::Pod for PersistState {}
unsafe impl aya::Pod for SynRate {}

impl NeighMiss {
    /// Reads one record of `maps::NEIGH_MISS` as the data path wrote it.
    /// Returns: the record, or `None` if `bytes` is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != core::mem::size_of::<Self>() {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Some(Self {
            addr: [word(0), word(4), word(8), word(12)],
            ifindex: word(16),
            family: bytes[20],
            _pad: [0; 3],
        })
    }

    /// Returns: the next hop's address, or `None` for an unknown family.
    pub fn address(&self) -> Option<IpAddr> {
        words_addr(self.addr, self.family)
    }
}

/// Converts an address to network order words and its family value.
/// Returns: `(words, FAMILY_V4 | FAMILY_V6)`.
pub fn addr_words(addr: IpAddr) -> ([u32; 4], u8) {
    match addr {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// Inverse of [`addr_words`].
/// Returns: the address, or `None` for an unknown family.
pub fn words_addr(words: [u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from(words[0].to_ne_bytes())),
        FAMILY_V6 => {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::from(o))
        }
        _ => None,
    }
}

/// Returns: the netmask of `prefix` bits for `family` as network order words (bits past
/// the family's length are ignored).
pub fn mask_words(prefix: u8, family: u8) -> [u32; 4] {
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let prefix = u32::from(prefix).min(bits);
    let mut out = [0u32; 4];
    for (i, w) in out.iter_mut().enumerate() {
        let n = prefix.saturating_sub(32 * i as u32).min(32);
        let host_order = if n == 0 { 0 } else { u32::MAX << (32 - n) };
        *w = u32::from_ne_bytes(host_order.to_be_bytes());
    }
    out
}

impl VsKey {
    /// The key of the virtual server `addr:port/proto`.
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = addr_words(addr);
        Self {
            addr,
            port_be: port.to_be(),
            proto,
            family,
        }
    }
}

impl FlowKey {
    /// The key of the connection `src:sport -> dst:dport/proto`. Both addresses must be
    /// of one family.
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Self {
        let (src, family) = addr_words(src);
        let (dst, _) = addr_words(dst);
        Self {
            src,
            dst,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for a in ["10.0.0.1", "255.1.2.3", "2001:db8::1", "::ffff:1.2.3.4"] {
            let ip: IpAddr = a.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(w, f), Some(ip));
        }
    }

    #[test]
    fn v4_word_holds_wire_bytes() {
        let (w, _) = addr_words("10.0.0.1".parse().unwrap());
        assert_eq!(w[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(&w[1..], &[0, 0, 0]);
    }

    #[test]
    fn a_neigh_miss_record_reads_back_as_written() {
        for a in ["192.0.2.9", "fe80::1"] {
            let ip: IpAddr = a.parse().unwrap();
            let (addr, family) = addr_words(ip);
            let m = NeighMiss {
                addr,
                ifindex: 7,
                family,
                _pad: [0; 3],
            };
            // SAFETY: NeighMiss is repr(C), integers only, no hidden padding.
            let bytes = unsafe {
                core::slice::from_raw_parts(
                    (&m as *const NeighMiss).cast::<u8>(),
                    core::mem::size_of::<NeighMiss>(),
                )
            };
            let back = NeighMiss::from_bytes(bytes).expect("a record");
            assert_eq!(back, m);
            assert_eq!(back.address(), Some(ip));
            assert_eq!(NeighMiss::from_bytes(&bytes[1..]), None, "short");
        }
    }

    #[test]
    fn masks_keep_the_prefix_bytes() {
        let (a, _) = addr_words("10.1.2.3".parse().unwrap());
        let m = mask_words(24, FAMILY_V4);
        assert_eq!((a[0] & m[0]).to_ne_bytes(), [10, 1, 2, 0]);
        assert_eq!(&m[1..], &[0, 0, 0]);
        assert_eq!(mask_words(0, FAMILY_V4), [0; 4]);
        assert_eq!(mask_words(32, FAMILY_V4)[0], u32::MAX);
        let m6 = mask_words(68, FAMILY_V6);
        assert_eq!(m6[0..2], [u32::MAX, u32::MAX]);
        assert_eq!(m6[2].to_ne_bytes(), [0xf0, 0, 0, 0]);
        assert_eq!(m6[3], 0);
        assert_eq!(mask_words(128, FAMILY_V6), [u32::MAX; 4]);
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = FlowKey::new(
            "10.0.0.1".parse().unwrap(),
            1000,
            "10.0.0.100".parse().unwrap(),
            80,
            6,
        );
        let h = crate::flow_hash(&base);
        assert_eq!(h, crate::flow_hash(&base), "deterministic");
        let mut k = base;
        k.sport_be = 1001u16.to_be();
        assert_ne!(h, crate::flow_hash(&k));
        let mut k = base;
        k.proto = 17;
        assert_ne!(h, crate::flow_hash(&k));
        let mut k = base;
        k.src[0] ^= 1;
        assert_ne!(h, crate::flow_hash(&k));
    }

    /// The filter of decision 0026: eight slots per connection-table entry within its
    /// bounds, and its slots spread the flows of one client evenly.
    #[test]
    fn flow_filter_size_and_spread() {
        use crate::{flow_filter_slot, maps::*, FlowKey, PROTO_UDP};
        assert_eq!(flow_filter_log2(262_144), 21);
        assert_eq!(flow_filter_log2(1024), FLOW_FILTER_LOG2_MIN);
        assert_eq!(flow_filter_log2(4_194_304), FLOW_FILTER_LOG2_MAX);
        assert_eq!(flow_filter_entries(21), 1 + 2 * 32_768);
        let log2 = 16;
        let mut seen = [0u32; 1 << 16];
        let client: IpAddr = "198.18.0.1".parse().unwrap();
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        for port in 0..u16::MAX {
            let key = FlowKey::new(client, port, vip, 53, PROTO_UDP);
            seen[flow_filter_slot(&key, log2) as usize] += 1;
        }
        let used = seen.iter().filter(|&&n| n > 0).count();
        // 65,535 flows over 65,536 slots: about 1 - 1/e of the slots when spread.
        assert!(used > 38_000, "{used} slots of 65,536 used");
        assert!(seen.iter().all(|&n| n < 12), "a slot took too many flows");
    }

    /// A `TunnelSource` read while the daemon rewrites it, some words of the old
    /// address and some of the new, is not taken for whole; neither is a slot never
    /// written (decision 0028).
    #[test]
    fn a_tunnel_source_read_half_written_is_not_whole() {
        assert!(!TunnelSource::default().is_whole(), "never written");
        let words = |a: &str| addr_words(a.parse().unwrap()).0;
        let pairs = [
            (words("10.0.9.1"), words("10.0.9.2")),
            (words("2001:db8::1"), words("fd00:1::1")),
            (words("fd00:1::1"), words("fd00:2::2")),
        ];
        for (old, new) in pairs {
            let (o, n) = (TunnelSource::new(old), TunnelSource::new(new));
            assert!(o.is_whole() && n.is_whole());
            // Every mix of the two addresses' words under either check word.
            for mask in 0..16u32 {
                let mut addr = old;
                for (i, w) in addr.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        *w = new[i];
                    }
                }
                for check in [o.check, n.check] {
                    let t = TunnelSource {
                        addr,
                        check,
                        _pad: 0,
                    };
                    assert_eq!(
                        t.is_whole(),
                        addr == old && check == o.check || addr == new && check == n.check,
                        "{t:?}"
                    );
                }
            }
        }
    }
}
