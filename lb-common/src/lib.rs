//! Types shared by the xdpvs BPF programs (`lb-ebpf`) and the daemon (`lb-userspace`):
//! the balancer's at the top and in [`maps`], the real server's in [`realserver`].
//!
//! Every map key and value is `#[repr(C)]` with fixed-width fields and explicit padding,
//! and its size is pinned by a `const` assertion: a change of layout breaks the build
//! instead of silently breaking the kernel/userspace contract.
//!
//! Addresses are stored as four `u32` words holding the address bytes exactly as they
//! appear on the wire ("network order words"): an IPv4 address occupies word 0 and the
//! other three words are zero; an IPv6 address uses all four.
#![no_std]

pub mod bench;
pub mod hash;
pub mod maps;
pub mod realserver;
pub mod reason;
#[cfg(feature = "user")]
pub mod user;

pub use hash::{addr_filter_place, flow_filter_slot, flow_hash, tunnel_source_check};

/// Address family value of IPv4 in [`VsKey::family`], [`FlowKey::family`], [`RealInfo::family`].
pub const FAMILY_V4: u8 = 4;
/// Address family value of IPv6.
pub const FAMILY_V6: u8 = 6;

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Largest Maglev table a virtual server may use, in slots (a prime). Every ring in
/// [`maps::VS_RINGS`] has this stride, whatever the virtual server's own table size.
pub const RING_STRIDE: u32 = 65537;

/// [`maps::VS_RINGS`] elements per ring: two slots to an 8-byte element, since the
/// kernel gives every array value 8 bytes (decision 0030). Slot `s` of ring `r` is half
/// `s % 2` of element `r * RING_ELEMS + s / 2`; in the map's memory, the `u32` at
/// `r * 2 * RING_ELEMS + s`.
pub const RING_ELEMS: u32 = RING_STRIDE.div_ceil(2);

/// A [`maps::VS_RINGS`] element: two consecutive slots of a ring.
pub type RingPair = [u32; 2];
const _: () = assert!(core::mem::size_of::<RingPair>() == 8);

/// Ring slot value meaning "no real server": the data path drops new flows that hit it.
pub const NO_REAL: u32 = u32::MAX;

/// Forwarding method of a virtual server ([`VsInfo::method`]).
pub const METHOD_DR: u8 = 1;
/// NAT (LVS "masq"): destination rewritten, replies return through the balancer.
pub const METHOD_NAT: u8 = 2;
/// IP-in-IP tunnelling to the real.
pub const METHOD_TUNNEL: u8 = 3;

/// Identity of a virtual server as the data path sees it: VIP, port, protocol.
/// Key of [`maps::VS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VsKey {
    /// VIP, network order words (IPv4 in word 0, other words zero).
    pub addr: [u32; 4],
    /// Virtual server port, network byte order.
    pub port_be: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VsKey>() == 20);

/// What the data path needs to balance one virtual server. Value of [`maps::VS_MAP`].
///
/// The daemon never edits a live `VsInfo` in place: to change the Maglev table it fills
/// the virtual server's *other* ring and then replaces the whole value, so a packet sees
/// either the old ring or the new one, never a half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsInfo {
    /// Index of the virtual server in [`maps::STATS_VS`] (stable while the VS exists).
    pub vs_index: u32,
    /// Ring in [`maps::VS_RINGS`] in use: slot `i` is half `i % 2` of element
    /// `ring_id * RING_ELEMS + i / 2` ([`RING_ELEMS`]).
    pub ring_id: u32,
    /// Maglev table size of this virtual server, a prime `<= RING_STRIDE`.
    pub ring_size: u32,
    /// [`METHOD_DR`], [`METHOD_NAT`] or [`METHOD_TUNNEL`].
    pub method: u8,
    /// Reserved for flags; zero.
    pub flags: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// Tunnel method: outer source address, network order words, of the VIP's family.
    /// Zero for other methods.
    pub tunnel_src: [u32; 4],
    /// Source-IP persistence: the netmask applied to the client address, network order
    /// words (a /24 in IPv4 is `ff.ff.ff.00` in word 0). Zero when persistence is off.
    pub persist_mask: [u32; 4],
    /// Source-IP persistence: how long a client network keeps its real after its last
    /// packet, in nanoseconds. Zero: persistence is off.
    pub persist_timeout_ns: u64,
}
const _: () = assert!(core::mem::size_of::<VsInfo>() == 56);

