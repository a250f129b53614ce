//! Active-active scale-out behind ECMP with BGP (issue 13), with real bird2 on a router
//! and on every balancer node (`tests/src/ecmp.rs` draws the lab): connections spread
//! over the nodes, a node cut off is routed around within BFD's bound without moving a
//! connection to another real, a node joins without breaking one, and a node withdraws
//! a VIP it cannot serve, or every VIP when taken out or stopped.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::PROTO_TCP;
use tests::{
    ecmp::{
        node_bird_config, router_bird_config, NodeBird, RouterBird, Scaleout, NODE_AS, ROUTER_AS,
    },
    lab::{Sample, StreamClient},
    pins::flow_key,
    wait_for,
};

/// The router's BFD: 100 ms x 3 detects a dead node in 300 ms; bird then drops its
/// session and the route. The bound allows for a busy two-core machine.
const CUT_BOUND: Duration = Duration::from_secs(2);
/// How long a route change may take when a session stays up (an announcement or a
/// withdrawal goes out at once).
const ROUTE_BOUND: Duration = Duration::from_secs(5);
/// Each request of a background client: a SYN lost to a node cut off is sent again after
/// 1 s, so with this timeout such a request fails, and one that ends later than this
/// after the route changed started after it.
const REQ_TIMEOUT: Duration = Duration::from_secs(1);
/// Streams opened at most to get enough through each node (a stream is a thread and a
/// connection; with an even spread, 12 give two nodes six each).
const MAX_STREAMS: usize = 40;

/// Returns: every node's new flows for `vs`, by node number.
fn new_flows(lab: &Scaleout, vs: &str) -> BTreeMap<usize, u64> {
    lab.nodes.iter().map(|n| (n.n, n.new_flows(vs))).collect()
}

/// Sends `count` requests to `vip`, one connection each, all of which must succeed, and
/// finds each connection in the connection table of the node it went through: in
/// exactly one. A connection whose client port an earlier one to `vip` used, and
/// whose key a table held already, is not judged (its entry may be the earlier
/// one's). Returns: how many went through each node. (The nodes' `new_flows` counters
/// for `vs` are printed beside: a count of packets that recorded a flow, not of
/// connections, which is what this asks.)
fn spread(lab: &Scaleout, vs: &str, vip: IpAddr, count: usize) -> BTreeMap<usize, u64> {
    let counted_before = new_flows(lab, vs);
    let before: Vec<HashSet<Vec<u8>>> = lab.nodes.iter().map(|n| n.flow_keys()).collect();
    let results = lab.requests_from(vip, count);
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {count} requests to {vip} failed, first: {:?}\n{}",
        failed.len(),
        failed.first(),
        lab.diagnostics()
    );
    let after: Vec<HashSet<Vec<u8>>> = lab.nodes.iter().map(|n| n.flow_keys()).collect();
    let to = SocketAddr::new(vip, 80);
    let mut per_node: BTreeMap<usize, u64> = lab.nodes.iter().map(|n| (n.n, 0)).collect();
    let (mut astray, mut reused) = (Vec::new(), 0);
    for (local, _) in results.iter().flatten() {
        let key = flow_key(*local, to, PROTO_TCP);
        if before.iter().any(|b| b.contains(&key)) {
            reused += 1;
            continue;
        }
        let through: Vec<usize> = lab
            .nodes
            .iter()
            .zip(&after)
            .filter(|(_, keys)| keys.contains(&key))
            .map(|(n, _)| n.n)
            .collect();
        match through.as_slice() {
            [n] => *per_node.entry(*n).or_default() += 1,
            _ => astray.push((*local, through)),
        }
    }
    let counted: BTreeMap<usize, u64> = new_flows(lab, vs)
        .iter()
        .map(|(n, a)| (*n, a - counted_before.get(n).copied().unwrap_or(0)))
        .collect();
    println!(
        "{count} connections to {vip} by node (connection tables): {per_node:?}, {reused} on a reused port not judged; new flows counted: {counted:?}"
    );
    assert!(
        astray.is_empty(),
        "connections in the tables of other than one node (client, nodes): {astray:?}\n{}",
        lab.diagnostics()
    );
    assert!(
        reused <= count / 10,
        "{reused} of {count} connections reused a client port a table held"
    );
    per_node
}

