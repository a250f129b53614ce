//! Fragmented datagrams through a VIP (issue 14): a UDP virtual server with
//! `fragments: true` takes every fragment of a datagram to the same real (balanced by
//! addresses only). Before, 0 of 200 UDP requests of 3,000 bytes were answered through
//! a direct-routing VIP. Here 1,000 requests of 3,000 bytes, each sent once, must all
//! be answered whole, by direct routing, tunnel and NAT (decision 0016: the reals'
//! answers come back in fragments too, each given the VIP), IPv4 and IPv6.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use tests::{
    daemon::Daemon,
    http::UdpEcho,
    lab::{Family, Kind, Lab},
};

const REQUESTS: usize = 1000;
const SIZE: usize = 3000;

/// Sends `payload` once to `addr` and waits for one answer. Returns: it, or the error.
fn once(sock: &UdpSocket, addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    sock.send_to(payload, addr)
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) if from == addr => Ok(buf[..n].to_vec()),
        Ok((_, from)) => Err(format!("answer from {from}")),
        Err(e) => Err(format!("recv: {e}")),
    }
}

/// Sends `n` datagrams of SIZE bytes from the client to `vip`, each once, after 10
/// uncounted ones (the path MTU a real learns from its first replies).
/// Returns: for each, the name of the real that echoed it whole, or what went wrong.
fn exchange(lab: &Lab, vip: SocketAddr, n: usize) -> Vec<Result<Vec<u8>, String>> {
    lab.client.run(move || {
        let any: SocketAddr = if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal");
        let sock = UdpSocket::bind(any).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // Warm-up, not counted: the path MTU a real learns from its first replies.
        for i in 0..10u8 {
            let _ = once(&sock, vip, &vec![i; SIZE]);
        }
        (0..n)
            .map(|i| {
                let payload: Vec<u8> = (0..SIZE).map(|j| ((i + j) % 251) as u8).collect();
                once(&sock, vip, &payload).and_then(|answer| {
                    let echoed = answer.split(|b| *b == b':').next().map(|n| n.len() + 1);
                    match echoed {
                        Some(k) if answer[k..] == payload[..] => Ok(answer[..k - 1].to_vec()),
                        _ => Err(format!("answer {} bytes, not the datagram", answer.len())),
                    }
                })
            })
            .collect()
    })
}

fn big_datagrams_are_answered(kind: Kind, fam: Family) {
    let lab = Lab::new(kind, fam, 2);
    let vip = SocketAddr::new(lab.vip, 53);
    let mut echoes: Vec<UdpEcho> = Vec::new();
    let path = if kind == Kind::Nat {
        // The lab's UDP virtual server (VIP:53 -> the reals' echo servers on 5353)
        // takes fragments.
        let nat_udp = "    protocol: udp\n    method: nat\n";
        let y = std::fs::read_to_string(lab.write_config()).expect("config");
        assert!(y.contains(nat_udp), "the NAT lab has a UDP virtual server");
        let path = lab.dir.join("fragments.yaml");
        let y = y.replace(nat_udp, &format!("{nat_udp}    fragments: true\n"));
        std::fs::write(&path, y).expect("write config");
        path
    } else {
        let method = if kind == Kind::Tunnel { "tunnel" } else { "dr" };
        echoes = lab
            .reals
            .iter()
            .enumerate()
            .map(|(i, r)| UdpEcho::start(r, vip, &format!("real{}", i + 1)))
            .collect();
        lab.write_with_udp_vs(
            "big",
            method,
            "    fragments: true\n    health_check: { type: tcp, port: 80, interval: 250ms, timeout: 200ms, rise: 1 }\n",
            "fragments.yaml",
        )
    };
    let counters: Vec<Arc<AtomicU64>> = if kind == Kind::Nat { &lab.udp } else { &echoes }
        .iter()
        .map(|e| e.received.clone())
        .collect();
    if kind == Kind::Tunnel {
        // A fragment wrapped in the outer header must fit the balancer's 1500-byte
        // path (IPv4 fragments carry no DF to answer with): the clients' link is
        // narrower, as docs/methods.md says a tunnel needs.
        lab.narrow_client_path(1400);
        lab.client.exec(&[
            "ip",
            "link",
            "set",
            &format!("{}c", lab.instance),
            "mtu",
            "1400",
        ]);
    }
    let mut d = Daemon::start(&lab.lb, &path);
    lab.wait_serving(&[0, 1], &d);
    let results = exchange(&lab, vip, REQUESTS);
    let answered = results.iter().filter(|r| r.is_ok()).count();
    let received: Vec<u64> = counters
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let verdicts = &lab.status()["verdicts"];
    println!(
        "{kind:?} {fam:?}: {answered} of {REQUESTS} datagrams of {SIZE} bytes answered whole; reals received {received:?}; pass_fragment {}, fwd_nat_reply {}",
        verdicts["pass_fragment"], verdicts["fwd_nat_reply"]
    );
    let errors: Vec<&String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .take(5)
        .collect();
    assert_eq!(
        answered,
        REQUESTS,
        "every datagram answered whole, first errors {errors:?}\n{}",
        d.log_text()
    );
    // With no daemon, the pinned data path goes on: fragments still reach the program
    // that handles them (its tail-call slot is pinned, decision 0018).
    assert_eq!(d.stop(), Some(0), "daemon exit status");
    let after = exchange(&lab, vip, 20);
    let errors: Vec<&String> = after.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{kind:?} {fam:?}: datagrams not answered whole with the daemon stopped: {errors:?}"
    );
    println!("{kind:?} {fam:?}: daemon stopped: 20 of 20 datagrams answered whole");
}

#[test]
fn dr_v4_fragmented_datagrams_reach_one_real_and_are_answered() {
    big_datagrams_are_answered(Kind::Dr, Family::V4);
}

#[test]
fn dr_v6_fragmented_datagrams_reach_one_real_and_are_answered() {
    big_datagrams_are_answered(Kind::Dr, Family::V6);
}

#[test]
fn tunnel_v4_fragmented_datagrams_reach_one_real_and_are_answered() {
    big_datagrams_are_answered(Kind::Tunnel, Family::V4);
}

#[test]
fn tunnel_v6_fragmented_datagrams_reach_one_real_and_are_answered() {
    big_datagrams_are_answered(Kind::Tunnel, Family::V6);
}

#[test]
fn nat_v4_fragmented_datagrams_reach_one_real_and_are_answered() {
    big_datagrams_are_answered(Kind::Nat, Family::V4);
}

#[test]
fn nat_v6_fragmented_datagrams_reach_one_real_and_are_answered() {
    big_datagrams_are_answered(Kind::Nat, Family::V6);
}
