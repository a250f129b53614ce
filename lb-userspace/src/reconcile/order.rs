//! The order of writes the module doc describes: reals gaining flags, tables, reals
//! losing flags, removals; for a whole configuration (`apply`) or one virtual server
//! whose reals' health or overrides changed (`sync`).

use std::collections::{hash_map::Entry, HashMap};

use lb_common::{NatState, VsKey, SETTING_NAT};

use super::{policy::Policy, ReconcileError, Reconciler};
use crate::{
    config::{Config, Method},
    dataplane::Dataplane,
    model::RealKey,
};

/// Returns: every real and sorry server `config` names, in file order (the order new
/// reals get their ids in).
fn wanted_reals(config: &Config) -> Vec<RealKey> {
    let mut out = Vec::new();
    for vs in &config.virtual_servers {
        for r in &vs.real_servers {
            out.push(RealKey::real(&vs.name, r.address, r.port));
        }
        if let Some(s) = vs.sorry_server {
            out.push(RealKey::sorry(&vs.name, s.address, s.port));
        }
    }
    out
}

impl<D: Dataplane> Reconciler<D> {
    /// Makes the data path match `config` (reals keep their health and, unless the
    /// file changed their weight, their runtime overrides). On error the data path
    /// may hold part of the change; every step leaves it consistent (each table swap
    /// is atomic).
    pub fn apply(&mut self, config: &Config) -> Result<(), ReconcileError> {
        self.tables.check_capacity(config)?;
        let wanted = wanted_reals(config);
        self.policy.drop_stale_overrides(config);
        let tables = &self.tables;
        self.policy
            .keep_newly_probed_serving(config, |name| tables.config(name));
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
        // Virtual servers: slots for new ones (nothing the data path reads is written
        // before their tables), configurations recorded.
        for vs in &config.virtual_servers {
            self.tables.prepare(&mut self.dp, vs)?;
        }
        // 1. New reals, not yet in any table (no flags); every real names its virtual
        // server's index.
        for key in &wanted {
            let vs_index = self.tables.vs_index(&key.vs).expect("prepared above");
            if self.reals.contains(key) {
                self.reals.set_owner(&mut self.dp, key, vs_index)?;
            } else {
                self.reals.add(&mut self.dp, key, vs_index)?;
            }
        }
        // 2. Reals' flags and tables. Reals leaving a virtual server that stays first
        // leave its table.
        for vs in &config.virtual_servers {
            self.sync(&vs.name)?;
        }
        // Fragments: a taker's entry points at its port, read in VS_MAP (absent: the
        // fragment passes), so the order against the tables does not matter.
        let takers: Vec<(lb_common::VsKey, u16)> = config
            .virtual_servers
            .iter()
            .filter(|v| v.fragments)
            .map(|v| {
                let (key, _) = super::tables::vs_value(v);
                let port_be = key.port_be;
                (lb_common::VsKey { port_be: 0, ..key }, port_be)
            })
            .collect();
        if self.fragment_takers.as_ref() != Some(&takers) {
            self.dp.set_fragment_takers(&takers)?;
            self.fragment_takers = Some(takers);
        }
        // NAT reals: an entry lets replies be found through FLOWS, so it is written
        // once the virtual server's table is live; a real that becomes shared loses its
        // entry, and its flows' replies are found again through NAT_STATE once their
        // next request writes it (decision 0015).
        let nat_reals = self.sole_nat_reals(config);
        if self.nat_reals.as_ref() != Some(&nat_reals) {
            self.dp.set_nat_reals(&nat_reals)?;
            self.nat_reals = Some(nat_reals);
        }
        // 3. Removals.
        self.tables.remove_absent(&mut self.dp, config)?;
        let gone: Vec<RealKey> = self
            .reals
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.reals.remove(&mut self.dp, &key)?;
            self.policy.forget(&key);
        }
        self.set_settings(settings)?;
        Ok(())
    }

    /// Brings the flags of virtual server `name`'s reals and its table in line with
    /// the policy, in the order the module documents (steps 1-3).
    pub(super) fn sync(&mut self, name: &str) -> Result<(), ReconcileError> {
        let Some(cfg) = self.tables.config(name) else {
            return Ok(());
        };
        let table = self.policy.backends(cfg, |k| self.reals.id(k));
        let flags: Vec<(RealKey, u32)> = self
            .reals
            .of_vs(name)
            .map(|(k, id)| {
                let in_table = table.iter().any(|b| b.id == id);
                (k.clone(), Policy::flags(self.healthy(k), in_table))
            })
            .collect();
        // 1. Gains first.
        for (key, want) in &flags {
            self.reals.gain(&mut self.dp, key, *want)?;
        }
        // 2. The table.
        self.tables.install(&mut self.dp, name, &table)?;
        // 3. Losses.
        for (key, want) in &flags {
            self.reals.lose(&mut self.dp, key, *want)?;
        }
        Ok(())
    }

    /// Returns: the `NAT_REALS` entries of `config`: each real and sorry server of a NAT
    /// virtual server whose address, port and protocol no other NAT virtual server
    /// uses, with the VIP:port it serves.
    fn sole_nat_reals(&self, config: &Config) -> Vec<(VsKey, NatState)> {
        // In file order, so that equal configurations give equal lists; `at` finds a
        // key's place.
        let mut seen: Vec<(VsKey, Option<NatState>)> = Vec::new();
        let mut at: HashMap<VsKey, usize> = HashMap::new();
        for vs in config
            .virtual_servers
            .iter()
            .filter(|v| v.method == Method::Nat)
        {
            let Some(vs_index) = self.tables.vs_index(&vs.name) else {
                continue;
            };
            let (vs_key, _) = super::tables::vs_value(vs);
            let state = NatState {
                vip: vs_key.addr,
                vport_be: vs_key.port_be,
                _pad: 0,
                vs_index,
            };
            let reals = vs.real_servers.iter().map(|r| (r.address, r.port));
            let sorry = vs.sorry_server.iter().map(|s| (s.address, s.port));
            for (addr, port) in reals.chain(sorry) {
                let (words, family) = lb_common::user::addr_words(addr);
                let key = VsKey {
                    addr: words,
                    port_be: port.to_be(),
                    proto: vs_key.proto,
                    family,
                };
                match at.entry(key) {
                    Entry::Occupied(i) => {
                        let s = &mut seen[*i.get()].1;
                        if s.is_some_and(|s| s.vs_index != vs_index) {
                            *s = None;
                        }
                    }
                    Entry::Vacant(v) => {
                        v.insert(seen.len());
                        seen.push((key, Some(state)));
                    }
                }
            }
        }
        seen.into_iter()
            .filter_map(|(k, s)| Some((k, s?)))
            .collect()
    }

    fn set_settings(&mut self, bits: u32) -> Result<(), ReconcileError> {
        if bits != self.settings {
            self.dp.set_settings(bits)?;
            self.settings = bits;
        }
        Ok(())
    }
}
