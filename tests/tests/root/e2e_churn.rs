//! Host churn under a running daemon (issue 14): the balancer's interface deleted and
//! made again, a real's MAC changed, a real unreachable at layer 2, the VIP removed by
//! hand. Each time the daemon must notice within its 1 s tick, log it, and forward
//! again: every test ends with requests answered by the reals it expects, polled
//! against a deadline. Mostly the direct routing lab (client, balancer and two reals on
//! one bridge, `tests/src/lab.rs`); the interface and VIP tests run behind NAT too, the
//! MAC test over IPv6 too.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tests::{
    daemon::Daemon,
    lab::{self, Family, Kind, Lab},
    pins, wait_for,
};

/// Polls until the daemon's log holds `text`. Panics with the log after `within`.
fn wait_log(d: &Daemon, text: &str, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    assert!(
        wait_for(within, || d.log_text().contains(text)),
        "{what}: the log does not say {text:?} within {within:?}:\n{}",
        d.log_text()
    );
    start.elapsed()
}

/// Polls requests through the VIP until each of `reals` (names) has answered one and
/// then `n` requests in a row all succeed, answered by those reals only. Panics with
/// the log after `within`.
fn wait_forwarding(lab: &Lab, d: &Daemon, reals: &[&str], n: usize, within: Duration, what: &str) {
    let want: HashSet<String> = reals.iter().map(|s| s.to_string()).collect();
    let mut seen = HashSet::new();
    let mut last = Vec::new();
    let ok = wait_for(within, || {
        last = lab.requests(4);
        seen.extend(last.iter().filter_map(|r| r.clone().ok()));
        if !want.is_subset(&seen) {
            return false;
        }
        let batch = lab.requests(n);
        let ok = batch
            .iter()
            .all(|r| r.as_ref().is_ok_and(|name| want.contains(name)));
        last = batch;
        ok
    });
    assert!(
        ok,
        "{what}: not forwarding to {want:?} within {within:?} (seen {seen:?}, last {last:?}):\n{}",
        d.log_text()
    );
}

/// Asserts that the daemon met no "Operation not permitted": what it did after start-up
/// worked with the capabilities it keeps (decision 0007).
fn assert_no_eperm(d: &Daemon) {
    let log = d.log_text();
    assert!(!log.contains("Operation not permitted"), "{log}");
}

fn has_xdp(lab: &Lab) -> bool {
    lab.lb
        .exec(&["ip", "link", "show", "dev", &lab.lb_ifs[0]])
        .contains("xdp")
}

fn has_vip(lab: &Lab) -> bool {
    lab.lb
        .exec(&["ip", "-br", "addr", "show", "dev", &lab.lb_ifs[0]])
        .contains(&format!("{}/", lab.vip))
}

#[test]
fn churn_an_interface_deleted_and_made_again_gets_xdp_its_vip_and_traffic_back() {
    // NAT: the re-created device is the client's side, where replies leave by
    // redirect to the new ifindex (the FIB's answer, IFACES's MAC).
    for (kind, fam) in [(Kind::Dr, Family::V4), (Kind::Nat, Family::V4)] {
        interface_made_again(kind, fam);
    }
}

