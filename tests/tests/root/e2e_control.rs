//! The control channel end to end: `xdpvs status`, `xdpvs real ...` and `xdpvs reload`
//! against a running daemon in the direct-routing lab.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab},
    wait_for,
};

/// `xdpvs status --stats --json`, parsed.
fn status(lab: &Lab) -> Value {
    let (code, out, err) = lab.cli(&["status", "--stats", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The real at `addr` of the first virtual server in a status.
fn real<'a>(s: &'a Value, addr: &str) -> &'a Value {
    s["virtual_servers"][0]["reals"]
        .as_array()
        .expect("reals")
        .iter()
        .find(|r| r["address"] == addr)
        .unwrap_or_else(|| panic!("no real {addr} in {s}"))
}

fn tally(lab: &Lab, n: usize) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for r in lab.requests(n) {
        *t.entry(r.expect("request")).or_default() += 1;
    }
    t
}

#[test]
fn status_adds_up_and_real_commands_drain_enable_and_reweight() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);
    let before = status(&lab);
    const N: u64 = 100;
    let t = tally(&lab, N as usize);
    let s = status(&lab);
    let r1 = real(&s, "10.100.0.11");
    let r2 = real(&s, "10.100.0.12");
    let delta = |now: &Value, then: &Value, f: &str| {
        now["stats"][f].as_u64().unwrap() - then["stats"][f].as_u64().unwrap()
    };
    let (p1, p2) = (
        delta(r1, real(&before, "10.100.0.11"), "packets"),
        delta(r2, real(&before, "10.100.0.12"), "packets"),
    );
    let c1 = delta(r1, real(&before, "10.100.0.11"), "new_flows");
    let c2 = delta(r2, real(&before, "10.100.0.12"), "new_flows");
    println!("{N} requests {t:?}: packets real1 {p1} real2 {p2}, new flows {c1} + {c2}");
    // A request is at least SYN, request and the ACK of the answer from the client.
    assert!(p1 + p2 >= 3 * N, "packets {p1} + {p2} for {N} requests");
    assert_eq!(c1 + c2, N, "one new flow per request");
    assert_eq!(
        c1, t["real1"] as u64,
        "real1's new flows = the requests it answered"
    );
    let vs = &s["virtual_servers"][0];
    assert_eq!(
        delta(vs, &before["virtual_servers"][0], "packets"),
        p1 + p2,
        "the virtual server's packets are its reals' packets"
    );
    assert_eq!(
        (r1["health"].as_str(), r2["health"].as_str()),
        (Some("up"), Some("up"))
    );
    assert_eq!(vs["method"], "dr");
    assert!(s["verdicts"]["fwd_tx"].as_u64().unwrap() >= p1 + p2);
    // The table, as an operator reads it.
    let (code, text, _) = lab.cli(&["status", "--stats"]);
    assert_eq!(code, Some(0));
    println!("{text}");
    assert!(
        text.contains("TCP  10.100.0.100:80") && text.contains("-> 10.100.0.11:80"),
        "{text}"
    );

    // Disable real1 with a stream open on it: no new request reaches it, the stream
    // goes on; a reload of the unchanged file keeps the override; enable brings it back.
    // Open streams until one lands on real1 (each has an even chance; at most 30).
    let stream = (0..30)
        .map(|_| lab.stream())
        .find(|st| st.real_index() == 0)
        .expect("no stream reached real1 in 30 tries");
    let (code, out, err) = lab.cli(&["real", "disable", "web", "10.100.0.11"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("disabled"), "{out}");
    let t = tally(&lab, 40);
    assert_eq!(
        t.get("real1"),
        None,
        "a disabled real took new requests: {t:?}"
    );
    let c0 = stream.chunks();
    assert!(
        wait_for(Duration::from_secs(5), || stream.chunks() >= c0 + 5),
        "stream stalled"
    );
    let s = status(&lab);
    assert_eq!(real(&s, "10.100.0.11")["disabled"], true);
    assert_eq!(real(&s, "10.100.0.11")["in_table"], false);
    assert!(
        real(&s, "10.100.0.11")["flows"].as_u64().unwrap() >= 1,
        "the stream's flow"
    );
    let (code, out, _) = lab.cli(&["reload"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("configuration reloaded"), "{out}");
    assert_eq!(
        real(&status(&lab), "10.100.0.11")["disabled"],
        true,
        "kept across reload"
    );
    assert_eq!(tally(&lab, 20).get("real1"), None);
    let (code, _, err) = lab.cli(&["real", "enable", "web", "10.100.0.11"]);
    assert_eq!(code, Some(0), "{err}");
    let back = wait_for(Duration::from_secs(5), || {
        tally(&lab, 10).contains_key("real1")
    });
    assert!(back, "enabled real gets no requests");
    let (_, chunks, bytes) = stream.finish().expect("stream through disable/enable");
    println!(
        "stream on real1 through disable, reload, enable: {chunks} chunks, {bytes} bytes intact"
    );

    // Weight 3:1 gives real1 three quarters.
    let (code, _, err) = lab.cli(&["real", "weight", "web", "10.100.0.11:80", "3"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(real(&status(&lab), "10.100.0.11")["weight"], 3);
    let t = tally(&lab, 200);
    let share = t.get("real1").copied().unwrap_or(0);
    println!("weight 3:1: {t:?}");
    assert!(
        (120..=180).contains(&share),
        "real1 answered {share} of 200: {t:?}"
    );

    // Errors are reported, not guessed around.
    let (code, _, err) = lab.cli(&["real", "disable", "web", "10.100.0.99"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("has no real 10.100.0.99"), "{err}");
    let (code, _, err) = lab.cli(&["real", "disable", "nope", "10.100.0.11"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no virtual server named `nope`"), "{err}");
    // A bad file: `xdpvs reload` says where, and nothing changes.
    std::fs::write(&cfg, "interfaces: [nope0]\nvirtual_servers: []\n").unwrap();
    let (code, _, err) = lab.cli(&["reload"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("xdpvs.yaml:1:") && err.contains("interfaces[0]"),
        "{err}"
    );
    assert_eq!(status(&lab)["virtual_servers"].as_array().unwrap().len(), 1);
    assert!(!tally(&lab, 10).is_empty());
    // Metrics are off unless metrics_listen is set.
    let refused = lab
        .lb
        .run(|| std::net::TcpStream::connect("127.0.0.1:9464").is_err());
    assert!(refused, "a metrics listener without metrics_listen");
}

#[test]
fn commands_without_a_daemon_say_so_and_fail() {
    let lab = Lab::new(Kind::Dr, Family::V4, 1);
    for args in [
        &["status"][..],
        &["reload"],
        &["real", "enable", "web", "10.0.0.1"],
    ] {
        let (code, _, err) = lab.cli(args);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(
            err.contains("no xdpvs daemon is listening on"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn systemd_readiness_is_notified_once_serving() {
    let lab = Lab::new(Kind::Dr, Family::V4, 1);
    let cfg = lab.write_config();
    let notify = lab.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let args = ["run", "--config", &cfg.display().to_string()].map(String::from);
    let d = Daemon::spawn_env(
        &lab.lb,
        &args,
        &cfg.with_extension("log"),
        "xdpvs running",
        &[("NOTIFY_SOCKET", notify.display().to_string())],
    );
    let mut buf = [0u8; 64];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1: {e}\n{}", d.log_text()));
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means the control socket answers.
    let (code, _, err) = lab.cli(&["status"]);
    assert_eq!(code, Some(0), "{err}");
}