/// [`RealInfo::flags`]: the real takes packets. Clear means flows pinned to this real are
/// re-steered through the Maglev table (the real was removed or failed).
pub const REAL_F_ACTIVE: u32 = 1;
/// [`RealInfo::flags`]: the real takes new flows (it is in its virtual server's Maglev
/// table). Clear on a draining real: its flows go on, but a persistence entry naming it
/// no longer brings new connections to it.
pub const REAL_F_NEW: u32 = 2;
/// [`RealInfo::flags`]: the kernel's route toward the real depends on its address alone
/// (one path, and no rule that looks at a packet's source, ports or protocol), so a
/// NAT request's next hop is the same for every client and is kept per CPU like a
/// tunnel's (decision 0024). Written by the daemon from what it reads of the host's
/// routes and rules; the policy's bits above are written apart from it.
pub const REAL_F_BY_DEST: u32 = 4;
/// [`RealInfo::flags`]: the real's address, port and protocol serve its NAT virtual
/// server alone: its [`maps::NAT_REALS`] entry names that virtual server, so its
/// replies are found through `FLOWS` (decision 0015) and a request need not write
/// `NAT_STATE`. Read instead of looking `NAT_REALS` up per request. Written by the
/// daemon after the entry, and cleared before the entry goes.
pub const REAL_F_SOLE_NAT: u32 = 8;
/// [`RealInfo::flags`]: the real's virtual server forwards by direct routing. A packet
/// of a flow `FLOWS` holds for this real (at its generation) is then forwarded by the
/// entry and the real alone, without looking its virtual server up (decision 0027),
/// unless [`REAL_F_PLAIN_PERSIST`] sends it through the virtual server. Written by the
/// daemon: taken before the virtual server's method or persistence changes, given after
/// its value is written.
pub const REAL_F_PLAIN_DR: u32 = 16;
/// [`RealInfo::flags`]: as [`REAL_F_PLAIN_DR`], for a NAT virtual server.
pub const REAL_F_PLAIN_NAT: u32 = 32;
/// [`RealInfo::flags`]: as [`REAL_F_PLAIN_DR`], for a tunnelling virtual server; the
/// outer source is read from [`maps::TUNNEL_SRCS`] by the entry's virtual server index
/// (decision 0028).
pub const REAL_F_PLAIN_TUNNEL: u32 = 64;
/// [`RealInfo::flags`]: beside one of `REAL_F_PLAIN_*`, the real's virtual server has
/// persistence: a packet of a flow whose entry's [`FlowState::touched`] is
/// [`PERSIST_TOUCH_JIFFIES`] old or more goes through the virtual server, which keeps
/// the client network's persistence entry alive, and stamps the entry (decision
/// 0033). Taken with the method's flag before persistence comes or goes; both given
/// again once the virtual server's new value is written.
pub const REAL_F_PLAIN_PERSIST: u32 = 128;
/// The [`RealInfo::flags`] that say how a flow recorded for the real is forwarded
/// without its virtual server.
pub const REAL_F_PLAIN: u32 =
    REAL_F_PLAIN_DR | REAL_F_PLAIN_NAT | REAL_F_PLAIN_TUNNEL | REAL_F_PLAIN_PERSIST;
/// The [`RealInfo::flags`] the reals' health and weights decide.
pub const REAL_F_POLICY: u32 = REAL_F_ACTIVE | REAL_F_NEW;

