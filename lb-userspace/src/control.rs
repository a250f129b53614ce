//! The control channel: the daemon listens on a Unix socket (mode 0600, root only) and
//! the CLI (`xdpvs status`, `xdpvs reload`, `xdpvs real ...`) talks to it. One JSON
//! request per connection, one JSON line back.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Where the daemon listens unless `control_socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xdpvs/xdpvs.sock";

/// A command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Everything `xdpvs status` shows.
    Status,
    /// Re-read the configuration file (as SIGHUP), reporting the outcome.
    Reload,
    /// A runtime override of one real.
    Real {
        vs: String,
        /// `addr`, `addr:port` or `[v6]:port`.
        real: String,
        action: RealAction,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "weight")]
pub enum RealAction {
    /// Drain: out of the table, established connections continue.
    Disable,
    /// Back in the table (clears `disable`).
    Enable,
    /// Use this weight instead of the file's.
    Weight(u32),
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong (`ok == false`), or a confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: Some(message.into()),
            status: None,
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: Some(message.into()),
            status: None,
        }
    }
}

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
}

/// A failure to reach the daemon or to understand it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no xdpvs daemon is listening on {0} (is `xdpvs run` running? is this the right --socket?)"
    )]
    NotRunning(String),
    #[error("permission denied on {0}: the control socket is root's")]
    Denied(String),
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
}

/// Sends `req` to the daemon at `socket`. Returns: its response.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = socket.display().to_string();
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(p.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(p.clone()),
        _ => ClientError::Io {
            path: p.clone(),
            source: e,
        },
    })?;
    let io = |e| ClientError::Io {
        path: p.clone(),
        source: e,
    };
    // A status walks the connection table; a reload re-reads the file.
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))
}

/// Parses a real as given on the command line: `addr`, `addr:port`, `[v6]:port`.
/// Returns: the address and the port if one was given.
pub fn parse_real(text: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(a) = text.parse::<IpAddr>() {
        return Some((a, None));
    }
    let sa: std::net::SocketAddr = text.parse().ok()?;
    Some((sa.ip(), Some(sa.port())))
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Returns: `addr:port`, or `[addr]:port` for IPv6.
pub fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}

/// Renders `status` as `ipvsadm -L -n` does, with `--stats` columns, or with per-second
/// rates computed against `before` taken `secs` earlier.
pub fn render(status: &Status, stats: bool, rate: Option<(&Status, f64)>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "xdpvs {} ({})\n",
        env!("CARGO_PKG_VERSION"),
        status.config
    ));
    let extra = if rate.is_some() {
        "     Pkts/s    Bytes/s    Conns/s"
    } else if stats {
        "      Pkts      Bytes      Conns"
    } else {
        ""
    };
    out.push_str(&format!(
        "{:<4} {:<29} {:<6} {:<9} Flags\n  -> {:<27} {:>6} {:<14} {:>6}{extra}\n",
        "Prot",
        "LocalAddress:Port",
        "Method",
        "Scheduler",
        "RemoteAddress:Port",
        "Weight",
        "Health",
        "Flows"
    ));
    let prev_vs =
        |name: &str| rate.and_then(|(b, _)| b.virtual_servers.iter().find(|v| v.name == name));
    let cols = |now: &Stats, before: Option<&Stats>| -> String {
        match (rate, before) {
            (Some((_, secs)), Some(b)) => format!(
                " {:>10.1} {:>10} {:>10.1}",
                (now.packets.saturating_sub(b.packets)) as f64 / secs,
                human_bytes(((now.bytes.saturating_sub(b.bytes)) as f64 / secs) as u64),
                (now.new_flows.saturating_sub(b.new_flows)) as f64 / secs
            ),
            (Some(_), None) => format!(" {:>10} {:>10} {:>10}", "-", "-", "-"),
            (None, _) if stats => format!(
                " {:>9} {:>10} {:>10}",
                now.packets,
                human_bytes(now.bytes),
                now.new_flows
            ),
            _ => String::new(),
        }
    };
    for vs in &status.virtual_servers {
        let flags = vs.persistence.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<4} {:<29} {:<6} {:<9} {flags}  ({})\n",
            vs.protocol.to_uppercase(),
            endpoint(vs.address, vs.port),
            vs.method,
            vs.scheduler,
            vs.name
        ));
        let pv = prev_vs(&vs.name);
        if stats || rate.is_some() {
            out.push_str(&format!(
                "  {:<59}{}\n",
                "(virtual server total)",
                cols(&vs.stats, pv.map(|v| &v.stats))
            ));
        }
        for r in &vs.reals {
            let mut health = r.health.clone();
            if r.disabled {
                health.push_str(",disabled");
            }
            if r.sorry {
                health = if r.in_table { "sorry*" } else { "sorry" }.to_string();
            }
            let before = pv.and_then(|v| {
                v.reals
                    .iter()
                    .find(|x| x.address == r.address && x.port == r.port && x.sorry == r.sorry)
                    .map(|x| &x.stats)
            });
            let weight = if r.sorry {
                "-".to_string()
            } else {
                r.weight.to_string()
            };
            out.push_str(&format!(
                "  -> {:<27} {:>6} {:<14} {:>6}{}\n",
                endpoint(r.address, r.port),
                weight,
                health,
                r.flows,
                cols(&r.stats, before)
            ));
        }
    }
    out.push_str(&format!(
        "Connection table: {} of {} entries\n",
        status.flow_table_entries, status.flow_table_size
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        for r in [
            Request::Status,
            Request::Reload,
            Request::Real {
                vs: "web".into(),
                real: "10.0.1.1:80".into(),
                action: RealAction::Weight(3),
            },
            Request::Real {
                vs: "web".into(),
                real: "[2001:db8::1]:80".into(),
                action: RealAction::Disable,
            },
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r, "{text}");
        }
    }

    #[test]
    fn reals_parse_with_and_without_port() {
        assert_eq!(
            parse_real("10.0.1.1"),
            Some(("10.0.1.1".parse().unwrap(), None))
        );
        assert_eq!(
            parse_real("10.0.1.1:8080"),
            Some(("10.0.1.1".parse().unwrap(), Some(8080)))
        );
        assert_eq!(
            parse_real("[2001:db8::1]:80"),
            Some(("2001:db8::1".parse().unwrap(), Some(80)))
        );
        assert_eq!(parse_real("nope"), None);
    }

    #[test]
    fn no_daemon_is_said_plainly() {
        let e = request(Path::new("/nonexistent/xdpvs.sock"), &Request::Status).unwrap_err();
        assert!(
            e.to_string().contains("no xdpvs daemon is listening"),
            "{e}"
        );
    }
}
