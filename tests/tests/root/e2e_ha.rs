//! Issue 13: a pair of balancers with keepalived (VRRP), configured as docs/ha.md says.
//! keepalived moves the VIP; `xdpvs ready` (its `vrrp_script`) makes a node whose xdpvs
//! is down or has no real in its table give the VIP up, and keeps a returning master
//! out until its probes see the reals. While the master's link is cut and restored and
//! its daemon stopped, a client sends a request every 50 ms and keeps an echoed stream
//! open: the stream must never break, requests may fail only in the gap of the cut,
//! and each move is timed and printed. Behind NAT the reals' gateway moves with the
//! VIP (a sync group), and new connections are answered through the backup.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tests::{
    ha::{HaLab, Method},
    lab::{Sample, StreamClient},
    wait_for,
};

/// The request client: one request every 50 ms, each given 3 s, at most 3000 of them
/// (150 s at least; the client is stopped long before).
const EVERY: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_REQUESTS: usize = 3000;
/// The longest a move of the VIP may take (`advert_int 1`: master-down interval 3.3 s
/// for the backup's priority 190).
const BOUND: Duration = Duration::from_secs(4);
/// The timing client: a request every 20 ms, each given 150 ms, so that the first
/// one the backup can answer is sent within about 0.2 s of its taking over.
const PROBE_EVERY: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);
/// Probes slower than keepalived: a returning master sees its reals up about 5 s
/// after its link is back (rise 10 x 500 ms), while keepalived alone would take the
/// VIP back within one master-down interval (3.2 s). Only readiness holds it back.
const HEALTH: &str = "{ interval: 500ms, timeout: 300ms, rise: 10, fall: 2 }";
/// How long a stream's read waits: longer than a failover and TCP's backed-off
/// retransmission after it.
const STREAM_WAIT: Duration = Duration::from_secs(20);

/// Waits until the stream has echoed `more` chunks beyond `from`; panics if it breaks
/// or stalls for 20 s.
fn stream_goes_on(lab: &HaLab, stream: &StreamClient, from: u64, more: u64, when: &str) {
    let ok = wait_for(Duration::from_secs(20), || {
        stream.failed() || stream.chunks() >= from + more
    });
    assert!(
        ok && !stream.failed(),
        "{when}: the stream stopped at chunk {} (it was at {from}):\n{}",
        stream.chunks(),
        lab.logs()
    );
}

/// Returns: how many requests of `samples` ended in `[from, to)` answered.
fn answered_between(samples: &[Sample], from: Instant, to: Instant) -> usize {
    samples
        .iter()
        .filter(|(t, r)| *t >= from && *t < to && r.is_ok())
        .count()
}

