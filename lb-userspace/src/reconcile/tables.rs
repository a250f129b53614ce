//! Virtual servers in the data path and their Maglev tables (decisions 0001 and 0013):
//! each virtual server's index, the ring the data path reads for it, the `VS_MAP` value
//! last written; the spare rings new tables are written into before they go live; a
//! shadow of every ring, so that a new table is written as the slots that changed; and
//! the free indexes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use lb_common::{
    user::{addr_words, mask_words},
    VsInfo, VsKey, METHOD_DR, METHOD_NAT, METHOD_TUNNEL, REAL_F_PLAIN_DR, REAL_F_PLAIN_NAT,
    REAL_F_PLAIN_PERSIST, REAL_F_PLAIN_TUNNEL,
};

use super::ReconcileError;
use crate::{
    config::{Config, Method, VirtualServer},
    dataplane::Dataplane,
    maglev,
};

/// How long a ring one virtual server left rests before it takes another table. A
/// packet that read the old `VS_MAP` value just before the switch may still read a
/// slot of the ring it named; one XDP run lasts microseconds, so after this no packet
/// does (decision 0013).
const REST: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct VsSlot {
    key: VsKey,
    vs_index: u32,
    /// The ring the data path reads (`None` until the first table is installed).
    ring: Option<u32>,
    /// Everything of the live `VsInfo` but its ring (to tell whether it must be
    /// rewritten).
    params: VsInfo,
    /// The configuration this slot was last applied from.
    cfg: VirtualServer,
    /// The value must be written even if the table is unchanged (new virtual server,
    /// or parameters changed).
    dirty: bool,
    /// Its reals and table must be brought in line with `cfg` on the next apply (new,
    /// its configuration changed, or its last sync did not finish).
    stale: bool,
    /// The backends (identity, weight, id) and size the live table was built from: an
    /// equal set gives an equal table, which is then neither rebuilt nor rewritten.
    built: Option<(u32, BuiltFrom)>,
}

/// What a table is built from: (identity, weight, id) of each backend, sorted.
type BuiltFrom = Vec<(Vec<u8>, u32, u32)>;

/// Returns: what a table is built from, in a form to compare.
fn built_key(backends: &[maglev::Backend]) -> BuiltFrom {
    let mut key: Vec<(Vec<u8>, u32, u32)> = backends
        .iter()
        .map(|b| (b.identity.clone(), b.weight, b.id))
        .collect();
    key.sort_unstable();
    key
}

/// A ring no virtual server reads.
#[derive(Debug)]
struct Spare {
    ring: u32,
    /// The virtual server that left it, and when (`None`: never read, or adopted).
    left: Option<(String, Instant)>,
}

/// Every virtual server in the data path, by name, and the slots free for new ones.
#[derive(Debug)]
pub(super) struct Tables {
    vss: BTreeMap<String, VsSlot>,
    /// Last contents written to each ring (slot -> real id), to write only changes;
    /// absent while unknown (never written by this daemon, or a write failed).
    shadows: HashMap<u32, Vec<u32>>,
    free_vs: Vec<u32>,
    /// Rings no virtual server reads, the longest unread first.
    spare: VecDeque<Spare>,
    /// Virtual servers that moved to another VIP, port or protocol under their name
    /// and whose reals have not all been taken out yet (see [`Tables::moved`]).
    moved: BTreeSet<String>,
}

fn method_code(m: Method) -> u8 {
    match m {
        Method::Dr => METHOD_DR,
        Method::Nat => METHOD_NAT,
        Method::Tunnel => METHOD_TUNNEL,
    }
}

