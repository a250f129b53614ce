//! Health probes: one tokio task per probed real, each bounded by its timeout, so a
//! slow real never delays another's verdict (half-open probes are all sent by one task,
//! `probe::half_open`, whose probes wait on nothing but the answer); and the rise/fall
//! state machine that turns probe results into health transitions.
//!
//! The tasks only probe and report ([`Report`] over a channel). The daemon's task owns
//! the state machines ([`Health`]) and the maps, so health changes are applied in the
//! same order as every other change. Whether a real is up is held once, by the
//! reconciler: a state machine keeps only its streak and is told that state with each
//! result it counts. Reports that queued up together are counted together
//! ([`Health::take_batch`]), so that their transitions rebuild each virtual server's
//! table once.

mod probe;

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::Histogram;
use tokio::{sync::mpsc, task::JoinHandle};

pub use self::probe::{probe, Failure, HalfOpen, Sockets, HALF_OPEN_UNAVAILABLE};
use crate::{
    config::{CheckType, Config, HealthCheck},
    model::RealKey,
};

/// Upper bounds (seconds) of the probe latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Rise/fall: how many consecutive results agree against a real's health. The health
/// itself is not kept here (the reconciler holds it); each result is counted against it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Consecutive results contradicting the real's health.
    streak: u32,
}

impl Tracker {
    /// Counts one probe result against `healthy`, the real's health now.
    /// Returns: whether that health flips (to `ok`).
    pub fn record(&mut self, healthy: bool, ok: bool, rise: u32, fall: u32) -> bool {
        if ok == healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if self.streak >= needed.max(1) {
            self.streak = 0;
            return true;
        }
        false
    }
}

/// Most reports taken off the channel at once (its capacity): the daemon's loop serves
/// signals and control requests between batches.
pub const BATCH_MAX: usize = 4096;
/// Most rounds of the runtime's other tasks that a batch of rises waits for.
pub const GATHER_ROUNDS: usize = 32;

/// One probe's outcome, sent by a probe task.
#[derive(Debug)]
pub struct Report {
    pub key: RealKey,
    /// The task that sent it (a replaced task's late reports are ignored).
    pub task: u64,
    pub result: Result<Duration, Failure>,
}

/// A health transition to apply.
#[derive(Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: RealKey,
    pub healthy: bool,
    /// What the last probe found (`None`: it succeeded).
    pub reason: Option<Failure>,
}

/// The last probe of a real, for status and metrics.
#[derive(Clone, Debug)]
pub struct LastProbe {
    pub at: Instant,
    pub result: Result<Duration, Failure>,
}

struct Probe {
    addr: IpAddr,
    check: HealthCheck,
    task: u64,
    runner: Runner,
    tracker: Tracker,
    last: Option<LastProbe>,
    counts: ProbeCounts,
}

/// What probes a real.
enum Runner {
    /// A task of its own.
    Task(JoinHandle<()>),
    /// The half-open task, under this slot.
    HalfOpen(probe::half_open::Slot),
}

/// What one real's probes found since its probe (re)started, for metrics.
#[derive(Clone, Debug)]
pub struct ProbeCounts {
    pub ok: u64,
    pub failed: u64,
    /// Latency of the successful probes, in seconds.
    pub latency: Histogram,
}

