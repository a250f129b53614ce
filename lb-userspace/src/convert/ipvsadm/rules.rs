//! One line of ipvsadm-save output: `-A`/`-a` and their options, short or long.

use std::net::IpAddr;

use crate::{
    config::{Method, Protocol},
    convert::{
        finding::{At, Findings},
        text::addr_port,
        ConvertError,
    },
};

/// ipvsadm's persistence timeout when `-p` has no value (seconds).
const PERSIST_DEFAULT_S: u64 = 300;

/// How a service is named on an `-A`/`-a` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `-t`/`-u ADDRESS:PORT`.
    Service(Protocol, IpAddr, u16),
    /// `-f MARK` or `--sctp-service`: kept only to attach its reals to its refusal.
    Other(String),
}

/// One line's options, as read.
#[derive(Debug, Default)]
pub struct Line {
    /// `-A` (else `-a`).
    pub add_service: bool,
    pub key: Option<Key>,
    pub real: Option<(IpAddr, Option<u16>)>,
    pub method: Option<Method>,
    pub weight: Option<u32>,
    pub scheduler: Option<String>,
    pub persistent: Option<u64>,
    pub netmask: Option<String>,
    pub notes: Vec<String>,
}

/// Returns: a parse error at `at`.
pub fn err(at: &At, message: String) -> ConvertError {
    ConvertError::Parse {
        file: at.file.clone(),
        line: at.line,
        message,
    }
}

/// Returns: the service an `ADDR:PORT` argument names.
fn service_key(proto: Protocol, arg: &str, at: &At) -> Result<Key, ConvertError> {
    match addr_port(arg) {
        Some((a, Some(p))) => Ok(Key::Service(proto, a, p)),
        _ => Err(err(
            at,
            format!(
                "expected ADDRESS:PORT (or [IPv6]:PORT) after the service option, found `{arg}`"
            ),
        )),
    }
}

/// Reads one line's words. Returns: its options, `None` for a line that is not an
/// `-A`/`-a` rule (reported), or a parse error.
pub fn line(
    words: &[&str],
    at: &At,
    f: &mut Findings,
    ignored: &mut Vec<String>,
) -> Result<Option<Line>, ConvertError> {
    let mut l = Line::default();
    // `--opt=value` is `--opt value`.
    let mut words: Vec<String> = words
        .iter()
        .flat_map(|w| match w.split_once('=') {
            Some((o, v)) if o.starts_with("--") => vec![o.to_string(), v.to_string()],
            _ => vec![w.to_string()],
        })
        .collect();
    words.reverse();
    let cmd = words.pop().unwrap_or_default();
    match cmd.as_str() {
        "-A" | "--add-service" => l.add_service = true,
        "-a" | "--add-server" => {}
        other => {
            ignored.push(f.warn(
                at,
                format!("`{other}`: not a rule ipvsadm-save writes (-A or -a): line ignored"),
            ));
            return Ok(None);
        }
    }
    let value = |opt: &str, words: &mut Vec<String>| {
        words
            .pop()
            .ok_or_else(|| err(at, format!("expected a value after `{opt}`")))
    };
    while let Some(opt) = words.pop() {
        match opt.as_str() {
            "-t" | "--tcp-service" => {
                l.key = Some(service_key(Protocol::Tcp, &value(&opt, &mut words)?, at)?)
            }
            "-u" | "--udp-service" => {
                l.key = Some(service_key(Protocol::Udp, &value(&opt, &mut words)?, at)?)
            }
            "--sctp-service" => {
                let v = value(&opt, &mut words)?;
                l.key = Some(Key::Other(format!(
                    "sctp service {v}: xdpvs balances TCP and UDP only"
                )));
            }
            "-f" | "--fwmark-service" => {
                let v = value(&opt, &mut words)?;
                l.key = Some(Key::Other(format!("fwmark service {v}: xdpvs matches address, port and protocol, not firewall marks")));
            }
            "-s" | "--scheduler" => l.scheduler = Some(value(&opt, &mut words)?),
            "-p" | "--persistent" => {
                let t = match words.last().and_then(|w| w.parse::<u64>().ok()) {
                    Some(t) => {
                        words.pop();
                        t
                    }
                    None => PERSIST_DEFAULT_S,
                };
                l.persistent = Some(t);
            }
            "-M" | "--netmask" => l.netmask = Some(value(&opt, &mut words)?),
            "-r" | "--real-server" => {
                let v = value(&opt, &mut words)?;
                l.real = Some(addr_port(&v).ok_or_else(|| {
                    err(
                        at,
                        format!("expected ADDRESS[:PORT] after `{opt}`, found `{v}`"),
                    )
                })?);
            }
            "-g" | "--gatewaying" => l.method = Some(Method::Dr),
            "-m" | "--masquerading" => l.method = Some(Method::Nat),
            "-i" | "--ipip" => l.method = Some(Method::Tunnel),
            "-w" | "--weight" => {
                let v = value(&opt, &mut words)?;
                l.weight = Some(v.parse().map_err(|_| {
                    err(at, format!("expected a weight after `{opt}`, found `{v}`"))
                })?);
            }
            "-n" | "--numeric" => {}
            "-x" | "--u-threshold" | "-y" | "--l-threshold" | "--pe" | "-b" | "--sched-flags"
            | "--tun-type" | "--tun-port" => {
                let v = value(&opt, &mut words)?;
                l.notes.push(f.warn(
                    at,
                    format!("{opt} {v}: no equivalent in xdpvs; not converted"),
                ));
            }
            "-o" | "--ops" | "--persistent-conn" | "--tun-nocsum" | "--tun-csum"
            | "--tun-remcsum" => {
                l.notes
                    .push(f.warn(at, format!("{opt}: no equivalent in xdpvs; not converted")));
            }
            other => {
                ignored.push(f.warn(at, format!("unknown option `{other}`: line ignored")));
                return Ok(None);
            }
        }
    }
    Ok(Some(l))
}
