//! Configuration: the YAML file, its validation, and the typed model the daemon runs on.
//!
//! Loading never stops at the first problem: every error is collected, each with the
//! file, line, column and field path, so an operator fixes a file in one pass.

pub mod dns;
mod locate;
mod pem;
mod raw;
mod validate;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub use dns::{DnsQuestion, QueryType};
pub use locate::{Locator, Pos};
use rustls_pki_types::{CertificateDer, ServerName};

/// Default Maglev table size (slots): prime, and about 650 slots per real at 100 reals.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest real weight accepted (LVS's limit too).
pub const MAX_WEIGHT: u32 = 65535;
/// Where the daemon's control socket is unless `control_socket` says otherwise (for the
/// instance `default`; another instance's is [`default_socket`]).
pub const DEFAULT_SOCKET: &str = "/run/xdpvs/xdpvs.sock";
/// The instance a daemon is unless `instance` says otherwise.
pub const DEFAULT_INSTANCE: &str = "default";
/// Default `syn_flood_rate`: opening SYNs a second on one CPU.
pub const DEFAULT_SYN_FLOOD_RATE: u32 = 10_000;
/// Where the data path is pinned unless `pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdpvs";

/// Returns: the control socket of instance `instance` unless the file names one: two
/// daemons of two instances never share a socket by accident.
pub fn default_socket(instance: &str) -> PathBuf {
    if instance == DEFAULT_INSTANCE {
        PathBuf::from(DEFAULT_SOCKET)
    } else {
        PathBuf::from(format!("/run/xdpvs/{instance}.sock"))
    }
}

/// Returns: whether `name` can name an instance (it becomes a directory and a file
/// name): 1 to 32 letters, digits, `-` or `_`.
pub fn valid_instance(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// How XDP is attached (also `--xdp-mode` of `xdpvs realserver decap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic (SKB) mode otherwise.
    Auto,
    /// Driver mode only; fail if the driver lacks XDP.
    Native,
    /// Generic mode: works on any interface, slower.
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Returns: the IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Direct routing: destination MAC rewritten, replies bypass the balancer.
    Dr,
    /// NAT: destination address and port rewritten; replies return through the balancer.
    Nat,
    /// IP-in-IP tunnel to the real; replies bypass the balancer.
    Tunnel,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Dr => "dr",
            Method::Nat => "nat",
            Method::Tunnel => "tunnel",
        })
    }
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Add each VIP to the first interface (so the kernel answers ARP for it) and remove
    /// it on exit. False when something else (keepalived) owns the VIPs.
    pub manage_vips: bool,
    /// Connection table entries.
    pub flow_table_size: u32,
    /// Opening SYNs a second on one CPU above which SYNs are balanced without looking
    /// up the connection table (decision 0025); 0: never.
    pub syn_flood_rate: u32,
    /// Unix socket of the control channel (`xdpvs status`, `xdpvs real ...`).
    pub control_socket: PathBuf,
    /// This daemon's name on the host: its pins live under `pin_path/instance/`.
    pub instance: String,
    /// The bpffs directory the data path is pinned under (one directory per instance).
    pub pin_path: PathBuf,
    /// Where Prometheus metrics are served (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the VIPs this node should take traffic for are announced, if anywhere.
    pub announce: Option<Announce>,
    pub virtual_servers: Vec<VirtualServer>,
}

/// Announcing VIPs to the routing layer (decision 0006): while this node should take a
/// VIP's traffic, the daemon keeps a route for it in a kernel routing table of its own,
/// which a routing daemon (bird, FRR) exports by BGP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The kernel routing table (not 0, nor the kernel's own 253 to 255).
    pub table: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualServer {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub method: Method,
    /// Maglev table size, a prime.
    pub table_size: u32,
    /// Tunnel method: the outer source address (the VS's own, else the global one of
    /// the VIP's family). `None` for other methods.
    pub tunnel_source: Option<IpAddr>,
    /// Source-IP persistence, if on.
    pub persistence: Option<Persistence>,
    /// Where new flows go while no real takes them.
    pub sorry_server: Option<SorryServer>,
    /// Reals that must take new flows (be in the table) for this node to take traffic
    /// for the virtual server (`xdpvs ready`, for keepalived or a routing daemon).
    pub min_healthy: u32,
    /// Takes fragmented datagrams: every fragment to its address and protocol is
    /// balanced by addresses only, so all fragments of a datagram reach one real (NAT
    /// translates the first by its ports, the others by address: decision 0016). At
    /// most one virtual server per address and protocol.
    pub fragments: bool,
    pub real_servers: Vec<RealServer>,
}

