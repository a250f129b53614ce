//! Restarting, upgrading or crashing the daemon never stops forwarding (issue 12): the
//! data path stays pinned in the lab's bpffs and the next `xdpvs run` adopts it. While
//! the daemon is stopped, killed or replaced, a client keeps sending requests, an echoed
//! stream and a UDP flow: every request must be answered, the stream must not break,
//! no datagram may be lost, and the stream's entry in the pinned connection table must
//! stay as it was. A restart to a configuration that needs more Maglev rings than the
//! pinned ring map holds grows it and keeps everything else, also when the start
//! before it died growing. An upgrade from a release without `TUNNEL_SRCS` fills it
//! from the adopted virtual servers. `xdpvs teardown` then leaves the balancer as it
//! was before.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_common::{
    maps::{ALL, FLOWS, NAT_REALS, PERSIST, TUNNEL_SRCS, VS_MAP, VS_RINGS},
    user::addr_words,
    TunnelSource, PROTO_TCP, RING_ELEMS,
};
use serde_json::Value;
use tests::{
    daemon::{self, Daemon},
    http::NamedServer,
    lab::{net, Family, Kind, Lab, Sample, StreamClient, Traffic, UdpFlow, NAT_REAL_PORT},
    netns::sh,
    pins, wait_for,
};

/// How long the daemon stays down after a stop or a crash: the scenario, not a wait.
const DOWN: Duration = Duration::from_secs(3);
/// The request client: one request every 50 ms, each given 3 s (a lost SYN is sent
/// again after 1 s, and that would still count as answered late, not as lost).
const EVERY: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many requests (at least 100 s at one per 50 ms): the client is stopped
/// long before.
const MAX_REQUESTS: usize = 2000;

/// The daemon of a restart test: each start runs a given binary and logs to a file of
/// its own (`xdpvs.<n>.log`), so a panic shows every run's log.
struct Restarts<'a> {
    lab: &'a Lab,
    cfg: PathBuf,
    logs: Vec<PathBuf>,
    daemon: Option<Daemon>,
}

impl<'a> Restarts<'a> {
    fn new(lab: &'a Lab, cfg: PathBuf) -> Self {
        Self {
            lab,
            cfg,
            logs: Vec::new(),
            daemon: None,
        }
    }

    /// Starts `bin` on `cfg` and waits until the lab's reals `reals` answer through the
    /// VIP. Returns: the restarts, with that daemon running.
    fn serving(lab: &'a Lab, cfg: PathBuf, bin: &Path, reals: &[usize]) -> Self {
        let mut r = Self::new(lab, cfg);
        r.start(bin);
        lab.wait_serving(reals, r.daemon());
        r
    }

    /// Starts `bin run --config <cfg>` and waits until it is running.
    fn start(&mut self, bin: &Path) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let log = self
            .lab
            .dir
            .join(format!("xdpvs.{}.log", self.logs.len() + 1));
        self.logs.push(log.clone());
        self.daemon = Some(Daemon::start_as(&self.lab.lb, &self.cfg, bin, &log));
    }

    /// Stops the daemon with SIGTERM; it must exit 0 saying it left forwarding.
    fn stop(&mut self) {
        let mut d = self.daemon.take().expect("a running daemon");
        let code = d.stop();
        let log = d.log_text();
        assert_eq!(code, Some(0), "exit on SIGTERM:\n{log}");
        assert!(
            log.contains("left forwarding"),
            "SIGTERM did not leave forwarding:\n{log}"
        );
    }

    /// Kills the daemon with SIGKILL: a crash.
    fn kill(&mut self) {
        self.daemon.take().expect("a running daemon").kill();
    }

    /// Returns: the running daemon.
    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("a running daemon")
    }

    /// Returns: the log of the latest start.
    fn last_log(&self) -> String {
        self.logs
            .last()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Returns: every start's log, one after another, for a panic message.
    fn all_logs(&self) -> String {
        self.logs
            .iter()
            .map(|l| {
                let text = std::fs::read_to_string(l).unwrap_or_default();
                format!("--- {} ---\n{text}", l.display())
            })
            .collect()
    }
}

/// Finds the XDP program id in `ip -j -d link show` output: `xdp.prog.id`, or the
/// first of `xdp.attached[].prog.id` when several modes are attached.
fn xdp_prog_id(link: &Value) -> Option<u64> {
    let xdp = link.get("xdp")?;
    if let Some(id) = xdp.pointer("/prog/id").and_then(Value::as_u64) {
        return Some(id);
    }
    xdp.get("attached")?
        .as_array()?
        .iter()
        .find_map(|a| a.pointer("/prog/id").and_then(Value::as_u64))
}

