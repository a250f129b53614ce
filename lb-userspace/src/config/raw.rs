//! The file as written: serde types that accept exactly the documented fields.
//! Nested lists are kept as `serde_yaml::Value` and deserialised one item at a time, so
//! that one bad real server does not hide the errors of the others.

use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: Option<RawXdpMode>,
    #[serde(default)]
    pub manage_vips: Option<bool>,
    #[serde(default)]
    pub flow_table_size: Option<u32>,
    #[serde(default)]
    pub syn_flood_rate: Option<u32>,
    #[serde(default)]
    pub control_socket: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub pin_path: Option<String>,
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub announce: Option<RawAnnounce>,
    /// One address, or a list with at most one per family.
    #[serde(default)]
    pub tunnel_source: Option<RawAddrs>,
    #[serde(default)]
    pub virtual_servers: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    pub table: u32,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAddrs {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RawXdpMode {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualServer {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: RawProtocol,
    #[serde(default)]
    pub method: Option<RawMethod>,
    #[serde(default)]
    pub scheduler: Option<RawScheduler>,
    #[serde(default)]
    pub table_size: Option<u32>,
    #[serde(default)]
    pub tunnel_source: Option<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub persistence: Option<RawPersistence>,
    #[serde(default)]
    pub sorry_server: Option<RawSorryServer>,
    #[serde(default)]
    pub min_healthy: Option<u32>,
    #[serde(default)]
    pub fragments: Option<bool>,
    #[serde(default)]
    pub real_servers: Vec<Value>,
}

/// A probe as written: every field optional (a real's fields override its VS's).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default, rename = "type")]
    pub kind: Option<RawCheckType>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub expect_status: Option<RawStatus>,
    #[serde(default)]
    pub interval: Option<RawDuration>,
    #[serde(default)]
    pub timeout: Option<RawDuration>,
    #[serde(default)]
    pub rise: Option<u32>,
    #[serde(default)]
    pub fall: Option<u32>,
    #[serde(default)]
    pub insecure: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<String>,
    /// dns: the name asked.
    #[serde(default)]
    pub name: Option<String>,
    /// dns: the record type asked.
    #[serde(default)]
    pub query_type: Option<RawQueryType>,
}

impl RawHealthCheck {
    /// Returns: `self` with the fields `over` sets replaced.
    pub fn overlay(&self, over: &RawHealthCheck) -> RawHealthCheck {
        RawHealthCheck {
            kind: over.kind.or(self.kind),
            port: over.port.or(self.port),
            path: over.path.clone().or_else(|| self.path.clone()),
            host: over.host.clone().or_else(|| self.host.clone()),
            expect_status: over
                .expect_status
                .clone()
                .or_else(|| self.expect_status.clone()),
            interval: over.interval.clone().or_else(|| self.interval.clone()),
            timeout: over.timeout.clone().or_else(|| self.timeout.clone()),
            rise: over.rise.or(self.rise),
            fall: over.fall.or(self.fall),
            insecure: over.insecure.or(self.insecure),
            ca_file: over.ca_file.clone().or_else(|| self.ca_file.clone()),
            name: over.name.clone().or_else(|| self.name.clone()),
            query_type: over.query_type.or(self.query_type),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawCheckType {
    None,
    Tcp,
    #[serde(rename = "tcp_half_open")]
    TcpHalfOpen,
    Http,
    Https,
    Dns,
}

/// A `dns` probe's record type, spelt as keepalived's DNS_CHECK `type` (upper case).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum RawQueryType {
    A,
    Ns,
    Cname,
    Soa,
    Mx,
    Txt,
    Aaaa,
}

/// `200`, `"200-399"`, or a list of either.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawStatus {
    One(RawStatusItem),
    Many(Vec<RawStatusItem>),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawStatusItem {
    Code(u16),
    Range(String),
}

/// A duration string; a bare number is accepted by serde so that the validator can say
/// it lacks a unit.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawDuration {
    Text(String),
    Number(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistence {
    pub timeout: RawDuration,
    #[serde(default)]
    pub netmask: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSorryServer {
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RawMethod {
    Dr,
    Nat,
    Tunnel,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RawScheduler {
    Maglev,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRealServer {
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
}
