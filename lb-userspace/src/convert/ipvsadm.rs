//! The output of `ipvsadm-save -n` (`ipvsadm -S -n`): one `-A` line per service and
//! one `-a` line per real server, short or long options.

use std::{net::IpAddr, path::Path, time::Duration};

use super::{
    assemble::{add_real, add_service, scheduler},
    finding::{At, Findings},
    plan::{Check, Entry, Persistence, Plan, Real, Service},
    text::{addr_port, prefix_len},
    ConvertError,
};
use crate::config::{CheckType, Method, Protocol};

/// ipvsadm's persistence timeout when `-p` has no value (seconds).
const PERSIST_DEFAULT_S: u64 = 300;

/// How a service is named on an `-A`/`-a` line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Service(Protocol, IpAddr, u16),
    /// `-f MARK` or `--sctp-service`: kept only to attach its reals to its refusal.
    Other(String),
}

#[derive(Debug)]
struct Spec {
    key: Key,
    at: At,
    /// The `-A` line as written.
    text: String,
    scheduler: Option<String>,
    notes: Vec<String>,
    persistence: Option<u64>,
    netmask: Option<(String, At)>,
    reals: Vec<RealSpec>,
}

#[derive(Debug)]
struct RealSpec {
    address: IpAddr,
    port: Option<u16>,
    method: Method,
    weight: u32,
    at: At,
    notes: Vec<String>,
}

/// One line's options, as read.
#[derive(Debug, Default)]
struct Line {
    add_service: bool,
    key: Option<Key>,
    real: Option<(IpAddr, Option<u16>)>,
    method: Option<Method>,
    weight: Option<u32>,
    scheduler: Option<String>,
    persistent: Option<u64>,
    netmask: Option<String>,
    notes: Vec<String>,
}

fn err(at: &At, message: String) -> ConvertError {
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
fn line(
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

/// Converts the rules at `path` (`-`: standard input).
pub fn convert(path: &Path, f: &mut Findings) -> Result<Plan, ConvertError> {
    let (shown, read) = if path == Path::new("-") {
        let mut t = String::new();
        (
            "<stdin>".to_string(),
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t),
        )
    } else {
        let shown = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        (shown, std::fs::read_to_string(path))
    };
    let text = read.map_err(|source| ConvertError::Read {
        file: shown.clone(),
        source,
    })?;
    let mut plan = Plan {
        format: "ipvsadm",
        source: shown.clone(),
        ..Plan::default()
    };
    plan.notes.push(
        "ipvsadm does not probe reals: each virtual server keeps `health_check: { type: none }`; type tcp or http lets xdpvs take failed reals out.".to_string(),
    );
    let mut specs: Vec<Spec> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = At {
            file: shown.clone(),
            line: i + 1,
        };
        let words: Vec<&str> = raw
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if words.is_empty() {
            continue;
        }
        let Some(l) = line(&words, &at, f, &mut plan.notes)? else {
            continue;
        };
        let Some(key) = l.key.clone() else {
            return Err(err(&at, "expected a service: -t, -u or -f".to_string()));
        };
        if l.add_service {
            specs.push(Spec {
                key,
                at: at.clone(),
                text: words.join(" "),
                scheduler: l.scheduler,
                notes: l.notes,
                persistence: l.persistent,
                netmask: l.netmask.map(|m| (m, at.clone())),
                reals: Vec::new(),
            });
            continue;
        }
        let Some((address, port)) = l.real else {
            return Err(err(
                &at,
                "expected a real server: -r ADDRESS[:PORT]".to_string(),
            ));
        };
        let Some(spec) = specs.iter_mut().find(|s| s.key == key) else {
            let c = f.warn(
                &at,
                format!("real server {address} of a service no -A line defines: not converted"),
            );
            plan.notes.push(c);
            continue;
        };
        spec.reals.push(RealSpec {
            address,
            port,
            // ipvsadm's default forwarding method is gatewaying (direct routing).
            method: l.method.unwrap_or(Method::Dr),
            weight: l.weight.unwrap_or(1),
            at,
            notes: l.notes,
        });
    }
    for spec in specs {
        service(spec, &mut plan, f);
    }
    Ok(plan)
}

fn service(spec: Spec, plan: &mut Plan, f: &mut Findings) {
    let (protocol, address, port) = match spec.key {
        Key::Service(p, a, port) if port > 0 => (p, a, port),
        Key::Service(_, a, _) => {
            let c = f.warn(&spec.at, format!("{a}:0: a persistent service on every port: xdpvs balances one port per virtual server: not converted"));
            plan.entries.push(Entry::Refused(vec![c]));
            return;
        }
        Key::Other(why) => {
            let n = spec.reals.len();
            let c = f.warn(
                &spec.at,
                format!(
                    "{why}: not converted (nor its {n} real server{})",
                    if n == 1 { "" } else { "s" }
                ),
            );
            plan.entries.push(Entry::Refused(vec![c]));
            return;
        }
    };
    let method = spec.reals.first().map_or(Method::Dr, |r| r.method);
    let mut comments = vec![format!("{}: {}", spec.at, spec.text)];
    comments.extend(spec.notes);
    if let Some(s) = &spec.scheduler {
        comments.push(scheduler(&spec.at, "-s", s, f));
    }
    let mut svc = Service {
        comments,
        address,
        port,
        protocol,
        method,
        persistence: None,
        sorry: None,
        min_healthy: None,
        check: Some(Check::of(CheckType::None)),
        reals: Vec::new(),
    };
    if let Some(secs) = spec.persistence {
        let clamped = secs.clamp(1, 7 * 24 * 3600);
        if clamped != secs {
            svc.comments.push(f.warn(
                &spec.at,
                format!("-p {secs}: xdpvs takes 1s to 168h: {clamped}s"),
            ));
        }
        let netmask = spec.netmask.and_then(|(m, at)| {
            let n = prefix_len(&m, address.is_ipv4());
            if n.is_none() {
                svc.comments.push(f.warn(
                    &at,
                    format!("-M {m}: not a netmask of the VIP's family: each client on its own"),
                ));
            }
            n
        });
        svc.persistence = Some(Persistence {
            timeout: Duration::from_secs(clamped),
            netmask,
        });
    } else if let Some((m, at)) = spec.netmask {
        svc.comments
            .push(f.warn(&at, format!("-M {m} without -p: no persistence")));
    }
    for r in spec.reals {
        if r.method != method {
            let c = f.warn(
                &r.at,
                format!("real server {} uses {} but the first real uses {method}: xdpvs has one method per virtual server: not converted", r.address, r.method),
            );
            svc.comments.push(c);
            continue;
        }
        let real = Real {
            comments: r.notes,
            address: r.address,
            port: r.port,
            weight: r.weight,
            check: Some(Check::of(CheckType::None)),
        };
        add_real(&mut svc, real, &r.at, f);
    }
    add_service(plan, svc, &spec.at.clone(), f);
}
