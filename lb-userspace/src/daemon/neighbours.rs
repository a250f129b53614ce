//! Next hops the data path found without a neighbour entry (decision 0019): it drops
//! the packet and reports the next hop (`NEIGH_MISS`); this task has the kernel
//! resolve it, so that the packets after it (a retransmission, the next reply) find
//! the entry. Without it, a next hop the host never spoke to itself (a client on a
//! connected network after its entry expired or the device was made again, a router a
//! backup node never used) would stay unresolved while XDP drops everything toward it.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use rtnetlink::Handle;

use crate::{dataplane::neigh_misses::AsyncNeighMisses, netlink};

/// One next hop is asked for at most this often (the data path reports it at most every
/// 100 ms per slot; resolution takes the kernel up to its retransmit time, 1 s).
const ASK_EVERY: Duration = Duration::from_secs(1);
/// Most next hops remembered. When full, those asked for longer than `ASK_EVERY` ago
/// are forgotten (at most once per `ASK_EVERY`); a next hop that finds it still full
/// is not asked for (a flood of distinct next hops: it is reported again later).
const REMEMBER: usize = 4096;
/// Most "asked the kernel to resolve" lines logged per `LOG_WINDOW`; the others are
/// counted in the next line.
const LOG_LINES: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Reads the reports until the ring fails, asking the kernel to resolve each next hop.
pub async fn resolve(mut misses: AsyncNeighMisses, handle: Handle) {
    let mut asked = Asked::default();
    let mut log = LogBudget::default();
    let mut failures = LogBudget::default();
    loop {
        let batch = match misses.next_batch().await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("reading the data path's unresolved next hops stopped: {e}");
                return;
            }
        };
        let now = Instant::now();
        for m in batch {
            let Some(addr) = m.address() else { continue };
            if !asked.due(m.ifindex, addr, now) {
                continue;
            }
            match netlink::resolve_neighbour(&handle, m.ifindex, addr).await {
                Ok(()) => {
                    if let Some(more) = log.take(now) {
                        tracing::info!(next_hop = %addr, ifindex = m.ifindex, more_since_last_line = more, "no neighbour entry for a next hop the data path forwards to (its packets are dropped as drop_no_neigh): asked the kernel to resolve it");
                    }
                }
                Err(e) => {
                    if let Some(more) = failures.take(now) {
                        tracing::warn!(next_hop = %addr, ifindex = m.ifindex, more_since_last_line = more, "asking the kernel to resolve a next hop: {e}");
                    }
                }
            }
        }
    }
}

/// When each next hop was last asked for.
#[derive(Default)]
struct Asked {
    at: HashMap<(u32, IpAddr), Instant>,
    /// When those asked for too long ago were last forgotten.
    pruned: Option<Instant>,
}

impl Asked {
    /// Returns: whether next hop `addr` on `ifindex` is to be asked for at `now` (and
    /// records it if so).
    fn due(&mut self, ifindex: u32, addr: IpAddr, now: Instant) -> bool {
        if let Some(t) = self.at.get(&(ifindex, addr)) {
            if now.duration_since(*t) < ASK_EVERY {
                return false;
            }
        } else if self.at.len() >= REMEMBER {
            if self
                .pruned
                .is_some_and(|p| now.duration_since(p) < ASK_EVERY)
            {
                return false;
            }
            self.at.retain(|_, t| now.duration_since(*t) < ASK_EVERY);
            self.pruned = Some(now);
            if self.at.len() >= REMEMBER {
                return false;
            }
        }
        self.at.insert((ifindex, addr), now);
        true
    }
}

/// At most `LOG_LINES` lines per `LOG_WINDOW`, so that a flood toward unresolvable
/// next hops (spoofed clients on a connected network) cannot flood the log.
#[derive(Default)]
struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    skipped: u64,
}

impl LogBudget {
    /// Returns: `Some(lines skipped since the last one)` if a line may be logged at
    /// `now`, `None` if it is to be skipped (and counted).
    fn take(&mut self, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= LOG_WINDOW)
        {
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines >= LOG_LINES {
            self.skipped += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_hop_is_asked_for_once_a_second() {
        let mut a = Asked::default();
        let t = Instant::now();
        let hop: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(a.due(3, hop, t));
        assert!(!a.due(3, hop, t + Duration::from_millis(500)));
        assert!(a.due(4, hop, t), "another interface is another next hop");
        assert!(a.due(3, hop, t + ASK_EVERY));
    }

    #[test]
    fn a_flood_of_next_hops_stays_bounded_and_is_asked_for_once_there_is_room() {
        let mut a = Asked::default();
        let t = Instant::now();
        let hop = |i: u32| IpAddr::from(i.to_be_bytes());
        // Twice as many distinct next hops as remembered, all within one ASK_EVERY.
        let asked = (0..REMEMBER as u32 * 2)
            .filter(|&i| a.due(1, hop(i), t))
            .count();
        assert_eq!(
            asked, REMEMBER,
            "the first REMEMBER asked for, the rest not"
        );
        assert_eq!(a.at.len(), REMEMBER);
        // Still within ASK_EVERY: no new next hop, and no second scan.
        assert!(!a.due(1, hop(u32::MAX), t + ASK_EVERY / 2));
        // Once those are old, the map is emptied of them and new ones are asked for.
        assert!(a.due(1, hop(u32::MAX), t + ASK_EVERY));
        assert_eq!(a.at.len(), 1);
    }

    #[test]
    fn the_log_budget_counts_what_it_skips() {
        let mut b = LogBudget::default();
        let t = Instant::now();
        for _ in 0..LOG_LINES {
            assert_eq!(b.take(t), Some(0));
        }
        assert_eq!(b.take(t), None);
        assert_eq!(b.take(t + Duration::from_secs(1)), None);
        assert_eq!(b.take(t + LOG_WINDOW), Some(2));
        assert_eq!(b.take(t + LOG_WINDOW), Some(0));
    }
}