/// Opens streams to `vip` until each of `nodes` carries at least `per_node` of them (at
/// most [`MAX_STREAMS`]). Returns: each stream with the node it went through.
fn streams_over(
    lab: &Scaleout,
    vip: IpAddr,
    nodes: &[usize],
    per_node: usize,
) -> Vec<(StreamClient, usize)> {
    let mut out: Vec<(StreamClient, usize)> = Vec::new();
    let enough = |out: &[(StreamClient, usize)]| {
        nodes
            .iter()
            .all(|n| out.iter().filter(|(_, m)| m == n).count() >= per_node)
    };
    while !enough(&out) && out.len() < MAX_STREAMS {
        let s = lab.stream(vip);
        // The stream's first chunk has crossed its node once the server named itself.
        let through = lab.stream_nodes(&s, vip);
        assert_eq!(
            through.len(),
            1,
            "stream {} is in the tables of nodes {through:?}",
            s.local
        );
        out.push((s, through[0]));
    }
    assert!(
        enough(&out),
        "{MAX_STREAMS} streams did not give each of nodes {nodes:?} {per_node}"
    );
    out
}

/// Waits until every stream has echoed `more` chunks beyond what it had, none failing.
/// On failure, closes them all and panics with each broken stream's error.
fn streams_go_on(lab: &Scaleout, streams: &mut Vec<(StreamClient, usize)>, more: u64, what: &str) {
    let marks: Vec<u64> = streams.iter().map(|(s, _)| s.chunks()).collect();
    let ok = wait_for(Duration::from_secs(10), || {
        streams
            .iter()
            .zip(&marks)
            .all(|((s, _), m)| s.failed() || s.chunks() >= m + more)
    });
    if ok && !streams.iter().any(|(s, _)| s.failed()) {
        return;
    }
    let report: Vec<String> = std::mem::take(streams)
        .into_iter()
        .map(|(s, n)| {
            let (local, real, chunks) = (s.local, s.server.clone(), s.chunks());
            let end = match s.finish() {
                Ok(_) => "went on".to_string(),
                Err(e) => e,
            };
            format!("{local} (node{n}, {real}, {chunks} chunks): {end}")
        })
        .collect();
    panic!(
        "{what}: streams broke or stalled:\n{}\n{}",
        report.join("\n"),
        lab.diagnostics()
    );
}

/// Closes every stream; each must have been echoed intact throughout by the real that
/// took it (a real that never saw the connection would have reset it).
fn finish_streams(streams: Vec<(StreamClient, usize)>) {
    for (s, n) in streams {
        let first = s.server.clone();
        let local = s.local;
        let (server, chunks, _) = s
            .finish()
            .unwrap_or_else(|e| panic!("stream {local} (node{n}, {first}): {e}"));
        assert_eq!(server, first, "stream {local} changed real");
        assert!(chunks >= 10, "stream {local}: only {chunks} chunks");
    }
}

/// Returns: the failed requests among `samples` that ended after `after`.
fn failed_after(samples: &[Sample], after: Instant) -> Vec<String> {
    samples
        .iter()
        .filter(|(t, r)| *t > after && r.is_err())
        .map(|(_, r)| r.clone().unwrap_err())
        .collect()
}

#[test]
fn scaleout_doc_shows_the_bird_configs_the_lab_writes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/scale-out.md"))
        .expect("docs/scale-out.md");
    let addr = |s: &str| -> IpAddr { s.parse().expect("literal") };
    let node = node_bird_config(&NodeBird {
        log: "syslog",
        address: addr("192.0.2.11"),
        interface: "eth0",
        node_as: NODE_AS,
        router: addr("192.0.2.1"),
        router_as: ROUTER_AS,
        table: 4242,
    });
    let nodes = [
        ("lb1".to_string(), addr("192.0.2.11")),
        ("lb2".to_string(), addr("192.0.2.12")),
    ];
    let router = router_bird_config(&RouterBird {
        log: "syslog",
        address: addr("192.0.2.1"),
        interface: "eth1",
        router_as: ROUTER_AS,
        node_as: NODE_AS,
        vip_range: "198.51.100.0/24",
        nodes: &nodes,
    });
    for (what, conf) in [("node", node), ("router", router)] {
        assert!(
            doc.contains(&conf),
            "docs/scale-out.md lacks the {what}'s bird.conf as the lab writes it:\n{conf}"
        );
    }
}

