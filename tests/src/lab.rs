//! End-to-end labs for every forwarding method and both address families: namespaces,
//! veths and bridges built from scratch with unique names, the balancer started from a
//! YAML file, HTTP servers on the reals. Everything is removed on drop.
//!
//! Addresses: `net(n, host)` is `10.n.0.host/24` in IPv4 and `fd00:n::host/64` in IPv6.
//!
//! ```text
//! dr:       client .2, lb .1, reals .11+ on net 100 (one bridge); VIP 100.100 on the
//!           reals' lo (by `xdpvs realserver setup --apply`); replies go straight to
//!           the client.
//! dr-routed: client 150.2 -- router 150.254 | router 100.254 -- net 100: lb .1,
//!           reals .11+ (default via the router); VIP 100.100 as in dr. The client's
//!           path crosses a router whose links can be narrowed (path MTU).
//! nat:      client .2 -- net 100 -- lb .1 | lb .1 -- net 200 -- reals .11+ (default
//!           route via lb); VIP 100.100; reals serve port 8080 for VIP port 80.
//! nat-one:  one bridge: lb (100.1 and 150.1), client 150.2, reals 100.11+ (default via
//!           lb); VIP 150.100.
//! tunnel:   client 150.2 -- router 150.254 | net 100: lb .1, router .254 | net 200:
//!           router .1, reals .11+; the client reaches the VIP through the router,
//!           the lb encapsulates to the reals through it; the reals are set up
//!           by `xdpvs realserver setup --apply --method tunnel`, decapsulate with
//!           `xdpvs realserver decap` and answer the client through the router.
//! ```

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use aya::{programs::XdpMode, Ebpf};
use lb_common::maps::PROG_PASS;
use xdpvs::dataplane::bpf;

pub use crate::load::{Sample, StreamClient, StreamResult, Traffic, UdpFlow, UdpReport};
use crate::{
    daemon::Daemon,
    http::{NamedServer, UdpEcho},
    netns::{unique_prefix, veth, Netns},
    pins::Bpffs,
};