/// Returns: the id of the XDP program attached to every balancer interface; panics if
/// one has none or they differ.
fn prog_id(lab: &Lab) -> u64 {
    let ids: Vec<Option<u64>> = lab
        .lb_ifs
        .iter()
        .map(|dev| {
            let out = lab.lb.exec(&["ip", "-j", "-d", "link", "show", "dev", dev]);
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            xdp_prog_id(&v[0])
        })
        .collect();
    let first = ids[0].unwrap_or_else(|| panic!("no XDP program on {}", lab.lb_ifs[0]));
    assert!(
        ids.iter().all(|&i| i == Some(first)),
        "the balancer's interfaces {:?} hold programs {ids:?}",
        lab.lb_ifs
    );
    first
}

/// The stream's entries in the pinned maps: its connection in `FLOWS` and, behind NAT,
/// its real's in `NAT_REALS` (the real serves one virtual server: its replies are
/// found through `FLOWS`, decision 0015). Panics if one is missing.
fn stream_entries(lab: &Lab, stream: &StreamClient) -> Vec<(&'static str, Vec<u8>)> {
    let vip = SocketAddr::new(lab.vip, 80);
    let mut keys = vec![(FLOWS, pins::flow_key(stream.local, vip, PROTO_TCP))];
    if matches!(lab.kind, Kind::Nat | Kind::NatOneNic) {
        let real = SocketAddr::new(lab.real_addrs[stream.real_index()], NAT_REAL_PORT);
        keys.push((NAT_REALS, pins::vs_key(real, PROTO_TCP)));
    }
    keys.into_iter()
        .map(|(map, key)| {
            let v = pins::lookup(&lab.map_pin(map), &key)
                .unwrap_or_else(|| panic!("no entry for the stream {} in {map}", stream.local));
            (map, v)
        })
        .collect()
}

/// Returns: the kernel's id of every pinned map of the instance, by name. A map the
/// daemon adopts keeps its id; one made anew gets another.
fn map_ids(lab: &Lab) -> BTreeMap<&'static str, u64> {
    map_ids_but(lab, None)
}

/// Returns: [`map_ids`] without map `name`, if one is named.
fn map_ids_but(lab: &Lab, name: Option<&str>) -> BTreeMap<&'static str, u64> {
    ALL.iter()
        .filter(|&&n| Some(n) != name)
        .map(|&name| {
            let info = pins::map_info(&lab.map_pin(name));
            let id = info["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: no id in {info}"));
            (name, id)
        })
        .collect()
}

/// What a restart must keep: every pinned map (by kernel id: an adopted map keeps
/// it, one made anew gets another), a planted connection in `FLOWS`, and the stream's
/// entries.
struct Kept {
    maps: BTreeMap<&'static str, u64>,
    /// A connection no client makes (the client's address, port 4242, below the
    /// ephemeral range, to VIP:80) with the stream's value: it survives only if the
    /// table's contents are adopted, traffic never re-creates it.
    marker: (Vec<u8>, Vec<u8>),
    entries: Vec<(&'static str, Vec<u8>)>,
}

impl Kept {
    /// Plants the marker and records the rest.
    fn record(lab: &Lab, stream: &StreamClient) -> Self {
        let entries = stream_entries(lab, stream);
        let key = pins::flow_key(
            SocketAddr::new(stream.local.ip(), 4242),
            SocketAddr::new(lab.vip, 80),
            PROTO_TCP,
        );
        pins::update(&lab.map_pin(FLOWS), &key, &entries[0].1);
        Self {
            maps: map_ids(lab),
            marker: (key, entries[0].1.clone()),
            entries,
        }
    }

    /// Panics unless all of it is still there after `what`.
    fn check(&self, lab: &Lab, stream: &StreamClient, what: &str, r: &Restarts) {
        assert_eq!(map_ids(lab), self.maps, "maps made anew across {what}");
        self.check_contents(lab, stream, what, r);
    }

    /// As [`Kept::check`] after a restart that grew the ring map: `VS_RINGS` is a new
    /// map, every other map is the one pinned before.
    fn check_grown(&self, lab: &Lab, stream: &StreamClient, what: &str, r: &Restarts) {
        let (mut now, mut before) = (map_ids(lab), self.maps.clone());
        assert_ne!(
            now.remove(VS_RINGS),
            before.remove(VS_RINGS),
            "VS_RINGS is not a new map after {what}"
        );
        assert_eq!(now, before, "maps made anew across {what}");
        self.check_contents(lab, stream, what, r);
    }

