//! A loop that acts at a steady rate: one action per slot of `1 / rate`, spinning on
//! the clock in between, since on the development VM a sleep's wake-up takes about
//! 17 us, longer than a slot at 100,000 a second. A loop that falls behind catches up
//! at most [`MAX_BURST`] slots back to back; further behind, its schedule starts again
//! from now, so a stall never turns into a burst.

use std::time::{Duration, Instant};

/// The most slots a late loop catches up back to back.
pub const MAX_BURST: u32 = 10;

/// The schedule of a paced loop.
pub struct Pacer {
    period: Duration,
    /// The next slot.
    next: Instant,
}

impl Pacer {
    /// A schedule of `per_second` slots a second, the first now. Panics if it is 0.
    pub fn new(per_second: u32) -> Self {
        assert!(per_second > 0, "a pace of 0 a second");
        Pacer {
            period: Duration::from_secs(1) / per_second,
            next: Instant::now(),
        }
    }

    /// Waits for the next slot, spinning. Returns: the time it came.
    pub fn wait(&mut self) -> Instant {
        let mut now = Instant::now();
        while now < self.next {
            std::hint::spin_loop();
            now = Instant::now();
        }
        self.next = after(self.next, now, self.period);
        now
    }
}

/// Returns: the slot after `slot`, taken at `now` (not before it), `period` apart: the
/// next on the schedule, or `now + period` when `now` is more than [`MAX_BURST`]
/// periods late.
fn after(slot: Instant, now: Instant, period: Duration) -> Instant {
    let base = if now - slot > period * MAX_BURST {
        now
    } else {
        slot
    };
    base + period
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{after, MAX_BURST};

    #[test]
    fn a_late_loop_catches_up_a_few_slots_and_no_more() {
        let p = Duration::from_micros(10);
        let t0 = Instant::now();
        // On time, and a little late: the schedule holds.
        assert_eq!(after(t0, t0, p), t0 + p);
        assert_eq!(after(t0, t0 + p * 3, p), t0 + p);
        assert_eq!(after(t0, t0 + p * MAX_BURST, p), t0 + p);
        // Further behind: it starts again from now.
        let late = t0 + p * (MAX_BURST + 1);
        assert_eq!(after(t0, late, p), late + p);
    }
}
