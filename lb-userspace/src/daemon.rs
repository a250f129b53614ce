//! `xdpvs run`: load, attach, keep the maps true, clean up.
//!
//! One task owns the BPF object and every map (through the [`Reconciler`]); signals and
//! the neighbour refresh tick reach it through `select!`, so map updates never race.
//! Lifecycle: nothing is pinned. On SIGTERM/SIGINT, or on a failure after start-up
//! began, the daemon removes the VIPs it added and drops the BPF object, which detaches
//! XDP from every interface: a stopped xdpvs leaves the host as it found it.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::{
    maps::{DEFAULT_RING_COUNT, MAX_VS, PROG_LB},
    IfaceInfo,
};
use rtnetlink::Handle;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::{self, Config, ConfigErrors, Host, Method},
    control::{self, RealAction, Request, Response},
    dataplane::{bpf, bpf::BpfDataplane, Dataplane as _},
    health::{Health, Report},
    metrics, netlink,
    reconcile::{L2Next, Override, RealKey, Reconciler},
};

/// A control request and where its answer goes.
type Call = (Request, tokio::sync::oneshot::Sender<Response>);

/// How often next hops are re-read from the kernel.
const REFRESH: Duration = Duration::from_secs(1);
/// A real whose neighbour entry is not fresh is solicited at most this often.
const SOLICIT_EVERY: Duration = Duration::from_secs(5);
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
    handle: Handle,
    rec: Reconciler<BpfDataplane>,
    /// Interfaces XDP is attached to (first: where VIPs are added).
    attached: Vec<netlink::Interface>,
    /// Interfaces registered in IFACES (attached ones and egress ones found by routing).
    known_ifaces: HashSet<u32>,
    /// VIPs this daemon added (and so removes), with their ifindex.
    added_vips: Vec<(u32, IpAddr)>,
    manage_vips: bool,
    last_solicit: HashMap<IpAddr, Instant>,
    /// Reals already warned about (not on a connected network).
    warned: HashSet<IpAddr>,
    health: Health,
    /// Where probe tasks report; taken by `serve`.
    reports: Option<tokio::sync::mpsc::Receiver<Report>>,
    /// The control socket this daemon created (removed on exit).
    socket: Option<PathBuf>,
    /// Connection table size (for status).
    flow_table_size: u32,
    /// Where `/metrics` is served, if anywhere.
    metrics_listen: Option<std::net::SocketAddr>,
    /// Reloads applied and rejected, and whether the last one was applied.
    reloads_ok: u64,
    reloads_failed: u64,
    last_reload_ok: bool,
}

fn ring_count(config: &Config) -> u32 {
    // Two rings per virtual server, room to double the count on reload.
    let want = (config.virtual_servers.len() as u32 * 4).max(DEFAULT_RING_COUNT);
    want.min(2 * MAX_VS)
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(path: &Path) -> Result<(), RunError> {
    let config = config::load(path, &Host)?;
    let handle = netlink::connect().context("netlink")?;
    let mut attached = Vec::new();
    for name in &config.interfaces {
        attached.push(
            netlink::interface(&handle, name)
                .await
                .with_context(|| format!("interface {name}"))?,
        );
    }
    let opts = bpf::LoadOptions {
        flow_entries: config.flow_table_size,
        ring_count: ring_count(&config),
    };
    let ebpf = bpf::load(opts)
        .context("loading the BPF programs (run as root; kernel with BPF and XDP)")?;
    let (health, reports) = Health::new();
    let mut d = Daemon {
        health,
        reports: Some(reports),
        socket: None,
        flow_table_size: config.flow_table_size,
        metrics_listen: None,
        reloads_ok: 0,
        reloads_failed: 0,
        last_reload_ok: true,
        path: path.to_owned(),
        handle,
        rec: Reconciler::new(BpfDataplane::new(ebpf), MAX_VS, opts.ring_count),
        attached,
        known_ifaces: HashSet::new(),
        added_vips: Vec::new(),
        manage_vips: config.manage_vips,
        last_solicit: HashMap::new(),
        warned: HashSet::new(),
    };
    let result = d.start_and_serve(&config).await;
    d.cleanup().await;
    result.map_err(RunError::Other)
}

/// Returns: the sysctl that must be 1 for the FIB lookup of NAT/tunnel traffic
/// arriving on `ifname` in `family`, if it is not.
fn forwarding_off(ifname: &str, v6: bool) -> Option<String> {
    let key = if v6 {
        format!("net.ipv6.conf.{ifname}.forwarding")
    } else {
        format!("net.ipv4.conf.{ifname}.forwarding")
    };
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => None,
        _ => Some(key),
    }
}