fn interface_made_again(kind: Kind, fam: Family) {
    let mut lab = Lab::new(kind, fam, 2);
    let cfg = lab.write_config();
    let mut d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);

    let was = lab.delete_lb_interface();
    let noticed = wait_log(&d, "interface is gone", Duration::from_secs(5), "deleted");
    let failed = lab.requests(2);
    assert!(
        failed.iter().all(Result::is_err),
        "the VIP answered with its interface gone: {failed:?}"
    );

    let start = Instant::now();
    let index = lab.recreate_lb_interface(&was);
    assert_ne!(
        index, was.ifindex,
        "the kernel reused the ifindex; the test proves nothing"
    );
    wait_log(
        &d,
        "XDP attached again",
        Duration::from_secs(5),
        "re-created",
    );
    let attached = start.elapsed();
    assert!(has_xdp(&lab), "no XDP on the new device:\n{}", d.log_text());
    assert!(
        wait_for(Duration::from_secs(5), || has_vip(&lab)),
        "the VIP is not back on the new device:\n{}",
        d.log_text()
    );
    wait_forwarding(
        &lab,
        &d,
        &["real1", "real2"],
        20,
        Duration::from_secs(30),
        &format!("{kind:?} {fam:?}: the re-created device"),
    );
    println!(
        "{kind:?} {fam:?}: ifindex {} -> {index}: gone noticed after {noticed:?}; from the start of its re-creation, XDP attached again after {attached:?}, both reals answering 20 requests in a row after {:?}",
        was.ifindex,
        start.elapsed()
    );
    let log = d.log_text();
    for line in [
        "interface is back as a new device",
        "VIP address was gone from the host",
    ] {
        assert!(log.contains(line), "the log does not say {line:?}:\n{log}");
    }
    assert_no_eperm(&d);
    // The state file records the VIP on the new device, for the next daemon and teardown.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_file()).expect("state file"))
            .expect("state JSON");
    assert_eq!(
        state["added_vips"],
        serde_json::json!([[index, lab.vip.to_string()]]),
        "the state file's VIPs: {state}"
    );
    // IFACES holds the new device under its ifindex, with its MAC, and the old one no
    // more (the map holds at most 64: repeated churn must not fill it).
    let ifaces: Vec<(u32, Vec<u8>)> = pins::dump(&lab.map_pin(lb_common::maps::IFACES))
        .into_iter()
        .map(|(k, v)| (u32::from_ne_bytes(k[..4].try_into().expect("u32 key")), v))
        .collect();
    let mac: Vec<u8> = was
        .mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC"))
        .collect();
    assert!(
        ifaces.iter().any(|(i, v)| *i == index && v[..6] == mac[..]),
        "IFACES lacks ifindex {index} with MAC {}: {ifaces:?}",
        was.mac
    );
    assert!(
        !ifaces.iter().any(|(i, _)| *i == was.ifindex),
        "IFACES still holds the deleted ifindex {}: {ifaces:?}",
        was.ifindex
    );
    // One pinned link per interface, the re-created one's replaced: a restart adopts it.
    let mut links = pins::listing(&lab.pin_dir().join("links"));
    links.sort();
    let mut want = lab.lb_ifs.clone();
    want.sort();
    assert_eq!(links, want);

    // A restart adopts the new link: its program is replaced in place, and it forwards.
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
    let log = lab.dir.join("restart.log");
    let d = Daemon::start_as(&lab.lb, &cfg, &tests::daemon::binary(), &log);
    let text = d.log_text();
    assert!(
        text.contains(&format!(
            "XDP program replaced on the pinned link interface={} ifindex={index}",
            lab.lb_ifs[0]
        )),
        "the restarted daemon did not adopt the new device's link:\n{text}"
    );
    wait_forwarding(
        &lab,
        &d,
        &["real1", "real2"],
        20,
        Duration::from_secs(20),
        &format!("{kind:?} {fam:?}: after the restart"),
    );
}

#[test]
fn churn_a_configured_interface_missing_at_start_is_refused_naming_it() {
    let lab = Lab::new(Kind::Dr, Family::V4, 1);
    let cfg = lab.write_config();
    let missing = format!("{}zz", lab.instance);
    let text = std::fs::read_to_string(&cfg).expect("config").replace(
        &format!("interfaces: [{}]", lab.lb_ifs[0]),
        &format!("interfaces: [{missing}]"),
    );
    std::fs::write(&cfg, text).expect("config");
    let path = cfg.display().to_string();
    let (code, out, err) = lab.xdpvs(&["run", "--config", &path]);
    assert_eq!(code, Some(64), "{out}{err}");
    let want =
        format!("{path}:3:14: interfaces[0]: interface `{missing}` does not exist on this host");
    assert!(err.contains(&want), "stderr lacks {want:?}: {err}");
    let left = pins::listing(&lab.pin_dir());
    assert!(left.is_empty(), "pins left by a refused start: {left:?}");
    println!("{}", err.trim());
}

#[test]
fn churn_a_real_whose_mac_changed_is_forwarded_to_again() {
    // IPv4 (ARP) and IPv6 (neighbour discovery).
    for fam in [Family::V4, Family::V6] {
        mac_changed(fam);
    }
}

fn mac_changed(fam: Family) {
    let lab = Lab::new(Kind::Dr, fam, 2);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);

    let dev = format!("{}r1", lab.instance);
    let mac = "02:00:5e:14:00:01";
    lab.reals[0].exec(&["ip", "link", "set", "dev", &dev, "address", mac]);
    let start = Instant::now();
    let updated = wait_log(
        &d,
        &format!("mac={mac}"),
        Duration::from_secs(20),
        "new MAC",
    );
    wait_forwarding(
        &lab,
        &d,
        &["real1", "real2"],
        20,
        Duration::from_secs(20),
        &format!("{fam:?}: the new MAC"),
    );
    println!(
        "{fam:?}: real1's MAC changed: REALS holds the new one after {updated:?}, both reals answer 20 requests in a row after {:?}",
        start.elapsed()
    );
    let log = d.log_text();
    assert!(log.contains("real server next hop updated"), "{log}");
    assert_no_eperm(&d);
}

