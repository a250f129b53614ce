//! Path MTU discovery through the balancer (issue 14): a router with a narrow link to
//! the client sits on the reals' reply path. A real's 1500-byte reply (DF) is too big
//! for it, so the router sends "fragmentation needed" (IPv4) or "packet too big"
//! (IPv6) to the reply's source, the VIP, which is the balancer. The balancer must hand
//! it to the real serving the flow, or the real never learns the path MTU and the
//! download stalls: before, 0 of 20 downloads of 100 kB completed over direct routing.
//! Behind NAT the balancer is that router: it answers the reals' large replies itself.
//! And a NAT real's own error (a port unreachable) must reach the client as the VIP's.

use std::{net::SocketAddr, time::Duration};

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
    let status = lab.status();
    // Behind NAT the balancer answers the reals itself (icmp_too_big); elsewhere it
    // hands the router's errors on (fwd_icmp_error).
    let verdict = if kind == Kind::Nat {
        "icmp_too_big"
    } else {
        "fwd_icmp_error"
    };
    let forwarded = status["verdicts"][verdict].as_u64().unwrap_or(0);
    println!(
        "{kind:?} {fam:?}: {whole} of {DOWNLOADS} downloads of {SIZE} bytes whole across a {NARROW_MTU}-byte link; {verdict}: {forwarded}"
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
        "the reals learnt the path MTU through the balancer ({verdict})"
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

#[test]
fn nat_v4_path_mtu_discovery_works_through_the_balancer() {
    large_responses_arrive_whole(Kind::Nat, Family::V4);
}

#[test]
fn nat_v6_path_mtu_discovery_works_through_the_balancer() {
    large_responses_arrive_whole(Kind::Nat, Family::V6);
}

/// A datagram to a NAT virtual server whose real has nothing on the port: the real's
/// "port unreachable" must reach the client translated (quoting VIP:53, from the
/// VIP), so that the client's connected socket is refused at once instead of waiting.
fn nat_port_unreachable_reaches_the_client(fam: Family) {
    let mut lab = Lab::new(Kind::Nat, fam, 2);
    let d = Daemon::start(&lab.lb, &lab.write_config());
    lab.wait_serving(&[0, 1], &d);
    lab.udp.clear();
    // The reals' kernels limit the errors they send per destination (IPv6: one a
    // second); the test sends ten in a row.
    for r in &lab.reals {
        r.exec(&["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
        r.exec(&["sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"]);
    }
    let vip = SocketAddr::new(lab.vip, tests::lab::UDP_VS_PORT);
    let outcomes: Vec<std::io::ErrorKind> = lab.client.run(move || {
        (0..10)
            .map(|i| {
                let any: SocketAddr = if vip.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                let s = std::net::UdpSocket::bind(any).expect("bind");
                s.connect(vip).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                s.send(format!("ping{i}").as_bytes()).expect("send");
                let mut buf = [0u8; 64];
                match s.recv(&mut buf) {
                    Ok(_) => std::io::ErrorKind::Other,
                    Err(e) => e.kind(),
                }
            })
            .collect()
    });
    let status = lab.status();
    let forwarded = status["verdicts"]["fwd_icmp_error"].as_u64().unwrap_or(0);
    println!("NAT {fam:?}: {outcomes:?}; {forwarded} ICMP errors translated");
    assert!(
        outcomes
            .iter()
            .all(|k| *k == std::io::ErrorKind::ConnectionRefused),
        "every datagram refused at once by the real's translated error: {outcomes:?}\n{}",
        d.log_text()
    );
    assert!(forwarded >= 10, "the errors went through the data path");
}

#[test]
fn nat_v4_a_reals_port_unreachable_reaches_the_client_as_the_vips() {
    nat_port_unreachable_reaches_the_client(Family::V4);
}

#[test]
fn nat_v6_a_reals_port_unreachable_reaches_the_client_as_the_vips() {
    nat_port_unreachable_reaches_the_client(Family::V6);
}
