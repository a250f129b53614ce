//! Direct routing end to end: client, balancer and three reals in namespaces, the
//! daemon started from a YAML file, real HTTP over real kernels.

use std::collections::HashMap;

use tests::{
    daemon::Daemon,
    lab::{self, Family, Kind, Lab, Spec},
    netns::Netns,
    pins,
};

fn tally(results: &[Result<String, String>]) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for r in results {
        let k = r.clone().unwrap_or_else(|e| panic!("request failed: {e}"));
        *t.entry(k).or_default() += 1;
    }
    t
}

#[test]
fn dr_spreads_300_requests_over_three_reals_and_sigterm_leaves_it_forwarding() {
    let lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_config();
    let mut d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    let results = lab.requests(300);
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 300 requests failed, first: {:?}\n{}",
        failed.len(),
        failed.first(),
        d.log_text()
    );
    let t = tally(&results);
    println!("equal weights: {t:?}");
    for name in ["real1", "real2", "real3"] {
        let n = t.get(name).copied().unwrap_or(0);
        assert!(n >= 45, "{name} answered {n} of 300 (< 15%): {t:?}");
    }
    // The servers really saw the connections (not some other responder).
    assert_eq!(served(&lab), 300);
    assert_eq!(d.stop(), Some(0), "clean exit on SIGTERM\n{}", d.log_text());
    assert!(
        d.log_text().contains("left forwarding"),
        "SIGTERM does not say it left the data path forwarding:\n{}",
        d.log_text()
    );

    // Issue 12: SIGTERM leaves the data path forwarding: the VIP and XDP stay, and
    // requests through the VIP are still answered, by the reals' servers.
    assert_eq!(vip_and_xdp(&lab), (true, true), "after SIGTERM");
    lab.reset_served();
    let unattended = lab.requests(30);
    assert!(
        unattended.iter().all(Result::is_ok),
        "requests failed with the daemon stopped: {unattended:?}"
    );
    println!(
        "daemon stopped: {} of 30 requests answered",
        unattended.len()
    );
    assert_eq!(served(&lab), 30, "the reals' servers answered them");

    // `xdpvs teardown` removes what the instance left: VIP, XDP, pins.
    let cfg = cfg.display().to_string();
    let (code, out, err) = lab.xdpvs(&["teardown", "--config", &cfg]);
    assert_eq!(code, Some(0), "teardown: {out}{err}");
    assert_eq!(vip_and_xdp(&lab), (false, false), "after teardown");
    let left = pins::listing(&lab.pin_dir());
    assert!(left.is_empty(), "pins left after teardown: {left:?}");
    assert!(!lab.state_file().exists(), "state file left after teardown");
    let failed = lab.requests(1);
    assert!(
        failed[0].is_err(),
        "the VIP still answers after teardown: {failed:?}"
    );
    let (code, out, err) = lab.xdpvs(&["teardown", "--config", &cfg]);
    assert_eq!(code, Some(0), "a second teardown: {out}{err}");
}

