//! Active-active scale-out behind ECMP (issue 13): balancer nodes announce each healthy
//! virtual server's VIP to a router over BGP (bird2), and the router spreads the
//! clients' connections over every node that announces it.
//!
//! ```text
//! client 50.2 ── 50.1 router .254 ──┐ net 100, one bridge
//!                                   ├── node1 .1, node2 .2 (node3 .3 joins): bird2 + xdpvs (DR)
//!                                   └── real1..3 .11-.13: both VIPs on lo, default via .254
//! VIPs 10.200.0.100 (web) and 10.200.0.101 (api), routed by the router, ECMP over the
//! nodes whose xdpvs puts `blackhole VIP/32` in table 4242; XDP on the node catches
//! them before its stack and hands them to a real, which answers the client directly
//! through the router.
//! ```
//!
//! Each node has its own namespace, bpffs, xdpvs instance and control socket, and its own
//! bird; the router runs bird with one BGP session (and BFD) per node. A node's xdpvs has
//! `manage_vips: false`: the VIP is routed to the node's address, so nothing on the node
//! holds it or answers ARP for it. Everything is stopped, torn down and deleted on drop,
//! also when the test panics.

mod bird;
mod node;

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

pub use bird::{node_bird_config, router_bird_config, Bird, NodeBird, RouterBird};
pub use node::{vs_status, Node};
use serde_json::Value;

use crate::{
    http::NamedServer,
    lab::{
        net, realserver_setup, setup_state, Builder, Family, StreamClient, Traffic, FAST_PROBES,
    },
    netns::{unique_prefix, veth, Netns},
    pins::Bpffs,
};

/// The router's AS, and the one every balancer node shares.
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;
/// The kernel table each node's xdpvs writes its announcements to (`announce.table`).
pub const ANNOUNCE_TABLE: u32 = 4242;
/// Nodes the router has a BGP session for: the lab starts with fewer, one joins later.
pub const MAX_NODES: usize = 3;
/// Reals behind every virtual server.
pub const REALS: usize = 3;
/// The virtual servers every node carries, one per VIP, in config order.
pub const VS_NAMES: [&str; 2] = ["web", "api"];
/// `min_healthy` of `web` and `api`.
pub const MIN_HEALTHY: [u32; 2] = [2, 1];

/// The scale-out lab (see the module's drawing).
pub struct Scaleout {
    pub dir: PathBuf,
    pub p: String,
    /// The VIPs of `web` and `api` (see [`VS_NAMES`]).
    pub vips: [IpAddr; 2],
    pub real_addrs: Vec<IpAddr>,
    pub servers: Vec<NamedServer>,
    pub nodes: Vec<Node>,
    pub router_bird: Option<Bird>,
    b: Builder,
    // Namespaces go last, after everything running in them.
    pub client: Netns,
    pub router: Netns,
    pub reals: Vec<Netns>,
    pub sw: Netns,
}

/// Returns: node `n`'s (1-based) address.
pub fn node_addr(n: usize) -> IpAddr {
    net(Family::V4, 100, n as u16)
}

