//! Half-open TCP probes (`type: tcp_half_open`, decision 0020). First the daemon's
//! prober (`xdpvs::health`, as the daemon runs it) in a namespace of its own, the reals
//! behind a veth pair: what each real answers decides its probes, the reals' listener
//! never sees a connection, and no half-open connection is left on them. Then the
//! daemon itself in the lab, taking a real out and back.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab, Spec},
    netns::{unique_prefix, veth, Netns},
    wait_for,
};
use xdpvs::{
    config::{self, AnyInterface},
    health::{Failure, Health, Sockets},
};

/// What the probes of one real found: successes, refusals, timeouts, anything else.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Found {
    ok: u32,
    refused: u32,
    timeout: u32,
    other: u32,
}

/// The reals' namespace's TCP counter `name` (`nstat`; `-s` leaves nstat's history
/// file, which other users of the host share, as it was).
fn counter(ns: &Netns, name: &str) -> u64 {
    let out = ns.exec(&["nstat", "-asz", name]);
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
fn half_open_probes_tell_open_closed_and_silent_ports_apart_and_leave_nothing_behind() {
    let p = unique_prefix();
    let (lb, reals) = (Netns::new(&format!("{p}lb")), Netns::new(&format!("{p}re")));
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    veth(&a, &lb, &b, &reals);
    lb.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", &a]);
    lb.exec(&["ip", "addr", "add", "fd77::1/64", "dev", &a, "nodad"]);
    reals.exec(&["ip", "addr", "add", "10.77.0.2/24", "dev", &b]);
    reals.exec(&["ip", "addr", "add", "fd77::2/64", "dev", &b, "nodad"]);
    // 10.78.0.9 and fd78::9 are routed to the reals' namespace, which does not forward
    // them: SYNs to them are never answered with a segment.
    lb.exec(&["ip", "route", "add", "10.78.0.0/24", "via", "10.77.0.2"]);
    lb.exec(&["ip", "-6", "route", "add", "fd78::/64", "via", "fd77::2"]);

    // One listener on 8080 for both families; nothing on 8081.
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = reals.spawn(move || {
        let l = std::net::TcpListener::bind("[::]:8080").expect("listener");
        l.set_nonblocking(true).expect("non-blocking");
        tx.send(()).expect("ready");
        l
    });
    rx.recv().expect("listener up");
    let attempts_before = counter(&reals, "TcpAttemptFails");

    let yaml = "interfaces: [lo]
virtual_servers:
  - name: v4
    address: 10.0.0.100
    port: 8080
    protocol: tcp
    method: nat
    health_check: { type: tcp_half_open, interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }
    real_servers:
      - { address: 10.77.0.2, port: 8080 }
      - { address: 10.77.0.2, port: 8081 }
      - { address: 10.78.0.9, port: 8080 }
  - name: v6
    address: fd00::100
    port: 8080
    protocol: tcp
    method: nat
    health_check: { type: tcp_half_open, interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }
    real_servers:
      - { address: 'fd77::2', port: 8080 }
      - { address: 'fd77::2', port: 8081 }
      - { address: 'fd78::9', port: 8080 }
";
    let cfg = config::parse(Path::new("half-open.yaml"), yaml, &AnyInterface).expect("config");
    // The prober, in the balancer's namespace, until every real has had 5 probes
    // (10 s at most).
    let found = lb.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut h, mut rx) = Health::new();
            h.use_half_open(Sockets::open().expect("raw sockets"))
                .expect("the half-open task");
            h.sync(&cfg);
            let mut found: HashMap<SocketAddr, Found> = HashMap::new();
            let end = Instant::now() + Duration::from_secs(10);
            while found.len() < 6
                || found
                    .values()
                    .any(|f| f.ok + f.refused + f.timeout + f.other < 5)
            {
                let Ok(Some(r)) = tokio::time::timeout_at(end.into(), rx.recv()).await else {
                    break;
                };
                let f = found
                    .entry(SocketAddr::new(r.key.addr, r.key.port))
                    .or_default();
                match r.result {
                    Ok(_) => f.ok += 1,
                    Err(Failure::Refused) => f.refused += 1,
                    Err(Failure::Timeout(_)) => f.timeout += 1,
                    Err(e) => {
                        eprintln!("{}:{}: {e}", r.key.addr, r.key.port);
                        f.other += 1;
                    }
                }
            }
            found
        })
    });
    println!("{found:?}");
    let of = |a: &str, port: u16| {
        let addr: IpAddr = a.parse().expect("address");
        found
            .get(&SocketAddr::new(addr, port))
            .copied()
            .unwrap_or_default()
    };
    for (open, closed, silent) in [
        ("10.77.0.2", "10.77.0.2", "10.78.0.9"),
        ("fd77::2", "fd77::2", "fd78::9"),
    ] {
        let (o, c, s) = (of(open, 8080), of(closed, 8081), of(silent, 8080));
        assert!(
            o.ok >= 5 && (o.refused, o.timeout, o.other) == (0, 0, 0),
            "{open}:8080 listens: {o:?}"
        );
        assert!(
            c.refused >= 5 && (c.ok, c.timeout, c.other) == (0, 0, 0),
            "{closed}:8081 refuses: {c:?}"
        );
        assert!(
            s.timeout >= 5 && (s.ok, s.refused, s.other) == (0, 0, 0),
            "{silent}:8080 is silent: {s:?}"
        );
    }

    // The listener never had a connection to accept, and every SYN-ACK it sent was
    // answered with a reset that ended its half-open connection: none is left, and
    // its namespace counted at least one failed attempt per success.
    let l = listener.join().expect("listener");
    assert_eq!(
        l.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "a half-open probe reached the application"
    );
    let oks = u64::from(of("10.77.0.2", 8080).ok + of("fd77::2", 8080).ok);
    let no_half_open = wait_for(Duration::from_secs(5), || {
        reals
            .exec(&["ss", "-Htn", "state", "syn-recv"])
            .trim()
            .is_empty()
    });
    assert!(
        no_half_open,
        "half-open connections left on the real: {}",
        reals.exec(&["ss", "-tn", "state", "syn-recv"])
    );
    let attempts = counter(&reals, "TcpAttemptFails") - attempts_before;
    println!("{oks} successful probes, {attempts} connections reset in SYN-RECV");
    // The listener stays open until here: closing it would drop its half-open
    // connections, which the checks above must see gone by the probes' resets.
    drop(l);
    assert!(
        attempts >= oks,
        "{attempts} connections reset in SYN-RECV for {oks} successful probes"
    );
}

