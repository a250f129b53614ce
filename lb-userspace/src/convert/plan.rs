//! The configuration a conversion produces, before it is written as YAML: what each
//! source format maps into, and the comments that go with each item.

use std::{net::IpAddr, time::Duration};

use crate::config::{CheckType, Method, Protocol};

/// A whole converted configuration.
#[derive(Debug, Default)]
pub struct Plan {
    /// `keepalived` or `ipvsadm`.
    pub format: &'static str,
    /// The main input as shown to the operator.
    pub source: String,
    /// Set when keepalived owns the VIPs (a `vrrp_instance`): `manage_vips: false`,
    /// with this comment.
    pub vips_owned_by: Option<String>,
    /// Comments about the input as a whole, written under the header.
    pub notes: Vec<String>,
    pub entries: Vec<Entry>,
}

/// One item of `virtual_servers`: converted, or left as a comment saying why not.
#[derive(Debug, Clone)]
pub enum Entry {
    Service(Box<Service>),
    /// Comment lines standing where the virtual server would be.
    Refused(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Service {
    /// Comment lines above the item: where it came from, then the notes about it.
    pub comments: Vec<String>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub method: Method,
    pub persistence: Option<Persistence>,
    pub sorry: Option<Sorry>,
    pub min_healthy: Option<u32>,
    /// The probe every real shares (emitted on the virtual server).
    pub check: Option<Check>,
    pub reals: Vec<Real>,
}

impl Service {
    /// Returns: the name the virtual server gets, from its protocol, address and port
    /// (unique because they are).
    pub fn name(&self) -> String {
        let addr: String = self
            .address
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("{}-{addr}-{}", self.protocol, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persistence {
    pub timeout: Duration,
    pub netmask: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sorry {
    pub address: IpAddr,
    /// Only when it differs from the virtual server's (NAT).
    pub port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct Real {
    pub comments: Vec<String>,
    pub address: IpAddr,
    /// Only when it differs from the virtual server's (NAT).
    pub port: Option<u16>,
    pub weight: u32,
    /// This real's own probe, when the reals do not all share one.
    pub check: Option<Check>,
}

/// A probe, every field as it will be written (`None`: not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckType,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// As written in YAML: `200`, `'200-299'` or `[200, '300-302']`.
    pub expect_status: Option<String>,
    pub insecure: bool,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

impl Check {
    /// Returns: a probe of `kind` with nothing else set.
    pub fn of(kind: CheckType) -> Check {
        Check {
            kind,
            port: None,
            path: None,
            host: None,
            expect_status: None,
            insecure: false,
            interval: None,
            timeout: None,
            rise: None,
            fall: None,
        }
    }
}
