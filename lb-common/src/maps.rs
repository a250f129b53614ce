//! Names and default sizes of the balancer object's maps, and its program names.
//! lb-ebpf's `xdpvs` declares each map under the static of the same name; userspace
//! looks maps up through these constants only, and a test of lb-userspace checks that
//! the built object holds exactly [`ALL`] and [`PROGRAMS`]. The real server's object
//! has its own list, [`crate::realserver::maps`].
//!
//! | map | holds | written by | read by |
//! |---|---|---|---|
//! | `VS_MAP` | [`crate::VsKey`] -> [`crate::VsInfo`] | daemon | XDP |
//! | `VS_RINGS` | two ring slots -> their real ids ([`crate::RingPair`]) | daemon | XDP |
//! | `REALS` | real id -> [`crate::RealInfo`] | daemon | XDP |
//! | `FLOWS` | [`crate::FlowKey`] -> [`crate::FlowState`] (LRU) | XDP | XDP, daemon |
//! | `PERSIST` | [`crate::PersistKey`] -> [`crate::PersistState`] (LRU) | XDP | XDP |
//! | `IFACES` | ifindex -> [`crate::IfaceInfo`] | daemon | XDP |
//! | `IFACE_INDEX` | ifindex below [`IFACE_INDEX_SLOTS`] -> the same [`crate::IfaceInfo`] (array; zero MAC: none) | daemon | XDP |
//! | `VLAN_IN` | [`crate::VlanKey`] -> ifindex of the VLAN device (`u32`) | daemon | XDP |
//! | `VLAN_OUT` | ifindex of a VLAN device -> [`crate::VlanOut`] | daemon | XDP |
//! | `RX_TAGS` | 0 -> the VLAN tags of the frame being processed (`[u16; 6]`) per CPU | XDP | XDP |
//! | `OWN_MACS` | MAC (`[u8; 8]`, zero-padded) -> ifindex (`u32`) | daemon | XDP |
//! | `FRAG_VS` | [`crate::VsKey`] with port 0 -> the virtual server's port (`u32`, network order in the low half) | daemon | XDP |
//! | `STATS_VS` | vs index -> [`crate::Counters`] per CPU | XDP | daemon |
//! | `STATS_REAL` | real id -> [`crate::Counters`] per CPU | XDP | daemon |
//! | `VERDICTS` | [`crate::reason`] -> packets per CPU (`u64`) | XDP | daemon |
//! | `SETTINGS` | 0 -> `SETTING_*` bits (`u32`) | daemon | XDP |
//! | `NAT_STATE` | reply [`crate::FlowKey`] -> [`crate::NatState`] (LRU): TCP SYNs, reals not in `NAT_REALS`, fragmented requests | XDP | XDP |
//! | `NAT_REALS` | a NAT real's [`crate::VsKey`] -> [`crate::NatState`] of its only virtual server | daemon | XDP |
//! | `NAT_FRAGS` | [`crate::FragKey`] of a reply's datagram -> [`crate::NatState`] (LRU) | XDP | XDP |
//! | `TAILS` | [`TAIL_FRAGMENT`], [`TAIL_ICMP`] -> the program `xdpvs_lb` hands such packets to | daemon | XDP |
//! | `UDP_SEEN` | flow hash's low bits (halved) -> `[u32; 2]`: the hashes of the last flows seen there unrecorded (UDP; NAT SYNs, decision 0021) | XDP | XDP |
//! | `NEIGH_MISS` | ring buffer of [`crate::NeighMiss`]: next hops the FIB had no neighbour entry for | XDP | daemon |
//! | `NEIGH_ASKED` | next hop's hash (low bits) -> `bpf_ktime_get_ns` of its last report (`u64`) | XDP | XDP |
//! | `REAL_HOPS` | real id's low bits -> the next hop the FIB last gave this CPU toward that real (tunnels; NAT reals routed by their address alone), per CPU | XDP | XDP |
//! | `CLIENT_HOPS` | [`client_hop_slot`] of a client's address -> the next hop the FIB last gave this CPU toward it (NAT replies, while routes depend on the destination alone), per CPU | XDP | XDP |
//! | `FLOW_FILTER` | 0 -> the half read, whether complete, slots per half (`u64`); 1.. -> one bit per slot of [`crate::flow_filter_slot`], two halves: set where `FLOWS` may hold a flow | XDP (inserts), daemon (rebuilds) | XDP |
//! | `SYN_GUARD` | 0 -> opening SYNs one CPU may count in a window before SYNs skip `FLOWS` (`u32`; 0: never) | daemon | XDP |
//! | `SYN_RATE` | 0 -> [`crate::SynRate`] per CPU | XDP | daemon |
//! | `TUNNEL_SRCS` | vs index -> [`crate::TunnelSource`] of a tunnelling virtual server (array; a copy of its `VS_MAP` value's `tunnel_src`) | daemon | XDP |
//! | `ADDR_FILTER` | 0 -> [`ADDR_FILTER_VERSION`] once the daemon wrote the bits (`u64`); 1.. -> 64 bits each of [`crate::addr_filter_place`] | daemon | XDP |

