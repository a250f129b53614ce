//! `virtual_server` blocks: one virtual server per address (a group's, or its own);
//! their `real_server`s are read by `real`.

use std::{collections::HashMap, net::IpAddr};

use super::{
    addr_port, at, group, inherited_option, method, no_equivalent, parser::Stmt, real, Inherited,
};
use crate::{
    config::{Method, Protocol},
    convert::{
        assemble::{add_real, add_service, scheduler},
        finding::{At, Findings},
        plan::{Entry, Persistence, Plan, Service, Sorry},
        text::prefix_len,
        ConvertError,
    },
};

/// keepalived's persistence timeout when `persistence_timeout` has no value.
const PERSIST_DEFAULT_S: u64 = 360;

/// What a virtual server's block says, before it is applied to each of its addresses.
struct Body<'a> {
    method: Method,
    protocol: Protocol,
    /// Why the virtual server cannot be converted at all.
    refused: Option<String>,
    /// `persistence_timeout` in seconds, and where it was set.
    persistence: Option<(u64, At)>,
    granularity: Option<&'a Stmt>,
    sorry: Option<(IpAddr, Option<u16>)>,
    quorum: Option<(u32, At)>,
    inherited: Inherited,
    notes: Vec<String>,
    reals: Vec<&'a Stmt>,
}

/// Converts one `virtual_server` into one entry per address (one, or a group's).
pub fn virtual_server(
    s: &Stmt,
    groups: &HashMap<&str, &Stmt>,
    plan: &mut Plan,
    f: &mut Findings,
) -> Result<(), ConvertError> {
    let here = at(s);
    let title = format!("{here}: virtual_server {}", s.args.join(" "));
    let refuse = |plan: &mut Plan, f: &mut Findings, why: String| {
        let c = f.warn(
            &here,
            format!("virtual_server {}: {why}: not converted", s.args.join(" ")),
        );
        plan.entries.push(Entry::Refused(vec![c]));
    };
    let mut group_notes = Vec::new();
    let members: Vec<group::Member> = match s.args.first().map(String::as_str) {
        Some("fwmark") => {
            refuse(plan, f, "xdpvs matches address, port and protocol, not firewall marks (write one virtual server per address and port)".to_string());
            return Ok(());
        }
        Some("group") => {
            let name = s.args.get(1).map(String::as_str).unwrap_or_default();
            let Some(g) = groups.get(name) else {
                refuse(plan, f, format!("no virtual_server_group named `{name}`"));
                return Ok(());
            };
            match group::expand(g.block.as_deref().unwrap_or_default(), f, &mut group_notes) {
                Ok(m) if m.is_empty() => {
                    refuse(plan, f, format!("group `{name}` has no address to convert"));
                    return Ok(());
                }
                Ok(m) => m,
                Err(why) => {
                    refuse(plan, f, why);
                    return Ok(());
                }
            }
        }
        _ => {
            let (address, port) = addr_port(s)?;
            vec![group::Member {
                address,
                port,
                at: here.clone(),
            }]
        }
    };
    let body = body(s, f);
    if let Some(why) = &body.refused {
        refuse(plan, f, why.clone());
        return Ok(());
    }
    for m in members {
        let Some(port) = m.port.filter(|&p| p > 0) else {
            let c = f.warn(
                &m.at,
                format!("virtual_server {} without a port (a persistent service on every port): xdpvs balances one port per virtual server: not converted", m.address),
            );
            plan.entries.push(Entry::Refused(vec![c]));
            continue;
        };
        let mut comments = vec![title.clone()];
        if m.at != here {
            comments.push(format!("{}: member {} port {port}", m.at, m.address));
        }
        comments.extend(group_notes.iter().cloned());
        comments.extend(body.notes.iter().cloned());
        let mut svc = Service {
            comments,
            address: m.address,
            port,
            protocol: body.protocol,
            method: body.method,
            persistence: None,
            sorry: body.sorry.map(|(address, port)| Sorry { address, port }),
            min_healthy: None,
            check: None,
            reals: Vec::new(),
        };
        svc.persistence = persistence(&body, m.address.is_ipv4(), &mut svc.comments, f);
        for r in &body.reals {
            let (real, rat) = real::real(r, &svc, &body.inherited, f)?;
            add_real(&mut svc, real, &rat, f);
        }
        if let Some((q, qat)) = &body.quorum {
            quorum(&mut svc, *q, qat, f);
        }
        add_service(plan, svc, &m.at, f);
    }
    Ok(())
}