#[test]
fn scaleout_two_nodes_share_connections_and_a_cut_node_is_routed_around() {
    let lab = Scaleout::new(2);
    let web = lab.vips[0];

    let per_node = spread(&lab, "web", web, 300);
    for (n, c) in &per_node {
        assert!(*c >= 60, "node{n} took {c} of 300 (< 20%): {per_node:?}");
    }

    let mut streams = streams_over(&lab, web, &[1, 2], 2);
    let on: Vec<(usize, String)> = streams
        .iter()
        .map(|(s, n)| (*n, s.server.clone()))
        .collect();
    println!("streams (node, real): {on:?}");
    streams_go_on(&lab, &mut streams, 3, "before the cut");

    let traffic = lab.traffic(web, REQ_TIMEOUT, 3000);
    assert!(
        wait_for(Duration::from_secs(5), || traffic.samples().len() >= 20),
        "the request client did not start"
    );
    let at_cut: Vec<u64> = streams.iter().map(|(s, _)| s.chunks()).collect();
    let cut = Instant::now();
    lab.cut(1);
    let gone = lab.wait_nexthops(web, &[2], CUT_BOUND);
    let routed_around = cut + gone;
    println!("node1 cut off: the router's route left it after {gone:?}");
    lab.wait_nexthops(lab.vips[1], &[2], CUT_BOUND);
    // How long node1's streams stalled: until each has echoed two chunks more than at
    // the cut (so at least one sent after it). TCP's retransmission timer adds to the
    // routing's time.
    let echoed_again = wait_for(Duration::from_secs(10), || {
        streams
            .iter()
            .zip(&at_cut)
            .all(|((s, n), m)| *n != 1 || s.failed() || s.chunks() >= m + 2)
    });
    println!(
        "node1's streams echoed again {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        echoed_again,
        "node1's streams stalled\n{}",
        lab.diagnostics()
    );

    // Every stream goes on; those of node1 now through node2, to the same real.
    streams_go_on(&lab, &mut streams, 10, "after the cut");
    let web_port = std::net::SocketAddr::new(web, 80);
    for (s, n) in &streams {
        if *n == 1 {
            assert!(
                lab.node(2).has_flow(s.local, web_port),
                "stream {} of node1 did not go on through node2",
                s.local
            );
        }
    }
    let settled = Instant::now() + REQ_TIMEOUT;
    let enough = wait_for(Duration::from_secs(10), || {
        traffic
            .samples()
            .iter()
            .filter(|(t, _)| *t > settled)
            .count()
            >= 50
    });
    assert!(enough, "the request client stalled after the cut");
    let samples = traffic.finish();
    let late = failed_after(&samples, routed_around + REQ_TIMEOUT);
    assert!(
        late.is_empty(),
        "requests failed after the route left node1 (+{REQ_TIMEOUT:?}): {late:?}"
    );
    let failed = samples.iter().filter(|(_, r)| r.is_err()).count();
    println!(
        "requests during the cut: {} sent, {failed} failed (none after the route changed + {REQ_TIMEOUT:?})",
        samples.len()
    );
    finish_streams(streams);
}

