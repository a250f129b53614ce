//! The control channel: the daemon listens on a Unix socket (mode 0600, root only) and
//! the CLI (`xdpvs status`, `xdpvs reload`, `xdpvs real ...`) talks to it. One JSON
//! request per connection, one JSON line back. This module is the protocol; the
//! daemon's half is [`server`], the CLI's [`client`] and [`render`].

pub mod client;
pub mod render;
pub mod server;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// A command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Everything `xdpvs status` shows.
    Status,
    /// Whether this node should take traffic (`xdpvs ready`): `ok` says it, the message
    /// says why not. Cheap: read in the daemon's task, no walk of the connection table.
    Ready,
    /// Re-read the configuration file (as SIGHUP), reporting the outcome.
    Reload,
    /// Take this node out (`xdpvs withdraw`): announce no VIP, fail `ready`; kept across
    /// restarts until [`Request::Announce`].
    Withdraw,
    /// Put this node back (`xdpvs announce`).
    Announce,
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

/// Parses a real as given on the command line: `addr`, `addr:port`, `[v6]:port`.
/// Returns: the address and the port if one was given.
pub fn parse_real(text: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(a) = text.parse::<IpAddr>() {
        return Some((a, None));
    }
    let sa: std::net::SocketAddr = text.parse().ok()?;
    Some((sa.ip(), Some(sa.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        for r in [
            Request::Status,
            Request::Reload,
            Request::Withdraw,
            Request::Announce,
            Request::Withdraw,
            Request::Announce,
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
}