/// Waits until the daemon's log holds `needle` at least `n` times.
fn wait_log(d: &Daemon, needle: &str, n: usize, within: Duration) {
    let ok = wait_for(within, || d.log_text().matches(needle).count() >= n);
    assert!(
        ok,
        "log did not show {needle:?} x{n} within {within:?}:\n{}",
        d.log_text()
    );
}

/// The daemon probing half-open, as an operator runs it: its real servers come up, a
/// stopped server's real leaves the table (its port refuses the SYN) and comes back
/// when it starts again. Direct routing over IPv4, and NAT over IPv6, where the reals'
/// answers to the probes cross the balancer's XDP program on their way in.
#[test]
fn the_daemon_takes_a_stopped_real_out_and_back_on_half_open_probes() {
    const PROBES: &str =
        "{ type: tcp_half_open, interval: 300ms, timeout: 200ms, rise: 2, fall: 2 }";
    for (kind, fam) in [(Kind::Dr, Family::V4), (Kind::Nat, Family::V6)] {
        let mut lab = Lab::new(kind, fam, 3);
        let cfg = lab.write_spec(&Spec {
            health: Some(PROBES),
            ..Spec::default()
        });
        let d = Daemon::start(&lab.lb, &cfg);
        lab.wait_serving(&[0, 1, 2], &d);
        wait_log(&d, "real server is up", 3, Duration::from_secs(5));

        lab.stop_server(1);
        wait_log(&d, "reason=connection refused", 1, Duration::from_secs(5));
        let answered: Vec<String> = lab.requests(30).into_iter().flatten().collect();
        assert_eq!(
            answered.len(),
            30,
            "{kind:?} {fam:?}: every request answered"
        );
        assert!(
            answered.iter().all(|r| r != "real2"),
            "{kind:?} {fam:?}: real2 is out, yet answered: {answered:?}"
        );

        lab.start_server(1);
        wait_log(&d, "real server is up", 4, Duration::from_secs(5));
        lab.wait_serving(&[0, 1, 2], &d);
    }
}

/// A daemon started without CAP_NET_RAW (`setpriv`, as a unit without it in its
/// bounding set would) serves a configuration without half-open probes, refuses a
/// reload that adds them and keeps serving what it had, and refuses to start with
/// them, naming the file, the real and the capability.
#[test]
fn without_net_raw_half_open_probes_are_refused_at_reload_and_at_start() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let wrapper = lab.dir.join("xdpvs-without-net-raw");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -net_raw -- {} \"$@\"\n",
            tests::daemon::binary().display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod");
    let cfg = lab.write_spec(&Spec::default());
    let log = lab.dir.join("no-net-raw.log");
    let d = Daemon::start_as(&lab.lb, &cfg, &wrapper, &log);
    lab.wait_serving(&[0, 1], &d);
    assert!(
        d.log_text().contains("half-open probes unavailable"),
        "{}",
        d.log_text()
    );

    lab.write_spec(&Spec {
        health: Some("{ type: tcp_half_open, interval: 250ms, timeout: 200ms, rise: 1, fall: 2 }"),
        ..Spec::default()
    });
    d.signal(libc::SIGHUP);
    wait_log(
        &d,
        "reload rejected, running configuration unchanged",
        1,
        Duration::from_secs(10),
    );
    let log_text = d.log_text();
    assert!(
        log_text.contains("tcp_half_open needs raw sockets") && log_text.contains("CAP_NET_RAW"),
        "{log_text}"
    );
    assert!(
        !log_text.contains(xdpvs::health::HALF_OPEN_UNAVAILABLE),
        "{log_text}"
    );
    // Still probing over TCP connects, still serving both reals.
    lab.wait_serving(&[0, 1], &d);
    drop(d);

    // Started with the half-open file: it must exit at once. Bounded: a daemon that
    // came up instead is killed (and the lab tears down what it attached).
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb.name])
        .arg(&wrapper)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xdpvs run");
    let mut status = None;
    wait_for(Duration::from_secs(10), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("xdpvs run");
    assert!(
        status.is_some(),
        "still running 10 s after a start without CAP_NET_RAW"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without CAP_NET_RAW: {err}");
    assert!(
        err.contains(&cfg.display().to_string())
            && err.contains("virtual server web, real")
            && err.contains("tcp_half_open needs raw sockets")
            && err.contains("CAP_NET_RAW"),
        "{err}"
    );
}