/// A real server as the data path forwards to it. Value of [`maps::REALS`], indexed by
/// the real's id (the values found in Maglev rings and in flow state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealInfo {
    /// Real's address, network order words.
    pub addr: [u32; 4],
    /// Real's Ethernet address (direct routing: the new destination MAC).
    pub mac: [u8; 6],
    /// Real's port, network byte order (NAT rewrites to it; equals the VIP port for DR).
    pub port_be: u16,
    /// Interface the real is reached through (the kernel's ifindex).
    pub ifindex: u32,
    /// Bumped by the daemon each time this id is given to another real, so that flow
    /// state naming an old holder of the id is recognised as stale.
    pub generation: u32,
    /// `REAL_F_*` bits.
    pub flags: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// What holds this id: [`REAL_ROLE_FREE`], [`REAL_ROLE_REAL`] or
    /// [`REAL_ROLE_SORRY`]. Not read by the data path: a daemon that adopts the maps
    /// reads back which ids are in use.
    pub role: u8,
    /// The `vs_index` of the virtual server this real belongs to (with `role`, what a
    /// daemon adopting the maps needs to name the real). Not read by the data path.
    pub vs_index: u16,
}
const _: () = assert!(core::mem::size_of::<RealInfo>() == 40);

/// A tunnelling virtual server's outer source, by its index: value of
/// [`maps::TUNNEL_SRCS`] (decision 0028). An array value is rewritten in place, so a
/// packet may read one half-written; `check` tells: a packet uses the address only
/// when `check` is [`crate::tunnel_source_check`] of it, and looks the virtual server
/// up otherwise. All zero: never written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelSource {
    /// The outer source address, network order words, as [`VsInfo::tunnel_src`].
    pub addr: [u32; 4],
    /// [`crate::tunnel_source_check`] of `addr`; never zero once written.
    pub check: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TunnelSource>() == 24);

impl TunnelSource {
    /// Returns: the value that carries `addr`.
    pub fn new(addr: [u32; 4]) -> Self {
        Self {
            addr,
            check: crate::tunnel_source_check(&addr),
            _pad: 0,
        }
    }

    /// Returns: whether `check` is that of `addr`: written, and read whole.
    #[inline(always)]
    pub fn is_whole(&self) -> bool {
        self.check == crate::tunnel_source_check(&self.addr)
    }
}

/// [`RealInfo::role`]: the id is free (no real holds it; its generation is kept).
pub const REAL_ROLE_FREE: u8 = 0;
/// [`RealInfo::role`]: a real server of the virtual server `vs_index`.
pub const REAL_ROLE_REAL: u8 = 1;
/// [`RealInfo::role`]: the sorry server of the virtual server `vs_index`.
pub const REAL_ROLE_SORRY: u8 = 2;

/// A connection's 5-tuple as received from the client. Key of [`maps::FLOWS`], and the
/// input of [`flow_hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address, network order words.
    pub src: [u32; 4],
    /// Destination (VIP) address, network order words.
    pub dst: [u32; 4],
    /// Client port, network byte order.
    pub sport_be: u16,
    /// Destination (VIP) port, network byte order.
    pub dport_be: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// The real a connection is pinned to. Value of [`maps::FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Real id (index into [`maps::REALS`]).
    pub real_id: u32,
    /// [`RealInfo::generation`] of that id when the flow was pinned.
    pub real_generation: u32,
    /// [`VsInfo::vs_index`] of the flow's virtual server.
    pub vs_index: u32,
    /// Of a persistent virtual server's flow: the low 32 bits of the kernel's tick
    /// count (`jiffies`) when a packet of the flow last went through the virtual server
    /// to keep its client network's persistence entry alive (decision 0033). Written
    /// zero for other flows (as by a release before it), and read only while the
    /// flow's real is flagged [`REAL_F_PLAIN_PERSIST`].
    pub touched: u32,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

