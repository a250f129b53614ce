//! What `xdpvs status` and a metrics scrape show, assembled from the reconciler's view
//! of every real, the probes' last results and the data path's counters.
//!
//! Everything but the flow counts is read in the daemon's task, so it never races a
//! change. The flow counts need a walk of the whole connection table (about 1.7 µs an
//! entry); that runs on a blocking thread through a reader of its own ([`FlowCount`]).

use std::path::Path;

use anyhow::Context as _;

use crate::{
    announce::{self, Serving},
    config,
    dataplane::{Counters, Dataplane, DataplaneRead, FlowReader},
    health::Health,
    metrics,
    reconcile::Reconciler,
    status::{self, Announcement, RealStatus, Stats, Status, VsStatus},
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
    /// Taken out by `xdpvs withdraw`.
    pub withdrawn: bool,
    /// The routing table VIPs are announced in (config `announce`).
    pub announce_table: Option<u32>,
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
            syns_past_flow_table: dp.syns_past_table()?,
            announce_table: self.announce_table,
            withdrawn: self.withdrawn,
            announcements: self.announcements(),
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

    /// Returns: every virtual server with the count of its reals taking new flows.
    pub fn serving(&self) -> Vec<Serving> {
        self.rec
            .virtual_servers()
            .map(|vs| Serving {
                name: vs.name.clone(),
                address: vs.address,
                serving: self
                    .rec
                    .real_views(&vs.name)
                    .iter()
                    .filter(|v| v.in_table && !v.key.sorry)
                    .count(),
                reals: vs.real_servers.len(),
                min_healthy: vs.min_healthy,
            })
            .collect()
    }

    /// Returns: per VIP, whether this node takes its traffic and why.
    pub fn announcements(&self) -> Vec<Announcement> {
        announce::plan(&self.serving(), self.withdrawn)
    }

    /// Returns: whether this node should take traffic, from the reconciler's tables.
    pub fn readiness(&self) -> Readiness {
        let serving = self.serving();
        let below = serving.iter().filter(|v| !v.enough()).map(Serving::line);
        let fine = serving.iter().filter(|v| v.enough()).map(Serving::line);
        let withdrawn = self.withdrawn.then(|| announce::WITHDRAWN.to_string());
        let lines: Vec<String> = withdrawn.into_iter().chain(below).chain(fine).collect();
        Readiness {
            ready: !self.withdrawn && serving.iter().all(Serving::enough),
            lines,
        }
    }
}

/// Whether this node should take traffic: it is not withdrawn and every virtual server
/// has at least its `min_healthy` reals taking new flows (the sorry server does not
/// count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Whether the node is withdrawn, then one line per virtual server, those below
    /// `min_healthy` first.
    pub lines: Vec<String>,
}

impl Readiness {
    /// Returns: the lines as one message.
    pub fn summary(&self) -> String {
        let verdict = if self.ready {
            "ready: every virtual server has its min_healthy real servers"
        } else {
            "not ready"
        };
        std::iter::once(verdict.to_string())
            .chain(self.lines.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n")
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lb_common::{reason, Counters};

    use super::*;
    use crate::{
        config::{self, AnyInterface},
        dataplane::memory::MemoryDataplane,
        metrics,
        model::RealKey,
    };

    const YAML: &str = "\
interfaces: [eth0]
virtual_servers:
  - name: web
    address: 10.0.0.100
    port: 80
    protocol: tcp
    table_size: 1009
    persistence: { timeout: 300s, netmask: 24 }
    health_check: { type: none }
    sorry_server: { address: 10.0.9.9 }
    real_servers:
      - { address: 10.0.1.1, weight: 2 }
      - { address: 10.0.1.2, weight: 0 }
  - name: dns
    address: 10.0.0.100
    port: 53
    protocol: udp
    method: nat
    table_size: 1009
    health_check: { type: tcp, port: 5353 }
    real_servers:
      - { address: 10.0.2.1, port: 5353 }
";

    fn counters(packets: u64) -> Counters {
        Counters {
            packets,
            bytes: packets * 100,
            new_flows: packets / 10,
            reply_packets: packets / 2,
            reply_bytes: packets * 50,
        }
    }

    /// A reconciler on the in-memory data path with `YAML` applied, and what the data
    /// path would have counted: per VS and per real counters, verdicts, flows.
    fn world() -> (Reconciler<MemoryDataplane>, Health) {
        let cfg = config::parse(Path::new("xdpvs.yaml"), YAML, &AnyInterface).unwrap();
        let mut rec = Reconciler::new(MemoryDataplane::default(), 8, 16);
        rec.apply(&cfg).unwrap();
        let id =
            |vs: &str, a: &str, port| rec.real_id(&RealKey::real(vs, a.parse().unwrap(), port));
        let (r1, r2) = (
            id("web", "10.0.1.1", 80).unwrap(),
            id("web", "10.0.1.2", 80).unwrap(),
        );
        let web = rec.vs_index("web").unwrap();
        let dns = rec.vs_index("dns").unwrap();
        let gen1 = rec.real_views("web")[0].generation;
        let dp = rec.dataplane_mut();
        dp.vs_counters.insert(web, counters(1000));
        dp.vs_counters.insert(dns, counters(30));
        dp.real_counters.insert(r1, counters(990));
        dp.real_counters.insert(r2, counters(10));
        dp.verdicts.insert(reason::DROP_NO_REAL, 7);
        dp.flows.insert((r1, gen1), 5);
        // An entry of an earlier generation of r1's id is not r1's.
        dp.flows.insert((r1, gen1.wrapping_sub(1)), 3);
        (rec, Health::new().0)
    }

    fn sources<'a>(
        rec: &'a Reconciler<MemoryDataplane>,
        health: &'a Health,
    ) -> Sources<'a, MemoryDataplane> {
        Sources {
            config: Path::new("/etc/xdpvs/xdpvs.yaml"),
            rec,
            health,
            flow_table_size: 4096,
            reloads: Reloads {
                ok: 2,
                failed: 1,
                last_ok: false,
            },
            withdrawn: false,
            announce_table: None,
        }
    }

