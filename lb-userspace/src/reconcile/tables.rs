//! Virtual servers in the data path and their Maglev tables (decision 0001): each
//! virtual server's index, its two rings and which one is live, the `VS_MAP` value last
//! written; a shadow of every ring, so that a new table is written as the slots that
//! changed; and the free indexes and rings.

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    user::{addr_words, mask_words},
    VsInfo, VsKey, METHOD_DR, METHOD_NAT, METHOD_TUNNEL,
};

use super::ReconcileError;
use crate::{
    config::{Config, Method, VirtualServer},
    dataplane::Dataplane,
    maglev,
};

#[derive(Debug)]
struct VsSlot {
    key: VsKey,
    vs_index: u32,
    rings: [u32; 2],
    /// Index into `rings` of the ring the data path reads.
    live: usize,
    /// Everything of the live `VsInfo` but its ring (to tell whether it must be
    /// rewritten).
    params: VsInfo,
    /// The configuration this slot was last applied from.
    cfg: VirtualServer,
    /// The value must be written even if the table is unchanged (new virtual server,
    /// or parameters changed).
    dirty: bool,
}

/// Every virtual server in the data path, by name, and the slots free for new ones.
#[derive(Debug)]
pub(super) struct Tables {
    vss: BTreeMap<String, VsSlot>,
    /// Last contents written to each ring (slot -> real id), to write only changes;
    /// absent while unknown (never written by this daemon, or a write failed).
    shadows: HashMap<u32, Vec<u32>>,
    free_vs: Vec<u32>,
    free_rings: Vec<u32>,
}

fn method_code(m: Method) -> u8 {
    match m {
        Method::Dr => METHOD_DR,
        Method::Nat => METHOD_NAT,
        Method::Tunnel => METHOD_TUNNEL,
    }
}

/// Returns: the `VS_MAP` key of `vs`, and its value but for index and ring.
pub(super) fn vs_value(vs: &VirtualServer) -> (VsKey, VsInfo) {
    let (words, family) = addr_words(vs.address);
    let key = VsKey {
        addr: words,
        port_be: vs.port.to_be(),
        proto: vs.protocol.number(),
        family,
    };
    let (persist_mask, persist_timeout_ns) = match vs.persistence {
        Some(p) => (
            mask_words(p.netmask, family),
            p.timeout.as_nanos().max(1) as u64,
        ),
        None => ([0; 4], 0),
    };
    let params = VsInfo {
        vs_index: 0,
        ring_id: 0,
        ring_size: vs.table_size,
        method: method_code(vs.method),
        flags: 0,
        _pad: [0; 2],
        tunnel_src: vs
            .tunnel_source
            .map(|a| addr_words(a).0)
            .unwrap_or_default(),
        persist_mask,
        persist_timeout_ns,
    };
    (key, params)
}

impl Tables {
    /// `max_vs` virtual server slots and `ring_count` rings exist in the data path.
    pub fn new(max_vs: u32, ring_count: u32) -> Self {
        Self {
            vss: BTreeMap::new(),
            shadows: HashMap::new(),
            // Reversed so that pop() hands out 0, 1, 2, ...
            free_vs: (0..max_vs).rev().collect(),
            free_rings: (0..ring_count).rev().collect(),
        }
    }

    /// Returns: the applied configuration of virtual server `name`.
    pub fn config(&self, name: &str) -> Option<&VirtualServer> {
        self.vss.get(name).map(|v| &v.cfg)
    }

    /// Returns: the applied configuration of every virtual server, by name.
    pub fn configs(&self) -> impl Iterator<Item = &VirtualServer> {
        self.vss.values().map(|v| &v.cfg)
    }

    /// Returns: the index of virtual server `name`.
    pub fn vs_index(&self, name: &str) -> Option<u32> {
        self.vss.get(name).map(|v| v.vs_index)
    }

    /// Returns: the Maglev table the data path reads for virtual server `name`.
    pub fn live_table(&self, name: &str) -> Option<&[u32]> {
        let v = self.vss.get(name)?;
        self.shadows.get(&v.rings[v.live]).map(Vec::as_slice)
    }

