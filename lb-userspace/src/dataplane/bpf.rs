//! The real data path: the embedded BPF object loaded with aya, and its maps.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues, ProgramArray,
    },
    programs::{Xdp, XdpMode},
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use lb_common::{
    maps::{
        flow_filter_entries, flow_filter_log2, own_mac_key, ADDR_FILTER, ADDR_FILTER_VERSION, ALL,
        FLOWS, FLOW_FILTER, FRAG_VS, IFACES, IFACE_INDEX, IFACE_INDEX_SLOTS, MAX_REALS, NAT_REALS,
        NAT_STATE, NEIGH_MISS, OWN_MACS, PROGRAMS, REALS, SETTINGS, STATS_REAL, STATS_VS,
        SYN_GUARD, SYN_RATE, TAILS, TAIL_PROGRAMS, TUNNEL_SRCS, VERDICTS, VLAN_IN, VLAN_OUT,
        VS_MAP, VS_RINGS,
    },
    Counters, FlowKey, FlowState, IfaceInfo, NatState, RealInfo, RingPair, SynRate, TunnelSource,
    VlanKey, VlanOut, VsInfo, VsKey, IFACE_F_VLAN, METHOD_TUNNEL, RING_ELEMS, RING_STRIDE,
};

pub use super::LoadOptions;
use super::{
    mmap::Mapping, neigh_misses::NeighMisses, pins::Pins, Dataplane, DataplaneContents,
    DataplaneError, DataplaneRead, FlowReader,
};

/// Loads the BPF object with the given sizes; every XDP program is loaded (verified)
/// but attached nowhere, `TAILS` filled, and no map is pinned.
pub fn load(opts: LoadOptions) -> Result<Ebpf, anyhow::Error> {
    let mut ebpf = load_with(opts, None)?;
    fill_tails(&mut ebpf)?;
    Ok(ebpf)
}

/// As [`load`], every map pinned under `pins`: a map already pinned there is reused with
/// its contents ([`Pins::prepare`] first removes those that cannot be), the others are
/// created and pinned. `TAILS` is left as it was: an earlier run's program may still be
/// attached and tail-calling through it; [`Programs::attach_pinned`] and
/// [`Programs::replace_pinned`] fill it as this object's program goes live.
pub fn load_pinned(opts: LoadOptions, pins: &Pins) -> Result<Ebpf, anyhow::Error> {
    load_with(opts, Some(pins))
}