/// Requests the reals' servers answered since their counters were last zeroed.
fn served(lab: &Lab) -> u64 {
    lab.servers
        .iter()
        .map(|s| s.served.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Returns: whether the balancer's interface holds the VIP, and whether it has XDP.
fn vip_and_xdp(lab: &Lab) -> (bool, bool) {
    let addrs = lab
        .lb
        .exec(&["ip", "-br", "addr", "show", "dev", &lab.lb_ifs[0]]);
    let link = lab.lb.exec(&["ip", "link", "show", "dev", &lab.lb_ifs[0]]);
    (addrs.contains(&lab.vip.to_string()), link.contains("xdp"))
}

/// What `xdpvs realserver setup` touches in `ns`: the ARP sysctls and loopback's
/// addresses.
fn real_side(ns: &Netns) -> (String, String) {
    let sysctls = ns.exec(&[
        "sysctl",
        "-n",
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
    ]);
    let lo = ns.exec(&["ip", "-br", "addr", "show", "dev", "lo"]);
    (sysctls, lo)
}

#[test]
fn realserver_setup_makes_a_working_dr_real_and_undo_restores_it() {
    // The lab made both reals with `xdpvs realserver setup --apply` (no other commands).
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    // The client's namespace is as fresh as the reals' were.
    let fresh = real_side(&lab.client);
    let (sysctls, lo) = real_side(&lab.reals[0]);
    assert_eq!(sysctls.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
    assert!(lo.contains("10.100.0.100/32"), "{lo}");
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);

    // The ARP problem, solved: on a segment shared by the client, the balancer and two
    // reals holding the VIP, only the balancer answers ARP for it.
    let vip = lab.vip.to_string();
    lab.client.exec(&["ip", "neigh", "flush", "to", &vip]);
    assert!(lab.requests(20).iter().all(Result::is_ok));
    let neigh = lab.client.exec(&["ip", "neigh", "show", "to", &vip]);
    let lb_link = lab
        .lb
        .exec(&["ip", "-br", "link", "show", "dev", &lab.lb_ifs[0]]);
    let lb_mac = lb_link.split_whitespace().nth(2).expect("MAC").to_string();
    assert!(
        neigh.contains(&format!("lladdr {lb_mac}")),
        "the client resolved the VIP to {neigh:?}, not the balancer's {lb_mac}"
    );

    // --undo puts real1 back as it was: the sysctls and loopback of a fresh namespace.
    let state = lab::setup_state(&lab.dir, 0);
    let out = lab::realserver_setup(&lab.reals[0], &state, &["--undo"]);
    println!("{out}");
    assert!(out.contains("removed: 10.100.0.100 from lo"), "{out}");
    assert_eq!(real_side(&lab.reals[0]), fresh, "undo left changes");
    assert!(!state.exists(), "state file left after undo");

    // Applied again, real1 serves again.
    lab::setup_real(&lab.reals[0], &state, lab.vip, None);
    lab.wait_serving(&[0, 1], &d);
    let t = tally(&lab.requests(60));
    assert_eq!(t.values().sum::<usize>(), 60, "{t:?}");
}

#[test]
fn dr_weights_1_1_2_give_the_third_real_half() {
    let lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_spec(&Spec {
        reals: Some(vec![(0, 1), (1, 1), (2, 2)]),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    let t = tally(&lab.requests(300));
    println!("weights 1:1:2: {t:?}");
    let third = t.get("real3").copied().unwrap_or(0);
    assert!(
        (120..=180).contains(&third),
        "real3 answered {third} of 300, want 40-60%: {t:?}"
    );
}

#[test]
fn bad_config_exits_64_and_leaves_nothing() {
    let lab = Lab::new(Kind::Dr, Family::V4, 1);
    let cfg = lab.dir.join("bad.yaml");
    let fresh = pins::listing(&lab.bpffs.path);
    // The pin lines go last so that the error keeps its line.
    std::fs::write(&cfg, format!("interfaces: [{}]\nvirtual_servers:\n  - name: web\n    address: 10.100.0.300\n    port: 80\n    protocol: tcp\n{}", lab.lb_ifs[0], lab.pin_lines())).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb.name])
        .arg(tests::daemon::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("bad.yaml:4:") && err.contains("virtual_servers[0].address"),
        "{err}"
    );
    let link = lab.lb.exec(&["ip", "link", "show", "dev", &lab.lb_ifs[0]]);
    assert!(!link.contains("xdp"), "{link}");
    // Not even pins or a state file (a fresh bpffs holds the kernel's own
    // `maps.debug` and `progs.debug`).
    let pinned = pins::listing(&lab.bpffs.path);
    assert_eq!(pinned, fresh, "a bad file left pins");
    assert!(!lab.state_file().exists(), "a bad file left a state file");
}