/// Virtual servers by VIP/port/protocol. Hash map without preallocation, so a replaced
/// value is freed only after readers are done (RCU): lookups never see a torn value.
pub const VS_MAP: &str = "VS_MAP";
/// Maglev rings, `RING_STRIDE` slots each: one live per virtual server, and spares a
/// new table is written into before it goes live (decision 0013). Array of real ids,
/// two to an element ([`crate::RING_ELEMS`], decision 0030), mappable
/// ([`VS_RINGS_FLAGS`]).
pub const VS_RINGS: &str = "VS_RINGS";
/// Real servers by id. Array.
pub const REALS: &str = "REALS";
/// Connection table: 5-tuple -> pinned real. LRU hash, shared by all CPUs.
pub const FLOWS: &str = "FLOWS";
/// Source-IP persistence: (virtual server, masked client address) -> real. LRU hash of
/// the default connection table's size (it holds client networks, not connections).
pub const PERSIST: &str = "PERSIST";
/// Transmitting interfaces by ifindex. Hash map.
pub const IFACES: &str = "IFACES";
/// The entries of [`IFACES`] whose ifindex is below [`IFACE_INDEX_SLOTS`], by ifindex:
/// an array, so that the interface a frame came in by or leaves by is read without a
/// hash lookup (a zero MAC: none here, look in [`IFACES`]). Written after the
/// `IFACES` entry, cleared before it goes.
pub const IFACE_INDEX: &str = "IFACE_INDEX";
/// Slots of [`IFACE_INDEX`]: ifindex 0 to 4,095 (8 bytes each, 32 KiB).
pub const IFACE_INDEX_SLOTS: u32 = 4096;
/// The outer source of every tunnelling virtual server, by its index ([`MAX_VS`]
/// slots of [`crate::TunnelSource`]): what an established flow of one without
/// persistence needs of it, read without looking it up (decision 0028). Written with
/// the virtual server's `VS_MAP` value, before it, and at every load for every
/// tunnelling virtual server `VS_MAP` holds (other slots are read by no flagged real).
pub const TUNNEL_SRCS: &str = "TUNNEL_SRCS";
/// The VLAN devices of the attached interfaces, by what tagged frames on them carry:
/// (receiving ifindex, VLAN ids) -> the VLAN device's ifindex, which the FIB lookups of
/// NAT and tunnel take as the frame's input interface. Hash map.
pub const VLAN_IN: &str = "VLAN_IN";
/// The same VLAN devices by ifindex: the tags frames routed out of them get, and the
/// device they are sent on. Hash map.
pub const VLAN_OUT: &str = "VLAN_OUT";
/// Scratch of the XDP program: the VLAN tags it took off the frame it is processing.
/// Per-CPU array of one.
pub const RX_TAGS: &str = "RX_TAGS";
/// The other MACs this host answers for on the attached interfaces (a macvlan on
/// them, keepalived's `use_vmac`): frames to them are the host's own, not flooded
/// frames for another host. Hash map of MAC (bytes 0..6, two zero bytes) -> the
/// ifindex of the device that has it.
pub const OWN_MACS: &str = "OWN_MACS";
/// Fragmented datagrams: (VIP, protocol, family), port 0 -> the port of the one
/// virtual server at that address that takes fragments (`fragments: true`). Fragments
/// after the first carry no ports; every fragment of such a virtual server is
/// balanced by addresses only, so all reach the same real. Hash map.
pub const FRAG_VS: &str = "FRAG_VS";
/// Per-virtual-server counters. Per-CPU array.
pub const STATS_VS: &str = "STATS_VS";
/// Per-real counters. Per-CPU array.
pub const STATS_REAL: &str = "STATS_REAL";
/// Packets per verdict reason. Per-CPU array.
pub const VERDICTS: &str = "VERDICTS";

