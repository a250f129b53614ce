//! `xdpvs convert`: a keepalived.conf (its LVS part) or the output of `ipvsadm-save -n`
//! as an xdpvs configuration. Whatever has no equivalent becomes a YAML comment and a
//! warning naming its file and line; the output always validates (`xdpvs check`).

mod assemble;
mod emit;
mod finding;
mod ipvsadm;
mod keepalived;
mod plan;
mod text;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

pub use finding::{Finding, Level};

use self::{
    emit::Top,
    finding::{At, Findings},
    plan::{Entry, Plan},
};
use crate::config::{self, AnyInterface, ConfigErrors, Method};

/// The interface written when the command line names none: it exists on every host,
/// so the output validates, and the comment above it says to change it.
pub const PLACEHOLDER_INTERFACE: &str = "lo";
/// Tunnel sources written when a tunnel virtual server needs one and the command line
/// gives none (documentation addresses, RFC 5737 and RFC 3849).
const PLACEHOLDER_TUNNEL_V4: &str = "192.0.2.1";
const PLACEHOLDER_TUNNEL_V6: &str = "2001:db8::1";

/// What is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// keepalived.conf (virtual_server blocks; VRRP stays with keepalived).
    Keepalived,
    /// `ipvsadm-save -n` / `ipvsadm -S -n`.
    Ipvsadm,
}

/// What the sources do not say.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `interfaces`; empty: a placeholder.
    pub interfaces: Vec<String>,
    /// `tunnel_source` (at most one per family); a family a tunnel needs and this
    /// lacks gets a placeholder.
    pub tunnel_sources: Vec<IpAddr>,
}

/// A converted configuration.
#[derive(Debug)]
pub struct Output {
    pub yaml: String,
    /// Every remark, in input order.
    pub findings: Vec<Finding>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("include cycle: {chain}")]
    IncludeCycle { chain: String },
    #[error("xdpvs convert wrote a configuration that does not validate (a bug: please report it with the input)\n{0}")]
    Invalid(ConfigErrors),
}

/// Converts the file at `path` (`-`: standard input).
/// Returns: the YAML and the findings, or why the input cannot be read.
pub fn convert(format: Format, path: &Path, options: &Options) -> Result<Output, ConvertError> {
    let mut f = Findings::default();
    let plan = match format {
        Format::Keepalived => keepalived::convert(path, &mut f)?,
        Format::Ipvsadm => ipvsadm::convert(path, &mut f)?,
    };
    let top = top(&plan, options, &mut f);
    f.sort();
    let yaml = emit::yaml(&plan, &top);
    config::parse(&PathBuf::from("converted.yaml"), &yaml, &AnyInterface)
        .map_err(ConvertError::Invalid)?;
    Ok(Output {
        yaml,
        findings: f.0,
    })
}

/// The top-level fields: the command line's, or placeholders that validate, each with
/// a comment and a warning.
fn top(plan: &Plan, options: &Options, f: &mut Findings) -> Top {
    let whole = At {
        file: plan.source.clone(),
        line: 0,
    };
    let mut top = Top::default();
    if options.interfaces.is_empty() {
        f.warn(
            &whole,
            format!("no --interface given: `interfaces: [{PLACEHOLDER_INTERFACE}]` is a placeholder; set the interfaces the VIPs' traffic arrives on"),
        );
        top.interfaces = vec![PLACEHOLDER_INTERFACE.to_string()];
        top.interfaces_comment = vec![
            format!("SET ME: the interfaces the VIPs' traffic arrives on (`{PLACEHOLDER_INTERFACE}` is a placeholder"),
            "that passes `xdpvs check`; `xdpvs convert --interface NAME` writes the real ones).".to_string(),
        ];
    } else {
        top.interfaces = options.interfaces.clone();
    }
    top.tunnel_sources = options.tunnel_sources.clone();
    for (v4, placeholder) in [
        (true, PLACEHOLDER_TUNNEL_V4),
        (false, PLACEHOLDER_TUNNEL_V6),
    ] {
        let needed = plan.entries.iter().any(|e| {
            matches!(e, Entry::Service(s) if s.method == Method::Tunnel && s.address.is_ipv4() == v4)
        });
        if needed && !top.tunnel_sources.iter().any(|a| a.is_ipv4() == v4) {
            let family = if v4 { "IPv4" } else { "IPv6" };
            f.warn(
                &whole,
                format!("tunnel virtual servers need an {family} tunnel_source: {placeholder} is a placeholder; set this balancer's own address (or --tunnel-source)"),
            );
            top.tunnel_comment.push(format!(
                "SET ME: {placeholder} is a placeholder for this balancer's own {family} address, the outer source of tunnelled packets."
            ));
            top.tunnel_sources
                .push(placeholder.parse().expect("a constant address"));
        }
    }
    top
}

#[cfg(test)]
mod tests;