    /// Panics unless the planted connection and the stream's entries are still there.
    fn check_contents(&self, lab: &Lab, stream: &StreamClient, what: &str, r: &Restarts) {
        assert_eq!(
            pins::lookup(&lab.map_pin(FLOWS), &self.marker.0).as_ref(),
            Some(&self.marker.1),
            "the planted connection is gone from FLOWS after {what}"
        );
        assert_eq!(
            stream_entries(lab, stream),
            self.entries,
            "the stream's entries changed across {what}:\n{}",
            r.all_logs()
        );
    }
}

/// Waits until the stream has echoed `n` more chunks. Panics with the logs otherwise.
fn flows_on(stream: &StreamClient, n: u64, r: &Restarts) {
    let c0 = stream.chunks();
    assert!(
        wait_for(Duration::from_secs(5), || stream.chunks() >= c0 + n),
        "the stream stalled at chunk {c0}:\n{}",
        r.all_logs()
    );
}

/// A span in which the daemon was not serving, and what the clients did meanwhile.
struct Window {
    what: String,
    from: Instant,
    to: Instant,
    chunks: u64,
}

/// Returns: the requests that ended within `w`.
fn within<'s>(samples: &'s [Sample], w: &Window) -> Vec<&'s Sample> {
    samples
        .iter()
        .filter(|(t, _)| *t >= w.from && *t <= w.to)
        .collect()
}

/// The restart scenario of issue 12 in the lab `kind`: (a) SIGTERM, 3 s down, start;
/// (b) SIGKILL, 3 s down, start; (c) five upgrades in a row to a copy of the binary,
/// each loading a new program. Throughout, a request every 50 ms and an echoed
/// stream; every request answered, the stream intact, the pinned maps and their
/// contents kept.
fn forwarding_survives_restarts(kind: Kind) {
    let lab = Lab::new(kind, Family::V4, 2);
    let cfg = lab.write_config();
    let bin = daemon::binary();
    let mut r = Restarts::serving(&lab, cfg, &bin, &[0, 1]);
    let stream = lab.stream();
    flows_on(&stream, 3, &r);
    let kept = Kept::record(&lab, &stream);
    println!(
        "{kind:?}: stream {} on {}, pinned entries {:?}, map ids {:?}",
        stream.local, stream.server, kept.entries, kept.maps
    );
    let traffic = lab.traffic_every(EVERY, TIMEOUT, MAX_REQUESTS);
    let mut windows = Vec::new();

    for crash in [false, true] {
        let id = prog_id(&lab);
        let (from, chunks) = (Instant::now(), stream.chunks());
        if crash {
            r.kill();
        } else {
            r.stop();
        }
        std::thread::sleep(DOWN);
        assert_eq!(
            prog_id(&lab),
            id,
            "XDP stayed attached while the daemon was down"
        );
        r.start(&bin);
        let what = if crash { "SIGKILL" } else { "SIGTERM" };
        windows.push(Window {
            what: format!("{what}, 3 s down, start"),
            from,
            to: Instant::now(),
            chunks: stream.chunks() - chunks,
        });
        flows_on(&stream, 3, &r);
        kept.check(&lab, &stream, what, &r);
    }

    let mut progs = vec![prog_id(&lab)];
    for i in 1..=5 {
        let copy = lab.dir.join(format!("xdpvs-v{i}"));
        std::fs::copy(&bin, &copy).expect("copy the binary");
        let (from, chunks) = (Instant::now(), stream.chunks());
        r.stop();
        r.start(&copy);
        windows.push(Window {
            what: format!("upgrade {i}"),
            from,
            to: Instant::now(),
            chunks: stream.chunks() - chunks,
        });
        let id = prog_id(&lab);
        assert!(
            !progs.contains(&id),
            "upgrade {i}: program {id} is not new (before: {progs:?}):\n{}",
            r.last_log()
        );
        progs.push(id);
        flows_on(&stream, 3, &r);
        kept.check(&lab, &stream, &format!("upgrade {i}"), &r);
    }

    let samples = traffic.finish();
    let failed: Vec<_> = samples.iter().filter(|(_, r)| r.is_err()).collect();
    println!(
        "{kind:?}: {} requests sent, {} answered; program ids {progs:?}",
        samples.len(),
        samples.len() - failed.len()
    );
    for w in &windows {
        let n = within(&samples, w).len();
        println!(
            "  {}: {:?} without a daemon serving, {n} requests and {} chunks meanwhile",
            w.what,
            w.to - w.from,
            w.chunks
        );
        assert!(n >= 1, "{}: no request ended in the window", w.what);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first {:?}:\n{}",
        failed.len(),
        samples.len(),
        failed.first(),
        r.all_logs()
    );
    for w in windows.iter().take(2) {
        // 3 s down: about 60 requests and 30 chunks at the clients' pace.
        let n = within(&samples, w).len();
        assert!(n >= 20, "{}: only {n} requests while down", w.what);
        assert!(
            w.chunks >= 10,
            "{}: only {} chunks while down",
            w.what,
            w.chunks
        );
    }
    let (server, chunks, bytes) = stream
        .finish()
        .unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", r.all_logs()));
    println!("{kind:?}: stream on {server}: {chunks} chunks, {bytes} bytes echoed intact");
}

