//! The order of writes the module doc describes: reals gaining flags, tables, reals
//! losing flags, removals; for a whole configuration (`apply`), one virtual server
//! whose reals' health or overrides changed (`sync`), or several (`sync_many`).

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
};

use lb_common::{NatState, VsKey, SETTING_NAT};

use super::{
    policy::Policy,
    tables::{plain_of, vs_value},
    ReconcileError, Reconciler,
};
use crate::{
    config::{Config, Method, VirtualServer},
    dataplane::Dataplane,
    model::RealKey,
};

/// Returns: `ADDR_FILTER`'s bitmap for `config` (decision 0022): the bit of every
/// virtual server's address as a VIP, and of every real and sorry server of a NAT
/// virtual server as a NAT real (the source of its replies).
fn addr_filter_words(config: &Config) -> Vec<u64> {
    let mut words = vec![0u64; lb_common::maps::ADDR_FILTER_WORDS as usize];
    let mut set = |addr, nat_real| {
        let (a, _) = lb_common::user::addr_words(addr);
        let (word, mask) = lb_common::addr_filter_place(&a, nat_real);
        words[word as usize] |= mask;
    };
    for vs in &config.virtual_servers {
        set(vs.address, false);
        if vs.method == Method::Nat {
            for r in &vs.real_servers {
                set(r.address, true);
            }
            if let Some(s) = &vs.sorry_server {
                set(s.address, true);
            }
        }
    }
    words
}

