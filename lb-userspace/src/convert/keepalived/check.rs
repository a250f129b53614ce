//! keepalived's health checkers as xdpvs probes. keepalived checks a real every
//! `delay_loop`, declares it down after `retry` more failures (spaced by
//! `delay_before_retry`) and up after one success; xdpvs probes every `interval` with
//! `fall` and `rise` counts, so `interval` = `delay_loop`, `fall` = `retry` + 1,
//! `rise` = 1.

use std::time::Duration;

use super::{parser::Stmt, Inherited};
use crate::{
    config::{fmt_duration, CheckType, Protocol},
    convert::{
        finding::{At, Findings},
        plan::Check,
        text::{expect_status, seconds},
    },
};

/// keepalived's defaults.
const DELAY_LOOP: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// xdpvs's limits (see config::validate).
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_TIMEOUT: Duration = Duration::from_millis(10);

/// A checker as converted.
pub struct Probe {
    pub check: Check,
    /// The checker has an xdpvs equivalent (TCP_CHECK, HTTP_GET, SSL_GET).
    pub supported: bool,
    pub name: String,
    pub at: At,
}

/// Checkers keepalived has and xdpvs does not.
pub const UNSUPPORTED: &[&str] = &[
    "MISC_CHECK",
    "SMTP_CHECK",
    "DNS_CHECK",
    "UDP_CHECK",
    "PING_CHECK",
    "FILE_CHECK",
    "BFD_CHECK",
];

pub fn is_checker(keyword: &str) -> bool {
    matches!(keyword, "TCP_CHECK" | "HTTP_GET" | "SSL_GET") || UNSUPPORTED.contains(&keyword)
}

fn at(s: &Stmt) -> At {
    At {
        file: s.file.clone(),
        line: s.line,
    }
}

/// Converts one checker block of a real on port `real_port`. Its remarks go to `notes`.
pub fn probe(
    stmt: &Stmt,
    inherited: &Inherited,
    protocol: Protocol,
    real_port: u16,
    f: &mut Findings,
    notes: &mut Vec<String>,
) -> Probe {
    let here = at(stmt);
    let mut inh = inherited.clone();
    let mut port = None;
    let mut urls: Vec<&Stmt> = Vec::new();
    let name = stmt.keyword.clone();
    let supported = !UNSUPPORTED.contains(&name.as_str());
    let mut retry_default = 1;
    for s in stmt.block.iter().flatten() {
        if super::inherited_option(s, &mut inh, f, notes) {
            continue;
        }
        match (s.keyword.as_str(), s.args.as_slice()) {
            ("connect_port", [p]) if p.parse::<u16>().is_ok_and(|p| p > 0) => {
                port = p.parse().ok();
            }
            ("url", _) if s.block.is_some() => urls.push(s),
            ("enable_sni", _) if name == "SSL_GET" => notes.push(f.note(
                &at(s),
                "enable_sni: xdpvs sends the probe's host as SNI whenever host is set",
            )),
            _ if !supported => {} // the whole checker is reported below
            _ => notes.push(super::no_equivalent(s, f)),
        }
    }
    if name == "DNS_CHECK" {
        retry_default = 3;
    } else if name == "MISC_CHECK" {
        retry_default = 0;
    }
    let kind = match name.as_str() {
        "TCP_CHECK" => CheckType::Tcp,
        "HTTP_GET" => CheckType::Http,
        "SSL_GET" => CheckType::Https,
        _ => {
            let (kind, what) = match protocol {
                Protocol::Tcp => (
                    CheckType::Tcp,
                    "a tcp probe of the same port stands in for it",
                ),
                Protocol::Udp => (CheckType::None, "the real is not probed (type none)"),
            };
            notes.push(f.warn(
                &here,
                format!("{name}: xdpvs has no such probe (tcp, http and https only); {what}"),
            ));
            kind
        }
    };
    if kind == CheckType::None {
        return Probe {
            check: Check::of(CheckType::None),
            supported,
            name,
            at: here,
        };
    }
    let mut check = Check::of(kind);
    // A udp virtual server's probe must name its (TCP) port.
    check.port = match protocol {
        Protocol::Udp => Some(port.unwrap_or(real_port)),
        Protocol::Tcp => port.filter(|&p| p != real_port),
    };
    let default = |set: bool| if set { "" } else { " (keepalived's default)" };
    let mut interval = inh.delay_loop.unwrap_or(DELAY_LOOP);
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        let to = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        notes.push(f.warn(
            &here,
            format!(
                "delay_loop {}{} is outside xdpvs's 100ms to 1h: interval {}",
                fmt_duration(interval),
                default(inh.delay_loop.is_some()),
                fmt_duration(to)
            ),
        ));
        interval = to;
    }
    let mut timeout = inh.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
    if !(MIN_TIMEOUT..=interval).contains(&timeout) {
        let to = timeout.clamp(MIN_TIMEOUT, interval);
        notes.push(f.warn(
            &here,
            format!(
                "connect_timeout {}{}: xdpvs's timeout is at least 10ms and at most the interval ({}): timeout {}",
                fmt_duration(timeout),
                default(inh.connect_timeout.is_some()),
                fmt_duration(interval),
                fmt_duration(to)
            ),
        ));
        timeout = to;
    }
    check.interval = Some(interval);
    check.timeout = Some(timeout);
    check.rise = Some(1);
    let retry = inh.retry.unwrap_or(retry_default);
    let fall = retry.saturating_add(1);
    if fall > 1000 {
        notes.push(f.warn(
            &here,
            format!("retry {retry}: xdpvs counts at most 1000 failures: fall 1000"),
        ));
    }
    check.fall = Some(fall.min(1000));
    if matches!(kind, CheckType::Http | CheckType::Https) {
        http(&mut check, &urls, &inh, f, notes);
    }
    if kind == CheckType::Https {
        check.insecure = true;
        notes.push(f.note(
            &here,
            "SSL_GET does not verify the real's certificate: insecure: true keeps that; set ca_file (and host) to verify it",
        ));
    }
    Probe {
        check,
        supported,
        name,
        at: here,
    }
}