#[test]
fn dr_forwards_through_sigterm_sigkill_and_five_upgrades() {
    forwarding_survives_restarts(Kind::Dr);
}

#[test]
fn nat_forwards_through_sigterm_sigkill_and_five_upgrades() {
    forwarding_survives_restarts(Kind::Nat);
}

/// Waits until the UDP flow has `n` more answers. Panics with the logs otherwise.
fn answers_on(flow: &UdpFlow, n: usize, r: &Restarts) {
    let a = flow.answered();
    assert!(
        wait_for(Duration::from_secs(5), || flow.answered() >= a + n),
        "the UDP flow stalled at {a} answers:\n{}",
        r.all_logs()
    );
}

#[test]
fn a_udp_flow_loses_no_datagram_across_five_restarts() {
    let lab = Lab::new(Kind::Nat, Family::V4, 2);
    let cfg = lab.write_config();
    let bin = daemon::binary();
    let mut r = Restarts::serving(&lab, cfg, &bin, &[0, 1]);
    // The UDP virtual server's probes (the reals' HTTP port) say up as well.
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .datagrams(2)
            .iter()
            .all(Result::is_ok)),
        "UDP through the VIP never answered:\n{}",
        r.all_logs()
    );
    for u in &lab.udp {
        u.received.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    // One datagram every 20 ms, at most 3000 (60 s): five restarts take far less.
    let flow = lab.udp_flow(Duration::from_millis(20), 3000);
    answers_on(&flow, 10, &r);
    for _ in 0..5 {
        r.stop();
        r.start(&bin);
        answers_on(&flow, 10, &r);
    }
    let rep = flow.finish();
    let received: u64 = lab
        .udp
        .iter()
        .map(|u| u.received.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    println!(
        "UDP across five restarts: {} sent, {} answered, {received} received by the reals, by {:?}",
        rep.sent,
        rep.answered.len(),
        rep.by_server
    );
    assert!(rep.sent >= 100, "only {} datagrams sent", rep.sent);
    assert!(
        rep.lost().is_empty(),
        "datagrams lost: {:?}\n{}",
        rep.lost(),
        r.all_logs()
    );
    assert!(rep.odd.is_empty(), "odd answers: {:?}", rep.odd);
    assert_eq!(received, rep.sent, "the reals received every datagram once");
    assert_eq!(
        rep.by_server.len(),
        1,
        "one flow stays on one real: {:?}",
        rep.by_server
    );
}

/// Returns: the `bytes_key` bpftool reports for the pinned map at `pin`.
fn key_size(pin: &Path) -> u64 {
    let info = pins::map_info(pin);
    info["bytes_key"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_key: {info}"))
}

#[test]
fn an_incompatible_pinned_map_is_replaced_and_its_contents_dropped() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_config();
    let bin = daemon::binary();
    let mut r = Restarts::serving(&lab, cfg, &bin, &[0, 1]);
    let stream = lab.stream();
    flows_on(&stream, 3, &r);
    r.stop();

    // PERSIST (contents that may be dropped) pinned again with another layout, and
    // one entry in it.
    let pin = lab.map_pin(PERSIST);
    let own_key = key_size(&pin);
    std::fs::remove_file(&pin).expect("unpin PERSIST");
    let p = pin.to_str().expect("utf-8 path");
    sh(&[
        "bpftool", "map", "create", p, "type", "lru_hash", "key", "20", "value", "8", "entries",
        "1024", "name", "PERSIST",
    ]);
    let mut update = vec!["bpftool", "map", "update", "pinned", p, "key"];
    update.extend(["1"; 20]);
    update.push("value");
    update.extend(["2"; 8]);
    sh(&update);
    assert_eq!(key_size(&pin), 20);

    r.start(&bin);
    let log = r.last_log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{PERSIST}:")) && l.contains("dropped")),
        "the log does not say PERSIST's contents were dropped:\n{log}"
    );
    for l in log.lines().filter(|l| l.contains("dropped")) {
        println!("layout change: {l}");
    }
    assert_eq!(
        key_size(&pin),
        own_key,
        "PERSIST pinned with the daemon's layout"
    );
    assert!(
        pins::dump(&pin)
            .iter()
            .all(|(k, _)| k.len() as u64 == own_key),
        "the old entry came back"
    );
    let answers = lab.requests(30);
    assert!(
        answers.iter().all(Result::is_ok),
        "requests after the layout change: {answers:?}\n{}",
        r.all_logs()
    );
    // The stream goes on (its connection table entry adopted or, if the daemon drops
    // the connection table with PERSIST, its real chosen again by the same table).
    flows_on(&stream, 3, &r);
    let (_, chunks, _) = stream
        .finish()
        .unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", r.all_logs()));
    println!("layout change: 30 of 30 requests answered, the stream intact ({chunks} chunks)");
}

