//! keepalived.conf (its LVS part) into an xdpvs configuration. What belongs to
//! keepalived's VRRP stays there: xdpvs still uses keepalived for it (docs/ha.md).

mod check;
mod glob;
mod group;
mod lexer;
mod parser;
mod real;
mod service;

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use self::parser::{Reader, Stmt};
use super::{
    finding::{At, Findings},
    plan::Plan,
    ConvertError,
};
use crate::config::Method;

/// Blocks of keepalived's own (VRRP, global settings): keepalived keeps them.
const KEEPALIVED_OWN: &[&str] = &[
    "global_defs",
    "vrrp_instance",
    "vrrp_sync_group",
    "vrrp_script",
    "vrrp_track_process",
    "track_file",
    "static_ipaddress",
    "static_routes",
    "static_rules",
    "garp_group",
    "linkbeat_interfaces",
    "bfd_instance",
    "net_namespace",
    "instance",
];

/// Options a virtual server passes to its reals, and a real to its checkers.
#[derive(Debug, Clone, Default)]
pub struct Inherited {
    pub delay_loop: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub retry: Option<u32>,
    pub virtualhost: Option<String>,
}

fn at(s: &Stmt) -> At {
    At {
        file: s.file.clone(),
        line: s.line,
    }
}

/// Returns: a parse error at the statement `s`.
pub fn parse_err(s: &Stmt, message: String) -> ConvertError {
    ConvertError::Parse {
        file: s.file.clone(),
        line: s.line,
        message,
    }
}

/// Returns: `IP [PORT]` from the arguments of `s`.
pub fn addr_port(s: &Stmt) -> Result<(IpAddr, Option<u16>), ConvertError> {
    let addr = s
        .args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| parse_err(s, format!("expected an IP address after `{}`", s.keyword)))?;
    let port = match s.args.get(1) {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            parse_err(s, format!("expected a port after the address, found `{p}`"))
        })?),
    };
    Ok((addr, port))
}

/// Returns: the forwarding method `lb_kind`/`lvs_method` names, or why it has none in
/// xdpvs.
pub fn method(st: &Stmt) -> Result<Method, String> {
    match st.args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
        Some("DR") => Ok(Method::Dr),
        Some("NAT") => Ok(Method::Nat),
        Some("TUN") => Ok(Method::Tunnel),
        Some(k @ ("FNAT" | "FULLNAT")) => Err(format!(
            "{} {k}: xdpvs has no full NAT (source address rewritten too); its nat needs the balancer as the reals' gateway",
            st.keyword
        )),
        Some(k) => Err(format!("{} {k}: unknown forwarding method", st.keyword)),
        None => Err(format!("{}: expected DR, NAT or TUN", st.keyword)),
    }
}

/// Reports a statement xdpvs has no equivalent for. Returns: the comment for it.
pub fn no_equivalent(s: &Stmt, f: &mut Findings) -> String {
    let what = std::iter::once(s.keyword.as_str())
        .chain(s.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    f.warn(
        &at(s),
        format!("{what}: no equivalent in xdpvs; not converted"),
    )
}

/// Takes the options any level may set (and keepalived passes down). Remarks go to
/// `notes`. Returns: whether `s` was one of them.
pub fn inherited_option(
    s: &Stmt,
    inh: &mut Inherited,
    f: &mut Findings,
    notes: &mut Vec<String>,
) -> bool {
    match s.keyword.as_str() {
        "delay_loop" => match check::timer(s, f) {
            Ok(d) => inh.delay_loop = Some(d),
            Err(c) => notes.push(c),
        },
        "connect_timeout" => match check::timer(s, f) {
            Ok(d) => inh.connect_timeout = Some(d),
            Err(c) => notes.push(c),
        },
        "retry" | "nb_get_retry" => match s.args.as_slice() {
            [n] if n.parse::<u32>().is_ok() => inh.retry = n.parse().ok(),
            _ => notes.push(f.warn(
                &at(s),
                format!("{}: expected a number: ignored", s.keyword),
            )),
        },
        "virtualhost" => match s.args.as_slice() {
            [h] => inh.virtualhost = Some(h.clone()),
            _ => notes.push(no_equivalent(s, f)),
        },
        "delay_before_retry" => notes.push(f.warn(
            &at(s),
            "delay_before_retry: xdpvs probes every interval, failed or not (fall = retry + 1 probes at that interval)",
        )),
        "warmup" => notes.push(f.warn(
            &at(s),
            "warmup: xdpvs spreads the first probes of its reals over the interval by itself",
        )),
        "alpha" => notes.push(f.note(
            &at(s),
            "alpha: xdpvs always starts a real as down until its first probe succeeds",
        )),
        "inhibit_on_failure" => notes.push(f.warn(
            &at(s),
            "inhibit_on_failure: xdpvs takes a failed real out of the table and moves its connections to healthy reals; there is no weight-0-on-failure mode (`xdpvs real weight VS REAL 0` drains by hand)",
        )),
        _ => return false,
    }
    true
}

/// Converts the keepalived configuration at `path` (`-`: standard input, includes
/// relative to the current directory).
pub fn convert(path: &Path, f: &mut Findings) -> Result<Plan, ConvertError> {
    let (stmts, mut reader, source) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            ConvertError::Read {
                file: "<stdin>".to_string(),
                source,
            }
        })?;
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut reader = Reader::new(&cwd);
        (
            reader.text("<stdin>", &text, &cwd)?,
            reader,
            "<stdin>".to_string(),
        )
    } else {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut reader = Reader::new(&parser::normalize(&dir));
        let source = reader.show(path);
        (reader.file(path)?, reader, source)
    };
    let mut plan = Plan {
        format: "keepalived",
        source,
        ..Plan::default()
    };
    for (file, line, pattern) in std::mem::take(&mut reader.unmatched) {
        let c = f.warn(
            &At { file, line },
            format!("include {pattern}: no file matches"),
        );
        plan.notes.push(c);
    }
    let groups: HashMap<&str, &Stmt> = stmts
        .iter()
        .filter(|s| s.keyword == "virtual_server_group" && s.block.is_some())
        .filter_map(|s| s.args.first().map(|n| (n.as_str(), s)))
        .collect();
    for s in &stmts {
        let name = s.args.first().map(String::as_str).unwrap_or_default();
        match s.keyword.as_str() {
            "virtual_server" => service::virtual_server(s, &groups, &mut plan, f)?,
            "virtual_server_group" => {}
            "vrrp_instance" => {
                f.info(
                    &at(s),
                    format!("vrrp_instance {name}: stays with keepalived, which keeps doing VRRP (docs/ha.md)"),
                );
                plan.vips_owned_by.get_or_insert_with(|| {
                    format!(
                        "{}: vrrp_instance {name}: keepalived keeps the VIPs; track `xdpvs ready` in a vrrp_script (docs/ha.md)",
                        at(s)
                    )
                });
            }
            k if KEEPALIVED_OWN.contains(&k) => f.info(
                &at(s),
                format!("{k}: stays with keepalived; nothing to convert"),
            ),
            _ => {
                let c = no_equivalent(s, f);
                plan.notes.push(c);
            }
        }
    }
    Ok(plan)
}
