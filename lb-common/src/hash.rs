//! The flow hash: which Maglev slot a connection lands in. Shared by the XDP program and
//! userspace, so a test (or an operator's tool) can predict a flow's real server.

use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a connection's 5-tuple (MurmurHash3's 32-bit mixing over the key's words).
/// Endianness-independent in the sense that matters: the words hold wire bytes, and the
/// data path and userspace run on the same host.
/// Returns: a 32-bit hash; `hash % ring_size` is the flow's Maglev slot.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = 0x5876_7370; // "xdvp": any fixed seed; part of the contract.
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, (key.sport_be as u32) << 16 | key.dport_be as u32);
    h = mix(h, (key.proto as u32) << 8 | key.family as u32);
    finish(h ^ 40)
}

/// Returns: where an address's bit lies in `maps::ADDR_FILTER`'s bitmap: the word
/// (below `maps::ADDR_FILTER_WORDS`; element `1 +` it of the map) and the bit's mask in
/// it. The bit is in the first half of the bitmap as a virtual server's address, in
/// the second as a NAT real's (`nat_real`). Addresses are network order words, IPv4 in
/// the first. Part of the contract between the daemon, which sets the bits, and the
/// data path, which tests them.
#[inline(always)]
pub fn addr_filter_place(addr: &[u32; 4], nat_real: bool) -> (u32, u64) {
    let x = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    let half = crate::maps::ADDR_FILTER_BITS / 2;
    let bit = (x.wrapping_mul(0x9e37_79b1) >> 16) % half + if nat_real { half } else { 0 };
    (bit / 64, 1 << (bit % 64))
}

/// Returns: the check word of [`crate::TunnelSource`] for outer source `addr`: never
/// zero, and another for another address but with odds of about one in 2^31, so that
/// a value read while the daemon rewrites it (part old, part new) is told apart from a
/// whole one. Every established tunnelled packet computes it (decision 0028): three
/// 64-bit multiplications, the first two independent, where four rounds of
/// [`flow_hash`]'s mixing cost it about 7 ns more (docs/testing.md). Part of the
/// contract between the daemon, which writes the word, and the data path: a word of
/// another release's making reads as not whole, and the packet looks its virtual
/// server up instead, until the daemon's load writes every slot again.
#[inline(always)]
pub fn tunnel_source_check(addr: &[u32; 4]) -> u32 {
    let lo = u64::from(addr[0]) | u64::from(addr[1]) << 32;
    let hi = u64::from(addr[2]) | u64::from(addr[3]) << 32;
    let x = (lo ^ 0x7475_6e6e).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ hi.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    ((x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32) as u32 | 1
}

/// Returns: the slot of flow `key` in each half of `maps::FLOW_FILTER` of
/// `1 << log2_slots` slots (decision 0026). Cheaper than [`flow_hash`] (three
/// multiplications that do not wait on each other), because every packet of every
/// flow computes it; it only spreads flows over the slots, it picks no real. Part of
/// the contract between the data path, which sets and tests the slots, and the daemon,
/// which rebuilds them.
#[inline(always)]
pub fn flow_filter_slot(key: &FlowKey, log2_slots: u32) -> u32 {
    let src = key.src[0] ^ key.src[1] ^ key.src[2] ^ key.src[3];
    let dst = key.dst[0] ^ key.dst[1] ^ key.dst[2] ^ key.dst[3];
    let rest = u64::from(key.sport_be)
        | u64::from(key.dport_be) << 16
        | u64::from(key.proto) << 32
        | u64::from(key.family) << 40;
    let x = u64::from(src).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(dst).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ rest.wrapping_mul(0x1656_67b1_9e37_79f9);
    // The high bits of a product are the well mixed ones.
    ((x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> (64 - log2_slots)) as u32
}
