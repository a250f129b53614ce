//! The output of `ipvsadm-save -n` (`ipvsadm -S -n`): one `-A` line per service and
//! one `-a` line per real server, short or long options.

mod rules;

use std::{net::IpAddr, path::Path, time::Duration};

use self::rules::{err, line, Key};
use super::{
    assemble::{add_real, add_service, scheduler},
    finding::{At, Findings},
    plan::{Check, Entry, Persistence, Plan, Real, Service},
    text::prefix_len,
    ConvertError,
};
use crate::config::{CheckType, Method};

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
    if let Some(secs) = spec.persistence.filter(|&s| s > 0) {
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
