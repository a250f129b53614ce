//! Keeps the data path equal to the configuration and the reals' health: ids for
//! virtual servers and reals, Maglev tables, and the order of writes that keeps every
//! packet's view consistent.
//!
//! A real is in its virtual server's table when it is healthy, its weight (runtime
//! override, else the file's) is above 0, and it is not disabled. While no real is, the
//! sorry server (if any) fills the table.
//!
//! Order of every change, so that the data path never follows a reference to something
//! not yet written and never sends a new flow to a real on its way out:
//! 1. reals gaining flags (new, recovered, back in a table) are written (REALS);
//! 2. each changed table is written into its virtual server's *idle* ring, changed
//!    slots only, then the virtual server's value is replaced to point at it (one
//!    atomic map update);
//! 3. reals losing flags are written: a real that stops taking packets (failed or
//!    removed) also gets a new generation, so flows and persistence entries naming it
//!    are re-steered and never come back to it;
//! 4. virtual servers that went away are removed, then their reals.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::{
    maps::MAX_REALS,
    user::{addr_words, mask_words},
    IfaceInfo, RealInfo, VsInfo, VsKey, METHOD_DR, METHOD_NAT, METHOD_TUNNEL, REAL_F_ACTIVE,
    REAL_F_NEW, SETTING_NAT,
};

use crate::{
    config::{CheckType, Config, Method, VirtualServer},
    dataplane::{Dataplane, DataplaneError},
    maglev,
    model::RealKey,
};

/// Where a real server's frames go: learnt from the kernel's routes and neighbours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Next {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A runtime change to a real that the file does not hold (`xdpvs real ...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Override {
    /// Weight used instead of the file's.
    pub weight: Option<u32>,
    /// Taken out of the table (drained) by the operator.
    pub disabled: bool,
    /// The file's weight when the override was made: a reload that changes it drops
    /// the override (the newer intent wins).
    pub file_weight: u32,
}

/// What a real looks like to an operator (`xdpvs status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealView {
    pub key: RealKey,
    pub id: u32,
    /// Generation of the id now (flow entries of other generations are not its).
    pub generation: u32,
    /// The file's weight (0 for the sorry server).
    pub file_weight: u32,
    /// Weight in use (override or file).
    pub weight: u32,
    pub healthy: bool,
    pub disabled: bool,
    /// In the Maglev table: takes new flows.
    pub in_table: bool,
}

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

#[derive(Debug)]
struct RealSlot {
    id: u32,
    info: RealInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("out of {what}: at most {max} (load-time capacity)")]
    Capacity { what: &'static str, max: u32 },
}

/// The daemon's picture of what is in the maps.
pub struct Reconciler<D: Dataplane> {
    dp: D,
    vss: BTreeMap<String, VsSlot>,
    reals: BTreeMap<RealKey, RealSlot>,
    /// Last contents written to each ring (slot -> real id), to write only changes.
    ring_shadow: HashMap<u32, Vec<u32>>,
    free_vs: Vec<u32>,
    free_rings: Vec<u32>,
    free_reals: Vec<u32>,
    /// Generation last given out for each real id.
    generations: Vec<u32>,
    /// Known next hops by real address.
    next_hops: HashMap<IpAddr, L2Next>,
    /// `SETTING_*` bits last written.
    settings: u32,
    /// Health of probed reals (absent: not yet healthy).
    health: HashMap<RealKey, bool>,
    overrides: HashMap<RealKey, Override>,
}

fn method_code(m: Method) -> u8 {
    match m {
        Method::Dr => METHOD_DR,
        Method::Nat => METHOD_NAT,
        Method::Tunnel => METHOD_TUNNEL,
    }
}

impl<D: Dataplane> Reconciler<D> {
    /// `ring_count` rings and `max_vs` virtual server slots exist in the data path.
    pub fn new(dp: D, max_vs: u32, ring_count: u32) -> Self {
        Self {
            dp,
            vss: BTreeMap::new(),
            reals: BTreeMap::new(),
            ring_shadow: HashMap::new(),
            // Reversed so that pop() hands out 0, 1, 2, ...
            free_vs: (0..max_vs).rev().collect(),
            free_rings: (0..ring_count).rev().collect(),
            free_reals: (0..MAX_REALS).rev().collect(),
            generations: vec![0; MAX_REALS as usize],
            next_hops: HashMap::new(),
            settings: 0,
            health: HashMap::new(),
            overrides: HashMap::new(),
        }
    }

