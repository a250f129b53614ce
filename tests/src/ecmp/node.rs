//! A balancer node of the scale-out lab: its namespace, bpffs, xdpvs instance and
//! bird, and what a test asks of it (status, counters, its connection table, the
//! routes its xdpvs announces).

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::{maps::FLOWS, PROTO_TCP};
use serde_json::Value;

use super::{bird::Bird, ANNOUNCE_TABLE, REALS, VS_NAMES};
use crate::{
    daemon::{self, Daemon},
    netns::Netns,
    pins::{self, Bpffs},
};

/// A balancer node: its namespace, bpffs, xdpvs instance and bird. On drop: xdpvs
/// stopped, bird stopped, the instance torn down, the bpffs unmounted, the namespace
/// deleted.
pub struct Node {
    /// 1-based: node `n` has address `10.100.0.n` and bird protocol `lb<n>` on the router.
    pub n: usize,
    pub addr: IpAddr,
    pub dev: String,
    /// Its port on the bridge (down: the node is cut off).
    pub port: String,
    pub instance: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub bird_config: PathBuf,
    pub daemon: Option<Daemon>,
    pub bird: Option<Bird>,
    /// xdpvs starts so far: each logs to `node<n>.<start>.log`.
    pub(super) starts: usize,
    /// The lab's directory (configurations, logs, sockets).
    pub(super) dir: PathBuf,
    // Field order is drop order: the bpffs after the teardown in `drop`, the namespace last.
    pub bpffs: Bpffs,
    pub ns: Netns,
}

impl Node {
    /// Runs `xdpvs <args>` in the node's namespace. Returns: exit code, stdout, stderr.
    pub fn xdpvs(&self, args: &[&str]) -> (Option<i32>, String, String) {
        daemon::cli(&self.ns, args)
    }

    /// Runs `xdpvs <args> --socket <the node's>`. Returns: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let socket = self.socket.display().to_string();
        let mut full = args.to_vec();
        full.extend(["--socket", &socket]);
        self.xdpvs(&full)
    }

    /// `xdpvs status --stats --json` on the node, parsed. Panics if it fails.
    pub fn status(&self) -> Value {
        let (code, out, err) = self.cli(&["status", "--stats", "--json"]);
        assert_eq!(code, Some(0), "node{} status: {out}{err}", self.n);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("node{} status: {e}: {out}", self.n))
    }

    /// Returns: the new flows the node's data path has counted for virtual server `vs`.
    pub fn new_flows(&self, vs: &str) -> u64 {
        let s = self.status();
        vs_status(&s, vs)["stats"]["new_flows"]
            .as_u64()
            .unwrap_or_else(|| panic!("node{}: no new_flows for {vs}: {s}", self.n))
    }

    /// Returns: whether the node's connection table holds the TCP connection from
    /// `client` to `vip` (it went through this node).
    pub fn has_flow(&self, client: SocketAddr, vip: SocketAddr) -> bool {
        pins::lookup(&self.flows_pin(), &pins::flow_key(client, vip, PROTO_TCP)).is_some()
    }

    /// Returns: the key of every connection in the node's connection table (see
    /// `pins::flow_key`), read in one dump.
    pub fn flow_keys(&self) -> HashSet<Vec<u8>> {
        pins::dump(&self.flows_pin())
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    fn flows_pin(&self) -> PathBuf {
        self.bpffs
            .path
            .join(&self.instance)
            .join("maps")
            .join(FLOWS)
    }

    /// Starts xdpvs on the node (its log: `node<n>.<start>.log`) and waits until every
    /// real of every virtual server is in its table (its probes passed).
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "node{}: xdpvs already runs", self.n);
        self.starts += 1;
        let log = self.dir.join(format!("node{}.{}.log", self.n, self.starts));
        let d = Daemon::start_as(&self.ns, &self.config, &daemon::binary(), &log);
        self.daemon = Some(d);
        let mut last = Value::Null;
        let all_in = crate::wait_for(Duration::from_secs(20), || {
            last = self.status();
            VS_NAMES.iter().all(|vs| {
                vs_status(&last, vs)["reals"]
                    .as_array()
                    .is_some_and(|r| r.len() == REALS && r.iter().all(|r| r["in_table"] == true))
            })
        });
        assert!(
            all_in,
            "node{}: not every real in the tables within 20 s: {last}\n{}",
            self.n,
            self.daemon_log()
        );
    }

    /// Stops xdpvs with SIGTERM. Returns: its exit code.
    pub fn stop_daemon(&mut self) -> Option<i32> {
        self.daemon.take().expect("xdpvs running").stop()
    }

    /// Kills xdpvs with SIGKILL (a crash).
    pub fn kill_daemon(&mut self) {
        self.daemon.take().expect("xdpvs running").kill();
    }

    /// Returns: the log of the node's latest xdpvs.
    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// Starts the node's bird.
    pub fn start_bird(&mut self) {
        assert!(self.bird.is_none(), "node{}: bird already runs", self.n);
        let socket = self.dir.join(format!("node{}.bird.ctl", self.n));
        let log = self.dir.join(format!("node{}.bird.log", self.n));
        self.bird = Some(Bird::start(&self.ns, &self.bird_config, &socket, &log));
    }

    /// Returns: the VIPs xdpvs announces in the node's announce table.
    pub fn announced(&self) -> Vec<String> {
        crate::netns::announced(&self.ns, ANNOUNCE_TABLE)
    }

    /// `xdpvs teardown` of the node's instance, by name and pin path.
    fn teardown_on_drop(&self) {
        daemon::teardown(&self.ns, &self.instance, &self.bpffs.path);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.daemon.take();
        self.bird.take();
        self.teardown_on_drop();
    }
}

/// Returns: virtual server `name` in a parsed `xdpvs status --json`; panics if absent.
pub fn vs_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["virtual_servers"]
        .as_array()
        .and_then(|v| v.iter().find(|vs| vs["name"] == name))
        .unwrap_or_else(|| panic!("no virtual server {name} in {status}"))
}