/// Data path switches: one `u32` of `SETTING_*` bits. Array of one.
pub const SETTINGS: &str = "SETTINGS";
/// NAT replies: the reply 5-tuple of a NAT flow that `FLOWS` cannot answer for (a TCP
/// SYN, a real in no `NAT_REALS` entry, a fragmented request) -> the VIP:port to
/// restore. LRU hash, as large as `FLOWS`.
pub const NAT_STATE: &str = "NAT_STATE";
/// NAT replies in fragments (decision 0016): (real, client, protocol, identification)
/// of a fragmented reply -> the VIP:port its first fragment found (through `FLOWS` or
/// in `NAT_STATE`), for the fragments after it, which carry no ports. LRU hash of
/// [`NAT_FRAG_ENTRIES`].
pub const NAT_FRAGS: &str = "NAT_FRAGS";

/// NAT reals: a real's address, port, protocol and family (as a `VsKey`) -> the VIP:port
/// it serves (`NatState`), for each real whose address and port belong to one NAT
/// virtual server only. Its replies are restored through the flow's `FLOWS` entry, so
/// a NAT flow writes one table (decision 0015). Written by the daemon.
pub const NAT_REALS: &str = "NAT_REALS";

/// Flows seen unrecorded: a UDP flow of a virtual server without persistence enters
/// `FLOWS` with its second packet (decision 0017); its first leaves the flow's hash
/// (`lb_common::flow_hash`, a host-order `u32`) here, in the slot its low bits pick,
/// for the second to find. A NAT SYN leaves its mark here too, and a NAT real's reply
/// to an unrecorded flow is restored when it finds it (decision 0021). Array of [`UDP_SEEN_SLOTS`] / 2
/// elements of two `u32` slots each (array elements are 8-byte aligned), shared by all
/// CPUs; a slot keeps the last flow that used it.
pub const UDP_SEEN: &str = "UDP_SEEN";

/// The connection table's filter (decision 0026): one bit per slot of
/// [`crate::flow_filter_slot`], set where `FLOWS` may hold a flow, so that a packet
/// whose bit is clear skips the `FLOWS` lookup (a miss costs a new flow most of its
/// time). Element 0 is the control word ([`FLOW_FILTER_HALF`],
/// [`FLOW_FILTER_COMPLETE`], [`FLOW_FILTER_LOG2_SHIFT`]); then two halves of
/// `1 << log2` bits, 64 per element, set with atomic ORs. The data path sets a flow's
/// bit in both halves around each insert and reads the half the control word names;
/// the daemon rebuilds the other from a walk of `FLOWS` and then names it, so that
/// evicted flows' bits do not pile up. Until the daemon has rebuilt it once the data path
/// does not trust it (a table adopted from a release without it holds flows it never
/// saw). Array, mappable ([`FLOW_FILTER_FLAGS`]); sized at load from the connection
/// table ([`flow_filter_log2`]).
pub const FLOW_FILTER: &str = "FLOW_FILTER";
/// [`FLOW_FILTER`] control bit: the half the data path reads (0 or 1).
pub const FLOW_FILTER_HALF: u64 = 1;
/// [`FLOW_FILTER`] control bit: the half named was rebuilt from a walk of `FLOWS`
/// (with every insert since), so a clear bit there means no entry.
pub const FLOW_FILTER_COMPLETE: u64 = 1 << 8;
/// [`FLOW_FILTER`] control: log2 of the slots per half, in bits 16 to 23.
pub const FLOW_FILTER_LOG2_SHIFT: u32 = 16;
/// [`FLOW_FILTER`]'s flags: `BPF_F_MMAPABLE`, so that the daemon rebuilds a half with
/// plain stores.
pub const FLOW_FILTER_FLAGS: u32 = 1 << 10;
/// log2 of [`FLOW_FILTER`]'s slots (bits) per half at the least and the most: 8 KiB
/// and 4 MiB a half.
pub const FLOW_FILTER_LOG2_MIN: u32 = 16;
pub const FLOW_FILTER_LOG2_MAX: u32 = 25;

