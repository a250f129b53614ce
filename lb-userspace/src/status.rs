//! What `xdpvs status` and a metrics scrape show: the daemon's view of every virtual
//! server and real, with the data path's counters. Plain data (serialised as the control
//! protocol's JSON); assembled by the daemon, rendered by `control::render`, encoded by
//! `metrics`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Counters as the data path keeps them, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// A real (or the sorry server) in `xdpvs status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    pub address: IpAddr,
    pub port: u16,
    /// Weight in use (runtime override, else the file's).
    pub weight: u32,
    /// The file's weight.
    pub file_weight: u32,
    /// `up` or `down` (`up` for unprobed reals and the sorry server).
    pub health: String,
    /// Probe type (`tcp`, `http`, `none`).
    pub check: String,
    /// Taken out by `xdpvs real disable`.
    pub disabled: bool,
    /// In the Maglev table: takes new connections.
    pub in_table: bool,
    pub sorry: bool,
    /// Connection table entries pinned to this real.
    pub flows: u64,
    pub stats: Stats,
    /// Last probe: `ok` and its latency, or the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency_ms: Option<f64>,
}

/// A virtual server in `xdpvs status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VsStatus {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub method: String,
    pub scheduler: String,
    /// `persistent 300s /24`, if on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<String>,
    pub stats: Stats,
    pub reals: Vec<RealStatus>,
}

/// Everything `xdpvs status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub config: String,
    pub virtual_servers: Vec<VsStatus>,
    /// Packets per data path verdict reason.
    pub verdicts: std::collections::BTreeMap<String, u64>,
    /// Connection table entries in use, and its size.
    pub flow_table_entries: u64,
    pub flow_table_size: u64,
    /// Opening SYNs balanced without a connection-table lookup because their CPU saw
    /// more than `syn_flood_rate` SYNs a second (decision 0025), since the map was made.
    #[serde(default)]
    pub syns_past_flow_table: u64,
    /// The routing table VIPs are announced in (config `announce`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_table: Option<u32>,
    /// Taken out by `xdpvs withdraw`: `xdpvs ready` fails, nothing is announced.
    #[serde(default)]
    pub withdrawn: bool,
    /// Per VIP, whether this node takes its traffic and why (see `announce::plan`);
    /// with `announce_table`, the VIPs that have a route there.
    #[serde(default)]
    pub announcements: Vec<Announcement>,
}

/// Whether this node should take a VIP's traffic, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub address: IpAddr,
    pub announced: bool,
    pub reason: String,
}

/// Returns: `addr:port`, or `[addr]:port` for IPv6.
pub fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}
