//! Issue 14, abuse of the daemon's own endpoints: hostile local clients on the control
//! socket and on `/metrics` while the direct-routing lab carries traffic. Through every
//! abuse a client's requests through the VIP are answered, `xdpvs status` answers
//! within [`STATUS_BOUND`], and probes go on (a real stopped meanwhile leaves the
//! table); each limit the operator guide claims is measured; afterwards the daemon's
//! descriptors and memory are back where they were.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    http,
    lab::{Family, Kind, Lab, Traffic},
    netns::Netns,
    wait_for,
};

const METRICS: &str = "127.0.0.1:9464";
/// How long `xdpvs status` (a process started in the balancer's namespace) may take
/// while the daemon is abused.
const STATUS_BOUND: Duration = Duration::from_secs(3);
/// The daemon's limits as the operator guide states them.
const CONTROL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONTROL_WAITING_MAX: usize = 256;
const METRICS_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const METRICS_MAX_CLIENTS: usize = 32;

/// Returns: the number of open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's /proc/<pid>/fd")
        .count()
}

/// Returns: the resident set of process `pid`, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value")
}

/// Whether real `i` of the web virtual server is in its table, per `xdpvs status`.
fn in_table(lab: &Lab, i: usize) -> bool {
    let (code, out, _) = lab.cli(&["status", "--json"]);
    if code != Some(0) {
        return false;
    }
    let s: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    s["virtual_servers"][0]["reals"][i]["in_table"] == true
}

/// Asserts that the daemon serves while `what` goes on: `xdpvs status` answers within
/// [`STATUS_BOUND`], and at least five requests through the VIP were answered since
/// `since`, none failed.
fn still_serving(lab: &Lab, traffic: &Traffic, since: Instant, what: &str) {
    let t = Instant::now();
    let (code, out, err) = lab.cli(&["status"]);
    let took = t.elapsed();
    assert_eq!(code, Some(0), "{what}: xdpvs status failed: {out}{err}");
    assert!(out.contains("10.100.0.100:80"), "{what}: {out}");
    assert!(
        took <= STATUS_BOUND,
        "{what}: xdpvs status took {took:?} (bound {STATUS_BOUND:?})"
    );
    let answered = || {
        traffic
            .samples()
            .iter()
            .filter(|(at, r)| *at > since && r.is_ok())
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || answered() >= 5),
        "{what}: requests through the VIP not answered ({} since the abuse began)",
        answered()
    );
    let failed: Vec<_> = traffic
        .samples()
        .into_iter()
        .filter(|(at, r)| *at > since && r.is_err())
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: requests through the VIP failed: {failed:?}"
    );
    println!(
        "{what}: xdpvs status in {} ms, {} requests through the VIP answered",
        took.as_millis(),
        answered()
    );
}

/// Asserts that probes go on while `what` goes on: real 2's server stopped leaves the
/// table, started again it returns. Returns: when it was stopped and when it was back
/// in the table (requests through the VIP may fail only then).
fn probes_still_run(lab: &mut Lab, what: &str) -> (Instant, Instant) {
    let t = Instant::now();
    lab.stop_server(1);
    assert!(
        wait_for(Duration::from_secs(5), || !in_table(lab, 1)),
        "{what}: real2's server stopped, but it is still in the table after 5 s"
    );
    let out = t.elapsed();
    lab.start_server(1);
    assert!(
        wait_for(Duration::from_secs(5), || in_table(lab, 1)),
        "{what}: real2 back, but not in the table after 5 s"
    );
    println!(
        "{what}: real2 stopped left the table after {} ms, and came back",
        out.as_millis()
    );
    (t, Instant::now())
}

/// A connection [`Holders`] keep: read without blocking to see when the daemon closes
/// it.
trait Conn: std::io::Read + Send {}
impl Conn for UnixStream {}
impl Conn for TcpStream {}

/// What [`Holders`] saw: how long the daemon held each connection it closed (from
/// connect to EOF), how many were still open at the end, what was answered.
#[derive(Debug, Default)]
struct Held {
    closed_after: Vec<Duration>,
    still_open: usize,
    answers: Vec<String>,
}

/// `n` clients, each connected by `connect` (which sends what it sends), then holding
/// its connection without another byte until the daemon closes it. With `refill`, each
/// closed one is replaced at once (at most `max_total` connections in all). Runs on a
/// thread (in `ns`, for TCP) until [`Holders::finish`] or `limit`.
struct Holders {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Held>>,
}

