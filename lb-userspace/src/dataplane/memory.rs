//! An in-memory data path: the maps as plain collections, for reconciler tests and for
//! the status and metrics views (a test sets the counters the data path would keep).

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    maps::MAX_REALS, Counters, IfaceInfo, NatState, RealInfo, VlanKey, VlanOut, VsInfo, VsKey,
    IFACE_F_VLAN, RING_STRIDE,
};

use super::{Dataplane, DataplaneContents, DataplaneError, DataplaneRead, FlowReader};

impl MemoryDataplane {
    /// Returns: whether `ADDR_FILTER` has the bit of `addr` (as a VIP, or a NAT real).
    pub fn filter_has(&self, addr: &[u32; 4], nat_real: bool) -> bool {
        let (word, mask) = lb_common::addr_filter_place(addr, nat_real);
        self.addr_filter.get(&word).is_some_and(|w| w & mask != 0)
    }

    /// Records what a written filter hides (`filter_misses`): a virtual server in
    /// `VS_MAP`, or a real of a NAT one in `REALS` (whose replies the data path must
    /// look at).
    fn check_filter(&mut self) {
        if !self.addr_filter_written {
            return;
        }
        let nat: std::collections::HashSet<u32> = self
            .vs
            .values()
            .filter(|v| v.method == lb_common::METHOD_NAT)
            .map(|v| v.vs_index)
            .collect();
        let vss = self
            .vs
            .keys()
            .filter(|k| !self.filter_has(&k.addr, false))
            .map(|k| format!("virtual server {:?}", k.addr));
        let reals = self
            .reals
            .values()
            .filter(|r| r.role != lb_common::REAL_ROLE_FREE && nat.contains(&u32::from(r.vs_index)))
            .filter(|r| !self.filter_has(&r.addr, true))
            .map(|r| format!("NAT real {:?}", r.addr));
        let hidden: Vec<String> = vss.chain(reals).collect();
        self.filter_misses.extend(hidden);
    }

    /// Records in `plain_misses` every active real flagged `REAL_F_PLAIN_*`, at a
    /// generation a live table has named (so that a flow may name it), whose flags
    /// are not those its virtual server (by the real's index) warrants: none for one
    /// not in `VS_MAP`, its method's (a tunnel's only with its outer source in its
    /// `TUNNEL_SRCS` slot), with `REAL_F_PLAIN_PERSIST` where it has persistence. The
    /// data path would forward the real's established flows as that virtual server no
    /// longer does, or leave its client networks' persistence entries untouched
    /// (decisions 0027, 0028, 0033).
    fn check_plain(&mut self) {
        let by_index: HashMap<u32, &VsInfo> = self.vs.values().map(|v| (v.vs_index, v)).collect();
        let wrong = self
            .reals
            .iter()
            .filter(|(&id, r)| self.named.contains(&(id, r.generation)))
            .filter(|(_, r)| r.flags & lb_common::REAL_F_ACTIVE != 0)
            .filter(|(_, r)| r.flags & lb_common::REAL_F_PLAIN != 0)
            .filter(|(_, r)| {
                let vs = by_index.get(&u32::from(r.vs_index));
                let method = match vs {
                    Some(v) if v.method == lb_common::METHOD_DR => lb_common::REAL_F_PLAIN_DR,
                    Some(v) if v.method == lb_common::METHOD_NAT => lb_common::REAL_F_PLAIN_NAT,
                    // Only with its outer source in its slot (decision 0028).
                    Some(v)
                        if v.method == lb_common::METHOD_TUNNEL
                            && self.tunnel_srcs.get(&v.vs_index) == Some(&v.tunnel_src) =>
                    {
                        lb_common::REAL_F_PLAIN_TUNNEL
                    }
                    _ => 0,
                };
                let persists = vs.is_some_and(|v| v.persist_timeout_ns != 0);
                let want = if method != 0 && persists {
                    method | lb_common::REAL_F_PLAIN_PERSIST
                } else {
                    method
                };
                r.flags & lb_common::REAL_F_PLAIN != want
            })
            .map(|(_, r)| format!("plain real {:?}:{}", r.addr, u16::from_be(r.port_be)));
        let wrong: Vec<String> = wrong.collect();
        self.plain_misses.extend(wrong);
    }

