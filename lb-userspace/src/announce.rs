//! Which VIPs this node should take traffic for, and why not the others: the one
//! judgement behind `xdpvs ready` (keepalived's `vrrp_script`) and the routes that
//! announce VIPs to a routing daemon (decision 0006). Pure: the daemon feeds it what
//! its tables hold; `netlink` keeps the routes.

use std::{collections::BTreeMap, net::IpAddr};

use crate::status::Announcement;

/// One virtual server as the judgement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub name: String,
    pub address: IpAddr,
    /// Reals taking new flows (in the table; the sorry server does not count).
    pub serving: usize,
    /// Reals listed in the file.
    pub reals: usize,
    pub min_healthy: u32,
}

impl Serving {
    /// Returns: whether it has its `min_healthy` reals.
    pub fn enough(&self) -> bool {
        self.serving >= self.min_healthy as usize
    }

    /// Returns: `web: 2 of 3 real servers take new flows (min_healthy 1)`.
    pub fn line(&self) -> String {
        format!(
            "{}: {} of {} real servers take new flows (min_healthy {})",
            self.name, self.serving, self.reals, self.min_healthy
        )
    }
}

/// Why every VIP of a withdrawn node is not announced.
pub const WITHDRAWN: &str = "node withdrawn (`xdpvs withdraw`; `xdpvs announce` puts it back)";

/// Returns: per VIP (in address order), whether this node announces it and why. A VIP
/// is announced while the node is not withdrawn and every virtual server at that
/// address has its `min_healthy` reals: a route is per address, and attracting a
/// port's traffic that cannot be served is worse than sending all of it elsewhere.
pub fn plan(vss: &[Serving], withdrawn: bool) -> Vec<Announcement> {
    let mut by_vip: BTreeMap<IpAddr, Vec<&Serving>> = BTreeMap::new();
    for vs in vss {
        by_vip.entry(vs.address).or_default().push(vs);
    }
    by_vip
        .into_iter()
        .map(|(address, vss)| {
            let short: Vec<String> = vss
                .iter()
                .filter(|v| !v.enough())
                .map(|v| v.line())
                .collect();
            let (announced, reason) = if withdrawn {
                (false, WITHDRAWN.to_string())
            } else if short.is_empty() {
                let names: Vec<&str> = vss.iter().map(|v| v.name.as_str()).collect();
                (
                    true,
                    format!("{} at min_healthy or above", names.join(", ")),
                )
            } else {
                (false, short.join("; "))
            };
            Announcement {
                address,
                announced,
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(name: &str, address: &str, serving: usize, min_healthy: u32) -> Serving {
        Serving {
            name: name.into(),
            address: address.parse().unwrap(),
            serving,
            reals: 3,
            min_healthy,
        }
    }

    #[test]
    fn a_vip_is_announced_while_every_virtual_server_at_it_has_its_reals() {
        let vss = [
            vs("web", "10.0.0.1", 2, 1),
            vs("tls", "10.0.0.1", 1, 2),
            vs("dns", "10.0.0.2", 1, 1),
            vs("v6", "2001:db8::1", 0, 1),
        ];
        let p = plan(&vss, false);
        let got: Vec<(String, bool)> = p
            .iter()
            .map(|a| (a.address.to_string(), a.announced))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_string(), false),
                ("10.0.0.2".to_string(), true),
                ("2001:db8::1".to_string(), false)
            ]
        );
        assert_eq!(
            p[0].reason, "tls: 1 of 3 real servers take new flows (min_healthy 2)",
            "the reason names the virtual server short of reals, not its healthy sibling"
        );
        assert_eq!(p[1].reason, "dns at min_healthy or above");
    }

    #[test]
    fn a_withdrawn_node_announces_nothing() {
        let p = plan(&[vs("web", "10.0.0.1", 3, 1)], true);
        assert_eq!(p.len(), 1);
        assert!(!p[0].announced);
        assert_eq!(p[0].reason, WITHDRAWN);
    }
}
