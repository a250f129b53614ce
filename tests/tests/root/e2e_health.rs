//! Health probes, draining, persistence, the sorry server and live reloads, end to end:
//! the direct-routing lab, the daemon as an operator runs it, a client in its own
//! namespace. Every wait polls for its condition with a deadline.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tests::{
    daemon::Daemon,
    http::{TestCa, TlsServer},
    lab::{Family, Kind, Lab, Spec},
    wait_for,
};

/// Probe settings of the failure test: a failed real is out within
/// fall x interval + timeout (+1 s of slack the issue allows) = 2 x 0.5 + 0.3 + 1 s.
const PROBES: &str =
    "{ type: http, path: /health, interval: 500ms, timeout: 300ms, rise: 2, fall: 2 }";
const OUT_WITHIN: Duration = Duration::from_millis(2 * 500 + 300 + 1000);
/// rise x interval + 1 s.
const BACK_WITHIN: Duration = Duration::from_millis(2 * 500 + 1000);

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Waits until the daemon's log holds `needle` at least `n` times.
fn wait_log(d: &Daemon, needle: &str, n: usize, within: Duration) {
    let ok = wait_for(within, || count(&d.log_text(), needle) >= n);
    assert!(
        ok,
        "log did not show {needle:?} x{n} within {within:?}:\n{}",
        d.log_text()
    );
}