/// A persistent virtual server's established flow goes through its virtual server, to
/// keep its client network's persistence entry alive, once its entry's
/// [`FlowState::touched`] is this many kernel ticks old (decision 0033): 100 ms at the
/// usual `CONFIG_HZ` of 250, 250 ms at 100, 25 ms at 1,000. Its other packets are
/// forwarded by the entry and the real alone.
pub const PERSIST_TOUCH_JIFFIES: u32 = 25;

/// NAT: what a reply needs to look as if the VIP sent it. Value of [`maps::NAT_STATE`],
/// keyed by the reply's 5-tuple as a [`FlowKey`] (source: the real's address and port;
/// destination: the client's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    /// VIP, network order words (the reply's new source address).
    pub vip: [u32; 4],
    /// Virtual server port, network byte order (the reply's new source port).
    pub vport_be: u16,
    /// Zero.
    pub _pad: u16,
    /// [`VsInfo::vs_index`] of the flow's virtual server (reply counters).
    pub vs_index: u32,
}
const _: () = assert!(core::mem::size_of::<NatState>() == 24);

/// One fragmented datagram of a NAT real's reply, as every one of its fragments
/// carries it: key of [`maps::NAT_FRAGS`] (decision 0016). The first fragment, which
/// holds the ports, finds the reply's [`NatState`] and records it here; the fragments
/// after it, which carry no ports, find it by this key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source (the real's address), network order words.
    pub src: [u32; 4],
    /// Destination (the client's address), network order words.
    pub dst: [u32; 4],
    /// The datagram's identification: IPv4's 16-bit field as loaded from the wire
    /// (network order) in the low half, or the 32-bit identification of IPv6's
    /// fragment header as loaded (network order).
    pub id_be: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

/// A next hop the FIB found no neighbour entry for: one record of
/// [`maps::NEIGH_MISS`] (decision 0019).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighMiss {
    /// The next hop (the destination itself, or the router toward it), network order
    /// words; IPv4 in the first.
    pub addr: [u32; 4],
    /// The interface the packet would have left by.
    pub ifindex: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NeighMiss>() == 24);

/// A client network of a persistent virtual server. Key of [`maps::PERSIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    /// Client address masked with [`VsInfo::persist_mask`], network order words.
    pub net: [u32; 4],
    /// [`VsInfo::vs_index`].
    pub vs_index: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PersistKey>() == 24);

/// The real a client network sticks to. Value of [`maps::PERSIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistState {
    /// Real id (index into [`maps::REALS`]).
    pub real_id: u32,
    /// [`RealInfo::generation`] of that id when the entry was made.
    pub real_generation: u32,
    /// `bpf_ktime_get_ns` of the network's last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PersistState>() == 16);

/// Bytes an IPv4-in-IPv4 tunnel adds (the outer IPv4 header, no options).
pub const IPIP_OVERHEAD: u32 = 20;
/// Bytes an IPv6-in-IPv6 tunnel adds (the outer IPv6 header).
pub const IP6IP6_OVERHEAD: u32 = 40;

/// [`maps::SETTINGS`] bit: some virtual server uses NAT, so packets for no VIP are
/// looked up as possible NAT replies (otherwise that lookup is skipped).
pub const SETTING_NAT: u32 = 1;
/// [`maps::SETTINGS`] bit: every rule of the host looks at a packet's destination alone
/// and no route has more than one path, so the route toward a client depends on its
/// address alone and a NAT reply's next hop is kept per CPU by the client's address
/// (`CLIENT_HOPS`, decision 0024). Written by the daemon from what it reads of the
/// host; the configuration's bits are written apart from it.
pub const SETTING_CLIENTS_BY_DEST: u32 = 2;

/// An interface the data path transmits on. Value of [`maps::IFACES`], keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// The interface's own Ethernet address (new source MAC of forwarded frames).
    pub mac: [u8; 6],
    /// `IFACE_F_*` bits.
    pub flags: u8,
    /// Zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 8);

/// [`IfaceInfo::flags`]: a VLAN device, with an entry in [`maps::VLAN_OUT`].
pub const IFACE_F_VLAN: u8 = 1;