fn load_with(opts: LoadOptions, pins: Option<&Pins>) -> Result<Ebpf, anyhow::Error> {
    let paths: Vec<(&str, PathBuf)> = pins
        .map(|p| ALL.iter().map(|&n| (n, p.map(n))).collect())
        .unwrap_or_default();
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(VS_RINGS, opts.ring_count * RING_ELEMS)
        .map_max_entries(FLOWS, opts.flow_entries)
        .map_max_entries(NAT_STATE, opts.flow_entries)
        .map_max_entries(
            FLOW_FILTER,
            flow_filter_entries(flow_filter_log2(opts.flow_entries)),
        );
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(crate::BPF_OBJECT)?;
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

/// Writes this object's fragment and ICMP programs into `TAILS`, where its balancer
/// tail-calls them (decision 0018).
fn fill_tails(ebpf: &mut Ebpf) -> Result<(), anyhow::Error> {
    let mut fds = Vec::new();
    for &(index, name) in TAIL_PROGRAMS {
        let prog: &Xdp = ebpf
            .program(name)
            .ok_or_else(|| anyhow::anyhow!("program {name} missing from the BPF object"))?
            .try_into()?;
        fds.push((index, prog.fd()?.try_clone()?));
    }
    let map = ebpf
        .map_mut(TAILS)
        .ok_or_else(|| anyhow::anyhow!("map {TAILS} missing from the BPF object"))?;
    let mut tails = ProgramArray::try_from(map)?;
    for (index, fd) in &fds {
        tails.set(*index, fd, 0)?;
    }
    Ok(())
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

/// The balancer's maps, each typed once, written through [`Dataplane`] and read through
/// [`DataplaneRead`]. The programs stay in [`Programs`].
pub struct BpfDataplane {
    vs: HashMap<MapData, VsKey, VsInfo>,
    rings: RingMemory,
    reals: Array<MapData, RealInfo>,
    ifaces: HashMap<MapData, u32, IfaceInfo>,
    iface_index: Array<MapData, IfaceInfo>,
    tunnel_srcs: Array<MapData, TunnelSource>,
    own_macs: HashMap<MapData, [u8; 8], u32>,
    vlan_in: HashMap<MapData, VlanKey, u32>,
    vlan_out: HashMap<MapData, u32, VlanOut>,
    frag_vs: HashMap<MapData, VsKey, u32>,
    nat_reals: HashMap<MapData, VsKey, NatState>,
    settings: Array<MapData, u32>,
    addr_filter: Array<MapData, u64>,
    stats_vs: PerCpuArray<MapData, Counters>,
    stats_real: PerCpuArray<MapData, Counters>,
    verdicts: PerCpuArray<MapData, u64>,
    syn_guard: Array<MapData, u32>,
    syn_rate: PerCpuArray<MapData, SynRate>,
    /// The connection table, kept untyped: readers get a descriptor of their own.
    flows: MapData,
    /// The connection table's filter (decision 0026), kept for [`BpfDataplane::flow_filter`].
    flow_filter: MapData,
}

/// The loaded object's XDP programs, to attach (and, in tests, to run).
pub struct Programs {
    ebpf: Ebpf,
    /// This object's programs are in `TAILS` (written once, as the balancer first goes
    /// on a link).
    tails_filled: bool,
}

impl Programs {
    /// Attaches the balancer to interface `ifname` through its link pinned under `pins`
    /// (see [`Pins::attach`]). Returns: whether a program was replaced on a pinned link.
    pub fn attach_pinned(
        &mut self,
        pins: &Pins,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
    ) -> Result<bool, anyhow::Error> {
        self.fill_tails_once()?;
        Ok(pins.attach(self.balancer()?, ifindex, ifname, mode)?)
    }

    /// Puts the balancer in place of the program on every pinned link, making no new
    /// link ([`Pins::replace`]). A link that cannot take it (its interface is gone:
    /// no packet reaches it) is logged and left to [`Programs::attach_pinned`].
    pub fn replace_pinned(&mut self, pins: &Pins) -> Result<(), anyhow::Error> {
        self.fill_tails_once()?;
        let prog = self.balancer()?;
        for ifname in pins.linked_interfaces() {
            if let Err(e) = pins.replace(prog, &ifname) {
                tracing::warn!(interface = %ifname, "the pinned XDP link cannot take the new program yet: {e}");
            }
        }
        Ok(())
    }

    /// Returns: the balancer's XDP program.
    fn balancer(&mut self) -> Result<&mut Xdp, anyhow::Error> {
        let name = lb_common::maps::PROG_LB;
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// Writes this object's programs into `TAILS` the first time the balancer goes on a
    /// link: from then on the balancer that was there (an earlier daemon's) tail-calls
    /// them too, for the moment until its link takes this one (decision 0018).
    fn fill_tails_once(&mut self) -> Result<(), anyhow::Error> {
        if !self.tails_filled {
            fill_tails(&mut self.ebpf)?;
            self.tails_filled = true;
        }
        Ok(())
    }

    /// Takes the data path's reports of unresolved next hops out of the object (once).
    /// Returns: their ring buffer.
    pub fn take_neigh_misses(&mut self) -> Result<NeighMisses, DataplaneError> {
        typed(&mut self.ebpf, NEIGH_MISS).map(NeighMisses::new)
    }

    /// Returns: program `name`, e.g. for a BPF_PROG_TEST_RUN.
    pub fn program(&self, name: &str) -> Option<&Xdp> {
        self.ebpf.program(name)?.try_into().ok()
    }

    /// Returns: map `name` of the object, for tests that read a map the dataplane
    /// keeps to the data path (`NAT_STATE`, say).
    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Returns: a descriptor of its own on map `m` (named `name`), for another thread.
fn dup(m: &MapData, name: &'static str) -> Result<MapData, DataplaneError> {
    use std::os::fd::AsFd as _;
    let fd = m
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::Dup { map: name, source })?;
    MapData::from_fd(fd).map_err(map_err(name))
}

/// Returns: map `name`, taken out of `ebpf`.
fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

/// Returns: map `name` out of `ebpf`, as the typed map `T`.
fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    T::try_from(take(ebpf, name)?).map_err(map_err(name))
}

impl BpfDataplane {
    /// Writes `TUNNEL_SRCS` again from `VS_MAP`, as every load does: the slot of every
    /// tunnelling virtual server there (the others are read by no flagged real). A
    /// release before it did not keep the map (it is then made anew, empty), and one
    /// without it may have run in between and given an index to another virtual server
    /// (decision 0028). Returns: an error if `VS_MAP` cannot be read whole, since a
    /// slot left out could hold another virtual server's source, whole.
    pub fn fill_tunnel_sources(&mut self) -> Result<(), DataplaneError> {
        for (_, info) in self.virtual_servers()? {
            if info.method == METHOD_TUNNEL {
                self.set_tunnel_source(&info)?;
            }
        }
        Ok(())
    }

    /// Writes the `TUNNEL_SRCS` slot of tunnelling virtual server `info`: before its
    /// `VS_MAP` value, so that no flow its value lets the data path record can find the
    /// slot of an earlier holder of the index (decision 0028).
    fn set_tunnel_source(&mut self, info: &VsInfo) -> Result<(), DataplaneError> {
        self.write_tunnel_source(info.vs_index, TunnelSource::new(info.tunnel_src))
    }

    /// Writes `value` as is in `TUNNEL_SRCS` slot `vs_index`: for a test that shows
    /// what the data path does with a value read half-written.
    #[doc(hidden)]
    pub fn write_tunnel_source(
        &mut self,
        vs_index: u32,
        value: TunnelSource,
    ) -> Result<(), DataplaneError> {
        self.tunnel_srcs
            .set(vs_index, value, 0)
            .map_err(map_err(TUNNEL_SRCS))
    }

    /// Takes the balancer's maps out of a loaded object. Returns: them, and the object
    /// with its programs.
    pub fn new(mut ebpf: Ebpf) -> Result<(Self, Programs), DataplaneError> {
        let flows = match take(&mut ebpf, FLOWS)? {
            Map::LruHashMap(m) => m,
            _ => return Err(DataplaneError::MissingMap(FLOWS)),
        };
        let mut dp = Self {
            vs: typed(&mut ebpf, VS_MAP)?,
            rings: RingMemory::map(typed(&mut ebpf, VS_RINGS)?)?,
            reals: typed(&mut ebpf, REALS)?,
            ifaces: typed(&mut ebpf, IFACES)?,
            iface_index: typed(&mut ebpf, IFACE_INDEX)?,
            tunnel_srcs: typed(&mut ebpf, TUNNEL_SRCS)?,
            own_macs: typed(&mut ebpf, OWN_MACS)?,
            vlan_in: typed(&mut ebpf, VLAN_IN)?,
            vlan_out: typed(&mut ebpf, VLAN_OUT)?,
            frag_vs: typed(&mut ebpf, FRAG_VS)?,
            nat_reals: typed(&mut ebpf, NAT_REALS)?,
            settings: typed(&mut ebpf, SETTINGS)?,
            addr_filter: typed(&mut ebpf, ADDR_FILTER)?,
            stats_vs: typed(&mut ebpf, STATS_VS)?,
            stats_real: typed(&mut ebpf, STATS_REAL)?,
            verdicts: typed(&mut ebpf, VERDICTS)?,
            syn_guard: typed(&mut ebpf, SYN_GUARD)?,
            syn_rate: typed(&mut ebpf, SYN_RATE)?,
            flow_filter: match take(&mut ebpf, FLOW_FILTER)? {
                Map::Array(m) => m,
                _ => return Err(DataplaneError::MissingMap(FLOW_FILTER)),
            },
            flows,
        };
        // Whatever ran before this release (or a release before the filter, after
        // one that pinned it) may have left flows the filter never saw: it is not
        // trusted again until this daemon rebuilds it, before any program of this
        // load goes on an interface (decision 0026).
        dp.flow_filter()?.reset();
        // Before any program of this load goes on an interface.
        dp.fill_tunnel_sources()?;
        let programs = Programs {
            ebpf,
            tails_filled: false,
        };
        Ok((dp, programs))
    }
}

impl BpfDataplane {
    /// Copies every ring of the `VS_RINGS` pinned at `from` (an earlier run's: smaller,
    /// or of a slot to an element as releases before decision 0030 made it, whose rings
    /// are copied slot by slot into pairs) into this one, ring `i` to ring `i`, so that
    /// the ring ids in `VS_MAP` stay true (`pins::Grow`). Nothing writes either map
    /// meanwhile: no daemon runs but this one, and the data path only reads rings.
    /// Returns: the rings copied.
    pub fn copy_rings(&mut self, from: &Path) -> Result<u32, DataplaneError> {
        let data = MapData::from_pin(from).map_err(map_err(VS_RINGS))?;
        let info = data.info().map_err(map_err(VS_RINGS))?;
        if info.value_size() as usize == std::mem::size_of::<u32>() {
            return self.rings.copy_from_single(&data, info.max_entries());
        }
        let old = Array::try_from(Map::Array(data)).map_err(map_err(VS_RINGS))?;
        let old = RingMemory::map(old)?;
        self.rings.copy_from(&old)?;
        Ok((old.entries / RING_ELEMS as usize) as u32)
    }
}

/// Returns: the counters at `index` of a per-CPU counter map, summed over CPUs.
fn sum(
    map: &PerCpuArray<MapData, Counters>,
    name: &'static str,
    index: u32,
) -> Result<Counters, DataplaneError> {
    let v = map.get(&index, 0).map_err(map_err(name))?;
    Ok(v.iter().fold(Counters::default(), |acc, c| Counters {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
        new_flows: acc.new_flows + c.new_flows,
        reply_packets: acc.reply_packets + c.reply_packets,
        reply_bytes: acc.reply_bytes + c.reply_bytes,
    }))
}

/// Zeroes the counters at `index` of a per-CPU counter map.
fn zero(
    map: &mut PerCpuArray<MapData, Counters>,
    name: &'static str,
    index: u32,
) -> Result<(), DataplaneError> {
    let cpus = nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    let zeros =
        PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(DataplaneError::Cpus)?;
    map.set(index, zeros, 0).map_err(map_err(name))
}

impl DataplaneRead for BpfDataplane {
    type Flows = FlowsReader;

    fn vs_counters(&self, vs_index: u32) -> Result<Counters, DataplaneError> {
        sum(&self.stats_vs, STATS_VS, vs_index)
    }
    fn real_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        sum(&self.stats_real, STATS_REAL, id)
    }
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..lb_common::reason::COUNT)
            .map(|i| {
                self.verdicts
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(VERDICTS))
            })
            .collect()
    }
    fn syns_past_table(&self) -> Result<u64, DataplaneError> {
        let per_cpu = self.syn_rate.get(&0, 0).map_err(map_err(SYN_RATE))?;
        Ok(per_cpu.iter().map(|r| r.skipped).sum())
    }
    /// A descriptor of its own on the connection table, so that it can be walked on
    /// another thread while the daemon's task goes on (about 1.7 µs per entry, `cargo
    /// xtask bench`).
    fn flow_reader(&self) -> Result<FlowsReader, DataplaneError> {
        Ok(FlowsReader(dup(&self.flows, FLOWS)?))
    }
}