/// Returns: every real and sorry server of `vss`, in file order (the order new reals
/// get their ids in).
fn wanted_reals(vss: &[&VirtualServer]) -> Vec<RealKey> {
    let mut out = Vec::new();
    for vs in vss {
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
    /// file changed their weight, their runtime overrides). Only virtual servers whose
    /// configuration changed (or that are new, or whose last sync failed) are looked
    /// at: the others' reals and tables already match. On error the data path may hold
    /// part of the change; every step leaves it consistent (each table swap is atomic).
    pub fn apply(&mut self, config: &Config) -> Result<(), ReconcileError> {
        self.tables.check_capacity(config)?;
        self.policy.drop_stale_overrides(config);
        // The one comparison of each virtual server with what was applied (100,000
        // reals take milliseconds to compare).
        let differs: Vec<bool> = config
            .virtual_servers
            .iter()
            .map(|v| self.tables.config(&v.name) != Some(v))
            .collect();
        let tables = &self.tables;
        let differing = config.virtual_servers.iter().zip(&differs);
        self.policy
            .keep_newly_probed_serving(differing.filter(|(_, &d)| d).map(|(v, _)| v), |name| {
                tables.config(name)
            });
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
        // The address filter lets through the addresses of both configurations until
        // the removals below are done (decision 0022). What an earlier daemon left is
        // not known: everything is let through until the exact bits go in.
        let filter = addr_filter_words(config);
        let union = match &self.addr_filter {
            Some(old) => old.iter().zip(&filter).map(|(o, n)| o | n).collect(),
            None => vec![!0; filter.len()],
        };
        self.write_addr_filter(union)?;
        // REAL_F_SOLE_NAT stands for a NAT_REALS entry naming the real's virtual server
        // as the data path reads it (index, VIP, port, protocol): the reals of every
        // virtual server this apply changes lose it before anything of theirs changes,
        // and get it back once NAT_REALS is written below.
        let changing: HashSet<&str> = config
            .virtual_servers
            .iter()
            .zip(&differs)
            .filter(|(_, &d)| d)
            .map(|(v, _)| v.name.as_str())
            .collect();
        self.reals
            .lose_sole_nat(&mut self.dp, |k, _| !changing.contains(k.vs.as_str()))?;
        // REAL_F_PLAIN_* lets the data path forward a real's established flows without
        // their virtual server (decision 0027): taken first from the reals of every
        // virtual server that goes, moves or changes how it forwards, given again once
        // the new values are written.
        let tables = &self.tables;
        let plain: HashMap<&str, u32> = config
            .virtual_servers
            .iter()
            .filter_map(|v| {
                let (key, params) = vs_value(v);
                let stays = tables.key(&v.name).is_none_or(|k| k == key);
                stays.then(|| (v.name.as_str(), plain_of(&params)))
            })
            .collect();
        self.reals
            .lose_plain(&mut self.dp, |vs| plain.get(vs).copied().unwrap_or(0))?;
        // Virtual servers: slots for new ones (nothing the data path reads is written
        // before their tables), configurations recorded.
        for (vs, &differs) in config.virtual_servers.iter().zip(&differs) {
            self.tables.prepare(&mut self.dp, vs, differs)?;
        }
        // A virtual server moved under its name is another service: its reals leave
        // with the old one's value, and come back below at new ids and generations, so
        // that no flow of the old VIP, port or protocol is still theirs (the data path
        // forwards an established flow of a plain virtual server by its real alone,
        // decision 0027). Until they all are out, the move stays recorded, whatever
        // fails.
        for name in self.tables.moved() {
            let old: Vec<RealKey> = self.reals.of_vs(&name).map(|(k, _)| k.clone()).collect();
            for key in old {
                self.reals.remove(&mut self.dp, &key)?;
            }
            self.tables.moved_out(&name);
        }
        let changed: Vec<&VirtualServer> = config
            .virtual_servers
            .iter()
            .filter(|v| self.tables.is_stale(&v.name))
            .collect();
        let wanted = wanted_reals(&changed);
        // 1. New reals, not yet in any table (no flags), given ids (written with their
        // first flags, or below); every real names its virtual server's index.
        for key in &wanted {
            let vs_index = self.tables.vs_index(&key.vs).expect("prepared above");
            if self.reals.contains(key) {
                self.reals.set_owner(&mut self.dp, key, vs_index)?;
            } else {
                let nat = self.tables.is_nat(&key.vs);
                let plain = self.tables.plain_flags(&key.vs);
                self.reals.add(&mut self.dp, key, vs_index, nat, plain)?;
            }
        }
        // 2. Reals' flags and tables. Reals leaving a virtual server that stays first
        // leave its table. The tables are built on every core while this thread
        // installs them one by one, in the order above.
        let names: Vec<&str> = changed.iter().map(|v| v.name.as_str()).collect();
        self.sync_all(&names)?;
        // REAL_F_PLAIN_*: given once the virtual servers' values are written; to the
        // reals of every virtual server, so that a flag an earlier apply took and did
        // not give back (it failed) comes back (new reals have theirs already: no flow
        // can name their new generation, and they are written once).
        let tables = &self.tables;
        let all: Vec<&str> = config
            .virtual_servers
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        self.reals
            .gain_plain(&mut self.dp, &all, |vs| tables.plain_flags(vs))?;
        // New reals no table took: written now, naming no table.
        self.reals.write_new(&mut self.dp)?;
        // Fragments: a taker's entry points at its port, read in VS_MAP (absent: the
        // fragment passes), so the order against the tables does not matter.
        let takers: Vec<(lb_common::VsKey, u16)> = config
            .virtual_servers
            .iter()
            .filter(|v| v.fragments)
            .map(|v| {
                let (key, _) = vs_value(v);
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
        // Each such real's REAL_F_SOLE_NAT stands for its entry: taken away before the
        // entry goes, given after it is written.
        let nat_reals = self.sole_nat_reals(config);
        let sole: HashMap<VsKey, u32> = nat_reals.iter().map(|(k, s)| (*k, s.vs_index)).collect();
        let tables = &self.tables;
        let is_sole = |k: &RealKey, info: &lb_common::RealInfo| {
            tables.nat_proto(&k.vs).is_some_and(|proto| {
                let key = VsKey {
                    addr: info.addr,
                    port_be: info.port_be,
                    proto,
                    family: info.family,
                };
                sole.get(&key) == Some(&u32::from(info.vs_index))
            })
        };
        self.reals.lose_sole_nat(&mut self.dp, is_sole)?;
        if self.nat_reals.as_ref() != Some(&nat_reals) {
            self.dp.set_nat_reals(&nat_reals)?;
            self.nat_reals = Some(nat_reals);
        }
        let nat_vss: Vec<&str> = config
            .virtual_servers
            .iter()
            .filter(|v| v.method == Method::Nat)
            .map(|v| v.name.as_str())
            .collect();
        self.reals.gain_sole_nat(&mut self.dp, &nat_vss, is_sole)?;
        // 3. Removals: reals no longer listed by a changed virtual server, and those of
        // virtual servers gone.
        self.tables.remove_absent(&mut self.dp, config)?;
        let names: HashSet<&str> = config
            .virtual_servers
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let changed: HashSet<&str> = changed.iter().map(|v| v.name.as_str()).collect();
        let wanted: HashSet<&RealKey> = wanted.iter().collect();
        let mut gone: Vec<RealKey> = Vec::new();
        for vs in self.reals.vs_names() {
            let listed = names.contains(vs.as_str());
            if listed && !changed.contains(vs.as_str()) {
                continue;
            }
            gone.extend(
                self.reals
                    .of_vs(&vs)
                    .map(|(k, _)| k)
                    .filter(|k| !listed || !wanted.contains(k))
                    .cloned(),
            );
        }
        for key in gone {
            self.reals.remove(&mut self.dp, &key)?;
            self.policy.forget(&key);
        }
        self.write_addr_filter(filter)?;
        self.set_settings(settings)?;
        let guard = lb_common::syn_guard_per_window(
            config.syn_flood_rate,
            crate::dataplane::ticks::kernel_hz(),
        );
        if self.syn_guard != Some(guard) {
            self.dp.set_syn_guard(guard)?;
            self.syn_guard = Some(guard);
        }
        Ok(())
    }

    /// Makes `ADDR_FILTER`'s bitmap `words`, writing the words that differ from the
    /// last written (all of them the first time, which then marks the filter written).
    fn write_addr_filter(&mut self, words: Vec<u64>) -> Result<(), ReconcileError> {
        // Taken: a write that fails leaves it unknown.
        let old = self.addr_filter.take();
        let changed: Vec<(u32, u64)> = words
            .iter()
            .enumerate()
            .filter(|&(i, w)| old.as_ref().is_none_or(|o| o[i] != *w))
            .map(|(i, w)| (i as u32, *w))
            .collect();
        let first = old.is_none();
        if first || !changed.is_empty() {
            self.dp.set_addr_filter(&changed, first)?;
        }
        self.addr_filter = Some(words);
        Ok(())
    }

    /// Brings the flags of virtual server `name`'s reals and its table in line with
    /// the policy, in the order the module documents (steps 1-3).
    pub(super) fn sync(&mut self, name: &str) -> Result<(), ReconcileError> {
        self.sync_with(name, None)
    }

    /// Brings each of `touched` (a virtual server's name; `true`: one of its reals went
    /// down) in line with the policy, as [`Reconciler::sync`] does: those where a real
    /// went down first, so that it leaves its table before other tables are rebuilt.
    /// The tables are built on a blocking thread of the runtime (by [`build_each`], on
    /// every core) and awaited one by one, each installed as it comes: the runtime's
    /// other tasks run while they are built. Not cancel-safe: dropped while it waits,
    /// it leaves the health recorded and tables not yet installed.
    pub(super) async fn sync_many(
        &mut self,
        touched: &[(String, bool)],
    ) -> Result<(), ReconcileError> {
        let (down, up): (Vec<_>, Vec<_>) = touched.iter().partition(|(_, d)| *d);
        let names: Vec<&str> = down.iter().chain(&up).map(|(n, _)| n.as_str()).collect();
        let jobs = self.table_jobs(&names);
        if jobs.iter().all(Option::is_none) {
            for name in names {
                self.sync_with(name, None)?;
            }
            return Ok(());
        }
        let (tx, mut built) = tokio::sync::mpsc::channel(2);
        let builder = tokio::task::spawn_blocking(move || {
            // Stops once `built` is gone (an install failed).
            build_each(&jobs, |_, table| tx.blocking_send(table).is_ok());
        });
        for name in names {
            let Some(table) = built.recv().await else {
                // The builder ended before sending every table: it panicked.
                match builder.await {
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    _ => unreachable!("the table builder sends a table for every job"),
                }
            };
            self.sync_with(name, table)?;
        }
        if let Err(e) = builder.await {
            std::panic::resume_unwind(e.into_panic());
        }
        Ok(())
    }

    /// Syncs each of virtual servers `names` in turn ([`Reconciler::sync`]) and records
    /// it as applied, their tables built on every core ([`build_each`]) while this
    /// thread installs those already built.
    fn sync_all(&mut self, names: &[&str]) -> Result<(), ReconcileError> {
        let jobs = self.table_jobs(names);
        let mut result = Ok(());
        build_each(&jobs, |i, table| {
            result = self.sync_with(names[i], table);
            if result.is_ok() {
                self.tables.synced(names[i]);
            }
            result.is_ok()
        });
        result
    }

    /// Returns: for each of virtual servers `names`, the backends and size of its
    /// Maglev table if the table is to change (`None` for the others): what
    /// [`Builders`] build, the same tables `sync` would build.
    fn table_jobs(&self, names: &[&str]) -> Vec<TableJob> {
        names
            .iter()
            .map(|name| {
                let vs = self.tables.config(name)?;
                let backends = self.policy.backends(vs, |k| self.reals.id(k));
                (!self.tables.is_built_from(name, &backends, vs.table_size))
                    .then_some((backends, vs.table_size))
            })
            .collect()
    }

    /// [`Reconciler::sync`], with virtual server `name`'s table already built when it
    /// is to change (`built`).
    fn sync_with(&mut self, name: &str, built: Option<Vec<u32>>) -> Result<(), ReconcileError> {
        let Some(cfg) = self.tables.config(name) else {
            return Ok(());
        };
        let table = self.policy.backends(cfg, |k| self.reals.id(k));
        let in_table: HashSet<u32> = table.iter().map(|b| b.id).collect();
        let flags: Vec<(RealKey, u32)> = self
            .reals
            .of_vs(name)
            .map(|(k, id)| {
                let flags = Policy::flags(self.healthy(k), in_table.contains(&id));
                (k.clone(), flags)
            })
            .collect();
        // 1. Gains first.
        for (key, want) in &flags {
            self.reals.gain(&mut self.dp, key, *want)?;
        }
        // 2. The table.
        self.tables.install(&mut self.dp, name, &table, built)?;
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
            let (vs_key, _) = vs_value(vs);
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

    /// Writes the configuration's `SETTING_*` bits `bits` with the host's.
    pub(super) fn set_settings(&mut self, bits: u32) -> Result<(), ReconcileError> {
        let bits = bits | self.host_settings;
        if bits != self.settings {
            self.dp.set_settings(bits)?;
            self.settings = bits;
        }
        Ok(())
    }
}

/// The backends and size of a Maglev table to build.
pub(super) type TableJob = Option<(Vec<crate::maglev::Backend>, u32)>;

/// Builds the table of each of `jobs` (`None` for a job without one), on every core
/// when there are two or more to build, and hands each to `each` with its job's index,
/// in the order of `jobs`, until `each` returns `false`.
pub(super) fn build_each(jobs: &[TableJob], mut each: impl FnMut(usize, Option<Vec<u32>>) -> bool) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 || jobs.iter().flatten().count() < 2 {
        for (i, job) in jobs.iter().enumerate() {
            if !each(
                i,
                job.as_ref().map(|(b, size)| crate::maglev::build(b, *size)),
            ) {
                return;
            }
        }
        return;
    }
    let queue = BuildQueue::default();
    std::thread::scope(|scope| {
        let mut builders = Builders::start(scope, jobs, &queue, cores);
        for i in 0..jobs.len() {
            if !each(i, builders.take(i)) {
                return;
            }
        }
    });
}

/// The queue the threads of [`Builders`] take jobs from: the next job, and whether to
/// stop taking them.
#[derive(Default)]
struct BuildQueue {
    next: AtomicUsize,
    stop: AtomicBool,
}

/// Threads building the Maglev tables of a list of jobs, in order, while the caller
/// installs those already built: a cold start of many virtual servers is then neither
/// one core's work nor a sequence of build-install turns in which all but one core
/// wait. Built tables wait in a bounded channel (two per thread; the threads block
/// when it is full), and while one slow table is awaited the others taken meanwhile
/// wait beside it (about one per thread). Dropped before its jobs are all taken (an
/// install failed), the threads stop after the table at hand.
struct Builders<'a> {
    jobs: &'a [TableJob],
    built: std::sync::mpsc::Receiver<(usize, Vec<u32>)>,
    /// Built ahead of the one asked for.
    early: HashMap<usize, Vec<u32>>,
    queue: &'a BuildQueue,
}

impl<'a> Builders<'a> {
    /// Starts `threads` threads in `scope`, building `jobs` from the first on.
    fn start<'s>(
        scope: &'s std::thread::Scope<'s, 'a>,
        jobs: &'a [TableJob],
        queue: &'a BuildQueue,
        threads: usize,
    ) -> Self {
        let (tx, built) = std::sync::mpsc::sync_channel(threads * 2);
        for _ in 0..threads {
            let tx = tx.clone();
            scope.spawn(move || {
                while !queue.stop.load(Relaxed) {
                    let i = queue.next.fetch_add(1, Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    if let Some((backends, size)) = job {
                        let table = crate::maglev::build(backends, *size);
                        // Fails once the receiver is gone: stop.
                        if tx.send((i, table)).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        Self {
            jobs,
            built,
            early: HashMap::new(),
            queue,
        }
    }

    /// Returns: the table of job `i` (`None` if it has none), waiting for it.
    fn take(&mut self, i: usize) -> Option<Vec<u32>> {
        self.jobs.get(i)?.as_ref()?;
        loop {
            if let Some(t) = self.early.remove(&i) {
                return Some(t);
            }
            let (j, t) = self.built.recv().ok()?;
            self.early.insert(j, t);
        }
    }
}

impl Drop for Builders<'_> {
    fn drop(&mut self) {
        // The receiver goes next: a thread blocked on a full channel, or finishing a
        // table, fails to send it and stops; the others take no further job.
        self.queue.stop.store(true, Relaxed);
    }
}
