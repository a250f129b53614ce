//! The data path as the daemon sees it: a few writes ([`Dataplane`]) and a few reads
//! ([`DataplaneRead`]), behind traits so that the reconciler's logic and the status and
//! metrics views are tested without a kernel ([`memory::MemoryDataplane`]).

pub mod bpf;
pub mod flow_filter;
pub mod memory;
pub mod mmap;
pub mod neigh_misses;
pub mod pins;
pub mod ticks;

use std::collections::{BTreeMap, HashMap};

pub use lb_common::Counters;
use lb_common::{IfaceInfo, NatState, RealInfo, VlanKey, VlanOut, VsInfo, VsKey};

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Connection table entries.
    pub flow_entries: u32,
    /// Maglev rings (one per virtual server and spares, decision 0013).
    pub ring_count: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_entries: lb_common::maps::DEFAULT_FLOW_ENTRIES,
            ring_count: lb_common::maps::DEFAULT_RING_COUNT,
        }
    }
}

/// A failed write to the data path.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("counting possible CPUs for per-CPU values: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("BPF map {map}: mapping it into memory: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("BPF map {map}: waiting on it from the runtime: {source}")]
    Poll {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Maglev ring {ring} slot {slot} is beyond VS_RINGS")]
    Ring { ring: u32, slot: u32 },
    #[error("BPF map {map}: duplicating its descriptor: {source}")]
    Dup {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("BPF map {map}: walking it: {source}")]
    Walk {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the daemon makes. Each call is one or a few map updates; the reconciler
/// orders them so that the data path never sees a reference to something unwritten.
pub trait Dataplane {
    /// Registers an interface frames may leave by.
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError>;
    /// Makes `VLAN_IN` hold exactly `ins` and `VLAN_OUT` exactly `outs` (VLAN device
    /// ifindex -> its `IFACES` and `VLAN_OUT` values), writes the devices' `IFACES`
    /// entries and removes those of VLAN devices no longer listed.
    fn set_vlans(
        &mut self,
        ins: &BTreeMap<VlanKey, u32>,
        outs: &BTreeMap<u32, (IfaceInfo, VlanOut)>,
    ) -> Result<(), DataplaneError>;
    /// Forgets interface `ifindex` (its device is gone); nothing if it is not there.
    fn remove_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError>;
    /// Makes `OWN_MACS` hold exactly `macs` (MAC -> ifindex of the device that has it).
    fn set_own_macs(&mut self, macs: &BTreeMap<[u8; 6], u32>) -> Result<(), DataplaneError>;
    /// Makes `FRAG_VS` hold exactly `takers`: (VIP, protocol, family) with port 0 ->
    /// the port of the virtual server there that takes fragments (network order).
    fn set_fragment_takers(&mut self, takers: &[(VsKey, u16)]) -> Result<(), DataplaneError>;
    /// Makes `NAT_REALS` hold exactly `reals`: a NAT real's address, port, protocol and
    /// family -> the VIP:port of the one NAT virtual server it serves.
    fn set_nat_reals(&mut self, reals: &[(VsKey, NatState)]) -> Result<(), DataplaneError>;
    /// Writes real `id`.
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError>;
    /// Writes `(slot, real_id)` pairs into ring `ring_id`.
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError>;
    /// Inserts or replaces a virtual server (one atomic map update). A tunnelling
    /// virtual server's outer source is written to its `TUNNEL_SRCS` slot first, so
    /// that no flow the new value lets the data path record finds the slot of an
    /// earlier holder of the index (decision 0028).
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError>;
    /// Removes a virtual server; its traffic is passed to the kernel from then on.
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError>;
    /// Sets the data path's `SETTING_*` bits.
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError>;
    /// Sets `SYN_GUARD`: the opening SYNs one CPU may count in a window before SYNs
    /// skip the connection table (0: never; decision 0025).
    fn set_syn_guard(&mut self, per_window: u32) -> Result<(), DataplaneError>;
    /// Writes `(word, bits)` pairs of `ADDR_FILTER`'s bitmap (word `i` is element
    /// `1 + i`), then, with `written`, marks the filter written (element 0 becomes
    /// `ADDR_FILTER_VERSION`), from when the data path trusts it (decision 0022).
    fn set_addr_filter(
        &mut self,
        words: &[(u32, u64)],
        written: bool,
    ) -> Result<(), DataplaneError>;
    /// Zeroes the counters of a virtual server index and a real id about to be reused.
    fn reset_counters(
        &mut self,
        vs_index: Option<u32>,
        real_id: Option<u32>,
    ) -> Result<(), DataplaneError>;
}

/// Reads the daemon makes for status and metrics, all of them summed over CPUs.
pub trait DataplaneRead {
    /// A reader of the connection table that can walk it on another thread.
    type Flows: FlowReader + Send + 'static;
    /// Returns: the counters of virtual server index `vs_index`.
    fn vs_counters(&self, vs_index: u32) -> Result<Counters, DataplaneError>;
    /// Returns: the counters of real id `id`.
    fn real_counters(&self, id: u32) -> Result<Counters, DataplaneError>;
    /// Returns: packets counted under each verdict reason (`lb_common::reason`).
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError>;
    /// Returns: opening SYNs balanced without a connection-table lookup during SYN
    /// floods (decision 0025).
    fn syns_past_table(&self) -> Result<u64, DataplaneError>;
    /// Returns: a reader of the connection table of its own.
    fn flow_reader(&self) -> Result<Self::Flows, DataplaneError>;
}

/// A handle on the connection table.
pub trait FlowReader {
    /// Returns: entries per (real id, generation), from a full walk.
    fn count(self) -> Result<HashMap<(u32, u32), u64>, DataplaneError>;
}

/// What the data path holds, read back, so that a daemon can take over maps an earlier
/// one wrote (a restart with the maps pinned) instead of rewriting them.
pub trait DataplaneContents {
    /// Returns: every virtual server in `VS_MAP`.
    fn virtual_servers(&self) -> Result<Vec<(VsKey, VsInfo)>, DataplaneError>;
    /// Returns: every `REALS` value, indexed by real id (free ids too: their generation
    /// is what the next holder's is counted from).
    fn reals(&self) -> Result<Vec<RealInfo>, DataplaneError>;
    /// Returns: the first `len` slots of Maglev ring `ring_id`.
    fn ring(&self, ring_id: u32, len: u32) -> Result<Vec<u32>, DataplaneError>;
    /// Returns: the `SETTING_*` bits.
    fn settings(&self) -> Result<u32, DataplaneError>;
}
