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
//! 0. (an apply) the address filter gets the bits of both configurations, and
//!    `SETTINGS` the bits of both (decision 0022);
//! 1. reals gaining flags (new, recovered, back in a table) are written (REALS); a new
//!    real that gains none yet is written after the tables, naming no table;
//! 2. each changed table is written into its virtual server's *idle* ring, changed
//!    slots only, then the virtual server's value is replaced to point at it (one
//!    atomic map update);
//! 3. reals losing flags are written: a real that stops taking packets (failed or
//!    removed) also gets a new generation, so flows and persistence entries naming it
//!    are re-steered and never come back to it;
//! 4. virtual servers that went away are removed, then their reals (a `VS_MAP` entry
//!    stays when another virtual server now holds its key: one renamed, or moved there);
//! 5. (an apply) the address filter and `SETTINGS` get the new configuration's bits.
//!
//! Where each part lives: `model` holds what callers hand in and get back (overrides,
//! next hops, views); `policy` decides who is in a table and which flags a real carries,
//! from the learnt health and the overrides it holds; the mechanism writes that: `reals`
//! (real ids, generations, `REALS` values), `tables` (virtual server slots, the
//! double-buffered rings and their shadows, decision 0001) and `order` (the order above).

mod adopt;
#[cfg(test)]
mod batch_tests;
mod model;
mod order;
mod policy;
mod reals;
#[cfg(test)]
mod same_table_tests;
#[cfg(test)]
mod scale_tests;
mod tables;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{IfaceInfo, SETTING_CLIENTS_BY_DEST};

