//! Real ids and the `REALS` values: which id each real has, the generation each id is
//! at, the free ids, the flags each real carries and where its frames go.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use lb_common::{
    maps::MAX_REALS, user::addr_words, RealInfo, REAL_F_ACTIVE, REAL_F_BY_DEST, REAL_F_PLAIN,
    REAL_F_PLAIN_PERSIST, REAL_F_POLICY, REAL_F_SOLE_NAT, REAL_ROLE_FREE, REAL_ROLE_REAL,
    REAL_ROLE_SORRY,
};

use super::{
    model::{fmt_mac, L2Next},
    ReconcileError,
};
use crate::{dataplane::Dataplane, model::RealKey};

#[derive(Debug)]
struct RealSlot {
    id: u32,
    /// The value last written to `REALS`, or to be written (`written` false).
    info: RealInfo,
    /// `info` is in `REALS`. A new real is written with its first flags, or by
    /// [`Reals::write_new`] if it gains none.
    written: bool,
}

/// Writes `info` to `REALS` as `slot`'s value, and records it there only once it is
/// written: a write that fails leaves `slot` as it was, so the next change writes
/// again (a flag recorded but not written would never be written, and a table could
/// then name a real whose value is not in `REALS`).
fn write(
    dp: &mut impl Dataplane,
    slot: &mut RealSlot,
    info: RealInfo,
) -> Result<(), ReconcileError> {
    dp.set_real(slot.id, &info)?;
    slot.info = info;
    slot.written = true;
    Ok(())
}

/// Writes `info` as `slot`'s value if its value is in `REALS` already; otherwise only
/// records it, to be written with the real's first write (see [`Reals::add`]).
fn write_or_keep(
    dp: &mut impl Dataplane,
    slot: &mut RealSlot,
    info: RealInfo,
) -> Result<(), ReconcileError> {
    if slot.written {
        write(dp, slot, info)
    } else {
        slot.info = info;
        Ok(())
    }
}

/// Returns: the least key of virtual server `vs`'s reals (keys sort by virtual server
/// first), where a range of them starts.
fn first_of(vs: &str) -> RealKey {
    RealKey::real(vs, IpAddr::from([0u8; 4]), 0)
}

/// Every real in the data path, and the ids free for new ones.
#[derive(Debug)]
pub(super) struct Reals {
    slots: BTreeMap<RealKey, RealSlot>,
    /// The reals at each address (a next hop found rewrites them, without a walk of
    /// every real).
    at_addr: HashMap<IpAddr, Vec<RealKey>>,
    /// Free ids: taken from the back, given back at the front.
    free: VecDeque<u32>,
    /// Generation last given out for each real id.
    generations: Vec<u32>,
    /// Known next hops by real address.
    next_hops: HashMap<IpAddr, L2Next>,
    /// Real addresses whose route depends on the address alone (`REAL_F_BY_DEST`).
    by_dest: HashSet<IpAddr>,
    /// Reals added and maybe not written yet (see [`Reals::write_new`]).
    unwritten: Vec<RealKey>,
    /// Reals flagged `REAL_F_SOLE_NAT`.
    sole_nat: HashSet<RealKey>,
}

impl Reals {
    pub fn new() -> Self {
        Self {
            slots: BTreeMap::new(),
            at_addr: HashMap::new(),
            // Reversed so that pop_back() hands out 0, 1, 2, ...
            free: (0..MAX_REALS).rev().collect(),
            generations: vec![0; MAX_REALS as usize],
            next_hops: HashMap::new(),
            by_dest: HashSet::new(),
            unwritten: Vec::new(),
            sole_nat: HashSet::new(),
        }
    }

