//! Internet checksum arithmetic (RFC 1071, incremental update per RFC 1624).
//!
//! Values are summed exactly as loaded from the packet (native loads of network-order
//! bytes): ones' complement addition commutes with byte swapping, so no conversion is
//! needed as long as the checksum field is loaded and stored the same way.

/// Folds a 64-bit ones' complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Accumulates the change of a 32-bit field from `old` to `new` (RFC 1624 eqn 3 terms:
/// ~m + m').
#[inline(always)]
pub fn diff32(acc: u64, old: u32, new: u32) -> u64 {
    acc + u64::from(!old) + u64::from(new)
}

/// Accumulates the change of a 16-bit field.
#[inline(always)]
pub fn diff16(acc: u64, old: u16, new: u16) -> u64 {
    acc + u64::from(!old) + u64::from(new)
}

/// Accumulates the change of an address (four words; IPv4 uses word 0 only, the other
/// words are zero in both and cancel out).
#[inline(always)]
pub fn diff_addr(mut acc: u64, old: &[u32; 4], new: &[u32; 4]) -> u64 {
    let mut i = 0;
    while i < 4 {
        acc = diff32(acc, old[i], new[i]);
        i += 1;
    }
    acc
}

/// Applies an accumulated change to checksum `check` (RFC 1624 eqn 3: HC' = ~(~HC + Σ)).
/// Returns: the new checksum.
#[inline(always)]
pub fn apply(check: u16, acc: u64) -> u16 {
    !fold(u64::from(!check) + acc)
}

/// Applies a change to a UDP checksum: zero (IPv4 "no checksum") stays zero, and a
/// computed zero is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn apply_udp(check: u16, acc: u64) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, acc) {
        0 => 0xffff,
        c => c,
    }
}

/// Sums an address (four network order words) into an accumulator: a 32-bit word adds
/// the same as its two 16-bit halves once folded.
#[inline(always)]
pub fn sum_addr(acc: u64, addr: &[u32; 4]) -> u64 {
    acc + u64::from(addr[0]) + u64::from(addr[1]) + u64::from(addr[2]) + u64::from(addr[3])
}

/// Sums 16-bit words (native loads) into an accumulator.
#[inline(always)]
pub fn sum_words(mut acc: u64, words: &[u16]) -> u64 {
    for w in words {
        acc += u64::from(*w);
    }
    acc
}
