//! A pair of balancers with keepalived (VRRP), as docs/ha.md describes it: two nodes
//! run xdpvs with the same virtual servers (`manage_vips: false`), and keepalived,
//! started as an operator would with the keepalived.conf of docs/ha.md, moves the VIP
//! between them.
//!
//! ```text
//! dr:  one bridge (namespace `so`): client .2 (eth0), lb1 .1 and lb2 .3 (eth0 each,
//!      a pass program on their bridge ports), reals .11+ set up by
//!      `xdpvs realserver setup --apply`; VIP 100.100, held by keepalived.
//! nat: outside bridge `so`: client 100.2, lb1 100.1, lb2 100.3 (eth0), VIP 100.100;
//!      inside bridge `si`: lb1 200.2, lb2 200.3 (eth1), reals 200.11+ serving 8080
//!      with their default route via the gateway 200.1, which keepalived moves with
//!      the VIP (two VRRP instances in a sync group).
//! ```
//!
//! Each node has its own namespace, bpffs, instance, control socket and pin path. On
//! drop (also when a test panics) keepalived is stopped and reaped, the daemons are
//! stopped, each instance is torn down (`xdpvs teardown`), the bpffs unmounted and the
//! namespaces deleted.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::Ebpf;
use serde_json::Value;

use crate::{
    daemon::{self, Daemon},
    http::NamedServer,
    lab::{self, net, Builder, Family, StreamClient, Traffic},
    netns::{unique_prefix, Netns},
    pins::Bpffs,
};

/// docs/ha.md, whose keepalived.conf blocks are the lab's templates.
const HA_DOC: &str = include_str!("../../docs/ha.md");

/// The values docs/ha.md's keepalived.conf uses that a lab replaces with its own.
pub const DOC_BINARY: &str = "/usr/local/sbin/xdpvs";
pub const DOC_SOCKET: &str = "/run/xdpvs/xdpvs.sock";
pub const DOC_VIP: &str = "10.0.0.100";
pub const DOC_PRIORITY: &str = "priority 200";
/// The reals' gateway in the doc's NAT file (`10.0.1.1/24`).
pub const DOC_GATEWAY: &str = "10.0.1.1/24";

/// The VRRP priorities of lb1 and lb2: the doc's.
pub const PRIORITIES: [u8; 2] = [200, 190];

/// Returns: the keepalived.conf of docs/ha.md named `which` (`dr`, `nat`): the text of
/// the fenced block between `<!-- keepalived.conf <which>: begin -->` and `... end -->`.
/// Panics if the page has no such block.
pub fn doc_conf(which: &str) -> String {
    let begin = format!("<!-- keepalived.conf {which}: begin -->");
    let end = format!("<!-- keepalived.conf {which}: end -->");
    let start = HA_DOC
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/ha.md has no `{begin}`"))
        + begin.len();
    let len = HA_DOC[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("docs/ha.md has no `{end}`"));
    let block = HA_DOC[start..start + len].trim();
    let body = block
        .strip_prefix("```text\n")
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| panic!("docs/ha.md: `{which}` is not one ```text block"));
    body.to_string()
}

/// What a lab puts in place of the doc's values.
pub struct ConfValues<'a> {
    pub binary: &'a Path,
    pub socket: &'a Path,
    pub vip: IpAddr,
    pub priority: u8,
    /// The reals' gateway with its prefix length (NAT only).
    pub gateway: Option<String>,
}

/// The one template of the lab's keepalived.conf: docs/ha.md's block `which` with the
/// binary, socket, VIP, priority and (NAT) gateway replaced (every occurrence). Panics if the doc no
/// longer holds one of the values it replaces, so doc and lab cannot drift apart.
/// Returns: the file's text.
pub fn keepalived_conf(which: &str, v: &ConfValues) -> String {
    let mut text = doc_conf(which);
    let mut subs = vec![
        (DOC_BINARY, v.binary.display().to_string()),
        (DOC_SOCKET, v.socket.display().to_string()),
        (DOC_VIP, v.vip.to_string()),
        (DOC_PRIORITY, format!("priority {}", v.priority)),
    ];
    if let Some(gw) = &v.gateway {
        subs.push((DOC_GATEWAY, gw.clone()));
    }
    for (doc, lab) in subs {
        assert!(
            text.contains(doc),
            "docs/ha.md's `{which}` keepalived.conf no longer contains `{doc}`"
        );
        text = text.replace(doc, &lab);
    }
    text
}