/// Returns: the written slots of the pinned `TUNNEL_SRCS` at `pin` (not all zero), as
/// (index, value) bytes.
fn tunnel_sources(pin: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    pins::dump(pin)
        .into_iter()
        .filter(|(_, v)| v.iter().any(|&b| b != 0))
        .collect()
}

/// An upgrade from a release without `TUNNEL_SRCS` (decision 0028): the new map is
/// filled from the adopted `VS_MAP` at load, and tunnelled traffic goes on. (Without
/// the fill it would go on too, each established packet looking its virtual server up:
/// the slot itself is what shows the fill. The start that adopts writes no virtual
/// server whose value is unchanged, as here, where every real stays healthy.)
#[test]
fn an_upgrade_from_a_release_without_tunnel_sources_fills_them_from_the_virtual_servers() {
    let lab = Lab::new(Kind::Tunnel, Family::V4, 2);
    let cfg = lab.write_config();
    let bin = daemon::binary();
    let mut r = Restarts::serving(&lab, cfg, &bin, &[0, 1]);
    let stream = lab.stream();
    flows_on(&stream, 3, &r);
    let pin = lab.map_pin(TUNNEL_SRCS);
    let source = TunnelSource::new(addr_words(net(Family::V4, 100, 1)).0);
    let mut want: Vec<u8> = source.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
    want.extend(source.check.to_ne_bytes());
    want.extend(source._pad.to_ne_bytes());
    let written = tunnel_sources(&pin);
    assert_eq!(
        written.iter().map(|(_, v)| v).collect::<Vec<_>>(),
        [&want],
        "one slot, the lab's tunnel source, written by the start"
    );
    r.stop();
    // What a release before decision 0028 leaves: no such pin. The attached program
    // keeps the map it was loaded with.
    std::fs::remove_file(&pin).expect("unpin TUNNEL_SRCS");
    flows_on(&stream, 3, &r);
    let ids = map_ids_but(&lab, Some(TUNNEL_SRCS));
    r.start(&bin);
    assert_eq!(
        map_ids_but(&lab, Some(TUNNEL_SRCS)),
        ids,
        "every other map adopted:\n{}",
        r.all_logs()
    );
    assert_eq!(
        tunnel_sources(&pin),
        written,
        "TUNNEL_SRCS made anew without its slot filled:\n{}",
        r.all_logs()
    );
    flows_on(&stream, 3, &r);
    let answers = lab.requests(30);
    assert!(
        answers.iter().all(Result::is_ok),
        "requests after the upgrade: {answers:?}\n{}",
        r.all_logs()
    );
    let (_, chunks, _) = stream
        .finish()
        .unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", r.all_logs()));
    println!(
        "upgrade without TUNNEL_SRCS: slot filled, 30 of 30 requests, \
         the stream intact ({chunks} chunks)"
    );
}

/// First port of the virtual servers a grown configuration adds.
const EXTRA_PORT: u16 = 10_000;

/// Returns: the Maglev rings the pinned `VS_RINGS` holds.
fn rings(lab: &Lab) -> u32 {
    let info = pins::map_info(&lab.map_pin(VS_RINGS));
    let entries = info["max_entries"]
        .as_u64()
        .unwrap_or_else(|| panic!("no max_entries: {info}"));
    assert_eq!(entries % u64::from(RING_ELEMS), 0, "{info}");
    (entries / u64::from(RING_ELEMS)) as u32
}

/// Writes, in place of the lab's configuration at `cfg`, the lab's configuration and
/// `extra` more NAT virtual servers on the VIP, ports `EXTRA_PORT` and up, each with
/// both reals at its own port (so that each NAT real serves one virtual server, as
/// the lab's do) and no probe (the reals are in the table without a server there).
fn write_grown(lab: &Lab, cfg: &Path, extra: u16) {
    let mut y = std::fs::read_to_string(lab.write_config()).expect("the lab's config");
    for i in 0..extra {
        let port = EXTRA_PORT + i;
        y.push_str(&format!(
            "  - name: extra{i}\n    address: '{}'\n    port: {port}\n    protocol: tcp\n    method: nat\n    health_check: {{ type: none }}\n    real_servers:\n",
            lab.vip
        ));
        for a in &lab.real_addrs[..2] {
            y.push_str(&format!("      - address: '{a}'\n        port: {port}\n"));
        }
    }
    std::fs::write(cfg, y).expect("write the grown config");
}

