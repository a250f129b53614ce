//! Who takes new flows and which flags each real carries, decided from the
//! configuration, the reals' learnt health and the operator's overrides (all held here).
//! It writes nothing: the mechanism writes what it decides, in the module's order.

use std::collections::HashMap;

use lb_common::{REAL_F_ACTIVE, REAL_F_NEW};

use super::model::Override;
use crate::{
    config::{CheckType, Config, VirtualServer},
    maglev,
    model::RealKey,
};

/// The reals' learnt health and runtime overrides.
#[derive(Debug, Default)]
pub(super) struct Policy {
    /// Health of probed reals (absent: not yet healthy). The one record of it: the
    /// probes' rise/fall state machines count their results against it.
    health: HashMap<RealKey, bool>,
    overrides: HashMap<RealKey, Override>,
}

impl Policy {
    /// Returns: whether real `key` of `vs` (its applied configuration, if any) counts
    /// as healthy: the sorry server and unprobed reals always do.
    pub fn healthy(&self, key: &RealKey, vs: Option<&VirtualServer>) -> bool {
        let unprobed = vs
            .and_then(|v| v.real_server(key.addr, key.port))
            .is_some_and(|r| r.health_check.kind == CheckType::None);
        self.is_up(key, unprobed)
    }

    /// [`Policy::healthy`] for a real whose configuration is at hand (`unprobed`: it
    /// has no probe).
    pub fn is_up(&self, key: &RealKey, unprobed: bool) -> bool {
        key.sorry || unprobed || self.health.get(key).copied().unwrap_or(false)
    }

    /// Returns: the weight real `key` has now (runtime override, else the file's).
    pub fn weight(&self, key: &RealKey, file_weight: u32) -> u32 {
        self.overrides
            .get(key)
            .and_then(|o| o.weight)
            .unwrap_or(file_weight)
    }

    /// Returns: whether the operator took real `key` out of its table.
    pub fn disabled(&self, key: &RealKey) -> bool {
        self.overrides.get(key).is_some_and(|o| o.disabled)
    }

    /// Returns: the Maglev backends of `vs` now: its healthy, enabled reals of weight
    /// above 0, or else its sorry server. `id_of` gives a real's id; a real without
    /// one is left out. They come in file order, which does not show in the table (nor
    /// do the ids): Maglev orders them by identity. The identities' spelling does show,
    /// on every node alike (maglev's module doc); a test pins it.
    pub fn backends(
        &self,
        vs: &VirtualServer,
        id_of: impl Fn(&RealKey) -> Option<u32>,
    ) -> Vec<maglev::Backend> {
        let mut out: Vec<maglev::Backend> = vs
            .real_servers
            .iter()
            .filter_map(|r| {
                let key = RealKey::real(&vs.name, r.address, r.port);
                let weight = self.weight(&key, r.weight);
                let up = self.is_up(&key, r.health_check.kind == CheckType::None);
                if weight == 0 || self.disabled(&key) || !up {
                    return None;
                }
                Some(maglev::Backend {
                    id: id_of(&key)?,
                    identity: format!("{}:{}", r.address, r.port).into_bytes(),
                    weight,
                })
            })
            .collect();
        if out.is_empty() {
            if let Some(s) = vs.sorry_server {
                if let Some(id) = id_of(&RealKey::sorry(&vs.name, s.address, s.port)) {
                    out.push(maglev::Backend {
                        id,
                        identity: format!("sorry:{}:{}", s.address, s.port).into_bytes(),
                        weight: 1,
                    });
                }
            }
        }
        out
    }

    /// Returns: the flags a real should carry: `REAL_F_ACTIVE` while it counts as
    /// healthy (its flows go on), `REAL_F_NEW` while it is in its table.
    pub fn flags(healthy: bool, in_table: bool) -> u32 {
        let mut f = 0;
        if healthy {
            f |= REAL_F_ACTIVE;
        }
        if in_table {
            f |= REAL_F_NEW;
        }
        f
    }

    /// Records the probed health of real `key`. Returns: whether it changed.
    pub fn set_health(&mut self, key: &RealKey, healthy: bool) -> bool {
        if self.health.get(key) == Some(&healthy) {
            return false;
        }
        self.health.insert(key.clone(), healthy);
        true
    }

    /// Sets or clears (`None`) the runtime override of real `key`.
    pub fn set_override(&mut self, key: &RealKey, change: Option<Override>) {
        match change {
            Some(o) => self.overrides.insert(key.clone(), o),
            None => self.overrides.remove(key),
        };
    }

    /// Returns: the runtime override of `key`, if any.
    pub fn override_of(&self, key: &RealKey) -> Option<Override> {
        self.overrides.get(key).copied()
    }

    /// On a reload: drops the overrides made against a weight the file no longer has
    /// (the newer intent wins).
    pub fn drop_stale_overrides(&mut self, config: &Config) {
        if self.overrides.is_empty() {
            return;
        }
        let by_name: HashMap<&str, &VirtualServer> = config
            .virtual_servers
            .iter()
            .map(|v| (v.name.as_str(), v))
            .collect();
        self.overrides.retain(|key, o| {
            let Some(r) = by_name
                .get(key.vs.as_str())
                .and_then(|v| v.real_server(key.addr, key.port))
            else {
                return true;
            };
            if o.file_weight == r.weight {
                return true;
            }
            tracing::info!(vs = %key.vs, real = %r.address, port = r.port, weight = r.weight, "the file changed this real's weight: runtime override dropped");
            false
        });
    }

    /// On a reload: a real whose probe is switched on keeps serving until the probe says
    /// otherwise. `changed`: the virtual servers of the new file that differ from what
    /// was applied (in the others no probe was switched on); `applied` gives a virtual
    /// server's configuration before the reload.
    pub fn keep_newly_probed_serving<'a, 'b>(
        &mut self,
        changed: impl Iterator<Item = &'b VirtualServer>,
        applied: impl Fn(&str) -> Option<&'a VirtualServer>,
    ) {
        for vs in changed {
            let before = applied(&vs.name);
            for r in &vs.real_servers {
                let key = RealKey::real(&vs.name, r.address, r.port);
                if r.health_check.kind != CheckType::None
                    && !self.health.contains_key(&key)
                    && self.healthy(&key, before)
                {
                    self.health.insert(key, true);
                }
            }
        }
    }

    /// Forgets the health and override of a real that was removed.
    pub fn forget(&mut self, key: &RealKey) {
        self.health.remove(key);
        self.overrides.remove(key);
    }
}