    #[tokio::test]
    async fn status_shows_every_real_with_its_counters_health_and_flows() {
        let (rec, health) = world();
        let (status, count) = sources(&rec, &health).status().unwrap();
        let status = count.fill(status).await.unwrap();
        assert_eq!(status.config, "/etc/xdpvs/xdpvs.yaml");
        assert_eq!(status.flow_table_size, 4096);
        assert_eq!(
            status.flow_table_entries, 8,
            "every entry, of any generation"
        );
        assert_eq!(status.verdicts["drop_no_real"], 7);
        assert_eq!(status.verdicts.len(), reason::COUNT as usize);
        let names: Vec<&str> = status
            .virtual_servers
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["dns", "web"]);
        let web = &status.virtual_servers[1];
        assert_eq!((web.protocol.as_str(), web.method.as_str()), ("tcp", "dr"));
        assert_eq!(web.persistence.as_deref(), Some("persistent 5m /24"));
        assert_eq!(web.stats.packets, 1000);
        assert_eq!(web.stats.reply_bytes, 50_000);
        let rows: Vec<(String, u32, &str, bool, bool, u64, u64)> = web
            .reals
            .iter()
            .map(|r| {
                (
                    status::endpoint(r.address, r.port),
                    r.weight,
                    r.health.as_str(),
                    r.in_table,
                    r.sorry,
                    r.flows,
                    r.stats.packets,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("10.0.1.1:80".to_string(), 2, "up", true, false, 5, 990),
                ("10.0.1.2:80".to_string(), 0, "up", false, false, 0, 10),
                ("10.0.9.9:80".to_string(), 0, "up", false, true, 0, 0),
            ]
        );
        assert!(web
            .reals
            .iter()
            .all(|r| r.check == "none" && r.last_probe.is_none()));
        // A probed real that no probe has answered yet: down, out of the table, http.
        let dns = &status.virtual_servers[0];
        assert_eq!((dns.method.as_str(), dns.stats.packets), ("nat", 30));
        let r = &dns.reals[0];
        assert_eq!(
            (r.health.as_str(), r.in_table, r.check.as_str()),
            ("down", false, "tcp")
        );
    }

    #[test]
    fn a_node_is_ready_while_every_virtual_server_has_its_min_healthy_reals() {
        let (mut rec, health) = world();
        // web: 10.0.1.1 serves (10.0.1.2 has weight 0); dns: its probed real is not up.
        let r = sources(&rec, &health).readiness();
        assert!(!r.ready);
        assert_eq!(
            r.lines,
            [
                "dns: 0 of 1 real servers take new flows (min_healthy 1)",
                "web: 1 of 2 real servers take new flows (min_healthy 1)",
            ]
        );
        let dns = RealKey::real("dns", "10.0.2.1".parse().unwrap(), 5353);
        rec.set_health(&dns, true).unwrap();
        let r = sources(&rec, &health).readiness();
        assert!(r.ready, "{}", r.summary());
        // Draining web's one serving real: the sorry server takes its new flows, but
        // does not make the virtual server ready.
        let web1 = RealKey::real("web", "10.0.1.1".parse().unwrap(), 80);
        let drained = crate::reconcile::Override {
            disabled: true,
            ..crate::reconcile::Override::new(2)
        };
        rec.set_override(&web1, Some(drained)).unwrap();
        let r = sources(&rec, &health).readiness();
        assert!(!r.ready);
        assert_eq!(
            r.lines[0],
            "web: 0 of 2 real servers take new flows (min_healthy 1)"
        );
        rec.set_override(&web1, None).unwrap();
        assert!(sources(&rec, &health).readiness().ready);
        let withdrawn = Sources {
            withdrawn: true,
            ..sources(&rec, &health)
        };
        let r = withdrawn.readiness();
        assert!(!r.ready, "a withdrawn node takes no traffic");
        assert_eq!(r.lines[0], announce::WITHDRAWN);
        assert!(withdrawn.announcements().iter().all(|a| !a.announced));
    }

    #[tokio::test]
    async fn a_scrape_shows_the_status_figures_and_the_daemons_own() {
        let (rec, health) = world();
        let (snapshot, count) = sources(&rec, &health).snapshot().unwrap();
        let status = count.fill(snapshot.status.clone()).await.unwrap();
        let text = metrics::encode(metrics::Snapshot { status, ..snapshot });
        for line in [
            "xdpvs_vs_packets_total{vs=\"web\",vip=\"10.0.0.100:80\",protocol=\"tcp\",method=\"dr\"} 1000",
            "xdpvs_real_packets_total{vs=\"web\",real=\"10.0.1.1:80\",role=\"real\"} 990",
            "xdpvs_real_flows{vs=\"web\",real=\"10.0.1.1:80\",role=\"real\"} 5",
            "xdpvs_real_in_table{vs=\"web\",real=\"10.0.1.2:80\",role=\"real\"} 0",
            "xdpvs_datapath_packets_total{verdict=\"drop_no_real\"} 7",
            "xdpvs_flow_table_entries 8",
            "xdpvs_flow_table_capacity 4096",
            "xdpvs_config_reloads_total{result=\"ok\"} 2",
            "xdpvs_config_reloads_total{result=\"failed\"} 1",
            "xdpvs_config_last_reload_successful 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }
}