/// Returns: the ring each added virtual server reads, by port, from the pinned `VS_MAP`
/// (`VsInfo.ring_id`: bytes 4 to 8 of the value, host order).
fn extra_rings(lab: &Lab, extra: u16) -> BTreeMap<u16, u32> {
    let by_key: BTreeMap<Vec<u8>, Vec<u8>> = pins::dump(&lab.map_pin(VS_MAP)).into_iter().collect();
    (EXTRA_PORT..EXTRA_PORT + extra)
        .map(|port| {
            let key = pins::vs_key(SocketAddr::new(lab.vip, port), PROTO_TCP);
            let v = by_key
                .get(&key)
                .unwrap_or_else(|| panic!("no VS_MAP entry for port {port}"));
            let ring = u32::from_ne_bytes(v[4..8].try_into().expect("4 bytes"));
            (port, ring)
        })
        .collect()
}

/// Panics unless requests to VIP:`port` are answered by the reals' servers on `port`
/// (started here, stopped on return).
fn forwards(lab: &Lab, port: u16, r: &Restarts) {
    let servers: Vec<NamedServer> = lab.reals[..2]
        .iter()
        .zip(&lab.real_addrs)
        .enumerate()
        .map(|(i, (ns, a))| {
            NamedServer::start(ns, SocketAddr::new(*a, port), &format!("real{}", i + 1))
        })
        .collect();
    let vip = SocketAddr::new(lab.vip, port);
    let answers: Vec<Result<String, String>> = lab.client.run(move || {
        (0..6)
            .map(|_| tests::http::get(vip, Duration::from_secs(3)))
            .collect()
    });
    drop(servers);
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|s| s == "real1" || s == "real2")),
        "VIP:{port}: {answers:?}\n{}",
        r.all_logs()
    );
}

/// The checks after a restart that grew the ring map from `old_rings` for `extra`
/// added virtual servers: the log says so and drops nothing, the ring map is larger
/// and nothing is left set aside, every other map and the stream's state are kept,
/// the stream goes on, and added virtual servers forward, among them one reading a
/// ring the old map did not have.
fn assert_grown(
    lab: &Lab,
    r: &Restarts,
    kept: &Kept,
    stream: &StreamClient,
    old_rings: u32,
    extra: u16,
) {
    let log = r.last_log();
    let new_rings = rings(lab);
    let vss = pins::dump(&lab.map_pin(VS_MAP)).len() as u32;
    assert!(
        new_rings > old_rings && new_rings > vss,
        "VS_RINGS holds {new_rings} rings, was {old_rings}, for {vss} virtual servers:\n{log}"
    );
    let grew = format!("the ring map grew from {old_rings} to {new_rings} rings");
    assert!(log.contains(&grew), "the log does not say `{grew}`:\n{log}");
    assert!(
        !log.contains("made anew"),
        "a pinned map was made anew:\n{log}"
    );
    assert!(
        !log.contains("cannot take the new program"),
        "the new program did not go onto every pinned link before the ring map was unpinned:\n{log}"
    );
    let mut all: Vec<&str> = ALL.to_vec();
    all.sort();
    assert_eq!(
        pins::listing(&lab.pin_dir().join("maps")),
        all,
        "the maps pinned after the grow"
    );
    kept.check_grown(lab, stream, "the grow", r);
    flows_on(stream, 3, r);
    let by_port = extra_rings(lab, extra);
    let (&low, _) = by_port
        .iter()
        .min_by_key(|(_, ring)| **ring)
        .expect("ports");
    let (&high, &ring) = by_port
        .iter()
        .max_by_key(|(_, ring)| **ring)
        .expect("ports");
    assert!(
        ring >= old_rings,
        "no added virtual server reads a ring beyond the old map's {old_rings}: {by_port:?}"
    );
    forwards(lab, low, r);
    forwards(lab, high, r);
    println!(
        "grown from {old_rings} to {new_rings} rings; VIP:{low} (ring {}) and VIP:{high} (ring {ring}) forward",
        by_port[&low]
    );
}

/// Starts the NAT lab with its two virtual servers, opens a stream and records what
/// a restart must keep. Returns: the lab's restarts, the stream, what is kept, and
/// the rings of the pinned ring map.
fn grow_lab(lab: &Lab) -> (Restarts<'_>, StreamClient, Kept, u32) {
    let cfg = lab.write_config();
    let r = Restarts::serving(lab, cfg, &daemon::binary(), &[0, 1]);
    let stream = lab.stream();
    flows_on(&stream, 3, &r);
    let kept = Kept::record(lab, &stream);
    let old_rings = rings(lab);
    (r, stream, kept, old_rings)
}

