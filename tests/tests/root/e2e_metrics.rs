//! Prometheus metrics end to end: `/metrics` scraped from a running daemon while it
//! balances, checked by `promtool check metrics` (Debian's `prometheus` package), and
//! its counters compared with `xdpvs status --json`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    http,
    lab::{Family, Kind, Lab},
};

const METRICS: &str = "127.0.0.1:9464";

fn status(lab: &Lab) -> Value {
    let (code, out, err) = lab.cli(&["status", "--stats", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// GET `path` from the balancer's metrics listener (in its namespace).
/// Returns: the response head and body.
fn scrape(lab: &Lab, path: &'static str, accept: Option<&'static str>) -> (String, String) {
    let addr: SocketAddr = METRICS.parse().unwrap();
    lab.lb
        .run(move || http::fetch(addr, path, accept, Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("scraping {path}: {e}"))
}

/// The samples of an exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v = value
                .parse()
                .unwrap_or_else(|e| panic!("value in {l:?}: {e}"));
            (series.to_string(), v)
        })
        .collect()
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}"))
}

/// `promtool check metrics` on `text`. Returns: its exit code and what it said.
fn promtool(text: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

fn stat(v: &Value, field: &str) -> f64 {
    v["stats"][field].as_u64().expect(field) as f64
}

#[test]
fn metrics_pass_promtool_and_match_status() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_config();
    let good = std::fs::read_to_string(&cfg).unwrap();
    let good = format!("metrics_listen: '{METRICS}'\n{good}");
    std::fs::write(&cfg, &good).unwrap();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);
    const N: usize = 60;
    let answered = lab.requests(N).into_iter().filter(Result::is_ok).count();
    assert_eq!(answered, N);

    // Status, scrape, status: with no VIP traffic in between, the traffic counters
    // cannot move; the data path's verdicts can (probe replies pass through XDP).
    let before = status(&lab);
    let (head, text) = scrape(&lab, "/metrics", None);
    let after = status(&lab);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let (code, said) = promtool(&text);
    assert_eq!(
        code,
        Some(0),
        "promtool check metrics: {said}\n--- exposition ---\n{text}"
    );
    assert!(said.trim().is_empty(), "promtool lint: {said}");
    println!(
        "promtool check metrics: OK ({} lines)",
        text.lines().count()
    );

    let m = samples(&text);
    let vs = &after["virtual_servers"][0];
    let vs_labels = r#"vs="web",vip="10.100.0.100:80",protocol="tcp",method="dr""#;
    for (metric, field) in [
        ("packets", "packets"),
        ("bytes", "bytes"),
        ("new_flows", "new_flows"),
    ] {
        let want = stat(vs, field);
        assert_eq!(
            stat(&before["virtual_servers"][0], field),
            want,
            "VS {field} moved without traffic"
        );
        assert_eq!(
            get(&m, &format!("xdpvs_vs_{metric}_total{{{vs_labels}}}")),
            want,
            "VS {field}"
        );
    }
    let mut real_packets = 0.0;
    for (i, r) in vs["reals"].as_array().unwrap().iter().enumerate() {
        let labels = format!(
            r#"vs="web",real="{}:80",role="real""#,
            r["address"].as_str().unwrap()
        );
        for (metric, field) in [
            ("packets", "packets"),
            ("bytes", "bytes"),
            ("new_flows", "new_flows"),
        ] {
            let want = stat(r, field);
            let b = &before["virtual_servers"][0]["reals"][i];
            assert_eq!(stat(b, field), want, "real {field} moved without traffic");
            assert_eq!(
                get(&m, &format!("xdpvs_real_{metric}_total{{{labels}}}")),
                want,
                "real {labels} {field}"
            );
        }
        real_packets += stat(r, "packets");
        assert_eq!(get(&m, &format!("xdpvs_real_up{{{labels}}}")), 1.0);
        assert_eq!(get(&m, &format!("xdpvs_real_in_table{{{labels}}}")), 1.0);
        assert_eq!(get(&m, &format!("xdpvs_real_weight{{{labels}}}")), 1.0);
        // Probes: every successful one is in the latency histogram.
        let probe = format!(r#"vs="web",real="{}:80""#, r["address"].as_str().unwrap());
        let ok = get(&m, &format!("xdpvs_probes_total{{{probe},result=\"ok\"}}"));
        assert!(ok >= 1.0, "{labels}: no successful probe counted");
        assert_eq!(
            get(
                &m,
                &format!("xdpvs_probe_duration_seconds_count{{{probe}}}")
            ),
            ok
        );
        assert_eq!(
            get(
                &m,
                &format!("xdpvs_probe_duration_seconds_bucket{{le=\"+Inf\",{probe}}}")
            ),
            ok
        );
    }
    // A request is at least SYN, request and ACK from the client.
    assert!(
        real_packets >= 3.0 * N as f64,
        "{real_packets} packets for {N} requests"
    );
    for (verdict, n) in after["verdicts"].as_object().unwrap() {
        let v = get(
            &m,
            &format!("xdpvs_datapath_packets_total{{verdict=\"{verdict}\"}}"),
        );
        let lo = before["verdicts"][verdict].as_u64().unwrap() as f64;
        let hi = n.as_u64().unwrap() as f64;
        assert!(
            (lo..=hi).contains(&v),
            "verdict {verdict}: {v} not within status before/after {lo}..{hi}"
        );
    }
    assert_eq!(
        get(&m, "xdpvs_flow_table_capacity"),
        after["flow_table_size"].as_u64().unwrap() as f64
    );
    assert!(get(&m, "xdpvs_flow_table_entries") >= 1.0);
    assert_eq!(
        get(
            &m,
            &format!(
                "xdpvs_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(get(&m, r#"xdpvs_config_reloads_total{result="ok"}"#), 0.0);

    // Prometheus asks for OpenMetrics and gets it: the same samples, `# EOF` at the end.
    let (head, om) = scrape(
        &lab,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE xdpvs_real_packets counter\n"));
    let om_samples = samples(&om);
    for key in m
        .keys()
        .filter(|k| k.starts_with("xdpvs_real_packets_total"))
    {
        assert_eq!(om_samples.get(key), m.get(key), "{key} in OpenMetrics");
    }

    // Reloads are counted by outcome.
    std::fs::write(&cfg, "interfaces: [nope0]\nvirtual_servers: []\n").unwrap();
    assert_eq!(lab.cli(&["reload"]).0, Some(1));
    let m = samples(&scrape(&lab, "/metrics", None).1);
    assert_eq!(
        get(&m, r#"xdpvs_config_reloads_total{result="failed"}"#),
        1.0
    );
    assert_eq!(get(&m, "xdpvs_config_last_reload_successful"), 0.0);
    std::fs::write(&cfg, &good).unwrap();
    assert_eq!(lab.cli(&["reload"]).0, Some(0));
    let m = samples(&scrape(&lab, "/metrics", None).1);
    assert_eq!(get(&m, r#"xdpvs_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(get(&m, "xdpvs_config_last_reload_successful"), 1.0);

    // Elsewhere: 404.
    let (head, _) = scrape(&lab, "/", None);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