impl Scaleout {
    /// Builds the lab with `nodes` nodes running (xdpvs, then bird) and waits until the
    /// router routes both VIPs over all of them and every real answers through each VIP.
    pub fn new(nodes: usize) -> Self {
        crate::require_root();
        let p = unique_prefix();
        let fam = Family::V4;
        let dir = std::env::temp_dir().join(format!("{p}-scaleout"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut b = Builder::new(&p, fam);
        let sw = b.switch("sw");
        let client = Netns::new(&format!("{p}-c"));
        let router = Netns::new(&format!("{p}-rt"));
        let reals: Vec<Netns> = (1..=REALS)
            .map(|i| Netns::new(&format!("{p}-r{i}")))
            .collect();
        let vips = [net(fam, 200, 100), net(fam, 200, 101)];

        veth(&format!("{p}c"), &client, &format!("{p}rc"), &router);
        b.addr(&client, &format!("{p}c"), net(fam, 50, 2));
        b.default_via(&client, net(fam, 50, 1));
        b.addr(&router, &format!("{p}rc"), net(fam, 50, 1));
        let router_dev = format!("{p}rt");
        b.plug(&router, &router_dev, &sw, &format!("{p}rts"), false);
        b.addr(&router, &router_dev, router_addr());
        b.forwarding(&router);
        // Spread by ports too, not by addresses only: the test has one client. Not
        // with policy 1, whose hash docs/scale-out.md gives for a router: between
        // namespaces a forwarded packet keeps its sending socket's hash, which policy 1
        // takes as is, and TCP draws a new one after a retransmission timeout, so a
        // SYN sent again could go to another node (seen: 301 new flows for 300
        // connections). Policy 3 hashes the headers' five fields (0x37), as a router
        // receiving from the wire does under policy 1.
        router.exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.fib_multipath_hash_policy=3",
            "net.ipv4.fib_multipath_hash_fields=0x0037",
        ]);

        let real_addrs: Vec<IpAddr> = (1..=REALS).map(|i| net(fam, 100, 10 + i as u16)).collect();
        let mut servers = Vec::new();
        for (i, r) in reals.iter().enumerate() {
            let dev = format!("{p}r{}", i + 1);
            b.plug(r, &dev, &sw, &format!("{p}r{}s", i + 1), false);
            b.addr(r, &dev, real_addrs[i]);
            b.default_via(r, router_addr());
            let state = setup_state(&dir, i);
            let (v0, v1) = (vips[0].to_string(), vips[1].to_string());
            realserver_setup(r, &state, &["--apply", "--vip", &v0, "--vip", &v1]);
            let any = SocketAddr::new("0.0.0.0".parse().expect("literal"), 80);
            servers.push(NamedServer::start(r, any, &format!("real{}", i + 1)));
        }

        let node_names: Vec<(String, IpAddr)> = (1..=MAX_NODES)
            .map(|n| (format!("lb{n}"), node_addr(n)))
            .collect();
        let log = dir.join("router.bird.log");
        let conf = router_bird_config(&RouterBird {
            log: &format!("\"{}\"", log.display()),
            address: router_addr(),
            interface: &router_dev,
            router_as: ROUTER_AS,
            node_as: NODE_AS,
            vip_range: "10.200.0.0/24",
            nodes: &node_names,
        });
        let conf_path = dir.join("router.bird.conf");
        std::fs::write(&conf_path, conf).expect("write the router's bird.conf");
        let router_bird = Bird::start(&router, &conf_path, &dir.join("router.bird.ctl"), &log);

        let mut lab = Scaleout {
            dir,
            p,
            vips,
            real_addrs,
            servers,
            nodes: Vec::new(),
            router_bird: Some(router_bird),
            b,
            client,
            router,
            reals,
            sw,
        };
        for _ in 0..nodes {
            lab.add_node();
        }
        let all: Vec<usize> = (1..=nodes).collect();
        for vip in lab.vips {
            lab.wait_nexthops(vip, &all, Duration::from_secs(20));
            lab.wait_serving(vip);
        }
        lab
    }

    /// Adds the next node: namespace, port on the bridge, xdpvs (started, its probes
    /// passed), then bird. Returns: its index in `nodes`.
    pub fn add_node(&mut self) -> usize {
        let n = self.nodes.len() + 1;
        assert!(
            n <= MAX_NODES,
            "the router has sessions for {MAX_NODES} nodes"
        );
        let p = &self.p;
        let ns = Netns::new(&format!("{p}-n{n}"));
        let dev = format!("{p}n{n}");
        let port = format!("{p}n{n}s");
        // The node transmits (XDP_TX) towards its port: it needs a program there.
        self.b.plug(&ns, &dev, &self.sw, &port, true);
        self.b.addr(&ns, &dev, node_addr(n));
        let instance = format!("{p}n{n}");
        let bpffs = Bpffs::mount(&std::env::temp_dir().join(format!("{p}n{n}-bpffs")));
        let config = self.dir.join(format!("node{n}.yaml"));
        let socket = self.dir.join(format!("node{n}.sock"));
        std::fs::write(
            &config,
            self.node_config(&instance, &bpffs.path, &dev, &socket),
        )
        .expect("write a node's xdpvs.yaml");
        let bird_config = self.dir.join(format!("node{n}.bird.conf"));
        let log = self.dir.join(format!("node{n}.bird.log"));
        let conf = node_bird_config(&NodeBird {
            log: &format!("\"{}\"", log.display()),
            address: node_addr(n),
            interface: &dev,
            node_as: NODE_AS,
            router: router_addr(),
            router_as: ROUTER_AS,
            table: ANNOUNCE_TABLE,
        });
        std::fs::write(&bird_config, conf).expect("write a node's bird.conf");
        self.nodes.push(Node {
            n,
            addr: node_addr(n),
            dev,
            port,
            instance,
            config,
            socket,
            bird_config,
            daemon: None,
            bird: None,
            starts: 0,
            dir: self.dir.clone(),
            bpffs,
            ns,
        });
        let node = self.nodes.last_mut().expect("just pushed");
        node.start_daemon();
        node.start_bird();
        self.nodes.len() - 1
    }

