//! `virtual_server_group`: the addresses (single, `A-B` ranges, `A/nn` blocks) and
//! ports of the virtual servers that use it, expanded one by one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::parser::Stmt;
use crate::convert::finding::{At, Findings};

/// Most addresses one group may expand to: xdpvs's whole virtual server table.
const MOST: u128 = lb_common::maps::MAX_VS as u128;

/// One address and port of a group.
#[derive(Debug, Clone)]
pub struct Member {
    pub address: IpAddr,
    pub port: Option<u16>,
    pub at: At,
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v).into(),
        IpAddr::V6(v) => v.into(),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Returns: the first and last address of `text` (`A`, `A-B`, `A-LAST`, `A/nn`).
fn range(text: &str) -> Option<(IpAddr, IpAddr)> {
    if let Some((base, len)) = text.split_once('/') {
        let a: IpAddr = base.parse().ok()?;
        let bits = if a.is_ipv4() { 32 } else { 128 };
        let len: u32 = len.parse().ok().filter(|&l| l <= bits)?;
        let host = match bits - len {
            0 => 0,
            128 => u128::MAX,
            n => (1u128 << n) - 1,
        };
        let first = to_u128(a) & !host;
        return Some((
            from_u128(a.is_ipv4(), first),
            from_u128(a.is_ipv4(), first | host),
        ));
    }
    let Some((first, last)) = text.split_once('-') else {
        let a = text.parse().ok()?;
        return Some((a, a));
    };
    let a: IpAddr = first.parse().ok()?;
    if let Ok(b) = last.parse::<IpAddr>() {
        return (b.is_ipv4() == a.is_ipv4()).then_some((a, b));
    }
    // The last byte (IPv4, decimal) or group (IPv6, hex) of the first address.
    let (width, radix) = if a.is_ipv4() { (8, 10) } else { (16, 16) };
    let end = u128::from_str_radix(last, radix)
        .ok()
        .filter(|&e| e < 1 << width)?;
    let n = (to_u128(a) & !((1u128 << width) - 1)) | end;
    Some((a, from_u128(a.is_ipv4(), n)))
}

/// Expands a group's block. Returns: its members, or why it cannot be converted.
pub fn expand(
    block: &[Stmt],
    f: &mut Findings,
    notes: &mut Vec<String>,
) -> Result<Vec<Member>, String> {
    let mut out = Vec::new();
    for s in block {
        let at = At {
            file: s.file.clone(),
            line: s.line,
        };
        if s.keyword == "fwmark" {
            notes.push(f.warn(
                &at,
                "fwmark in a group: xdpvs matches address, port and protocol, not firewall marks: this member is not converted",
            ));
            continue;
        }
        let Some((first, last)) = range(&s.keyword) else {
            return Err(format!(
                "{at}: `{}` is not an address, range or prefix",
                s.keyword
            ));
        };
        let port = match s.args.as_slice() {
            [] => None,
            [p] => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{at}: `{p}` is not a port"))?,
            ),
            _ => return Err(format!("{at}: expected an address and a port")),
        };
        let (lo, hi) = (to_u128(first), to_u128(last));
        if hi < lo {
            return Err(format!("{at}: the range `{}` runs backwards", s.keyword));
        }
        if (hi - lo)
            .saturating_add(1)
            .saturating_add(out.len() as u128)
            > MOST
        {
            return Err(format!(
                "{at}: the group expands to more than {MOST} virtual servers, xdpvs's limit"
            ));
        }
        for n in lo..=hi {
            out.push(Member {
                address: from_u128(first.is_ipv4(), n),
                port,
                at: at.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::range;

    fn r(t: &str) -> Option<(String, String)> {
        range(t).map(|(a, b)| (a.to_string(), b.to_string()))
    }

    #[test]
    fn ranges_and_prefixes() {
        let p = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(r("10.0.0.1"), p("10.0.0.1", "10.0.0.1"));
        assert_eq!(r("10.0.0.1-3"), p("10.0.0.1", "10.0.0.3"));
        assert_eq!(r("10.0.0.250-10.0.1.2"), p("10.0.0.250", "10.0.1.2"));
        assert_eq!(r("10.0.0.8/30"), p("10.0.0.8", "10.0.0.11"));
        assert_eq!(r("2001:db8::a-f"), p("2001:db8::a", "2001:db8::f"));
        assert_eq!(r("10.0.0.1-300"), None);
        assert_eq!(
            r("::/0"),
            p("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert_eq!(r("10.0.0.0/0"), p("0.0.0.0", "255.255.255.255"));
    }
}
