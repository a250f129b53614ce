//! `cargo xtask bench --soak [--minutes N]` (default 30): the daemon under mixed traffic
//! for a long run, printed as JSON lines. A benchmark, not a test: CI does not run it.
//!
//! The NAT lab (three reals; TCP on VIP:80, UDP on VIP:53) carries, for the whole run:
//! - HTTP requests, one connection each, every 20 ms (new flows);
//! - a UDP flow, a datagram every 50 ms;
//! - eight long-lived TCP streams, a chunk every 100 ms each, every echo verified.
//!
//! Meanwhile the configuration is reloaded (SIGHUP) every 10 s, real1's weight
//! alternating between 1 and 2 (a new Maglev table each time), and real3 flaps every
//! 30 s: its server stops, the probes take it out, it starts again and comes back.
//! Every 10 s the daemon's resident memory (VmRSS) and open descriptors are sampled.
//!
//! At the end it prints the samples' first (after a one-minute warm-up) and last
//! figures and their change, the requests and datagrams answered, and the streams: the
//! ones on real1 and real2 must all be intact (no established flow lost); those on
//! real3 die with its server each time it flaps, by design, and are counted apart.
//! It exits non-zero when memory or descriptors grew by more than 5% or a stream on a
//! steady real broke. Ctrl-C, SIGTERM or SIGHUP end the run early (`tests::signals`):
//! the result line then says how long it ran (`seconds_run`, `stopped_by_signal`), the
//! lab is removed, and the soak exits 130 without judging the shorter run.

use std::time::{Duration, Instant};

use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab, Spec},
    wait_for,
};

/// Sampling, reload and flap periods.
const SAMPLE: Duration = Duration::from_secs(10);
const RELOAD: Duration = Duration::from_secs(10);
const FLAP: Duration = Duration::from_secs(30);
const WARM_UP: Duration = Duration::from_secs(60);
const STREAMS: usize = 8;
/// The real that flaps (0-based).
const FLAPPER: usize = 2;

/// Returns: the VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Returns: the number of open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// Returns: the growth from `a` to `b`, in percent.
fn growth(a: f64, b: f64) -> f64 {
    (b - a) / a * 100.0
}

fn main() {
    tests::signals::stop_on_signals();
    let minutes: u64 = std::env::args()
        .nth(1)
        .map(|m| m.parse().expect("minutes"))
        .unwrap_or(30);
    let run_for = Duration::from_secs(minutes * 60);
    let mut lab = Lab::new(Kind::Nat, Family::V4, 3);
    let weights = |w: u32| Spec {
        reals: Some(vec![(0, w), (1, 1), (2, 1)]),
        ..Spec::default()
    };
    let cfg = lab.write_spec(&weights(1));
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    let pid = d.pid().expect("running");

    let per = |every: Duration| (run_for.as_millis() / every.as_millis()) as usize + 1;
    let traffic = lab.traffic_every(
        Duration::from_millis(20),
        Duration::from_secs(1),
        per(Duration::from_millis(20)),
    );
    let udp = lab.udp_flow(
        Duration::from_millis(50),
        per(Duration::from_millis(50)) as u64,
    );
    let streams: Vec<_> = (0..STREAMS).map(|_| lab.stream()).collect();
    let steady = streams.iter().filter(|s| s.real_index() != FLAPPER).count();
    println!(
        "{{\"soak\":\"start\",\"minutes\":{minutes},\"streams\":{STREAMS},\"on_steady_reals\":{steady}}}"
    );

    let start = Instant::now();
    let (mut next_sample, mut next_reload, mut next_flap) =
        (start + SAMPLE, start + RELOAD, start + FLAP);
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let (mut reloads, mut flaps, mut weight) = (0u32, 0u32, 1u32);
    // A signal ends the run early: the result is printed for the time it ran.
    while start.elapsed() < run_for && !tests::signals::stopping() {
        let now = Instant::now();
        if now >= next_sample {
            let s = (start.elapsed(), rss_kib(pid), fds(pid));
            println!(
                "{{\"soak\":\"sample\",\"s\":{},\"rss_kib\":{},\"fds\":{}}}",
                s.0.as_secs(),
                s.1,
                s.2
            );
            samples.push(s);
            next_sample += SAMPLE;
        }
        if now >= next_reload {
            weight = 3 - weight;
            lab.write_spec(&weights(weight));
            d.signal(libc::SIGHUP);
            reloads += 1;
            next_reload += RELOAD;
        }
        if now >= next_flap {
            lab.stop_server(FLAPPER);
            let out = wait_for(Duration::from_secs(10), || !serving(&lab, FLAPPER));
            lab.start_server(FLAPPER);
            let back = wait_for(Duration::from_secs(10), || serving(&lab, FLAPPER));
            assert!(
                out && back,
                "real3 did not leave and come back ({out}, {back})"
            );
            flaps += 1;
            next_flap += FLAP;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ran = start.elapsed();
    // A last sample, so that a run cut short in its first seconds has one too.
    samples.push((ran, rss_kib(pid), fds(pid)));

    let broken_steady: Vec<String> = streams
        .iter()
        .filter(|s| s.real_index() != FLAPPER && s.failed())
        .map(|s| s.server.clone())
        .collect();
    let mut chunks = 0;
    for s in streams {
        let steady = s.real_index() != FLAPPER;
        match s.finish() {
            Ok((_, n, _)) => chunks += n,
            Err(e) if steady => println!("{{\"soak\":\"stream_error\",\"error\":{e:?}}}"),
            Err(_) => {}
        }
    }
    let requests = traffic.finish();
    let answered = requests.iter().filter(|s| s.1.is_ok()).count();
    let udp = udp.finish();
    let warm: Vec<_> = samples.iter().filter(|s| s.0 >= WARM_UP).collect();
    let (first, last) = (
        warm.first().copied().unwrap_or(&samples[0]),
        &samples[samples.len() - 1],
    );
    let rss = growth(first.1 as f64, last.1 as f64);
    let fd = growth(first.2 as f64, last.2 as f64);
    println!(
        "{{\"soak\":\"result\",\"minutes\":{minutes},\"seconds_run\":{},\"stopped_by_signal\":{},\"reloads\":{reloads},\"flaps\":{flaps},\"http_sent\":{},\"http_answered\":{answered},\"udp_sent\":{},\"udp_answered\":{},\"stream_chunks\":{chunks},\"steady_streams\":{steady},\"steady_streams_broken\":{},\"rss_kib\":[{},{}],\"rss_growth_pct\":{rss:.1},\"fds\":[{},{}],\"fds_growth_pct\":{fd:.1}}}",
        ran.as_secs(),
        tests::signals::stopping(),
        requests.len(),
        udp.sent,
        udp.answered.len(),
        broken_steady.len(),
        first.1,
        last.1,
        first.2,
        last.2
    );
    drop(d);
    drop(lab);
    tests::signals::exit_if_stopped();
    let ok = rss <= 5.0 && fd <= 5.0 && broken_steady.is_empty();
    if !ok {
        eprintln!("soak: memory or descriptors grew by more than 5%, or a steady stream broke: {broken_steady:?}");
        std::process::exit(1);
    }
}

/// Returns: whether real `i` is in the web virtual server's table now.
fn serving(lab: &Lab, i: usize) -> bool {
    let (code, out, _) = lab.cli(&["status", "--json"]);
    if code != Some(0) {
        return false;
    }
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["virtual_servers"][0]["reals"][i]["in_table"] == true
}