#[test]
fn ha_dr_pair_fails_over_and_back_with_keepalived() {
    let mut lab = HaLab::new(Method::Dr, 3);
    lab.start_daemons(HEALTH);
    lab.start_keepalived();
    let vip = lab.vip;

    // Every real answers through the VIP, and the client sends to lb1.
    let mut seen = HashSet::new();
    let all = wait_for(Duration::from_secs(20), || {
        seen.extend(lab.requests(8).into_iter().flatten());
        seen.len() == 3
    });
    assert!(
        all,
        "not every real answers through the VIP: {seen:?}\n{}",
        lab.logs()
    );
    assert_eq!(
        lab.client_node(),
        Some(0),
        "the client does not send to lb1"
    );

    let traffic = lab.traffic(EVERY, TIMEOUT, MAX_REQUESTS);
    let started = Instant::now();
    let stream = lab.stream(STREAM_WAIT);
    let real = stream.server.clone();
    stream_goes_on(&lab, &stream, 0, 10, "before the cut");

    // 1. The master's link is cut: the backup takes the VIP and answers.
    let lb2_tx = lab.nodes[1].verdict("fwd_tx");
    lab.link(0, false);
    let cut = Instant::now();
    let answered = lab
        .first_answer(PROBE_EVERY, PROBE_TIMEOUT, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("nothing answered within 15 s of the cut:\n{}", lab.logs()));
    let failover = answered - cut;
    println!("link cut: the backup answered {failover:?} after the cut");
    assert!(lab.nodes[1].holds(vip), "lb2 answers without the VIP");
    assert_eq!(
        lab.client_node(),
        Some(1),
        "the client does not send to lb2"
    );
    assert!(
        lab.nodes[1].verdict("fwd_tx") > lb2_tx,
        "lb2 forwarded nothing: the answer did not come through it"
    );
    assert!(
        failover <= BOUND,
        "failover took {failover:?} (> {BOUND:?}):\n{}",
        lab.logs()
    );
    stream_goes_on(&lab, &stream, stream.chunks(), 10, "after the cut");
    // Cut off, lb1's probes fail: it is no longer ready, and in FAULT it holds no VIP.
    let unready = wait_for(Duration::from_secs(15), || !lab.nodes[0].ready());
    assert!(unready, "lb1 still ready 15 s after its link was cut");
    assert!(
        !lab.nodes[0].holds(vip),
        "lb1 kept the VIP with its link cut"
    );
    let through_lb2 = wait_for(Duration::from_secs(20), || {
        answered_between(&traffic.samples(), answered, Instant::now()) >= 20
    });
    assert!(through_lb2, "requests are not answered through lb2");

    // 2. The link is back: lb1 takes the VIP back only once `xdpvs ready` passes there.
    let drops = lab.nodes[0].verdict("drop_no_real");
    lab.link(0, true);
    let restored = Instant::now();
    let mut ready_at = None;
    let mut back_at = None;
    let end = restored + Duration::from_secs(40);
    while Instant::now() < end {
        let holds = lab.nodes[0].holds(vip);
        assert!(
            !holds || ready_at.is_some(),
            "lb1 took the VIP back {:?} after its link came back, before `xdpvs ready` \
             passed there (the failback bug):\n{}",
            restored.elapsed(),
            lab.logs()
        );
        if ready_at.is_none() && lab.nodes[0].ready() {
            ready_at = Some(Instant::now());
        }
        if holds && lab.client_node() == Some(0) {
            back_at = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let back_at = back_at
        .unwrap_or_else(|| panic!("lb1 did not take the VIP back within 40 s:\n{}", lab.logs()));
    let ready_at = ready_at.expect("lb1 holds the VIP, so it was ready");
    println!(
        "failback: lb1 ready {:?} after its link came back, the client sends to it again \
         after {:?}",
        ready_at - restored,
        back_at - restored
    );
    assert!(
        !lab.nodes[1].holds(vip),
        "lb2 kept the VIP after lb1 took it"
    );
    assert_eq!(
        lab.nodes[0].verdict("drop_no_real"),
        drops,
        "lb1 dropped connections for want of a real after it came back"
    );
    stream_goes_on(&lab, &stream, stream.chunks(), 10, "after the failback");
    let after_failback = wait_for(Duration::from_secs(20), || {
        answered_between(&traffic.samples(), back_at, Instant::now()) >= 20
    });
    assert!(
        after_failback,
        "requests are not answered after the failback"
    );

    // 3. xdpvs stops on the master: its data path goes on forwarding, but `ready`
    // fails there, so keepalived moves the VIP.
    let stopped = Instant::now();
    let code = lab.nodes[0].daemon.as_mut().expect("lb1's daemon").stop();
    assert_eq!(code, Some(0), "lb1's xdpvs on SIGTERM:\n{}", lab.logs());
    let moved = wait_for(Duration::from_secs(15), || {
        lab.nodes[1].holds(vip) && !lab.nodes[0].holds(vip) && lab.client_node() == Some(1)
    });
    assert!(
        moved,
        "the VIP did not move within 15 s of stopping lb1's xdpvs:\n{}",
        lab.logs()
    );
    let moved_at = Instant::now();
    let move_time = moved_at - stopped;
    println!("xdpvs stopped on the master: the client sends to lb2 {move_time:?} later");
    assert!(
        move_time <= BOUND,
        "the VIP took {move_time:?} to move (> {BOUND:?}):\n{}",
        lab.logs()
    );
    stream_goes_on(
        &lab,
        &stream,
        stream.chunks(),
        10,
        "after xdpvs stopped on lb1",
    );
    let more = wait_for(Duration::from_secs(20), || {
        answered_between(&traffic.samples(), moved_at, Instant::now()) >= 20
    });
    assert!(more, "requests are not answered after the move");

    let samples = traffic.finish();
    let finished = Instant::now();
    let result = stream.finish();
    let (server, chunks, _) =
        result.unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", lab.logs()));
    assert_eq!(server, real, "the stream changed real");
    // Requests may fail only in the gap of the cut: ending after it, and no later than
    // a request sent just before the backup answered could have run.
    let gap_end = answered + TIMEOUT + Duration::from_secs(1);
    let outside: Vec<&Sample> = samples
        .iter()
        .filter(|(t, r)| r.is_err() && (*t < cut || *t > gap_end))
        .collect();
    let failed = samples.iter().filter(|(_, r)| r.is_err()).count();
    println!(
        "requests: {} sent, {failed} failed (all in the cut's gap); stream: {chunks} chunks \
         on {server}",
        samples.len()
    );
    assert!(
        outside.is_empty(),
        "{} requests failed outside the cut's gap, first: {:?} at {:?} after the cut\n{}",
        outside.len(),
        outside[0].1,
        outside[0].0.saturating_duration_since(cut),
        lab.logs()
    );
    for (what, from, to) in [
        ("before the cut", started, cut),
        ("through lb2", answered, restored),
        ("after the failback", back_at, stopped),
        ("after xdpvs stopped on lb1", moved_at, finished),
    ] {
        let n = answered_between(&samples, from, to);
        assert!(n >= 10, "{what}: only {n} requests answered");
        println!("{what}: {n} requests answered");
    }
}

/// NAT: the reals' gateway moves with the VIP (two VRRP instances in a sync group), so
/// that the node that takes the requests also gets the replies.
#[test]
fn ha_nat_pair_moves_vip_and_gateway_together() {
    let mut lab = HaLab::new(Method::Nat, 2);
    lab.start_daemons("{ interval: 250ms, timeout: 200ms, rise: 2, fall: 2 }");
    lab.start_keepalived();

    let mut seen = HashSet::new();
    let all = wait_for(Duration::from_secs(20), || {
        seen.extend(lab.requests(8).into_iter().flatten());
        seen.len() == 2
    });
    assert!(
        all,
        "not every real answers through the VIP: {seen:?}\n{}",
        lab.logs()
    );
    let traffic = lab.traffic(EVERY, TIMEOUT, MAX_REQUESTS);
    let started = Instant::now();
    let stream = lab.stream(STREAM_WAIT);
    stream_goes_on(&lab, &stream, 0, 10, "before the cut");

    // Only lb1's outside link is cut: its inside instance follows the outside one into
    // FAULT (the sync group), so lb2 takes the gateway too.
    let replies = lab.nodes[1].verdict("fwd_nat_reply");
    lab.link(0, false);
    let cut = Instant::now();
    let answered = lab
        .first_answer(PROBE_EVERY, PROBE_TIMEOUT, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("nothing answered within 15 s of the cut:\n{}", lab.logs()));
    let failover = answered - cut;
    println!("nat, link cut: the backup answered {failover:?} after the cut");
    let moved = wait_for(Duration::from_secs(5), || lab.owner() == Some(1));
    assert!(
        moved,
        "lb2 does not hold both the VIP and the gateway alone:\n{}",
        lab.logs()
    );
    assert!(
        failover <= BOUND,
        "failover took {failover:?} (> {BOUND:?}):\n{}",
        lab.logs()
    );
    let more = wait_for(Duration::from_secs(20), || {
        answered_between(&traffic.samples(), answered, Instant::now()) >= 20
    });
    assert!(more, "new connections are not answered through lb2");
    assert!(
        lab.nodes[1].verdict("fwd_nat_reply") > replies,
        "lb2 restored no reply: the replies do not come through it"
    );
    // An established connection survives too, as long as the client speaks first
    // after the move (the echo stream does): its next request through lb2 places it
    // by the same Maglev table and writes the reply state there before the real
    // answers. docs/ha.md says what does not survive.
    stream_goes_on(&lab, &stream, stream.chunks(), 10, "after the failover");
    let real = stream.server.clone();
    let samples = traffic.finish();
    let (server, chunks, _) = stream
        .finish()
        .unwrap_or_else(|e| panic!("the stream broke: {e}\n{}", lab.logs()));
    assert_eq!(server, real, "the stream changed real");
    let gap_end = answered + TIMEOUT + Duration::from_secs(1);
    let outside: Vec<&Sample> = samples
        .iter()
        .filter(|(t, r)| r.is_err() && (*t < cut || *t > gap_end))
        .collect();
    println!(
        "nat requests: {} sent, {} failed (all in the cut's gap); stream: {chunks} chunks on \
         {server}",
        samples.len(),
        samples.iter().filter(|(_, r)| r.is_err()).count(),
    );
    assert!(
        outside.is_empty(),
        "{} requests failed outside the cut's gap, first: {:?}",
        outside.len(),
        outside[0].1
    );
    for (what, from, to) in [
        ("before the cut", started, cut),
        ("through lb2", answered, Instant::now()),
    ] {
        let n = answered_between(&samples, from, to);
        assert!(n >= 10, "{what}: only {n} requests answered");
        println!("nat, {what}: {n} requests answered");
    }
}

/// Issue 14: two balancers on one segment whose switch floods every unicast frame
/// (learning off on every port, as a switch does for a MAC it has not learnt or has
/// forgotten). Each request reaches the reals through exactly one balancer: the one
/// holding the VIP forwards it, the other passes the flooded copy to its kernel
/// (`pass_other_host`), which drops it.
#[test]
fn ha_dr_pair_on_a_flooding_segment_forwards_each_request_once() {
    let mut lab = HaLab::new(Method::Dr, 3);
    lab.start_daemons("{ interval: 250ms, timeout: 200ms, rise: 1, fall: 2 }");
    lab.start_keepalived();
    let owner = wait_for(Duration::from_secs(20), || lab.owner().is_some());
    assert!(owner, "no node took the VIP:\n{}", lab.logs());
    let all = wait_for(Duration::from_secs(20), || {
        lab.requests(6).iter().filter(|r| r.is_ok()).count() == 6
    });
    assert!(all, "the VIP does not answer:\n{}", lab.logs());
    let sw = &lab.switches[0];
    let out = sw.exec(&["bridge", "-j", "link", "show"]);
    let ports: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
        .expect("bridge -j link")
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["ifname"].as_str().map(str::to_string))
        .collect();
    for p in &ports {
        sw.exec(&["bridge", "link", "set", "dev", p, "learning", "off"]);
    }
    sw.exec(&["bridge", "fdb", "flush", "dev", "br0"]);

    let master = lab.owner().expect("a VIP owner");
    let backup = 1 - master;
    let packets = |n: usize| -> u64 {
        lab.nodes[n].status()["virtual_servers"][0]["stats"]["packets"]
            .as_u64()
            .expect("packets")
    };
    let (master_before, backup_before) = (packets(master), packets(backup));
    let flooded_before = lab.nodes[backup].verdict("pass_other_host");
    for s in &lab.servers {
        s.served.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    const N: usize = 100;
    let answered = lab.requests(N).iter().filter(|r| r.is_ok()).count();
    let served: u64 = lab
        .servers
        .iter()
        .map(|s| s.served.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let flooded = lab.nodes[backup].verdict("pass_other_host") - flooded_before;
    println!(
        "flooding segment: {answered} of {N} answered, {served} served; master forwarded {} packets, backup {} and passed {flooded} flooded frames",
        packets(master) - master_before,
        packets(backup) - backup_before
    );
    assert_eq!(answered, N, "every request answered:\n{}", lab.logs());
    assert_eq!(served, N as u64, "each request served once");
    assert!(
        packets(master) - master_before >= 3 * N as u64,
        "the VIP's holder forwarded the requests"
    );
    assert_eq!(
        packets(backup),
        backup_before,
        "the other balancer forwarded none of the flooded frames"
    );
    assert!(
        flooded >= N as u64,
        "the flooding reached the other balancer, which passed each frame ({flooded})"
    );
}