#[test]
fn a_restart_needing_more_rings_grows_the_ring_map_and_keeps_every_connection() {
    let lab = Lab::new(Kind::Nat, Family::V4, 2);
    let (mut r, stream, kept, old_rings) = grow_lab(&lab);
    // As many more virtual servers as the ring map has rings: more than it can hold.
    let extra = old_rings as u16;
    write_grown(&lab, &r.cfg, extra);

    // A reload cannot grow the map: it is refused, and says a restart will.
    let (code, out, err) = lab.cli(&["reload"]);
    let said = format!("{out}{err}");
    println!("reload needing more rings: exit {code:?}: {said}");
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("out of Maglev rings") && said.contains("restart"),
        "{said}"
    );

    let traffic = lab.traffic_every(EVERY, TIMEOUT, MAX_REQUESTS);
    r.stop();
    r.start(&daemon::binary());
    assert_grown(&lab, &r, &kept, &stream, old_rings, extra);
    let (answered, server, chunks) = all_answered(traffic, stream, "the grow", &r);
    println!(
        "{answered} requests answered across the grow; stream on {server}: {chunks} chunks intact"
    );
}

#[test]
fn a_grow_cut_short_is_done_again_from_the_ring_map_set_aside() {
    let lab = Lab::new(Kind::Nat, Family::V4, 2);
    let (mut r, stream, kept, old_rings) = grow_lab(&lab);
    let extra = old_rings as u16;
    write_grown(&lab, &r.cfg, extra);
    // A start that died growing: the old map set aside, a larger one pinned in its
    // place and not filled (all zeros: every slot names real 0).
    r.kill();
    let pin = lab.map_pin(VS_RINGS);
    let aside = lab.map_pin(&format!("{VS_RINGS}-old"));
    std::fs::rename(&pin, &aside).expect("set VS_RINGS aside");
    pins::pin_ring_map(&pin, 8, 2 * old_rings * RING_ELEMS);

    r.start(&daemon::binary());
    let log = r.last_log();
    assert!(
        log.contains("stopped while growing the ring map"),
        "the log does not say the grow is done again:\n{log}"
    );
    assert!(!aside.exists(), "the map set aside is still pinned");
    assert_grown(&lab, &r, &kept, &stream, old_rings, extra);
    let (server, chunks, _) = stream
        .finish()
        .unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", r.all_logs()));
    println!("grow done again after a cut: stream on {server}: {chunks} chunks intact");
}

/// Stops `traffic` and `stream`; panics with the logs unless every request was
/// answered across `what` and the stream is intact.
/// Returns: the requests answered, the stream's server and its chunks.
fn all_answered(
    traffic: Traffic,
    stream: StreamClient,
    what: &str,
    r: &Restarts,
) -> (usize, String, u64) {
    let samples = traffic.finish();
    let failed: Vec<_> = samples.iter().filter(|(_, res)| res.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across {what}, first {:?}:\n{}",
        failed.len(),
        samples.len(),
        failed.first(),
        r.all_logs()
    );
    let (server, chunks, _) = stream
        .finish()
        .unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", r.all_logs()));
    (samples.len(), server, chunks)
}

/// Panics, naming the first slot that differs, unless `now` holds the rings `before`.
fn assert_same_rings(now: &[Vec<u32>], before: &[Vec<u32>], what: &str) {
    assert_eq!(now.len(), before.len(), "{what}: rings");
    for (r, (a, b)) in now.iter().zip(before).enumerate() {
        if let Some(s) = (0..a.len().max(b.len())).find(|&s| a.get(s) != b.get(s)) {
            panic!(
                "{what}: ring {r} slot {s} holds {:?}, was {:?}",
                a.get(s),
                b.get(s)
            );
        }
    }
}

/// An upgrade from a release before decision 0030, whose `VS_RINGS` has a slot to an
/// element: the daemon stops (its data path forwarding), its ring map is replaced by
/// one of that layout holding the same rings (the program attached keeps the map it
/// has), and the daemon starts again. It sets that map aside, makes one of pairs,
/// copies every ring slot by slot, swaps its program and unpins the old one: the log
/// says so, the rings read back the same, every other map and the stream's state are
/// kept, the stream goes on and no request fails across it.
#[test]
fn an_upgrade_from_a_ring_map_of_a_slot_to_an_element_remakes_it_and_keeps_every_connection() {
    let lab = Lab::new(Kind::Nat, Family::V4, 2);
    let (mut r, stream, kept, old_rings) = grow_lab(&lab);
    let traffic = lab.traffic_every(EVERY, TIMEOUT, MAX_REQUESTS);
    r.stop();
    let pin = lab.map_pin(VS_RINGS);
    let before = pins::rings(&pin);
    assert_eq!(before.len(), old_rings as usize);
    std::fs::remove_file(&pin).expect("unpin VS_RINGS");
    pins::pin_single_slot_rings(&pin, &before);
    assert_eq!(
        pins::map_info(&pin)["bytes_value"].as_u64(),
        Some(4),
        "the old layout's map"
    );
    assert_same_rings(&pins::rings(&pin), &before, "the old layout's map");

    r.start(&daemon::binary());
    let log = r.last_log();
    let said = format!(
        "the ring map was rebuilt with two slots to an element (decision 0030), {old_rings} rings"
    );
    assert!(log.contains(&said), "the log does not say `{said}`:\n{log}");
    assert!(
        !log.contains("pinned map made anew"),
        "a pinned map was dropped:\n{log}"
    );
    assert_eq!(pins::map_info(&pin)["bytes_value"].as_u64(), Some(8));
    assert_eq!(rings(&lab), old_rings);
    assert_same_rings(&pins::rings(&pin), &before, "the rings after the upgrade");
    assert!(
        !lab.map_pin(&format!("{VS_RINGS}-old")).exists(),
        "the old ring map is still pinned"
    );
    kept.check_grown(&lab, &stream, "the upgrade", &r);
    flows_on(&stream, 3, &r);
    let (answered, server, chunks) = all_answered(traffic, stream, "the upgrade", &r);
    println!("{answered} requests answered across the upgrade; {old_rings} rings copied; stream on {server}: {chunks} chunks intact");
}

