//! Taking over a data path an earlier daemon wrote (its maps pinned, its program still
//! forwarding): the reconciler's picture is read back from the maps instead of being
//! built by writing them, so that applying an unchanged configuration afterwards
//! writes nothing and every flow keeps its real.
//!
//! What the maps say: `VS_MAP` gives each virtual server's index, live ring and
//! parameters (matched to the configuration by VIP, port and protocol); `REALS` gives
//! each id's holder (`role`, `vs_index`, address, port), generation, flags and next
//! hop; the live rings give the tables. A real that was active counts as healthy until
//! its probe says otherwise, as it did for the earlier daemon. Runtime overrides are
//! not in the maps and are not carried over.

use lb_common::{REAL_F_ACTIVE, REAL_F_PLAIN, REAL_ROLE_FREE, SETTING_CLIENTS_BY_DEST};

use super::{tables::vs_value, Policy, ReconcileError, Reconciler};
use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneContents},
    model::RealKey,
};

/// What adoption found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Virtual servers taken over, by name.
    pub virtual_servers: Vec<String>,
    /// Reals and sorry servers taken over.
    pub reals: usize,
    /// Virtual servers in the maps that `config` does not have (VIP:port/protocol),
    /// removed with their reals.
    pub removed: Vec<String>,
}

impl<D: Dataplane + DataplaneContents> Reconciler<D> {
    /// Takes over `dp`, written by an earlier daemon, for `config`: virtual servers of
    /// `config` found in it are adopted with their tables, reals, generations, health
    /// and next hops; the others in it are removed (virtual server first, then its
    /// reals). `max_vs` and `ring_count` are the sizes of `dp`'s maps. Nothing of
    /// `config` is applied yet: [`Reconciler::apply`] next writes only what differs.
    /// Returns: the reconciler, and what it found.
    pub fn adopt(
        dp: D,
        max_vs: u32,
        ring_count: u32,
        config: &Config,
    ) -> Result<(Self, Adopted), ReconcileError> {
        let mut rec = Reconciler::new(dp, max_vs, ring_count);
        let mut found = Adopted::default();
        let mut names = std::collections::HashMap::new();
        // Each virtual server in the maps, with the one of `config` at its key, if any.
        let keys: std::collections::HashMap<_, _> = config
            .virtual_servers
            .iter()
            .map(|v| (vs_value(v).0, v))
            .collect();
        let vss: Vec<_> = rec
            .dp
            .virtual_servers()?
            .into_iter()
            .map(|(key, info)| (key, info, keys.get(&key).copied()))
            .collect();
        let mut all = rec.dp.reals()?;
        // The reals of a virtual server about to go lose REAL_F_PLAIN_* first: the
        // program still forwarding would forward their established flows by them
        // alone (decision 0027).
        let going: std::collections::HashSet<u32> = vss
            .iter()
            .filter(|(_, _, vs)| vs.is_none())
            .map(|(_, info, _)| info.vs_index)
            .collect();
        for (id, info) in (0u32..).zip(all.iter_mut()) {
            let flagged = info.flags & REAL_F_PLAIN != 0 && info.role != REAL_ROLE_FREE;
            if flagged && going.contains(&u32::from(info.vs_index)) {
                info.flags &= !REAL_F_PLAIN;
                rec.dp.set_real(id, info)?;
            }
        }
        for (key, info, vs) in vss {
            let Some(vs) = vs else {
                rec.dp.remove_vs(&key)?;
                found.removed.push(describe(&key));
                continue;
            };
            let live = rec.dp.ring(info.ring_id, info.ring_size)?;
            rec.tables.adopt(vs, key, info, live)?;
            names.insert(info.vs_index, vs.name.clone());
            found.virtual_servers.push(vs.name.clone());
        }
        found.virtual_servers.sort();
        found.removed.sort();
        let (taken, orphans) = rec.reals.adopt(&all, |i| names.get(&i).cloned());
        for id in orphans {
            rec.reals.clear_orphan(&mut rec.dp, id, all[id as usize])?;
        }
        found.reals = taken.len();
        rec.policy = adopted_health(taken);
        rec.settings = rec.dp.settings()?;
        // The earlier daemon's reading of the host, until the next one.
        rec.host_settings = rec.settings & SETTING_CLIENTS_BY_DEST;
        Ok((rec, found))
    }
}

/// Returns: a policy in which every real that was active is healthy.
fn adopted_health(reals: Vec<(RealKey, u32)>) -> Policy {
    let mut policy = Policy::default();
    for (key, flags) in reals {
        if flags & REAL_F_ACTIVE != 0 {
            policy.set_health(&key, true);
        }
    }
    policy
}

/// Returns: `VIP:port/protocol` of a `VS_MAP` key, for the log.
fn describe(key: &lb_common::VsKey) -> String {
    let port = u16::from_be(key.port_be);
    let vip = lb_common::user::words_addr(key.addr, key.family)
        .map_or_else(|| format!("?:{port}"), |a| crate::status::endpoint(a, port));
    let proto = match key.proto {
        lb_common::PROTO_TCP => "tcp".to_string(),
        lb_common::PROTO_UDP => "udp".to_string(),
        p => p.to_string(),
    };
    format!("{vip}/{proto}")
}
