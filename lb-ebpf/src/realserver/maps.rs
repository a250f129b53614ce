//! The real server's maps, declared under the names `lb_common::realserver::maps`
//! exports.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use lb_common::realserver::{maps::MAX_DECAP_ADDRS, AddrKey, DECAP_COUNT};

/// VIPs to unwrap packets for. Written by `xdpvs realserver decap`.
#[map]
pub static DECAP_VIPS: HashMap<AddrKey, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// This host's addresses (accepted outer destinations). Written by `xdpvs realserver
/// decap`.
#[map]
pub static DECAP_LOCAL: HashMap<AddrKey, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Decapsulator counters, per CPU. Read by `xdpvs realserver decap`.
#[map]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_COUNT, 0);