    /// Takes over the `REALS` values an earlier daemon wrote (`all`, indexed by id):
    /// every id keeps its generation; an id held by a real of a virtual server that
    /// `vs_name` names keeps its real, its flags and its next hop.
    /// Returns: the reals taken over with their flags, and the ids held by reals of
    /// virtual servers `vs_name` does not name (still to be cleared).
    pub fn adopt(
        &mut self,
        all: &[RealInfo],
        vs_name: impl Fn(u32) -> Option<String>,
    ) -> (Vec<(RealKey, u32)>, Vec<u32>) {
        let mut taken = Vec::new();
        let mut orphans = Vec::new();
        let mut free = Vec::new();
        for (id, info) in (0u32..).zip(all.iter().take(MAX_REALS as usize)) {
            self.generations[id as usize] = info.generation;
            if info.role == REAL_ROLE_FREE {
                free.push(id);
                continue;
            }
            let named = vs_name(u32::from(info.vs_index));
            let addr = lb_common::user::words_addr(info.addr, info.family);
            let (Some(vs), Some(addr)) = (named, addr) else {
                orphans.push(id);
                continue;
            };
            let port = u16::from_be(info.port_be);
            let key = if info.role == REAL_ROLE_SORRY {
                RealKey::sorry(&vs, addr, port)
            } else {
                RealKey::real(&vs, addr, port)
            };
            if info.flags & REAL_F_BY_DEST != 0 {
                self.by_dest.insert(addr);
            }
            if info.flags & REAL_F_SOLE_NAT != 0 {
                self.sole_nat.insert(key.clone());
            }
            if info.ifindex != 0 {
                let hop = L2Next {
                    ifindex: info.ifindex,
                    mac: info.mac,
                };
                self.next_hops.insert(addr, hop);
            }
            taken.push((key.clone(), info.flags));
            self.insert(
                key,
                RealSlot {
                    id,
                    info: *info,
                    written: true,
                },
            );
        }
        // Reversed so that pop_back() hands out the lowest free id first, as at start.
        free.reverse();
        self.free = free.into();
        (taken, orphans)
    }

    /// Clears real id `id`, held by a real of a virtual server that is gone, and frees
    /// it (losing `REAL_F_ACTIVE` retires its generation, as for any removed real).
    pub fn clear_orphan(
        &mut self,
        dp: &mut impl Dataplane,
        id: u32,
        mut info: RealInfo,
    ) -> Result<(), ReconcileError> {
        if info.flags & REAL_F_ACTIVE != 0 {
            info.generation = self.next_generation(id);
        }
        info.flags = 0;
        info.role = REAL_ROLE_FREE;
        dp.set_real(id, &info)?;
        self.free.push_front(id);
        Ok(())
    }

    /// Returns: the id of real `key`, if it is in the data path.
    pub fn id(&self, key: &RealKey) -> Option<u32> {
        self.slots.get(key).map(|r| r.id)
    }

    /// Returns: the id of real `key` and the generation it is at, if it is in the data
    /// path.
    pub fn id_and_generation(&self, key: &RealKey) -> Option<(u32, u32)> {
        self.slots.get(key).map(|r| (r.id, r.info.generation))
    }

    /// Returns: whether real `key` is in the data path.
    pub fn contains(&self, key: &RealKey) -> bool {
        self.slots.contains_key(key)
    }

