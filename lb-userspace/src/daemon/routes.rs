//! The routes that announce this node's VIPs to the routing layer (decision 0006):
//! while the node should take a VIP's traffic, a blackhole route for it, of protocol
//! `netlink::RTPROT_XDPVS`, sits in the routing table that `announce.table` names; a
//! routing daemon (bird, FRR) learns the table and announces its routes by BGP. The
//! table is never consulted for forwarding. Only routes of xdpvs's protocol in that
//! table are touched.

use std::{collections::BTreeSet, net::IpAddr};

use rtnetlink::Handle;

use crate::{netlink, status::Announcement};

/// The announcing routes of a running daemon.
pub struct Routes {
    handle: Handle,
    table: Option<u32>,
    /// The VIPs with a route in `table` (as this daemon last made or found them).
    announced: BTreeSet<IpAddr>,
}

impl Routes {
    pub fn new(handle: Handle) -> Self {
        Self {
            handle,
            table: None,
            announced: BTreeSet::new(),
        }
    }

    /// Returns: the table routes are kept in, if announcing is on.
    pub fn table(&self) -> Option<u32> {
        self.table
    }

    /// Switches to `table` (at start and on reload): withdraws everything from the
    /// table in use before, and reads what is already announced in the new one (an
    /// earlier run's routes, kept until the next [`Routes::sync`] says otherwise).
    pub async fn use_table(&mut self, table: Option<u32>) -> anyhow::Result<()> {
        if table == self.table {
            return Ok(());
        }
        self.withdraw_all().await;
        self.table = table;
        if let Some(t) = table {
            self.announced = netlink::announced(&self.handle, t)
                .await?
                .into_iter()
                .collect();
        }
        Ok(())
    }

    /// Makes the table hold a route for exactly the announced VIPs of `plan`.
    pub async fn sync(&mut self, plan: &[Announcement]) -> anyhow::Result<()> {
        let Some(table) = self.table else {
            return Ok(());
        };
        let want: BTreeSet<IpAddr> = plan
            .iter()
            .filter(|a| a.announced)
            .map(|a| a.address)
            .collect();
        for gone in self
            .announced
            .difference(&want)
            .copied()
            .collect::<Vec<_>>()
        {
            netlink::withdraw(&self.handle, table, gone).await?;
            self.announced.remove(&gone);
            let why = plan
                .iter()
                .find(|a| a.address == gone)
                .map_or("no virtual server has it", |a| a.reason.as_str());
            tracing::warn!(vip = %gone, table, reason = %why, "VIP withdrawn: its route is out of the announce table");
        }
        for new in want
            .difference(&self.announced)
            .copied()
            .collect::<Vec<_>>()
        {
            netlink::announce(&self.handle, table, new).await?;
            self.announced.insert(new);
            tracing::info!(vip = %new, table, "VIP announced: its route is in the announce table");
        }
        Ok(())
    }

    /// Withdraws every VIP (the daemon stops, or the table changes). Failures are
    /// logged: the routes are then left for `xdpvs withdraw --config` to remove.
    pub async fn withdraw_all(&mut self) {
        let Some(table) = self.table else {
            return;
        };
        for vip in std::mem::take(&mut self.announced) {
            match netlink::withdraw(&self.handle, table, vip).await {
                Ok(()) => tracing::info!(vip = %vip, table, "VIP withdrawn"),
                Err(e) => tracing::error!(vip = %vip, table, "withdrawing the VIP's route: {e}"),
            }
        }
    }
}