/// Loads the BPF object inside `ns` and attaches the pass program to `dev`. veth
/// delivers XDP_TX'd frames only to a peer with an XDP program.
pub fn attach_pass(ns: &Netns, dev: &str) -> Ebpf {
    let dev = dev.to_string();
    ns.run(move || {
        let mut ebpf = bpf::load(bpf::LoadOptions {
            flow_entries: 1024,
            ring_count: 2,
        })
        .expect("load BPF object");
        let c = std::ffi::CString::new(dev.clone()).expect("name");
        // SAFETY: valid C string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(idx, 0, "{dev} not found");
        bpf::attach(&mut ebpf, PROG_PASS, idx, XdpMode::Default).expect("attach pass program");
        ebpf
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dr,
    DrRouted,
    Nat,
    NatOneNic,
    Tunnel,
}

/// Returns: host `host` of lab network `n` in `fam`.
pub fn net(fam: Family, n: u8, host: u16) -> IpAddr {
    match fam {
        Family::V4 => format!("10.{n}.0.{host}").parse().expect("v4"),
        Family::V6 => format!("fd00:{n}::{host:x}").parse().expect("v6"),
    }
}

pub fn cidr(fam: Family, a: IpAddr) -> String {
    format!("{a}/{}", if fam == Family::V4 { 24 } else { 64 })
}

/// Port the reals serve HTTP on (NAT maps VIP:80 to it).
pub const NAT_REAL_PORT: u16 = 8080;
/// UDP virtual server port of the NAT lab, and the reals' port behind it.
pub const UDP_VS_PORT: u16 = 53;
pub const UDP_REAL_PORT: u16 = 5353;

/// A lab. Its daemon's instance (named after the lab) pins under a bpffs of the lab's
/// own; on drop the lab tears the instance down (`xdpvs teardown`), unmounts the bpffs
/// and deletes its namespaces. A [`Daemon`] started in it must be declared after the
/// lab, so that it is stopped (dropped) first.
pub struct Lab {
    pub kind: Kind,
    pub fam: Family,
    pub dir: PathBuf,
    /// The daemon's instance name: the lab's unique prefix.
    pub instance: String,
    pub vip: IpAddr,
    /// The balancer's interfaces, in config order.
    pub lb_ifs: Vec<String>,
    pub real_addrs: Vec<IpAddr>,
    pub servers: Vec<NamedServer>,
    pub udp: Vec<UdpEcho>,
    pub decaps: Vec<Daemon>,
    passes: Vec<Ebpf>,
    // Field order is drop order: the bpffs after the teardown in `drop`, namespaces last.
    pub bpffs: Bpffs,
    pub client: Netns,
    pub lb: Netns,
    pub reals: Vec<Netns>,
    pub infra: Vec<Netns>,
}

/// Builds a topology of namespaces, bridges and veths under one unique prefix: the
/// labs here and the multi-node labs of other tests (HA pairs, ECMP clusters) use it.
pub struct Builder {
    pub p: String,
    pub fam: Family,
    /// Pass programs attached to bridge ports that XDP transmits to; keep them alive
    /// as long as the topology.
    pub passes: Vec<Ebpf>,
}

impl Builder {
    /// Returns: a builder for names under `prefix` (see `netns::unique_prefix`).
    pub fn new(prefix: &str, fam: Family) -> Self {
        Builder {
            p: prefix.to_string(),
            fam,
            passes: Vec::new(),
        }
    }

    /// Runs `ip [-6] <args>` in `ns`.
    pub fn ip(&self, ns: &Netns, args: &[&str]) {
        let mut full = vec!["ip"];
        if self.fam == Family::V6 {
            full.push("-6");
        }
        full.extend_from_slice(args);
        ns.exec(&full);
    }

    pub fn addr(&self, ns: &Netns, dev: &str, a: IpAddr) {
        let c = cidr(self.fam, a);
        if self.fam == Family::V6 {
            self.ip(ns, &["addr", "add", &c, "dev", dev, "nodad"]);
        } else {
            self.ip(ns, &["addr", "add", &c, "dev", dev]);
        }
    }

    pub fn default_via(&self, ns: &Netns, gw: IpAddr) {
        self.ip(ns, &["route", "add", "default", "via", &gw.to_string()]);
    }

    pub fn forwarding(&self, ns: &Netns) {
        let key = if self.fam == Family::V4 {
            "net.ipv4.conf.all.forwarding=1"
        } else {
            "net.ipv6.conf.all.forwarding=1"
        };
        ns.exec(&["sysctl", "-qw", key]);
    }

    /// A bridge in a namespace of its own.
    pub fn switch(&self, name: &str) -> Netns {
        let sw = Netns::new(&format!("{}-{name}", self.p));
        sw.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        sw.exec(&["ip", "link", "set", "br0", "up"]);
        sw
    }

    /// Plugs `dev` in `ns` into the bridge of `sw` (port `port`); `xdp_peer` attaches
    /// the pass program to the port, for a device XDP transmits on.
    pub fn plug(&mut self, ns: &Netns, dev: &str, sw: &Netns, port: &str, xdp_peer: bool) {
        veth(dev, ns, port, sw);
        sw.exec(&["ip", "link", "set", port, "master", "br0"]);
        if xdp_peer {
            self.passes.push(attach_pass(sw, port));
        }
    }
}

impl Lab {
    /// Builds the lab `kind` in `fam` with `n` reals, servers started.
    pub fn new(kind: Kind, fam: Family, n: usize) -> Self {
        crate::require_root();
        let p = unique_prefix();
        let dir = std::env::temp_dir().join(format!("{p}-xdpvs"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bpffs = Bpffs::mount(&std::env::temp_dir().join(format!("{p}-bpffs")));
        let mut b = Builder::new(&p, fam);
        let client = Netns::new(&format!("{p}-c"));
        let lb = Netns::new(&format!("{p}-lb"));
        let reals: Vec<Netns> = (0..n)
            .map(|i| Netns::new(&format!("{p}-r{}", i + 1)))
            .collect();
        let mut infra = Vec::new();
        let real_dev = |i: usize| format!("{p}r{}", i + 1);
        let mut lb_ifs = vec![format!("{p}o")];
        let (vip, real_addrs): (IpAddr, Vec<IpAddr>);

        match kind {
            Kind::Dr => {
                let sw = b.switch("sw");
                b.plug(&client, &format!("{p}c"), &sw, &format!("{p}cs"), false);
                b.addr(&client, &format!("{p}c"), net(fam, 100, 2));
                b.plug(&lb, &lb_ifs[0], &sw, &format!("{p}os"), true);
                b.addr(&lb, &lb_ifs[0], net(fam, 100, 1));
                vip = net(fam, 100, 100);
                real_addrs = (0..n).map(|i| net(fam, 100, 11 + i as u16)).collect();
                for (i, r) in reals.iter().enumerate() {
                    b.plug(r, &real_dev(i), &sw, &format!("{p}r{}s", i + 1), false);
                    b.addr(r, &real_dev(i), real_addrs[i]);
                    setup_real(r, &setup_state(&dir, i), vip, None);
                }
                infra.push(sw);
            }
            Kind::DrRouted => {
                let sw_c = b.switch("sc");
                let sw = b.switch("sw");
                let router = Netns::new(&format!("{p}-rt"));
                b.plug(&client, &format!("{p}c"), &sw_c, &format!("{p}cs"), false);
                b.addr(&client, &format!("{p}c"), net(fam, 150, 2));
                b.default_via(&client, net(fam, 150, 254));
                b.plug(&router, &format!("{p}tc"), &sw_c, &format!("{p}tcs"), false);
                b.addr(&router, &format!("{p}tc"), net(fam, 150, 254));
                b.plug(&router, &format!("{p}tb"), &sw, &format!("{p}tbs"), false);
                b.addr(&router, &format!("{p}tb"), net(fam, 100, 254));
                b.forwarding(&router);
                b.plug(&lb, &lb_ifs[0], &sw, &format!("{p}os"), true);
                b.addr(&lb, &lb_ifs[0], net(fam, 100, 1));
                vip = net(fam, 100, 100);
                real_addrs = (0..n).map(|i| net(fam, 100, 11 + i as u16)).collect();
                for (i, r) in reals.iter().enumerate() {
                    b.plug(r, &real_dev(i), &sw, &format!("{p}r{}s", i + 1), false);
                    b.addr(r, &real_dev(i), real_addrs[i]);
                    b.default_via(r, net(fam, 100, 254));
                    setup_real(r, &setup_state(&dir, i), vip, None);
                }
                infra.extend([sw_c, sw, router]);
            }
            Kind::Nat => {
                let out_sw = b.switch("so");
                let in_sw = b.switch("si");
                lb_ifs.push(format!("{p}i"));
                b.plug(&client, &format!("{p}c"), &out_sw, &format!("{p}cs"), false);
                b.addr(&client, &format!("{p}c"), net(fam, 100, 2));
                b.plug(&lb, &lb_ifs[0], &out_sw, &format!("{p}os"), true);
                b.addr(&lb, &lb_ifs[0], net(fam, 100, 1));
                b.plug(&lb, &lb_ifs[1], &in_sw, &format!("{p}is"), true);
                b.addr(&lb, &lb_ifs[1], net(fam, 200, 1));
                b.forwarding(&lb);
                vip = net(fam, 100, 100);
                real_addrs = (0..n).map(|i| net(fam, 200, 11 + i as u16)).collect();
                for (i, r) in reals.iter().enumerate() {
                    b.plug(r, &real_dev(i), &in_sw, &format!("{p}r{}s", i + 1), false);
                    b.addr(r, &real_dev(i), real_addrs[i]);
                    b.default_via(r, net(fam, 200, 1));
                }
                infra.push(out_sw);
                infra.push(in_sw);
            }
            Kind::NatOneNic => {
                let sw = b.switch("sw");
                b.plug(&client, &format!("{p}c"), &sw, &format!("{p}cs"), false);
                b.addr(&client, &format!("{p}c"), net(fam, 150, 2));
                b.plug(&lb, &lb_ifs[0], &sw, &format!("{p}os"), true);
                b.addr(&lb, &lb_ifs[0], net(fam, 100, 1));
                b.addr(&lb, &lb_ifs[0], net(fam, 150, 1));
                b.forwarding(&lb);
                vip = net(fam, 150, 100);
                real_addrs = (0..n).map(|i| net(fam, 100, 11 + i as u16)).collect();
                for (i, r) in reals.iter().enumerate() {
                    b.plug(r, &real_dev(i), &sw, &format!("{p}r{}s", i + 1), false);
                    b.addr(r, &real_dev(i), real_addrs[i]);
                    b.default_via(r, net(fam, 100, 1));
                }
                infra.push(sw);
            }
            Kind::Tunnel => {
                let sw_c = b.switch("sc");
                let sw_a = b.switch("sa");
                let sw_b = b.switch("sb");
                let router = Netns::new(&format!("{p}-rt"));
                b.plug(&client, &format!("{p}c"), &sw_c, &format!("{p}cs"), false);
                b.addr(&client, &format!("{p}c"), net(fam, 150, 2));
                b.default_via(&client, net(fam, 150, 254));
                b.plug(&router, &format!("{p}tc"), &sw_c, &format!("{p}tcs"), false);
                b.addr(&router, &format!("{p}tc"), net(fam, 150, 254));
                b.plug(&lb, &lb_ifs[0], &sw_a, &format!("{p}os"), true);
                b.addr(&lb, &lb_ifs[0], net(fam, 100, 1));
                b.forwarding(&lb);
                b.ip(
                    &lb,
                    &[
                        "route",
                        "add",
                        &cidr(fam, net(fam, 200, 0)),
                        "via",
                        &net(fam, 100, 254).to_string(),
                    ],
                );
                b.plug(&router, &format!("{p}ta"), &sw_a, &format!("{p}tas"), false);
                b.addr(&router, &format!("{p}ta"), net(fam, 100, 254));
                b.plug(&router, &format!("{p}tb"), &sw_b, &format!("{p}tbs"), false);
                b.addr(&router, &format!("{p}tb"), net(fam, 200, 1));
                b.forwarding(&router);
                vip = net(fam, 100, 100);
                real_addrs = (0..n).map(|i| net(fam, 200, 11 + i as u16)).collect();
                for (i, r) in reals.iter().enumerate() {
                    b.plug(r, &real_dev(i), &sw_b, &format!("{p}r{}s", i + 1), false);
                    b.addr(r, &real_dev(i), real_addrs[i]);
                    b.default_via(r, net(fam, 200, 1));
                    setup_real(r, &setup_state(&dir, i), vip, Some(&real_dev(i)));
                }
                infra.extend([sw_c, sw_a, sw_b, router]);
            }
        }

        let nat = matches!(kind, Kind::Nat | Kind::NatOneNic);
        let mut servers = Vec::new();
        let mut udp = Vec::new();
        for (i, r) in reals.iter().enumerate() {
            let name = format!("real{}", i + 1);
            servers.push(NamedServer::start(r, server_bind(kind, fam), &name));
            if nat {
                udp.push(UdpEcho::start(
                    r,
                    SocketAddr::new(real_addrs[i], UDP_REAL_PORT),
                    &name,
                ));
            }
        }
        let mut lab = Lab {
            kind,
            fam,
            dir,
            instance: p.clone(),
            vip,
            lb_ifs,
            real_addrs,
            servers,
            udp,
            decaps: Vec::new(),
            passes: b.passes,
            bpffs,
            client,
            lb,
            reals,
            infra,
        };
        if kind == Kind::Tunnel {
            for (i, r) in lab.reals.iter().enumerate() {
                let args = [
                    "realserver",
                    "decap",
                    "--interface",
                    &real_dev(i),
                    "--vip",
                    &vip.to_string(),
                ]
                .map(String::from);
                let log = lab.dir.join(format!("decap{}.log", i + 1));
                lab.decaps
                    .push(Daemon::spawn(r, &args, &log, "decap running"));
            }
        }
        lab
    }

    /// Writes the balancer's configuration: one TCP virtual server on VIP:80 (NAT adds
    /// a UDP one on VIP:53), every real with weight 1, fast TCP probes. Returns: its
    /// path.
    pub fn write_config(&self) -> PathBuf {
        self.write_spec(&Spec::default())
    }

    /// Writes the balancer's configuration as `spec` says. Returns: its path.
    pub fn write_spec(&self, spec: &Spec) -> PathBuf {
        let method = match self.kind {
            Kind::Dr | Kind::DrRouted => "dr",
            Kind::Nat | Kind::NatOneNic => "nat",
            Kind::Tunnel => "tunnel",
        };
        let nat = method == "nat";
        let mut y = format!(
            "{}interfaces: [{}]\nxdp_mode: auto\ncontrol_socket: '{}'\n",
            self.pin_lines(),
            self.lb_ifs.join(", "),
            self.socket().display()
        );
        if self.kind == Kind::Tunnel {
            y.push_str(&format!("tunnel_source: '{}'\n", net(self.fam, 100, 1)));
        }
        y.push_str("virtual_servers:\n");
        let reals: Vec<(usize, u32)> = spec
            .reals
            .clone()
            .unwrap_or_else(|| (0..self.real_addrs.len()).map(|i| (i, 1)).collect());
        let http_port = if nat { NAT_REAL_PORT } else { 80 };
        let vs = |name: &str, proto: &str, port: u16, real_port: u16, extra: &str| {
            let mut s = format!("  - name: {name}\n    address: '{}'\n    port: {port}\n    protocol: {proto}\n    method: {method}\n{extra}    real_servers:\n", self.vip);
            for &(i, w) in &reals {
                s.push_str(&format!(
                    "      - address: '{}'\n        port: {real_port}\n        weight: {w}\n",
                    self.real_addrs[i]
                ));
            }
            s
        };
        let mut web_extra = format!("    health_check: {}\n", spec.health.unwrap_or(FAST_PROBES));
        web_extra.push_str(&spec.vs_extra);
        if let Some(i) = spec.sorry {
            web_extra.push_str(&format!(
                "    sorry_server: {{ address: '{}', port: {http_port} }}\n",
                self.real_addrs[i]
            ));
        }
        y.push_str(&vs("web", "tcp", 80, http_port, &web_extra));
        if nat {
            // UDP has no probe of its own: the reals' HTTP port stands for them.
            let extra = format!("    health_check: {{ type: tcp, port: {NAT_REAL_PORT}, interval: 250ms, timeout: 200ms, rise: 1 }}\n");
            y.push_str(&vs("dns", "udp", UDP_VS_PORT, UDP_REAL_PORT, &extra));
        }
        let path = self.dir.join("xdpvs.yaml");
        std::fs::write(&path, y).expect("write config");
        path
    }

    /// Writes the lab's configuration (as [`Lab::write_config`]) with a UDP virtual
    /// server `name` on VIP:53 added: method `method`, `extra` (YAML lines of the
    /// virtual server, indented by 4), every real at port 53. Returns: its path, `file`
    /// in the lab's directory.
    pub fn write_with_udp_vs(&self, name: &str, method: &str, extra: &str, file: &str) -> PathBuf {
        let mut y = std::fs::read_to_string(self.write_config()).expect("config");
        y.push_str(&format!(
            "  - name: {name}\n    address: '{}'\n    port: 53\n    protocol: udp\n    method: {method}\n{extra}    real_servers:\n",
            self.vip
        ));
        for a in &self.real_addrs {
            y.push_str(&format!("      - address: '{a}'\n"));
        }
        let path = self.dir.join(file);
        std::fs::write(&path, y).expect("write config");
        path
    }

    /// Narrows the client's side of the router (dr-routed and tunnel labs) to `mtu`:
    /// the reals' large replies then meet a router that answers "fragmentation
    /// needed" / "packet too big" to the VIP they come from.
    /// In the NAT lab the balancer itself is that router: its outside interface is
    /// narrowed, and it answers the reals' large replies itself.
    pub fn narrow_client_path(&self, mtu: u32) {
        let (ns, dev) = match self.kind {
            Kind::DrRouted | Kind::Tunnel => (
                self.infra.last().expect("the router namespace"),
                format!("{}tc", self.instance),
            ),
            Kind::Nat => (&self.lb, self.lb_ifs[0].clone()),
            k => panic!("the {k:?} lab has no router on the client's path"),
        };
        ns.exec(&["ip", "link", "set", &dev, "mtu", &mtu.to_string()]);
    }

    /// Deletes the balancer's first interface, as an operator or a driver reload would:
    /// the veth pair goes, its switch port with it. Returns: what
    /// [`Lab::recreate_lb_interface`] needs to make it again as it was.
    pub fn delete_lb_interface(&self) -> Unplugged {
        let dev = &self.lb_ifs[0];
        let sysfs = |what: &str| {
            self.lb
                .exec(&["cat", &format!("/sys/class/net/{dev}/{what}")])
                .trim()
                .to_string()
        };
        let gone = Unplugged {
            mac: sysfs("address"),
            ifindex: sysfs("ifindex").parse().expect("ifindex"),
        };
        self.lb.exec(&["ip", "link", "del", dev]);
        gone
    }

    /// Makes the balancer's first interface again after [`Lab::delete_lb_interface`]:
    /// same name, MAC and address, plugged into the same switch port with the pass
    /// program on it; the kernel gives it a new ifindex. The labs whose first interface
    /// has more than its address (NAT on one NIC, the tunnel's route) are not supported.
    /// Returns: its new ifindex.
    pub fn recreate_lb_interface(&mut self, was: &Unplugged) -> u32 {
        let (p, dev) = (&self.instance, self.lb_ifs[0].clone());
        let sw_name = match self.kind {
            Kind::Dr | Kind::DrRouted => format!("{p}-sw"),
            Kind::Nat => format!("{p}-so"),
            k => panic!("the {k:?} lab's balancer interface cannot be re-created"),
        };
        let sw = self
            .infra
            .iter()
            .find(|n| n.name == sw_name)
            .expect("the balancer's switch");
        let port = format!("{p}os");
        veth(&dev, &self.lb, &port, sw);
        sw.exec(&["ip", "link", "set", &port, "master", "br0"]);
        self.passes.push(attach_pass(sw, &port));
        self.lb
            .exec(&["ip", "link", "set", "dev", &dev, "address", &was.mac]);
        let b = Builder::new(p, self.fam);
        b.addr(&self.lb, &dev, net(self.fam, 100, 1));
        self.lb
            .exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .trim()
            .parse()
            .expect("ifindex")
    }

    /// Returns: the daemon's control socket in this lab.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("xdpvs.sock")
    }

    /// The configuration lines that keep the daemon's pins in the lab's bpffs, under
    /// the lab's own instance. Every file a lab's daemon reads starts with them.
    pub fn pin_lines(&self) -> String {
        format!(
            "instance: {}\npin_path: '{}'\n",
            self.instance,
            self.bpffs.path.display()
        )
    }

    /// Returns: the directory the instance pins in (`<pin_path>/<instance>`).
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.path.join(&self.instance)
    }

    /// Returns: where the instance pins the map `name` (see `lb_common::maps`).
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_dir().join("maps").join(name)
    }

    /// Returns: the daemon's own state file of the instance.
    pub fn state_file(&self) -> PathBuf {
        Path::new("/run/xdpvs").join(format!("{}.state.json", self.instance))
    }

    /// Runs `xdpvs <args> --socket <the lab's>` in the balancer's namespace.
    /// Returns: its exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let socket = self.socket().display().to_string();
        let mut full = args.to_vec();
        full.extend(["--socket", &socket]);
        self.xdpvs(&full)
    }

    /// Returns: `xdpvs status --json` of the lab's daemon. Panics if it fails or its
    /// output is no JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(code, Some(0), "status: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
    }

    /// Returns: the data path's count of `verdict`, from `xdpvs status --json`.
    pub fn verdict(&self, verdict: &str) -> u64 {
        let s = self.status();
        s["verdicts"][verdict]
            .as_u64()
            .unwrap_or_else(|| panic!("no verdict {verdict} in {}", s["verdicts"]))
    }

    /// Runs `xdpvs <args>` in the balancer's namespace.
    /// Returns: its exit code, stdout and stderr.
    pub fn xdpvs(&self, args: &[&str]) -> (Option<i32>, String, String) {
        crate::daemon::cli(&self.lb, args)
    }

    /// `xdpvs teardown` of the lab's instance, named by instance and pin path (a test
    /// may have left a broken file behind). Whatever it leaves, the bpffs goes on drop.
    fn teardown_on_drop(&self) {
        crate::daemon::teardown(&self.lb, &self.instance, &self.bpffs.path);
    }

    /// Polls through the VIP until each of `reals` (0-based) has answered (its probe made
    /// it healthy), then zeroes the servers' counters. Panics with the log after 20 s.
    pub fn wait_serving(&self, reals: &[usize], d: &Daemon) {
        let want: HashSet<String> = reals.iter().map(|i| format!("real{}", i + 1)).collect();
        let mut seen = HashSet::new();
        let ok = crate::wait_for(Duration::from_secs(20), || {
            for r in self.requests(8).into_iter().flatten() {
                seen.insert(r);
            }
            want.is_subset(&seen)
        });
        assert!(
            ok,
            "reals {want:?} not all serving within 20 s (seen {seen:?}):\n{}",
            d.log_text()
        );
        self.reset_served();
    }

    /// Zeroes every server's count of answered requests.
    pub fn reset_served(&self) {
        for s in &self.servers {
            s.served.store(0, Ordering::Relaxed);
        }
    }

    /// Stops real `i`'s server (its port then refuses connections).
    pub fn stop_server(&mut self, i: usize) {
        let placeholder = NamedServer::idle();
        drop(std::mem::replace(&mut self.servers[i], placeholder));
    }

    /// Starts real `i`'s server again.
    pub fn start_server(&mut self, i: usize) {
        let s = NamedServer::start(
            &self.reals[i],
            server_bind(self.kind, self.fam),
            &format!("real{}", i + 1),
        );
        self.servers[i] = s;
    }

    /// Starts a client that sends one request after another (each with a 1 s timeout,
    /// 20 ms apart, at most `max` of them) until stopped.
    pub fn traffic(&self, max: usize) -> Traffic {
        self.traffic_every(Duration::from_millis(20), Duration::from_secs(1), max)
    }

    /// Starts a client that sends a request to VIP:80 every `every`, each with
    /// `timeout`, at most `max` of them, until stopped.
    pub fn traffic_every(&self, every: Duration, timeout: Duration, max: usize) -> Traffic {
        Traffic::start(
            &self.client,
            SocketAddr::new(self.vip, 80),
            every,
            timeout,
            max,
        )
    }

    /// Opens a long-lived stream to VIP:80 on a client thread that sends a chunk every
    /// 100 ms until stopped.
    pub fn stream(&self) -> StreamClient {
        StreamClient::open(&self.client, SocketAddr::new(self.vip, 80))
    }

    /// Starts one UDP flow to VIP:53 (NAT labs), a datagram `every`, at most `max`.
    pub fn udp_flow(&self, every: Duration, max: u64) -> UdpFlow {
        UdpFlow::start(
            &self.client,
            SocketAddr::new(self.vip, UDP_VS_PORT),
            every,
            max,
        )
    }

    /// Sends `n` HTTP requests from the client to VIP:80, one connection each.
    /// Returns: the answering server's name per request (or the error).
    pub fn requests(&self, n: usize) -> Vec<Result<String, String>> {
        let vip = SocketAddr::new(self.vip, 80);
        self.client.run(move || {
            (0..n)
                .map(|_| crate::http::get(vip, Duration::from_secs(3)))
                .collect()
        })
    }

    /// Sends `n` UDP datagrams to VIP:53 from distinct client ports.
    /// Returns: each answer (or the error).
    pub fn datagrams(&self, n: usize) -> Vec<Result<Vec<u8>, String>> {
        let vip = SocketAddr::new(self.vip, UDP_VS_PORT);
        self.client.run(move || {
            (0..n)
                .map(|i| {
                    crate::http::udp_exchange(
                        vip,
                        format!("ping{i}").as_bytes(),
                        Duration::from_secs(1),
                    )
                })
                .collect()
        })
    }
}