/// Returns: the `REAL_F_PLAIN_*` flags of a virtual server with parameters `params`:
/// its method's (decisions 0027, 0028), with `REAL_F_PLAIN_PERSIST` if it has
/// persistence (decision 0033).
pub(super) fn plain_of(params: &VsInfo) -> u32 {
    let method = match params.method {
        METHOD_DR => REAL_F_PLAIN_DR,
        METHOD_NAT => REAL_F_PLAIN_NAT,
        METHOD_TUNNEL => REAL_F_PLAIN_TUNNEL,
        _ => return 0,
    };
    if params.persist_timeout_ns != 0 {
        method | REAL_F_PLAIN_PERSIST
    } else {
        method
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
            spare: (0..ring_count)
                .map(|ring| Spare { ring, left: None })
                .collect(),
            moved: BTreeSet::new(),
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
        let ring = self.vss.get(name)?.ring?;
        self.shadows.get(&ring).map(Vec::as_slice)
    }

    /// Returns: whether virtual server `name` forwards by direct routing.
    pub fn is_dr(&self, name: &str) -> Option<bool> {
        self.vss.get(name).map(|s| s.params.method == METHOD_DR)
    }

    /// Returns: whether virtual server `name` forwards by NAT.
    pub fn is_nat(&self, name: &str) -> bool {
        self.vss
            .get(name)
            .is_some_and(|s| s.params.method == METHOD_NAT)
    }

    /// Returns: the `REAL_F_PLAIN_*` flag the reals of virtual server `name` carry, by
    /// its parameters as the reconciler last prepared them (see [`plain_of`]); 0
    /// for no such server.
    pub fn plain_flags(&self, name: &str) -> u32 {
        self.vss.get(name).map_or(0, |s| plain_of(&s.params))
    }

    /// Returns: the `VS_MAP` key of virtual server `name`, if it has a slot.
    pub fn key(&self, name: &str) -> Option<VsKey> {
        self.vss.get(name).map(|s| s.key)
    }

    /// Returns: the protocol (`PROTO_*`) of virtual server `name` if it uses NAT.
    pub fn nat_proto(&self, name: &str) -> Option<u8> {
        self.vss
            .get(name)
            .filter(|s| s.params.method == METHOD_NAT)
            .map(|s| s.key.proto)
    }

    /// Returns: whether virtual server `name` must be synced by the next apply (it is
    /// new, its configuration changed, or its last sync failed).
    pub fn is_stale(&self, name: &str) -> bool {
        self.vss.get(name).is_none_or(|s| s.stale)
    }

    /// Records that virtual server `name`'s reals and table match its configuration.
    pub fn synced(&mut self, name: &str) {
        if let Some(s) = self.vss.get_mut(name) {
            s.stale = false;
        }
    }

    /// Refuses `config` up front when its new virtual servers would not fit: every
    /// virtual server needs an index and a ring to be read, and one spare ring must stay
    /// to write a new table into (those being removed still count: they go last).
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
        let reading = self.vss.values().filter(|s| s.ring.is_some()).count();
        let rings = reading + self.spare.len();
        let unread = self.vss.len() - reading;
        if unread + new_vs + 1 > self.spare.len() {
            return Err(ReconcileError::Rings {
                max: rings.saturating_sub(1) as u32,
            });
        }
        Ok(())
    }

    /// Makes sure virtual server `vs` has a slot (a new one if its VIP, port or
    /// protocol changed) and records its configuration (`differs`: it is not the one
    /// applied). Its table is written by [`Tables::install`].
    /// A slot replaced that way is recorded as moved ([`Tables::moved`]).
    pub fn prepare(
        &mut self,
        dp: &mut impl Dataplane,
        vs: &VirtualServer,
        differs: bool,
    ) -> Result<(), ReconcileError> {
        let (key, params) = vs_value(vs);
        if let Some(slot) = self.vss.get(&vs.name) {
            if slot.key != key {
                // Same name, other VIP/port/protocol: a different service; replace it.
                // Recorded before anything is written, so that an apply that fails
                // from here on still leaves its reals to be taken out.
                self.moved.insert(vs.name.clone());
                let old = self.vss.remove(&vs.name).expect("present");
                self.release(dp, old)?;
            }
        }
        if let Some(slot) = self.vss.get_mut(&vs.name) {
            if differs {
                slot.cfg = vs.clone();
                slot.stale = true;
            }
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
        dp.reset_counters(Some(vs_index), None)?;
        self.vss.insert(
            vs.name.clone(),
            VsSlot {
                key,
                vs_index,
                ring: None,
                params,
                cfg: vs.clone(),
                dirty: true,
                stale: true,
                built: None,
            },
        );
        Ok(())
    }

    /// Returns: the virtual servers that moved to another VIP, port or protocol under
    /// their name whose reals, the old service's, are still to be taken out.
    pub fn moved(&self) -> Vec<String> {
        self.moved.iter().cloned().collect()
    }

    /// Records that the reals of moved virtual server `name` are out.
    pub fn moved_out(&mut self, name: &str) {
        self.moved.remove(name);
    }

    /// Returns: whether virtual server `name`'s live table is the one of `backends` at
    /// `size` slots (so it need not be built again).
    pub fn is_built_from(&self, name: &str, backends: &[maglev::Backend], size: u32) -> bool {
        self.vss.get(name).is_some_and(|slot| {
            slot.ring.is_some_and(|r| self.shadows.contains_key(&r))
                && slot
                    .built
                    .as_ref()
                    .is_some_and(|(s, b)| *s == size && *b == built_key(backends))
        })
    }

    /// Installs the Maglev table of `backends` for virtual server `name` unless the
    /// live one already is exactly that: into a spare ring, changed slots only, then
    /// one `VS_MAP` update that makes it live; the ring it leaves becomes a spare.
    /// `prebuilt`: that table, if it was built already.
    pub fn install(
        &mut self,
        dp: &mut impl Dataplane,
        name: &str,
        backends: &[maglev::Backend],
        prebuilt: Option<Vec<u32>>,
    ) -> Result<(), ReconcileError> {
        let size = self.vss.get(name).expect("prepared").cfg.table_size;
        let same_set = self.is_built_from(name, backends, size);
        let slot = self.vss.get(name).expect("prepared");
        let wanted = built_key(backends);
        let live = slot.ring.filter(|r| self.shadows.contains_key(r));
        let table = match live {
            // The live table was built from these backends: it is this table.
            Some(_) if same_set => None,
            _ => Some(prebuilt.unwrap_or_else(|| maglev::build(backends, size))),
        };
        let unchanged = match (&table, live) {
            (None, Some(_)) => true,
            (Some(t), Some(r)) => self.shadows.get(&r) == Some(t),
            _ => false,
        };
        if unchanged {
            let slot = self.vss.get_mut(name).expect("prepared");
            slot.built = Some((size, wanted));
            if slot.dirty {
                // Same table, new parameters: the value alone is replaced.
                let info = VsInfo {
                    vs_index: slot.vs_index,
                    ring_id: live.expect("unchanged"),
                    ..slot.params
                };
                dp.set_vs(&slot.key, &info)?;
                slot.dirty = false;
            }
            return Ok(());
        }
        let table = table.expect("built: no live table equals it");
        let (key, info) = (
            slot.key,
            VsInfo {
                vs_index: slot.vs_index,
                ..slot.params
            },
        );
        let ring = self.take_spare(name)?;
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
        let written = dp
            .set_ring_slots(ring, &changed)
            .map_err(ReconcileError::from)
            .and_then(|()| {
                let info = VsInfo {
                    ring_id: ring,
                    ..info
                };
                Ok(dp.set_vs(&key, &info)?)
            });
        if let Err(e) = written {
            // Still no virtual server reads it: back among the spares, first in line.
            self.spare.push_front(Spare { ring, left: None });
            return Err(e);
        }
        let slot = self.vss.get_mut(name).expect("prepared");
        if let Some(old) = slot.ring.replace(ring) {
            self.spare.push_back(Spare {
                ring: old,
                left: Some((name.to_string(), Instant::now())),
            });
        }
        slot.dirty = false;
        slot.built = Some((size, wanted));
        let cfg = &slot.cfg;
        tracing::info!(
            vs = %cfg.name, vip = %cfg.address, port = cfg.port, protocol = %cfg.protocol, method = %cfg.method,
            reals = cfg.real_servers.len(), in_table = backends.len(), slots_written = changed.len(), ring, "virtual server table installed"
        );
        self.shadows.insert(ring, table);
        Ok(())
    }

    /// Takes the spare ring virtual server `name` is to write its next table into: the
    /// one it left itself if it is still spare (its shadow is this virtual server's
    /// table before last, so few slots differ), else the one left longest ago. A ring
    /// left less than [`REST`] ago is waited for.
    fn take_spare(&mut self, name: &str) -> Result<u32, ReconcileError> {
        let own = self
            .spare
            .iter()
            .position(|s| s.left.as_ref().is_some_and(|(n, _)| n == name));
        let at = own.unwrap_or(0);
        let spare = self.spare.remove(at).ok_or(ReconcileError::Capacity {
            what: "Maglev rings",
            max: 0,
        })?;
        if let Some((_, when)) = spare.left {
            if let Some(wait) = REST.checked_sub(when.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(spare.ring)
    }

    /// Takes every virtual server that `config` no longer has out of the data path.
    pub fn remove_absent(
        &mut self,
        dp: &mut impl Dataplane,
        config: &Config,
    ) -> Result<(), ReconcileError> {
        let names: std::collections::HashSet<&str> = config
            .virtual_servers
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let gone: Vec<String> = self
            .vss
            .keys()
            .filter(|n| !names.contains(n.as_str()))
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
    /// by an earlier daemon) and live ring contents `live`; every ring no adopted
    /// virtual server reads stays spare, its contents unknown (the first table written
    /// there is written whole).
    /// Returns: an error when the found index or ring is beyond this data path's size.
    pub fn adopt(
        &mut self,
        vs: &VirtualServer,
        key: VsKey,
        info: VsInfo,
        live: Vec<u32>,
    ) -> Result<(), ReconcileError> {
        let at = self
            .free_vs
            .iter()
            .position(|&f| f == info.vs_index)
            .ok_or(ReconcileError::Adopt {
                what: "virtual server index",
                id: info.vs_index,
            })?;
        self.free_vs.remove(at);
        let at = self
            .spare
            .iter()
            .position(|s| s.ring == info.ring_id)
            .ok_or(ReconcileError::Adopt {
                what: "Maglev ring",
                id: info.ring_id,
            })?;
        self.spare.remove(at);
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
                ring: Some(info.ring_id),
                params,
                cfg: vs.clone(),
                dirty: false,
                stale: true,
                built: None,
            },
        );
        Ok(())
    }

    /// Takes a virtual server out of the data path and returns its index and ring to
    /// the free pools (the ring keeps its shadow, so reuse writes only changes).
    /// Its `VS_MAP` entry is removed unless another virtual server now holds its key
    /// (one renamed at the same VIP, port and protocol, or moved to the key it
    /// leaves), whose value that entry is or will be.
    fn release(&mut self, dp: &mut impl Dataplane, slot: VsSlot) -> Result<(), ReconcileError> {
        if !self.vss.values().any(|s| s.key == slot.key) {
            dp.remove_vs(&slot.key)?;
        }
        self.free_vs.push(slot.vs_index);
        if let Some(ring) = slot.ring {
            self.spare.push_back(Spare {
                ring,
                left: Some((slot.cfg.name.clone(), Instant::now())),
            });
        }
        Ok(())
    }
}