impl ProbeCounts {
    fn new() -> Self {
        Self {
            ok: 0,
            failed: 0,
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// Every probed real's task and state machine.
pub struct Health {
    tx: mpsc::Sender<Report>,
    probes: HashMap<RealKey, Probe>,
    next_task: u64,
    /// The task of half-open probes, when their raw sockets could be opened.
    half_open: Option<HalfOpen>,
}

impl Health {
    /// Returns: the manager, and the channel its tasks report on.
    pub fn new() -> (Self, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(4096);
        (
            Self {
                tx,
                probes: HashMap::new(),
                next_task: 0,
                half_open: None,
            },
            rx,
        )
    }

    /// Sends half-open probes through `sockets` (opened by the caller, with
    /// CAP_NET_RAW), from a task started now on the current runtime. Without, they fail
    /// with [`HALF_OPEN_UNAVAILABLE`]. Call before the first [`Health::sync`].
    pub fn use_half_open(&mut self, sockets: Sockets) -> std::io::Result<()> {
        self.half_open = Some(HalfOpen::start(sockets, self.tx.clone())?);
        Ok(())
    }

    /// Returns: whether half-open probes can be sent.
    pub fn has_half_open(&self) -> bool {
        self.half_open.is_some()
    }

    /// Starts, restarts (probe changed) and stops probes (tasks, or reals of the
    /// half-open task) so that exactly the probed reals
    /// of `config` are probed. A new or restarted probe's state machine starts with no
    /// streak.
    pub fn sync(&mut self, config: &Config) {
        let mut wanted: HashMap<RealKey, (IpAddr, &HealthCheck)> = HashMap::new();
        for vs in &config.virtual_servers {
            for r in &vs.real_servers {
                if r.health_check.kind != CheckType::None {
                    wanted.insert(
                        RealKey::real(&vs.name, r.address, r.port),
                        (r.address, &r.health_check),
                    );
                }
            }
        }
        self.probes.retain(|k, p| {
            let keep = wanted
                .get(k)
                .is_some_and(|(a, c)| *a == p.addr && **c == p.check);
            if !keep {
                p.stop(self.half_open.as_ref());
            }
            keep
        });
        for (key, (addr, check)) in wanted {
            if self.probes.contains_key(&key) {
                continue;
            }
            self.next_task += 1;
            let task = self.next_task;
            let runner = match &self.half_open {
                // At once, spread over a moment (as a task's first probe is at once, a
                // first start does not wait an interval), then at the real's phase.
                Some(h) if check.kind == CheckType::TcpHalfOpen => Runner::HalfOpen(h.add(
                    key.clone(),
                    task,
                    std::net::SocketAddr::new(addr, check.port),
                    (check.interval, check.timeout),
                    (
                        phase(&key, probe::half_open::FIRST_SPREAD),
                        phase(&key, check.interval),
                    ),
                )),
                _ => Runner::Task(tokio::spawn(run_probe(
                    key.clone(),
                    task,
                    addr,
                    check.clone(),
                    self.tx.clone(),
                ))),
            };
            self.probes.insert(
                key,
                Probe {
                    addr,
                    check: check.clone(),
                    task,
                    runner,
                    tracker: Tracker::default(),
                    last: None,
                    counts: ProbeCounts::new(),
                },
            );
        }
    }

    /// Counts a report against `healthy`, which gives a real's health now (the
    /// reconciler's). Returns: the transition it causes, if any.
    pub fn record(
        &mut self,
        report: Report,
        healthy: impl Fn(&RealKey) -> bool,
    ) -> Option<Transition> {
        let p = self.probes.get_mut(&report.key)?;
        if p.task != report.task {
            return None;
        }
        let ok = report.result.is_ok();
        match &report.result {
            Ok(d) => {
                p.counts.ok += 1;
                p.counts.latency.observe(d.as_secs_f64());
            }
            Err(_) => p.counts.failed += 1,
        }
        p.last = Some(LastProbe {
            at: Instant::now(),
            result: report.result.clone(),
        });
        if !p
            .tracker
            .record(healthy(&report.key), ok, p.check.rise, p.check.fall)
        {
            return None;
        }
        Some(Transition {
            key: report.key,
            healthy: ok,
            reason: report.result.err(),
        })
    }

    /// Takes `first` and the reports queued behind it, and counts them in the order
    /// they came, each against `healthy` (the reals' health before them, the
    /// reconciler's) as changed by the transitions found before it among them. While
    /// every transition found is a rise, the probes under way are let report too: the
    /// task yields to the runtime's other tasks (the probes, the IO driver) and takes
    /// what they sent, until a round sends nothing, so that reals that rise together
    /// share their tables' builds. A failure is never held back: once one is found, what
    /// was taken is returned at once. At most [`BATCH_MAX`] reports and
    /// [`GATHER_ROUNDS`] rounds are taken. Returns: the transitions, in order (a real
    /// may flip more than once: its last transition is its health).
    pub async fn take_batch(
        &mut self,
        first: Report,
        rx: &mut mpsc::Receiver<Report>,
        healthy: impl Fn(&RealKey) -> bool,
    ) -> Vec<Transition> {
        let mut flipped: HashMap<RealKey, bool> = HashMap::new();
        let mut out: Vec<Transition> = Vec::new();
        let mut reports = vec![first];
        let (mut taken, mut failed) = (1, false);
        for round in 0..=GATHER_ROUNDS {
            if round > 0 {
                tokio::task::yield_now().await;
            }
            while taken < BATCH_MAX {
                let Ok(r) = rx.try_recv() else { break };
                reports.push(r);
                taken += 1;
            }
            if reports.is_empty() {
                break;
            }
            for r in reports.drain(..) {
                let now = |k: &RealKey| flipped.get(k).copied().unwrap_or_else(|| healthy(k));
                if let Some(t) = self.record(r, now) {
                    flipped.insert(t.key.clone(), t.healthy);
                    failed |= !t.healthy;
                    out.push(t);
                }
            }
            if out.is_empty() || failed || taken >= BATCH_MAX {
                break;
            }
        }
        out
    }

    /// Returns: the last probe of real `key`, if it is probed and was probed.
    pub fn last(&self, key: &RealKey) -> Option<&LastProbe> {
        self.probes.get(key)?.last.as_ref()
    }

    /// Returns: every probed real's counts (in no particular order).
    pub fn counts(&self) -> impl Iterator<Item = (&RealKey, &ProbeCounts)> {
        self.probes.iter().map(|(k, p)| (k, &p.counts))
    }

    /// Returns: how many reals are probed.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Returns: whether no real is probed.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }
}

impl Probe {
    /// Stops probing this real.
    fn stop(&self, half_open: Option<&HalfOpen>) {
        match &self.runner {
            Runner::Task(t) => t.abort(),
            Runner::HalfOpen(slot) => {
                if let Some(h) = half_open {
                    h.remove(*slot);
                }
            }
        }
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        for p in self.probes.values() {
            p.stop(self.half_open.as_ref());
        }
    }
}

/// Returns: the first real of `config` probed half-open, named by its virtual server and
/// address (`virtual server web, real 10.0.1.11:80`), if any: such a configuration
/// needs the raw sockets.
pub fn first_half_open(config: &Config) -> Option<String> {
    config.virtual_servers.iter().find_map(|vs| {
        let r = vs
            .real_servers
            .iter()
            .find(|r| r.health_check.kind == CheckType::TcpHalfOpen)?;
        Some(format!(
            "virtual server {}, real {}",
            vs.name,
            std::net::SocketAddr::new(r.address, r.port)
        ))
    })
}

/// Returns: where in its interval a real's probes fall, so that many reals probed at
/// one interval are spread over it instead of all firing together.
fn phase(key: &RealKey, interval: Duration) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let frac = (h.finish() % 1000) as u32;
    interval * frac / 1000
}

/// A probe task: probes at once, then every interval at the real's own phase (a probe
/// never overlaps the next: the timeout is at most the interval), reporting each
/// result.
async fn run_probe(
    key: RealKey,
    task: u64,
    addr: IpAddr,
    check: HealthCheck,
    tx: mpsc::Sender<Report>,
) {
    let start = tokio::time::Instant::now() + phase(&key, check.interval);
    let mut tick = tokio::time::interval_at(start, check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tick.tick().await;
        }
        let result = probe(addr, &check).await;
        let report = Report {
            key: key.clone(),
            task,
            result,
        };
        if tx.send(report).await.is_err() {
            return;
        }
    }
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// A real's health as its owner keeps it, and the tracker counting against it.
    struct Owned {
        healthy: bool,
        tracker: Tracker,
    }

    impl Owned {
        fn record(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
            let flips = self.tracker.record(self.healthy, ok, rise, fall);
            if flips {
                self.healthy = ok;
            }
            flips
        }
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut t = Owned {
            healthy: false,
            tracker: Tracker::default(),
        };
        assert!(!t.record(true, 2, 3));
        assert!(!t.record(false, 2, 3), "a failure resets the rise streak");
        assert!(!t.record(true, 2, 3));
        assert!(t.record(true, 2, 3), "second success in a row: healthy");
        assert!(t.healthy);
        assert!(!t.record(false, 2, 3));
        assert!(!t.record(false, 2, 3));
        assert!(!t.record(true, 2, 3), "a success resets the fall streak");
        for _ in 0..2 {
            assert!(!t.record(false, 2, 3));
        }
        assert!(t.record(false, 2, 3), "third failure in a row: unhealthy");
        assert!(!t.healthy);
    }

    #[tokio::test]
    async fn tasks_report_transitions_with_the_reason() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let text = format!(
            "interfaces: [lo]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.1\n    port: {port}\n    protocol: tcp\n    health_check: {{ interval: 100ms, timeout: 100ms, rise: 2, fall: 2 }}\n    real_servers: [{{ address: 127.0.0.1 }}]\n"
        );
        struct Any;
        impl crate::config::SystemFacts for Any {
            fn interface_exists(&self, _: &str) -> bool {
                true
            }
        }
        let cfg = crate::config::parse(std::path::Path::new("t.yaml"), &text, &Any).unwrap();
        let (mut h, mut rx) = Health::new();
        h.sync(&cfg);
        let up = loop {
            tokio::select! {
                Some(r) = rx.recv() => if let Some(t) = h.record(r, |_| false) { break t },
                _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("no transition within 5 s"),
            }
        };
        assert!(up.healthy && up.reason.is_none());
        drop(l);
        // The owner of the real's health has recorded it up.
        let down = loop {
            tokio::select! {
                Some(r) = rx.recv() => if let Some(t) = h.record(r, |_| true) { break t },
                _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("no transition within 5 s"),
            }
        };
        assert!(!down.healthy);
        assert_eq!(down.reason, Some(Failure::Refused));
    }