impl BpfDataplane {
    /// Returns: the connection table's filter (decision 0026), mapped, with descriptors
    /// of its own on `FLOW_FILTER` and `FLOWS`, for a thread to rebuild. Marked
    /// incomplete as the maps are taken ([`BpfDataplane::new`]).
    pub fn flow_filter(&self) -> Result<super::flow_filter::FlowFilter, DataplaneError> {
        let flows = dup(&self.flows, FLOWS)?;
        let entries = flows.info().map_err(map_err(FLOWS))?.max_entries();
        let filter = dup(&self.flow_filter, FLOW_FILTER)?;
        super::flow_filter::FlowFilter::new(flows, filter, flow_filter_log2(entries))
    }

    /// Writes interface `ifindex`'s entry in `IFACES`, then in `IFACE_INDEX` if it has
    /// a slot there.
    fn put_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.ifaces
            .insert(ifindex, *info, 0)
            .map_err(map_err(IFACES))?;
        if ifindex < IFACE_INDEX_SLOTS {
            self.iface_index
                .set(ifindex, *info, 0)
                .map_err(map_err(IFACE_INDEX))?;
        }
        Ok(())
    }

    /// Clears interface `ifindex`'s slot in `IFACE_INDEX` (whatever an earlier daemon
    /// left there), then removes its `IFACES` entry if it has one.
    fn drop_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        if ifindex < IFACE_INDEX_SLOTS {
            self.iface_index
                .set(ifindex, IfaceInfo::default(), 0)
                .map_err(map_err(IFACE_INDEX))?;
        }
        if self.ifaces.get(&ifindex, 0).is_err() {
            return Ok(());
        }
        self.ifaces.remove(&ifindex).map_err(map_err(IFACES))
    }
}

