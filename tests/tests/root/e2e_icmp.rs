//! Path MTU discovery through the balancer (issue 14): a router with a narrow link to
//! the client sits on the reals' reply path. A real's 1500-byte reply (DF) is too big
//! for it, so the router sends "fragmentation needed" (IPv4) or "packet too big"
//! (IPv6) to the reply's source, the VIP, which is the balancer. The balancer must hand
//! it to the real serving the flow, or the real never learns the path MTU and the
//! download stalls: before, 0 of 20 downloads of 100 kB completed over direct routing.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    http::{fetch, pattern},
    lab::{Family, Kind, Lab},
};

/// The narrow link: IPv6's minimum MTU, which IPv4 takes too.
const NARROW_MTU: u32 = 1280;
const DOWNLOADS: usize = 20;
const SIZE: usize = 100_000;

/// Runs [`DOWNLOADS`] downloads of [`SIZE`] bytes through the VIP of a `kind` lab in
/// `fam` whose client path is narrowed, and checks each body byte for byte.
fn large_responses_arrive_whole(kind: Kind, fam: Family) {
    let lab = Lab::new(kind, fam, 2);
    lab.narrow_client_path(NARROW_MTU);
    let d = Daemon::start(&lab.lb, &lab.write_config());
    lab.wait_serving(&[0, 1], &d);
    let vip = SocketAddr::new(lab.vip, 80);
    let path = format!("/bytes/{SIZE}");
    let want = pattern(SIZE);
    let results: Vec<Result<(String, String), String>> = lab.client.run(move || {
        (0..DOWNLOADS)
            .map(|_| fetch(vip, &path, None, Duration::from_secs(10)))
            .collect()
    });
    let whole = results
        .iter()
        .filter(
            |r| matches!(r, Ok((head, body)) if head.starts_with("HTTP/1.0 200") && *body == want),
        )
        .count();
    let (code, out, _) = lab.cli(&["status", "--json"]);
    assert_eq!(code, Some(0));
    let status: Value = serde_json::from_str(&out).expect("status JSON");
    let forwarded = status["verdicts"]["fwd_icmp_error"].as_u64().unwrap_or(0);
    println!(
        "{kind:?} {fam:?}: {whole} of {DOWNLOADS} downloads of {SIZE} bytes whole across a {NARROW_MTU}-byte link; {forwarded} ICMP errors forwarded to reals"
    );
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        whole,
        DOWNLOADS,
        "every download arrives whole; errors: {failures:?}\n{}",
        d.log_text()
    );
    assert!(
        forwarded > 0,
        "the router's errors reached the reals through the balancer (fwd_icmp_error)"
    );
}

#[test]
fn dr_v4_path_mtu_discovery_works_through_the_balancer() {
    large_responses_arrive_whole(Kind::DrRouted, Family::V4);
}

#[test]
fn dr_v6_path_mtu_discovery_works_through_the_balancer() {
    large_responses_arrive_whole(Kind::DrRouted, Family::V6);
}

#[test]
fn tunnel_v4_path_mtu_discovery_works_through_the_balancer() {
    large_responses_arrive_whole(Kind::Tunnel, Family::V4);
}

#[test]
fn tunnel_v6_path_mtu_discovery_works_through_the_balancer() {
    large_responses_arrive_whole(Kind::Tunnel, Family::V6);
}
