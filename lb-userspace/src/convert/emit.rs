//! Writes a [`Plan`] as xdpvs YAML, each item preceded by the comments about it.

use std::{fmt::Write as _, net::IpAddr};

use super::{
    plan::{Check, Entry, Plan, Real, Service},
    text::yaml_str,
};
use crate::config::{fmt_duration, CheckType, Method};

/// What the sources do not say and the command line may: the top-level fields.
#[derive(Debug, Clone, Default)]
pub struct Top {
    /// `interfaces`, each with the comment above it (a placeholder says so).
    pub interfaces: Vec<String>,
    pub interfaces_comment: Vec<String>,
    /// `tunnel_source` addresses, with the comment above them.
    pub tunnel_sources: Vec<IpAddr>,
    pub tunnel_comment: Vec<String>,
}

/// Returns: the (file, line) a comment starts with (`file:line: ...`), to put an
/// item's comments in source order.
fn source_order(comment: &str) -> (String, usize) {
    let head = comment.split(": ").next().unwrap_or_default();
    match head.rsplit_once(':') {
        Some((file, line)) => (file.to_string(), line.parse().unwrap_or(0)),
        None => (head.to_string(), 0),
    }
}

/// Returns: `lines` in source order within each file (a stable sort: files keep the
/// order they were read in).
fn sorted(lines: &[String]) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    let mut keyed: Vec<(usize, usize, &String)> = lines
        .iter()
        .map(|l| {
            let (file, line) = source_order(l);
            let i = files.iter().position(|f| *f == file).unwrap_or_else(|| {
                files.push(file);
                files.len() - 1
            });
            (i, line, l)
        })
        .collect();
    keyed.sort_by_key(|&(i, line, _)| (i, line));
    keyed.into_iter().map(|(_, _, l)| l.clone()).collect()
}

fn comments(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        // A comment is one line: a line break in the source text must not end it.
        let l = l.replace(['\n', '\r'], " ");
        let _ = writeln!(out, "{indent}# {l}");
    }
}

/// Returns: the YAML text of `plan` with the top-level fields of `top`.
pub fn yaml(plan: &Plan, top: &Top) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# xdpvs configuration converted from {} ({}) by `xdpvs convert`.",
        plan.source, plan.format
    );
    let _ = writeln!(
        out,
        "# Each comment marks what did not map exactly: read them, then run `xdpvs check`."
    );
    comments(&mut out, "", &plan.notes);
    out.push('\n');
    comments(&mut out, "", &top.interfaces_comment);
    let names: Vec<String> = top.interfaces.iter().map(|i| yaml_str(i)).collect();
    let _ = writeln!(out, "interfaces: [{}]", names.join(", "));
    if let Some(c) = &plan.vips_owned_by {
        comments(&mut out, "", std::slice::from_ref(c));
        let _ = writeln!(out, "manage_vips: false");
    }
    if !top.tunnel_sources.is_empty() {
        comments(&mut out, "", &top.tunnel_comment);
        let list: Vec<String> = top.tunnel_sources.iter().map(|a| a.to_string()).collect();
        match list.as_slice() {
            [one] => {
                let _ = writeln!(out, "tunnel_source: {one}");
            }
            _ => {
                let _ = writeln!(out, "tunnel_source: [{}]", list.join(", "));
            }
        }
    }
    if plan.entries.is_empty() {
        let _ = writeln!(out, "virtual_servers: []");
        return out;
    }
    let converted = plan.entries.iter().any(|e| matches!(e, Entry::Service(_)));
    let _ = writeln!(
        out,
        "virtual_servers:{}",
        if converted { "" } else { " []" }
    );
    for e in &plan.entries {
        match e {
            Entry::Service(s) => service(&mut out, s),
            Entry::Refused(lines) => comments(&mut out, "  ", lines),
        }
    }
    out
}

fn service(out: &mut String, s: &Service) {
    // The first comment says where the virtual server was defined: it stays first.
    if let Some((title, rest)) = s.comments.split_first() {
        comments(out, "  ", std::slice::from_ref(title));
        comments(out, "  ", &sorted(rest));
    }
    let _ = writeln!(out, "  - name: {}", s.name());
    let _ = writeln!(out, "    address: {}", s.address);
    let _ = writeln!(out, "    port: {}", s.port);
    let _ = writeln!(out, "    protocol: {}", s.protocol);
    let _ = writeln!(out, "    method: {}", s.method);
    if let Some(p) = &s.persistence {
        let mask = p
            .netmask
            .map(|n| format!(", netmask: {n}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    persistence: {{ timeout: {}{mask} }}",
            fmt_duration(p.timeout)
        );
    }
    if let Some(sorry) = &s.sorry {
        let port = sorry
            .port
            .map(|p| format!(", port: {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    sorry_server: {{ address: {}{port} }}",
            sorry.address
        );
    }
    if let Some(n) = s.min_healthy {
        let _ = writeln!(out, "    min_healthy: {n}");
    }
    if let Some(c) = &s.check {
        let _ = writeln!(out, "    health_check: {}", check(c));
    }
    if s.reals.is_empty() {
        let _ = writeln!(out, "    real_servers: []");
        return;
    }
    let _ = writeln!(out, "    real_servers:");
    for r in &s.reals {
        real(out, r, s.method);
    }
}

fn real(out: &mut String, r: &Real, method: Method) {
    comments(out, "      ", &sorted(&r.comments));
    let _ = writeln!(out, "      - address: {}", r.address);
    if let (Some(p), Method::Nat) = (r.port, method) {
        let _ = writeln!(out, "        port: {p}");
    }
    let _ = writeln!(out, "        weight: {}", r.weight);
    if let Some(c) = &r.check {
        let _ = writeln!(out, "        health_check: {}", check(c));
    }
}

/// Returns: a probe as a one-line flow mapping.
fn check(c: &Check) -> String {
    let mut f = vec![format!("type: {}", c.kind)];
    if let Some(p) = c.port {
        f.push(format!("port: {p}"));
    }
    if let Some(p) = &c.path {
        f.push(format!("path: {}", yaml_str(p)));
    }
    if let Some(h) = &c.host {
        f.push(format!("host: {}", yaml_str(h)));
    }
    if let Some(e) = &c.expect_status {
        f.push(format!("expect_status: {e}"));
    }
    if c.insecure && c.kind == CheckType::Https {
        f.push("insecure: true".to_string());
    }
    if c.kind != CheckType::None {
        if let Some(i) = c.interval {
            f.push(format!("interval: {}", fmt_duration(i)));
        }
        if let Some(t) = c.timeout {
            f.push(format!("timeout: {}", fmt_duration(t)));
        }
        if let Some(r) = c.rise {
            f.push(format!("rise: {r}"));
        }
        if let Some(n) = c.fall {
            f.push(format!("fall: {n}"));
        }
    }
    format!("{{ {} }}", f.join(", "))
}