impl Dataplane for BpfDataplane {
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.put_iface(ifindex, info)
    }
    fn set_vlans(
        &mut self,
        ins: &BTreeMap<VlanKey, u32>,
        outs: &BTreeMap<u32, (IfaceInfo, VlanOut)>,
    ) -> Result<(), DataplaneError> {
        // New devices are written before the frames that name them can be routed to
        // them, and gone ones are unnamed before their other entries go.
        for (i, (info, out)) in outs {
            self.vlan_out.insert(i, out, 0).map_err(map_err(VLAN_OUT))?;
            self.put_iface(*i, info)?;
        }
        let have: Vec<VlanKey> = self
            .vlan_in
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(VLAN_IN))?;
        for k in have.iter().filter(|k| !ins.contains_key(*k)) {
            self.vlan_in.remove(k).map_err(map_err(VLAN_IN))?;
        }
        for (k, i) in ins {
            self.vlan_in.insert(k, i, 0).map_err(map_err(VLAN_IN))?;
        }
        let gone: Vec<u32> = self
            .vlan_out
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(VLAN_OUT))?
            .into_iter()
            .filter(|i| !outs.contains_key(i))
            .collect();
        for i in &gone {
            self.vlan_out.remove(i).map_err(map_err(VLAN_OUT))?;
        }
        let stale: Vec<u32> = self
            .ifaces
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(i, v)| v.flags & IFACE_F_VLAN != 0 && !outs.contains_key(i))
            .map(|(i, _)| i)
            .collect();
        for i in stale {
            self.drop_iface(i)?;
        }
        Ok(())
    }
    fn remove_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.drop_iface(ifindex)
    }
    fn set_own_macs(&mut self, macs: &BTreeMap<[u8; 6], u32>) -> Result<(), DataplaneError> {
        let want: BTreeMap<[u8; 8], u32> =
            macs.iter().map(|(m, i)| (own_mac_key(*m), *i)).collect();
        let have: Vec<[u8; 8]> = self
            .own_macs
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(OWN_MACS))?;
        for k in have.iter().filter(|k| !want.contains_key(*k)) {
            self.own_macs.remove(k).map_err(map_err(OWN_MACS))?;
        }
        for (k, i) in &want {
            self.own_macs.insert(k, i, 0).map_err(map_err(OWN_MACS))?;
        }
        Ok(())
    }
    fn set_fragment_takers(&mut self, takers: &[(VsKey, u16)]) -> Result<(), DataplaneError> {
        let have: Vec<VsKey> = self
            .frag_vs
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(FRAG_VS))?;
        for k in have.iter().filter(|k| !takers.iter().any(|(t, _)| t == *k)) {
            self.frag_vs.remove(k).map_err(map_err(FRAG_VS))?;
        }
        for (k, port_be) in takers {
            self.frag_vs
                .insert(k, u32::from(*port_be), 0)
                .map_err(map_err(FRAG_VS))?;
        }
        Ok(())
    }
    fn set_nat_reals(&mut self, reals: &[(VsKey, NatState)]) -> Result<(), DataplaneError> {
        let want: StdHashMap<VsKey, NatState> = reals.iter().copied().collect();
        let mut have = StdHashMap::new();
        for k in self.nat_reals.keys() {
            let k = k.map_err(map_err(NAT_REALS))?;
            let v = self.nat_reals.get(&k, 0).map_err(map_err(NAT_REALS))?;
            have.insert(k, v);
        }
        for k in have.keys().filter(|k| !want.contains_key(*k)) {
            self.nat_reals.remove(k).map_err(map_err(NAT_REALS))?;
        }
        for (k, state) in want.iter().filter(|(k, v)| have.get(*k) != Some(*v)) {
            self.nat_reals
                .insert(k, state, 0)
                .map_err(map_err(NAT_REALS))?;
        }
        Ok(())
    }
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError> {
        self.reals.set(id, *info, 0).map_err(map_err(REALS))
    }
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        self.rings.write(ring_id, slots)
    }
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError> {
        if info.method == METHOD_TUNNEL {
            self.set_tunnel_source(info)?;
        }
        self.vs.insert(*key, *info, 0).map_err(map_err(VS_MAP))
    }
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError> {
        self.settings.set(0, bits, 0).map_err(map_err(SETTINGS))
    }
    fn set_syn_guard(&mut self, per_window: u32) -> Result<(), DataplaneError> {
        self.syn_guard
            .set(0, per_window, 0)
            .map_err(map_err(SYN_GUARD))
    }
    fn set_addr_filter(
        &mut self,
        words: &[(u32, u64)],
        written: bool,
    ) -> Result<(), DataplaneError> {
        for &(i, bits) in words {
            self.addr_filter
                .set(1 + i, bits, 0)
                .map_err(map_err(ADDR_FILTER))?;
        }
        if written {
            self.addr_filter
                .set(0, ADDR_FILTER_VERSION, 0)
                .map_err(map_err(ADDR_FILTER))?;
        }
        Ok(())
    }
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError> {
        self.vs.remove(key).map_err(map_err(VS_MAP))
    }
    fn reset_counters(
        &mut self,
        vs_index: Option<u32>,
        real_id: Option<u32>,
    ) -> Result<(), DataplaneError> {
        if let Some(i) = vs_index {
            zero(&mut self.stats_vs, STATS_VS, i)?;
        }
        if let Some(i) = real_id {
            zero(&mut self.stats_real, STATS_REAL, i)?;
        }
        Ok(())
    }
}