/// Checks what the configuration needs of the host beyond the file: NAT and tunnel
/// virtual servers route through the kernel's FIB, which answers only for interfaces
/// with forwarding enabled.
fn preflight(config: &Config, attached: &[netlink::Interface]) -> anyhow::Result<()> {
    // false: IPv4, true: IPv6.
    let families: BTreeSet<bool> = config
        .virtual_servers
        .iter()
        .filter(|v| v.method != Method::Dr)
        .map(|v| v.address.is_ipv6())
        .collect();
    let missing: BTreeSet<String> = families
        .iter()
        .flat_map(|&v6| {
            attached
                .iter()
                .filter_map(move |i| forwarding_off(&i.name, v6))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.into_iter().map(|k| format!("{k}=1")).collect();
    anyhow::bail!(
        "NAT and tunnel virtual servers need forwarding enabled on the interfaces XDP runs on; set: sysctl -w {}",
        list.join(" ")
    )
}

impl Daemon {
    async fn start_and_serve(&mut self, config: &Config) -> anyhow::Result<()> {
        preflight(config, &self.attached)?;
        for i in self.attached.clone() {
            self.register_iface(i.index, i.mac)?;
        }
        self.rec.apply(config).context("filling the BPF maps")?;
        self.health.sync(config, |k| self.rec.healthy(k));
        let deadline = Instant::now() + INITIAL_RESOLVE;
        loop {
            let missing = self.refresh_next_hops().await?;
            if missing == 0 || Instant::now() >= deadline {
                if missing > 0 {
                    tracing::warn!(missing, "some real servers' next hops are not resolved yet; their packets are dropped until they are");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in &self.attached {
            bpf::attach(
                &mut self.rec.dp.ebpf,
                PROG_LB,
                i.index,
                config.xdp_mode.into(),
            )
            .with_context(|| format!("interface {}", i.name))?;
            tracing::info!(interface = %i.name, ifindex = i.index, mode = ?config.xdp_mode, "XDP attached");
        }
        self.sync_vips(config).await?;
        let calls = self.listen(&config.control_socket)?;
        let scrapes = self.listen_metrics(config.metrics_listen).await?;
        tracing::info!(config = %self.path.display(), virtual_servers = config.virtual_servers.len(), probed_reals = self.health.len(), control_socket = %config.control_socket.display(), "xdpvs running");
        notify_ready();
        self.serve(calls, scrapes).await
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

    /// Creates the control socket (mode 0600) and a task accepting its connections.
    /// Returns: the channel the requests arrive on.
    fn listen(&mut self, path: &Path) -> anyhow::Result<tokio::sync::mpsc::Receiver<Call>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another xdpvs daemon answers on {}; stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        // Created 0600 from the start: no window in which others could connect.
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = tokio::net::UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.with_context(|| format!("control socket {}", path.display()))?;
        self.socket = Some(path.to_owned());
        let (tx, rx) = tokio::sync::mpsc::channel::<Call>(16);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_client(conn, tx.clone()));
            }
        });
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
                Some(r) = reports.recv() => self.on_probe(r)?,
                Some((req, reply)) = calls.recv() => self.on_control(req, reply).await,
                Some(reply) = scrapes.recv(), if self.metrics_listen.is_some() => self.on_scrape(reply),
                _ = tick.tick() => { self.refresh_next_hops().await?; }
            }
        }
    }

    /// Counts a probe result; a health transition updates the real's table at once.
    fn on_probe(&mut self, report: Report) -> anyhow::Result<()> {
        let Some(t) = self.health.record(report) else {
            return Ok(());
        };
        self.rec.set_health(&t.key, t.healthy)?;
        let (vs, real, port) = (&t.key.vs, t.key.addr, t.key.port);
        match &t.reason {
            None => {
                tracing::info!(vs = %vs, real = %real, port, "real server is up: back in the table")
            }
            Some(why) => {
                tracing::warn!(vs = %vs, real = %real, port, reason = %why, "real server is down: out of the table, its flows re-steered")
            }
        }
        let views = self.rec.real_views(vs);
        let serving = views.iter().filter(|v| v.in_table && !v.key.sorry).count();
        let sorry = views.iter().any(|v| v.in_table && v.key.sorry);
        if serving == 0 && !t.healthy {
            if sorry {
                tracing::warn!(vs = %vs, "no real server takes new flows: the sorry server does");
            } else {
                tracing::error!(vs = %vs, "no real server takes new flows: new flows are dropped (drop_no_real)");
            }
        }
        Ok(())
    }

    /// Re-reads the file; a bad file is reported and changes nothing. Counted for
    /// metrics. Returns: what was applied, or why nothing was.
    async fn reload(&mut self) -> Result<String, String> {
        let r = self.reload_file().await;
        self.last_reload_ok = r.is_ok();
        if r.is_ok() {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
        r
    }

    async fn reload_file(&mut self) -> Result<String, String> {
        let config = match config::load(&self.path, &Host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(config = %self.path.display(), "reload rejected, running configuration unchanged: {e}");
                return Err(format!(
                    "reload rejected, running configuration unchanged: {e}"
                ));
            }
        };
        if let Err(e) = preflight(&config, &self.attached) {
            tracing::error!(config = %self.path.display(), "reload rejected, running configuration unchanged: {e:#}");
            return Err(format!(
                "reload rejected, running configuration unchanged: {e:#}"
            ));
        }
        let names: Vec<&String> = self.attached.iter().map(|i| &i.name).collect();
        if config.interfaces.iter().collect::<Vec<_>>() != names {
            tracing::warn!("interface changes take effect on restart; other changes are applied");
        }
        if let Err(e) = self.rec.apply(&config) {
            tracing::error!("reload failed while applying: {e}");
            return Err(format!("reload failed while applying: {e}"));
        }
        self.health.sync(&config, |k| self.rec.healthy(k));
        self.manage_vips = config.manage_vips;
        if let Err(e) = self.sync_vips(&config).await {
            tracing::error!("reload: VIP addresses: {e:#}");
        }
        if let Err(e) = self.refresh_next_hops().await {
            tracing::error!("reload: next hops: {e:#}");
        }
        if self.socket.as_deref() != Some(config.control_socket.as_path()) {
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

    /// Answers one control request. A status is read now; its flow counts are filled in
    /// by a walk of the connection table on a blocking thread, so a large table does
    /// not hold up this task.
    async fn on_control(&mut self, req: Request, reply: tokio::sync::oneshot::Sender<Response>) {
        let resp = match req {
            Request::Status => match self.status_parts() {
                Ok((status, count)) => {
                    count.fill_then(status, reply, |r| match r {
                        Ok(s) => Response {
                            ok: true,
                            message: None,
                            status: Some(s),
                        },
                        Err(e) => Response::error(format!("{e:#}")),
                    });
                    return;
                }
                Err(e) => Response::error(format!("{e:#}")),
            },
            Request::Reload => match self.reload().await {
                Ok(m) => Response::ok(m),
                Err(e) => Response::error(e),
            },
            Request::Real { vs, real, action } => match self.real_override(&vs, &real, action) {
                Ok(m) => Response::ok(m),
                Err(e) => Response::error(format!("{e:#}")),
            },
        };
        let _ = reply.send(resp);
    }

    /// `xdpvs real disable|enable|weight`: a runtime override of one real.
    fn real_override(
        &mut self,
        vs: &str,
        real: &str,
        action: RealAction,
    ) -> anyhow::Result<String> {
        let (addr, port) = control::parse_real(real)
            .ok_or_else(|| anyhow::anyhow!("`{real}` is not ADDRESS or ADDRESS:PORT"))?;
        if !self.rec.virtual_servers().any(|v| v.name == vs) {
            anyhow::bail!("no virtual server named `{vs}`");
        }
        let matches: Vec<RealKey> = self
            .rec
            .real_views(vs)
            .into_iter()
            .filter(|v| !v.key.sorry && v.key.addr == addr && port.is_none_or(|p| p == v.key.port))
            .map(|v| v.key)
            .collect();
        let key = match matches.as_slice() {
            [k] => k.clone(),
            [] => anyhow::bail!("virtual server `{vs}` has no real {real}"),
            _ => anyhow::bail!(
                "virtual server `{vs}` has several reals at {addr}: give ADDRESS:PORT"
            ),
        };
        let file_weight = self.rec.file_weight(&key).unwrap_or(0);
        let mut o = self.rec.override_of(&key).unwrap_or(Override {
            weight: None,
            disabled: false,
            file_weight,
        });
        if let RealAction::Weight(w) = action {
            if w > config::MAX_WEIGHT {
                anyhow::bail!("weight {w} is out of range 0..={}", config::MAX_WEIGHT);
            }
        }
        match action {
            RealAction::Disable => o.disabled = true,
            RealAction::Enable => o.disabled = false,
            RealAction::Weight(w) => o.weight = Some(w),
        }
        let change = (o.disabled || o.weight.is_some_and(|w| w != file_weight)).then_some(o);
        self.rec.set_override(&key, change)?;
        let what = match action {
            RealAction::Disable => {
                "disabled (draining: no new connections, established ones continue)".to_string()
            }
            RealAction::Enable => "enabled".to_string(),
            RealAction::Weight(w) => format!("weight set to {w} (file: {file_weight})"),
        };
        tracing::info!(vs = %vs, real = %key.addr, port = key.port, "runtime override: real {what}");
        Ok(format!("{vs} {}:{}: {what}", key.addr, key.port))
    }

    /// Everything `xdpvs status` shows but the flow counts, read from the maps now.
    /// Returns: that, and what [`FlowCount::fill_then`] needs to count the flows.
    fn status_parts(&self) -> anyhow::Result<(control::Status, FlowCount)> {
        use lb_common::maps::{STATS_REAL, STATS_VS};
        let stats = |c: lb_common::Counters| control::Stats {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
        };
        let reader = self.rec.dp.flows_reader()?;
        let mut keys = Vec::new();
        let mut vss = Vec::new();
        for vs in self.rec.virtual_servers() {
            let Some((vs_index, _)) = self.rec.vs_slot(&vs.name) else {
                continue;
            };
            let mut reals = Vec::new();
            for v in self.rec.real_views(&vs.name) {
                let cfg = vs
                    .real_servers
                    .iter()
                    .find(|r| r.address == v.key.addr && r.port == v.key.port && !v.key.sorry);
                let last = self.health.last(&v.key);
                keys.push((v.id, v.generation));
                reals.push(control::RealStatus {
                    address: v.key.addr,
                    port: v.key.port,
                    weight: v.weight,
                    file_weight: v.file_weight,
                    health: if v.healthy { "up" } else { "down" }.to_string(),
                    check: cfg.map_or("none".to_string(), |r| r.health_check.kind.to_string()),
                    disabled: v.disabled,
                    in_table: v.in_table,
                    sorry: v.key.sorry,
                    flows: 0,
                    stats: stats(self.rec.dp.counters(STATS_REAL, v.id)?),
                    last_probe: last.map(|l| match &l.result {
                        Ok(_) => "ok".to_string(),
                        Err(f) => f.to_string(),
                    }),
                    probe_latency_ms: last
                        .and_then(|l| l.result.as_ref().ok())
                        .map(|d| d.as_secs_f64() * 1000.0),
                });
            }
            vss.push(control::VsStatus {
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
                stats: stats(self.rec.dp.counters(STATS_VS, vs_index)?),
                reals,
            });
        }
        let verdicts = self
            .rec
            .dp
            .verdicts()?
            .into_iter()
            .enumerate()
            .map(|(i, n)| (lb_common::reason::name(i as u32).to_string(), n))
            .collect();
        let status = control::Status {
            config: self.path.display().to_string(),
            virtual_servers: vss,
            verdicts,
            flow_table_entries: 0,
            flow_table_size: u64::from(self.flow_table_size),
        };
        Ok((status, FlowCount { keys, reader }))
    }

    /// Answers one scrape of `/metrics`, as [`Daemon::on_control`] answers a status.
    fn on_scrape(&self, reply: metrics::Ask) {
        let (snapshot, count) = match self.snapshot() {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
                return;
            }
        };
        count.fill_then(snapshot.status, reply, move |r| match r {
            Ok(status) => Ok(metrics::Snapshot { status, ..snapshot }),
            Err(e) => Err(format!("{e:#}")),
        });
    }

    /// What one scrape of `/metrics` shows, but the flow counts (see
    /// [`Daemon::status_parts`]).
    fn snapshot(&self) -> anyhow::Result<(metrics::Snapshot, FlowCount)> {
        let probes = self
            .health
            .counts()
            .map(|(k, c)| metrics::ProbeSample {
                vs: k.vs.clone(),
                real: control::endpoint(k.addr, k.port),
                ok: c.ok,
                failed: c.failed,
                latency: c.latency.clone(),
            })
            .collect();
        let (status, count) = self.status_parts()?;
        let snapshot = metrics::Snapshot {
            status,
            probes,
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            last_reload_ok: self.last_reload_ok,
        };
        Ok((snapshot, count))
    }

    fn register_iface(&mut self, index: u32, mac: [u8; 6]) -> anyhow::Result<()> {
        if self.known_ifaces.insert(index) {
            self.rec
                .dp
                .set_iface(index, &IfaceInfo { mac, _pad: [0; 2] })?;
        }
        Ok(())
    }

    /// Adds the VIPs of `config` to the first interface (so the kernel answers ARP and
    /// neighbour solicitations for them), and removes those it added that are gone.
    async fn sync_vips(&mut self, config: &Config) -> anyhow::Result<()> {
        let index = self.attached[0].index;
        let want: BTreeSet<IpAddr> = if self.manage_vips {
            config.virtual_servers.iter().map(|v| v.address).collect()
        } else {
            BTreeSet::new()
        };
        let mut keep = Vec::new();
        for (i, vip) in std::mem::take(&mut self.added_vips) {
            if want.contains(&vip) {
                keep.push((i, vip));
            } else {
                netlink::del_address(&self.handle, i, vip).await?;
                tracing::info!(vip = %vip, "VIP address removed");
            }
        }
        self.added_vips = keep;
        for vip in want {
            if self.added_vips.iter().any(|(_, v)| *v == vip)
                || netlink::has_address(&self.handle, index, vip).await?
            {
                continue;
            }
            netlink::add_address(&self.handle, index, vip).await?;
            self.added_vips.push((index, vip));
            tracing::info!(vip = %vip, interface = %self.attached[0].name, "VIP address added");
        }
        Ok(())
    }

    /// Reads routes and neighbours for every real, updates the maps, solicits the
    /// unresolved. Returns: how many reals still have no resolved next hop.
    async fn refresh_next_hops(&mut self) -> anyhow::Result<usize> {
        let neigh = netlink::neighbours(&self.handle).await?;
        let mut missing = self.refresh_routed(&neigh).await?;
        for addr in self.rec.real_addresses_of(true) {
            let Some(route) = self.route_to_real(addr).await? else {
                missing += 1;
                continue;
            };
            if let Some(gw) = route.gateway {
                if self.warned.insert(addr) {
                    tracing::error!(real = %addr, gateway = %gw, "real server is behind a router: direct routing needs it on a connected network");
                }
            }
            if !self.known_ifaces.contains(&route.oif) {
                // A real reached through an interface XDP is not attached to: frames are
                // redirected there, and need its MAC as their source.
                let name = nix_ifname(route.oif);
                let i = netlink::interface(&self.handle, &name).await?;
                self.register_iface(i.index, i.mac)?;
            }
            let entry = neigh
                .iter()
                .find(|n| n.addr == addr && n.ifindex == route.oif);
            if let Some(n) = entry {
                self.rec.set_next_hop(
                    addr,
                    L2Next {
                        ifindex: route.oif,
                        mac: n.mac,
                    },
                )?;
            } else {
                missing += 1;
            }
            self.solicit_unless_fresh(addr, entry);
        }
        Ok(missing)
    }

    /// NAT and tunnel reals: the data path asks the FIB for their next hop (the real,
    /// or the router toward it) and drops while that neighbour is unresolved; keep it
    /// resolved. Returns: how many have no usable neighbour entry.
    async fn refresh_routed(&mut self, neigh: &[netlink::Neighbour]) -> anyhow::Result<usize> {
        let mut missing = 0;
        for addr in self.rec.real_addresses_of(false) {
            let Some(route) = self.route_to_real(addr).await? else {
                missing += 1;
                continue;
            };
            let hop = route.gateway.unwrap_or(addr);
            let entry = neigh
                .iter()
                .find(|n| n.addr == hop && n.ifindex == route.oif);
            if entry.is_none() {
                missing += 1;
            }
            self.solicit_unless_fresh(addr, entry);
        }
        Ok(missing)
    }

    /// Returns: the kernel's route to real `addr`; warns once when there is none.
    async fn route_to_real(&mut self, addr: IpAddr) -> anyhow::Result<Option<netlink::RouteTo>> {
        let route = netlink::route_to(&self.handle, addr).await?;
        if route.is_none() && self.warned.insert(addr) {
            tracing::warn!(real = %addr, "no route to real server");
        }
        Ok(route)
    }

    /// Makes the kernel resolve the next hop toward `addr` again unless its neighbour
    /// `entry` is fresh, at most once every SOLICIT_EVERY per real.
    fn solicit_unless_fresh(&mut self, addr: IpAddr, entry: Option<&netlink::Neighbour>) {
        let due = self
            .last_solicit
            .get(&addr)
            .is_none_or(|t| t.elapsed() >= SOLICIT_EVERY);
        if entry.is_none_or(|n| !n.fresh) && due {
            if let Err(e) = netlink::solicit(addr) {
                tracing::debug!(real = %addr, "neighbour solicitation failed: {e}");
            }
            self.last_solicit.insert(addr, Instant::now());
        }
    }

    async fn cleanup(&mut self) {
        if let Some(p) = self.socket.take() {
            let _ = std::fs::remove_file(&p);
        }
        for (i, vip) in std::mem::take(&mut self.added_vips) {
            match netlink::del_address(&self.handle, i, vip).await {
                Ok(()) => tracing::info!(vip = %vip, "VIP address removed"),
                Err(e) => tracing::error!(vip = %vip, "could not remove VIP address: {e}"),
            }
        }
        // Dropping the BPF object (with the Daemon) detaches XDP everywhere.
        tracing::info!("XDP detached; stopped");
    }
}