    /// Records in `sole_misses` every real flagged `REAL_F_SOLE_NAT` of a virtual
    /// server in `VS_MAP` whose `NAT_REALS` entry (by the real's address and port and
    /// the virtual server's protocol) does not name that virtual server as the data
    /// path reads it (index, VIP, port): the data path would then write no reply state
    /// for its flows, and restore none of their replies.
    fn check_sole(&mut self) {
        let missing = self
            .reals
            .values()
            .filter(|r| r.flags & lb_common::REAL_F_SOLE_NAT != 0)
            .filter_map(|r| {
                let (vs, _) = self
                    .vs
                    .iter()
                    .find(|(_, v)| v.vs_index == u32::from(r.vs_index))?;
                let key = VsKey {
                    addr: r.addr,
                    port_be: r.port_be,
                    proto: vs.proto,
                    family: r.family,
                };
                let ok = self.nat_reals.get(&key).is_some_and(|s| {
                    s.vs_index == u32::from(r.vs_index)
                        && s.vip == vs.addr
                        && s.vport_be == vs.port_be
                });
                (!ok).then(|| format!("sole NAT real {:?}:{}", r.addr, u16::from_be(r.port_be)))
            });
        let missing: Vec<String> = missing.collect();
        self.sole_misses.extend(missing);
    }
}

#[derive(Default, Debug)]
pub struct MemoryDataplane {
    pub ifaces: HashMap<u32, IfaceInfo>,
    pub own_macs: BTreeMap<[u8; 6], u32>,
    pub vlan_in: BTreeMap<VlanKey, u32>,
    pub vlan_out: BTreeMap<u32, VlanOut>,
    /// `FRAG_VS`: (VIP, protocol, family) with port 0 -> port (network order).
    pub frag_vs: HashMap<VsKey, u16>,
    /// `NAT_REALS`: a NAT real's address and port -> the VIP:port it alone serves.
    pub nat_reals: HashMap<VsKey, NatState>,
    pub reals: HashMap<u32, RealInfo>,
    /// `ring_id * RING_STRIDE + slot` -> real id.
    pub rings: HashMap<u32, u32>,
    pub vs: HashMap<VsKey, VsInfo>,
    /// `TUNNEL_SRCS`: vs index -> the outer source, as `set_vs` writes it (before the
    /// value) for a tunnelling virtual server (decision 0028).
    pub tunnel_srcs: HashMap<u32, [u32; 4]>,
    pub settings: u32,
    /// `SYN_GUARD`.
    pub syn_guard: u32,
    /// What `SYN_RATE` would hold as SYNs past the table, summed over CPUs.
    pub syns_past_table: u64,
    /// `ADDR_FILTER`'s bitmap by word (absent: zero), and whether it was marked written.
    pub addr_filter: HashMap<u32, u64>,
    pub addr_filter_written: bool,
    /// Virtual servers (in `VS_MAP`) and NAT reals (in `REALS`) that a filter marked
    /// written hid at some step: the data path would have passed their traffic.
    pub filter_misses: Vec<String>,
    /// Reals flagged `REAL_F_SOLE_NAT` at some step without the `NAT_REALS` entry the
    /// flag stands for.
    pub sole_misses: Vec<String>,
    /// Active reals flagged `REAL_F_PLAIN_*` at some step that their virtual server
    /// (in `VS_MAP`, by index) did not warrant.
    pub plain_misses: Vec<String>,
    /// (real id, generation) pairs some live table has named.
    pub named: std::collections::HashSet<(u32, u32)>,
    /// Number of ring slot writes, to check that only changed slots are written.
    pub slot_writes: usize,
    /// Number of `REALS` and `VS_MAP` writes, to check what is rewritten.
    pub value_writes: usize,
    /// Ring writes (calls, however many slots each).
    pub ring_writes: usize,
    /// The virtual servers whose `VS_MAP` value was written, in order.
    pub vs_writes: Vec<VsKey>,
    /// Counters by virtual server index and by real id (absent: zero).
    pub vs_counters: HashMap<u32, Counters>,
    pub real_counters: HashMap<u32, Counters>,
    /// Packets per verdict reason (absent: zero).
    pub verdicts: HashMap<u32, u64>,
    /// Connection table entries per (real id, generation).
    pub flows: HashMap<(u32, u32), u64>,
}

impl MemoryDataplane {
    /// Returns: the live table of a virtual server, as the data path would read it.
    pub fn table(&self, key: &VsKey) -> Option<Vec<u32>> {
        let vs = self.vs.get(key)?;
        Some(
            (0..vs.ring_size)
                .map(|s| {
                    self.rings
                        .get(&(vs.ring_id * RING_STRIDE + s))
                        .copied()
                        .unwrap_or(0)
                })
                .collect(),
        )
    }
}