    /// Returns: a node's xdpvs.yaml: both virtual servers over the three reals, direct
    /// routing, fast probes, announced in [`ANNOUNCE_TABLE`].
    fn node_config(&self, instance: &str, pin_path: &Path, dev: &str, socket: &Path) -> String {
        let mut y = format!(
            "instance: {instance}\npin_path: '{}'\ninterfaces: [{dev}]\nxdp_mode: auto\nmanage_vips: false\ncontrol_socket: '{}'\nannounce: {{ table: {ANNOUNCE_TABLE} }}\nvirtual_servers:\n",
            pin_path.display(),
            socket.display()
        );
        for (i, name) in VS_NAMES.iter().enumerate() {
            y.push_str(&format!(
                "  - name: {name}\n    address: '{}'\n    port: 80\n    protocol: tcp\n    method: dr\n    min_healthy: {}\n    health_check: {FAST_PROBES}\n    real_servers:\n",
                self.vips[i], MIN_HEALTHY[i]
            ));
            for a in &self.real_addrs {
                y.push_str(&format!("      - address: '{a}'\n"));
            }
        }
        y
    }

    /// Returns: node `n` (1-based).
    pub fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    pub fn node_mut(&mut self, n: usize) -> &mut Node {
        &mut self.nodes[n - 1]
    }

