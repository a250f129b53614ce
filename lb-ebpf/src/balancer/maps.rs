//! The balancer's maps, declared under the names `lb_common::maps` exports. Sizes here are the
//! defaults; the daemon overrides `VS_RINGS` and `FLOWS` at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    maps::{
        flow_filter_entries, flow_filter_log2, DEFAULT_FLOW_ENTRIES, DEFAULT_RING_COUNT,
        FLOW_FILTER_FLAGS, MAX_IFACES, MAX_OWN_MACS, MAX_REALS, MAX_VLANS, MAX_VS,
        NEIGH_ASKED_SLOTS, NEIGH_MISS_BYTES, TAIL_COUNT, UDP_SEEN_SLOTS, VS_RINGS_FLAGS,
    },
    reason, Counters, FlowKey, FlowState, IfaceInfo, NatState, PersistKey, PersistState, RealInfo,
    RingPair, SynRate, TunnelSource, VlanKey, VlanOut, VsInfo, VsKey, RING_ELEMS,
};

/// VIP:port/proto -> virtual server. Written by the daemon (whole values, RCU-freed).
#[map]
pub static VS_MAP: HashMap<VsKey, VsInfo> = HashMap::with_max_entries(MAX_VS, BPF_F_NO_PREALLOC);

/// Maglev rings: two slots -> their real ids (`lb_common::RING_ELEMS`). Written by the
/// daemon into the ring not in use.
#[map]
pub static VS_RINGS: Array<RingPair> =
    Array::with_max_entries(DEFAULT_RING_COUNT * RING_ELEMS, VS_RINGS_FLAGS);

/// Real id -> real server. Written by the daemon.
#[map]
pub static REALS: Array<RealInfo> = Array::with_max_entries(MAX_REALS, 0);

/// Connection table. Written and read here; the daemon reads it for status.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Source-IP persistence: client network -> real. Written and read here; the default size.
#[map]
pub static PERSIST: LruHashMap<PersistKey, PersistState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// ifindex -> interface facts (its MAC). Written by the daemon.
#[map]
pub static IFACES: HashMap<u32, IfaceInfo> =
    HashMap::with_max_entries(MAX_IFACES, BPF_F_NO_PREALLOC);

/// ifindex below `IFACE_INDEX_SLOTS` -> the same as in `IFACES` (a zero MAC: none).
/// Written by the daemon.
#[map]
pub static IFACE_INDEX: Array<IfaceInfo> =
    Array::with_max_entries(lb_common::maps::IFACE_INDEX_SLOTS, 0);

/// vs index -> a tunnelling virtual server's outer source (decision 0028). Written by
/// the daemon, in place: read whole only when its check says so.
#[map]
pub static TUNNEL_SRCS: Array<TunnelSource> = Array::with_max_entries(MAX_VS, 0);

/// (receiving ifindex, VLAN ids) -> the VLAN device's ifindex. Written by the daemon.
#[map]
pub static VLAN_IN: HashMap<VlanKey, u32> = HashMap::with_max_entries(MAX_VLANS, 0);

/// VLAN device ifindex -> its tags and the device frames leave on. Written by the daemon.
#[map]
pub static VLAN_OUT: HashMap<u32, VlanOut> = HashMap::with_max_entries(MAX_VLANS, 0);

/// The VLAN tags of the frame being processed, taken off at the start: `[count, TPID,
/// TCI, TPID, TCI, 0]`, network order words but the count. Per CPU; written and read
/// here within one program run. A map and not a value carried in the parse, though
/// that would save a store per frame: a count the verifier can follow splits every
/// path after `untag` by the number of tags, and `xdpvs_lb` then took 90% of the
/// verifier's limit instead of 41% (measured, 2026-11).
#[map]
pub static RX_TAGS: PerCpuArray<[u16; 6]> = PerCpuArray::with_max_entries(1, 0);

/// Other MACs this host answers for (padded MAC -> ifindex). Written by the daemon.
#[map]
pub static OWN_MACS: HashMap<[u8; 8], u32> = HashMap::with_max_entries(MAX_OWN_MACS, 0);

/// (VIP, protocol, family) with port 0 -> the port of its virtual server that takes
/// fragments. Written by the daemon.
#[map]
pub static FRAG_VS: HashMap<VsKey, u32> = HashMap::with_max_entries(MAX_VS, 0);

/// A NAT real's fragmented reply: (real, client, protocol, identification) -> the
/// VIP:port its first fragment found in `NAT_STATE`, for the later fragments (decision
/// 0016). Written and read here; `NAT_FRAG_ENTRIES`.
#[map]
pub static NAT_FRAGS: LruHashMap<lb_common::FragKey, NatState> =
    LruHashMap::with_max_entries(lb_common::maps::NAT_FRAG_ENTRIES, 0);