/// The flow counts a status still needs: the reals' (id, generation) in the status's
/// order, and a handle on the connection table.
struct FlowCount {
    keys: Vec<(u32, u32)>,
    reader: bpf::FlowsReader,
}

impl FlowCount {
    /// Fills in `status`'s flow counts on a task of its own (the walk on a blocking
    /// thread), then sends `answer` of the result to `reply`.
    fn fill_then<T: Send + 'static>(
        self,
        status: control::Status,
        reply: tokio::sync::oneshot::Sender<T>,
        answer: impl FnOnce(anyhow::Result<control::Status>) -> T + Send + 'static,
    ) {
        tokio::spawn(async move {
            let _ = reply.send(answer(self.fill(status).await));
        });
    }

    async fn fill(self, mut status: control::Status) -> anyhow::Result<control::Status> {
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

/// Answers one control connection: a JSON request line in, a JSON line out.
async fn serve_client(conn: tokio::net::UnixStream, calls: tokio::sync::mpsc::Sender<Call>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read);
    let got = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let resp = match got {
        Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        },
        _ => return,
    };
    let mut text = serde_json::to_string(&resp).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"message\":\"cannot encode the answer: {e}\"}}")
    });
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
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

/// Returns: the name of interface `index` (empty if it has none).
fn nix_ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
