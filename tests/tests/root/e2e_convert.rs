//! `xdpvs convert` end to end: one keepalived.conf with a DR and a NAT virtual server
//! (weights 1:2:3), converted by the binary under test, run by xdpvs in the lab of each
//! method; 300 requests through the VIP are answered in the proportions of the
//! keepalived weights.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use tests::{
    daemon::Daemon,
    lab::{net, Family, Kind, Lab, NAT_REAL_PORT},
};

const N: usize = 300;
const WEIGHTS: [u32; 3] = [1, 2, 3];
/// How far a real's share of the requests may be from its weight's share: a correct
/// Maglev split over 300 connections from random source ports stays well inside (the
/// largest standard deviation, at a share of 1/2, is under 3 points).
const TOLERANCE: f64 = 0.10;

/// The DR virtual server (the DR lab's VIP and reals).
fn dr_vip() -> SocketAddr {
    SocketAddr::new(net(Family::V4, 100, 100), 80)
}

/// The NAT virtual server: another VIP on the clients' network, reals behind the
/// balancer on port 8080 (the NAT lab's).
fn nat_vip() -> SocketAddr {
    SocketAddr::new(net(Family::V4, 100, 101), 80)
}

/// The keepalived.conf an LVS pair would run for both services (text of this test).
fn keepalived_conf() -> String {
    let mut c = String::from(
        "! An LVS director's configuration, written for this test.\n\
         global_defs {\n    router_id lb1\n}\n\n",
    );
    c.push_str(&format!(
        "virtual_server {} {} {{\n    delay_loop 1\n    lb_algo wrr\n    lb_kind DR\n    protocol TCP\n",
        dr_vip().ip(),
        dr_vip().port()
    ));
    for (i, w) in WEIGHTS.iter().enumerate() {
        c.push_str(&format!(
            "    real_server {} 80 {{\n        weight {w}\n        TCP_CHECK {{\n            connect_timeout 1\n            retry 1\n        }}\n    }}\n",
            net(Family::V4, 100, 11 + i as u16)
        ));
    }
    c.push_str("}\n\n");
    c.push_str(&format!(
        "virtual_server {} {} {{\n    delay_loop 1\n    lb_algo wlc\n    lb_kind NAT\n    protocol TCP\n",
        nat_vip().ip(),
        nat_vip().port()
    ));
    for (i, w) in WEIGHTS.iter().enumerate() {
        c.push_str(&format!(
            "    real_server {} {NAT_REAL_PORT} {{ weight {w}\n        HTTP_GET {{\n            url {{ path /health\n                  status_code 200 }}\n            connect_timeout 1\n        }}\n    }}\n",
            net(Family::V4, 200, 11 + i as u16)
        ));
    }
    c.push_str("}\n");
    c
}

/// Converts the keepalived.conf in the lab's balancer namespace with the binary under
/// test, adds the lines that keep the daemon inside the lab, and checks the result.
/// Returns: the configuration's path.
fn converted(lab: &Lab) -> PathBuf {
    let conf = lab.dir.join("keepalived.conf");
    std::fs::write(&conf, keepalived_conf()).expect("writing keepalived.conf");
    let conf = conf.display().to_string();
    let mut args = vec!["convert", "--from", "keepalived", conf.as_str()];
    for i in &lab.lb_ifs {
        args.extend(["--interface", i.as_str()]);
    }
    let (code, yaml, err) = lab.xdpvs(&args);
    assert_eq!(code, Some(0), "xdpvs convert failed: {err}");
    for said in ["lb_algo wrr", "lb_algo wlc"] {
        assert!(
            err.contains(said) && yaml.contains(said),
            "no comment and warning about `{said}`:\n{yaml}\n{err}"
        );
    }
    assert!(
        !yaml.contains("SET ME"),
        "--interface left a placeholder:\n{yaml}"
    );
    let path = lab.dir.join("xdpvs.yaml");
    let full = format!(
        "{}control_socket: '{}'\n{yaml}",
        lab.pin_lines(),
        lab.socket().display()
    );
    std::fs::write(&path, full).expect("writing the converted configuration");
    let p = path.display().to_string();
    let (code, out, err) = lab.xdpvs(&["check", "--config", &p]);
    assert_eq!(
        code,
        Some(0),
        "xdpvs check refused the conversion: {out}{err}\n{yaml}"
    );
    path
}

/// Sends `n` requests to `vip` from the lab's client. Returns: who answered each.
fn requests(lab: &Lab, vip: SocketAddr, n: usize) -> Vec<Result<String, String>> {
    lab.client.run(move || {
        (0..n)
            .map(|_| tests::http::get(vip, Duration::from_secs(3)))
            .collect()
    })
}

/// Runs the converted configuration in `lab` and checks that `vip` spreads its
/// requests as the keepalived weights say.
fn weights_hold(lab: &Lab, vip: SocketAddr) {
    let cfg = converted(lab);
    let mut d = Daemon::start(&lab.lb, &cfg);
    let names: Vec<String> = (1..=WEIGHTS.len()).map(|i| format!("real{i}")).collect();
    let mut seen = std::collections::HashSet::new();
    let up = tests::wait_for(Duration::from_secs(20), || {
        seen.extend(requests(lab, vip, 12).into_iter().flatten());
        names.iter().all(|n| seen.contains(n))
    });
    assert!(
        up,
        "not every real answered through {vip} within 20 s (seen {seen:?}):\n{}",
        d.log_text()
    );
    lab.reset_served();
    let results = requests(lab, vip, N);
    let mut t: HashMap<String, usize> = HashMap::new();
    for r in &results {
        let who = r
            .clone()
            .unwrap_or_else(|e| panic!("a request to {vip} failed: {e}\n{}", d.log_text()));
        *t.entry(who).or_default() += 1;
    }
    println!("{:?} {vip}: {t:?}", lab.kind);
    let total: u32 = WEIGHTS.iter().sum();
    for (name, w) in names.iter().zip(WEIGHTS) {
        let got = t.get(name).copied().unwrap_or(0) as f64 / N as f64;
        let want = f64::from(w) / f64::from(total);
        assert!(
            (got - want).abs() <= TOLERANCE,
            "{name} (weight {w}) answered {:.0}% of the requests to {vip}, not {:.0}% +- {:.0}: {t:?}",
            got * 100.0,
            want * 100.0,
            TOLERANCE * 100.0
        );
    }
    let served: u64 = lab
        .servers
        .iter()
        .map(|s| s.served.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(served, N as u64, "the reals' servers saw every request");
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
}

#[test]
fn convert_keepalived_dr_service_keeps_its_weights() {
    let lab = Lab::new(Kind::Dr, Family::V4, WEIGHTS.len());
    // The file's NAT service needs forwarding on (its reals are absent in this lab).
    lab.lb
        .exec(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    weights_hold(&lab, dr_vip());
}

#[test]
fn convert_keepalived_nat_service_keeps_its_weights() {
    let lab = Lab::new(Kind::Nat, Family::V4, WEIGHTS.len());
    weights_hold(&lab, nat_vip());
}