    /// Returns: the data path, for reads (writes go through the reconciler).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// Registers interface `ifindex` as one frames may leave by.
    pub fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), ReconcileError> {
        self.dp.set_iface(ifindex, info)?;
        Ok(())
    }

    fn set_settings(&mut self, bits: u32) -> Result<(), ReconcileError> {
        if bits != self.settings {
            self.dp.set_settings(bits)?;
            self.settings = bits;
        }
        Ok(())
    }

    /// Returns: the real id of `key`, if it is in the data path.
    pub fn real_id(&self, key: &RealKey) -> Option<u32> {
        self.reals.get(key).map(|r| r.id)
    }

    /// Returns: the (vs_index, live ring id) of a virtual server by name.
    pub fn vs_slot(&self, name: &str) -> Option<(u32, u32)> {
        self.vss.get(name).map(|v| (v.vs_index, v.rings[v.live]))
    }

    /// Returns: the Maglev table the data path reads for virtual server `name`.
    pub fn live_table(&self, name: &str) -> Option<&[u32]> {
        let v = self.vss.get(name)?;
        self.ring_shadow.get(&v.rings[v.live]).map(Vec::as_slice)
    }

    /// Returns: the applied configuration of every virtual server, by name.
    pub fn virtual_servers(&self) -> impl Iterator<Item = &VirtualServer> {
        self.vss.values().map(|v| &v.cfg)
    }

    /// Returns: every real address the data path needs a next hop for.
    pub fn real_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.reals.keys().map(|k| k.addr).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Returns: the real addresses of virtual servers whose method is (`dr == true`) or is
    /// not (`false`) direct routing: the first need a MAC, the others a routed next hop.
    pub fn real_addresses_of(&self, dr: bool) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .reals
            .keys()
            .filter(|k| {
                self.vss
                    .get(&k.vs)
                    .is_some_and(|s| (s.params.method == METHOD_DR) == dr)
            })
            .map(|k| k.addr)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Returns: whether real `key` counts as healthy (unprobed reals always do).
    pub fn healthy(&self, key: &RealKey) -> bool {
        if key.sorry {
            return true;
        }
        let unprobed = self
            .vss
            .get(&key.vs)
            .and_then(|v| {
                v.cfg
                    .real_servers
                    .iter()
                    .find(|r| r.address == key.addr && r.port == key.port)
            })
            .is_some_and(|r| r.health_check.kind == CheckType::None);
        self.is_up(key, unprobed)
    }

    /// [`Reconciler::healthy`] for a real whose configuration is at hand (no search).
    fn is_up(&self, key: &RealKey, unprobed: bool) -> bool {
        unprobed || self.health.get(key).copied().unwrap_or(false)
    }

    /// Returns: the weight real `key` has now (runtime override, else the file's).
    fn weight_of(&self, key: &RealKey, file_weight: u32) -> u32 {
        self.overrides
            .get(key)
            .and_then(|o| o.weight)
            .unwrap_or(file_weight)
    }

    /// Returns: the Maglev backends of `vs` now: its healthy, enabled reals of weight
    /// above 0, or else its sorry server.
    fn backends(&self, vs: &VirtualServer) -> Vec<maglev::Backend> {
        let mut out: Vec<maglev::Backend> = vs
            .real_servers
            .iter()
            .filter_map(|r| {
                let key = RealKey::real(&vs.name, r.address, r.port);
                let weight = self.weight_of(&key, r.weight);
                let disabled = self.overrides.get(&key).is_some_and(|o| o.disabled);
                let up = self.is_up(&key, r.health_check.kind == CheckType::None);
                if weight == 0 || disabled || !up {
                    return None;
                }
                Some(maglev::Backend {
                    id: self.reals.get(&key)?.id,
                    identity: format!("{}:{}", r.address, r.port).into_bytes(),
                    weight,
                })
            })
            .collect();
        if out.is_empty() {
            if let Some(s) = vs.sorry_server {
                let key = RealKey::sorry(&vs.name, s.address, s.port);
                if let Some(slot) = self.reals.get(&key) {
                    out.push(maglev::Backend {
                        id: slot.id,
                        identity: format!("sorry:{}:{}", s.address, s.port).into_bytes(),
                        weight: 1,
                    });
                }
            }
        }
        out
    }

    /// Returns: what an operator sees of every real and sorry server of `vs`.
    pub fn real_views(&self, vs: &str) -> Vec<RealView> {
        let Some(slot) = self.vss.get(vs) else {
            return Vec::new();
        };
        let table: std::collections::HashSet<u32> =
            self.backends(&slot.cfg).iter().map(|b| b.id).collect();
        let mut out: Vec<RealView> = slot
            .cfg
            .real_servers
            .iter()
            .filter_map(|r| {
                let key = RealKey::real(vs, r.address, r.port);
                let slot = self.reals.get(&key)?;
                let id = slot.id;
                Some(RealView {
                    generation: slot.info.generation,
                    file_weight: r.weight,
                    weight: self.weight_of(&key, r.weight),
                    healthy: self.is_up(&key, r.health_check.kind == CheckType::None),
                    disabled: self.overrides.get(&key).is_some_and(|o| o.disabled),
                    in_table: table.contains(&id),
                    key,
                    id,
                })
            })
            .collect();
        if let Some(s) = slot.cfg.sorry_server {
            let key = RealKey::sorry(vs, s.address, s.port);
            if let Some(r) = self.reals.get(&key) {
                out.push(RealView {
                    id: r.id,
                    generation: r.info.generation,
                    file_weight: 0,
                    weight: 0,
                    healthy: true,
                    disabled: false,
                    in_table: table.contains(&r.id),
                    key,
                });
            }
        }
        out
    }

    fn real_info(&self, addr: IpAddr, port: u16, generation: u32) -> RealInfo {
        let (words, family) = addr_words(addr);
        let hop = self.next_hops.get(&addr).copied().unwrap_or_default();
        RealInfo {
            addr: words,
            mac: hop.mac,
            port_be: port.to_be(),
            ifindex: hop.ifindex,
            generation,
            flags: 0,
            family,
            _pad: [0; 3],
        }
    }

    /// Records where `addr` is reached and rewrites the reals at that address.
    pub fn set_next_hop(&mut self, addr: IpAddr, hop: L2Next) -> Result<(), ReconcileError> {
        if self.next_hops.get(&addr) == Some(&hop) {
            return Ok(());
        }
        self.next_hops.insert(addr, hop);
        for (key, slot) in self.reals.iter_mut().filter(|(k, _)| k.addr == addr) {
            slot.info.mac = hop.mac;
            slot.info.ifindex = hop.ifindex;
            self.dp.set_real(slot.id, &slot.info)?;
            tracing::info!(real = %key.addr, vs = %key.vs, ifindex = hop.ifindex, mac = %fmt_mac(&hop.mac), "real server next hop updated");
        }
        Ok(())
    }

    /// Records the probed health of real `key` and updates its table.
    /// Returns: whether anything changed.
    pub fn set_health(&mut self, key: &RealKey, healthy: bool) -> Result<bool, ReconcileError> {
        if !self.reals.contains_key(key) || self.health.get(key) == Some(&healthy) {
            return Ok(false);
        }
        self.health.insert(key.clone(), healthy);
        self.sync(Some(&key.vs))?;
        Ok(true)
    }

    /// Sets or clears the runtime override of real `key` (`None`: back to the file).
    /// Returns: `false` when no such real exists.
    pub fn set_override(
        &mut self,
        key: &RealKey,
        change: Option<Override>,
    ) -> Result<bool, ReconcileError> {
        if key.sorry || !self.reals.contains_key(key) {
            return Ok(false);
        }
        match change {
            Some(o) => self.overrides.insert(key.clone(), o),
            None => self.overrides.remove(key),
        };
        self.sync(Some(&key.vs))?;
        Ok(true)
    }

    /// Returns: the runtime override of `key`, if any.
    pub fn override_of(&self, key: &RealKey) -> Option<Override> {
        self.overrides.get(key).copied()
    }

    /// Returns: the file's weight of real `key`, if it is configured.
    pub fn file_weight(&self, key: &RealKey) -> Option<u32> {
        self.vss.get(&key.vs).and_then(|v| {
            v.cfg
                .real_servers
                .iter()
                .find(|r| r.address == key.addr && r.port == key.port)
                .map(|r| r.weight)
        })
    }

    /// Returns: the flags real `key` should carry now, given its virtual server's
    /// backends (`table`: the ids in the table).
    fn wanted_flags(&self, key: &RealKey, id: u32, table: &[maglev::Backend]) -> u32 {
        let mut f = 0;
        if self.healthy(key) {
            f |= REAL_F_ACTIVE;
        }
        if table.iter().any(|b| b.id == id) {
            f |= REAL_F_NEW;
        }
        f
    }

    /// Brings reals' flags and tables in line with the state, for one virtual server
    /// or all, in the order the module documents (steps 1-3).
    fn sync(&mut self, only: Option<&str>) -> Result<(), ReconcileError> {
        let names: Vec<String> = match only {
            Some(n) => vec![n.to_string()],
            None => self.vss.keys().cloned().collect(),
        };
        let mut plans = Vec::new();
        for name in &names {
            let Some(slot) = self.vss.get(name) else {
                continue;
            };
            let table = self.backends(&slot.cfg);
            let flags: Vec<(RealKey, u32)> = self
                .reals
                .iter()
                .filter(|(k, _)| &k.vs == name)
                .map(|(k, r)| (k.clone(), self.wanted_flags(k, r.id, &table)))
                .collect();
            plans.push((name.clone(), table, flags));
        }
        // 1. Gains first.
        for (_, _, flags) in &plans {
            for (key, want) in flags {
                let slot = self.reals.get_mut(key).expect("listed above");
                let gained = want & !slot.info.flags;
                if gained != 0 {
                    slot.info.flags |= gained;
                    self.dp.set_real(slot.id, &slot.info)?;
                }
            }
        }
        // 2. Tables.
        for (name, table, _) in &plans {
            self.install_table(name, table)?;
        }
        // 3. Losses.
        for (_, _, flags) in &plans {
            for (key, want) in flags {
                let lost = self.reals[key].info.flags & !want;
                if lost != 0 {
                    self.clear_flags(key, lost)?;
                }
            }
        }
        Ok(())
    }

    /// Clears `flags` of real `key`; losing `REAL_F_ACTIVE` also gives it a new
    /// generation, so that nothing pinned to it before comes back to it.
    fn clear_flags(&mut self, key: &RealKey, flags: u32) -> Result<(), ReconcileError> {
        let slot = self.reals.get_mut(key).expect("caller checked");
        slot.info.flags &= !flags;
        if flags & REAL_F_ACTIVE != 0 {
            let g = &mut self.generations[slot.id as usize];
            *g = g.wrapping_add(1);
            slot.info.generation = *g;
        }
        self.dp.set_real(slot.id, &slot.info)?;
        Ok(())
    }

    /// Makes the data path match `config` (reals keep their health and, unless the
    /// file changed their weight, their runtime overrides). On error the data path
    /// may hold part of the change; every step leaves it consistent (each table swap
    /// is atomic).
    pub fn apply(&mut self, config: &Config) -> Result<(), ReconcileError> {
        self.check_capacity(config)?;
        // Reals and sorry servers the file wants, with their port.
        let mut wanted_reals: Vec<RealKey> = Vec::new();
        for vs in &config.virtual_servers {
            for r in &vs.real_servers {
                wanted_reals.push(RealKey::real(&vs.name, r.address, r.port));
            }
            if let Some(s) = vs.sorry_server {
                wanted_reals.push(RealKey::sorry(&vs.name, s.address, s.port));
            }
        }
        // Overrides made against a weight the file no longer has are dropped.
        for vs in &config.virtual_servers {
            for r in &vs.real_servers {
                let key = RealKey::real(&vs.name, r.address, r.port);
                if self
                    .overrides
                    .get(&key)
                    .is_some_and(|o| o.file_weight != r.weight)
                {
                    self.overrides.remove(&key);
                    tracing::info!(vs = %vs.name, real = %r.address, port = r.port, weight = r.weight, "the file changed this real's weight: runtime override dropped");
                }
            }
        }
        // 1. New reals, not yet in any table (no flags).
        for key in &wanted_reals {
            if self.reals.contains_key(key) {
                continue;
            }
            let id = self.free_reals.pop().ok_or(ReconcileError::Capacity {
                what: "real servers",
                max: MAX_REALS,
            })?;
            self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
            let info = self.real_info(key.addr, key.port, self.generations[id as usize]);
            self.dp.reset_counters(None, Some(id))?;
            self.dp.set_real(id, &info)?;
            self.reals.insert(key.clone(), RealSlot { id, info });
        }
        // A real whose probe was turned on keeps serving until the probe says otherwise.
        for vs in &config.virtual_servers {
            for r in &vs.real_servers {
                let key = RealKey::real(&vs.name, r.address, r.port);
                if r.health_check.kind != CheckType::None
                    && !self.health.contains_key(&key)
                    && self.healthy(&key)
                {
                    self.health.insert(key, true);
                }
            }
        }
        // NAT reply handling is switched on before the first NAT virtual server appears,
        // and off only after the last one is gone.
        let settings = if config
            .virtual_servers
            .iter()
            .any(|v| v.method == Method::Nat)
        {
            SETTING_NAT
        } else {
            0
        };
        self.set_settings(self.settings | settings)?;
        // 2. Virtual servers: slots for new ones, configurations recorded; then reals'
        // flags and tables.
        for vs in &config.virtual_servers {
            self.prepare_vs(vs)?;
        }
        let wanted: HashMap<&str, &VirtualServer> = config
            .virtual_servers
            .iter()
            .map(|v| (v.name.as_str(), v))
            .collect();
        let gone_vs: Vec<String> = self
            .vss
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        // Reals leaving a virtual server that stays first leave its table.
        let gone_reals: Vec<RealKey> = self
            .reals
            .keys()
            .filter(|k| !wanted_reals.contains(k))
            .cloned()
            .collect();
        for name in config.virtual_servers.iter().map(|v| v.name.clone()) {
            self.sync(Some(&name))?;
        }
        // 3. Removals.
        for name in gone_vs {
            let slot = self.vss.remove(&name).expect("listed above");
            self.release_vs(slot)?;
            tracing::info!(vs = %name, "virtual server removed");
        }
        for key in gone_reals {
            // A real that already lost REAL_F_ACTIVE had its generation retired then.
            let left = self.reals[&key].info.flags;
            if left != 0 {
                self.clear_flags(&key, left)?;
            }
            let slot = self.reals.remove(&key).expect("listed above");
            self.health.remove(&key);
            self.overrides.remove(&key);
            self.free_reals.insert(0, slot.id); // reused last: stale flow state ages out first
            let what = if key.sorry {
                "sorry server removed"
            } else {
                "real server removed"
            };
            tracing::info!(vs = %key.vs, real = %key.addr, port = key.port, "{what}");
        }
        self.set_settings(settings)?;
        Ok(())
    }

    /// Takes a virtual server out of the data path and returns its index and rings to
    /// the free pools (the rings keep their shadows, so reuse writes only changes).
    fn release_vs(&mut self, slot: VsSlot) -> Result<(), ReconcileError> {
        self.dp.remove_vs(&slot.key)?;
        self.free_vs.push(slot.vs_index);
        self.free_rings.extend(slot.rings);
        Ok(())
    }

    fn check_capacity(&self, config: &Config) -> Result<(), ReconcileError> {
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
    /// protocol changed) and records its configuration. Its table is written by `sync`.
    fn prepare_vs(&mut self, vs: &VirtualServer) -> Result<(), ReconcileError> {
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
        if let Some(slot) = self.vss.get(&vs.name) {
            if slot.key != key {
                // Same name, other VIP/port/protocol: a different service; replace it.
                let old = self.vss.remove(&vs.name).expect("present");
                self.release_vs(old)?;
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
        self.dp.reset_counters(Some(vs_index), None)?;
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
    /// live one already is exactly that.
    fn install_table(
        &mut self,
        name: &str,
        backends: &[maglev::Backend],
    ) -> Result<(), ReconcileError> {
        let slot = self.vss.get(name).expect("prepared");
        let table = maglev::build(backends, slot.cfg.table_size);
        let live_ring = slot.rings[slot.live];
        if self.ring_shadow.get(&live_ring) == Some(&table) {
            if slot.dirty {
                // Same table, new parameters: the value alone is replaced.
                let info = VsInfo {
                    vs_index: slot.vs_index,
                    ring_id: live_ring,
                    ..slot.params
                };
                self.dp.set_vs(&slot.key, &info)?;
                self.vss.get_mut(name).expect("prepared").dirty = false;
            }
            return Ok(());
        }
        let idle = 1 - slot.live;
        let ring = slot.rings[idle];
        let shadow = self.ring_shadow.get(&ring);
        let changed: Vec<(u32, u32)> = table
            .iter()
            .enumerate()
            .filter(|(i, id)| shadow.and_then(|s| s.get(*i)) != Some(id))
            .map(|(i, &id)| (i as u32, id))
            .collect();
        self.dp.set_ring_slots(ring, &changed)?;
        let info = VsInfo {
            vs_index: slot.vs_index,
            ring_id: ring,
            ..slot.params
        };
        self.dp.set_vs(&slot.key, &info)?;
        let slot = self.vss.get_mut(name).expect("prepared");
        slot.live = idle;
        slot.dirty = false;
        let cfg = &slot.cfg;
        tracing::info!(
            vs = %cfg.name, vip = %cfg.address, port = cfg.port, protocol = %cfg.protocol, method = %cfg.method,
            reals = cfg.real_servers.len(), in_table = backends.len(), slots_written = changed.len(), ring, "virtual server table installed"
        );
        self.ring_shadow.insert(ring, table);
        Ok(())
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lb_common::NO_REAL;

    use super::*;
    use crate::{
        config::{self, SystemFacts},
        dataplane::memory::MemoryDataplane,
    };

    struct Facts;
    impl SystemFacts for Facts {
        fn interface_exists(&self, _: &str) -> bool {
            true
        }
    }

    /// One virtual server with `extra` YAML lines (indented as its fields) and reals.
    fn cfg_with(extra: &str, reals: &[(&str, u32)]) -> Config {
        let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    table_size: 1009\n");
        t.push_str(extra);
        t.push_str("    real_servers:\n");
        for (a, w) in reals {
            t.push_str(&format!("      - {{ address: {a}, weight: {w} }}\n"));
        }
        config::parse(Path::new("t.yaml"), &t, &Facts).unwrap()
    }

    /// Unprobed reals: healthy from the start.
    fn cfg(reals: &[(&str, u32)]) -> Config {
        cfg_with("    health_check: { type: none }\n", reals)
    }

    fn rk(a: &str) -> RealKey {
        RealKey::real("web", a.parse().unwrap(), 80)
    }

    fn ids_in_table(r: &Reconciler<MemoryDataplane>) -> std::collections::BTreeSet<u32> {
        r.dp.table(&key())
            .unwrap()
            .into_iter()
            .filter(|&i| i != NO_REAL)
            .collect()
    }

    fn key() -> VsKey {
        VsKey::new("10.0.0.100".parse().unwrap(), 80, 6)
    }

    #[test]
    fn apply_installs_a_table_of_the_configured_reals() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
        let t = r.dp.table(&key()).unwrap();
        assert_eq!(t.len(), 1009);
        let ids: std::collections::HashSet<u32> = t.iter().copied().collect();
        assert_eq!(ids.len(), 2);
        for id in ids {
            assert_eq!(r.dp.reals[&id].flags & REAL_F_ACTIVE, REAL_F_ACTIVE);
        }
    }

    #[test]
    fn a_change_goes_to_the_idle_ring_and_flips() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
        let ring0 = r.dp.vs[&key()].ring_id;
        let before = r.dp.table(&key()).unwrap();
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 1)]))
            .unwrap();
        let ring1 = r.dp.vs[&key()].ring_id;
        assert_ne!(ring0, ring1, "new table must be written to the other ring");
        // The old ring is untouched until the next change.
        let old: Vec<u32> = (0..1009)
            .map(|s| r.dp.rings[&(ring0 * lb_common::RING_STRIDE + s)])
            .collect();
        assert_eq!(old, before);
        // Same config again: nothing written, nothing flipped.
        let writes = r.dp.slot_writes;
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 1)]))
            .unwrap();
        assert_eq!(r.dp.slot_writes, writes);
        assert_eq!(r.dp.vs[&key()].ring_id, ring1);
        // A third change writes only the slots that differ from that ring's old content.
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
        assert_eq!(r.dp.vs[&key()].ring_id, ring0);
        assert_eq!(
            r.dp.slot_writes, writes,
            "ring0 already held exactly this table"
        );
    }

    #[test]
    fn removed_real_is_inactive_and_kept_ids_are_stable() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
        let k1 = RealKey::real("web", "10.0.1.1".parse().unwrap(), 80);
        let k2 = RealKey::real("web", "10.0.1.2".parse().unwrap(), 80);
        let (id1, id2) = (r.real_id(&k1).unwrap(), r.real_id(&k2).unwrap());
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        assert_eq!(r.real_id(&k1), Some(id1));
        assert_eq!(r.dp.reals[&id2].flags & REAL_F_ACTIVE, 0);
        assert!(r.dp.table(&key()).unwrap().iter().all(|&id| id == id1));
    }

    #[test]
    fn zero_weight_leaves_the_table_but_stays_active() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 0)])).unwrap();
        let id2 = r
            .real_id(&RealKey::real("web", "10.0.1.2".parse().unwrap(), 80))
            .unwrap();
        assert!(!r.dp.table(&key()).unwrap().contains(&id2));
        assert_eq!(
            r.dp.reals[&id2].flags & REAL_F_ACTIVE,
            REAL_F_ACTIVE,
            "drained, not removed"
        );
        r.apply(&cfg(&[("10.0.1.1", 0), ("10.0.1.2", 0)])).unwrap();
        assert!(r.dp.table(&key()).unwrap().iter().all(|&id| id == NO_REAL));
    }

    #[test]
    fn next_hop_updates_reach_the_real() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        let hop = L2Next {
            ifindex: 7,
            mac: [2, 0, 0, 0, 0, 1],
        };
        r.set_next_hop("10.0.1.1".parse().unwrap(), hop).unwrap();
        let id = r
            .real_id(&RealKey::real("web", "10.0.1.1".parse().unwrap(), 80))
            .unwrap();
        assert_eq!((r.dp.reals[&id].ifindex, r.dp.reals[&id].mac), (7, hop.mac));
    }

    #[test]
    fn nat_reply_lookup_is_switched_on_only_while_a_nat_vs_exists() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        assert_eq!(r.dp.settings, 0);
        let nat = "interfaces: [eth0]\nvirtual_servers:\n  - { name: n, address: 10.0.0.1, port: 80, protocol: tcp, method: nat, health_check: { type: none }, real_servers: [{ address: 10.0.1.1, port: 8080 }] }\n";
        r.apply(&config::parse(Path::new("t.yaml"), nat, &Facts).unwrap())
            .unwrap();
        assert_eq!(r.dp.settings, SETTING_NAT);
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        assert_eq!(r.dp.settings, 0);
    }

    #[test]
    fn probed_reals_start_out_of_the_table_and_enter_when_healthy() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg_with("", &[("10.0.1.1", 1), ("10.0.1.2", 1)]))
            .unwrap();
        assert!(ids_in_table(&r).is_empty(), "no real is healthy yet");
        let (id1, id2) = (
            r.real_id(&rk("10.0.1.1")).unwrap(),
            r.real_id(&rk("10.0.1.2")).unwrap(),
        );
        assert_eq!(r.dp.reals[&id1].flags, 0);
        assert!(r.set_health(&rk("10.0.1.1"), true).unwrap());
        assert_eq!(ids_in_table(&r), [id1].into());
        assert_eq!(r.dp.reals[&id1].flags, REAL_F_ACTIVE | REAL_F_NEW);
        r.set_health(&rk("10.0.1.2"), true).unwrap();
        assert_eq!(ids_in_table(&r), [id1, id2].into());
        assert!(!r.set_health(&rk("10.0.1.2"), true).unwrap(), "no change");
    }

    #[test]
    fn a_failed_real_leaves_the_table_and_its_generation_is_retired() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        let c = cfg_with("", &[("10.0.1.1", 1), ("10.0.1.2", 1)]);
        r.apply(&c).unwrap();
        r.set_health(&rk("10.0.1.1"), true).unwrap();
        r.set_health(&rk("10.0.1.2"), true).unwrap();
        let id2 = r.real_id(&rk("10.0.1.2")).unwrap();
        let gen = r.dp.reals[&id2].generation;
        r.set_health(&rk("10.0.1.2"), false).unwrap();
        assert!(!ids_in_table(&r).contains(&id2));
        assert_eq!(r.dp.reals[&id2].flags, 0);
        assert_ne!(
            r.dp.reals[&id2].generation, gen,
            "flows pinned to it must not return"
        );
        // A reload keeps the health it learnt.
        r.apply(&c).unwrap();
        assert!(!ids_in_table(&r).contains(&id2));
        r.set_health(&rk("10.0.1.2"), true).unwrap();
        assert!(ids_in_table(&r).contains(&id2));
    }

    #[test]
    fn weight_zero_drains_active_without_new_flows() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
        let id2 = r.real_id(&rk("10.0.1.2")).unwrap();
        let gen = r.dp.reals[&id2].generation;
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 0)])).unwrap();
        assert_eq!(
            r.dp.reals[&id2].flags, REAL_F_ACTIVE,
            "draining: no REAL_F_NEW"
        );
        assert_eq!(r.dp.reals[&id2].generation, gen, "its flows go on");
    }

    #[test]
    fn the_sorry_server_fills_the_table_only_while_no_real_takes_flows() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        let c = cfg_with(
            "    sorry_server: { address: 10.0.9.9 }\n",
            &[("10.0.1.1", 1)],
        );
        r.apply(&c).unwrap();
        let sorry = RealKey::sorry("web", "10.0.9.9".parse().unwrap(), 80);
        let sid = r.real_id(&sorry).unwrap();
        assert_eq!(ids_in_table(&r), [sid].into());
        r.set_health(&rk("10.0.1.1"), true).unwrap();
        let id1 = r.real_id(&rk("10.0.1.1")).unwrap();
        assert_eq!(ids_in_table(&r), [id1].into());
        assert_eq!(
            r.dp.reals[&sid].flags, REAL_F_ACTIVE,
            "its own flows finish"
        );
        r.set_health(&rk("10.0.1.1"), false).unwrap();
        assert_eq!(ids_in_table(&r), [sid].into());
        // Without a sorry server: an empty table (new flows dropped and counted).
        r.apply(&cfg_with("", &[("10.0.1.1", 1)])).unwrap();
        assert!(ids_in_table(&r).is_empty());
        assert_eq!(r.real_id(&sorry), None);
    }

    #[test]
    fn overrides_drain_and_reweight_until_the_file_changes_the_weight() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        let c = cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)]);
        r.apply(&c).unwrap();
        let id2 = r.real_id(&rk("10.0.1.2")).unwrap();
        let disable = Override {
            weight: None,
            disabled: true,
            file_weight: 1,
        };
        assert!(r.set_override(&rk("10.0.1.2"), Some(disable)).unwrap());
        assert!(!ids_in_table(&r).contains(&id2));
        assert_eq!(r.dp.reals[&id2].flags, REAL_F_ACTIVE);
        // Same file again: the override stays.
        r.apply(&c).unwrap();
        assert!(!ids_in_table(&r).contains(&id2));
        // The file changes that real's weight: the file wins.
        r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 3)])).unwrap();
        assert!(ids_in_table(&r).contains(&id2));
        assert_eq!(r.override_of(&rk("10.0.1.2")), None);
        // A weight override changes the share.
        let w = Override {
            weight: Some(1),
            disabled: false,
            file_weight: 3,
        };
        r.set_override(&rk("10.0.1.2"), Some(w)).unwrap();
        let t = r.dp.table(&key()).unwrap();
        let share = t.iter().filter(|&&i| i == id2).count() as f64 / t.len() as f64;
        assert!((share - 0.5).abs() < 0.02, "share {share}");
        assert!(
            !r.set_override(&rk("10.9.9.9"), None).unwrap(),
            "unknown real"
        );
    }

    #[test]
    fn persistence_reaches_the_virtual_server_value() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        assert_eq!(r.dp.vs[&key()].persist_timeout_ns, 0);
        let ring = r.dp.vs[&key()].ring_id;
        r.apply(&cfg_with(
            "    health_check: { type: none }\n    persistence: { timeout: 300s, netmask: 24 }\n",
            &[("10.0.1.1", 1)],
        ))
        .unwrap();
        let v = r.dp.vs[&key()];
        assert_eq!(v.persist_timeout_ns, 300_000_000_000);
        assert_eq!(v.persist_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(v.ring_id, ring, "same table: only the value is rewritten");
    }
}