/// Returns: log2 of [`FLOW_FILTER`]'s slots per half for a connection table of
/// `flow_entries`: eight slots per entry, so that a full table sets at most an eighth
/// of them, within [`FLOW_FILTER_LOG2_MIN`] and [`FLOW_FILTER_LOG2_MAX`].
pub const fn flow_filter_log2(flow_entries: u32) -> u32 {
    let slots = (flow_entries as u64) * 8;
    let log2 = 64 - (slots.saturating_sub(1)).leading_zeros();
    if log2 < FLOW_FILTER_LOG2_MIN {
        FLOW_FILTER_LOG2_MIN
    } else if log2 > FLOW_FILTER_LOG2_MAX {
        FLOW_FILTER_LOG2_MAX
    } else {
        log2
    }
}

/// Returns: [`FLOW_FILTER`]'s elements for `log2` slots per half: the control word and
/// two halves of 64 slots (bits) per element.
pub const fn flow_filter_entries(log2: u32) -> u32 {
    1 + 2 * ((1 << log2) / 64)
}

/// The SYN-flood switch (decision 0025): how many opening SYNs to virtual servers one
/// CPU may count in a window of [`crate::SYN_WINDOW_JIFFIES`] (this window or the last)
/// before the next skip the connection table and go by Maglev (or persistence) alone;
/// 0: never. Written by the daemon from `syn_flood_rate`
/// ([`crate::syn_guard_per_window`]). Array of one `u32`.
pub const SYN_GUARD: &str = "SYN_GUARD";
/// Opening SYNs counted per CPU ([`crate::SynRate`]), against [`SYN_GUARD`]. Per-CPU
/// array of one; the daemon reads the SYNs that skipped the connection table.
pub const SYN_RATE: &str = "SYN_RATE";

/// The programs `xdpvs_lb` tail-calls (decision 0018): fragments and ICMP errors are
/// handled by programs of their own, each verified apart, so that the balancer stays
/// well within the verifier's million-instruction budget. Program array, indexed by
/// [`TAIL_FRAGMENT`] and [`TAIL_ICMP`]; filled by the daemon with this object's
/// programs ([`TAIL_PROGRAMS`]) as they go on the interfaces.
pub const TAILS: &str = "TAILS";

/// Next hops without a neighbour entry (decision 0019): when the FIB lookup of a NAT
/// reply or a routed request finds the route but no resolved link-layer address, the
/// packet is dropped (`drop_no_neigh`) and the next hop ([`crate::NeighMiss`]) is
/// written here for the daemon, which has the kernel resolve it. Ring buffer of
/// [`NEIGH_MISS_BYTES`].
pub const NEIGH_MISS: &str = "NEIGH_MISS";
/// When each next hop was last written to [`NEIGH_MISS`]: slot (the next hop's hash's
/// low bits) -> `bpf_ktime_get_ns`. A slot reports at most once every
/// [`NEIGH_MISS_EVERY_NS`], so a flood toward unresolved next hops costs the ring at
/// most [`NEIGH_ASKED_SLOTS`] reports per interval. Array, shared by all CPUs.
pub const NEIGH_ASKED: &str = "NEIGH_ASKED";

/// Next hops toward reals (decisions 0023, 0024): the FIB's answer for a packet toward
/// a real whose route is the same for every flow to it (a tunnel's outer packet; a NAT
/// request when the daemon found that the real's route depends on its address alone),
/// kept per CPU for [`HOP_TTL_JIFFIES`] and used again for packets no longer than one
/// it accepted. Per-CPU array of [`REAL_HOP_SLOTS`], indexed by the real id's low bits
/// and tagged with the id and its generation.
pub const REAL_HOPS: &str = "REAL_HOPS";
/// Slots of [`REAL_HOPS`] per CPU (a power of two).
pub const REAL_HOP_SLOTS: u32 = 4096;
const _: () = assert!(REAL_HOP_SLOTS.is_power_of_two());
/// How long a CPU uses a next hop it kept ([`REAL_HOPS`], [`CLIENT_HOPS`]) before
/// asking the FIB again, in the kernel's ticks (`jiffies`): 5, so 20 ms at the usual
/// `CONFIG_HZ` of 250 and at most 50 ms at any an x86 kernel is built with (100 to
/// 1,000). A route or neighbour change reaches those packets within that. Ticks, not
/// nanoseconds: the verifier turns a read of `jiffies` into one load, where even the
/// coarse clock is a helper call, which cost a kept hop's packet about 30 ns
/// (docs/testing.md).
pub const HOP_TTL_JIFFIES: u64 = 5;