/// keepalived in the foreground (`-n`), in a node's namespace, VRRP only (`-P`),
/// logging to a file; its pid files are the lab's, so that two instances on one host
/// never find each other's (keepalived 2.2.7 keeps no other files unless signalled
/// for a dump). Stopped with SIGTERM and reaped on drop.
pub struct Keepalived {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Keepalived {
    /// Checks `conf` with `keepalived -t`, then starts keepalived on it in `ns`, with
    /// files `<dir>/<name>.*`, and waits until its VRRP process reports start-up.
    /// Panics with the log if either fails.
    pub fn start(ns: &Netns, dir: &Path, name: &str, conf: &Path) -> Self {
        let at = |ext: &str| dir.join(format!("{name}.{ext}"));
        let check = Command::new("ip")
            .args(["netns", "exec", &ns.name, "keepalived", "-t", "-f"])
            .arg(conf)
            .output()
            .expect("keepalived (cargo xtask setup installs Debian's keepalived)");
        assert!(
            check.status.success(),
            "keepalived -t -f {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = at("keepalived.log");
        let out = std::fs::File::create(&log).expect("keepalived log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "keepalived"])
            .args(["-n", "-l", "-D", "-G", "-P", "-f"])
            .arg(conf)
            .arg("-p")
            .arg(at("keepalived.pid"))
            .arg("-r")
            .arg(at("vrrp.pid"))
            .arg("-c")
            .arg(at("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawning keepalived");
        let mut k = Keepalived {
            child: Some(child),
            log,
        };
        let up = crate::wait_for(Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = k.child.as_mut().map(|c| c.try_wait()) {
                panic!("keepalived exited ({status}):\n{}", k.log_text());
            }
            k.log_text().contains("Startup complete")
        });
        assert!(
            up,
            "keepalived did not start within 10 s:\n{}",
            k.log_text()
        );
        k
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on our own child's pid (`ip netns exec` execs keepalived).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let gone = crate::wait_for(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !gone {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One balancer node: its namespace (interface `eth0`, its port `port` on the
/// bridge), its own bpffs, instance and control socket, and what runs there.
pub struct Node {
    /// `lb1`, `lb2`.
    pub name: String,
    pub instance: String,
    pub addr: IpAddr,
    /// Its port on the outside bridge (in the switch's namespace): down cuts the node
    /// off from the clients.
    pub port: String,
    pub priority: u8,
    pub socket: PathBuf,
    pub daemon: Option<Daemon>,
    pub keepalived: Option<Keepalived>,
    // Field order is drop order: `drop` stops what runs and tears the instance down,
    // then the bpffs goes, the namespace last.
    pub bpffs: Bpffs,
    pub ns: Netns,
}

impl Node {
    /// Runs `xdpvs <args> --socket <the node's>` in the node's namespace.
    /// Returns: its exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let socket = self.socket.display().to_string();
        let mut full = args.to_vec();
        full.extend(["--socket", &socket]);
        self.xdpvs(&full)
    }

    fn xdpvs(&self, args: &[&str]) -> (Option<i32>, String, String) {
        daemon::cli(&self.ns, args)
    }

    /// Returns: whether `xdpvs ready --quiet` passes here (what keepalived runs).
    pub fn ready(&self) -> bool {
        self.cli(&["ready", "--quiet"]).0 == Some(0)
    }

    /// Returns: `xdpvs status --json` of the node's daemon; panics if it fails.
    pub fn status(&self) -> Value {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(code, Some(0), "{} status: {out}{err}", self.name);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{} status: {e}: {out}", self.name))
    }

    /// Returns: the data path's count of `verdict` here.
    pub fn verdict(&self, verdict: &str) -> u64 {
        self.status()["verdicts"][verdict]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no verdict {verdict}", self.name))
    }

    /// Returns: whether `addr` is on one of the node's interfaces (keepalived put it
    /// there).
    pub fn holds(&self, addr: IpAddr) -> bool {
        let out = self.ns.exec(&["ip", "-j", "addr", "show"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let want = addr.to_string();
        v.as_array().into_iter().flatten().any(|link| {
            link["addr_info"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i["local"].as_str() == Some(&want)))
        })
    }

    /// Returns: the MAC address of the node's `eth0`.
    pub fn mac(&self) -> String {
        lab::mac_of(&self.ns, "eth0")
    }

    /// Returns: the node's keepalived log, or its daemon's log, for a panic message.
    pub fn logs(&self) -> String {
        let k = self
            .keepalived
            .as_ref()
            .map(Keepalived::log_text)
            .unwrap_or_default();
        let d = self
            .daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default();
        format!(
            "--- {} keepalived ---\n{k}--- {} xdpvs ---\n{d}",
            self.name, self.name
        )
    }

    /// `xdpvs teardown` of the node's instance, by name and pin path.
    fn teardown(&self) {
        daemon::teardown(&self.ns, &self.instance, &self.bpffs.path);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // keepalived first: nothing moves the VIP while the daemon goes.
        self.keepalived.take();
        self.daemon.take();
        self.teardown();
    }
}

/// Which forwarding method an [`HaLab`] balances with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Dr,
    Nat,
}

/// A directory removed (with its contents) on drop.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HA pair (see the module's drawing).
pub struct HaLab {
    pub method: Method,
    pub dir: PathBuf,
    pub vip: IpAddr,
    /// The reals' gateway that moves with the VIP (NAT only).
    pub gateway: Option<IpAddr>,
    pub real_addrs: Vec<IpAddr>,
    pub servers: Vec<NamedServer>,
    passes: Vec<Ebpf>,
    /// lb1 (the higher priority: master when both are well), lb2.
    pub nodes: Vec<Node>,
    pub client: Netns,
    pub reals: Vec<Netns>,
    /// The bridges' namespaces: outside, and inside (NAT).
    pub switches: Vec<Netns>,
    /// Removes `dir` last, also when building the lab panicked half-way.
    _dir: DirGuard,
}

impl HaLab {
    /// Builds the pair for `method` with `n` reals, their servers started; no daemon
    /// or keepalived runs yet.
    pub fn new(method: Method, n: usize) -> Self {
        crate::require_root();
        let p = unique_prefix();
        let fam = Family::V4;
        let nat = method == Method::Nat;
        let dir = std::env::temp_dir().join(format!("{p}-ha"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dir_guard = DirGuard(dir.clone());
        let mut b = Builder::new(&p, fam);
        let mut switches = vec![b.switch("so")];
        if nat {
            switches.push(b.switch("si"));
        }
        let client = Netns::new(&format!("{p}-c"));
        b.plug(&client, "eth0", &switches[0], &format!("{p}cs"), false);
        b.addr(&client, "eth0", net(fam, 100, 2));
        let mut nodes = Vec::new();
        // (outside, inside) host numbers of lb1 and lb2.
        for (i, (host, inside)) in [(1u16, 2u16), (3, 3)].into_iter().enumerate() {
            let name = format!("lb{}", i + 1);
            let instance = format!("{p}-{name}");
            let bpffs = Bpffs::mount(&std::env::temp_dir().join(format!("{instance}-bpffs")));
            let ns = Netns::new(&instance);
            let mut ports = vec![(format!("{p}l{}o", i + 1), "eth0", &switches[0])];
            if nat {
                ports.push((format!("{p}l{}i", i + 1), "eth1", &switches[1]));
            }
            for (port, dev, sw) in &ports {
                // The bridge floods frames whose MAC it has not learnt (as after a
                // port goes down) to the other node too: its XDP must pass them
                // (`pass_other_host`), never balance them.
                b.plug(&ns, dev, sw, port, true);
            }
            let addr = net(fam, 100, host);
            b.addr(&ns, "eth0", addr);
            if nat {
                b.addr(&ns, "eth1", net(fam, 200, inside));
                b.forwarding(&ns);
            }
            nodes.push(Node {
                socket: dir.join(format!("{name}.sock")),
                name,
                instance,
                addr,
                port: ports[0].0.clone(),
                priority: PRIORITIES[i],
                daemon: None,
                keepalived: None,
                bpffs,
                ns,
            });
        }
        // NAT replies leave through the node's FIB to the clients' next hop (here the
        // client itself, as a router would be). No node is made to resolve it first:
        // a backup taking over finds it unresolved, and the daemon has it resolved
        // when the data path reports it (decision 0019).
        let vip = net(fam, 100, 100);
        let gateway = nat.then(|| net(fam, 200, 1));
        let real_net = if nat { 200 } else { 100 };
        let real_addrs: Vec<IpAddr> = (0..n).map(|i| net(fam, real_net, 11 + i as u16)).collect();
        let mut reals = Vec::new();
        for (i, a) in real_addrs.iter().enumerate() {
            let r = Netns::new(&format!("{p}-r{}", i + 1));
            let sw = switches.last().expect("a switch");
            b.plug(&r, "eth0", sw, &format!("{p}r{}s", i + 1), false);
            b.addr(&r, "eth0", *a);
            match gateway {
                Some(gw) => b.default_via(&r, gw),
                None => lab::setup_real(&r, &lab::setup_state(&dir, i), vip, None),
            }
            reals.push(r);
        }
        let port = if nat { lab::NAT_REAL_PORT } else { 80 };
        let any = SocketAddr::new("0.0.0.0".parse().expect("literal"), port);
        let servers = reals
            .iter()
            .enumerate()
            .map(|(i, r)| NamedServer::start(r, any, &format!("real{}", i + 1)))
            .collect();
        HaLab {
            method,
            dir,
            vip,
            gateway,
            real_addrs,
            servers,
            passes: b.passes,
            nodes,
            client,
            reals,
            switches,
            _dir: dir_guard,
        }
    }

    /// The virtual servers both nodes run, the same text for both: `manage_vips:
    /// false` (keepalived owns the VIP), one virtual server on VIP:80 over every real
    /// (NAT: to port 8080), probed by `health` (a flow mapping). Returns: the YAML.
    pub fn shared_config(&self, health: &str) -> String {
        let (ifs, method, port) = match self.method {
            Method::Dr => ("eth0", "dr", 80),
            Method::Nat => ("eth0, eth1", "nat", lab::NAT_REAL_PORT),
        };
        let mut y = format!(
            "interfaces: [{ifs}]\nxdp_mode: auto\nmanage_vips: false\nvirtual_servers:\n  - name: web\n    address: '{}'\n    port: 80\n    protocol: tcp\n    method: {method}\n    health_check: {health}\n    real_servers:\n",
            self.vip
        );
        for a in &self.real_addrs {
            y.push_str(&format!("      - {{ address: '{a}', port: {port} }}\n"));
        }
        y
    }

    /// Starts xdpvs on both nodes with `shared_config(health)`, each file prefixed
    /// only by the node's instance, pin path and control socket (one host holds both
    /// nodes); waits until both are ready.
    pub fn start_daemons(&mut self, health: &str) {
        let shared = self.shared_config(health);
        for node in &mut self.nodes {
            let cfg = self.dir.join(format!("{}.yaml", node.name));
            let own = format!(
                "instance: {}\npin_path: '{}'\ncontrol_socket: '{}'\n",
                node.instance,
                node.bpffs.path.display(),
                node.socket.display()
            );
            std::fs::write(&cfg, own + &shared).expect("write config");
            node.daemon = Some(Daemon::start(&node.ns, &cfg));
        }
        for node in &self.nodes {
            let ready = crate::wait_for(Duration::from_secs(30), || node.ready());
            assert!(
                ready,
                "{} not ready within 30 s:\n{}",
                node.name,
                node.logs()
            );
        }
    }

    /// Writes each node's keepalived.conf from docs/ha.md's block for the lab's
    /// method and starts keepalived on both; waits until lb1 holds the VIP (and the
    /// gateway) and lb2 does not.
    pub fn start_keepalived(&mut self) {
        let bin = daemon::binary();
        let which = match self.method {
            Method::Dr => "dr",
            Method::Nat => "nat",
        };
        for node in &mut self.nodes {
            let conf = keepalived_conf(
                which,
                &ConfValues {
                    binary: &bin,
                    socket: &node.socket,
                    vip: self.vip,
                    priority: node.priority,
                    gateway: self.gateway.map(|g| format!("{g}/24")),
                },
            );
            let path = self.dir.join(format!("{}.keepalived.conf", node.name));
            std::fs::write(&path, conf).expect("write keepalived.conf");
            node.keepalived = Some(Keepalived::start(&node.ns, &self.dir, &node.name, &path));
        }
        let settled = crate::wait_for(Duration::from_secs(20), || self.owner() == Some(0));
        assert!(
            settled,
            "lb1 does not hold the VIP alone within 20 s:\n{}",
            self.logs()
        );
    }

    /// Returns: the node that holds the moving addresses (the VIP and, with NAT, the
    /// gateway) while the other holds none of them; `None` in any other case.
    pub fn owner(&self) -> Option<usize> {
        let moving: Vec<IpAddr> = std::iter::once(self.vip).chain(self.gateway).collect();
        let held: Vec<(bool, bool)> = self
            .nodes
            .iter()
            .map(|n| {
                let h: Vec<bool> = moving.iter().map(|a| n.holds(*a)).collect();
                (h.iter().all(|x| *x), h.iter().any(|x| *x))
            })
            .collect();
        match held[..] {
            [(true, _), (_, false)] => Some(0),
            [(_, false), (true, _)] => Some(1),
            _ => None,
        }
    }

    /// Sets node `i`'s bridge port down (`up: false`) or up: its link is cut or back.
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.switches[0].exec(&["ip", "link", "set", &self.nodes[i].port, state]);
    }

    /// Returns: the MAC the client's ARP entry for the VIP names, if it has one.
    pub fn client_vip_mac(&self) -> Option<String> {
        let vip = self.vip.to_string();
        let out = self
            .client
            .exec(&["ip", "-j", "neigh", "show", "to", &vip, "dev", "eth0"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v[0]["lladdr"].as_str().map(str::to_string)
    }

    /// Returns: the index of the node the client sends VIP traffic to (by its ARP
    /// entry), if any.
    pub fn client_node(&self) -> Option<usize> {
        let mac = self.client_vip_mac()?;
        self.nodes.iter().position(|n| n.mac() == mac)
    }

    /// Starts a client sending a request to VIP:80 every `every`, each with `timeout`,
    /// at most `max`.
    pub fn traffic(&self, every: Duration, timeout: Duration, max: usize) -> Traffic {
        Traffic::start(
            &self.client,
            SocketAddr::new(self.vip, 80),
            every,
            timeout,
            max,
        )
    }

    /// Opens a long-lived echoed stream to VIP:80 whose reads wait up to `timeout`.
    pub fn stream(&self, timeout: Duration) -> StreamClient {
        StreamClient::open_with(&self.client, SocketAddr::new(self.vip, 80), timeout)
    }

    /// Sends `n` requests from the client to VIP:80, one connection each, each given
    /// 3 s. Returns: the answering server's name per request (or the error).
    pub fn requests(&self, n: usize) -> Vec<Result<String, String>> {
        let vip = SocketAddr::new(self.vip, 80);
        self.client.run(move || {
            (0..n)
                .map(|_| crate::http::get(vip, Duration::from_secs(3)))
                .collect()
        })
    }

    /// Sends requests from the client, each given `timeout`, `every` apart, until one
    /// is answered or `limit` passes. Returns: when the first was answered.
    pub fn first_answer(
        &self,
        every: Duration,
        timeout: Duration,
        limit: Duration,
    ) -> Option<Instant> {
        let vip = SocketAddr::new(self.vip, 80);
        self.client.run(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if crate::http::get(vip, timeout).is_ok() {
                    return Some(Instant::now());
                }
                std::thread::sleep(every);
            }
            None
        })
    }

    /// Returns: both nodes' logs, for a panic message.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(Node::logs).collect()
    }
}

impl Drop for HaLab {
    fn drop(&mut self) {
        // Each node stops keepalived and xdpvs and tears its instance down.
        self.nodes.clear();
        self.servers.clear();
        self.passes.clear();
    }
}
