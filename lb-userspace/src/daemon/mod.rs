//! `xdpvs run`: load, attach, keep the maps true, clean up.
//!
//! One task owns the BPF object and every map (through the [`Reconciler`]); signals,
//! probe reports, control requests, scrapes and the neighbour refresh tick reach it
//! through `select!`, so map updates never race. This module is the lifecycle and that
//! loop; the host's networking is in [`host`], the answers to control requests and
//! scrapes in [`requests`], what status and metrics show in [`views`].
//!
//! Lifecycle (decision 0005): the data path is pinned (`dataplane::pins`). A daemon
//! that finds its instance's pins adopts them: the maps with their contents, the
//! reconciler's picture read back from them, the VIPs the earlier daemon added; its
//! program replaces the earlier one on the same links, atomically. On SIGTERM/SIGINT,
//! or when it dies, the data path goes on forwarding with its last state; `xdpvs
//! teardown` removes it. Only a first start that fails before attaching removes what
//! it added.

mod host;
mod neighbours;
pub mod privilege;
mod requests;
mod routes;
pub mod views;
mod vlans;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::maps::{DEFAULT_RING_COUNT, MAX_VS};
use tokio::signal::unix::{signal, SignalKind};

use self::{host::Host, routes::Routes, views::Reloads};
use crate::{
    config::{self, Config, ConfigErrors},
    control::{
        self,
        server::{Call, Socket},
    },
    dataplane::{
        bpf::{self, BpfDataplane, Programs},
        pins,
    },
    health::{self, Health, Report},
    instance::{self, Instance},
    metrics,
    reconcile::Reconciler,
};

/// How often next hops are re-read from the kernel.
const REFRESH: Duration = Duration::from_secs(1);
/// How long start-up waits for reals' MACs before attaching anyway.
const INITIAL_RESOLVE: Duration = Duration::from_secs(3);

/// A start-up or run failure; a bad configuration is told apart for exit code 64.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

struct Daemon {
    path: PathBuf,
    instance: Instance,
    /// No earlier run left a data path: a failed start removes what it added.
    fresh: bool,
    /// The program is attached: from here on, stopping leaves the data path forwarding.
    attached: bool,
    /// When this daemon started serving (for the state file).
    started_at: Option<u64>,
    rec: Reconciler<BpfDataplane>,
    /// The loaded programs (their links are pinned: dropping them detaches nothing).
    programs: Programs,
    host: Host,
    /// The routes announcing VIPs (config `announce`).
    routes: Routes,
    /// Taken out by `xdpvs withdraw` (kept across restarts in the state file).
    withdrawn: bool,
    health: Health,
    /// Where probe tasks report; taken by `serve`.
    reports: Option<tokio::sync::mpsc::Receiver<Report>>,
    /// The control socket this daemon created (removed when dropped).
    socket: Option<Socket>,
    /// Connection table size (for status).
    flow_table_size: u32,
    /// Where `/metrics` is served, if anywhere.
    metrics_listen: Option<std::net::SocketAddr>,
    reloads: Reloads,
    /// How XDP is attached (also when an interface comes back as a new device).
    xdp_mode: config::XdpMode,
    /// Interfaces that came back but could not be attached to yet (retried each tick).
    unattached: Vec<crate::netlink::Interface>,
    /// SYNs past the connection table as read at the last tick, and whether that tick
    /// saw a flood (decision 0025): each flood is logged as it starts and ends.
    syn_flood: (Option<u64>, bool),
}

/// Spare Maglev rings beyond one per virtual server, at least.
const MIN_SPARE_RINGS: u32 = 8;

