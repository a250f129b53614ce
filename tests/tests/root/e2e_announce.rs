//! The routes that announce this node's VIPs (issue 13, decision 0006): with
//! `announce: { table }`, the daemon keeps a blackhole route of protocol 250 for a VIP
//! in that table exactly while the node should take its traffic. These tests read the
//! kernel's table in the balancer's namespace; the BGP side (bird2 learning the table)
//! is proven by the scale-out tests.

use std::time::Duration;

use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab, Spec},
    wait_for,
};

const TABLE: &str = "4242";

/// Returns: the destinations of xdpvs's routes in the balancer's announce table.
fn announced(lab: &Lab) -> Vec<String> {
    tests::netns::announced(&lab.lb, TABLE.parse().expect("table"))
}

/// Polls until the VIP's route is in the table (`want`) or not. Panics with the log.
fn wait_route(lab: &Lab, d: &Daemon, want: bool, what: &str) {
    let vip = lab.vip.to_string();
    let ok = wait_for(Duration::from_secs(20), || {
        announced(lab).contains(&vip) == want
    });
    assert!(
        ok,
        "{what}: the route of {vip} should be {}in table {TABLE} (have {:?}):\n{}",
        if want { "" } else { "absent from " },
        announced(lab),
        d.log_text()
    );
}

/// The DR lab with two reals, `min_healthy: 2` and an announce table.
fn lab_and_config() -> (Lab, std::path::PathBuf) {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_spec(&Spec {
        vs_extra: "    min_healthy: 2\n".into(),
        ..Spec::default()
    });
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("announce:\n  table: {TABLE}\n{text}")).expect("config");
    (lab, cfg)
}

#[test]
fn a_vip_is_announced_exactly_while_its_virtual_server_has_min_healthy_reals() {
    let (mut lab, cfg) = lab_and_config();
    let d = Daemon::start(&lab.lb, &cfg);
    wait_route(&lab, &d, true, "both reals up");
    assert_eq!(announced(&lab), [lab.vip.to_string()], "only the VIP, once");
    let s = lab.status();
    assert_eq!(s["announce_table"], 4242);
    let a = &s["announcements"][0];
    assert_eq!(a["address"], lab.vip.to_string());
    assert_eq!(a["announced"], true, "{s:#}");
    let (code, text, _) = lab.cli(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("Announced in routing table 4242:"),
        "status shows the announce table:\n{text}"
    );

    // One real of two down: below min_healthy 2, the route goes and status says why.
    lab.stop_server(0);
    wait_route(&lab, &d, false, "one real down of min_healthy 2");
    let s = lab.status();
    let a = &s["announcements"][0];
    assert_eq!(a["announced"], false);
    assert_eq!(
        a["reason"], "web: 1 of 2 real servers take new flows (min_healthy 2)",
        "{s:#}"
    );
    let (code, out, _) = lab.cli(&["ready"]);
    assert_eq!(code, Some(1), "not ready below min_healthy: {out}");

    lab.start_server(0);
    wait_route(&lab, &d, true, "the real back up");
    let (code, out, _) = lab.cli(&["ready"]);
    assert_eq!(code, Some(0), "ready again: {out}");
}

#[test]
fn withdraw_takes_the_node_out_across_restarts_and_a_stopped_daemon_announces_nothing() {
    let (lab, cfg) = lab_and_config();
    let mut d = Daemon::start(&lab.lb, &cfg);
    wait_route(&lab, &d, true, "serving");

    let (code, out, err) = lab.cli(&["withdraw"]);
    assert_eq!(code, Some(0), "withdraw: {out}{err}");
    wait_route(&lab, &d, false, "withdrawn");
    let (code, out, _) = lab.cli(&["ready"]);
    assert_eq!(code, Some(1), "a withdrawn node is not ready: {out}");
    assert!(out.contains("node withdrawn"), "ready says why: {out}");

    // A restart keeps the node out: once its reals are back in the table, the status
    // says withdrawn and the table stays empty.
    d.stop();
    drop(d);
    let d = Daemon::start(&lab.lb, &cfg);
    let both_in = wait_for(Duration::from_secs(20), || {
        lab.status()["virtual_servers"][0]["reals"]
            .as_array()
            .is_some_and(|rs| rs.iter().all(|r| r["in_table"] == true))
    });
    assert!(both_in, "reals back in the table:\n{}", d.log_text());
    let s = lab.status();
    assert_eq!(s["withdrawn"], true, "{s:#}");
    assert_eq!(s["announcements"][0]["announced"], false);
    assert!(announced(&lab).is_empty(), "withdrawn across the restart");

    let (code, out, err) = lab.cli(&["announce"]);
    assert_eq!(code, Some(0), "announce: {out}{err}");
    assert!(out.contains(&format!("{} announced", lab.vip)), "{out}");
    wait_route(&lab, &d, true, "announced again");

    // SIGTERM: the daemon withdraws before it exits (the data path keeps forwarding).
    let mut d = d;
    d.stop();
    assert!(
        announced(&lab).is_empty(),
        "a stopped daemon leaves no route: {:?}\n{}",
        announced(&lab),
        d.log_text()
    );
    drop(d);

    // A crash leaves the route; `xdpvs withdraw --config` (systemd's ExecStopPost)
    // removes it without a daemon.
    let mut d = Daemon::start(&lab.lb, &cfg);
    wait_route(&lab, &d, true, "serving again");
    d.kill();
    assert_eq!(
        announced(&lab),
        [lab.vip.to_string()],
        "a crash cleans nothing"
    );
    let cfg_arg = cfg.display().to_string();
    let (code, out, err) = lab.xdpvs(&["withdraw", "--config", &cfg_arg]);
    assert_eq!(code, Some(0), "withdraw without a daemon: {out}{err}");
    assert!(
        out.contains("removed the routes of 1 VIPs from table 4242"),
        "{out}"
    );
    assert!(announced(&lab).is_empty());
}