impl DataplaneContents for BpfDataplane {
    fn virtual_servers(&self) -> Result<Vec<(VsKey, VsInfo)>, DataplaneError> {
        self.vs.iter().map(|r| r.map_err(map_err(VS_MAP))).collect()
    }
    fn reals(&self) -> Result<Vec<RealInfo>, DataplaneError> {
        (0..MAX_REALS)
            .map(|id| self.reals.get(&id, 0).map_err(map_err(REALS)))
            .collect()
    }
    fn ring(&self, ring_id: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        self.rings.read(ring_id, len)
    }
    fn settings(&self) -> Result<u32, DataplaneError> {
        self.settings.get(&0, 0).map_err(map_err(SETTINGS))
    }
}

/// An owned handle on the connection table (see [`DataplaneRead::flow_reader`]).
pub struct FlowsReader(MapData);

impl FlowsReader {
    /// Returns: the map itself, for a caller that reads and writes entries one by one
    /// (the tests' fixture).
    #[doc(hidden)]
    pub fn into_map(self) -> MapData {
        self.0
    }
}

impl FlowReader for FlowsReader {
    fn count(self) -> Result<std::collections::HashMap<(u32, u32), u64>, DataplaneError> {
        let h: HashMap<MapData, FlowKey, FlowState> =
            HashMap::try_from(Map::LruHashMap(self.0)).map_err(map_err(FLOWS))?;
        let mut out = std::collections::HashMap::new();
        for (_, v) in h.iter().filter_map(Result::ok) {
            *out.entry((v.real_id, v.real_generation)).or_default() += 1;
        }
        Ok(out)
    }
}