#[test]
fn churn_a_real_unreachable_at_layer_2_is_logged_and_comes_back() {
    let lab = Lab::new(Kind::Dr, Family::V4, 2);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);

    let dev = format!("{}r1", lab.instance);
    lab.reals[0].exec(&["ip", "link", "set", "dev", &dev, "down"]);
    let real1 = lab.real_addrs[0].to_string();
    wait_log(
        &d,
        "real server is down",
        Duration::from_secs(10),
        "link down",
    );
    let lost = wait_log(
        &d,
        "real server's MAC is unresolved",
        Duration::from_secs(15),
        "link down",
    );
    let neigh = lab.lb.exec(&["ip", "neigh", "show", &real1]);
    println!(
        "real1's link down: unresolved logged after {lost:?}; neighbour entry now {:?}",
        neigh.trim()
    );
    assert!(
        !neigh.contains("REACHABLE") && !neigh.contains("STALE"),
        "the balancer still holds a usable entry for {real1}: {neigh}"
    );
    wait_forwarding(
        &lab,
        &d,
        &["real2"],
        20,
        Duration::from_secs(10),
        "real1 unreachable",
    );

    lab.reals[0].exec(&["ip", "link", "set", "dev", &dev, "up"]);
    let start = Instant::now();
    wait_log(
        &d,
        "real server's MAC resolved again",
        Duration::from_secs(20),
        "link up",
    );
    wait_forwarding(
        &lab,
        &d,
        &["real1", "real2"],
        20,
        Duration::from_secs(20),
        "real1 back",
    );
    println!(
        "real1's link up: both reals answer 20 requests in a row after {:?}",
        start.elapsed()
    );
    assert_no_eperm(&d);
}

#[test]
fn churn_a_vip_removed_by_hand_is_added_back() {
    // Behind NAT, over IPv6: the balancer answers neighbour solicitations for the VIP.
    for (kind, fam) in [(Kind::Dr, Family::V4), (Kind::Nat, Family::V6)] {
        vip_removed(kind, fam);
    }
}

fn vip_removed(kind: Kind, fam: Family) {
    let lab = Lab::new(kind, fam, 2);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);

    let vip = format!("{}/{}", lab.vip, if fam == Family::V4 { 32 } else { 128 });
    lab.lb
        .exec(&["ip", "addr", "del", &vip, "dev", &lab.lb_ifs[0]]);
    // The client forgets the VIP's MAC: from now on it reaches the VIP only if the
    // balancer answers ARP for it, which it does only while the VIP is on its interface.
    let client_dev = format!("{}c", lab.instance);
    lab.client
        .exec(&["ip", "neigh", "flush", "dev", &client_dev]);
    let start = Instant::now();
    let restored = wait_log(
        &d,
        "VIP address was gone from the host",
        Duration::from_secs(5),
        "VIP removed",
    );
    assert!(
        has_vip(&lab),
        "the log says added back, the interface disagrees:\n{}",
        d.log_text()
    );
    wait_forwarding(
        &lab,
        &d,
        &["real1", "real2"],
        20,
        Duration::from_secs(10),
        &format!("{kind:?} {fam:?}: the VIP back"),
    );
    println!(
        "{kind:?} {fam:?}: VIP removed by hand: added back after {restored:?}, both reals answer 20 requests in a row after {:?}",
        start.elapsed()
    );
    assert_no_eperm(&d);
}

#[test]
fn churn_a_nat_client_the_balancer_has_no_neighbour_entry_for_is_resolved_and_answered() {
    // What XDP forwards never passes the kernel's neighbour code: a NAT reply to a
    // client whose entry the balancer lost is dropped (`drop_no_neigh`) until the
    // daemon, told by the data path, has the kernel resolve it (decision 0019).
    for fam in [Family::V4, Family::V6] {
        client_forgotten(fam);
    }
}

fn client_forgotten(fam: Family) {
    let lab = Lab::new(Kind::Nat, fam, 2);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1], &d);

    // The client holds the VIP's MAC for good: it never asks for it again, so the
    // balancer's kernel cannot learn the client's MAC from its requests.
    let lb_dev = &lab.lb_ifs[0];
    let mac = lab::mac_of(&lab.lb, lb_dev);
    let client_dev = format!("{}c", lab.instance);
    let vip = lab.vip.to_string();
    lab.client.exec(&[
        "ip",
        "neigh",
        "replace",
        &vip,
        "lladdr",
        &mac,
        "dev",
        &client_dev,
        "nud",
        "permanent",
    ]);
    // The balancer forgets the client.
    let client = lab
        .client
        .exec(&["ip", "-br", "addr", "show", "dev", &client_dev]);
    lab.lb.exec(&["ip", "neigh", "flush", "dev", lb_dev]);
    let before = lab.verdict("drop_no_neigh");
    let start = Instant::now();
    wait_forwarding(
        &lab,
        &d,
        &["real1", "real2"],
        20,
        Duration::from_secs(20),
        &format!("{fam:?}: replies to a client without neighbour entry"),
    );
    let dropped = lab.verdict("drop_no_neigh") - before;
    println!(
        "NAT {fam:?}: the balancer forgot the client ({}): both reals answer 20 requests in a row after {:?}, {dropped} replies dropped meanwhile",
        client.trim(),
        start.elapsed()
    );
    assert!(
        dropped > 0,
        "no reply met the missing entry: the test proves nothing:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("asked the kernel to resolve it"),
        "the log does not say the next hop was asked for:\n{log}"
    );
    let entry = lab.lb.exec(&["ip", "neigh", "show", "dev", lb_dev]);
    assert!(
        entry.contains(&lab::mac_of(&lab.client, &client_dev)),
        "the balancer holds no entry with the client's MAC: {entry}"
    );
    assert_no_eperm(&d);
}
