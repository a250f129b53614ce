//! What `xdpvs status` and a metrics scrape show, assembled from the reconciler's view
//! of every real, the probes' last results and the data path's counters.
//!
//! Everything but the flow counts is read in the daemon's task, so it never races a
//! change. The flow counts need a walk of the whole connection table (about 1.7 µs an
//! entry); that runs on a blocking thread through a reader of its own ([`FlowCount`]).

use std::path::Path;

use anyhow::Context as _;

use crate::{
    config,
    dataplane::{Counters, Dataplane, DataplaneRead, FlowReader},
    health::Health,
    metrics,
    reconcile::Reconciler,
    status::{self, RealStatus, Stats, Status, VsStatus},
};

/// Reloads applied and rejected, and whether the last one was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloads {
    pub ok: u64,
    pub failed: u64,
    pub last_ok: bool,
}

impl Default for Reloads {
    fn default() -> Self {
        Self {
            ok: 0,
            failed: 0,
            last_ok: true,
        }
    }
}

impl Reloads {
    /// Counts one reload's outcome.
    pub fn count(&mut self, applied: bool) {
        self.last_ok = applied;
        if applied {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// What the views read besides the data path.
pub struct Sources<'a, D: Dataplane + DataplaneRead> {
    /// The configuration file, as the status names it.
    pub config: &'a Path,
    pub rec: &'a Reconciler<D>,
    pub health: &'a Health,
    pub flow_table_size: u32,
    pub reloads: Reloads,
}

fn stats(c: Counters) -> Stats {
    Stats {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        reply_packets: c.reply_packets,
        reply_bytes: c.reply_bytes,
    }
}

impl<D: Dataplane + DataplaneRead> Sources<'_, D> {
    /// Everything `xdpvs status` shows but the flow counts, read from the maps now.
    /// Returns: that, and what [`FlowCount::fill`] needs to count the flows.
    pub fn status(&self) -> anyhow::Result<(Status, FlowCount<D::Flows>)> {
        let dp = self.rec.dataplane();
        let reader = dp.flow_reader()?;
        let mut keys = Vec::new();
        let mut vss = Vec::new();
        for vs in self.rec.virtual_servers() {
            let Some(vs_index) = self.rec.vs_index(&vs.name) else {
                continue;
            };
            let mut reals = Vec::new();
            for v in self.rec.real_views(&vs.name) {
                let last = self.health.last(&v.key);
                keys.push((v.id, v.generation));
                reals.push(RealStatus {
                    address: v.key.addr,
                    port: v.key.port,
                    weight: v.weight,
                    file_weight: v.file_weight,
                    health: if v.healthy { "up" } else { "down" }.to_string(),
                    check: v.check.to_string(),
                    disabled: v.disabled,
                    in_table: v.in_table,
                    sorry: v.key.sorry,
                    flows: 0,
                    stats: stats(dp.real_counters(v.id)?),
                    last_probe: last.map(|l| match &l.result {
                        Ok(_) => "ok".to_string(),
                        Err(f) => f.to_string(),
                    }),
                    probe_latency_ms: last
                        .and_then(|l| l.result.as_ref().ok())
                        .map(|d| d.as_secs_f64() * 1000.0),
                });
            }
            vss.push(VsStatus {
                name: vs.name.clone(),
                address: vs.address,
                port: vs.port,
                protocol: vs.protocol.to_string(),
                method: vs.method.to_string(),
                scheduler: "maglev".to_string(),
                persistence: vs.persistence.map(|p| {
                    format!(
                        "persistent {} /{}",
                        config::fmt_duration(p.timeout),
                        p.netmask
                    )
                }),
                stats: stats(dp.vs_counters(vs_index)?),
                reals,
            });
        }
        let verdicts = dp
            .verdicts()?
            .into_iter()
            .enumerate()
            .map(|(i, n)| (lb_common::reason::name(i as u32).to_string(), n))
            .collect();
        let status = Status {
            config: self.config.display().to_string(),
            virtual_servers: vss,
            verdicts,
            flow_table_entries: 0,
            flow_table_size: u64::from(self.flow_table_size),
        };
        Ok((status, FlowCount { keys, reader }))
    }

    /// What one scrape of `/metrics` shows, but the flow counts (see
    /// [`Sources::status`]).
    pub fn snapshot(&self) -> anyhow::Result<(metrics::Snapshot, FlowCount<D::Flows>)> {
        let probes = self
            .health
            .counts()
            .map(|(k, c)| metrics::ProbeSample {
                vs: k.vs.clone(),
                real: status::endpoint(k.addr, k.port),
                ok: c.ok,
                failed: c.failed,
                latency: c.latency.clone(),
            })
            .collect();
        let (status, count) = self.status()?;
        let snapshot = metrics::Snapshot {
            status,
            probes,
            reloads_ok: self.reloads.ok,
            reloads_failed: self.reloads.failed,
            last_reload_ok: self.reloads.last_ok,
        };
        Ok((snapshot, count))
    }
}

/// The flow counts a status still needs: the reals' (id, generation) in the status's
/// order, and a reader of the connection table.
pub struct FlowCount<R> {
    keys: Vec<(u32, u32)>,
    reader: R,
}

impl<R: FlowReader + Send + 'static> FlowCount<R> {
    /// Fills in `status`'s flow counts on a task of its own (the walk on a blocking
    /// thread), then sends `answer` of the result to `reply`.
    pub fn fill_then<T: Send + 'static>(
        self,
        status: Status,
        reply: tokio::sync::oneshot::Sender<T>,
        answer: impl FnOnce(anyhow::Result<Status>) -> T + Send + 'static,
    ) {
        tokio::spawn(async move {
            let _ = reply.send(answer(self.fill(status).await));
        });
    }

    /// Returns: `status` with every real's flows and the table's entries counted.
    pub async fn fill(self, mut status: Status) -> anyhow::Result<Status> {
        let reader = self.reader;
        let flows = tokio::task::spawn_blocking(move || reader.count())
            .await
            .context("walking the connection table")??;
        let reals = status
            .virtual_servers
            .iter_mut()
            .flat_map(|v| v.reals.iter_mut());
        for (r, key) in reals.zip(&self.keys) {
            r.flows = flows.get(key).copied().unwrap_or(0);
        }
        status.flow_table_entries = flows.values().sum();
        Ok(status)
    }
}