impl VirtualServer {
    /// The one way a real's configuration is found from its address and port (which
    /// validation keeps unique among a virtual server's reals).
    /// Returns: real `address:port` of this virtual server, if it has one.
    pub fn real_server(&self, address: IpAddr, port: u16) -> Option<&RealServer> {
        self.real_servers
            .iter()
            .find(|r| r.address == address && r.port == port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RealServer {
    pub address: IpAddr,
    pub port: u16,
    /// Relative share of new flows; 0 takes no new flows.
    pub weight: u32,
    /// The probe of this real: the virtual server's `health_check` with the real's own
    /// fields applied over it.
    pub health_check: HealthCheck,
}

/// Source-IP persistence (LVS `-p` with `-M`): clients of one network stick to a real.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// An entry lives this long after its network's last packet.
    pub timeout: Duration,
    /// Prefix length applied to the client address (32 / 128: each client on its own).
    pub netmask: u8,
}

/// The server that takes new flows while no real does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SorryServer {
    pub address: IpAddr,
    pub port: u16,
}

/// How a real's health is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckType {
    /// Not probed: always healthy.
    None,
    /// A TCP connection is accepted.
    Tcp,
    /// A SYN is answered with a SYN-ACK (from a raw socket; the kernel resets it).
    TcpHalfOpen,
    /// An HTTP GET answers with an expected status.
    Http,
    /// The same over TLS, the real's certificate verified unless told otherwise.
    Https,
    /// A DNS query over UDP is answered, without error, to the question asked.
    Dns,
}

impl fmt::Display for CheckType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckType::None => "none",
            CheckType::Tcp => "tcp",
            CheckType::TcpHalfOpen => "tcp_half_open",
            CheckType::Http => "http",
            CheckType::Https => "https",
            CheckType::Dns => "dns",
        })
    }
}

/// A real's probe, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckType,
    /// Port probed (the real's port unless set).
    pub port: u16,
    /// HTTP: request path.
    pub path: String,
    /// HTTP: Host header (the real's address unless set).
    pub host: Option<String>,
    /// HTTP: accepted status codes, as inclusive ranges.
    pub expect_status: Vec<(u16, u16)>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy real healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy real unhealthy.
    pub fall: u32,
    /// HTTPS: how the real's certificate is checked.
    pub verify: Verify,
    /// DNS: the question asked.
    pub dns: DnsQuestion,
}

/// How an https probe checks the real's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Against the system's trusted roots (Debian: `/etc/ssl/certs`, from
    /// `ca-certificates`).
    SystemRoots,
    /// Against the certificates of `ca_file` only (an internal CA).
    CaFile(CaFile),
    /// Not at all (`insecure: true`): any certificate for any name is taken.
    Insecure,
}

/// The certificates of a `ca_file`, read and checked when the configuration is loaded
/// (a reload reads the file again, and a changed file restarts the probes using it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CaFile {
    pub path: PathBuf,
    /// DER, in file order; shared by every real whose probe names the file.
    pub certs: Arc<[CertificateDer<'static>]>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaFile({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// The name an https probe sends as SNI and checks the certificate against: `host`
/// without its port, if any. An IP address is checked against the certificate's IP
/// addresses and not sent (SNI carries DNS names only).
/// Returns: the name, or why `host` cannot be one.
pub fn tls_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = if let Some(v6) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        v6.split(']').next().unwrap_or_default()
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
            _ => host,
        }
    };
    ServerName::try_from(bare)
        .map(|n| n.to_owned())
        .map_err(|_| format!("`{bare}` is not a DNS name or an IP address"))
}

impl HealthCheck {
    /// Returns: whether `status` is accepted.
    pub fn status_ok(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Parses a duration such as `500ms`, `2s`, `5m`, `1h`.
/// Returns: the duration, or what is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 2s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "" => return Err(format!("`{text}` needs a unit: ms, s, m or h")),
        _ => return Err(format!("`{text}` has an unknown unit; use ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Formats a duration the way the file writes it (`500ms`, `2s`, `5m`).
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    /// Field path, e.g. `virtual_servers[0].real_servers[1].weight`; empty for the file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Checks the system facts the file depends on (interfaces exist). Separate from the
/// pure parse so unit tests need no system.
pub trait SystemFacts {
    fn interface_exists(&self, name: &str) -> bool;
}

/// Facts of no host: every interface exists. For checking a file for what it says
/// (`xdpvs convert`'s output) and for tests.
pub struct AnyInterface;

impl SystemFacts for AnyInterface {
    fn interface_exists(&self, _: &str) -> bool {
        true
    }
}

/// The running host, read through sysfs (nothing is changed).
pub struct Host;

impl SystemFacts for Host {
    fn interface_exists(&self, name: &str) -> bool {
        !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
    }
}

/// Reads and validates a configuration file. A file that cannot be read has no line to
/// name; one that is not UTF-8 is named at its first bad byte.
pub fn load(path: &Path, facts: &dyn SystemFacts) -> Result<Config, ConfigErrors> {
    let error = |pos, message| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            pos,
            field: String::new(),
            message,
        }])
    };
    let bytes = std::fs::read(path).map_err(|e| error(None, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let pos = Pos {
            line: 1 + good.iter().filter(|&&b| b == b'\n').count(),
            // Characters before the bad byte on its line, plus one.
            col: 1 + String::from_utf8_lossy(&good[line_start..]).chars().count(),
        };
        error(
            Some(pos),
            "not UTF-8: the file must be UTF-8 text (a YAML file may not hold other bytes)"
                .to_string(),
        )
    })?;
    parse(path, &text, facts)
}

/// Validates configuration text; `path` only labels the errors.
pub fn parse(path: &Path, text: &str, facts: &dyn SystemFacts) -> Result<Config, ConfigErrors> {
    validate::Validator::new(path, text, facts).run()
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
