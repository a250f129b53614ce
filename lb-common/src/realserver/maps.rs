//! Names and sizes of the real-server object's maps and its program. lb-ebpf's
//! `xdpvs-realserver` declares each map under the static of the same name; userspace
//! looks maps up through these constants only, and a test of lb-userspace checks that
//! the built object holds exactly [`ALL`] and [`PROGRAMS`].
//!
//! | map | holds | written by | read by |
//! |---|---|---|---|
//! | `DECAP_VIPS` | [`super::AddrKey`] -> `u8` | `xdpvs realserver decap` | decap XDP |
//! | `DECAP_LOCAL` | [`super::AddrKey`] -> `u8` | `xdpvs realserver decap` | decap XDP |
//! | `DECAP_STATS` | `DECAP_*` -> packets per CPU (`u64`) | decap XDP | `xdpvs realserver decap` |

/// VIPs whose tunnelled packets are unwrapped. Hash map.
pub const DECAP_VIPS: &str = "DECAP_VIPS";
/// The real server's own addresses (the tunnel's outer destinations). Hash map.
pub const DECAP_LOCAL: &str = "DECAP_LOCAL";
/// Decapsulator counters, indexed by `DECAP_*`. Per-CPU array of `u64`.
pub const DECAP_STATS: &str = "DECAP_STATS";

/// Every map of the real-server object.
pub const ALL: &[&str] = &[DECAP_VIPS, DECAP_LOCAL, DECAP_STATS];

/// The decapsulator (IPIP / IPv6-in-IPv6 to a VIP -> inner packet).
pub const PROG_DECAP: &str = "xdpvs_decap";

/// Every program of the real-server object.
pub const PROGRAMS: &[&str] = &[PROG_DECAP];

/// Most VIPs and most local addresses the decapsulator holds (each of `DECAP_VIPS` and
/// `DECAP_LOCAL`).
pub const MAX_DECAP_ADDRS: u32 = 1024;
