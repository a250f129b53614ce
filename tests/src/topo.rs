//! The direct-routing topology: a client, the balancer and N reals on one L2 segment
//! (a bridge in a "switch" namespace). Everything is removed on drop.
//!
//! ```text
//!  client 10.100.0.2 ─┐
//!  lb     10.100.0.1 ─┤ bridge ├─ real1 10.100.0.11 (VIP on lo)
//!                     │        ├─ real2 10.100.0.12 ...
//! ```

use std::{net::SocketAddr, path::PathBuf};

use aya::{programs::XdpMode, Ebpf};
use lb_common::maps::PROG_PASS;
use xdpvs::dataplane::bpf;

use crate::{
    http::NamedServer,
    netns::{unique_prefix, veth, Netns},
};

pub const VIP: &str = "10.100.0.100";
pub const LB_ADDR: &str = "10.100.0.1";
pub const CLIENT_ADDR: &str = "10.100.0.2";

/// Address of real `i` (0-based).
pub fn real_addr(i: usize) -> String {
    format!("10.100.0.{}", 11 + i)
}

pub struct DrTopology {
    pub prefix: String,
    pub dir: PathBuf,
    /// The balancer's interface (in `lb`).
    pub lb_if: String,
    pub servers: Vec<NamedServer>,
    /// Holds the pass program on the switch port facing the balancer.
    _pass: Option<Ebpf>,
    // Field order is drop order: namespaces last.
    pub client: Netns,
    pub lb: Netns,
    pub reals: Vec<Netns>,
    pub switch: Netns,
}

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

impl DrTopology {
    /// Builds the segment with `n` reals, each serving HTTP on port 80 with its name
    /// (`real1`, `real2`, ...), holding the VIP on loopback with arp_ignore=1 and
    /// arp_announce=2.
    pub fn new(n: usize) -> Self {
        crate::require_root();
        let p = unique_prefix();
        let dir = std::env::temp_dir().join(format!("{p}-xdpvs"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let switch = Netns::new(&format!("{p}-sw"));
        let client = Netns::new(&format!("{p}-c"));
        let lb = Netns::new(&format!("{p}-lb"));
        let reals: Vec<Netns> = (0..n)
            .map(|i| Netns::new(&format!("{p}-r{}", i + 1)))
            .collect();
        switch.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec(&["ip", "link", "set", "br0", "up"]);
        let plug = |ns: &Netns, dev: &str, port: &str, addr: &str| {
            veth(dev, ns, port, &switch);
            switch.exec(&["ip", "link", "set", port, "master", "br0"]);
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
        };
        plug(&client, &format!("{p}c"), &format!("{p}cs"), CLIENT_ADDR);
        let lb_if = format!("{p}l");
        plug(&lb, &lb_if, &format!("{p}ls"), LB_ADDR);
        for (i, r) in reals.iter().enumerate() {
            let dev = format!("{p}r{}", i + 1);
            plug(r, &dev, &format!("{p}r{}s", i + 1), &real_addr(i));
            crate::lab::hold_vip(r, &dev, VIP.parse().expect("VIP"));
        }
        let pass = attach_pass(&switch, &format!("{p}ls"));
        let servers = reals
            .iter()
            .enumerate()
            .map(|(i, r)| {
                NamedServer::start(
                    r,
                    format!("{VIP}:80").parse().expect("addr"),
                    &format!("real{}", i + 1),
                )
            })
            .collect();
        Self {
            prefix: p,
            dir,
            lb_if,
            servers,
            _pass: Some(pass),
            client,
            lb,
            reals,
            switch,
        }
    }

    /// Writes a configuration file for one TCP virtual server on VIP:80 with the given
    /// weights (one per real), and returns its path.
    pub fn write_config(&self, weights: &[u32]) -> PathBuf {
        let mut y = format!(
            "interfaces: [{}]\nxdp_mode: auto\nvirtual_servers:\n  - name: web\n    address: {VIP}\n    port: 80\n    protocol: tcp\n    method: dr\n    real_servers:\n",
            self.lb_if
        );
        for (i, w) in weights.iter().enumerate() {
            y.push_str(&format!(
                "      - address: {}\n        weight: {w}\n",
                real_addr(i)
            ));
        }
        let path = self.dir.join("xdpvs.yaml");
        std::fs::write(&path, y).expect("write config");
        path
    }

    /// Sends `n` HTTP requests from the client to VIP:80, one connection each.
    /// Returns: the answering server's name per request (or the error).
    pub fn requests(&self, n: usize) -> Vec<Result<String, String>> {
        let vip: SocketAddr = format!("{VIP}:80").parse().expect("addr");
        self.client.run(move || {
            (0..n)
                .map(|_| crate::http::get(vip, std::time::Duration::from_secs(3)))
                .collect()
        })
    }
}

impl Drop for DrTopology {
    fn drop(&mut self) {
        self.servers.clear();
        self._pass.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