    /// Returns: whether virtual server `name` forwards by direct routing.
    pub fn is_dr(&self, name: &str) -> Option<bool> {
        self.vss.get(name).map(|s| s.params.method == METHOD_DR)
    }

    /// Refuses `config` up front when its new virtual servers would not fit.
    pub fn check_capacity(&self, config: &Config) -> Result<(), ReconcileError> {
        let new_vs = config
            .virtual_servers
            .iter()
            .filter(|v| !self.vss.contains_key(&v.name))
            .count();
        if new_vs > self.free_vs.len() {
            return Err(ReconcileError::Capacity {
                what: "virtual servers",
                max: (self.vss.len() + self.free_vs.len()) as u32,
            });
        }
        if new_vs * 2 > self.free_rings.len() {
            let max = ((self.vss.len() * 2 + self.free_rings.len()) / 2) as u32;
            return Err(ReconcileError::Capacity {
                what: "Maglev rings (virtual servers)",
                max,
            });
        }
        Ok(())
    }

    /// Makes sure virtual server `vs` has a slot (a new one if its VIP, port or
    /// protocol changed) and records its configuration. Its table is written by
    /// [`Tables::install`].
    pub fn prepare(
        &mut self,
        dp: &mut impl Dataplane,
        vs: &VirtualServer,
    ) -> Result<(), ReconcileError> {
        let (key, params) = vs_value(vs);
        if let Some(slot) = self.vss.get(&vs.name) {
            if slot.key != key {
                // Same name, other VIP/port/protocol: a different service; replace it.
                let old = self.vss.remove(&vs.name).expect("present");
                self.release(dp, old)?;
            }
        }
        if let Some(slot) = self.vss.get_mut(&vs.name) {
            slot.cfg = vs.clone();
            if slot.params != params {
                slot.params = params;
                slot.dirty = true;
            }
            return Ok(());
        }
        let vs_index = self.free_vs.pop().ok_or(ReconcileError::Capacity {
            what: "virtual servers",
            max: 0,
        })?;
        let a = self.free_rings.pop().ok_or(ReconcileError::Capacity {
            what: "Maglev rings",
            max: 0,
        })?;
        let b = self.free_rings.pop().ok_or(ReconcileError::Capacity {
            what: "Maglev rings",
            max: 0,
        })?;
        dp.reset_counters(Some(vs_index), None)?;
        // `live` starts at 1 so that the first table goes into ring 0.
        self.vss.insert(
            vs.name.clone(),
            VsSlot {
                key,
                vs_index,
                rings: [a, b],
                live: 1,
                params,
                cfg: vs.clone(),
                dirty: true,
            },
        );
        Ok(())
    }

    /// Installs the Maglev table of `backends` for virtual server `name` unless the
    /// live one already is exactly that: into the idle ring, changed slots only, then
    /// one `VS_MAP` update that makes it live.
    pub fn install(
        &mut self,
        dp: &mut impl Dataplane,
        name: &str,
        backends: &[maglev::Backend],
    ) -> Result<(), ReconcileError> {
        let slot = self.vss.get(name).expect("prepared");
        let table = maglev::build(backends, slot.cfg.table_size);
        let live_ring = slot.rings[slot.live];
        if self.shadows.get(&live_ring) == Some(&table) {
            if slot.dirty {
                // Same table, new parameters: the value alone is replaced.
                let info = VsInfo {
                    vs_index: slot.vs_index,
                    ring_id: live_ring,
                    ..slot.params
                };
                dp.set_vs(&slot.key, &info)?;
                self.vss.get_mut(name).expect("prepared").dirty = false;
            }
            return Ok(());
        }
        let idle = 1 - slot.live;
        let ring = slot.rings[idle];
        let shadow = self.shadows.get(&ring);
        let changed: Vec<(u32, u32)> = table
            .iter()
            .enumerate()
            .filter(|(i, id)| shadow.and_then(|s| s.get(*i)) != Some(id))
            .map(|(i, &id)| (i as u32, id))
            .collect();
        // The ring's contents are unknown until the write succeeds: a write that fails
        // part-way must leave no shadow, or the next table written here would skip the
        // slots that differ only from what was half written (the data path would read
        // reals this table does not have). Without one, the next write is whole.
        self.shadows.remove(&ring);
        dp.set_ring_slots(ring, &changed)?;
        let info = VsInfo {
            vs_index: slot.vs_index,
            ring_id: ring,
            ..slot.params
        };
        dp.set_vs(&slot.key, &info)?;
        let slot = self.vss.get_mut(name).expect("prepared");
        slot.live = idle;
        slot.dirty = false;
        let cfg = &slot.cfg;
        tracing::info!(
            vs = %cfg.name, vip = %cfg.address, port = cfg.port, protocol = %cfg.protocol, method = %cfg.method,
            reals = cfg.real_servers.len(), in_table = backends.len(), slots_written = changed.len(), ring, "virtual server table installed"
        );
        self.shadows.insert(ring, table);
        Ok(())
    }