impl Dataplane for MemoryDataplane {
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.ifaces.insert(ifindex, *info);
        Ok(())
    }
    fn set_vlans(
        &mut self,
        ins: &BTreeMap<VlanKey, u32>,
        outs: &BTreeMap<u32, (IfaceInfo, VlanOut)>,
    ) -> Result<(), DataplaneError> {
        self.vlan_in = ins.clone();
        self.vlan_out = outs.iter().map(|(i, (_, o))| (*i, *o)).collect();
        self.ifaces
            .retain(|i, v| v.flags & IFACE_F_VLAN == 0 || outs.contains_key(i));
        for (i, (info, _)) in outs {
            self.ifaces.insert(*i, *info);
        }
        Ok(())
    }
    fn remove_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.ifaces.remove(&ifindex);
        Ok(())
    }
    fn set_own_macs(&mut self, macs: &BTreeMap<[u8; 6], u32>) -> Result<(), DataplaneError> {
        self.own_macs = macs.clone();
        Ok(())
    }
    fn set_fragment_takers(&mut self, takers: &[(VsKey, u16)]) -> Result<(), DataplaneError> {
        self.frag_vs = takers.iter().copied().collect();
        Ok(())
    }
    fn set_nat_reals(&mut self, reals: &[(VsKey, NatState)]) -> Result<(), DataplaneError> {
        self.nat_reals = reals.iter().copied().collect();
        self.check_sole();
        Ok(())
    }
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError> {
        self.reals.insert(id, *info);
        self.value_writes += 1;
        self.check_filter();
        self.check_sole();
        self.check_plain();
        Ok(())
    }
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        for &(slot, real) in slots {
            self.rings.insert(ring_id * RING_STRIDE + slot, real);
        }
        self.slot_writes += slots.len();
        self.ring_writes += 1;
        Ok(())
    }
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError> {
        if info.method == lb_common::METHOD_TUNNEL {
            self.tunnel_srcs.insert(info.vs_index, info.tunnel_src);
        }
        self.vs.insert(*key, *info);
        self.value_writes += 1;
        self.vs_writes.push(*key);
        for id in self.table(key).unwrap_or_default() {
            if let Some(r) = self.reals.get(&id) {
                self.named.insert((id, r.generation));
            }
        }
        self.check_filter();
        self.check_sole();
        self.check_plain();
        Ok(())
    }
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError> {
        self.settings = bits;
        Ok(())
    }
    fn set_syn_guard(&mut self, per_window: u32) -> Result<(), DataplaneError> {
        self.syn_guard = per_window;
        Ok(())
    }
    fn set_addr_filter(
        &mut self,
        words: &[(u32, u64)],
        written: bool,
    ) -> Result<(), DataplaneError> {
        for &(i, bits) in words {
            self.addr_filter.insert(i, bits);
            self.check_filter();
        }
        self.addr_filter_written |= written;
        self.check_filter();
        Ok(())
    }
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError> {
        self.vs.remove(key);
        self.check_plain();
        Ok(())
    }
    fn reset_counters(
        &mut self,
        _vs: Option<u32>,
        _real: Option<u32>,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }
}

impl DataplaneRead for MemoryDataplane {
    type Flows = MemoryFlows;

    fn vs_counters(&self, vs_index: u32) -> Result<Counters, DataplaneError> {
        Ok(self.vs_counters.get(&vs_index).copied().unwrap_or_default())
    }
    fn real_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.real_counters.get(&id).copied().unwrap_or_default())
    }
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok((0..lb_common::reason::COUNT)
            .map(|i| self.verdicts.get(&i).copied().unwrap_or(0))
            .collect())
    }
    fn syns_past_table(&self) -> Result<u64, DataplaneError> {
        Ok(self.syns_past_table)
    }
    fn flow_reader(&self) -> Result<MemoryFlows, DataplaneError> {
        Ok(MemoryFlows(self.flows.clone()))
    }
}

/// A copy of the in-memory connection table's counts.
pub struct MemoryFlows(HashMap<(u32, u32), u64>);

impl FlowReader for MemoryFlows {
    fn count(self) -> Result<HashMap<(u32, u32), u64>, DataplaneError> {
        Ok(self.0)
    }
}

impl DataplaneContents for MemoryDataplane {
    fn virtual_servers(&self) -> Result<Vec<(VsKey, VsInfo)>, DataplaneError> {
        Ok(self.vs.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn reals(&self) -> Result<Vec<RealInfo>, DataplaneError> {
        Ok((0..MAX_REALS)
            .map(|id| self.reals.get(&id).copied().unwrap_or_default())
            .collect())
    }
    fn ring(&self, ring_id: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        Ok((0..len)
            .map(|s| {
                self.rings
                    .get(&(ring_id * RING_STRIDE + s))
                    .copied()
                    .unwrap_or(0)
            })
            .collect())
    }
    fn settings(&self) -> Result<u32, DataplaneError> {
        Ok(self.settings)
    }
}
