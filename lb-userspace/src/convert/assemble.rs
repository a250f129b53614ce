//! Puts converted items into a [`Plan`] so that the result always validates: what
//! `xdpvs check` would refuse (a real of the other family, a port DR cannot change, a
//! virtual server defined twice) is left out or adjusted here, with a warning.

use std::collections::HashSet;

use lb_common::maps::{MAX_REALS, MAX_VS};

use super::{
    finding::{At, Findings},
    plan::{Entry, Plan, Real, Service},
};
use crate::config::{Method, MAX_WEIGHT};

/// Adds `real` to `svc`, or says why it cannot be added.
pub fn add_real(svc: &mut Service, mut real: Real, at: &At, f: &mut Findings) {
    let shown = real.address;
    if real.address.is_ipv4() != svc.address.is_ipv4() {
        let c = f.warn(
            at,
            format!("real server {shown} is not of the VIP's address family: not converted"),
        );
        svc.comments.push(c);
        return;
    }
    if real.port == Some(svc.port) {
        real.port = None;
    }
    if let Some(p) = real.port {
        if svc.method != Method::Nat {
            let c = f.warn(
                at,
                format!(
                    "real server {shown} port {p}: {} does not change the port (LVS ignores it too); it receives port {}",
                    svc.method, svc.port
                ),
            );
            real.comments.push(c);
            real.port = None;
        }
    }
    if real.weight > MAX_WEIGHT {
        let c = f.warn(
            at,
            format!(
                "weight {} is above {MAX_WEIGHT}: set to {MAX_WEIGHT}",
                real.weight
            ),
        );
        real.comments.push(c);
        real.weight = MAX_WEIGHT;
    }
    let port = real.port.unwrap_or(svc.port);
    if svc
        .reals
        .iter()
        .any(|r| r.address == real.address && r.port.unwrap_or(svc.port) == port)
    {
        let c = f.warn(
            at,
            format!("real server {shown} port {port} is listed twice: the second is not converted"),
        );
        svc.comments.push(c);
        return;
    }
    svc.reals.push(real);
}

/// Settles what depends on the whole virtual server (its sorry server, `min_healthy`,
/// a probe shared by every real), then adds it to `plan` unless another one already
/// has its address, port and protocol or the table is full.
pub fn add_service(plan: &mut Plan, mut svc: Service, at: &At, f: &mut Findings) {
    finish_sorry(&mut svc, at, f);
    if let Some(n) = svc.min_healthy {
        let most = svc.reals.len().max(1) as u32;
        if n > most {
            let c = f.warn(
                at,
                format!(
                    "min_healthy {n} is more than the {} real servers: set to {most}",
                    svc.reals.len()
                ),
            );
            svc.comments.push(c);
            svc.min_healthy = Some(most);
        }
    }
    hoist_check(&mut svc);
    let mut seen = HashSet::new();
    let mut count = 0;
    let mut reals = 0;
    for e in &plan.entries {
        if let Entry::Service(s) = e {
            seen.insert((s.address, s.port, s.protocol));
            count += 1;
            reals += s.reals.len();
        }
    }
    let what = format!("{} {}:{}", svc.protocol, svc.address, svc.port);
    if seen.contains(&(svc.address, svc.port, svc.protocol)) {
        let c = f.warn(
            at,
            format!("{what} is defined twice: the second is not converted"),
        );
        plan.entries.push(Entry::Refused(vec![c]));
    } else if count >= MAX_VS as usize {
        let c = f.warn(
            at,
            format!("{what}: xdpvs takes at most {MAX_VS} virtual servers: not converted"),
        );
        plan.entries.push(Entry::Refused(vec![c]));
    } else if reals + svc.reals.len() > MAX_REALS as usize {
        let c = f.warn(
            at,
            format!("{what}: xdpvs takes at most {MAX_REALS} real servers over all virtual servers: not converted"),
        );
        plan.entries.push(Entry::Refused(vec![c]));
    } else {
        plan.entries.push(Entry::Service(Box::new(svc)));
    }
}

fn finish_sorry(svc: &mut Service, at: &At, f: &mut Findings) {
    let Some(mut sorry) = svc.sorry else {
        return;
    };
    svc.sorry = None;
    if sorry.address.is_ipv4() != svc.address.is_ipv4() {
        let c = f.warn(
            at,
            format!(
                "sorry server {} is not of the VIP's address family: not converted",
                sorry.address
            ),
        );
        svc.comments.push(c);
        return;
    }
    if sorry.port == Some(svc.port) {
        sorry.port = None;
    }
    if let (Some(p), false) = (sorry.port, svc.method == Method::Nat) {
        let c = f.warn(
            at,
            format!(
                "sorry server port {p}: {} does not change the port (LVS ignores it too); it receives port {}",
                svc.method, svc.port
            ),
        );
        svc.comments.push(c);
        sorry.port = None;
    }
    let port = sorry.port.unwrap_or(svc.port);
    if svc
        .reals
        .iter()
        .any(|r| r.address == sorry.address && r.port.unwrap_or(svc.port) == port)
    {
        let c = f.warn(
            at,
            format!(
                "sorry server {} is also a real server: xdpvs's sorry server stands in for the reals, so it is not converted",
                sorry.address
            ),
        );
        svc.comments.push(c);
        return;
    }
    svc.sorry = Some(sorry);
}

/// Moves a probe every real shares up to the virtual server.
fn hoist_check(svc: &mut Service) {
    let Some(first) = svc.reals.first().and_then(|r| r.check.clone()) else {
        return;
    };
    if svc.reals.iter().all(|r| r.check.as_ref() == Some(&first)) {
        svc.check = Some(first);
        for r in &mut svc.reals {
            r.check = None;
        }
    }
}

/// Returns: the comment for scheduler `name` (set by `keyword` at `at`): a note for
/// the hashing ones Maglev resembles, a warning for the others.
pub fn scheduler(at: &At, keyword: &str, name: &str, f: &mut Findings) -> String {
    match name {
        "mh" => f.note(
            at,
            format!("{keyword} mh: Maglev hashing, which xdpvs always uses (weighted)"),
        ),
        "sh" => f.note(
            at,
            format!("{keyword} sh: xdpvs's weighted Maglev hashes the connection, not only the source; persistence keeps a client on one real"),
        ),
        other => f.warn(
            at,
            format!("{keyword} {other}: xdpvs always uses weighted Maglev consistent hashing; {other} is not available"),
        ),
    }
}
