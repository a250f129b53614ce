//! The half-open task's queue: reals by when they are next due.

use std::{collections::BTreeMap, time::Duration};

use tokio::time::Instant;

use super::BATCH;

/// Reals by when they are next due, in buckets of [`BATCH`]: a bucket is taken whole
/// once its end has passed, so nothing is done early and at most a batch late. An
/// entry is (slot, arm); one whose arm is no longer its real's is stale and skipped.
pub struct Queue {
    epoch: Instant,
    buckets: BTreeMap<u64, Vec<(usize, u64)>>,
}

impl Queue {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            buckets: BTreeMap::new(),
        }
    }

    /// Returns: the bucket that ends at or after `t`.
    fn bucket(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.epoch).as_nanos();
        ns.div_ceil(BATCH.as_nanos()) as u64
    }

    pub fn push(&mut self, at: Instant, index: usize, arm: u64) {
        let b = self.bucket(at);
        self.buckets.entry(b).or_default().push((index, arm));
    }

    /// Returns: when the first bucket ends, if any is queued.
    pub fn first(&self) -> Option<Instant> {
        let (&b, _) = self.buckets.first_key_value()?;
        Some(self.epoch + Duration::from_nanos(BATCH.as_nanos() as u64 * b))
    }

    /// Takes every entry of the buckets that ended by `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<(usize, u64)> {
        let ended =
            (now.saturating_duration_since(self.epoch).as_nanos() / BATCH.as_nanos()) as u64;
        let mut due = Vec::new();
        while let Some(e) = self.buckets.first_entry() {
            if *e.key() > ended {
                break;
            }
            let mut v = e.remove();
            if due.is_empty() {
                due = v;
            } else {
                due.append(&mut v);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_gives_nothing_early_and_everything_within_a_batch() {
        let t0 = Instant::now();
        let mut q = Queue::new(t0);
        let ms = Duration::from_millis;
        q.push(t0 + ms(12), 1, 10);
        q.push(t0 + ms(3), 2, 20);
        q.push(t0 + ms(5), 3, 30);
        q.push(t0 + ms(40_000_000), 4, 40);
        // The first bucket ends at 5 ms: the entries at 3 and 5 ms are in it.
        assert_eq!(q.first(), Some(t0 + ms(5)));
        assert!(q.take_due(t0 + ms(4)).is_empty(), "nothing before its time");
        let mut due = q.take_due(t0 + ms(5));
        due.sort_unstable();
        assert_eq!(due, vec![(2, 20), (3, 30)]);
        // 12 ms is in the bucket ending at 15 ms: taken at most one batch late.
        assert!(q.take_due(t0 + ms(14)).is_empty());
        assert_eq!(q.first(), Some(t0 + ms(15)));
        assert_eq!(q.take_due(t0 + ms(15)), vec![(1, 10)]);
        // Far ahead (11 hours): bucket arithmetic without overflow.
        assert_eq!(q.first(), Some(t0 + ms(40_000_000)));
        assert_eq!(q.take_due(t0 + ms(40_000_001)), vec![(4, 40)]);
        assert_eq!(q.first(), None);
    }
}
