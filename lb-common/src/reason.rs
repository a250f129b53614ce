//! Verdict reasons: why the XDP program did what it did with a packet. Indexes of the
//! `VERDICTS` counters; the daemon prints and exports them under [`name`].
//! Every packet is counted under exactly one reason.

/// Not IPv4/IPv6 (ARP, LLDP, ...): passed to the kernel.
pub const PASS_NOT_IP: u32 = 0;
/// IP, but not for a configured VIP:port/protocol: passed to the kernel untouched.
pub const PASS_NOT_VS: u32 = 1;
/// Headers too short or inconsistent to read (before any VIP is known): passed, the kernel drops it.
pub const PASS_MALFORMED: u32 = 2;
/// IPv4 fragment: carries no ports to balance on; passed to the kernel.
pub const PASS_FRAGMENT: u32 = 3;
/// IPv6 with extension headers before TCP/UDP: passed to the kernel.
pub const PASS_IPV6_EXT: u32 = 4;
/// For a VIP, but the TCP/UDP header is truncated: dropped.
pub const DROP_MALFORMED: u32 = 5;
/// For a VIP whose table holds no real (all weights 0, or no reals): dropped.
pub const DROP_NO_REAL: u32 = 6;
/// The chosen real's Ethernet address is not resolved yet: dropped.
pub const DROP_NO_MAC: u32 = 7;
/// The egress interface is unknown to the data path: dropped.
pub const DROP_NO_IFACE: u32 = 8;
/// Internal inconsistency (ring or real id out of range): dropped.
pub const DROP_INTERNAL: u32 = 9;
/// Forwarded out of the receiving interface (XDP_TX).
pub const FWD_TX: u32 = 10;
/// Forwarded out of another interface (XDP_REDIRECT).
pub const FWD_REDIRECT: u32 = 11;

/// Number of reasons; size of the `VERDICTS` map.
pub const COUNT: u32 = 12;

/// Stable, Prometheus-friendly name of a reason.
/// Returns: the name, or `"unknown"` for an index out of range.
pub const fn name(reason: u32) -> &'static str {
    match reason {
        PASS_NOT_IP => "pass_not_ip",
        PASS_NOT_VS => "pass_not_vs",
        PASS_MALFORMED => "pass_malformed",
        PASS_FRAGMENT => "pass_fragment",
        PASS_IPV6_EXT => "pass_ipv6_ext",
        DROP_MALFORMED => "drop_malformed",
        DROP_NO_REAL => "drop_no_real",
        DROP_NO_MAC => "drop_no_mac",
        DROP_NO_IFACE => "drop_no_iface",
        DROP_INTERNAL => "drop_internal",
        FWD_TX => "fwd_tx",
        FWD_REDIRECT => "fwd_redirect",
        _ => "unknown",
    }
}