/// What `xdpvs` may change on the balancer and must put back: its addresses
/// (`ifname family address/prefix`), its links (name, flags, MTU, MAC and XDP
/// attachment; counters left out) and the bpffs.
#[derive(Debug, PartialEq)]
struct Snapshot {
    addrs: Vec<String>,
    links: Vec<Value>,
    pinned: Vec<String>,
}

fn snapshot(lab: &Lab) -> Snapshot {
    let json = |args: &[&str]| -> Vec<Value> {
        let out = lab.lb.exec(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let mut addrs = Vec::new();
    for l in json(&["ip", "-j", "addr"]) {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            addrs.push(format!(
                "{} {} {}/{}",
                l["ifname"], a["family"], a["local"], a["prefixlen"]
            ));
        }
    }
    addrs.sort();
    let links = json(&["ip", "-j", "-d", "link"])
        .iter()
        .map(|l| {
            serde_json::json!({
                "ifname": l["ifname"],
                "flags": l["flags"],
                "mtu": l["mtu"],
                "address": l["address"],
                "xdp": l.get("xdp"),
            })
        })
        .collect();
    Snapshot {
        addrs,
        links,
        pinned: pins::listing(&lab.bpffs.path),
    }
}

#[test]
fn teardown_leaves_the_balancer_and_the_bpffs_as_they_were() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_config();
    let before = snapshot(&lab);
    let mut r = Restarts::serving(&lab, cfg.clone(), &daemon::binary(), &[0, 1]);
    let answers = lab.requests(30);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    r.stop();
    let left = snapshot(&lab);
    assert_ne!(left, before, "the daemon left nothing to tear down");
    println!(
        "after SIGTERM: {} pinned paths, XDP on {}",
        left.pinned.len(),
        lab.lb_ifs[0]
    );

    let cfg = cfg.display().to_string();
    let (code, out, err) = lab.xdpvs(&["teardown", "--config", &cfg]);
    assert_eq!(code, Some(0), "teardown: {out}{err}");
    println!("teardown: {out}{err}");
    assert_eq!(snapshot(&lab), before, "teardown left changes");
    assert!(!lab.state_file().exists(), "the state file is left");
}

#[test]
fn status_says_unattended_after_sigterm_and_teardown_refuses_while_running() {
    let lab = Lab::new(Kind::Dr, Family::V4, 1);
    let cfg = lab.write_config();
    let mut r = Restarts::serving(&lab, cfg.clone(), &daemon::binary(), &[0]);
    let cfg = cfg.display().to_string();

    // Teardown while the daemon runs: refused, nothing removed.
    let before = snapshot(&lab);
    let state = lab.state_file().exists();
    let (code, out, err) = lab.xdpvs(&["teardown", "--config", &cfg]);
    println!("teardown with the daemon running: exit {code:?}: {out}{err}");
    assert_eq!(code, Some(1), "teardown with a daemon running: {out}{err}");
    assert_eq!(
        snapshot(&lab),
        before,
        "a refused teardown removed something"
    );
    assert_eq!(lab.state_file().exists(), state);
    let answers = lab.requests(10);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let (code, _, err) = lab.cli(&["status"]);
    assert_eq!(code, Some(0), "the daemon still answers: {err}");

    // SIGTERM: status says nobody attends the data path.
    r.stop();
    let (code, out, err) = lab.xdpvs(&["status", "--config", &cfg]);
    let said = format!("{out}{err}");
    println!("status after SIGTERM: exit {code:?}: {said}");
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("unattended") && said.contains("health checks are not running"),
        "{said}"
    );
    // Still forwarding, unattended.
    let answers = lab.requests(10);
    assert!(
        answers.iter().all(Result::is_ok),
        "requests with the daemon stopped: {answers:?}"
    );
}