/// `VS_RINGS` mapped into the daemon's memory (the map is `BPF_F_MMAPABLE`,
/// `lb_common::maps::VS_RINGS_FLAGS`): a table is written into a ring as plain stores,
/// a ring read back the same way, instead of one syscall per slot (decision 0013). The
/// data path sees a ring only once `VS_MAP` names it, and that update is a syscall
/// made after the stores (the kernel publishes the new value with release order).
///
/// An element is two slots ([`RingPair`], decision 0030), so the mapping is one `u32`
/// per slot: slot `s` of ring `r` is the `u32` at `r * 2 * RING_ELEMS + s`.
struct RingMemory {
    /// Keeps the map alive as well.
    mapping: Mapping,
    /// Elements mapped.
    entries: usize,
}

// SAFETY: shared references only read; `&mut self` guards the writes.
unsafe impl Sync for RingMemory {}

/// Bytes of one `VS_RINGS` element in the map's memory, in this release and in those
/// before decision 0030 (a `u32` then, in 8 bytes).
const RING_ELEMENT: usize = 8;

/// Slots a ring takes in the mapping (`RING_STRIDE` and, for an odd stride, one more
/// that no table uses).
const RING_SLOTS: usize = 2 * RING_ELEMS as usize;

impl RingMemory {
    fn map(map: Array<MapData, RingPair>) -> Result<Self, DataplaneError> {
        let entries = map.len() as usize;
        let mapping = Mapping::shared(map.map(), entries * RING_ELEMENT, VS_RINGS)?;
        Ok(Self { mapping, entries })
    }