#[test]
fn scaleout_a_third_node_joins_without_breaking_a_stream() {
    let mut lab = Scaleout::new(2);
    let web = lab.vips[0];
    let mut streams = streams_over(&lab, web, &[1, 2], 6);
    streams_go_on(&lab, &mut streams, 3, "before the join");

    let t0 = Instant::now();
    lab.add_node();
    let started = t0.elapsed();
    let joined = lab.wait_nexthops(web, &[1, 2, 3], ROUTE_BOUND);
    lab.wait_nexthops(lab.vips[1], &[1, 2, 3], ROUTE_BOUND);
    println!(
        "node3 started (xdpvs serving, then bird) in {started:?}; routed 3-way {joined:?} after"
    );

    streams_go_on(&lab, &mut streams, 10, "after the join");
    // Hash-threshold ECMP moves a third of the flows to node3 and a sixth from node1 to
    // node2: those reach the real they had through a node that never saw them.
    let moved: Vec<(usize, Vec<usize>)> = streams
        .iter()
        .map(|(s, n)| (*n, lab.stream_nodes(s, web)))
        .filter(|(n, now)| now.as_slice() != [*n])
        .collect();
    let to3 = moved.iter().filter(|(_, now)| now.contains(&3)).count();
    println!(
        "{} of {} streams changed node ({to3} to node3): {moved:?}",
        moved.len(),
        streams.len()
    );
    assert!(
        !moved.is_empty(),
        "no stream changed node: the join proved nothing"
    );
    finish_streams(streams);

    let per_node = spread(&lab, "web", web, 150);
    let third = per_node[&3];
    assert!(
        third >= 30,
        "node3 took {third} of 150 (< 20%): {per_node:?}"
    );
}