    /// Two reals of `web` probed with rise 1 and fall 1 (`127.0.0.1:9`, `127.0.0.2:9`),
    /// and a report of either from its probe task.
    fn two_reals() -> (Health, [RealKey; 2]) {
        let text = "interfaces: [lo]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.1\n    port: 9\n    protocol: tcp\n    health_check: { interval: 60s, timeout: 1s, rise: 1, fall: 1 }\n    real_servers: [{ address: 127.0.0.1 }, { address: 127.0.0.2 }]\n";
        struct Any;
        impl crate::config::SystemFacts for Any {
            fn interface_exists(&self, _: &str) -> bool {
                true
            }
        }
        let cfg = crate::config::parse(std::path::Path::new("t.yaml"), text, &Any).unwrap();
        // Their own probes report on the manager's channel, not on the tests'.
        let (mut h, _) = Health::new();
        h.sync(&cfg);
        let key = |a: &str| RealKey::real("web", a.parse().unwrap(), 9);
        (h, [key("127.0.0.1"), key("127.0.0.2")])
    }

    fn report(h: &Health, k: &RealKey, ok: bool) -> Report {
        Report {
            key: k.clone(),
            task: h.probes[k].task,
            result: if ok {
                Ok(Duration::ZERO)
            } else {
                Err(Failure::Refused)
            },
        }
    }