    /// Returns: the mapping as slots.
    fn slots(&self) -> *mut u32 {
        self.mapping.as_ptr().cast()
    }

    /// Returns: the rings the map holds.
    fn rings(&self) -> u32 {
        (self.entries / RING_ELEMS as usize) as u32
    }

    /// Returns: where slot `slot` of ring `ring_id` is in the mapping (in `u32`s), if
    /// the map has it.
    fn index(&self, ring_id: u32, slot: u32) -> Result<usize, DataplaneError> {
        if slot >= RING_STRIDE || ring_id >= self.rings() {
            return Err(DataplaneError::Ring {
                ring: ring_id,
                slot,
            });
        }
        Ok(ring_id as usize * RING_SLOTS + slot as usize)
    }

    /// Writes `(slot, real_id)` pairs into ring `ring_id`.
    fn write(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        for &(slot, real) in slots {
            let i = self.index(ring_id, slot)?;
            // SAFETY: slot `i` is within the mapping (checked) and aligned for a u32;
            // `&mut self` makes this the process's only access.
            unsafe { self.slots().add(i).write(real) };
        }
        Ok(())
    }

    /// Returns: the first `len` slots of ring `ring_id`.
    fn read(&self, ring_id: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        (0..len)
            .map(|slot| {
                let i = self.index(ring_id, slot)?;
                // SAFETY: as in `write`, a read.
                Ok(unsafe { self.slots().add(i).read() })
            })
            .collect()
    }

    /// Copies every element of `from` to the same index here.
    fn copy_from(&mut self, from: &RingMemory) -> Result<(), DataplaneError> {
        if from.entries > self.entries {
            return Err(DataplaneError::Ring {
                ring: self.rings(),
                slot: 0,
            });
        }
        // SAFETY: both mappings hold at least `from.entries` elements of two u32s, and
        // they are mappings of two maps, so they do not overlap; `&mut self` makes this
        // the process's only access to this one.
        unsafe { std::ptr::copy_nonoverlapping(from.slots(), self.slots(), 2 * from.entries) };
        Ok(())
    }

    /// Copies every ring of `from`, a `VS_RINGS` of `entries` elements with one slot to
    /// an element (releases before decision 0030: slot `s` of ring `r` in the first four
    /// bytes of element `r * RING_STRIDE + s`), slot by slot into the same ring here.
    /// Returns: the rings copied.
    fn copy_from_single(&mut self, from: &MapData, entries: u32) -> Result<u32, DataplaneError> {
        let rings = entries / RING_STRIDE;
        if rings > self.rings() {
            return Err(DataplaneError::Ring {
                ring: self.rings(),
                slot: 0,
            });
        }
        let old = Mapping::shared(from, entries as usize * RING_ELEMENT, VS_RINGS)?;
        for ring in 0..rings {
            for slot in 0..RING_STRIDE {
                let at = (ring * RING_STRIDE + slot) as usize * RING_ELEMENT;
                let i = ring as usize * RING_SLOTS + slot as usize;
                // SAFETY: `at` is the start of an element within the old mapping (ring
                // < entries / RING_STRIDE), aligned for a u32; `i` is within this one
                // (rings <= self.rings(), checked above); two maps' mappings do not
                // overlap, and `&mut self` makes this the process's only access here.
                unsafe {
                    let real = old.as_ptr().add(at).cast::<u32>().read();
                    self.slots().add(i).write(real);
                }
            }
        }
        Ok(rings)
    }
}
