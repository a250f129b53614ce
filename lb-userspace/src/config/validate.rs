//! From text to a typed [`Config`], collecting every error with its position.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::http::uri::PathAndQuery;
use lb_common::maps::{MAX_REALS, MAX_VS};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{
    locate::{Locator, Pos, MAX_ALIAS_NODES, MAX_DEPTH},
    parse_duration,
    raw::{
        RawAddrs, RawCheckType, RawConfig, RawDuration, RawHealthCheck, RawMethod, RawPersistence,
        RawProtocol, RawQueryType, RawRealServer, RawScheduler, RawSorryServer, RawStatus,
        RawStatusItem, RawVirtualServer, RawXdpMode,
    },
    CaFile, CheckType, Config, ConfigError, ConfigErrors, DnsQuestion, HealthCheck, Method,
    Persistence, Protocol, QueryType, RealServer, SorryServer, SystemFacts, Verify, VirtualServer,
    XdpMode, DEFAULT_TABLE_SIZE, MAX_WEIGHT,
};

/// Probe defaults (the example values, and keepalived's habits).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// HTTP statuses accepted unless `expect_status` says otherwise: 2xx and 3xx.
pub const DEFAULT_EXPECT: (u16, u16) = (200, 399);
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_RISE_FALL: u32 = 1000;
const MIN_PERSIST: Duration = Duration::from_secs(1);
const MAX_PERSIST: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which level of the file set a probe field: the virtual server's `health_check` or
/// the real's own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Vs,
    Real,
}

/// Smallest connection table accepted.
const MIN_FLOW_TABLE: u32 = 1024;
/// Largest connection table accepted: 4,194,304 entries (with the two maps sized like
/// it, about 1 GiB of kernel memory; see `cargo xtask bench`'s memory lines).
const MAX_FLOW_TABLE: u32 = 1 << 22;

pub struct Validator<'a> {
    file: PathBuf,
    text: &'a str,
    loc: Locator,
    facts: &'a dyn SystemFacts,
    errors: Vec<ConfigError>,
    /// Each `ca_file` read so far (text as written -> certificates or what is wrong), so
    /// that a file named by a virtual server is read once, not once per real.
    ca_files: HashMap<String, Result<CaFile, String>>,
}

/// Returns: whether `n` is prime (trial division; n is at most 2^32).
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// serde_path_to_error names a key that is not a string (`null:`, `1:`, a list) `?`,
/// which no field of the file is called (the fuzzer's find). Returns: the path of the
/// mapping that holds the key and a message that says what is wrong, or `None` when
/// `field` has no such key.
fn odd_key(field: &str, message: &str) -> Option<(String, String)> {
    let ends_segment = |rest: &str| rest.is_empty() || rest.starts_with(['.', '[']);
    let parent = if field == "?" || (field.starts_with('?') && ends_segment(&field[1..])) {
        ""
    } else {
        let (i, _) = field
            .match_indices(".?")
            .find(|(i, _)| ends_segment(&field[i + 2..]))?;
        &field[..i]
    };
    Some((
        parent.to_string(),
        format!(
            "a key is not a field name (null, a number, a list or a mapping as a key): {message}"
        ),
    ))
}

/// Words an error about the file as a whole (no field to name): YAML that does not
/// parse, or a document that is not a mapping of settings.
fn file_level(serde_message: &str) -> String {
    if serde_message.starts_with("invalid type") {
        format!("the file must be a mapping of settings (interfaces:, virtual_servers:, ...): {serde_message}")
    } else {
        format!("malformed YAML: {serde_message}")
    }
}

impl<'a> Validator<'a> {
    pub fn new(file: &Path, text: &'a str, facts: &'a dyn SystemFacts) -> Self {
        Self {
            file: file.to_owned(),
            text,
            loc: Locator::new(text),
            facts,
            errors: Vec::new(),
            ca_files: HashMap::new(),
        }
    }

    fn error_at(&mut self, field: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        let pos = self.loc.find(field);
        self.error_at(field, Some(pos), message);
    }

