//! The real data path: the embedded BPF object loaded with aya, and its maps.

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use lb_common::{
    maps::{
        FLOWS, IFACES, NAT_STATE, PROGRAMS, REALS, SETTINGS, STATS_REAL, STATS_VS, VS_MAP, VS_RINGS,
    },
    Counters, IfaceInfo, RealInfo, VsInfo, VsKey, RING_STRIDE,
};

use super::{Dataplane, DataplaneError};

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Connection table entries.
    pub flow_entries: u32,
    /// Maglev rings (two per virtual server).
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

/// Loads the BPF object with the given sizes; every XDP program is loaded (verified)
/// but attached nowhere.
pub fn load(opts: LoadOptions) -> Result<Ebpf, anyhow::Error> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(VS_RINGS, opts.ring_count * RING_STRIDE)
        .map_max_entries(FLOWS, opts.flow_entries)
        .map_max_entries(NAT_STATE, opts.flow_entries)
        .load(crate::BPF_OBJECT)?;
    for &name in PROGRAMS {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("program {name} missing from the BPF object"))?
            .try_into()?;
        prog.load()
            .map_err(|e| anyhow::anyhow!("the kernel rejected XDP program {name}: {e}"))?;
    }
    Ok(ebpf)
}

impl From<crate::config::XdpMode> for XdpMode {
    fn from(m: crate::config::XdpMode) -> Self {
        match m {
            crate::config::XdpMode::Auto => XdpMode::Default,
            crate::config::XdpMode::Native => XdpMode::Driver,
            crate::config::XdpMode::Generic => XdpMode::Skb,
        }
    }
}

/// Attaches program `name` to `ifindex`. `XdpMode::Default` lets the kernel pick native
/// mode where the driver has it and generic mode elsewhere.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<(), anyhow::Error> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} missing"))?
        .try_into()?;
    prog.attach_to_if_index(ifindex, mode).map_err(|e| {
        anyhow::anyhow!("attaching XDP to ifindex {ifindex} in {mode:?} mode failed: {e}; try xdp_mode: generic")
    })?;
    Ok(())
}

/// The loaded object's maps, written through [`Dataplane`].
pub struct BpfDataplane {
    pub ebpf: Ebpf,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl BpfDataplane {
    pub fn new(ebpf: Ebpf) -> Self {
        Self { ebpf }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        HashMap::try_from(m).map_err(map_err(name))
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        Array::try_from(m).map_err(map_err(name))
    }

    /// Returns: map `name`, for reading.
    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    /// Returns: the counters at `index` of a per-CPU counter map, summed over CPUs.
    pub fn counters(&self, name: &'static str, index: u32) -> Result<Counters, DataplaneError> {
        let m = self.map(name)?;
        let a: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(m).map_err(map_err(name))?;
        let v = a.get(&index, 0).map_err(map_err(name))?;
        Ok(v.iter().fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
            new_flows: acc.new_flows + c.new_flows,
            reply_packets: acc.reply_packets + c.reply_packets,
            reply_bytes: acc.reply_bytes + c.reply_bytes,
        }))
    }

    /// Returns: packets counted under each verdict reason, summed over CPUs.
    pub fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        let name = lb_common::maps::VERDICTS;
        let m = self.map(name)?;
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(m).map_err(map_err(name))?;
        (0..lb_common::reason::COUNT)
            .map(|i| a.get(&i, 0).map(|v| v.iter().sum()).map_err(map_err(name)))
            .collect()
    }

    /// Returns: connection table entries per (real id, generation): a full walk, for
    /// status and metrics (about 1.7 µs per entry, `cargo xtask bench`).
    pub fn flows_by_real(
        &self,
    ) -> Result<std::collections::HashMap<(u32, u32), u64>, DataplaneError> {
        self.flows_reader()?.count()
    }

    /// Returns: a handle of its own on the connection table, so that it can be walked on
    /// another thread while the daemon's task goes on.
    pub fn flows_reader(&self) -> Result<FlowsReader, DataplaneError> {
        use std::os::fd::AsFd as _;
        let aya::maps::Map::LruHashMap(m) = self.map(FLOWS)? else {
            return Err(DataplaneError::MissingMap(FLOWS));
        };
        let fd = m
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Dup { map: FLOWS, source })?;
        let data = MapData::from_fd(fd).map_err(map_err(FLOWS))?;
        Ok(FlowsReader(data))
    }

    fn zero_counters(&mut self, name: &'static str, index: u32) -> Result<(), DataplaneError> {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let mut a: PerCpuArray<&mut MapData, Counters> =
            PerCpuArray::try_from(m).map_err(map_err(name))?;
        let cpus = nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(DataplaneError::Cpus)?;
        a.set(index, zeros, 0).map_err(map_err(name))
    }
}

impl Dataplane for BpfDataplane {
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.hash::<u32, IfaceInfo>(IFACES)?
            .insert(ifindex, *info, 0)
            .map_err(map_err(IFACES))
    }
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError> {
        self.array::<RealInfo>(REALS)?
            .set(id, *info, 0)
            .map_err(map_err(REALS))
    }
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let mut a = self.array::<u32>(VS_RINGS)?;
        for &(slot, real) in slots {
            a.set(ring_id * RING_STRIDE + slot, real, 0)
                .map_err(map_err(VS_RINGS))?;
        }
        Ok(())
    }
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError> {
        self.hash::<VsKey, VsInfo>(VS_MAP)?
            .insert(*key, *info, 0)
            .map_err(map_err(VS_MAP))
    }
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError> {
        self.array::<u32>(SETTINGS)?
            .set(0, bits, 0)
            .map_err(map_err(SETTINGS))
    }
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError> {
        self.hash::<VsKey, VsInfo>(VS_MAP)?
            .remove(key)
            .map_err(map_err(VS_MAP))
    }
    fn reset_counters(
        &mut self,
        vs_index: Option<u32>,
        real_id: Option<u32>,
    ) -> Result<(), DataplaneError> {
        if let Some(i) = vs_index {
            self.zero_counters(STATS_VS, i)?;
        }
        if let Some(i) = real_id {
            self.zero_counters(STATS_REAL, i)?;
        }
        Ok(())
    }
}

/// An owned handle on the connection table (see [`BpfDataplane::flows_reader`]).
pub struct FlowsReader(MapData);

impl FlowsReader {
    /// Returns: entries per (real id, generation), from a full walk.
    pub fn count(self) -> Result<std::collections::HashMap<(u32, u32), u64>, DataplaneError> {
        let h: HashMap<MapData, lb_common::FlowKey, lb_common::FlowState> =
            HashMap::try_from(aya::maps::Map::LruHashMap(self.0)).map_err(map_err(FLOWS))?;
        let mut out = std::collections::HashMap::new();
        for (_, v) in h.iter().filter_map(Result::ok) {
            *out.entry((v.real_id, v.real_generation)).or_default() += 1;
        }
        Ok(out)
    }
}