/// Where the reals' HTTP servers listen: every address (so the balancer's probes reach
/// them at the real's own address), port 8080 behind NAT, 80 otherwise.
fn server_bind(kind: Kind, fam: Family) -> SocketAddr {
    let port = if matches!(kind, Kind::Nat | Kind::NatOneNic) {
        NAT_REAL_PORT
    } else {
        80
    };
    let any: IpAddr = match fam {
        Family::V4 => "0.0.0.0".parse().expect("literal"),
        Family::V6 => "::".parse().expect("literal"),
    };
    SocketAddr::new(any, port)
}

/// Probes of the lab's web virtual server unless a [`Spec`] says otherwise: fast, so
/// reals are serving within a second.
pub const FAST_PROBES: &str = "{ interval: 250ms, timeout: 200ms, rise: 1, fall: 2 }";

/// The balancer's interface as it was before [`Lab::delete_lb_interface`].
#[derive(Clone, Debug)]
pub struct Unplugged {
    pub mac: String,
    pub ifindex: u32,
}

/// What [`Lab::write_spec`] writes beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// Reals of the web virtual server (0-based index, weight); `None`: all, weight 1.
    pub reals: Option<Vec<(usize, u32)>>,
    /// The web virtual server's `health_check` (flow mapping); `None`: [`FAST_PROBES`].
    pub health: Option<&'static str>,
    /// More lines for the web virtual server, each indented four spaces.
    pub vs_extra: String,
    /// Real (0-based) that serves as the sorry server instead of as a real.
    pub sorry: Option<usize>,
}