/// Next hops toward clients (decision 0024): the FIB's answer for a NAT reply toward a
/// client address, kept per CPU for [`HOP_TTL_JIFFIES`] while
/// [`crate::SETTING_CLIENTS_BY_DEST`] says routes depend on the destination alone.
/// Per-CPU array of [`CLIENT_HOP_SLOTS`], indexed by a hash of the client's address
/// ([`client_hop_slot`]) and tagged with the address.
pub const CLIENT_HOPS: &str = "CLIENT_HOPS";
/// Slots of [`CLIENT_HOPS`] per CPU (a power of two).
pub const CLIENT_HOP_SLOTS: u32 = 4096;
const _: () = assert!(CLIENT_HOP_SLOTS.is_power_of_two());

/// Returns: the [`CLIENT_HOPS`] slot of address `addr` (network order words; an IPv4
/// address in the first): a multiplicative hash of the words' sum, top bits.
#[inline(always)]
pub fn client_hop_slot(addr: &[u32; 4]) -> u32 {
    let sum = addr[0]
        .wrapping_add(addr[1])
        .wrapping_add(addr[2])
        .wrapping_add(addr[3]);
    sum.wrapping_mul(0x9e37_79b1) >> (32 - CLIENT_HOP_SLOTS.trailing_zeros())
}

/// Addresses the balancer may have work for (decision 0022): a bitmap of
/// [`ADDR_FILTER_BITS`] bits over [`crate::addr_filter_place`], set for every VIP (as a
/// destination) and every NAT real (as a source). A packet whose destination and
/// source both find their bit clear is no virtual server's and no NAT reply: passed at
/// once, without the hash lookups. Array of `u64`: element 0 is
/// [`ADDR_FILTER_VERSION`] once the daemon has written the bits (a map made anew, or
/// written by a release whose `addr_filter_place` differs, filters nothing), elements 1
/// to [`ADDR_FILTER_WORDS`] hold the bits, 64 each.
pub const ADDR_FILTER: &str = "ADDR_FILTER";
/// [`ADDR_FILTER`]'s element 0 once its bits are written: the version of
/// [`crate::addr_filter_place`] they were set with. A release that changes the function
/// changes this number.
pub const ADDR_FILTER_VERSION: u64 = 1;
/// Words of [`ADDR_FILTER`]'s bitmap (8 KiB).
pub const ADDR_FILTER_WORDS: u32 = 1024;
/// Bits of [`ADDR_FILTER`]'s bitmap: half for VIPs, half for NAT reals.
pub const ADDR_FILTER_BITS: u32 = ADDR_FILTER_WORDS * 64;

/// Every map of the balancer object.
pub const ALL: &[&str] = &[
    VS_MAP,
    VS_RINGS,
    REALS,
    FLOWS,
    PERSIST,
    IFACES,
    VLAN_IN,
    VLAN_OUT,
    RX_TAGS,
    OWN_MACS,
    FRAG_VS,
    STATS_VS,
    STATS_REAL,
    VERDICTS,
    SETTINGS,
    NAT_STATE,
    NAT_REALS,
    NAT_FRAGS,
    UDP_SEEN,
    TAILS,
    NEIGH_MISS,
    NEIGH_ASKED,
    ADDR_FILTER,
    REAL_HOPS,
    CLIENT_HOPS,
    IFACE_INDEX,
    TUNNEL_SRCS,
    SYN_GUARD,
    SYN_RATE,
    FLOW_FILTER,
];

/// The load balancer, attached to every interface of the configuration.
pub const PROG_LB: &str = "xdpvs_lb";
/// A do-nothing XDP program (XDP_PASS). veth delivers XDP_TX/redirected frames only to
/// a peer that has an XDP program attached; tests and the demo attach this one there.
pub const PROG_PASS: &str = "xdpvs_pass";

