//! Least privilege (issue 14, decision 0007): once serving, the daemon holds only
//! CAP_NET_ADMIN (effective, permitted, bounding; nothing inheritable or ambient) with
//! no_new_privs, on every thread; and everything a running daemon does still works
//! without the rest: reloads that change reals and VIPs (maps, addresses, announcing
//! routes), probe-driven health changes, the flow walk of `xdpvs status`, runtime
//! overrides, `withdraw`/`announce`, and withdrawing the routes at stop.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    lab::{net, Family, Kind, Lab, Spec},
    wait_for,
};

/// What the daemon keeps: CAP_NET_ADMIN (12).
const KEPT: u64 = 1 << 12;
const TABLE: &str = "4242";

/// Returns: the privilege fields of `/proc/<pid>/task/<tid>/status`, for each thread
/// of `pid` (capability sets parsed from hex, NoNewPrivs as is).
fn thread_privileges(pid: u32) -> Vec<(String, Vec<(String, u64)>)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for t in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(t.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let fields = [
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapBnd",
            "CapAmb",
            "NoNewPrivs",
        ]
        .iter()
        .map(|f| {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:")))
                .unwrap_or_else(|| panic!("no {f} in {text}"))
                .trim();
            let n = if *f == "NoNewPrivs" {
                v.parse().unwrap()
            } else {
                u64::from_str_radix(v, 16).unwrap()
            };
            (f.to_string(), n)
        })
        .collect();
        out.push((t.file_name().to_string_lossy().into_owned(), fields));
    }
    out
}

/// Asserts that every thread of the daemon holds exactly the kept set.
fn assert_least_privilege(d: &Daemon, when: &str) {
    let pid = d.pid().expect("daemon running");
    let want = |f: &str| match f {
        "CapInh" | "CapAmb" => 0,
        "NoNewPrivs" => 1,
        _ => KEPT,
    };
    let threads = thread_privileges(pid);
    assert!(!threads.is_empty(), "{when}: no threads of {pid}");
    for (tid, fields) in &threads {
        for (f, v) in fields {
            assert_eq!(
                *v,
                want(f),
                "{when}: thread {tid} of {pid} has {f} {v:#x}, want {:#x} (all: {fields:?})\n{}",
                want(f),
                d.log_text()
            );
        }
    }
    println!(
        "{when}: {} thread(s), each with only CAP_NET_ADMIN and no_new_privs",
        threads.len()
    );
}

/// The real at `addr` of virtual server `vs` in a status (None: not there).
fn real(s: &Value, vs: &str, addr: IpAddr) -> Option<Value> {
    let vs = s["virtual_servers"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == vs)?;
    vs["reals"]
        .as_array()?
        .iter()
        .find(|r| r["address"] == addr.to_string())
        .cloned()
}

/// Returns: the destinations of xdpvs's routes in the balancer's announce table.
fn announced(lab: &Lab) -> Vec<String> {
    tests::netns::announced(&lab.lb, TABLE.parse().expect("table"))
}

/// Returns: whether `a` is an address of the balancer's first interface.
fn has_address(lab: &Lab, a: IpAddr) -> bool {
    let out = lab
        .lb
        .exec(&["ip", "-o", "addr", "show", "dev", &lab.lb_ifs[0]]);
    out.split_whitespace()
        .any(|w| w.split('/').next() == Some(&a.to_string()))
}

/// Polls `cond` for up to 10 s; panics with `what` and the daemon's log.
fn until(d: &Daemon, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(Duration::from_secs(10), cond),
        "{what}\n{}",
        d.log_text()
    );
}

/// The lab's file with the announce table in front.
fn with_table(cfg: std::path::PathBuf) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("announce:\n  table: {TABLE}\n{text}")).expect("config");
    cfg
}