/// Where the lab's real `i` (0-based) records what `xdpvs realserver setup` changed.
pub fn setup_state(dir: &std::path::Path, i: usize) -> PathBuf {
    dir.join(format!("realserver{}.json", i + 1))
}

/// Runs `xdpvs realserver setup <args> --state <state>` in `r`. Returns: its output;
/// panics with it if the command fails.
pub fn realserver_setup(r: &Netns, state: &std::path::Path, args: &[&str]) -> String {
    let bin = crate::daemon::binary();
    let state = state.display().to_string();
    let mut full = vec![bin.to_str().expect("utf-8 path"), "realserver", "setup"];
    full.extend_from_slice(args);
    full.extend(["--state", &state]);
    r.exec(&full)
}

/// Makes `r` a real server for `vip` with `xdpvs realserver setup --apply`: direct
/// routing, or tunnelling with packets arriving on `tunnel_dev`.
pub fn setup_real(r: &Netns, state: &std::path::Path, vip: IpAddr, tunnel_dev: Option<&str>) {
    let vip = vip.to_string();
    let mut args = vec!["--apply", "--vip", &vip];
    if let Some(dev) = tunnel_dev {
        args.extend(["--method", "tunnel", "--interface", dev]);
    }
    realserver_setup(r, state, &args);
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.decaps.clear();
        self.servers.clear();
        self.udp.clear();
        self.passes.clear();
        self.teardown_on_drop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Returns: the MAC address of `dev` in `ns`, as text (`aa:bb:...`).
pub fn mac_of(ns: &Netns, dev: &str) -> String {
    crate::netns::mac_text(crate::netns::mac(ns, dev))
}