    /// Returns: the reals of virtual server `vs` with their ids, in key order (a range
    /// of the map: keys sort by virtual server first).
    pub fn of_vs<'a>(&'a self, vs: &'a str) -> impl Iterator<Item = (&'a RealKey, u32)> {
        self.slots
            .range(first_of(vs)..)
            .take_while(move |(k, _)| k.vs == vs)
            .map(|(k, r)| (k, r.id))
    }

    /// Returns: the names of the virtual servers that have reals here, each once.
    pub fn vs_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut next = self.slots.keys().next();
        while let Some(k) = next {
            out.push(k.vs.clone());
            // The first key after every key of this virtual server.
            let after = RealKey::real(&format!("{}\0", k.vs), IpAddr::from([0u8; 4]), 0);
            next = self.slots.range(after..).next().map(|(k, _)| k);
        }
        out
    }

    /// Records real `key` in `slot`, and at its address.
    fn insert(&mut self, key: RealKey, slot: RealSlot) {
        self.at_addr.entry(key.addr).or_default().push(key.clone());
        self.slots.insert(key, slot);
    }

    /// Returns: the addresses of the reals `wanted` picks, sorted, each once.
    pub fn addresses(&self, wanted: impl Fn(&RealKey) -> bool) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .slots
            .keys()
            .filter(|k| wanted(k))
            .map(|k| k.addr)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Gives real `key` of the virtual server at `vs_index` an id at a new generation,
    /// with zeroed counters, and no flags (in no table yet) but its virtual server's
    /// `REAL_F_PLAIN_*` flag `plain` (no flow can name the new generation yet) and, for
    /// a real of a NAT virtual server (`nat`), `REAL_F_BY_DEST` if its address has it. Its value is
    /// written with the first flags it gains, before any table names it, or else by
    /// [`Reals::write_new`]: until then no table and no flow can name it at this
    /// generation, so the data path does not read it (a cold start of 100,000 reals
    /// writes each once, not twice).
    pub fn add(
        &mut self,
        dp: &mut impl Dataplane,
        key: &RealKey,
        vs_index: u32,
        nat: bool,
        plain: u32,
    ) -> Result<(), ReconcileError> {
        let id = self.free.pop_back().ok_or(ReconcileError::Capacity {
            what: "real servers",
            max: MAX_REALS,
        })?;
        // An id never handed out (generation 0, here or by an earlier daemon whose
        // maps were adopted) was never in a table, so no packet counted under it: its
        // counters need no zeroing (a cold start of 100,000 reals saves as many
        // syscalls).
        let used = self.generations[id as usize] != 0;
        let generation = self.next_generation(id);
        let info = RealInfo {
            role: if key.sorry {
                REAL_ROLE_SORRY
            } else {
                REAL_ROLE_REAL
            },
            vs_index: vs_index as u16,
            flags: plain
                | if nat && self.by_dest.contains(&key.addr) {
                    REAL_F_BY_DEST
                } else {
                    0
                },
            ..self.real_info(key.addr, key.port, generation)
        };
        if used {
            dp.reset_counters(None, Some(id))?;
        }
        self.insert(
            key.clone(),
            RealSlot {
                id,
                info,
                written: false,
            },
        );
        self.unwritten.push(key.clone());
        Ok(())
    }

    /// Writes the reals added since the last call that no flag gain wrote (those of
    /// no table yet: probes not passed, weight 0), for `xdpvs status` of a daemon
    /// that adopts the maps, and for their next hops. An error leaves the rest for
    /// the next call.
    pub fn write_new(&mut self, dp: &mut impl Dataplane) -> Result<(), ReconcileError> {
        while let Some(key) = self.unwritten.last() {
            if let Some(slot) = self.slots.get_mut(key) {
                if !slot.written {
                    write(dp, slot, slot.info)?;
                }
            }
            self.unwritten.pop();
        }
        Ok(())
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
            role: REAL_ROLE_FREE,
            vs_index: 0,
        }
    }

    /// Records that real `key` belongs to the virtual server at `vs_index`, which the
    /// data path does not read; a daemon adopting the maps does. (A virtual server that
    /// moves under its name gets its reals anew, decision 0027.)
    pub fn set_owner(
        &mut self,
        dp: &mut impl Dataplane,
        key: &RealKey,
        vs_index: u32,
    ) -> Result<(), ReconcileError> {
        let slot = self.slots.get_mut(key).expect("caller listed it");
        if u32::from(slot.info.vs_index) != vs_index {
            let info = RealInfo {
                vs_index: vs_index as u16,
                ..slot.info
            };
            write(dp, slot, info)?;
        }
        Ok(())
    }

    /// Takes from every real its `REAL_F_PLAIN_*` flags, all of them, where `plain`
    /// gives its virtual server (by name) not every flag it has, or persistence
    /// (`REAL_F_PLAIN_PERSIST`) where it has none, or none where it has it: before
    /// anything of a virtual server whose method, persistence, VIP, port or protocol
    /// changes, or that goes, is written (decisions 0027, 0033). Its flows then go
    /// through their virtual server until [`Reals::gain_plain`] gives the new flags at
    /// once, so no real ever carries a method's flag without the persistence flag its
    /// virtual server warrants.
    pub fn lose_plain(
        &mut self,
        dp: &mut impl Dataplane,
        plain: impl Fn(&str) -> u32,
    ) -> Result<(), ReconcileError> {
        for (key, slot) in self.slots.iter_mut() {
            let (have, want) = (slot.info.flags & REAL_F_PLAIN, plain(&key.vs));
            let persistence_changes = (have ^ want) & REAL_F_PLAIN_PERSIST != 0;
            let lost = if have & !want != 0 || (have != 0 && persistence_changes) {
                have
            } else {
                0
            };
            if lost == 0 {
                continue;
            }
            let info = RealInfo {
                flags: slot.info.flags & !lost,
                ..slot.info
            };
            write_or_keep(dp, slot, info)?;
        }
        Ok(())
    }

    /// Gives the reals of virtual servers `vss` the `REAL_F_PLAIN_*` flag `plain`
    /// names for their virtual server, where they lack it (decision 0027): after the
    /// virtual server's value is written. A real not written yet gets it with its
    /// first write.
    pub fn gain_plain(
        &mut self,
        dp: &mut impl Dataplane,
        vss: &[&str],
        plain: impl Fn(&str) -> u32,
    ) -> Result<(), ReconcileError> {
        for vs in vss {
            let want = plain(vs);
            if want == 0 {
                continue;
            }
            let of_vs = self
                .slots
                .range_mut(first_of(vs)..)
                .take_while(|(k, _)| k.vs == *vs);
            for (_, slot) in of_vs {
                if slot.info.flags & want == want {
                    continue;
                }
                let info = RealInfo {
                    flags: slot.info.flags | want,
                    ..slot.info
                };
                write_or_keep(dp, slot, info)?;
            }
        }
        Ok(())
    }

    /// Records where `addr` is reached and rewrites the reals at that address.
    pub fn set_next_hop(
        &mut self,
        dp: &mut impl Dataplane,
        addr: IpAddr,
        hop: L2Next,
    ) -> Result<(), ReconcileError> {
        self.next_hops.insert(addr, hop);
        for key in self.at_addr.get(&addr).into_iter().flatten() {
            let slot = self.slots.get_mut(key).expect("indexed reals exist");
            // Compared real by real, not with the hop last recorded: a write that
            // failed is tried again with the next refresh.
            if slot.info.mac == hop.mac && slot.info.ifindex == hop.ifindex {
                continue;
            }
            let info = RealInfo {
                mac: hop.mac,
                ifindex: hop.ifindex,
                ..slot.info
            };
            write(dp, slot, info)?;
            tracing::info!(real = %key.addr, vs = %key.vs, ifindex = hop.ifindex, mac = %fmt_mac(&hop.mac), "real server next hop updated");
        }
        Ok(())
    }

    /// Returns: the addresses recorded as routed by their address alone.
    pub fn by_dest_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.by_dest.iter().copied()
    }

    /// Records whether the route toward `addr` depends on the address alone, and gives
    /// the reals at that address that `marked` picks `REAL_F_BY_DEST` or takes it from
    /// them.
    pub fn set_by_dest(
        &mut self,
        dp: &mut impl Dataplane,
        addr: IpAddr,
        by_dest: bool,
        marked: impl Fn(&RealKey) -> bool,
    ) -> Result<(), ReconcileError> {
        if by_dest {
            self.by_dest.insert(addr);
        } else {
            self.by_dest.remove(&addr);
        }
        let want = if by_dest { REAL_F_BY_DEST } else { 0 };
        for key in self.at_addr.get(&addr).into_iter().flatten() {
            if !marked(key) {
                continue;
            }
            let slot = self.slots.get_mut(key).expect("indexed reals exist");
            // Compared real by real, as in `set_next_hop`.
            if slot.info.flags & REAL_F_BY_DEST == want {
                continue;
            }
            let info = RealInfo {
                flags: slot.info.flags & !REAL_F_BY_DEST | want,
                ..slot.info
            };
            write(dp, slot, info)?;
            if by_dest {
                tracing::info!(real = %key.addr, vs = %key.vs, "real server's route depends on its address alone: its next hop is kept per CPU");
            } else {
                tracing::info!(real = %key.addr, vs = %key.vs, "real server's route depends on more than its address: its next hop is looked up per packet");
            }
        }
        Ok(())
    }

    /// Takes `REAL_F_SOLE_NAT` from the reals that have it and that `sole` says should
    /// not (`sole` gives `false` for a real of no NAT virtual server). The reconciler
    /// does this before writing `NAT_REALS`, and [`Reals::gain_sole_nat`] after, so
    /// that the flag never outlives the entry it stands for.
    pub fn lose_sole_nat(
        &mut self,
        dp: &mut impl Dataplane,
        sole: impl Fn(&RealKey, &RealInfo) -> bool,
    ) -> Result<(), ReconcileError> {
        let flagged: Vec<RealKey> = self.sole_nat.iter().cloned().collect();
        for key in flagged {
            let Some(slot) = self.slots.get_mut(&key) else {
                self.sole_nat.remove(&key);
                continue;
            };
            if sole(&key, &slot.info) {
                continue;
            }
            let info = RealInfo {
                flags: slot.info.flags & !REAL_F_SOLE_NAT,
                ..slot.info
            };
            write(dp, slot, info)?;
            self.sole_nat.remove(&key);
        }
        Ok(())
    }

    /// Gives `REAL_F_SOLE_NAT` to the reals of virtual servers `vss` that lack it and
    /// that `sole` says should have it (see [`Reals::lose_sole_nat`]).
    pub fn gain_sole_nat(
        &mut self,
        dp: &mut impl Dataplane,
        vss: &[&str],
        sole: impl Fn(&RealKey, &RealInfo) -> bool,
    ) -> Result<(), ReconcileError> {
        for vs in vss {
            let of_vs = self
                .slots
                .range_mut(first_of(vs)..)
                .take_while(|(k, _)| k.vs == *vs);
            for (key, slot) in of_vs {
                if slot.info.flags & REAL_F_SOLE_NAT != 0 || !sole(key, &slot.info) {
                    continue;
                }
                let info = RealInfo {
                    flags: slot.info.flags | REAL_F_SOLE_NAT,
                    ..slot.info
                };
                write_or_keep(dp, slot, info)?;
                self.sole_nat.insert(key.clone());
            }
        }
        Ok(())
    }

    /// Writes the flags of `want` that real `key` lacks (a gain: written before any
    /// table names it).
    pub fn gain(
        &mut self,
        dp: &mut impl Dataplane,
        key: &RealKey,
        want: u32,
    ) -> Result<(), ReconcileError> {
        let slot = self.slots.get_mut(key).expect("caller listed it");
        let gained = want & !slot.info.flags;
        if gained != 0 {
            let info = RealInfo {
                flags: slot.info.flags | gained,
                ..slot.info
            };
            write(dp, slot, info)?;
        }
        Ok(())
    }

    /// Clears the policy's flags (`REAL_F_POLICY`) real `key` has beyond `want` (a loss:
    /// written after the tables stopped naming it).
    pub fn lose(
        &mut self,
        dp: &mut impl Dataplane,
        key: &RealKey,
        want: u32,
    ) -> Result<(), ReconcileError> {
        let lost = self.slots[key].info.flags & REAL_F_POLICY & !want;
        if lost != 0 {
            self.clear_flags(dp, key, lost)?;
        }
        Ok(())
    }

    /// Takes real `key` out of the data path (clearing the flags it has left) and puts
    /// its id at the back of the free list.
    pub fn remove(&mut self, dp: &mut impl Dataplane, key: &RealKey) -> Result<(), ReconcileError> {
        // A real that already lost REAL_F_ACTIVE had its generation retired then.
        self.lose(dp, key, 0)?;
        let mut slot = self.slots.remove(key).expect("caller listed it");
        if let Some(keys) = self.at_addr.get_mut(&key.addr) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.at_addr.remove(&key.addr);
            }
        }
        let info = RealInfo {
            role: REAL_ROLE_FREE,
            flags: 0,
            ..slot.info
        };
        write(dp, &mut slot, info)?;
        self.free.push_front(slot.id); // reused last: stale flow state ages out first
        let what = if key.sorry {
            "sorry server removed"
        } else {
            "real server removed"
        };
        tracing::info!(vs = %key.vs, real = %key.addr, port = key.port, "{what}");
        Ok(())
    }

    /// Clears `flags` of real `key`; losing `REAL_F_ACTIVE` also gives it a new
    /// generation, so that nothing pinned to it before comes back to it.
    fn clear_flags(
        &mut self,
        dp: &mut impl Dataplane,
        key: &RealKey,
        flags: u32,
    ) -> Result<(), ReconcileError> {
        let id = self.slots.get(key).expect("caller checked").id;
        let retired = (flags & REAL_F_ACTIVE != 0).then(|| self.next_generation(id));
        let slot = self.slots.get_mut(key).expect("caller checked");
        let info = RealInfo {
            flags: slot.info.flags & !flags,
            generation: retired.unwrap_or(slot.info.generation),
            ..slot.info
        };
        write(dp, slot, info)?;
        Ok(())
    }

    /// Gives id `id` its next generation: flow and persistence state naming the id at
    /// an earlier one is no longer its holder's. Returns: the new generation.
    fn next_generation(&mut self, id: u32) -> u32 {
        let g = &mut self.generations[id as usize];
        *g = g.wrapping_add(1);
        *g
    }
}
