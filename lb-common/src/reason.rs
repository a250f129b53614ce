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

/// NAT reply: source restored to VIP:port and forwarded toward the client.
pub const FWD_NAT_REPLY: u32 = 12;
/// NAT/tunnel: the kernel's FIB has no resolved neighbour for the next hop yet (the
/// daemon solicits it): dropped.
pub const DROP_NO_NEIGH: u32 = 13;
/// NAT/tunnel: no usable route (unreachable, blackhole, prohibit, not a unicast route,
/// or an egress the helper cannot use): dropped.
pub const DROP_NO_ROUTE: u32 = 14;
/// NAT/tunnel: forwarding is disabled on the receiving interface (the FIB lookup needs
/// `net.ipv4.conf.IF.forwarding=1` / `net.ipv6.conf.IF.forwarding=1`): dropped.
pub const DROP_FWD_DISABLED: u32 = 15;
/// Tunnel: too big once encapsulated; answered with ICMP fragmentation-needed or
/// ICMPv6 packet-too-big carrying the usable MTU (sent back with XDP_TX).
pub const ICMP_TOO_BIG: u32 = 16;
/// Tunnel: too big once encapsulated and may not be answered with ICMP (IPv4 without
/// DF, or no room to build the reply): dropped.
pub const DROP_TOO_BIG: u32 = 17;
/// NAT/tunnel on a VLAN-tagged frame of a VLAN this host has no device for (the FIB
/// cannot route it): dropped.
pub const DROP_VLAN: u32 = 18;

/// A frame for a VIP whose destination MAC is neither the receiving interface's, nor
/// one it also answers for (`OWN_MACS`), nor broadcast/multicast: a switch flooded a
/// frame meant for another host (another balancer on the segment). Passed untouched;
/// the kernel drops it as PACKET_OTHERHOST.
pub const PASS_OTHER_HOST: u32 = 19;

/// An ICMP or ICMPv6 error about a flow of a direct-routing or tunnel virtual server
/// (a router's "fragmentation needed" / "packet too big" about a real's reply, sent
/// to the VIP): forwarded to the real that serves the flow, by the virtual server's
/// method, so that path MTU discovery works.
pub const FWD_ICMP_ERROR: u32 = 20;

/// Number of reasons; size of the `VERDICTS` map.
pub const COUNT: u32 = 21;

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
        FWD_NAT_REPLY => "fwd_nat_reply",
        DROP_NO_NEIGH => "drop_no_neigh",
        DROP_NO_ROUTE => "drop_no_route",
        DROP_FWD_DISABLED => "drop_fwd_disabled",
        ICMP_TOO_BIG => "icmp_too_big",
        DROP_TOO_BIG => "drop_too_big",
        DROP_VLAN => "drop_vlan",
        PASS_OTHER_HOST => "pass_other_host",
        FWD_ICMP_ERROR => "fwd_icmp_error",
        _ => "unknown",
    }
}