impl Holders {
    fn start(
        ns: Option<&Netns>,
        n: usize,
        connect: impl Fn() -> std::io::Result<Box<dyn Conn>> + Send + 'static,
        refill: bool,
        max_total: usize,
        limit: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), opened.clone());
        let run = move || {
            let end = Instant::now() + limit;
            let mut held = Held::default();
            let mut conns: Vec<(Instant, Box<dyn Conn>, Vec<u8>)> = Vec::new();
            let open = |held: &mut Held| -> Option<(Instant, Box<dyn Conn>, Vec<u8>)> {
                match connect() {
                    Ok(c) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        Some((Instant::now(), c, Vec::new()))
                    }
                    Err(e) => {
                        held.answers.push(format!("connect: {e}"));
                        None
                    }
                }
            };
            for _ in 0..n {
                if let Some(c) = open(&mut held) {
                    conns.push(c);
                }
            }
            while !s.load(Ordering::Relaxed) && Instant::now() < end && !conns.is_empty() {
                let mut i = 0;
                while i < conns.len() {
                    let mut buf = [0u8; 4096];
                    let (at, c, got) = &mut conns[i];
                    let closed = loop {
                        match c.read(&mut buf) {
                            Ok(0) => break true,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                            Err(_) => break true,
                        }
                    };
                    if closed {
                        held.closed_after.push(at.elapsed());
                        if !got.is_empty() {
                            held.answers.push(String::from_utf8_lossy(got).into_owned());
                        }
                        conns.swap_remove(i);
                        if refill && o.load(Ordering::Relaxed) < max_total {
                            if let Some(c) = open(&mut held) {
                                conns.push(c);
                            }
                        }
                    } else {
                        i += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            held.still_open = conns.len();
            held
        };
        let thread = match ns {
            Some(ns) => ns.spawn(run),
            None => std::thread::spawn(run),
        };
        Holders {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    /// Returns: how many connections were opened so far.
    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// Returns: whether every connection is closed (without refill) or the time is up.
    fn done(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops holding (open connections are dropped). Returns: what was seen.
    fn finish(mut self) -> Held {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("once")
            .join()
            .expect("holders thread")
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `xdpvs status` on `socket` as user nobody in `ns`.
/// Returns: its exit code and standard error.
fn status_as_nobody(ns: &Netns, socket: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ])
        .arg(tests::daemon::binary())
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .expect("setpriv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Returns: a connector to the control socket at `path` that sends `payload` and
/// leaves the connection non-blocking.
fn control_conn(
    path: PathBuf,
    payload: &'static [u8],
) -> impl Fn() -> std::io::Result<Box<dyn Conn>> + Send + 'static {
    move || {
        let mut c = UnixStream::connect(&path)?;
        c.write_all(payload)?;
        c.set_nonblocking(true)?;
        Ok(Box::new(c))
    }
}

/// Returns: a connector to the metrics listener (to be run in the balancer's
/// namespace) that sends `payload` and leaves the connection non-blocking.
fn metrics_conn(
    payload: &'static [u8],
) -> impl Fn() -> std::io::Result<Box<dyn Conn>> + Send + 'static {
    move || {
        let addr: SocketAddr = METRICS.parse().expect("literal");
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.write_all(payload)?;
        c.set_nonblocking(true)?;
        Ok(Box::new(c))
    }
}

/// Sends `line` on a fresh control connection (the connection left open) and reads
/// the one answer line. Returns: the answer, and how long it took.
fn control_exchange(socket: &Path, line: &[u8]) -> (Value, Duration) {
    let t = Instant::now();
    let mut c = UnixStream::connect(socket).expect("connect to the control socket");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(line).expect("send");
    let mut answer = String::new();
    std::io::BufReader::new(&c)
        .read_line(&mut answer)
        .unwrap_or_else(|e| panic!("no answer to {:?}: {e}", preview(line)));
    let v = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("answer to {:?}: {e}: {answer:?}", preview(line)));
    (v, t.elapsed())
}

fn preview(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned()
}

/// Sends `raw` to the metrics listener from the balancer's namespace (a write error,
/// once the server has answered and closed, is ignored) and reads until it closes.
/// Returns: what came back and how long until the close.
fn metrics_raw(lab: &Lab, raw: Vec<u8>) -> (String, Duration) {
    lab.lb.run(move || {
        let addr: SocketAddr = METRICS.parse().expect("literal");
        let t = Instant::now();
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        c.set_read_timeout(Some(METRICS_CLIENT_TIMEOUT + Duration::from_secs(5)))
            .expect("timeout");
        let _ = c.write_all(&raw);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
    })
}

/// One well-behaved scrape. Returns: the response head, or the error.
fn scrape(lab: &Lab) -> Result<String, String> {
    let addr: SocketAddr = METRICS.parse().expect("literal");
    lab.lb
        .run(move || http::fetch(addr, "/metrics", None, Duration::from_secs(5)))
        .map(|(head, _)| head)
}

#[test]
fn the_daemon_keeps_serving_while_its_endpoints_are_abused() {
    let mut lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_config();
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("metrics_listen: '{METRICS}'\n{text}")).expect("config");
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);
    let pid = d.pid().expect("running");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        tests::daemon::binary().canonicalize().expect("binary"),
        "the daemon's pid is the xdpvs binary itself"
    );
    let socket = lab.socket();
    // Warm both endpoints once so that what they allocate for good counts as before.
    assert!(scrape(&lab).expect("scrape").starts_with("HTTP/1.1 200"));
    assert_eq!(lab.cli(&["status"]).0, Some(0));
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid));
    println!("before: {fds_before} descriptors, VmRSS {rss_before} KiB");
    let traffic = lab.traffic(10_000);

    // Control socket: 1,000 clients that connect at once and send nothing. The daemon
    // keeps the newest CONTROL_WAITING_MAX waiting and closes older ones, each told
    // it is busy; the rest are closed by the request timeout.
    let since = Instant::now();
    let idle = Holders::start(
        None,
        1000,
        control_conn(socket.clone(), b""),
        false,
        1000,
        Duration::from_secs(30),
    );
    assert!(
        wait_for(Duration::from_secs(10), || idle.opened() >= 1000),
        "1,000 control clients could not connect ({} did)",
        idle.opened()
    );
    let what = "control: 1,000 idle clients";
    still_serving(&lab, &traffic, since, what);
    let mut stopped = vec![probes_still_run(&mut lab, what)];
    let s = control_exchange(&socket, b"{\"cmd\":\"status\"}\n").0;
    assert_eq!(s["ok"], true, "{s}");
    assert!(
        wait_for(CONTROL_REQUEST_TIMEOUT * 3, || idle.done()),
        "the 1,000 idle clients not all closed within three times the request timeout"
    );
    let held = idle.finish();
    assert_eq!(held.closed_after.len(), 1000, "{held:?}");
    let busy = held
        .answers
        .iter()
        .filter(|a| a.starts_with("{\"ok\":false,\"message\":\"busy:"))
        .count();
    let timed_out = held
        .closed_after
        .iter()
        .filter(|d| **d >= CONTROL_REQUEST_TIMEOUT - Duration::from_millis(500))
        .count();
    println!("{what}: {busy} closed at once as busy, {timed_out} by the request timeout");
    assert_eq!(held.answers.len(), busy, "every answer says busy: {held:?}");
    assert!(
        busy >= 1000 - CONTROL_WAITING_MAX && busy + timed_out == 1000,
        "{what}: {busy} busy, {timed_out} timed out"
    );
    let longest = held.closed_after.iter().max().expect("some");
    assert!(
        *longest <= CONTROL_REQUEST_TIMEOUT + Duration::from_secs(1),
        "{what}: one held for {longest:?}"
    );

    // Half a line, then nothing.
    let since = Instant::now();
    let half = Holders::start(
        None,
        100,
        control_conn(socket.clone(), b"{\"cmd\":\"sta"),
        false,
        100,
        Duration::from_secs(15),
    );
    assert!(wait_for(Duration::from_secs(5), || half.opened() >= 100));
    still_serving(
        &lab,
        &traffic,
        since,
        "control: 100 clients stalled mid-line",
    );
    assert!(
        wait_for(CONTROL_REQUEST_TIMEOUT * 2, || half.done()),
        "stalled clients not all closed within twice the request timeout"
    );
    let held = half.finish();
    assert_eq!(held.still_open, 0, "{held:?}");
    assert!(
        held.answers.is_empty(),
        "stalled clients got {:?}",
        held.answers
    );
    check_closed_by_timeout(&held, CONTROL_REQUEST_TIMEOUT, "control: stalled clients");

    // A 10 MB line without a newline, three times, the connection kept open.
    let since = Instant::now();
    for _ in 0..3 {
        let t = Instant::now();
        let c = UnixStream::connect(&socket).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut w = c.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            for _ in 0..160 {
                match w.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            sent
        });
        let mut answer = String::new();
        std::io::BufReader::new(&c)
            .read_line(&mut answer)
            .expect("an answer to a 10 MB line");
        let took = t.elapsed();
        let sent = writer.join().expect("writer");
        let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["ok"], false, "{v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains("longer than"),
            "{v}"
        );
        assert!(
            took < CONTROL_REQUEST_TIMEOUT,
            "a 10 MB line answered only after {took:?}"
        );
        println!(
            "control: a 10 MB line refused after {} ms ({} KiB written before the close): {}",
            took.as_millis(),
            sent / 1024,
            v["message"]
        );
        assert!(sent < 10 << 20, "the daemon read all 10 MB");
    }
    still_serving(&lab, &traffic, since, "control: 10 MB lines");

    // Lines that are not requests: garbage bytes, invalid JSON, an unknown command.
    let since = Instant::now();
    let log_before = d.log_text().matches("bad request").count();
    let bad: [&[u8]; 4] = [
        b"\x00\xff\xfe\x80garbage\x1b[2J\n",
        b"{\"cmd\": \n",
        b"{\"cmd\":\"shutdown_everything\"}\n",
        b"[1,2,3]\n",
    ];
    for line in bad {
        for _ in 0..25 {
            let (v, _) = control_exchange(&socket, line);
            assert_eq!(v["ok"], false, "{v}");
            let m = v["message"].as_str().unwrap_or("");
            assert!(m.starts_with("bad request"), "{:?}: {v}", preview(line));
        }
    }
    let (v, _) = control_exchange(&socket, b"{\"cmd\":\"shutdown_everything\"}\n");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("unknown variant"),
        "{v}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || d
            .log_text()
            .matches("bad request")
            .count()
            >= log_before + 101),
        "the daemon did not log the bad requests:\n{}",
        d.log_text()
    );
    still_serving(&lab, &traffic, since, "control: 101 bad requests");

    // 1,000 status requests, one after another.
    let since = Instant::now();
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..1000 {
        let (v, took) = control_exchange(&socket, b"{\"cmd\":\"status\"}\n");
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["status"]["virtual_servers"].is_array(), "{v}");
        slowest = slowest.max(took);
    }
    println!(
        "control: 1000 status requests in {} ms (slowest {} ms)",
        t.elapsed().as_millis(),
        slowest.as_millis()
    );
    assert!(t.elapsed() < Duration::from_secs(60));
    still_serving(&lab, &traffic, since, "control: 1000 status requests");

    // A caller that is not root is refused by the socket's mode.
    let (code, err) = status_as_nobody(&lab.lb, &socket);
    assert_eq!(code, Some(1), "as nobody: {err}");
    assert!(
        err.contains("permission denied") && err.contains("root's"),
        "as nobody: {err}"
    );
    println!("control: as nobody: {}", err.trim());
    // With the socket's mode loosened by mistake, the daemon still refuses a caller
    // that is not root, by its credentials (SO_PEERCRED).
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let (code, err) = status_as_nobody(&lab.lb, &socket);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .expect("chmod socket back");
    assert_eq!(code, Some(1), "as nobody, socket 0666: {err}");
    assert!(
        err.contains("uid 65534 may not use the control socket"),
        "as nobody, socket 0666: {err}"
    );
    println!(
        "control: as nobody with the socket open to all: {}",
        err.trim()
    );

    // Metrics: 40 clients that send nothing. The daemon holds the newest 32, closing
    // the oldest for each new one; the 32 it holds are closed by the 10 s limit, but
    // for the oldest, closed to make room for a scrape meanwhile, which is answered.
    let since = Instant::now();
    let n = METRICS_MAX_CLIENTS + 8;
    let idle = Holders::start(
        Some(&lab.lb),
        n,
        metrics_conn(b""),
        false,
        n,
        Duration::from_secs(20),
    );
    assert!(wait_for(Duration::from_secs(5), || idle.opened() >= n));
    let answered = scrape(&lab);
    assert!(
        answered
            .as_ref()
            .is_ok_and(|h| h.starts_with("HTTP/1.1 200")),
        "a scrape with 40 idle clients held: {answered:?}"
    );
    let what = "metrics: 40 idle clients";
    still_serving(&lab, &traffic, since, what);
    stopped.push(probes_still_run(&mut lab, what));
    assert!(
        wait_for(METRICS_CLIENT_TIMEOUT + Duration::from_secs(3), || idle
            .done()),
        "idle metrics clients not all closed"
    );
    let held = idle.finish();
    let at_once = held
        .closed_after
        .iter()
        .filter(|d| **d < Duration::from_secs(1))
        .count();
    let by_limit: Vec<_> = held
        .closed_after
        .iter()
        .filter(|d| **d >= Duration::from_secs(1))
        .collect();
    let longest = by_limit.iter().max().copied().copied().unwrap_or_default();
    println!(
        "metrics: of {n} idle clients {at_once} closed at once, {} after {} ms at most; a scrape meanwhile: {:?}",
        by_limit.len(),
        longest.as_millis(),
        answered.map(|h| h.lines().next().unwrap_or_default().to_string())
    );
    // The 8 oldest made room for the newest clients, one more for the scrape.
    assert_eq!(at_once, n - METRICS_MAX_CLIENTS + 1, "{held:?}");
    assert_eq!(by_limit.len(), METRICS_MAX_CLIENTS - 1, "{held:?}");
    assert!(
        by_limit.iter().all(
            |d| **d >= METRICS_CLIENT_TIMEOUT - Duration::from_millis(500)
                && **d <= METRICS_CLIENT_TIMEOUT + Duration::from_secs(1)
        ),
        "idle metrics clients not closed by the 10 s limit: {by_limit:?}"
    );
    let head = scrape(&lab).expect("a scrape once the idle clients are gone");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Heads too large, too many headers, garbage, a body announced and never sent.
    let since = Instant::now();
    let long = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (out, _) = metrics_raw(&lab, long.into_bytes());
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "100 KB header line: {out:?}"
    );
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (out, _) = metrics_raw(
        &lab,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 431"), "100 headers: {out:?}");
    let (out, _) = metrics_raw(&lab, b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec());
    assert!(out.starts_with("HTTP/1.1 400"), "garbage: {out:?}");
    let (out, took) = metrics_raw(
        &lab,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n".to_vec(),
    );
    println!(
        "metrics: a body of 100 GB announced and never sent: closed after {} ms, answer {:?}",
        took.as_millis(),
        out.lines().next()
    );
    assert!(
        took <= METRICS_CLIENT_TIMEOUT + Duration::from_secs(1),
        "a body never sent held the connection {took:?}"
    );
    still_serving(&lab, &traffic, since, "metrics: bad heads");

    // 1,000 scrapes, one after another.
    let since = Instant::now();
    let t = Instant::now();
    let heads: Vec<Result<String, String>> = lab.lb.run(|| {
        let addr: SocketAddr = METRICS.parse().expect("literal");
        (0..1000)
            .map(|_| http::fetch(addr, "/metrics", None, Duration::from_secs(5)).map(|r| r.0))
            .collect()
    });
    let ok = heads
        .iter()
        .filter(|h| h.as_ref().is_ok_and(|h| h.starts_with("HTTP/1.1 200")))
        .count();
    println!(
        "metrics: 1000 scrapes in {} ms, {ok} answered 200",
        t.elapsed().as_millis()
    );
    assert_eq!(ok, 1000, "{:?}", heads.iter().find(|h| h.is_err()));
    still_serving(&lab, &traffic, since, "metrics: 1000 scrapes");

    // Afterwards: descriptors back, memory not grown.
    let all = traffic.finish();
    let failed = all.iter().filter(|(_, r)| r.is_err()).count();
    println!(
        "{} requests through the VIP in all, {failed} failed (each while real2 was stopped)",
        all.len()
    );
    let settled = wait_for(Duration::from_secs(15), || fds(pid) <= fds_before + 3);
    let (fds_after, rss_after) = (fds(pid), rss_kib(pid));
    println!(
        "after: {fds_after} descriptors (before {fds_before}), VmRSS {rss_after} KiB (before {rss_before} KiB, {:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    assert!(
        settled,
        "descriptors leaked: {fds_before} before, {fds_after} after: {:?}",
        std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect::<Vec<_>>())
    );
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Asserts that every connection in `held` was closed by the daemon's `limit` (not
/// before it, and within a second after it).
fn check_closed_by_timeout(held: &Held, limit: Duration, what: &str) {
    assert!(!held.closed_after.is_empty(), "{what}: none was closed");
    let (min, max) = (
        held.closed_after.iter().min().expect("some"),
        held.closed_after.iter().max().expect("some"),
    );
    println!(
        "{what}: {} closed by the daemon after {}..{} ms",
        held.closed_after.len(),
        min.as_millis(),
        max.as_millis()
    );
    assert!(
        *min >= limit - Duration::from_millis(500) && *max <= limit + Duration::from_secs(1),
        "{what}: closed after {min:?}..{max:?}, the limit is {limit:?}"
    );
}
