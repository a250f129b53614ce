//! `real_server` blocks: address, weight and the checker that becomes the real's probe.

use super::{
    addr_port, at, check, inherited_option, method, no_equivalent, parser::Stmt, Inherited,
};
use crate::{
    config::CheckType,
    convert::{
        finding::{At, Findings},
        plan::{Check, Real, Service},
        ConvertError,
    },
};

/// Converts one `real_server` of `svc`. Returns: the real and where it was written.
pub fn real(
    s: &Stmt,
    svc: &Service,
    vs_inherited: &Inherited,
    f: &mut Findings,
) -> Result<(Real, At), ConvertError> {
    let here = at(s);
    let (address, port) = addr_port(s)?;
    let mut r = Real {
        comments: Vec::new(),
        address,
        port,
        weight: 1,
        check: None,
    };
    let mut inh = vs_inherited.clone();
    let mut checkers = Vec::new();
    for st in s.block.iter().flatten() {
        if inherited_option(st, &mut inh, f, &mut r.comments) {
            continue;
        }
        match (st.keyword.as_str(), st.args.as_slice()) {
            ("weight", [w]) => match w.parse::<u64>() {
                Ok(n) => r.weight = u32::try_from(n).unwrap_or(u32::MAX),
                Err(_) => r.comments.push(f.warn(
                    &at(st),
                    format!("weight `{w}` is not a number: weight 1"),
                )),
            },
            ("lvs_method", _) => match method(st) {
                Ok(m) if m == svc.method => {}
                Ok(m) => r.comments.push(f.warn(
                    &at(st),
                    format!("lvs_method {m}: xdpvs has one method per virtual server; this real uses {}", svc.method),
                )),
                Err(why) => r.comments.push(f.warn(&at(st), why)),
            },
            (k, _) if check::is_checker(k) => checkers.push(st),
            _ => r.comments.push(no_equivalent(st, f)),
        }
    }
    let real_port = port.unwrap_or(svc.port);
    let mut probes: Vec<check::Probe> = checkers
        .iter()
        .map(|c| check::probe(c, &inh, svc.protocol, real_port, f, &mut r.comments))
        .collect();
    r.check = Some(match probes.iter().position(|p| p.supported) {
        None if probes.is_empty() => Check::of(CheckType::None),
        chosen => {
            let chosen = probes.remove(chosen.unwrap_or(0));
            for p in &probes {
                r.comments.push(f.warn(
                    &p.at,
                    format!("{}: xdpvs runs one probe per real (keepalived wants every checker to pass): only {} at {} is converted", p.name, chosen.name, chosen.at),
                ));
            }
            chosen.check
        }
    });
    Ok((r, here))
}