/// Returns: the Maglev rings to load `VS_RINGS` with for `config`: one per virtual
/// server and spares that new tables are written into (decision 0013), an eighth more
/// and at least 8 so that a reload may add virtual servers; at least
/// `DEFAULT_RING_COUNT`. Each ring takes 256 KiB (65,537 slots, two to an 8-byte
/// element: decision 0030).
pub fn ring_count(config: &Config) -> u32 {
    let n = config.virtual_servers.len() as u32;
    (n + (n / 8).max(MIN_SPARE_RINGS)).clamp(DEFAULT_RING_COUNT, MAX_VS + MIN_SPARE_RINGS)
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(path: &Path) -> Result<(), RunError> {
    let config = config::load(path, &config::Host)?;
    let instance = Instance::of(&config);
    if instance.daemon_running() {
        return Err(anyhow::anyhow!(
            "another xdpvs daemon answers on {}; stop it first",
            instance.socket.display()
        )
        .into());
    }
    // Raw sockets need CAP_NET_RAW, which the daemon drops once started (`privilege`):
    // they are opened first, for the daemon's life, whether or not a probe uses them
    // yet; a configuration that needs them and cannot have them changes nothing.
    let sockets = match health::Sockets::open() {
        Ok(s) => Some(s),
        Err(e) => match health::first_half_open(&config) {
            Some(real) => {
                return Err(anyhow::anyhow!(
                    "{}: {real}: health_check type tcp_half_open needs raw sockets, which could not be opened: {e} (the daemon needs CAP_NET_RAW at start)",
                    path.display()
                )
                .into())
            }
            None => {
                tracing::info!("half-open probes unavailable (raw sockets: {e}); a reload cannot add them");
                None
            }
        },
    };
    let mut host = Host::open(&config).await?;
    let mut opts = bpf::LoadOptions {
        flow_entries: config.flow_table_size,
        ring_count: ring_count(&config),
    };
    pins::mount_bpffs(&config.pin_path).context("pin_path")?;
    let fresh = !instance.pins.exist();
    let plan = instance
        .pins
        .prepare(crate::BPF_OBJECT, &mut opts)
        .context("the pinned data path")?;
    for why in &plan.dropped {
        tracing::warn!(instance = %instance.name, "pinned map made anew, its contents dropped: {why}");
    }
    let ebpf = bpf::load_pinned(opts, &instance.pins)
        .context("loading the BPF programs (run as root; kernel with BPF and XDP)")?;
    let (mut dp, mut programs) = BpfDataplane::new(ebpf).context("the BPF object's maps")?;
    if let Some(grow) = plan.grow {
        grow_rings(&mut dp, &mut programs, &instance, grow)?;
    }
    let rec = if plan.adopt {
        let (rec, found) = Reconciler::adopt(dp, MAX_VS, opts.ring_count, &config)
            .context("adopting the pinned data path")?;
        tracing::info!(instance = %instance.name, pins = %instance.pins.dir().display(), virtual_servers = ?found.virtual_servers, reals = found.reals, "adopted the pinned data path of an earlier run");
        for vs in &found.removed {
            tracing::info!(vs = %vs, "left over from the earlier run: virtual server removed");
        }
        rec
    } else {
        Reconciler::new(dp, MAX_VS, opts.ring_count)
    };
    let state = instance.load_state();
    host.adopt_vips(state.added_vips);
    let routes = Routes::new(host.handle());
    let (mut health, reports) = Health::new();
    if let Some(s) = sockets {
        health
            .use_half_open(s)
            .context("starting the half-open probes")?;
    }
    let mut d = Daemon {
        path: path.to_owned(),
        instance,
        fresh,
        attached: false,
        started_at: None,
        rec,
        programs,
        host,
        routes,
        withdrawn: state.withdrawn,
        health,
        reports: Some(reports),
        socket: None,
        flow_table_size: config.flow_table_size,
        metrics_listen: None,
        reloads: Reloads::default(),
        xdp_mode: config.xdp_mode,
        unattached: Vec::new(),
        syn_flood: (None, false),
    };
    let result = d.start_and_serve(&config).await;
    d.cleanup().await;
    result.map_err(RunError::Other)
}

/// Ends growing the ring map (`pins::Grow`): copies the rings of the map set aside into
/// the new one, then puts the new program on the pinned links before anything is
/// written: `VS_MAP` is shared, and from the first table written the old program would
/// read, under a ring id, a ring written into the new map only. The new program reads
/// the maps as the old one left them, which is what a reload starts from. Only then is
/// the old map unpinned: a start that dies before finds it and grows again from it.
fn grow_rings(
    dp: &mut BpfDataplane,
    programs: &mut Programs,
    instance: &Instance,
    grow: pins::Grow,
) -> anyhow::Result<()> {
    let pins = &instance.pins;
    let copied = dp
        .copy_rings(&pins.rings_aside())
        .context("copying the pinned Maglev rings into the new ring map")?;
    programs
        .replace_pinned(pins)
        .context("swapping the program onto the pinned links")?;
    pins.finish_grow()
        .context("unpinning the ring map set aside")?;
    let how = if grow.single {
        format!(
            "was rebuilt with two slots to an element (decision 0030), {} rings",
            grow.to
        )
    } else {
        format!("grew from {copied} to {} rings", grow.to)
    };
    tracing::info!(instance = %instance.name, from = copied, to = grow.to, "the ring map {how}: every ring copied, no pinned map dropped, connections kept");
    Ok(())
}

impl Daemon {
    async fn start_and_serve(&mut self, config: &Config) -> anyhow::Result<()> {
        host::preflight(config, self.host.attached())?;
        self.host.register_attached(&mut self.rec)?;
        self.host.refresh_own_macs(&mut self.rec).await?;
        self.host.refresh_vlans(&mut self.rec).await?;
        self.rec.apply(config).context("filling the BPF maps")?;
        self.health.sync(config);
        let deadline = Instant::now() + INITIAL_RESOLVE;
        loop {
            let missing = self.host.refresh_next_hops(&mut self.rec).await?;
            if missing == 0 || Instant::now() >= deadline {
                if missing > 0 {
                    tracing::warn!(missing, "some real servers' next hops are not resolved yet; their packets are dropped until they are");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.attach(config)?;
        let filter = self.flow_filter()?;
        self.resolve_reported_next_hops();
        self.host.sync_vips(config).await?;
        self.routes
            .use_table(config.announce.map(|a| a.table))
            .await
            .context("the announce table")?;
        if self.withdrawn {
            tracing::warn!("this node is withdrawn (`xdpvs withdraw` before the restart): it announces nothing and `xdpvs ready` fails until `xdpvs announce`");
        }
        self.sync_routes().await;
        self.started_at = Some(instance::now());
        self.save_state(None);
        let (socket, calls) = control::server::listen(&config.control_socket)?;
        self.socket = Some(socket);
        let scrapes = self.listen_metrics(config.metrics_listen).await?;
        // Everything that needs more than CAP_NET_ADMIN is behind us (decision 0007).
        privilege::drop_to_kept().context("dropping privileges after start-up")?;
        tracing::info!(kept = %privilege::kept_names(), no_new_privs = true, "privileges dropped: every other capability is gone from the effective, permitted and bounding sets");
        // Started after the drop: a thread keeps the capabilities it started with.
        std::thread::Builder::new()
            .name("flow-filter".into())
            .spawn(move || filter.run())
            .context("starting the connection table filter's thread")?;
        tracing::info!(config = %self.path.display(), virtual_servers = config.virtual_servers.len(), probed_reals = self.health.len(), control_socket = %config.control_socket.display(), "xdpvs running");
        notify_ready();
        self.serve(calls, scrapes).await
    }

    /// Starts the task that has the kernel resolve the next hops the data path reports
    /// unresolved (decision 0019). Without it those drop until something else resolves
    /// them: logged, not fatal.
    fn resolve_reported_next_hops(&mut self) {
        let misses = self
            .programs
            .take_neigh_misses()
            .and_then(|m| m.into_async());
        match misses {
            Ok(m) => {
                tokio::spawn(neighbours::resolve(m, self.host.handle()));
            }
            Err(e) => tracing::error!(
                "reading the data path's unresolved next hops: {e}; packets toward a next hop without a neighbour entry are dropped until the kernel resolves it for another reason"
            ),
        }
    }

    /// Binds `metrics_listen` (if set) and starts the task serving `/metrics`.
    /// Returns: the channel its scrapes arrive on (closed at once if metrics are off).
    async fn listen_metrics(
        &mut self,
        addr: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<tokio::sync::mpsc::Receiver<metrics::Ask>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<metrics::Ask>(16);
        self.metrics_listen = addr;
        let Some(addr) = addr else {
            return Ok(rx);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics_listen {addr}"))?;
        tracing::info!(address = %addr, "serving Prometheus metrics at /metrics");
        tokio::spawn(metrics::serve(listener, tx));
        Ok(rx)
    }

    async fn serve(
        &mut self,
        mut calls: tokio::sync::mpsc::Receiver<Call>,
        mut scrapes: tokio::sync::mpsc::Receiver<metrics::Ask>,
    ) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(REFRESH);
        let mut reports = self.reports.take().expect("serve runs once");
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()) }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()) }
                _ = hup.recv() => { let _ = self.reload().await; }
                Some(r) = reports.recv() => {
                    let ts = self.health.take_batch(r, &mut reports, |k| self.rec.healthy(k)).await;
                    let (down, up) = self.on_probe(ts).await?;
                    for real in &down {
                        self.host.forget_real_neighbour(*real).await;
                    }
                    if up {
                        // A MAC learnt by the probe that brought a real up goes to REALS
                        // now, not at the next tick.
                        if let Err(e) = self.host.refresh_next_hops(&mut self.rec).await {
                            tracing::error!("reading the reals' next hops: {e:#}");
                        }
                    }
                    if up || !down.is_empty() {
                        self.sync_routes().await
                    }
                },
                Some((req, reply)) = calls.recv() => {
                    self.on_control(req, reply).await;
                    self.sync_routes().await;
                }
                Some(reply) = scrapes.recv(), if self.metrics_listen.is_some() => self.on_scrape(reply),
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// Keeps the data path true to the host (see the operator guide's "host churn"):
    /// interfaces that came back as new devices get XDP again, VIPs that went are
    /// added back, next hops and MACs are re-read. A failure is logged and retried at
    /// the next tick: the host changing under the daemon must not stop it.
    async fn on_tick(&mut self) {
        match self.host.refresh_interfaces(&mut self.rec).await {
            Ok(back) => self.unattached.extend(back),
            Err(e) => tracing::error!("re-reading the interfaces: {e:#}"),
        }
        for i in std::mem::take(&mut self.unattached) {
            match self.programs.attach_pinned(
                &self.instance.pins,
                i.index,
                &i.name,
                self.xdp_mode.into(),
            ) {
                Ok(_) => {
                    tracing::info!(interface = %i.name, ifindex = i.index, mode = ?self.xdp_mode, "XDP attached again")
                }
                Err(e) => {
                    tracing::error!(interface = %i.name, "attaching XDP again (retried each second): {e:#}");
                    self.unattached.push(i);
                }
            }
        }
        match self.host.restore_vips().await {
            Ok(true) => self.save_state(None),
            Ok(false) => {}
            Err(e) => tracing::error!("adding VIP addresses back: {e:#}"),
        }
        if let Err(e) = self.host.refresh_next_hops(&mut self.rec).await {
            tracing::error!("reading the reals' next hops: {e:#}");
        }
        if let Err(e) = self.host.refresh_own_macs(&mut self.rec).await {
            tracing::error!("reading the attached interfaces' other MACs: {e:#}");
        }
        if let Err(e) = self.host.refresh_vlans(&mut self.rec).await {
            tracing::error!("reading the attached interfaces' VLAN devices: {e:#}");
        }
        self.sync_routes().await;
        self.watch_syn_floods();
    }

    /// Returns: the connection table's filter (marked incomplete when the maps were
    /// taken), for a thread to rebuild (decision 0026): at once, which makes it
    /// complete, then every few seconds.
    fn flow_filter(&mut self) -> anyhow::Result<crate::dataplane::flow_filter::FlowFilter> {
        self.rec
            .dataplane()
            .flow_filter()
            .context("the connection table's filter")
    }

    /// Logs a SYN flood as it starts (a tick in which SYNs went past the connection
    /// table, decision 0025) and as it ends (a tick in which none did).
    fn watch_syn_floods(&mut self) {
        use crate::dataplane::DataplaneRead as _;
        let now = match self.rec.dataplane().syns_past_table() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reading the SYN-flood counters: {e:#}");
                return;
            }
        };
        let (before, flooding) = self.syn_flood;
        let past = before.map_or(0, |b| now.saturating_sub(b));
        if past > 0 && !flooding {
            tracing::warn!(syns = past, "SYN flood: a CPU sees more than syn_flood_rate SYNs a second; SYNs are balanced without looking up the connection table until it ends");
        } else if past == 0 && flooding {
            tracing::info!(
                total = now,
                "SYN flood over: SYNs look up the connection table again"
            );
        }
        self.syn_flood = (Some(now), past > 0);
    }

    /// Keeps the announce table true to what this node should take traffic for. A
    /// failure is logged and retried at the next tick.
    async fn sync_routes(&mut self) {
        if self.routes.table().is_none() {
            return;
        }
        let plan = self.views().announcements();
        if let Err(e) = self.routes.sync(&plan).await {
            tracing::error!("keeping the announce table: {e:#}");
        }
    }

    /// Applies the health transitions of probe results taken together
    /// ([`Health::take_batch`]) at once: each virtual server they touch is synced once
    /// (one table build and write however many of its reals changed), its table built
    /// off this thread while the probes run on, so that the reports that come in
    /// meanwhile make the next batch. Each transition is logged. Returns: the addresses
    /// of reals that went down (each once), and whether any real came up.
    async fn on_probe(
        &mut self,
        ts: Vec<crate::health::Transition>,
    ) -> anyhow::Result<(Vec<std::net::IpAddr>, bool)> {
        if ts.is_empty() {
            return Ok((Vec::new(), false));
        }
        let changes: Vec<_> = ts.iter().map(|t| (t.key.clone(), t.healthy)).collect();
        self.rec.set_health_many(&changes).await?;
        let mut down = Vec::new();
        // The virtual servers where a real went down, each once, in order.
        let mut lost: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in &ts {
            let (vs, real, port) = (&t.key.vs, t.key.addr, t.key.port);
            match &t.reason {
                None => {
                    tracing::info!(vs = %vs, real = %real, port, "real server is up: back in the table")
                }
                Some(why) => {
                    tracing::warn!(vs = %vs, real = %real, port, reason = %why, "real server is down: out of the table, its flows re-steered")
                }
            }
            if !t.healthy {
                down.push(real);
                if seen.insert(vs.as_str()) {
                    lost.push(vs);
                }
            }
        }
        for vs in lost {
            let views = self.rec.real_views(vs);
            let serving = views.iter().filter(|v| v.in_table && !v.key.sorry).count();
            let sorry = views.iter().any(|v| v.in_table && v.key.sorry);
            if serving == 0 {
                if sorry {
                    tracing::warn!(vs = %vs, "no real server takes new flows: the sorry server does");
                } else {
                    tracing::error!(vs = %vs, "no real server takes new flows: new flows are dropped (drop_no_real)");
                }
            }
        }
        down.sort();
        down.dedup();
        Ok((down, ts.iter().any(|t| t.healthy)))
    }

    /// Re-reads the file; a bad file is reported and changes nothing. Counted for
    /// metrics. Returns: what was applied, or why nothing was.
    async fn reload(&mut self) -> Result<String, String> {
        let r = self.reload_file().await;
        self.reloads.count(r.is_ok());
        r
    }

    async fn reload_file(&mut self) -> Result<String, String> {
        let config = match config::load(&self.path, &config::Host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(config = %self.path.display(), "reload rejected, running configuration unchanged: {e}");
                return Err(format!(
                    "reload rejected, running configuration unchanged: {e}"
                ));
            }
        };
        if let Err(e) = host::preflight(&config, self.host.attached()) {
            tracing::error!(config = %self.path.display(), "reload rejected, running configuration unchanged: {e:#}");
            return Err(format!(
                "reload rejected, running configuration unchanged: {e:#}"
            ));
        }
        if !self.health.has_half_open() {
            if let Some(real) = health::first_half_open(&config) {
                let e = format!("reload rejected, running configuration unchanged: {real}: health_check type tcp_half_open needs raw sockets, which this daemon could not open at start (CAP_NET_RAW); restart it with that capability");
                tracing::error!(config = %self.path.display(), "{e}");
                return Err(e);
            }
        }
        let names: Vec<&String> = self.host.attached().iter().map(|i| &i.name).collect();
        // Runs with CAP_NET_ADMIN only (`privilege`): what would need more (attaching
        // to new interfaces, new sockets, new pins or map sizes) waits for a restart.
        if config.interfaces.iter().collect::<Vec<_>>() != names {
            tracing::warn!("interface changes take effect on restart; other changes are applied");
        }
        if let Err(e) = self.rec.apply(&config) {
            tracing::error!("reload failed while applying: {e}");
            return Err(format!("reload failed while applying: {e}"));
        }
        self.health.sync(&config);
        if let Err(e) = self.host.sync_vips(&config).await {
            tracing::error!("reload: VIP addresses: {e:#}");
        }
        if let Err(e) = self
            .routes
            .use_table(config.announce.map(|a| a.table))
            .await
        {
            tracing::error!("reload: the announce table: {e:#}");
        }
        self.sync_routes().await;
        self.save_state(None);
        if let Err(e) = self.host.refresh_next_hops(&mut self.rec).await {
            tracing::error!("reload: next hops: {e:#}");
        }
        if self.socket.as_ref().map(|s| s.path()) != Some(config.control_socket.as_path()) {
            tracing::warn!("a control_socket change takes effect on restart");
        }
        if self.metrics_listen != config.metrics_listen {
            tracing::warn!("a metrics_listen change takes effect on restart");
        }
        tracing::info!(config = %self.path.display(), virtual_servers = config.virtual_servers.len(), "configuration reloaded");
        Ok(format!(
            "configuration reloaded: {} virtual servers",
            config.virtual_servers.len()
        ))
    }

    /// Attaches the program to every configured interface through its pinned link
    /// (replacing the earlier program atomically where there is one), and removes the
    /// links of interfaces the configuration no longer has.
    fn attach(&mut self, config: &Config) -> anyhow::Result<()> {
        let pins = &self.instance.pins;
        for i in self.host.attached() {
            let replaced = self
                .programs
                .attach_pinned(pins, i.index, &i.name, config.xdp_mode.into())
                .with_context(|| format!("interface {}", i.name))?;
            self.attached = true;
            let what = if replaced {
                "XDP program replaced on the pinned link"
            } else {
                "XDP attached"
            };
            tracing::info!(interface = %i.name, ifindex = i.index, mode = ?config.xdp_mode, "{what}");
        }
        for name in pins.linked_interfaces() {
            if !self.host.attached().iter().any(|i| i.name == name) {
                pins.unlink(&name)?;
                tracing::info!(interface = %name, "left over from the earlier run: XDP link removed");
            }
        }
        Ok(())
    }

    /// Records the VIPs this instance added, when it started and stopped, whether it is
    /// withdrawn and where it announces, for the next daemon, teardown and `withdraw`. A failure is logged: it loses no traffic.
    fn save_state(&self, stopped_at: Option<u64>) {
        let state = instance::State {
            added_vips: self.host.added_vips(),
            started_at: self.started_at,
            stopped_at,
            withdrawn: self.withdrawn,
            announce_table: self.routes.table(),
        };
        if let Err(e) = self.instance.save_state(&state) {
            tracing::error!("recording the instance's state: {e:#}");
        }
    }

    /// Ends the run. A first start that failed before attaching removes what it added;
    /// otherwise the data path is left forwarding with its last state.
    async fn cleanup(&mut self) {
        self.socket = None;
        // Not running: the routing layer must send this node nothing (the data path
        // left forwarding serves what still arrives, e.g. until routers converge).
        self.routes.withdraw_all().await;
        if self.fresh && !self.attached {
            self.host.remove_vips().await;
            match self.instance.pins.remove_all() {
                Ok(_) => tracing::info!("start-up failed: nothing left behind"),
                Err(e) => tracing::error!("start-up failed; removing the pins: {e}"),
            }
            return;
        }
        // Nobody reads the host's routing any more: every NAT packet is looked up
        // (decision 0024).
        if let Err(e) = self.rec.clear_route_shape() {
            tracing::error!("taking the NAT next hop marks away: {e:#}");
        }
        self.save_state(Some(instance::now()));
        tracing::info!(instance = %self.instance.name, pins = %self.instance.pins.dir().display(), "stopped: the data path is left forwarding with its last state, without health checks; `xdpvs run` takes it over, `xdpvs teardown` removes it");
    }
}

/// Tells systemd (Type=notify) that start-up is complete, when run under it.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = r {
        tracing::warn!("sd_notify READY=1 failed: {e}");
    }
}