#[test]
fn a_running_daemon_keeps_only_net_admin_and_everything_still_works() {
    let mut lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = with_table(lab.write_config());
    let original = std::fs::read_to_string(&cfg).unwrap();
    let mut d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);
    assert!(
        d.log_text().contains("privileges dropped") && d.log_text().contains("kept=CAP_NET_ADMIN"),
        "{}",
        d.log_text()
    );
    assert_least_privilege(&d, "serving");
    let (vip, vip2) = (lab.vip, net(Family::V4, 100, 101));
    let (r1, r2) = (lab.real_addrs[0], lab.real_addrs[1]);
    until(&d, "the VIP announced at start", || {
        announced(&lab) == [vip.to_string()]
    });

    // A reload that changes a real (real2 leaves `web`) and a VIP (a second virtual
    // server on a new VIP, with real2): maps, an address, a route.
    with_table(lab.write_spec(&Spec {
        reals: Some(vec![(0, 1)]),
        ..Spec::default()
    }));
    let extra = format!(
        "  - name: extra\n    address: '{vip2}'\n    port: 80\n    protocol: tcp\n    method: dr\n    health_check: {{ interval: 250ms, timeout: 200ms, rise: 1, fall: 2 }}\n    real_servers:\n      - address: '{r2}'\n        port: 80\n"
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&extra);
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = lab.cli(&["reload"]);
    assert_eq!(code, Some(0), "reload: {out}{err}\n{}", d.log_text());
    assert!(out.contains("2 virtual servers"), "{out}");
    assert!(
        real(&lab.status(), "web", r2).is_none(),
        "real2 still in web"
    );
    assert!(has_address(&lab, vip2), "the new VIP was not added");
    until(&d, "the new VIP announced", || {
        announced(&lab).contains(&vip2.to_string())
    });
    let t = lab.requests(20);
    assert!(
        t.iter().all(|r| r.as_deref() == Ok("real1")),
        "after the reload web is real1 alone: {t:?}"
    );

    // A real fails and recovers: probes, map updates, the VIP's route out and back.
    lab.stop_server(0);
    until(&d, "real1 down", || {
        real(&lab.status(), "web", r1).is_some_and(|r| r["health"] == "down")
    });
    until(&d, "VIP withdrawn with no real up", || {
        !announced(&lab).contains(&vip.to_string())
    });
    lab.start_server(0);
    until(&d, "real1 up again", || {
        real(&lab.status(), "web", r1).is_some_and(|r| r["health"] == "up" && r["in_table"] == true)
    });
    until(&d, "VIP announced again", || {
        announced(&lab).contains(&vip.to_string())
    });
    lab.wait_serving(&[0], &d);

    // `xdpvs status` walks the connection table on a thread of its own.
    let stream = lab.stream();
    until(&d, "the stream's flow counted by the walk", || {
        real(&lab.status(), "web", r1).is_some_and(|r| r["flows"].as_u64() >= Some(1))
    });
    assert_least_privilege(&d, "after status walked the flows");

    // Runtime overrides.
    let (code, _, err) = lab.cli(&["real", "disable", "web", &r1.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    let r = real(&lab.status(), "web", r1).unwrap();
    assert_eq!(
        (&r["disabled"], &r["in_table"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    let (code, _, err) = lab.cli(&["real", "enable", "web", &r1.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(real(&lab.status(), "web", r1).unwrap()["in_table"], true);
    stream.finish().expect("the stream through the overrides");

    // withdraw / announce: routes.
    let (code, _, err) = lab.cli(&["withdraw"]);
    assert_eq!(code, Some(0), "{err}");
    until(&d, "withdrawn: no route", || announced(&lab).is_empty());
    let (code, _, err) = lab.cli(&["announce"]);
    assert_eq!(code, Some(0), "{err}");
    until(&d, "announced again", || {
        let a = announced(&lab);
        a.contains(&vip.to_string()) && a.contains(&vip2.to_string())
    });

    // Back to the first file: the second VIP's address and route go.
    std::fs::write(&cfg, &original).unwrap();
    let (code, out, err) = lab.cli(&["reload"]);
    assert_eq!(code, Some(0), "reload: {out}{err}");
    assert!(
        !has_address(&lab, vip2),
        "the dropped VIP is still on the interface"
    );
    until(&d, "only the first VIP announced", || {
        announced(&lab) == [vip.to_string()]
    });
    lab.wait_serving(&[0, 1], &d);
    assert_least_privilege(&d, "at the end");
    let log = d.log_text();
    assert!(
        !log.contains("Operation not permitted") && !log.contains("EPERM"),
        "a privileged call failed:\n{log}"
    );

    // Stopping withdraws the routes: still possible with what was kept.
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
    assert!(
        announced(&lab).is_empty(),
        "routes left after stop: {:?}",
        announced(&lab)
    );
}
