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
    /// One address, or a list with at most one per family.
    #[serde(default)]
    pub tunnel_source: Option<RawAddrs>,
    #[serde(default)]
    pub virtual_servers: Vec<Value>,
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
    pub real_servers: Vec<Value>,
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
}
