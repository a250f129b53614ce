//! bird2 in the scale-out lab: the node's and the router's bird.conf, each from one
//! template (docs/scale-out.md shows them rendered, and a test checks that it still
//! does), and bird itself as a child process in a namespace.

use std::{
    fs::OpenOptions,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::netns::Netns;

/// A node's bird2: the values [`node_bird_config`] puts in its template.
pub struct NodeBird<'a> {
    /// Where bird logs: `syslog`, or a file name in double quotes.
    pub log: &'a str,
    /// The node's address on the router's segment; also its router id.
    pub address: IpAddr,
    /// The interface facing the router (BFD runs on it).
    pub interface: &'a str,
    pub node_as: u32,
    pub router: IpAddr,
    pub router_as: u32,
    /// The kernel table xdpvs writes (`announce: { table: N }`).
    pub table: u32,
}

/// Returns: a balancer node's bird.conf. docs/scale-out.md shows it, rendered with the
/// values of its example; a test checks that it still does.
pub fn node_bird_config(c: &NodeBird) -> String {
    let NodeBird {
        log,
        address,
        interface,
        node_as,
        router,
        router_as,
        table,
    } = c;
    format!(
        r#"log {log} all;
router id {address};

protocol device {{
}}

# The VIPs xdpvs announces, in a bird table of their own: nothing else is exported
# from it, and nothing from it reaches the node's main kernel table.
ipv4 table vips;

# Learns the blackhole routes xdpvs keeps in kernel table {table}, one per VIP it
# announces, and forgets each as soon as xdpvs deletes it.
protocol kernel xdpvs {{
	kernel table {table};
	learn;
	ipv4 {{
		table vips;
		import all;
		export none;
	}};
}}

protocol bfd {{
	interface "{interface}" {{
		min rx interval 100 ms;
		min tx interval 100 ms;
		multiplier 3;
	}};
}}

protocol bgp uplink {{
	local {address} as {node_as};
	neighbor {router} as {router_as};
	bfd on;
	hold time 3;
	keepalive time 1;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 5;
	ipv4 {{
		table vips;
		import none;
		export where proto = "xdpvs";
	}};
}}
"#
    )
}

/// The router's bird2: the values [`router_bird_config`] puts in its template.
pub struct RouterBird<'a> {
    /// Where bird logs: `syslog`, or a file name in double quotes.
    pub log: &'a str,
    /// The router's address on the balancers' segment; also its router id.
    pub address: IpAddr,
    /// The interface facing the balancers (BFD runs on it).
    pub interface: &'a str,
    pub router_as: u32,
    pub node_as: u32,
    /// The prefix VIPs come from: a node's announcement of anything else is refused.
    pub vip_range: &'a str,
    /// Every balancer node: its protocol name and address.
    pub nodes: &'a [(String, IpAddr)],
}

/// Returns: the router's bird.conf, with one BGP session per node. docs/scale-out.md
/// shows it, rendered with the values of its example; a test checks that it still does.
pub fn router_bird_config(c: &RouterBird) -> String {
    let RouterBird {
        log,
        address,
        interface,
        router_as,
        node_as,
        vip_range,
        nodes,
    } = c;
    let mut conf = format!(
        r#"log {log} all;
router id {address};

protocol device {{
}}

# One kernel route per VIP with a next hop per node announcing it (ECMP).
protocol kernel {{
	merge paths on;
	ipv4 {{
		import none;
		export where source = RTS_BGP;
	}};
}}

protocol bfd {{
	interface "{interface}" {{
		min rx interval 100 ms;
		min tx interval 100 ms;
		multiplier 3;
	}};
}}

# A node whose session drops is withdrawn at once: no graceful restart keeps its
# routes while it is away.
template bgp balancer {{
	local {address} as {router_as};
	bfd on;
	hold time 3;
	keepalive time 1;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 5;
	graceful restart off;
	ipv4 {{
		import where net ~ [ {vip_range}{{32,32}} ];
		export none;
	}};
}}
"#
    );
    for (name, addr) in nodes.iter() {
        conf.push_str(&format!(
            "\nprotocol bgp {name} from balancer {{\n\tneighbor {addr} as {node_as};\n}}\n"
        ));
    }
    conf
}

/// A bird2 daemon in a namespace, in the foreground, with a control socket of its own;
/// stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Bird {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Bird {
    /// Runs `bird -f -c <config> -s <socket>` in `ns`, its stderr appended to `log`
    /// (the configuration logs there too), and waits until it answers on the socket.
    /// Panics with the log if it exits or does not answer within 10 s.
    pub fn start(ns: &Netns, config: &Path, socket: &Path, log: &Path) -> Self {
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("bird log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
            .arg(config)
            .arg("-s")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawning bird");
        let mut b = Bird {
            child: Some(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let up = crate::wait_for(Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = b.child.as_mut().map(|c| c.try_wait()) {
                panic!("bird exited ({status}) at start:\n{}", b.log_text());
            }
            b.birdc(&["show", "status"])
                .is_some_and(|s| s.contains("Daemon is up and running"))
        });
        assert!(up, "bird did not answer within 10 s:\n{}", b.log_text());
        b
    }

    /// Runs `birdc -s <socket> <args>`. Returns: its output, or `None` if it failed.
    pub fn birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops bird with SIGTERM (it closes its sessions: the peer withdraws at once),
    /// SIGKILL after 5 s, and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on our own child's pid (`ip netns exec` execs bird in place).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let ended = crate::wait_for(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ended {
            let _ = child.kill();
        }
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
    }
}