#[test]
fn a_failed_real_is_out_within_the_bound_and_back_after_rise() {
    let mut lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_spec(&Spec {
        health: Some(PROBES),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    let traffic = lab.traffic(5000);
    assert!(wait_for(Duration::from_secs(5), || traffic.samples().len() >= 20));

    // Stop real2's server: its port refuses, its probe fails.
    let stopped = Instant::now();
    lab.stop_server(1);
    wait_log(
        &d,
        "real server is down",
        1,
        OUT_WITHIN + Duration::from_secs(2),
    );
    // Keep the client going until 30 requests have ended past the bound.
    let past_bound = |t: &Instant| t.duration_since(stopped) > OUT_WITHIN;
    assert!(wait_for(OUT_WITHIN + Duration::from_secs(10), || {
        traffic
            .samples()
            .iter()
            .filter(|(t, _)| past_bound(t))
            .count()
            >= 30
    }));
    let samples = traffic.samples();
    let after_stop: Vec<_> = samples.iter().filter(|(t, _)| *t > stopped).collect();
    let failures: Vec<_> = after_stop.iter().filter(|(_, r)| r.is_err()).collect();
    let last_failure = failures.last().map(|(t, _)| t.duration_since(stopped));
    println!(
        "real2 stopped: {} of {} requests failed in the gap, the last {:?} after the stop (bound {:?})",
        failures.len(),
        after_stop.len(),
        last_failure,
        OUT_WITHIN
    );
    if let Some(l) = last_failure {
        assert!(
            l <= OUT_WITHIN,
            "a request failed {l:?} after the stop (bound {OUT_WITHIN:?}):\n{}",
            d.log_text()
        );
    }
    let late: Vec<_> = after_stop
        .iter()
        .filter(|(t, _)| t.duration_since(stopped) > OUT_WITHIN)
        .collect();
    assert!(
        late.len() >= 20,
        "too few requests after the bound: {}",
        late.len()
    );
    assert!(
        late.iter().all(|(_, r)| r.is_ok()),
        "no request fails once it is out"
    );
    assert!(
        d.log_text().contains("reason=connection refused"),
        "the transition names its reason:\n{}",
        d.log_text()
    );

    // Start it again: it is back within rise x interval + 1 s.
    let restarted = Instant::now();
    lab.start_server(1);
    let back = wait_for(BACK_WITHIN + Duration::from_secs(3), || {
        traffic
            .samples()
            .iter()
            .any(|(t, r)| *t > restarted && r.as_deref() == Ok("real2"))
    });
    assert!(back, "real2 not answering again:\n{}", d.log_text());
    let first = traffic
        .samples()
        .iter()
        .find(|(t, r)| *t > restarted && r.as_deref() == Ok("real2"))
        .map(|(t, _)| t.duration_since(restarted))
        .expect("checked");
    println!("real2 restarted: answering again after {first:?} (bound {BACK_WITHIN:?})");
    assert!(first <= BACK_WITHIN, "back after {first:?}");

    // An HTTP status outside expect_status fails the probe just as well.
    lab.servers[2].health_status.store(503, Ordering::Relaxed);
    wait_log(
        &d,
        "reason=status 503",
        1,
        OUT_WITHIN + Duration::from_secs(2),
    );
    let marker = traffic.samples().len();
    assert!(wait_for(Duration::from_secs(10), || traffic
        .samples()
        .len()
        >= marker + 30));
    let tail = &traffic.samples()[marker..];
    assert!(
        tail.iter()
            .all(|(_, r)| matches!(r.as_deref(), Ok("real1") | Ok("real2"))),
        "real3 (status 503) still takes new connections: {tail:?}"
    );
    lab.servers[2].health_status.store(200, Ordering::Relaxed);
    wait_log(
        &d,
        "real server is up",
        5,
        BACK_WITHIN + Duration::from_secs(2),
    );
    let all = traffic.finish();
    println!("{} requests in all", all.len());
}

/// Waits until `stream` has echoed `n` more chunks: the stream carries data between
/// one event and the next.
fn flows_on(stream: &tests::lab::StreamClient, n: u64, d: &Daemon) {
    let c0 = stream.chunks();
    assert!(
        wait_for(Duration::from_secs(5), || stream.chunks() >= c0 + n),
        "the stream stalled at chunk {c0}:\n{}",
        d.log_text()
    );
}

/// Writes a configuration with these (real, weight) pairs and sends SIGHUP; waits until
/// the daemon reports the reload (`n`: reloads so far, this one included).
fn reload(lab: &Lab, d: &Daemon, reals: &[(usize, u32)], n: usize) {
    lab.write_spec(&Spec {
        reals: Some(reals.to_vec()),
        ..Spec::default()
    });
    d.signal(libc::SIGHUP);
    wait_log(d, "configuration reloaded", n, Duration::from_secs(10));
}

#[test]
fn a_long_lived_stream_survives_failures_additions_reweights_and_20_reloads() {
    let mut lab = Lab::new(Kind::Dr, Family::V4, 4);
    let cfg = lab.write_spec(&Spec {
        reals: Some(vec![(0, 1), (1, 1), (2, 1)]),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    let stream = lab.stream();
    let mine = stream.real_index();
    let other = (0..3).find(|&i| i != mine).unwrap();
    println!("stream on real{}; real{} will fail", mine + 1, other + 1);

    // Another real fails.
    lab.stop_server(other);
    wait_log(&d, "real server is down", 1, Duration::from_secs(5));
    flows_on(&stream, 2, &d);
    // Another real is added.
    let mut reloads = 0;
    let mut reals = vec![(0, 1), (1, 1), (2, 1), (3, 1)];
    reloads += 1;
    reload(&lab, &d, &reals, reloads);
    lab.wait_serving(&[3], &d);
    flows_on(&stream, 2, &d);
    // The stream's own virtual server is reweighted.
    reals[mine].1 = 5;
    reals[3].1 = 2;
    reloads += 1;
    reload(&lab, &d, &reals, reloads);
    flows_on(&stream, 2, &d);
    // 20 SIGHUPs, one of them with an invalid file (nothing changes).
    let mut rejected = 0;
    for i in 0..20 {
        if i == 10 {
            std::fs::write(&cfg, "interfaces: [nope0]\nvirtual_servers: []\n").unwrap();
            d.signal(libc::SIGHUP);
            rejected += 1;
            wait_log(&d, "reload rejected", rejected, Duration::from_secs(10));
        } else {
            reals[3].1 = 1 + (i % 3);
            reloads += 1;
            reload(&lab, &d, &reals, reloads);
        }
        flows_on(&stream, 2, &d);
    }
    assert!(!stream.failed(), "the stream broke:\n{}", d.log_text());
    // New connections still work, and the failed real gets none.
    let t: HashSet<String> = lab.requests(40).into_iter().map(|r| r.unwrap()).collect();
    assert!(!t.contains(&format!("real{}", other + 1)), "{t:?}");
    let (server, chunks, bytes) = stream
        .finish()
        .unwrap_or_else(|e| panic!("stream: {e}\n{}", d.log_text()));
    println!("stream on {server}: {chunks} chunks, {bytes} bytes echoed intact through 22 reloads");
    assert_eq!(server, format!("real{}", mine + 1));
    assert!(chunks >= 2 * 23, "only {chunks} chunks");
}

#[test]
fn weight_zero_drains_a_real_with_an_open_stream() {
    let lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    let stream = lab.stream();
    let mine = stream.real_index();
    let mut reals = vec![(0, 1), (1, 1), (2, 1)];
    reals[mine].1 = 0;
    lab.write_spec(&Spec {
        reals: Some(reals),
        ..Spec::default()
    });
    d.signal(libc::SIGHUP);
    wait_log(&d, "configuration reloaded", 1, Duration::from_secs(10));
    let t: HashMap<String, usize> =
        lab.requests(60)
            .into_iter()
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.unwrap()).or_default() += 1;
                m
            });
    println!("drained real{}: 60 new requests went to {t:?}", mine + 1);
    assert!(
        !t.contains_key(&stream.server),
        "a drained real took new requests: {t:?}"
    );
    // The stream goes on: 10 more chunks echoed after the drain.
    let c0 = stream.chunks();
    assert!(
        wait_for(Duration::from_secs(5), || stream.chunks() >= c0 + 10),
        "the drained stream stalled"
    );
    let (_, chunks, bytes) = stream
        .finish()
        .unwrap_or_else(|e| panic!("stream after drain: {e}"));
    println!("stream through the drain: {chunks} chunks, {bytes} bytes intact");
    assert!(chunks >= 10);
}

#[test]
fn persistence_holds_a_client_and_without_it_connections_spread() {
    let lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_spec(&Spec {
        vs_extra: "    persistence: { timeout: 300s, netmask: 24 }\n".into(),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    // Reals must all be up before the first connection picks one for the client.
    wait_log(&d, "real server is up", 3, Duration::from_secs(10));
    let answers: HashSet<String> = lab.requests(50).into_iter().map(|r| r.unwrap()).collect();
    println!("with persistence: 50 connections went to {answers:?}");
    assert_eq!(answers.len(), 1, "{answers:?}");

    lab.write_config();
    d.signal(libc::SIGHUP);
    wait_log(&d, "configuration reloaded", 1, Duration::from_secs(10));
    let spread: HashSet<String> = lab.requests(50).into_iter().map(|r| r.unwrap()).collect();
    println!("without persistence: 50 connections went to {spread:?}");
    assert!(spread.len() >= 2, "{spread:?}");
}

#[test]
fn the_sorry_server_answers_while_every_real_is_down() {
    let mut lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_spec(&Spec {
        reals: Some(vec![(0, 1), (1, 1)]),
        sorry: Some(2),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);
    let before: HashSet<String> = lab.requests(30).into_iter().map(|r| r.unwrap()).collect();
    assert!(
        !before.contains("real3"),
        "the sorry server took flows while reals were up"
    );

    lab.stop_server(0);
    lab.stop_server(1);
    let sorry = wait_for(Duration::from_secs(10), || {
        lab.requests(1)[0].as_deref() == Ok("real3")
    });
    assert!(sorry, "the sorry server never answered:\n{}", d.log_text());
    let all: Vec<_> = lab.requests(20);
    assert!(all.iter().all(|r| r.as_deref() == Ok("real3")), "{all:?}");
    assert!(d.log_text().contains("the sorry server does"));

    lab.start_server(0);
    let back = wait_for(Duration::from_secs(10), || {
        lab.requests(1)[0].as_deref() == Ok("real1")
    });
    assert!(back, "real1 did not take over:\n{}", d.log_text());
    let after: Vec<_> = lab.requests(20);
    assert!(
        after.iter().all(|r| r.as_deref() == Ok("real1")),
        "{after:?}"
    );
}

/// The name the reals' certificates carry, sent by the probes as SNI.
const TLS_NAME: &str = "real.xdpvs.test";

/// Starts real `i`'s HTTPS server (port 443) with certificate `cert`.
fn start_tls(
    lab: &Lab,
    i: usize,
    (cert, key): &(std::path::PathBuf, std::path::PathBuf),
) -> TlsServer {
    let bind = std::net::SocketAddr::new(lab.real_addrs[i], 443);
    TlsServer::start(
        &lab.reals[i],
        &lab.dir.join(format!("tls{}", i + 1)),
        bind,
        cert,
        key,
    )
}

/// Asserts that new connections all go to real1.
fn only_real1(lab: &Lab, d: &Daemon, why: &str) {
    let answers = lab.requests(20);
    assert!(
        answers.iter().all(|r| r.as_deref() == Ok("real1")),
        "{why}: real2 still takes new connections: {answers:?}\n{}",
        d.log_text()
    );
}

/// Waits until the daemon logs real2 out with `reason`, then asserts that new
/// connections all go to real1.
fn real2_out(lab: &Lab, d: &Daemon, reason: &str, why: &str) {
    wait_log(
        d,
        &format!("reason={reason}"),
        1,
        OUT_WITHIN + Duration::from_secs(2),
    );
    only_real1(lab, d, why);
}

/// Waits until the daemon logs its `ups`-th "real server is up", then until real2
/// answers through the VIP again.
fn real2_up(lab: &Lab, d: &Daemon, ups: usize, why: &str) {
    wait_log(
        d,
        "real server is up",
        ups,
        BACK_WITHIN + Duration::from_secs(2),
    );
    real2_back(lab, d, why);
}

/// Waits until real2 answers through the VIP again.
fn real2_back(lab: &Lab, d: &Daemon, why: &str) {
    let back = wait_for(BACK_WITHIN + Duration::from_secs(3), || {
        lab.requests(4).iter().any(|r| r.as_deref() == Ok("real2"))
    });
    assert!(back, "{why}: real2 not answering again:\n{}", d.log_text());
}

#[test]
fn https_probes_verify_the_certificate_and_follow_the_tls_server() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let ca = TestCa::new(&lab.dir, "ca", "xdpvs-test-CA");
    let good = ca.issue("real", TLS_NAME);
    let other_ca = TestCa::new(&lab.dir, "other-ca", "another-CA");
    let untrusted = other_ca.issue("untrusted", TLS_NAME);
    let real1 = start_tls(&lab, 0, &good);
    let mut real2 = start_tls(&lab, 1, &good);
    let probes = format!(
        "{{ type: https, port: 443, path: /health, host: {TLS_NAME}, ca_file: '{}', interval: 500ms, timeout: 300ms, rise: 2, fall: 2 }}",
        ca.cert.display()
    );
    let cfg = lab.write_spec(&Spec {
        health: Some(Box::leak(probes.into_boxed_str())),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    // Both reals serve: their certificates were verified against ca_file.
    lab.wait_serving(&[0, 1], &d);
    let mut ups = 2;

    // A status outside expect_status, over TLS.
    real2.health_status(503);
    real2_out(&lab, &d, "status 503", "status 503");
    real2.health_status(200);
    ups += 1;
    real2_up(&lab, &d, ups, "status 200 again");

    // The TLS server stops: refused; it starts again: back.
    drop(real2);
    real2_out(&lab, &d, "connection refused", "TLS server stopped");
    real2 = start_tls(&lab, 1, &good);
    ups += 1;
    real2_up(&lab, &d, ups, "TLS server restarted");

    // A certificate the probe cannot trust (another CA): out, with the reason.
    drop(real2);
    real2 = start_tls(&lab, 1, &untrusted);
    real2_out(
        &lab,
        &d,
        "tls: invalid peer certificate: UnknownIssuer",
        "untrusted certificate",
    );
    drop(real2);
    real2 = start_tls(&lab, 1, &good);
    ups += 1;
    real2_up(&lab, &d, ups, "trusted certificate again");
    println!("https probes: status 503, a stopped TLS server and an untrusted certificate each took real2 out, and it came back each time");
    drop((real1, real2));
}

/// Returns: whether `xdpvs ready` exits 0 for the lab's daemon.
fn ready(lab: &Lab) -> bool {
    lab.cli(&["ready", "--quiet"]).0 == Some(0)
}

#[test]
fn ready_follows_min_healthy_and_the_daemon() {
    let mut lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_spec(&Spec {
        vs_extra: "    min_healthy: 2\n".to_string(),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    // Reals start unhealthy: not ready until two of three pass their probes.
    assert!(
        wait_for(Duration::from_secs(10), || ready(&lab)),
        "never ready:\n{}",
        d.log_text()
    );
    let (code, out, _) = lab.cli(&["ready"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("web: 3 of 3 real servers take new flows (min_healthy 2)"),
        "{out}"
    );
    // One real down: two still serve, still ready.
    lab.stop_server(0);
    assert!(wait_for(OUT_WITHIN, || lab
        .cli(&["ready"])
        .1
        .contains("web: 2 of 3")));
    assert!(ready(&lab));
    // A second one down: below min_healthy within the probes' bound.
    let stopped = Instant::now();
    lab.stop_server(1);
    assert!(
        wait_for(OUT_WITHIN, || !ready(&lab)),
        "still ready {:?} after the second real stopped",
        stopped.elapsed()
    );
    println!(
        "xdpvs ready turned 1 {:?} after the second real stopped",
        stopped.elapsed()
    );
    let (code, out, _) = lab.cli(&["ready"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("not ready") && out.contains("web: 1 of 3"),
        "{out}"
    );
    lab.start_server(1);
    assert!(wait_for(BACK_WITHIN + Duration::from_secs(2), || ready(
        &lab
    )));
    // No daemon: not ready, whatever the data path still does.
    drop(d);
    let (code, out, _) = lab.cli(&["ready"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not ready"), "{out}");
}
