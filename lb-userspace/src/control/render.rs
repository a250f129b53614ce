//! `xdpvs status` as text: the `ipvsadm -L -n` layout, with `--stats` or `--rate`
//! columns.

use crate::status::{endpoint, Stats, Status};

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Renders `status` as `ipvsadm -L -n` does, with `--stats` columns, or with per-second
/// rates computed against `before` taken `secs` earlier.
pub fn render(status: &Status, stats: bool, rate: Option<(&Status, f64)>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "xdpvs {} ({})\n",
        env!("CARGO_PKG_VERSION"),
        status.config
    ));
    let extra = if rate.is_some() {
        "     Pkts/s    Bytes/s    Conns/s"
    } else if stats {
        "      Pkts      Bytes      Conns"
    } else {
        ""
    };
    out.push_str(&format!(
        "{:<4} {:<29} {:<6} {:<9} Flags\n  -> {:<27} {:>6} {:<14} {:>6}{extra}\n",
        "Prot",
        "LocalAddress:Port",
        "Method",
        "Scheduler",
        "RemoteAddress:Port",
        "Weight",
        "Health",
        "Flows"
    ));
    let prev_vs =
        |name: &str| rate.and_then(|(b, _)| b.virtual_servers.iter().find(|v| v.name == name));
    let cols = |now: &Stats, before: Option<&Stats>| -> String {
        match (rate, before) {
            (Some((_, secs)), Some(b)) => format!(
                " {:>10.1} {:>10} {:>10.1}",
                (now.packets.saturating_sub(b.packets)) as f64 / secs,
                human_bytes(((now.bytes.saturating_sub(b.bytes)) as f64 / secs) as u64),
                (now.new_flows.saturating_sub(b.new_flows)) as f64 / secs
            ),
            (Some(_), None) => format!(" {:>10} {:>10} {:>10}", "-", "-", "-"),
            (None, _) if stats => format!(
                " {:>9} {:>10} {:>10}",
                now.packets,
                human_bytes(now.bytes),
                now.new_flows
            ),
            _ => String::new(),
        }
    };
    for vs in &status.virtual_servers {
        let flags = vs.persistence.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<4} {:<29} {:<6} {:<9} {flags}  ({})\n",
            vs.protocol.to_uppercase(),
            endpoint(vs.address, vs.port),
            vs.method,
            vs.scheduler,
            vs.name
        ));
        let pv = prev_vs(&vs.name);
        if stats || rate.is_some() {
            out.push_str(&format!(
                "  {:<59}{}\n",
                "(virtual server total)",
                cols(&vs.stats, pv.map(|v| &v.stats))
            ));
        }
        for r in &vs.reals {
            let mut health = r.health.clone();
            if r.disabled {
                health.push_str(",disabled");
            }
            if r.sorry {
                health = if r.in_table { "sorry*" } else { "sorry" }.to_string();
            }
            let before = pv.and_then(|v| {
                v.reals
                    .iter()
                    .find(|x| x.address == r.address && x.port == r.port && x.sorry == r.sorry)
                    .map(|x| &x.stats)
            });
            let weight = if r.sorry {
                "-".to_string()
            } else {
                r.weight.to_string()
            };
            out.push_str(&format!(
                "  -> {:<27} {:>6} {:<14} {:>6}{}\n",
                endpoint(r.address, r.port),
                weight,
                health,
                r.flows,
                cols(&r.stats, before)
            ));
        }
    }
    out.push_str(&format!(
        "Connection table: {} of {} entries\n",
        status.flow_table_entries, status.flow_table_size
    ));
    if status.syns_past_flow_table > 0 {
        out.push_str(&format!(
            "SYN floods: {} SYNs balanced past the connection table (syn_flood_rate)\n",
            status.syns_past_flow_table
        ));
    }
    out.push_str(&announcements(status));
    out
}

/// The VIPs this node announces (config `announce`) and why not the others, and
/// whether the node is withdrawn.
fn announcements(status: &Status) -> String {
    let mut out = String::new();
    if status.withdrawn {
        out.push_str(
            "Node withdrawn: no VIP is announced, `xdpvs ready` fails (`xdpvs announce` puts it back)\n",
        );
    }
    let Some(table) = status.announce_table else {
        return out;
    };
    out.push_str(&format!("Announced in routing table {table}:\n"));
    for a in &status.announcements {
        let yes = if a.announced { "yes" } else { "no" };
        out.push_str(&format!("  {:<39} {yes:<3}  {}\n", a.address, a.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Announcement;

    fn status() -> Status {
        Status {
            config: "/etc/xdpvs/xdpvs.yaml".into(),
            virtual_servers: Vec::new(),
            verdicts: Default::default(),
            flow_table_entries: 0,
            syns_past_flow_table: 0,
            flow_table_size: 1024,
            announce_table: None,
            withdrawn: false,
            announcements: vec![
                Announcement {
                    address: "10.0.0.1".parse().unwrap(),
                    announced: true,
                    reason: "web at min_healthy or above".into(),
                },
                Announcement {
                    address: "10.0.0.2".parse().unwrap(),
                    announced: false,
                    reason: "dns: 0 of 1 real servers take new flows (min_healthy 1)".into(),
                },
            ],
        }
    }

    #[test]
    fn announced_vips_are_listed_with_why_only_when_announcing() {
        let plain = render(&status(), false, None);
        assert!(!plain.contains("Announced"), "{plain}");
        let s = Status {
            announce_table: Some(4242),
            ..status()
        };
        let text = render(&s, false, None);
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        assert_eq!(
            tail,
            [
                "  10.0.0.2                                no   dns: 0 of 1 real servers take new flows (min_healthy 1)",
                "  10.0.0.1                                yes  web at min_healthy or above",
                "Announced in routing table 4242:",
            ]
        );
        let withdrawn = Status {
            withdrawn: true,
            ..status()
        };
        assert!(render(&withdrawn, false, None).contains("Node withdrawn"));
    }

    #[test]
    fn a_status_without_the_announce_fields_still_parses() {
        let mut v = serde_json::to_value(status()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("withdrawn");
        o.remove("announcements");
        let s: Status = serde_json::from_value(v).unwrap();
        assert!(!s.withdrawn && s.announcements.is_empty());
    }
}
