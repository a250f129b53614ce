//! Small parsers and printers both source formats share.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

/// Returns: the prefix length of a netmask written as `255.255.255.0`, `24` or `/24`,
/// if it is one (contiguous, at most the family's width).
pub fn prefix_len(text: &str, ipv4: bool) -> Option<u8> {
    let bits = if ipv4 { 32 } else { 128 };
    let t = text.trim_start_matches('/');
    if let Ok(n) = t.parse::<u8>() {
        return (n <= bits).then_some(n);
    }
    let mask: Ipv4Addr = t.parse().ok().filter(|_| ipv4)?;
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// Returns: a keepalived/ipvsadm time in seconds (`3`, `2.5`), if it is one.
pub fn seconds(text: &str) -> Option<Duration> {
    let s: f64 = text.parse().ok()?;
    (s.is_finite() && (0.0..1e9).contains(&s))
        .then(|| Duration::from_millis((s * 1000.0).round() as u64))
}

/// Parses `ADDR`, `ADDR:PORT` or `[V6]:PORT` (ipvsadm's `-t`/`-r` argument).
/// Returns: the address and the port if one is written.
pub fn addr_port(text: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((addr.parse().ok()?, port));
    }
    if let Ok(a) = text.parse::<IpAddr>() {
        return Some((a, None));
    }
    let (addr, port) = text.rsplit_once(':')?;
    Some((
        addr.parse::<Ipv4Addr>().ok()?.into(),
        Some(port.parse().ok()?),
    ))
}

/// Returns: `s` as a YAML scalar: plain when that is safe, single-quoted otherwise.
pub fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-~+=".contains(c))
        && !s.starts_with(['-', '.', '~'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Renders HTTP status codes and ranges (`200`, `200-299`) as `expect_status` writes
/// them. Returns: the YAML text, or the first item that is not a status or range.
pub fn expect_status(items: &[String]) -> Result<String, String> {
    let mut out = Vec::new();
    for item in items {
        let ok = |t: &str| t.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
        match item.split_once('-') {
            Some((lo, hi))
                if ok(lo) && ok(hi) && lo.parse::<u16>().ok() <= hi.parse::<u16>().ok() =>
            {
                out.push(format!("'{lo}-{hi}'"))
            }
            None if ok(item) => out.push(item.clone()),
            _ => return Err(item.clone()),
        }
    }
    match out.len() {
        0 => Err(String::new()),
        1 => Ok(out.remove(0)),
        _ => Ok(format!("[{}]", out.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_become_prefix_lengths() {
        assert_eq!(prefix_len("255.255.255.0", true), Some(24));
        assert_eq!(prefix_len("255.255.255.255", true), Some(32));
        assert_eq!(prefix_len("0.0.0.0", true), Some(0));
        assert_eq!(prefix_len("255.0.255.0", true), None);
        assert_eq!(prefix_len("64", false), Some(64));
        assert_eq!(prefix_len("/48", false), Some(48));
        assert_eq!(prefix_len("129", false), None);
    }

    #[test]
    fn addresses_with_ports_in_both_families() {
        assert_eq!(
            addr_port("10.0.0.1:80"),
            Some(("10.0.0.1".parse().unwrap(), Some(80)))
        );
        assert_eq!(
            addr_port("[2001:db8::1]:443"),
            Some(("2001:db8::1".parse().unwrap(), Some(443)))
        );
        assert_eq!(
            addr_port("2001:db8::1"),
            Some(("2001:db8::1".parse().unwrap(), None))
        );
        assert_eq!(addr_port("10.0.0.1:http"), None);
    }

    #[test]
    fn statuses_render_as_the_config_writes_them() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(expect_status(&v(&["200"])).unwrap(), "200");
        assert_eq!(expect_status(&v(&["200-299"])).unwrap(), "'200-299'");
        assert_eq!(
            expect_status(&v(&["200", "300-302"])).unwrap(),
            "[200, '300-302']"
        );
        assert_eq!(expect_status(&v(&["2xx"])), Err("2xx".to_string()));
    }

    #[test]
    fn yaml_strings_are_quoted_when_needed() {
        assert_eq!(yaml_str("/health"), "/health");
        assert_eq!(yaml_str("www.example.com"), "www.example.com");
        assert_eq!(yaml_str("/a b"), "'/a b'");
        assert_eq!(yaml_str("it's"), "'it''s'");
        assert_eq!(yaml_str("yes"), "'yes'");
        assert_eq!(yaml_str("80"), "'80'");
    }
}
