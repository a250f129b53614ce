//! NAT, tunnel and IPv6 end to end: the labs of `tests::lab`, the daemon started from a
//! YAML file as an operator would, 300 HTTP requests over real kernels (which verify
//! every checksum), each real answering at least 15% of them.

use std::collections::HashMap;

use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab},
};

const N: usize = 300;

/// Runs the lab's 300 requests and checks the spread. Returns: the daemon, still running.
fn run_lab(kind: Kind, fam: Family, reals: usize) -> (Lab, Daemon) {
    let lab = Lab::new(kind, fam, reals);
    let cfg = lab.write_config();
    let d = Daemon::start(&lab.lb, &cfg);
    let all: Vec<usize> = (0..reals).collect();
    lab.wait_serving(&all, &d);
    let results = lab.requests(N);
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{kind:?}/{fam:?}: {} of {N} requests failed, first: {:?}\n{}",
        failed.len(),
        failed.first(),
        d.log_text()
    );
    let mut t: HashMap<String, usize> = HashMap::new();
    for r in &results {
        *t.entry(r.clone().expect("checked")).or_default() += 1;
    }
    println!("{kind:?}/{fam:?}: {t:?}");
    for i in 1..=reals {
        let n = t.get(&format!("real{i}")).copied().unwrap_or(0);
        assert!(
            n * 100 >= N * 15,
            "{kind:?}/{fam:?}: real{i} answered {n} of {N} (< 15%): {t:?}"
        );
    }
    let served: u64 = lab
        .servers
        .iter()
        .map(|s| s.served.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(served, N as u64, "the reals' servers saw every connection");
    (lab, d)
}

#[test]
fn nat_two_interfaces_maps_vip_80_to_real_8080_and_carries_udp() {
    let (lab, mut d) = run_lab(Kind::Nat, Family::V4, 2);
    let answers = lab.datagrams(50);
    let mut by_real: HashMap<String, usize> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        let a = a
            .as_ref()
            .unwrap_or_else(|e| panic!("datagram {i}: {e}\n{}", d.log_text()));
        let text = String::from_utf8_lossy(a);
        let (name, echo) = text.split_once(':').expect("name:payload");
        assert_eq!(echo, format!("ping{i}"), "the datagram came back whole");
        *by_real.entry(name.to_string()).or_default() += 1;
    }
    println!("udp: {by_real:?}");
    assert_eq!(by_real.values().sum::<usize>(), 50);
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
}

#[test]
fn nat_one_interface() {
    let (_lab, mut d) = run_lab(Kind::NatOneNic, Family::V4, 2);
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
}

#[test]
fn nat_ipv6_two_interfaces() {
    let (lab, mut d) = run_lab(Kind::Nat, Family::V6, 2);
    let answers = lab.datagrams(20);
    assert!(
        answers.iter().all(Result::is_ok),
        "IPv6 UDP through NAT: {answers:?}"
    );
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
}

#[test]
fn tunnel_to_reals_behind_a_router_decapsulated_by_xdpvs() {
    let (mut lab, mut d) = run_lab(Kind::Tunnel, Family::V4, 2);
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
    assert_decapsulated(&mut lab);
}

/// Stops the reals' decapsulators and checks that they unwrapped the traffic: at least
/// three packets (SYN, ACK, request) per connection, on every real.
fn assert_decapsulated(lab: &mut Lab) {
    let mut total = 0;
    for (i, dec) in lab.decaps.iter_mut().enumerate() {
        assert_eq!(dec.stop(), Some(0), "decap {i} exit\n{}", dec.log_text());
        let log = dec.log_text();
        let n: usize = log
            .split("decapsulated=")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no decapsulated count in the log:\n{log}"));
        assert!(n > 0, "real{} decapsulated nothing:\n{log}", i + 1);
        total += n;
    }
    assert!(
        total >= 3 * N,
        "{total} packets decapsulated for {N} connections"
    );
}

#[test]
fn tunnel_ipv6() {
    let (mut lab, mut d) = run_lab(Kind::Tunnel, Family::V6, 2);
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
    assert_decapsulated(&mut lab);
}

#[test]
fn dr_ipv6() {
    let (_lab, mut d) = run_lab(Kind::Dr, Family::V6, 2);
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
}