/// Flow hash's low bits -> the hash of the last UDP flow whose first packet was
/// balanced there without being recorded (decision 0017), two slots per element
/// (slot `s` is half `s % 2` of element `s / 2`). Written and read here.
#[map]
pub static UDP_SEEN: Array<[u32; 2]> = Array::with_max_entries(UDP_SEEN_SLOTS / 2, 0);

/// Per-VS counters, per CPU.
#[map]
pub static STATS_VS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_VS, 0);

/// Per-real counters, per CPU.
#[map]
pub static STATS_REAL: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Packets per verdict reason, per CPU.
#[map]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

/// `SETTING_*` bits at index 0. Written by the daemon.
#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(1, 0);

/// NAT reply 5-tuple -> VIP:port to restore. Written and read here; sized like FLOWS.
#[map]
pub static NAT_STATE: LruHashMap<FlowKey, NatState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// A NAT real's address and port -> the VIP:port it alone serves. Written by the daemon.
#[map]
pub static NAT_REALS: HashMap<VsKey, NatState> =
    HashMap::with_max_entries(MAX_REALS, BPF_F_NO_PREALLOC);

/// `TAIL_FRAGMENT`, `TAIL_ICMP` -> the programs fragments and ICMP errors go on to
/// (decision 0018). Written by the daemon.
#[map]
pub static TAILS: ProgramArray = ProgramArray::with_max_entries(TAIL_COUNT, 0);

/// Next hops the FIB had no neighbour entry for (`lb_common::NeighMiss`), for the daemon
/// to have resolved (decision 0019). Written here, read by the daemon.
#[map]
pub static NEIGH_MISS: RingBuf = RingBuf::with_byte_size(NEIGH_MISS_BYTES, 0);

/// A next hop toward one real or one client, as the FIB last gave it to this CPU
/// (decisions 0023, 0024).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KeptHop {
    /// `jiffies` at the lookup (0: none yet; `jiffies` starts far above 0 on a 64-bit
    /// kernel). A slot a release that kept nanoseconds wrote reads as older than any
    /// time to live, so it is looked up again.
    pub at: u64,
    /// The real id and generation it was looked up for (for a client: its address
    /// family, and zero).
    pub id: u32,
    pub generation: u32,
    /// The interface the packet came in by, as the FIB was told.
    pub input: u32,
    /// The packet's length (IP) the FIB accepted on this hop.
    pub ok_len: u32,
    /// The address the route stands for besides the id: a tunnel's source, zero for a
    /// NAT real routed by its address alone, the client's address.
    pub tag: [u32; 4],
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<KeptHop>() == 56);

/// Real id's low bits -> the next hop toward that real (a tunnel's; a NAT real's routed
/// by its address alone), per CPU. Written and read here.
#[map]
pub static REAL_HOPS: PerCpuArray<KeptHop> =
    PerCpuArray::with_max_entries(lb_common::maps::REAL_HOP_SLOTS, 0);

/// `client_hop_slot` of a client's address -> the next hop toward that client (NAT
/// replies while routes depend on the destination alone), per CPU. Written and read
/// here.
#[map]
pub static CLIENT_HOPS: PerCpuArray<KeptHop> =
    PerCpuArray::with_max_entries(lb_common::maps::CLIENT_HOP_SLOTS, 0);

/// 0 -> written; 1.. -> the bits of the addresses the balancer may have work for
/// (`lb_common::maps::ADDR_FILTER`, decision 0022). Written by the daemon.
#[map]
pub static ADDR_FILTER: Array<u64> =
    Array::with_max_entries(lb_common::maps::ADDR_FILTER_WORDS + 1, 0);

/// Next hop's hash's low bits -> when that slot last wrote to `NEIGH_MISS`. Written and
/// read here.
#[map]
pub static NEIGH_ASKED: Array<u64> = Array::with_max_entries(NEIGH_ASKED_SLOTS, 0);

/// Opening SYNs one CPU may count in a window before SYNs skip `FLOWS` (0: never).
/// Written by the daemon (decision 0025).
#[map]
pub static SYN_GUARD: Array<u32> = Array::with_max_entries(1, 0);

/// This CPU's count of opening SYNs against `SYN_GUARD`. Written here; the daemon reads
/// the SYNs that skipped the table.
#[map]
pub static SYN_RATE: PerCpuArray<SynRate> = PerCpuArray::with_max_entries(1, 0);

/// The connection table's filter (decision 0026): a control word, then two halves of
/// one bit per slot, set where `FLOWS` may hold a flow. Set here around inserts,
/// rebuilt by the daemon; sized by the daemon at load.
#[map]
pub static FLOW_FILTER: Array<u64> = Array::with_max_entries(
    flow_filter_entries(flow_filter_log2(DEFAULT_FLOW_ENTRIES)),
    FLOW_FILTER_FLAGS,
);