/// How frames leave by a VLAN device (802.1Q, or 802.1Q on 802.1ad for QinQ) stacked
/// on an attached interface: value of [`maps::VLAN_OUT`], keyed by the VLAN device's
/// ifindex. A redirect cannot target a VLAN device, so the frames are tagged here and
/// sent on the plain device at the bottom of its stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VlanOut {
    /// The plain device at the bottom of the stack (an attached interface): where the
    /// frames are transmitted.
    pub xmit_ifindex: u32,
    /// Number of tags: 1, or 2 for a VLAN device on a VLAN device (QinQ).
    pub tags: u8,
    /// Zero.
    pub _pad: [u8; 3],
    /// Each tag's TPID (0x8100 or 0x88a8), outermost first, network order.
    pub tpid_be: [u16; 2],
    /// Each tag's VLAN id (priority and DEI zero), outermost first, network order.
    pub vid_be: [u16; 2],
}
const _: () = assert!(core::mem::size_of::<VlanOut>() == 16);

/// The VLAN a tagged frame arrived on: key of [`maps::VLAN_IN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanKey {
    /// The ifindex the frame was received on (an attached interface).
    pub ifindex: u32,
    /// The frame's VLAN ids, outermost first, network order; the second is zero for a
    /// frame with one tag.
    pub vid_be: [u16; 2],
}
const _: () = assert!(core::mem::size_of::<VlanKey>() == 8);

/// Per-CPU traffic counters of a virtual server or a real. Value of [`maps::STATS_VS`]
/// and [`maps::STATS_REAL`]; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded, counted as received (Ethernet header included).
    pub bytes: u64,
    /// Flows that were scheduled (new flow table entries).
    pub new_flows: u64,
    /// NAT replies restored and forwarded (virtual server counters only).
    pub reply_packets: u64,
    /// Bytes of those replies, counted as received.
    pub reply_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 40);

/// One CPU's count of opening SYNs (decision 0025). Value of [`maps::SYN_RATE`]: the
/// data path counts SYNs to virtual servers in windows of [`SYN_WINDOW_JIFFIES`]; while
/// the current or the last window counted more than [`maps::SYN_GUARD`] allows, an
/// opening SYN is balanced without looking up the connection table. Userspace reads
/// `skipped`, summed over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynRate {
    /// `jiffies` when the current window began (decision 0032). A value a release
    /// that counted nanoseconds left reads as a window long past.
    pub window: u64,
    /// Opening SYNs counted in the current window.
    pub count: u32,
    /// Opening SYNs counted in the window before it (0 if that was not the one just
    /// before).
    pub previous: u32,
    /// Opening SYNs that skipped the connection table, since the map was made.
    pub skipped: u64,
}
const _: () = assert!(core::mem::size_of::<SynRate>() == 24);

/// The window of [`SynRate`], in the kernel's ticks (`jiffies`, decision 0032): 100 ms
/// at the usual `CONFIG_HZ` of 250, 250 ms at 100, 25 ms at 1,000.
pub const SYN_WINDOW_JIFFIES: u64 = 25;

/// Returns: the SYNs one CPU may count in a window of [`SYN_WINDOW_JIFFIES`] before
/// SYNs skip the connection table, for `per_s` SYNs a second (`syn_flood_rate`) on a
/// kernel of `hz` ticks a second: `per_s` times the window's share of a second,
/// rounded up, at least 1; 0 (never) stays 0.
pub const fn syn_guard_per_window(per_s: u32, hz: u32) -> u32 {
    if per_s == 0 {
        return 0;
    }
    let hz = if hz == 0 { 1 } else { hz as u64 };
    let n = (per_s as u64 * SYN_WINDOW_JIFFIES).div_ceil(hz);
    if n == 0 {
        1
    } else if n > u32::MAX as u64 {
        u32::MAX
    } else {
        n as u32
    }
}
