//! The `dns` probe (keepalived's DNS_CHECK) against a real DNS server: dnsmasq on each
//! real of the direct-routing lab, a UDP virtual server on port 53 probed with `type:
//! dns`. A real whose dnsmasq stops turns down, and comes back up when it starts again.
//! Every wait polls for its condition with a deadline.

use std::{
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab},
    netns::Netns,
    wait_for,
};

/// The probe: a name dnsmasq answers for, every 250 ms; one result flips a real.
const PROBE: &str = "{ type: dns, name: example.test, query_type: A, interval: 250ms, timeout: 200ms, rise: 1, fall: 1 }";

/// dnsmasq serving `example.test` on `addr`:53 in `ns`, killed on drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    /// Starts dnsmasq (package dnsmasq-base, installed by `cargo xtask setup`): no
    /// configuration file, no upstream, no /etc/hosts; answers A queries for
    /// example.test and names under it; logs to `dir`.
    fn start(ns: &Netns, addr: IpAddr, dir: &Path, i: usize) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
            ])
            .args(["--bind-interfaces", "--port=53"])
            .arg(format!("--listen-address={addr}"))
            .arg("--address=/example.test/192.0.2.53")
            .arg(format!(
                "--pid-file={}",
                dir.join(format!("dnsmasq{i}.pid")).display()
            ))
            .arg(format!(
                "--log-facility={}",
                dir.join(format!("dnsmasq{i}.log")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (package dnsmasq-base: cargo xtask setup installs it)");
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns: the health (`up` or `down`) of each real of virtual server `dns`, in the
/// configuration's order, as `xdpvs status --json` shows them.
fn healths(lab: &Lab) -> Vec<String> {
    let (code, out, _) = lab.cli(&["status", "--json"]);
    if code != Some(0) {
        return Vec::new();
    }
    let s: Value = serde_json::from_str(&out).expect("status JSON");
    let Some(vs) = s["virtual_servers"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "dns"))
    else {
        return Vec::new();
    };
    vs["reals"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| r["health"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the reals of `dns` have the healths `want`; panics with the daemon's log
/// after `within`.
fn wait_healths(lab: &Lab, d: &Daemon, want: &[&str], within: Duration) {
    let ok = wait_for(within, || healths(lab) == want);
    assert!(
        ok,
        "healths {:?}, not {want:?} within {within:?}:\n{}",
        healths(lab),
        d.log_text()
    );
}

#[test]
fn a_real_whose_dns_server_stops_is_down_and_back_when_it_starts() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let path = lab.write_with_udp_vs(
        "dns",
        "dr",
        &format!("    health_check: {PROBE}\n"),
        "dns.yaml",
    );
    let mut servers: Vec<Option<Dnsmasq>> = lab
        .reals
        .iter()
        .zip(&lab.real_addrs)
        .enumerate()
        .map(|(i, (ns, &a))| Some(Dnsmasq::start(ns, a, &lab.dir, i)))
        .collect();

    let d = Daemon::start(&lab.lb, &path);
    wait_healths(&lab, &d, &["up", "up"], Duration::from_secs(10));

    // Stop real1's dnsmasq: its port answers ICMP port unreachable, the probe fails.
    servers[0] = None;
    wait_healths(&lab, &d, &["down", "up"], Duration::from_secs(5));
    assert!(
        d.log_text().contains("reason=connection refused"),
        "the transition names its reason:\n{}",
        d.log_text()
    );

    // Start it again: it answers, the real is back.
    servers[0] = Some(Dnsmasq::start(
        &lab.reals[0],
        lab.real_addrs[0],
        &lab.dir,
        0,
    ));
    wait_healths(&lab, &d, &["up", "up"], Duration::from_secs(5));
}