/// TCP and UDP fragments (not ICMP errors quoting one), tail-called by `xdpvs_lb`.
pub const PROG_FRAGMENT: &str = "xdpvs_fragment";
/// ICMP errors about flows, tail-called by `xdpvs_lb`.
pub const PROG_ICMP: &str = "xdpvs_icmp_error";

/// [`TAILS`] index of [`PROG_FRAGMENT`].
pub const TAIL_FRAGMENT: u32 = 0;
/// [`TAILS`] index of [`PROG_ICMP`].
pub const TAIL_ICMP: u32 = 1;
/// Entries of [`TAILS`].
pub const TAIL_COUNT: u32 = 2;
/// What [`TAILS`] holds: index -> program.
pub const TAIL_PROGRAMS: &[(u32, &str)] = &[(TAIL_FRAGMENT, PROG_FRAGMENT), (TAIL_ICMP, PROG_ICMP)];

/// Every program of the balancer object.
pub const PROGRAMS: &[&str] = &[PROG_LB, PROG_PASS, PROG_FRAGMENT, PROG_ICMP];

/// Most virtual servers the data path holds (VS_MAP entries, STATS_VS slots).
pub const MAX_VS: u32 = 1024;
/// Most real servers, over all virtual servers (REALS entries, STATS_REAL slots): 100
/// for each of 1,000 virtual servers, with room for their sorry servers.
pub const MAX_REALS: u32 = 131_072;
/// Default number of Maglev rings (one per virtual server, plus spares to write new
/// tables into: decision 0013). `VS_RINGS` holds `ring_count * RING_ELEMS` entries;
/// the daemon sets it at load time.
pub const DEFAULT_RING_COUNT: u32 = 64;
/// `VS_RINGS` map flags: `BPF_F_MMAPABLE`, so that the daemon writes a table into a
/// ring as memory (65,537 slots, 4 bytes apart) rather than one syscall per slot
/// (decision 0013).
pub const VS_RINGS_FLAGS: u32 = 1 << 10;
/// Default connection table size (entries); the daemon may set another at load time.
pub const DEFAULT_FLOW_ENTRIES: u32 = 262_144;
/// Size of `NAT_FRAGS`: fragmented NAT replies whose later fragments are still on
/// their way. An entry is needed only between a datagram's first fragment and its
/// last (microseconds); the LRU forgets the oldest.
pub const NAT_FRAG_ENTRIES: u32 = 16_384;
/// Size of `UDP_SEEN` (a power of two): 1 MiB. Under a flood of new flows a slot is
/// overwritten every `UDP_SEEN_SLOTS` / (new flows per second) seconds on average; a
/// legitimate flow whose second packet comes later than that is not recorded until
/// two of its packets come closer together (it is still balanced, by Maglev), and a
/// NAT real's answer to an unrecorded flow that comes later is lost (decision 0021).
pub const UDP_SEEN_SLOTS: u32 = 1 << 18;
// The data path picks a slot by the hash's low bits.
const _: () = assert!(UDP_SEEN_SLOTS.is_power_of_two());
/// Size of [`NEIGH_MISS`] in bytes (a power of two, a multiple of the page size):
/// 2,048 reports of 24 bytes and their 8-byte headers.
pub const NEIGH_MISS_BYTES: u32 = 64 * 1024;
/// Slots of [`NEIGH_ASKED`] (a power of two).
pub const NEIGH_ASKED_SLOTS: u32 = 1024;
const _: () = assert!(NEIGH_ASKED_SLOTS.is_power_of_two());
/// Least time between two reports from one [`NEIGH_ASKED`] slot: 100 ms.
pub const NEIGH_MISS_EVERY_NS: u64 = 100_000_000;
/// Most transmitting interfaces.
pub const MAX_IFACES: u32 = 64;
/// Most VLAN devices on the attached interfaces (`VLAN_IN`, `VLAN_OUT`).
pub const MAX_VLANS: u32 = 256;
/// Most extra MACs of this host (`OWN_MACS`).
pub const MAX_OWN_MACS: u32 = 64;

/// Returns: `mac` as an `OWN_MACS` key.
pub const fn own_mac_key(mac: [u8; 6]) -> [u8; 8] {
    [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]
}