    /// Returns: the nodes (1-based) the router's kernel route for `vip` goes through.
    pub fn nexthops(&self, vip: IpAddr) -> BTreeSet<usize> {
        let out = self
            .router
            .exec(&["ip", "-j", "route", "show", &format!("{vip}/32")]);
        let routes: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let mut gateways = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                gateways.push(g.to_string());
            }
            for h in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = h["gateway"].as_str() {
                    gateways.push(g.to_string());
                }
            }
        }
        gateways
            .iter()
            .map(|g| {
                let a: IpAddr = g.parse().unwrap_or_else(|e| panic!("{g}: {e}"));
                (1..=MAX_NODES)
                    .find(|&n| node_addr(n) == a)
                    .unwrap_or_else(|| panic!("{vip} routed via {a}, not a node"))
            })
            .collect()
    }

    /// Waits until the router routes `vip` over exactly `nodes` (1-based). Returns: how
    /// long that took; panics with the routers' and nodes' state after `timeout`.
    pub fn wait_nexthops(&self, vip: IpAddr, nodes: &[usize], timeout: Duration) -> Duration {
        let want: BTreeSet<usize> = nodes.iter().copied().collect();
        let t0 = Instant::now();
        let mut seen = BTreeSet::new();
        let ok = crate::wait_for(timeout, || {
            seen = self.nexthops(vip);
            seen == want
        });
        assert!(
            ok,
            "the router's route for {vip} is via nodes {seen:?}, not {want:?}, after {timeout:?}\n{}",
            self.diagnostics()
        );
        t0.elapsed()
    }

    /// Returns: what a failing test should show: the router's sessions and routes, each
    /// node's announce table, and the logs.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.router_bird {
            s.push_str(&format!(
                "--- router: birdc show protocols ---\n{}",
                b.birdc(&["show", "protocols"]).unwrap_or_default()
            ));
        }
        let routes = Command::new("ip")
            .args(["-n", &self.router.name, "route"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        s.push_str(&format!("--- router: ip route ---\n{routes}"));
        for node in &self.nodes {
            let table = Command::new("ip")
                .args(["-n", &node.ns.name, "route", "show", "table"])
                .arg(ANNOUNCE_TABLE.to_string())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            s.push_str(&format!(
                "--- node{}: table {ANNOUNCE_TABLE} ---\n{table}--- node{} xdpvs log ---\n{}",
                node.n,
                node.n,
                node.daemon_log()
            ));
            if let Some(b) = &node.bird {
                s.push_str(&format!(
                    "--- node{} bird log ---\n{}",
                    node.n,
                    b.log_text()
                ));
            }
        }
        if let Some(b) = &self.router_bird {
            s.push_str(&format!("--- router bird log ---\n{}", b.log_text()));
        }
        s
    }

    /// Polls `vip`:80 until every real has answered, then zeroes the servers' counts.
    /// Panics after 20 s.
    pub fn wait_serving(&self, vip: IpAddr) {
        let want: HashSet<String> = (1..=REALS).map(|i| format!("real{i}")).collect();
        let mut seen = HashSet::new();
        let ok = crate::wait_for(Duration::from_secs(20), || {
            for r in self.requests(vip, 8).into_iter().flatten() {
                seen.insert(r);
            }
            want.is_subset(&seen)
        });
        assert!(
            ok,
            "through {vip} only {seen:?} answered within 20 s\n{}",
            self.diagnostics()
        );
        for s in &self.servers {
            s.served.store(0, Ordering::Relaxed);
        }
    }

    /// Sends `n` requests to `vip`:80, one connection each. Returns: who answered each
    /// (or the error).
    pub fn requests(&self, vip: IpAddr, n: usize) -> Vec<Result<String, String>> {
        self.requests_from(vip, n)
            .into_iter()
            .map(|r| r.map(|(_, who)| who))
            .collect()
    }

    /// Sends `n` requests to `vip`:80, one connection each. Returns: each connection's
    /// local address and who answered (or the error).
    pub fn requests_from(
        &self,
        vip: IpAddr,
        n: usize,
    ) -> Vec<Result<(SocketAddr, String), String>> {
        let to = SocketAddr::new(vip, 80);
        self.client.run(move || {
            (0..n)
                .map(|_| crate::http::get_from(to, Duration::from_secs(3)))
                .collect()
        })
    }

    /// Starts a client sending a request to `vip`:80 every 20 ms, each with `timeout`,
    /// at most `max`.
    pub fn traffic(&self, vip: IpAddr, timeout: Duration, max: usize) -> Traffic {
        Traffic::start(
            &self.client,
            SocketAddr::new(vip, 80),
            Duration::from_millis(20),
            timeout,
            max,
        )
    }

    /// Opens a long-lived echoed stream to `vip`:80.
    pub fn stream(&self, vip: IpAddr) -> StreamClient {
        StreamClient::open(&self.client, SocketAddr::new(vip, 80))
    }

    /// Returns: the nodes (1-based) whose connection table holds `stream` to `vip`.
    pub fn stream_nodes(&self, stream: &StreamClient, vip: IpAddr) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.has_flow(stream.local, SocketAddr::new(vip, 80)))
            .map(|n| n.n)
            .collect()
    }

    /// Cuts node `n` off: its port on the bridge goes down. The bridge then forgets
    /// the node's MAC and floods the router's frames for it to every port; the other
    /// nodes' XDP passes them to their kernels (`pass_other_host`), so only the
    /// routers' withdrawal moves the traffic.
    pub fn cut(&self, n: usize) {
        let node = self.node(n);
        self.sw.exec(&["ip", "link", "set", &node.port, "down"]);
    }
}

/// Returns: the router's address on the balancers' segment.
pub fn router_addr() -> IpAddr {
    net(Family::V4, 100, 254)
}

impl Drop for Scaleout {
    fn drop(&mut self) {
        self.servers.clear();
        self.nodes.clear();
        self.router_bird.take();
        self.b.passes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