    /// Returns: the transitions as (address, healthy).
    fn flips(ts: Vec<Transition>) -> Vec<(IpAddr, bool)> {
        ts.into_iter().map(|t| (t.key.addr, t.healthy)).collect()
    }

    #[tokio::test]
    async fn reports_taken_together_count_against_the_transitions_before_them() {
        let (mut h, [a, b]) = two_reals();
        let (tx, mut rx) = mpsc::channel(16);
        for r in [
            report(&h, &a, false),
            report(&h, &b, true),
            report(&h, &a, true),
            Report {
                task: 0,
                ..report(&h, &b, false)
            },
        ] {
            tx.send(r).await.unwrap();
        }
        // Both start down, as the reconciler holds them.
        let ts = h.take_batch(report(&h, &a, true), &mut rx, |_| false).await;
        let (ia, ib) = (a.addr, b.addr);
        assert_eq!(
            flips(ts),
            [(ia, true), (ia, false), (ib, true), (ia, true)],
            "each result against the transition before it; a replaced task's ignored"
        );
    }

    #[tokio::test]
    async fn rises_wait_for_the_probes_under_way_and_failures_do_not() {
        let (mut h, [a, b]) = two_reals();
        let (tx, mut rx) = mpsc::channel(16);
        // A probe that reports once it runs: after the batch's first report is taken.
        let late = |r: Report| {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(r).await.unwrap() })
        };
        late(report(&h, &b, true));
        let ts = h.take_batch(report(&h, &a, true), &mut rx, |_| false).await;
        assert_eq!(
            flips(ts),
            [(a.addr, true), (b.addr, true)],
            "rises share a batch"
        );

        late(report(&h, &b, true));
        let ts = h.take_batch(report(&h, &a, false), &mut rx, |_| true).await;
        assert_eq!(flips(ts), [(a.addr, false)], "a failure is applied at once");
        assert!(
            rx.recv().await.is_some(),
            "the later report waits for its turn"
        );
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_batch_max_reports() {
        let (mut h, [a, _]) = two_reals();
        let (tx, mut rx) = mpsc::channel(BATCH_MAX + 10);
        for _ in 0..BATCH_MAX + 5 {
            tx.send(report(&h, &a, false)).await.unwrap();
        }
        let ts = h
            .take_batch(report(&h, &a, false), &mut rx, |_| false)
            .await;
        assert!(ts.is_empty(), "down already: no transition");
        assert_eq!(rx.len(), 6, "the rest wait for the next batch");
    }
}