pub use self::{
    adopt::Adopted,
    model::{fmt_mac, L2Next, Override, RealView},
};
use self::{policy::Policy, reals::Reals, tables::Tables};
use crate::{
    config::{CheckType, VirtualServer},
    dataplane::{Dataplane, DataplaneError},
    model::RealKey,
    netlink,
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("out of {what}: at most {max} (load-time capacity)")]
    Capacity { what: &'static str, max: u32 },
    /// The ring map, sized at start, cannot take the virtual servers asked for; a
    /// restart sizes it anew and keeps the data path's state (decision 0013).
    #[error("out of Maglev rings: the ring map sized at start holds at most {max} virtual servers (counting those a reload removes); restart the daemon to grow it: a restart keeps every connection")]
    Rings { max: u32 },
    #[error("the maps being adopted name {what} {id}, which this data path does not have")]
    Adopt { what: &'static str, id: u32 },
}

/// The daemon's picture of what is in the maps, and the one writer of them.
pub struct Reconciler<D: Dataplane> {
    dp: D,
    tables: Tables,
    reals: Reals,
    /// `SETTING_*` bits last written.
    settings: u32,
    /// The `SETTING_*` bits the host decides (`SETTING_CLIENTS_BY_DEST`), written with
    /// those of every configuration.
    host_settings: u32,
    /// `FRAG_VS` as last written (`None`: not yet, so the first apply writes it whole,
    /// replacing whatever an earlier daemon left).
    fragment_takers: Option<Vec<(lb_common::VsKey, u16)>>,
    /// `NAT_REALS` as last written (`None`: not yet).
    nat_reals: Option<Vec<(lb_common::VsKey, lb_common::NatState)>>,
    /// `ADDR_FILTER`'s bitmap as last written and marked written (`None`: not yet, or
    /// a write failed: what the map holds is not known).
    addr_filter: Option<Vec<u64>>,
    /// `SYN_GUARD` as last written (`None`: not yet).
    syn_guard: Option<u32>,
    policy: Policy,
}

impl<D: Dataplane> Reconciler<D> {
    /// `ring_count` rings and `max_vs` virtual server slots exist in the data path.
    pub fn new(dp: D, max_vs: u32, ring_count: u32) -> Self {
        Self {
            dp,
            tables: Tables::new(max_vs, ring_count),
            reals: Reals::new(),
            settings: 0,
            host_settings: 0,
            fragment_takers: None,
            nat_reals: None,
            addr_filter: None,
            syn_guard: None,
            policy: Policy::default(),
        }
    }

    /// Returns: the data path, for reads (writes go through the reconciler).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// Returns: the data path, for a test that writes behind the reconciler's back a
    /// state it never writes itself (to show what the data path reads; the
    /// reconciler's picture is then wrong until the test is done with it).
    #[doc(hidden)]
    pub fn dataplane_behind_its_back(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Returns: the data path, given back (a test reads what was written).
    #[cfg(test)]
    pub(crate) fn into_dataplane(self) -> D {
        self.dp
    }

    /// Returns: the data path, for a test to set what it would have counted.
    #[cfg(test)]
    pub(crate) fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Registers interface `ifindex` as one frames may leave by.
    pub fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), ReconcileError> {
        self.dp.set_iface(ifindex, info)?;
        Ok(())
    }

    /// Sets the VLAN devices of the attached interfaces (see `Dataplane::set_vlans`).
    pub fn set_vlans(
        &mut self,
        ins: &std::collections::BTreeMap<lb_common::VlanKey, u32>,
        outs: &std::collections::BTreeMap<u32, (IfaceInfo, lb_common::VlanOut)>,
    ) -> Result<(), ReconcileError> {
        self.dp.set_vlans(ins, outs)?;
        Ok(())
    }

    /// Forgets an interface whose device is gone (`IFACES` holds at most
    /// `MAX_IFACES`: a device re-created again and again must not fill it).
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), ReconcileError> {
        self.dp.remove_iface(ifindex)?;
        Ok(())
    }

    /// Sets the other MACs this host answers for on the attached interfaces (MAC ->
    /// ifindex of the device that has it): frames to them are not flooded frames for
    /// another host.
    pub fn set_own_macs(
        &mut self,
        macs: &std::collections::BTreeMap<[u8; 6], u32>,
    ) -> Result<(), ReconcileError> {
        self.dp.set_own_macs(macs)?;
        Ok(())
    }

    /// Returns: the real id of `key`, if it is in the data path.
    pub fn real_id(&self, key: &RealKey) -> Option<u32> {
        self.reals.id(key)
    }

    /// Returns: the index of virtual server `name` (its counters' key).
    pub fn vs_index(&self, name: &str) -> Option<u32> {
        self.tables.vs_index(name)
    }

    /// Returns: the Maglev table the data path reads for virtual server `name`.
    pub fn live_table(&self, name: &str) -> Option<&[u32]> {
        self.tables.live_table(name)
    }

    /// Returns: the applied configuration of every virtual server, by name.
    pub fn virtual_servers(&self) -> impl Iterator<Item = &VirtualServer> {
        self.tables.configs()
    }

    /// Returns: every real address the data path needs a next hop for.
    pub fn real_addresses(&self) -> Vec<IpAddr> {
        self.reals.addresses(|_| true)
    }

    /// Returns: the real addresses of virtual servers whose method is (`dr == true`) or is
    /// not (`false`) direct routing: the first need a MAC, the others a routed next hop.
    pub fn real_addresses_of(&self, dr: bool) -> Vec<IpAddr> {
        self.reals
            .addresses(|k| self.tables.is_dr(&k.vs).is_some_and(|d| d == dr))
    }

    /// Returns: the real addresses of NAT virtual servers, sorted, each once.
    pub fn nat_real_addresses(&self) -> Vec<IpAddr> {
        self.reals.addresses(|k| self.tables.is_nat(&k.vs))
    }

    /// Returns: whether real `key` counts as healthy (unprobed reals and the sorry
    /// server always do). This is the one record of the reals' health: the probes'
    /// rise/fall state machines count their results against it.
    pub fn healthy(&self, key: &RealKey) -> bool {
        self.policy.healthy(key, self.tables.config(&key.vs))
    }

    /// Returns: what an operator sees of every real and sorry server of `vs`.
    pub fn real_views(&self, vs: &str) -> Vec<RealView> {
        let Some(cfg) = self.tables.config(vs) else {
            return Vec::new();
        };
        let table: HashSet<u32> = self
            .policy
            .backends(cfg, |k| self.reals.id(k))
            .iter()
            .map(|b| b.id)
            .collect();
        let reals = cfg.real_servers.iter().map(|r| {
            let key = RealKey::real(vs, r.address, r.port);
            (key, r.weight, r.health_check.kind)
        });
        let sorry = cfg
            .sorry_server
            .map(|s| (RealKey::sorry(vs, s.address, s.port), 0, CheckType::None));
        reals
            .chain(sorry)
            .filter_map(|(key, file_weight, check)| self.view(key, file_weight, check, &table))
            .collect()
    }

    /// Returns: what an operator sees of real `key` (the file's weight `file_weight`,
    /// probed by `check`; `table`: the ids in its table), if it is in the data path.
    fn view(
        &self,
        key: RealKey,
        file_weight: u32,
        check: CheckType,
        table: &HashSet<u32>,
    ) -> Option<RealView> {
        let (id, generation) = self.reals.id_and_generation(&key)?;
        Some(RealView {
            id,
            generation,
            file_weight,
            weight: self.policy.weight(&key, file_weight),
            healthy: self.policy.is_up(&key, check == CheckType::None),
            check,
            disabled: self.policy.disabled(&key),
            in_table: table.contains(&id),
            key,
        })
    }

    /// Records where `addr` is reached and rewrites the reals at that address.
    pub fn set_next_hop(&mut self, addr: IpAddr, hop: L2Next) -> Result<(), ReconcileError> {
        self.reals.set_next_hop(&mut self.dp, addr, hop)
    }

    /// Records what the host's routing says of the next hops the data path may keep
    /// (decision 0024): `REAL_F_BY_DEST` for the NAT reals at each address of `shape`
    /// (and for none elsewhere), `SETTING_CLIENTS_BY_DEST` for the replies. A bit
    /// cleared is cleared first; a failed write does not stop the others.
    /// Returns: the first error.
    pub fn set_route_shape(&mut self, shape: &netlink::RouteShape) -> Result<(), ReconcileError> {
        let mut first = None;
        if !shape.clients {
            first = self.set_clients_by_dest(false).err();
        }
        let asked: HashSet<IpAddr> = shape.reals.iter().map(|&(a, _)| a).collect();
        let unasked: Vec<(IpAddr, bool)> = self
            .reals
            .by_dest_addresses()
            .filter(|a| !asked.contains(a))
            .map(|a| (a, false))
            .collect();
        for &(addr, one) in unasked.iter().chain(&shape.reals) {
            if let Err(e) = self.set_by_dest(addr, one) {
                first.get_or_insert(e);
            }
        }
        if shape.clients {
            if let Err(e) = self.set_clients_by_dest(true) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Takes every mark of [`Reconciler::set_route_shape`] away: with no daemon reading
    /// the host's routing, every NAT packet is looked up.
    pub fn clear_route_shape(&mut self) -> Result<(), ReconcileError> {
        self.set_route_shape(&netlink::RouteShape {
            reals: Vec::new(),
            clients: false,
            too_many_routes: false,
        })
    }

    /// Records whether the kernel's route toward real address `addr` depends on the
    /// address alone, and rewrites the reals there (`REAL_F_BY_DEST`, decision 0024).
    /// Only NAT reals are marked: the other methods do not read it.
    fn set_by_dest(&mut self, addr: IpAddr, by_dest: bool) -> Result<(), ReconcileError> {
        let tables = &self.tables;
        self.reals
            .set_by_dest(&mut self.dp, addr, by_dest, |k| tables.is_nat(&k.vs))
    }

    /// Records whether the host's routes toward any address depend on the address
    /// alone, and writes `SETTING_CLIENTS_BY_DEST` accordingly (decision 0024).
    fn set_clients_by_dest(&mut self, by_dest: bool) -> Result<(), ReconcileError> {
        let config_bits = self.settings & !SETTING_CLIENTS_BY_DEST;
        self.host_settings = if by_dest { SETTING_CLIENTS_BY_DEST } else { 0 };
        self.set_settings(config_bits)
    }

    /// Records the probed health of real `key` and updates its table.
    /// Returns: whether anything changed.
    pub fn set_health(&mut self, key: &RealKey, healthy: bool) -> Result<bool, ReconcileError> {
        if !self.reals.contains(key) || !self.policy.set_health(key, healthy) {
            return Ok(false);
        }
        self.sync(&key.vs)?;
        Ok(true)
    }

    /// Records the probed health of several reals, in the order given, and updates each
    /// virtual server they touch once: one table built and written however many of its
    /// reals changed. The data path ends as applying them one by one with
    /// [`Reconciler::set_health`] would leave it (the same tables, the same `REALS`
    /// flags and generations): a real that changes again within `changes` is not folded
    /// into one step (down and up again must still retire its generation), so what was
    /// recorded before it is synced first. Virtual servers where a real went down are
    /// synced before those where reals only came up, so that a failed real leaves its
    /// table first. The tables are built off the calling thread
    /// ([`tokio::task::spawn_blocking`]) and awaited: the runtime's other tasks (the
    /// daemon's probes) run meanwhile, so that what they report while one batch is
    /// applied makes the next. Returns: how many of `changes` changed anything.
    pub async fn set_health_many(
        &mut self,
        changes: &[(RealKey, bool)],
    ) -> Result<usize, ReconcileError> {
        let mut count = 0;
        let mut rest = changes;
        while !rest.is_empty() {
            let (taken, changed, touched) = self.record_health(rest);
            rest = &rest[taken..];
            count += changed;
            self.sync_many(&touched).await?;
        }
        Ok(count)
    }

    /// Records the health of `changes` up to the first real that changes a second
    /// time (it must be synced between: see [`Reconciler::set_health_many`]).
    /// Returns: how many of `changes` were taken, how many of those changed anything,
    /// and the virtual servers they touch (`true`: a real of it went down), in order.
    fn record_health(
        &mut self,
        changes: &[(RealKey, bool)],
    ) -> (usize, usize, Vec<(String, bool)>) {
        let mut count = 0;
        let mut recorded: HashSet<&RealKey> = HashSet::new();
        let mut touched: Vec<(String, bool)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for (taken, (key, healthy)) in changes.iter().enumerate() {
            if recorded.contains(key) {
                return (taken, count, touched);
            }
            if !self.reals.contains(key) || !self.policy.set_health(key, *healthy) {
                continue;
            }
            count += 1;
            recorded.insert(key);
            let i = *at.entry(&key.vs).or_insert_with(|| {
                touched.push((key.vs.clone(), false));
                touched.len() - 1
            });
            touched[i].1 |= !healthy;
        }
        (changes.len(), count, touched)
    }

    /// Sets or clears the runtime override of real `key` (`None`: back to the file).
    /// Returns: `false` when no such real exists.
    pub fn set_override(
        &mut self,
        key: &RealKey,
        change: Option<Override>,
    ) -> Result<bool, ReconcileError> {
        if key.sorry || !self.reals.contains(key) {
            return Ok(false);
        }
        self.policy.set_override(key, change);
        self.sync(&key.vs)?;
        Ok(true)
    }

    /// Returns: the runtime override of `key`, if any.
    pub fn override_of(&self, key: &RealKey) -> Option<Override> {
        self.policy.override_of(key)
    }
}
