//! Keeps the data path equal to the configuration: ids for virtual servers and reals,
//! Maglev tables, and the order of writes that keeps every packet's view consistent.
//!
//! Order of an apply, so that the data path never follows a reference to something
//! not yet written:
//! 1. new and changed reals are written (REALS);
//! 2. each changed table is written into its virtual server's *idle* ring, changed
//!    slots only, then the virtual server's value is replaced to point at it (one
//!    atomic map update);
//! 3. virtual servers that went away are removed, and only then are reals that went
//!    away marked inactive (flows pinned to them are re-steered by the data path).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::{
    maps::MAX_REALS, user::addr_words, RealInfo, VsInfo, VsKey, METHOD_DR, METHOD_NAT,
    METHOD_TUNNEL, REAL_F_ACTIVE, SETTING_NAT,
};

use crate::{
    config::{Config, Method, VirtualServer},
    dataplane::{Dataplane, DataplaneError},
    maglev,
};

/// Where a real server's frames go: learnt from the kernel's routes and neighbours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Next {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A real server in a virtual server: its identity in the reconciler.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealKey {
    pub vs: String,
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Debug)]
struct VsSlot {
    key: VsKey,
    vs_index: u32,
    rings: [u32; 2],
    /// Index into `rings` of the ring the data path reads.
    live: usize,
    size: u32,
    method: u8,
    tunnel_src: [u32; 4],
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
    pub dp: D,
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
        }
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
                    .is_some_and(|s| (s.method == METHOD_DR) == dr)
            })
            .map(|k| k.addr)
            .collect();
        v.sort();
        v.dedup();
        v
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
            flags: REAL_F_ACTIVE,
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

    /// Makes the data path match `config`. On error the data path may hold part of the
    /// change; every step leaves it consistent (each table swap is atomic).
    pub fn apply(&mut self, config: &Config) -> Result<(), ReconcileError> {
        self.check_capacity(config)?;
        // 1. Reals: add new ones, keep existing ids.
        for vs in &config.virtual_servers {
            for r in &vs.real_servers {
                let key = RealKey {
                    vs: vs.name.clone(),
                    addr: r.address,
                    port: r.port,
                };
                if self.reals.contains_key(&key) {
                    continue;
                }
                let id = self.free_reals.pop().ok_or(ReconcileError::Capacity {
                    what: "real servers",
                    max: MAX_REALS,
                })?;
                self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
                let info = self.real_info(r.address, r.port, self.generations[id as usize]);
                self.dp.reset_counters(None, Some(id))?;
                self.dp.set_real(id, &info)?;
                self.reals.insert(key, RealSlot { id, info });
            }
        }
        // 2. Tables. NAT reply handling is switched on before the first NAT virtual
        // server appears, and off only after the last one is gone (step 3).
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
        for vs in &config.virtual_servers {
            self.apply_vs(vs)?;
        }
        // 3. Removals.
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
        for name in gone_vs {
            let slot = self.vss.remove(&name).expect("listed above");
            self.release_vs(slot)?;
            tracing::info!(vs = %name, "virtual server removed");
        }
        let gone_reals: Vec<RealKey> = self
            .reals
            .keys()
            .filter(|k| {
                !wanted.get(k.vs.as_str()).is_some_and(|vs| {
                    vs.real_servers
                        .iter()
                        .any(|r| r.address == k.addr && r.port == k.port)
                })
            })
            .cloned()
            .collect();
        for key in gone_reals {
            let mut slot = self.reals.remove(&key).expect("listed above");
            slot.info.flags &= !REAL_F_ACTIVE;
            self.dp.set_real(slot.id, &slot.info)?;
            self.free_reals.insert(0, slot.id); // reused last: stale flow state ages out first
            tracing::info!(vs = %key.vs, real = %key.addr, port = key.port, "real server removed");
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

    fn apply_vs(&mut self, vs: &VirtualServer) -> Result<(), ReconcileError> {
        let (words, family) = addr_words(vs.address);
        let key = VsKey {
            addr: words,
            port_be: vs.port.to_be(),
            proto: vs.protocol.number(),
            family,
        };
        let backends: Vec<maglev::Backend> = vs
            .real_servers
            .iter()
            .map(|r| {
                let id = self.reals[&RealKey {
                    vs: vs.name.clone(),
                    addr: r.address,
                    port: r.port,
                }]
                    .id;
                maglev::Backend {
                    id,
                    identity: format!("{}:{}", r.address, r.port).into_bytes(),
                    weight: r.weight,
                }
            })
            .collect();
        let table = maglev::build(&backends, vs.table_size);
        let method = method_code(vs.method);
        let tunnel_src = vs
            .tunnel_source
            .map(|a| addr_words(a).0)
            .unwrap_or_default();

        if let Some(slot) = self.vss.get(&vs.name) {
            if slot.key != key {
                // Same name, other VIP/port/protocol: a different service; replace it.
                let old = self.vss.remove(&vs.name).expect("present");
                self.release_vs(old)?;
            }
        }
        let is_new = !self.vss.contains_key(&vs.name);
        if is_new {
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
                    size: 0,
                    method,
                    tunnel_src,
                },
            );
        }
        let slot = self.vss.get_mut(&vs.name).expect("inserted above");
        let live_ring = slot.rings[slot.live];
        let same_params =
            slot.size == vs.table_size && slot.method == method && slot.tunnel_src == tunnel_src;
        if !is_new && same_params && self.ring_shadow.get(&live_ring) == Some(&table) {
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
            ring_size: vs.table_size,
            method,
            flags: 0,
            _pad: [0; 2],
            tunnel_src,
        };
        self.dp.set_vs(&key, &info)?;
        slot.live = idle;
        slot.size = vs.table_size;
        slot.method = method;
        slot.tunnel_src = tunnel_src;
        self.ring_shadow.insert(ring, table);
        tracing::info!(
            vs = %vs.name, vip = %vs.address, port = vs.port, protocol = %vs.protocol, method = %vs.method,
            reals = vs.real_servers.len(), slots_written = changed.len(), ring, "virtual server table installed"
        );
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

    fn cfg(reals: &[(&str, u32)]) -> Config {
        let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    table_size: 1009\n    real_servers:\n");
        for (a, w) in reals {
            t.push_str(&format!("      - {{ address: {a}, weight: {w} }}\n"));
        }
        config::parse(Path::new("t.yaml"), &t, &Facts).unwrap()
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
        let k1 = RealKey {
            vs: "web".into(),
            addr: "10.0.1.1".parse().unwrap(),
            port: 80,
        };
        let k2 = RealKey {
            vs: "web".into(),
            addr: "10.0.1.2".parse().unwrap(),
            port: 80,
        };
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
            .real_id(&RealKey {
                vs: "web".into(),
                addr: "10.0.1.2".parse().unwrap(),
                port: 80,
            })
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
            .real_id(&RealKey {
                vs: "web".into(),
                addr: "10.0.1.1".parse().unwrap(),
                port: 80,
            })
            .unwrap();
        assert_eq!((r.dp.reals[&id].ifindex, r.dp.reals[&id].mac), (7, hop.mac));
    }

    #[test]
    fn nat_reply_lookup_is_switched_on_only_while_a_nat_vs_exists() {
        let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        assert_eq!(r.dp.settings, 0);
        let nat = "interfaces: [eth0]\nvirtual_servers:\n  - { name: n, address: 10.0.0.1, port: 80, protocol: tcp, method: nat, real_servers: [{ address: 10.0.1.1, port: 8080 }] }\n";
        r.apply(&config::parse(Path::new("t.yaml"), nat, &Facts).unwrap())
            .unwrap();
        assert_eq!(r.dp.settings, SETTING_NAT);
        r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
        assert_eq!(r.dp.settings, 0);
    }
}