    /// Reports a serde error at `prefix` + the path serde reached. For an unknown field
    /// the field itself is located, since the path names only its container.
    fn serde_error(&mut self, prefix: &str, path: &serde_path_to_error::Path, message: String) {
        let mut field = join(prefix, &path.to_string());
        if let Some((parent, message)) = odd_key(&field, &message) {
            self.error(&parent, message);
            return;
        }
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            if !field.ends_with(name) {
                field = join(&field, name);
            }
        }
        self.error(&field, message);
    }

    /// Deserialises one node, reporting failure at its position.
    fn item<T: DeserializeOwned>(&mut self, prefix: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().clone();
                self.serde_error(prefix, &path, e.into_inner().to_string());
                None
            }
        }
    }

    pub fn run(mut self) -> Result<Config, ConfigErrors> {
        if let Some(pos) = self.loc.too_deep() {
            self.error_at(
                "",
                Some(pos),
                format!("malformed YAML: lists and mappings nested more than {MAX_DEPTH} deep (the configuration needs 6)"),
            );
            return Err(ConfigErrors(self.errors));
        }
        if let Some(pos) = self.loc.alias_bomb() {
            self.error_at(
                "",
                Some(pos),
                format!("malformed YAML: aliases here expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?)"),
            );
            return Err(ConfigErrors(self.errors));
        }
        let de = serde_yaml::Deserializer::from_str(self.text);
        let raw: RawConfig = match serde_path_to_error::deserialize(de) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().clone();
                let inner = e.into_inner();
                // The text is not YAML: no field is to blame, whatever serde reached.
                let syntax = self.loc.syntax_error();
                let field = if syntax.is_some() {
                    String::new()
                } else {
                    join("", &path.to_string())
                };
                let pos = inner.location().map(|l| Pos {
                    line: l.line(),
                    col: l.column(),
                });
                let mut msg = inner.to_string();
                // serde_yaml appends " at line L column C"; the position is already shown.
                if let Some(i) = msg.find(" at line ") {
                    msg.truncate(i);
                }
                let (field, mut msg) = match odd_key(&field, &msg) {
                    Some((parent, m)) if parent.is_empty() => {
                        // A top-level key: the file's, at serde's position.
                        self.error_at(
                            "",
                            Some(pos.or(syntax).unwrap_or(Pos { line: 1, col: 1 })),
                            m,
                        );
                        return Err(ConfigErrors(self.errors));
                    }
                    Some((parent, m)) => (parent, m),
                    None => (field, msg),
                };
                let pos = pos.or(syntax).unwrap_or_else(|| self.loc.find(&field));
                if field.is_empty() {
                    msg = file_level(&msg);
                }
                self.error_at(&field, Some(pos), msg);
                return Err(ConfigErrors(self.errors));
            }
        };
        let config = self.config(raw);
        if self.errors.is_empty() {
            Ok(config)
        } else {
            self.errors.sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
            // A virtual server's probe is checked once per real: report each error once.
            let mut seen = HashSet::new();
            self.errors
                .retain(|e| seen.insert((e.field.clone(), e.message.clone())));
            Err(ConfigErrors(self.errors))
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        if raw.interfaces.is_empty() {
            self.error(
                "interfaces",
                "at least one interface is required (XDP attaches to each)",
            );
        }
        let mut seen = HashSet::new();
        for (i, name) in raw.interfaces.iter().enumerate() {
            let field = format!("interfaces[{i}]");
            if !seen.insert(name.as_str()) {
                self.error(&field, format!("interface `{name}` is listed twice"));
            } else if !self.facts.interface_exists(name) {
                self.error(
                    &field,
                    format!("interface `{name}` does not exist on this host"),
                );
            }
        }
        let flow_table_size = raw
            .flow_table_size
            .unwrap_or(lb_common::maps::DEFAULT_FLOW_ENTRIES);
        if !(MIN_FLOW_TABLE..=MAX_FLOW_TABLE).contains(&flow_table_size) {
            self.error(
                "flow_table_size",
                format!("{flow_table_size} is out of range {MIN_FLOW_TABLE}..={MAX_FLOW_TABLE}"),
            );
        }
        let instance = raw
            .instance
            .unwrap_or_else(|| super::DEFAULT_INSTANCE.to_string());
        if !super::valid_instance(&instance) {
            self.error(
                "instance",
                format!("`{instance}` must be 1 to 32 letters, digits, `-` or `_`"),
            );
        }
        let pin_path = PathBuf::from(raw.pin_path.as_deref().unwrap_or(super::DEFAULT_PIN_PATH));
        if !pin_path.is_absolute() {
            self.error(
                "pin_path",
                format!("`{}` must be an absolute path", pin_path.display()),
            );
        }
        let control_socket = raw
            .control_socket
            .as_deref()
            .map_or_else(|| super::default_socket(&instance), PathBuf::from);
        if !control_socket.is_absolute() || control_socket.file_name().is_none() {
            self.error(
                "control_socket",
                format!(
                    "`{}` must be an absolute path to a socket file",
                    control_socket.display()
                ),
            );
        }
        let metrics_listen = raw.metrics_listen.as_deref().and_then(|text| {
            match text.trim().parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error(
                        "metrics_listen",
                        format!("`{text}` is not ADDRESS:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)"),
                    );
                    None
                }
            }
        });
        let announce = raw.announce.and_then(|a| {
            if matches!(a.table, 0 | 253..=255) {
                self.error(
                    "announce.table",
                    format!(
                        "{} is not a table of its own (0 is unspecified, 253 to 255 are the kernel's default, main and local)",
                        a.table
                    ),
                );
                return None;
            }
            Some(super::Announce { table: a.table })
        });
        let tunnel_sources = self.tunnel_sources(raw.tunnel_source.as_ref());
        if raw.virtual_servers.len() > MAX_VS as usize {
            self.error(
                "virtual_servers",
                format!(
                    "{} virtual servers; at most {MAX_VS} are supported",
                    raw.virtual_servers.len()
                ),
            );
        }
        let mut virtual_servers = Vec::new();
        let mut names = HashSet::new();
        let mut services = HashSet::new();
        let mut fragment_takers = HashSet::new();
        let mut total_reals = 0usize;
        for (i, v) in raw.virtual_servers.into_iter().enumerate() {
            let prefix = format!("virtual_servers[{i}]");
            let Some(rvs) = self.item::<RawVirtualServer>(&prefix, v) else {
                continue;
            };
            let Some(vs) = self.virtual_server(&prefix, rvs, &tunnel_sources) else {
                continue;
            };
            if !names.insert(vs.name.clone()) {
                self.error(
                    &format!("{prefix}.name"),
                    format!("virtual server name `{}` is used twice", vs.name),
                );
            }
            if vs.fragments && !fragment_takers.insert((vs.address, vs.protocol)) {
                self.error(
                    &format!("{prefix}.fragments"),
                    format!(
                        "another virtual server at {} ({}) already takes fragments: fragments after the first carry no port, so one virtual server per address and protocol takes them",
                        vs.address, vs.protocol
                    ),
                );
            }
            if !services.insert((vs.address, vs.port, vs.protocol)) {
                self.error(
                    &format!("{prefix}.address"),
                    format!(
                        "{}:{}/{} is already defined by another virtual server",
                        vs.address, vs.port, vs.protocol
                    ),
                );
            }
            total_reals += vs.real_servers.len();
            virtual_servers.push(vs);
        }
        if total_reals > MAX_REALS as usize {
            self.error(
                "virtual_servers",
                format!("{total_reals} real servers in all; at most {MAX_REALS} are supported"),
            );
        }
        Config {
            interfaces: raw.interfaces,
            xdp_mode: match raw.xdp_mode.unwrap_or(RawXdpMode::Auto) {
                RawXdpMode::Auto => XdpMode::Auto,
                RawXdpMode::Native => XdpMode::Native,
                RawXdpMode::Generic => XdpMode::Generic,
            },
            manage_vips: raw.manage_vips.unwrap_or(true),
            flow_table_size,
            syn_flood_rate: raw.syn_flood_rate.unwrap_or(super::DEFAULT_SYN_FLOOD_RATE),
            control_socket,
            instance,
            pin_path,
            metrics_listen,
            announce,
            virtual_servers,
        }
    }

    fn address(&mut self, field: &str, text: &str) -> Option<IpAddr> {
        match text.trim().parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() => {
                self.error(
                    field,
                    format!("`{text}` cannot be a server address (unspecified or multicast)"),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.error(field, format!("`{text}` is not an IPv4 or IPv6 address"));
                None
            }
        }
    }

    /// The global `tunnel_source`: one address, or a list with at most one per family.
    /// Returns: the valid addresses.
    fn tunnel_sources(&mut self, raw: Option<&RawAddrs>) -> Vec<IpAddr> {
        let list: Vec<(String, &String)> = match raw {
            None => return Vec::new(),
            Some(RawAddrs::One(a)) => vec![("tunnel_source".to_string(), a)],
            Some(RawAddrs::Many(v)) => v
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("tunnel_source[{i}]"), a))
                .collect(),
        };
        let mut out: Vec<IpAddr> = Vec::new();
        for (field, text) in list {
            let Some(a) = self.address(&field, text) else {
                continue;
            };
            if out.iter().any(|o| o.is_ipv4() == a.is_ipv4()) {
                self.error(
                    &field,
                    format!(
                        "a second {} tunnel source; give at most one per address family",
                        family(a)
                    ),
                );
                continue;
            }
            out.push(a);
        }
        out
    }

    fn virtual_server(
        &mut self,
        prefix: &str,
        raw: RawVirtualServer,
        tunnel_sources: &[IpAddr],
    ) -> Option<VirtualServer> {
        let errors_before = self.errors.len();
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            self.error(
                &format!("{prefix}.name"),
                format!(
                    "`{}` is not a valid name (1-64 letters, digits, '-', '_')",
                    raw.name
                ),
            );
        }
        let address = self.address(&format!("{prefix}.address"), &raw.address);
        if raw.port == 0 {
            self.error(
                &format!("{prefix}.port"),
                "port 0 is not a valid service port (1-65535)",
            );
        }
        let protocol = match raw.protocol {
            RawProtocol::Tcp => Protocol::Tcp,
            RawProtocol::Udp => Protocol::Udp,
        };
        let method = match raw.method.unwrap_or(RawMethod::Dr) {
            RawMethod::Dr => Method::Dr,
            RawMethod::Nat => Method::Nat,
            RawMethod::Tunnel => Method::Tunnel,
        };
        let tunnel_source = self.vs_tunnel_source(
            prefix,
            method,
            address,
            raw.tunnel_source.as_deref(),
            tunnel_sources,
        );
        let RawScheduler::Maglev = raw.scheduler.unwrap_or(RawScheduler::Maglev);
        let table_size = raw.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !(7..=lb_common::RING_STRIDE).contains(&table_size) || !is_prime(table_size) {
            self.error(
                &format!("{prefix}.table_size"),
                format!(
                    "{table_size} must be a prime between 7 and {}",
                    lb_common::RING_STRIDE
                ),
            );
        } else if (table_size as usize) < raw.real_servers.len() {
            self.error(
                &format!("{prefix}.table_size"),
                format!(
                    "{table_size} slots cannot hold {} real servers",
                    raw.real_servers.len()
                ),
            );
        }

        let vs_check = raw.health_check.clone().unwrap_or_default();
        // Checked once on its own, so that a virtual server without reals is checked too.
        let _ = self.health_check(prefix, &vs_check, None, raw.port, protocol);
        let persistence = raw
            .persistence
            .as_ref()
            .and_then(|p| self.persistence(prefix, p, address));
        let mut real_servers = Vec::new();
        let mut seen = HashSet::new();
        for (j, v) in raw.real_servers.into_iter().enumerate() {
            let rprefix = format!("{prefix}.real_servers[{j}]");
            let Some(rr) = self.item::<RawRealServer>(&rprefix, v) else {
                continue;
            };
            let Some(real_addr) = self.address(&format!("{rprefix}.address"), &rr.address) else {
                continue;
            };
            if let Some(vip) = address {
                if vip.is_ipv4() != real_addr.is_ipv4() {
                    self.error(
                        &format!("{rprefix}.address"),
                        format!("real {real_addr} is not of the VIP's address family ({vip})"),
                    );
                }
            }
            let port = rr.port.unwrap_or(raw.port);
            if port == 0 {
                self.error(
                    &format!("{rprefix}.port"),
                    "port 0 is not a valid port (1-65535)",
                );
            }
            if method != Method::Nat && port != raw.port {
                self.error(
                    &format!("{rprefix}.port"),
                    format!(
                        "method {method} cannot change the port (only nat can): real port {port} must equal the virtual server's {}",
                        raw.port
                    ),
                );
            }
            let weight = rr.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                self.error(
                    &format!("{rprefix}.weight"),
                    format!("{weight} is out of range 0..={MAX_WEIGHT}"),
                );
            }
            if !seen.insert((real_addr, port)) {
                self.error(
                    &format!("{rprefix}.address"),
                    format!("real {real_addr}:{port} is listed twice in this virtual server"),
                );
            }
            let own = rr.health_check.as_ref().map(|h| (rprefix.as_str(), h));
            let Some(health_check) = self.health_check(prefix, &vs_check, own, port, protocol)
            else {
                continue;
            };
            real_servers.push(RealServer {
                address: real_addr,
                port,
                weight,
                health_check,
            });
        }
        let sorry_server = raw
            .sorry_server
            .as_ref()
            .and_then(|s| self.sorry_server(prefix, s, address, raw.port, method, &real_servers));
        let min_healthy = raw.min_healthy.unwrap_or(1);
        if min_healthy as usize > real_servers.len().max(1) {
            self.error(
                &format!("{prefix}.min_healthy"),
                format!(
                    "{min_healthy} is more than the {} real servers listed: the node would never take traffic",
                    real_servers.len()
                ),
            );
        }
        let fragments = raw.fragments.unwrap_or(false);
        if self.errors.len() != errors_before {
            return None;
        }
        Some(VirtualServer {
            name: raw.name,
            address: address?,
            port: raw.port,
            protocol,
            method,
            table_size,
            tunnel_source,
            persistence,
            sorry_server,
            min_healthy,
            fragments,
            real_servers,
        })
    }

    fn duration(&mut self, field: &str, raw: &RawDuration) -> Option<Duration> {
        let r = match raw {
            RawDuration::Text(t) => parse_duration(t),
            RawDuration::Number(n) => Err(format!("`{n}` needs a unit: ms, s, m or h")),
        };
        r.map_err(|m| self.error(field, m)).ok()
    }

    /// Resolves the probe of one real (`own`: its path prefix and its own fields), or of
    /// the virtual server alone (`own` = None, to check the VS's fields).
    /// Returns: the probe, or `None` after reporting what is wrong.
    fn health_check(
        &mut self,
        vs_prefix: &str,
        vs: &RawHealthCheck,
        own: Option<(&str, &RawHealthCheck)>,
        real_port: u16,
        protocol: Protocol,
    ) -> Option<HealthCheck> {
        let empty = RawHealthCheck::default();
        let (real_prefix, real) = own.unwrap_or(("", &empty));
        let m = vs.overlay(real);
        let before = self.errors.len();
        // The level that set a field (the real's wins), and the field's path there.
        let level = |set_by_real: bool| if set_by_real { Level::Real } else { Level::Vs };
        let field = |lvl: Level, name: &str| match lvl {
            Level::Real => format!("{real_prefix}.health_check.{name}"),
            Level::Vs => format!("{vs_prefix}.health_check.{name}"),
        };
        let kind_level = level(real.kind.is_some());
        let default_kind = match protocol {
            Protocol::Tcp => RawCheckType::Tcp,
            Protocol::Udp => RawCheckType::None,
        };
        let kind = match m.kind.unwrap_or(default_kind) {
            RawCheckType::None => CheckType::None,
            RawCheckType::Tcp => CheckType::Tcp,
            RawCheckType::TcpHalfOpen => CheckType::TcpHalfOpen,
            RawCheckType::Http => CheckType::Http,
            RawCheckType::Https => CheckType::Https,
            RawCheckType::Dns => CheckType::Dns,
        };
        let interval = match &m.interval {
            Some(d) => self.duration(&field(level(real.interval.is_some()), "interval"), d),
            None => Some(DEFAULT_INTERVAL),
        };
        let timeout = match &m.timeout {
            Some(d) => self.duration(&field(level(real.timeout.is_some()), "timeout"), d),
            None => Some(DEFAULT_TIMEOUT),
        };
        if kind == CheckType::None {
            // Not probed: the other fields (perhaps inherited) do not matter.
            return (self.errors.len() == before).then(|| HealthCheck {
                kind,
                port: real_port,
                path: String::new(),
                host: None,
                expect_status: Vec::new(),
                interval: interval.unwrap_or(DEFAULT_INTERVAL),
                timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
                rise: 1,
                fall: 1,
                verify: Verify::SystemRoots,
                dns: DnsQuestion::default(),
            });
        }
        if let Some(i) = interval {
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&i) {
                self.error(
                    &field(level(real.interval.is_some()), "interval"),
                    "must be from 100ms to 1h",
                );
            }
            if let Some(t) = timeout {
                if t < MIN_TIMEOUT || t > i {
                    self.error(
                        &field(level(real.timeout.is_some()), "timeout"),
                        format!(
                            "{} must be at least 10ms and at most the interval ({})",
                            super::fmt_duration(t),
                            super::fmt_duration(i)
                        ),
                    );
                }
            }
        }
        for (name, v, set_by_real) in [
            ("rise", m.rise, real.rise.is_some()),
            ("fall", m.fall, real.fall.is_some()),
        ] {
            if let Some(n) = v {
                if !(1..=MAX_RISE_FALL).contains(&n) {
                    self.error(
                        &field(level(set_by_real), name),
                        format!("{n} is out of range 1..={MAX_RISE_FALL}"),
                    );
                }
            }
        }
        if m.port == Some(0) {
            self.error(
                &field(level(real.port.is_some()), "port"),
                "port 0 is not a valid port (1-65535)",
            );
        }
        // A dns probe is UDP itself: the real's port is the service's.
        if protocol == Protocol::Udp && m.port.is_none() && kind != CheckType::Dns {
            self.error(
                &field(kind_level, "type"),
                format!("a udp virtual server's {kind} probe needs health_check.port, the port of a TCP service on the real (or type none)"),
            );
        }
        // HTTP-only fields on a TCP probe (and TLS-only ones on any but https) are a
        // mistake, unless they were inherited from the virtual server and the real chose
        // its type for itself.
        let inherited = |lvl: Level| lvl == Level::Vs && kind_level == Level::Real;
        let http_only = [
            ("path", real.path.is_some(), m.path.is_some()),
            ("host", real.host.is_some(), m.host.is_some()),
            (
                "expect_status",
                real.expect_status.is_some(),
                m.expect_status.is_some(),
            ),
        ];
        if matches!(
            kind,
            CheckType::Tcp | CheckType::TcpHalfOpen | CheckType::Dns
        ) {
            let why = match kind {
                CheckType::Tcp => "tcp, the default for a tcp virtual server",
                CheckType::TcpHalfOpen => "tcp_half_open",
                _ => "dns",
            };
            for (name, set_by_real, set) in http_only {
                let lvl = level(set_by_real);
                if set && !inherited(lvl) {
                    self.error(
                        &field(lvl, name),
                        format!("applies to type http only (or https): type is {why}"),
                    );
                }
            }
        }
        let dns_only = [
            ("name", real.name.is_some(), m.name.is_some()),
            (
                "query_type",
                real.query_type.is_some(),
                m.query_type.is_some(),
            ),
        ];
        if kind != CheckType::Dns {
            for (name, set_by_real, set) in dns_only {
                let lvl = level(set_by_real);
                if set && !inherited(lvl) {
                    self.error(
                        &field(lvl, name),
                        format!("applies to type dns only (type is {kind})"),
                    );
                }
            }
        }
        let tls_only = [
            ("insecure", real.insecure.is_some(), m.insecure.is_some()),
            ("ca_file", real.ca_file.is_some(), m.ca_file.is_some()),
        ];
        if kind != CheckType::Https {
            for (name, set_by_real, set) in tls_only {
                let lvl = level(set_by_real);
                if set && !inherited(lvl) {
                    self.error(
                        &field(lvl, name),
                        format!("applies to type https only (type is {kind})"),
                    );
                }
            }
        }
        let path = m.path.clone().unwrap_or_else(|| "/".to_string());
        // No spaces or control characters, nor what a request target cannot carry as is
        // (hyper's URI parser decides; `#` would silently cut the path).
        let plain = !path.chars().any(|c| c.is_whitespace() || c.is_control());
        let target = !path.contains('#') && path.parse::<PathAndQuery>().is_ok();
        if !path.starts_with('/') || !plain || !target {
            self.error(
                &field(level(real.path.is_some()), "path"),
                format!("`{path}` must start with '/' and hold no spaces or control characters (and no < > \\ ^ ` #: percent-encode them)"),
            );
        }
        if let Some(h) = &m.host {
            let host_field = field(level(real.host.is_some()), "host");
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    &host_field,
                    format!("`{h}` is not a valid Host header value"),
                );
            } else if kind == CheckType::Https {
                if let Err(e) = super::tls_name(h) {
                    self.error(
                        &host_field,
                        format!("{e}: https sends it as SNI and checks the certificate against it"),
                    );
                }
            }
        }
        let verify = if kind == CheckType::Https {
            self.verify(&m, real, &field)
        } else {
            Some(Verify::SystemRoots)
        };
        let dns = self.dns_question(&m, &field(level(real.name.is_some()), "name"));
        let expect_status = match &m.expect_status {
            None => vec![DEFAULT_EXPECT],
            Some(raw) => self.statuses(
                &field(level(real.expect_status.is_some()), "expect_status"),
                raw,
            ),
        };
        if self.errors.len() != before {
            return None;
        }
        Some(HealthCheck {
            kind,
            port: m.port.unwrap_or(real_port),
            path,
            host: m.host.clone(),
            expect_status,
            interval: interval?,
            timeout: timeout?,
            rise: m.rise.unwrap_or(DEFAULT_RISE),
            fall: m.fall.unwrap_or(DEFAULT_FALL),
            verify: verify?,
            dns,
        })
    }

    /// The question of a dns probe: `name` (checked at `name_field`) and `query_type`,
    /// keepalived's DNS_CHECK defaults where unset.
    /// Returns: the question (the default one after reporting a bad name).
    fn dns_question(&mut self, m: &RawHealthCheck, name_field: &str) -> DnsQuestion {
        let mut q = DnsQuestion::default();
        if let Some(name) = &m.name {
            match super::dns::labels(name) {
                Ok(_) => q.name = name.clone(),
                Err(e) => self.error(name_field, e),
            }
        }
        if let Some(t) = m.query_type {
            q.qtype = match t {
                RawQueryType::A => QueryType::A,
                RawQueryType::Ns => QueryType::Ns,
                RawQueryType::Cname => QueryType::Cname,
                RawQueryType::Soa => QueryType::Soa,
                RawQueryType::Mx => QueryType::Mx,
                RawQueryType::Txt => QueryType::Txt,
                RawQueryType::Aaaa => QueryType::Aaaa,
            };
        }
        q
    }

    /// How an https probe checks certificates: `insecure: true`, else against `ca_file`,
    /// else against the system's roots. Set at one level, `insecure: true` and `ca_file`
    /// contradict each other; set at both, the real's own choice wins.
    /// Returns: the choice, or `None` after reporting what is wrong.
    fn verify(
        &mut self,
        merged: &RawHealthCheck,
        real: &RawHealthCheck,
        field: &dyn Fn(Level, &str) -> String,
    ) -> Option<Verify> {
        let insecure_level = if real.insecure.is_some() {
            Level::Real
        } else {
            Level::Vs
        };
        let ca_level = if real.ca_file.is_some() {
            Level::Real
        } else {
            Level::Vs
        };
        match (merged.insecure == Some(true), &merged.ca_file) {
            (true, Some(_)) if insecure_level == ca_level => {
                self.error(
                    &field(insecure_level, "insecure"),
                    "insecure: true skips verification, so ca_file would go unused: set one of them",
                );
                None
            }
            (true, Some(_)) if insecure_level == Level::Real => Some(Verify::Insecure),
            (true, None) => Some(Verify::Insecure),
            (_, Some(path)) => self.ca_file(&field(ca_level, "ca_file"), path),
            (false, None) => Some(Verify::SystemRoots),
        }
    }

    /// Reads `ca_file` `text` (once per file), reporting a bad file at `field`.
    /// Returns: its certificates, or `None` after reporting what is wrong.
    fn ca_file(&mut self, field: &str, text: &str) -> Option<Verify> {
        let read = self
            .ca_files
            .entry(text.to_string())
            .or_insert_with(|| {
                let path = PathBuf::from(text);
                super::pem::read_ca_file(&path).map(|certs| CaFile { path, certs })
            })
            .clone();
        read.map(Verify::CaFile)
            .map_err(|message| self.error(field, message))
            .ok()
    }

    /// `200`, `"200-399"`, or a list of either. Returns: the ranges (empty after errors).
    fn statuses(&mut self, field: &str, raw: &RawStatus) -> Vec<(u16, u16)> {
        let items: Vec<&RawStatusItem> = match raw {
            RawStatus::One(i) => vec![i],
            RawStatus::Many(v) => v.iter().collect(),
        };
        if items.is_empty() {
            self.error(field, "at least one status is required");
        }
        let mut out = Vec::new();
        for item in items {
            let range = match item {
                RawStatusItem::Code(c) => Some((*c, *c)),
                RawStatusItem::Range(t) => {
                    let parts: Vec<&str> = t.split('-').map(str::trim).collect();
                    match parts.as_slice() {
                        [one] => one.parse().ok().map(|c| (c, c)),
                        [lo, hi] => lo.parse().ok().zip(hi.parse().ok()),
                        _ => None,
                    }
                }
            };
            match range {
                Some((lo, hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                    out.push((lo, hi))
                }
                _ => {
                    let text = match item {
                        RawStatusItem::Code(c) => c.to_string(),
                        RawStatusItem::Range(t) => t.clone(),
                    };
                    self.error(
                        field,
                        format!(
                            "`{text}` is not an HTTP status (100-599) or a range such as 200-399"
                        ),
                    );
                }
            }
        }
        out
    }

    fn persistence(
        &mut self,
        prefix: &str,
        raw: &RawPersistence,
        vip: Option<IpAddr>,
    ) -> Option<Persistence> {
        let tfield = format!("{prefix}.persistence.timeout");
        let timeout = self.duration(&tfield, &raw.timeout)?;
        if !(MIN_PERSIST..=MAX_PERSIST).contains(&timeout) {
            self.error(&tfield, "must be from 1s to 7 days (168h)");
            return None;
        }
        let bits = if vip?.is_ipv4() { 32 } else { 128 };
        let netmask = raw.netmask.unwrap_or(bits);
        if netmask > bits {
            self.error(
                &format!("{prefix}.persistence.netmask"),
                format!("/{netmask} is longer than an {} address", family(vip?)),
            );
            return None;
        }
        Some(Persistence { timeout, netmask })
    }

    fn sorry_server(
        &mut self,
        prefix: &str,
        raw: &RawSorryServer,
        vip: Option<IpAddr>,
        vs_port: u16,
        method: Method,
        reals: &[RealServer],
    ) -> Option<SorryServer> {
        let afield = format!("{prefix}.sorry_server.address");
        let address = self.address(&afield, &raw.address)?;
        if vip?.is_ipv4() != address.is_ipv4() {
            self.error(
                &afield,
                format!("sorry server {address} is not of the VIP's address family"),
            );
            return None;
        }
        let port = raw.port.unwrap_or(vs_port);
        let pfield = format!("{prefix}.sorry_server.port");
        if port == 0 {
            self.error(&pfield, "port 0 is not a valid port (1-65535)");
            return None;
        }
        if method != Method::Nat && port != vs_port {
            self.error(
                &pfield,
                format!("method {method} cannot change the port (only nat can): {port} must equal the virtual server's {vs_port}"),
            );
            return None;
        }
        if reals.iter().any(|r| r.address == address && r.port == port) {
            self.error(
                &afield,
                format!("{address}:{port} is one of the real servers; a sorry server stands in for them"),
            );
            return None;
        }
        Some(SorryServer { address, port })
    }

    /// Resolves a virtual server's tunnel source: its own, else the global one of the
    /// VIP's family. Returns: the address for a tunnel VS, `None` otherwise (or on error).
    fn vs_tunnel_source(
        &mut self,
        prefix: &str,
        method: Method,
        vip: Option<IpAddr>,
        own: Option<&str>,
        global: &[IpAddr],
    ) -> Option<IpAddr> {
        let field = format!("{prefix}.tunnel_source");
        let own = match own {
            Some(text) => Some(self.address(&field, text)?),
            None => None,
        };
        if method != Method::Tunnel {
            if own.is_some() {
                self.error(&field, format!("tunnel_source applies to method tunnel only (this virtual server uses {method})"));
            }
            return None;
        }
        let vip = vip?;
        match own {
            Some(a) if a.is_ipv4() != vip.is_ipv4() => {
                self.error(
                    &field,
                    format!("tunnel source {a} is not of the VIP's address family ({vip})"),
                );
                None
            }
            Some(a) => Some(a),
            None => {
                let found = global
                    .iter()
                    .copied()
                    .find(|g| g.is_ipv4() == vip.is_ipv4());
                if found.is_none() {
                    self.error(
                        &format!("{prefix}.method"),
                        format!(
                            "method tunnel needs an {} tunnel source: set tunnel_source here or at the top of the file",
                            family(vip)
                        ),
                    );
                }
                found
            }
        }
    }
}