    /// Takes every virtual server that `config` no longer has out of the data path.
    pub fn remove_absent(
        &mut self,
        dp: &mut impl Dataplane,
        config: &Config,
    ) -> Result<(), ReconcileError> {
        let gone: Vec<String> = self
            .vss
            .keys()
            .filter(|n| !config.virtual_servers.iter().any(|v| &v.name == *n))
            .cloned()
            .collect();
        for name in gone {
            let slot = self.vss.remove(&name).expect("listed above");
            self.release(dp, slot)?;
            tracing::info!(vs = %name, "virtual server removed");
        }
        Ok(())
    }

    /// Takes over virtual server `vs`, found in `VS_MAP` under `key` with `info` (written
    /// by an earlier daemon) and live ring contents `live`. Its idle ring is given by
    /// [`Tables::adopt_idle_rings`] once every live ring is known.
    /// Returns: an error when the found index or ring is beyond this data path's size.
    pub fn adopt(
        &mut self,
        vs: &VirtualServer,
        key: VsKey,
        info: VsInfo,
        live: Vec<u32>,
    ) -> Result<(), ReconcileError> {
        let taken = |free: &mut Vec<u32>, id: u32, what| {
            let at = free
                .iter()
                .position(|&f| f == id)
                .ok_or(ReconcileError::Adopt { what, id })?;
            free.remove(at);
            Ok::<(), ReconcileError>(())
        };
        taken(&mut self.free_vs, info.vs_index, "virtual server index")?;
        taken(&mut self.free_rings, info.ring_id, "Maglev ring")?;
        let params = VsInfo {
            vs_index: 0,
            ring_id: 0,
            ..info
        };
        self.shadows.insert(info.ring_id, live);
        self.vss.insert(
            vs.name.clone(),
            VsSlot {
                key,
                vs_index: info.vs_index,
                rings: [info.ring_id, info.ring_id],
                live: 0,
                params,
                cfg: vs.clone(),
                dirty: false,
            },
        );
        Ok(())
    }

    /// Gives every adopted virtual server a free ring as its idle one (its contents are
    /// unknown, so the first table written there is written whole).
    /// Returns: an error when too few rings are free.
    pub fn adopt_idle_rings(&mut self) -> Result<(), ReconcileError> {
        for slot in self.vss.values_mut().filter(|s| s.rings[0] == s.rings[1]) {
            let ring = self.free_rings.pop().ok_or(ReconcileError::Capacity {
                what: "Maglev rings",
                max: 0,
            })?;
            self.shadows.remove(&ring);
            slot.rings[1] = ring;
        }
        Ok(())
    }

    /// Takes a virtual server out of the data path and returns its index and rings to
    /// the free pools (the rings keep their shadows, so reuse writes only changes).
    fn release(&mut self, dp: &mut impl Dataplane, slot: VsSlot) -> Result<(), ReconcileError> {
        dp.remove_vs(&slot.key)?;
        self.free_vs.push(slot.vs_index);
        self.free_rings.extend(slot.rings);
        Ok(())
    }
}