/// Reads a virtual server's own statements (not its reals').
fn body<'a>(s: &'a Stmt, f: &mut Findings) -> Body<'a> {
    let mut b = Body {
        // keepalived's default forwarding method is NAT.
        method: Method::Nat,
        protocol: Protocol::Tcp,
        refused: None,
        persistence: None,
        granularity: None,
        sorry: None,
        quorum: None,
        inherited: Inherited::default(),
        notes: Vec::new(),
        reals: Vec::new(),
    };
    for st in s.block.iter().flatten() {
        if inherited_option(st, &mut b.inherited, f, &mut b.notes) {
            continue;
        }
        let here = at(st);
        let arg = st.args.first().map(String::as_str).unwrap_or_default();
        match st.keyword.as_str() {
            "real_server" => b.reals.push(st),
            "lb_kind" | "lvs_method" => match method(st) {
                Ok(m) => {
                    b.method = m;
                    if st.args.len() > 1 {
                        b.notes.push(f.warn(
                            &here,
                            format!("{} {}: xdpvs tunnels with IPIP only", st.keyword, st.args.join(" ")),
                        ));
                    }
                }
                Err(why) => b.refused = Some(why),
            },
            "protocol" => match arg.to_ascii_uppercase().as_str() {
                "TCP" => b.protocol = Protocol::Tcp,
                "UDP" => b.protocol = Protocol::Udp,
                other => {
                    b.refused = Some(format!("protocol {other}: xdpvs balances TCP and UDP only"))
                }
            },
            "lb_algo" | "lvs_sched" => b.notes.push(scheduler(&here, &st.keyword, arg, f)),
            "persistence_timeout" => match st.args.as_slice() {
                [] => b.persistence = Some((PERSIST_DEFAULT_S, here)),
                [t] if t.parse::<u64>().is_ok() => {
                    b.persistence = t.parse().ok().map(|secs| (secs, here))
                }
                _ => b.notes.push(no_equivalent(st, f)),
            },
            "persistence_granularity" => b.granularity = Some(st),
            "sorry_server" => match addr_port(st) {
                Ok(a) => b.sorry = Some(a),
                Err(e) => b
                    .notes
                    .push(f.warn(&here, format!("sorry_server: {e}: not converted"))),
            },
            "quorum" => match arg.parse::<u32>() {
                Ok(q) => b.quorum = Some((q, here)),
                Err(_) => b.notes.push(no_equivalent(st, f)),
            },
            "hysteresis" => b.notes.push(f.warn(
                &here,
                "hysteresis: xdpvs's min_healthy has no flap damping",
            )),
            "ha_suspend" => b.notes.push(f.warn(
                &here,
                "ha_suspend: xdpvs probes whether or not this node holds the VIP (so a backup is ready when it takes over)",
            )),
            "omega" => b.notes.push(f.warn(
                &here,
                "omega: xdpvs runs no scripts on shutdown",
            )),
            "quorum_up" | "quorum_down" => b.notes.push(f.warn(
                &here,
                format!("{}: xdpvs runs no scripts; `xdpvs ready` and the metrics report the virtual server's state", st.keyword),
            )),
            _ => b.notes.push(no_equivalent(st, f)),
        }
    }
    b
}

fn persistence(
    b: &Body,
    ipv4: bool,
    notes: &mut Vec<String>,
    f: &mut Findings,
) -> Option<Persistence> {
    let Some((secs, timeout_at)) = &b.persistence else {
        if let Some(g) = b.granularity {
            notes.push(f.warn(
                &at(g),
                "persistence_granularity without persistence_timeout: no persistence",
            ));
        }
        return None;
    };
    let secs = *secs;
    if secs == 0 {
        // As ipvsadm's -p 0: not persistent.
        return None;
    }
    let mut timeout = std::time::Duration::from_secs(secs);
    let (lo, hi) = (1, 7 * 24 * 3600);
    if !(lo..=hi).contains(&secs) {
        timeout = std::time::Duration::from_secs(secs.clamp(lo, hi));
        notes.push(f.warn(
            timeout_at,
            format!(
                "persistence_timeout {secs}: xdpvs takes 1s to 168h: {}s",
                timeout.as_secs()
            ),
        ));
    }
    let netmask = b.granularity.and_then(|g| {
        let text = g.args.first().map(String::as_str).unwrap_or_default();
        let n = prefix_len(text, ipv4);
        if n.is_none() {
            notes.push(f.warn(
                &at(g),
                format!("persistence_granularity {text}: not a netmask of the VIP's family: each client on its own"),
            ));
        }
        n
    });
    Some(Persistence { timeout, netmask })
}

/// keepalived's quorum is a sum of weights; xdpvs's min_healthy counts reals. They
/// agree when every real has one weight.
fn quorum(svc: &mut Service, q: u32, at: &At, f: &mut Findings) {
    let weights: Vec<u32> = svc.reals.iter().map(|r| r.weight).collect();
    match weights.first() {
        Some(&w) if w > 0 && weights.iter().all(|&x| x == w) => {
            let n = q.div_ceil(w);
            svc.min_healthy = Some(n);
            svc.comments.push(f.warn(
                at,
                format!("quorum {q}: min_healthy {n} (every weight is {w}); below it `xdpvs ready` fails, but the sorry server still waits until no real is up"),
            ));
        }
        _ => svc.comments.push(f.warn(
            at,
            format!("quorum {q} is a sum of weights and the reals' weights differ: xdpvs's min_healthy counts reals; set it by hand"),
        )),
    }
}