/// The first `url` block: path, status codes, virtual host. Later ones and what
/// xdpvs does not check (digest, regex) are reported.
fn http(
    check: &mut Check,
    urls: &[&Stmt],
    inh: &Inherited,
    f: &mut Findings,
    notes: &mut Vec<String>,
) {
    let mut host = inh.virtualhost.clone();
    // Where the host came from, if from a url block.
    let mut host_at = urls.first().map(|u| at(u));
    let mut status: Option<(Vec<String>, At)> = None;
    if let Some(url) = urls.first() {
        for s in url.block.iter().flatten() {
            match (s.keyword.as_str(), s.args.as_slice()) {
                ("path", [p]) if request_path(p) => check.path = Some(p.clone()),
                ("path", _) => notes.push(f.warn(
                    &at(s),
                    format!("path {}: xdpvs needs a path starting with `/` without spaces or < > \\ ^ ` # (percent-encode them): path /", s.args.join(" ")),
                )),
                ("status_code", codes) if !codes.is_empty() => status = Some((codes.to_vec(), at(s))),
                ("virtualhost", [h]) => {
                    host = Some(h.clone());
                    host_at = Some(at(s));
                }
                ("digest", _) => notes.push(f.warn(
                    &at(s),
                    "digest: xdpvs checks the status code only, not an MD5 of the body",
                )),
                _ => notes.push(super::no_equivalent(s, f)),
            }
        }
    }
    for extra in urls.iter().skip(1) {
        notes.push(f.warn(
            &at(extra),
            "another url: xdpvs probes one path per real: only the first url is converted",
        ));
    }
    let nowhere = At {
        file: String::new(),
        line: 0,
    };
    let (codes, status_at) =
        status.unwrap_or_else(|| (vec!["200-299".to_string()], nowhere.clone()));
    match expect_status(&codes) {
        Ok(e) => check.expect_status = Some(e),
        Err(bad) => {
            notes.push(f.warn(
                &status_at,
                format!("status_code `{bad}` is not a status or range: expect_status '200-299'"),
            ));
            check.expect_status = Some("'200-299'".to_string());
        }
    }
    check.host = host.filter(|h| {
        let ok = !h.is_empty()
            && !h.chars().any(|c| c.is_whitespace() || c.is_control())
            && (check.kind != CheckType::Https || crate::config::tls_name(h).is_ok());
        if !ok {
            notes.push(f.warn(
                host_at.as_ref().unwrap_or(&nowhere),
                format!("virtualhost `{h}` is not a host name xdpvs can send: the real's address is sent"),
            ));
        }
        ok
    });
}

/// Returns: whether `p` is a request path the probe can send as it is (what
/// config::validate accepts).
fn request_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.chars().any(|c| {
            !c.is_ascii() || c.is_whitespace() || c.is_control() || "<>\\^`#\"{}|".contains(c)
        })
}

/// Returns: `text` as keepalived's time in seconds, or a warning comment.
pub fn timer(s: &Stmt, f: &mut Findings) -> Result<Duration, String> {
    match s.args.as_slice() {
        [t] => seconds(t).ok_or_else(|| {
            f.warn(
                &at(s),
                format!("{}: `{t}` is not a time in seconds: ignored", s.keyword),
            )
        }),
        _ => Err(f.warn(
            &at(s),
            format!("{}: expected one time in seconds: ignored", s.keyword),
        )),
    }
}