#[test]
fn scaleout_a_vip_without_reals_on_one_node_is_withdrawn_there_only() {
    let lab = Scaleout::new(2);
    let (web, api) = (lab.vips[0], lab.vips[1]);
    let node1 = lab.node(1);
    for a in &lab.real_addrs {
        let (code, out, err) = node1.cli(&["real", "disable", "api", &a.to_string()]);
        assert_eq!(code, Some(0), "disable api {a} on node1: {out}{err}");
    }
    let took = lab.wait_nexthops(api, &[2], ROUTE_BOUND);
    println!("api without reals on node1: withdrawn from it after {took:?}");
    assert_eq!(
        lab.nexthops(web),
        [1, 2].into(),
        "web lost a node when only api's reals went"
    );
    // Node1 says why: api is below min_healthy there, web is announced.
    let (code, text, err) = node1.cli(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    println!("node1 `xdpvs status`:\n{text}");
    let s = node1.status();
    let why = |vip: IpAddr| -> (bool, String) {
        let a = s["announcements"]
            .as_array()
            .and_then(|v| v.iter().find(|a| a["address"] == vip.to_string()))
            .unwrap_or_else(|| panic!("node1 status has no announcement of {vip}: {s}"));
        (
            a["announced"] == true,
            a["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    let api_why = "api: 0 of 3 real servers take new flows (min_healthy 1)";
    assert_eq!(why(api), (false, api_why.to_string()), "node1 on api");
    assert!(why(web).0, "node1 does not announce web: {s}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&api.to_string()))
        .unwrap_or_else(|| panic!("no line for {api} in node1's status:\n{text}"));
    assert!(
        line.contains(" no ") && line.contains(api_why),
        "node1's status line for {api}: {line}"
    );

    let per_node = spread(&lab, "api", api, 60);
    assert_eq!(per_node[&1], 0, "node1 still took api: {per_node:?}");
    let per_node = spread(&lab, "web", web, 100);
    assert!(per_node[&1] >= 20, "node1 stopped taking web: {per_node:?}");

    for a in &lab.real_addrs {
        let (code, out, err) = node1.cli(&["real", "enable", "api", &a.to_string()]);
        assert_eq!(code, Some(0), "enable api {a} on node1: {out}{err}");
    }
    lab.wait_nexthops(api, &[1, 2], ROUTE_BOUND);
}

#[test]
fn scaleout_withdraw_announce_and_stop_take_a_node_out_and_back() {
    let mut lab = Scaleout::new(2);
    let (web, api) = (lab.vips[0], lab.vips[1]);
    let mut streams = streams_over(&lab, web, &[1, 2], 2);
    let traffic = lab.traffic(web, REQ_TIMEOUT, 6000);
    // Between steps, requests and streams must have gone on through the new routes.
    let goes_on = |lab: &Scaleout, streams: &mut Vec<(StreamClient, usize)>, what: &str| {
        let mark = traffic.samples().len();
        let ok = wait_for(Duration::from_secs(10), || {
            traffic.samples().len() >= mark + 15
        });
        assert!(ok, "{what}: the request client stalled");
        streams_go_on(lab, streams, 5, what);
    };
    goes_on(&lab, &mut streams, "both nodes in");

    let (code, out, err) = lab.node(1).cli(&["withdraw"]);
    assert_eq!(code, Some(0), "withdraw: {out}{err}");
    let took = lab.wait_nexthops(web, &[2], ROUTE_BOUND);
    lab.wait_nexthops(api, &[2], ROUTE_BOUND);
    println!("xdpvs withdraw: node1 left the routes after {took:?}");
    goes_on(&lab, &mut streams, "node1 withdrawn");

    let (code, out, err) = lab.node(1).cli(&["announce"]);
    assert_eq!(code, Some(0), "announce: {out}{err}");
    let took = lab.wait_nexthops(web, &[1, 2], ROUTE_BOUND);
    lab.wait_nexthops(api, &[1, 2], ROUTE_BOUND);
    println!("xdpvs announce: node1 back in the routes after {took:?}");
    goes_on(&lab, &mut streams, "node1 announced again");

    // Taken out, a node stays out across a restart of its xdpvs.
    let (code, out, err) = lab.node(1).cli(&["withdraw"]);
    assert_eq!(code, Some(0), "withdraw: {out}{err}");
    lab.wait_nexthops(web, &[2], ROUTE_BOUND);
    assert_eq!(lab.node_mut(1).stop_daemon(), Some(0), "exit on SIGTERM");
    lab.node_mut(1).start_daemon();
    // Its reals are in the table again (start_daemon waited for that), yet it is out.
    let s = lab.node(1).status();
    assert_eq!(s["withdrawn"], true, "node1 after a restart: {s}");
    let table = lab.node(1).announced();
    assert!(
        table.is_empty(),
        "node1 announces again after a restart while withdrawn: {table:?}"
    );
    assert_eq!(
        lab.nexthops(web),
        [2].into(),
        "withdrawn node1 back after a restart"
    );
    goes_on(&lab, &mut streams, "node1 restarted withdrawn");
    let (code, out, err) = lab.node(1).cli(&["announce"]);
    assert_eq!(code, Some(0), "announce: {out}{err}");
    lab.wait_nexthops(web, &[1, 2], ROUTE_BOUND);
    goes_on(&lab, &mut streams, "node1 announced after its restart");

    // A stopped xdpvs withdraws every VIP of its node.
    assert_eq!(lab.node_mut(1).stop_daemon(), Some(0), "exit on SIGTERM");
    let took = lab.wait_nexthops(web, &[2], ROUTE_BOUND);
    lab.wait_nexthops(api, &[2], ROUTE_BOUND);
    println!("xdpvs stopped on node1: it left the routes after {took:?}");
    goes_on(&lab, &mut streams, "xdpvs stopped on node1");

    // A crashed one cannot: `xdpvs withdraw --config` (ExecStopPost) does it for it.
    lab.node_mut(1).start_daemon();
    lab.wait_nexthops(web, &[1, 2], ROUTE_BOUND);
    lab.wait_nexthops(api, &[1, 2], ROUTE_BOUND);
    goes_on(&lab, &mut streams, "xdpvs started again on node1");
    lab.node_mut(1).kill_daemon();
    let table = lab.node(1).announced();
    assert_eq!(
        table.len(),
        2,
        "a crash should leave both routes for ExecStopPost: {table:?}"
    );
    assert_eq!(lab.nexthops(web), [1, 2].into(), "a crash withdrew node1");
    let cfg = lab.node(1).config.display().to_string();
    let (code, out, err) = lab.node(1).xdpvs(&["withdraw", "--config", &cfg]);
    assert_eq!(
        code,
        Some(0),
        "withdraw --config without a daemon: {out}{err}"
    );
    let took = lab.wait_nexthops(web, &[2], ROUTE_BOUND);
    lab.wait_nexthops(api, &[2], ROUTE_BOUND);
    println!(
        "after a crash, xdpvs withdraw --config took node1 out of the routes in {took:?}: {}",
        out.trim()
    );
    goes_on(&lab, &mut streams, "node1 withdrawn after a crash");

    let samples = traffic.finish();
    let failed: Vec<&String> = samples
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    println!(
        "requests meanwhile: {} sent, {} failed",
        samples.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed while node1 was taken out and back: {failed:?}"
    );
    finish_streams(streams);
}
