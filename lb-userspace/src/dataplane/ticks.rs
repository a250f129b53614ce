//! The kernel's tick rate (`CONFIG_HZ`), which the data path's windows are counted in
//! (`jiffies`, decision 0032): the daemon turns a rate a second into a count a window
//! with it.

use std::sync::OnceLock;

/// What is assumed where the kernel does not tell: Debian's and most distributions'
/// `CONFIG_HZ`.
const FALLBACK_HZ: u32 = 250;

/// Returns: the kernel's ticks a second, read once: the resolution of
/// `CLOCK_MONOTONIC_COARSE` is one tick. [`FALLBACK_HZ`] (logged) if that cannot be
/// read or is no tick's.
pub fn kernel_hz() -> u32 {
    static HZ: OnceLock<u32> = OnceLock::new();
    *HZ.get_or_init(|| {
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `res` is a valid timespec for the call to write.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
        let ns = (rc == 0)
            .then(|| {
                u64::try_from(res.tv_sec)
                    .ok()?
                    .checked_mul(1_000_000_000)?
                    .checked_add(u64::try_from(res.tv_nsec).ok()?)
            })
            .flatten();
        match ns.and_then(hz_of_tick) {
            Some(hz) => hz,
            None => {
                tracing::warn!(
                    resolution_ns = ?ns,
                    assumed_hz = FALLBACK_HZ,
                    "the kernel's tick rate could not be read from the coarse clock's resolution"
                );
                FALLBACK_HZ
            }
        }
    })
}

/// Returns: the ticks a second of a tick of `ns` nanoseconds, if that is a tick a
/// kernel can have (10 to 10,000 a second).
fn hz_of_tick(ns: u64) -> Option<u32> {
    if ns == 0 {
        return None;
    }
    let hz = (1_000_000_000 + ns / 2) / ns;
    (10..=10_000).contains(&hz).then_some(hz as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_gives_its_rate() {
        // The kernel's TICK_NSEC for each CONFIG_HZ x86 offers.
        for (ns, hz) in [
            (10_000_000, 100),
            (4_000_000, 250),
            (3_333_333, 300),
            (1_000_000, 1_000),
        ] {
            assert_eq!(hz_of_tick(ns), Some(hz), "{ns} ns");
        }
        for ns in [0, 1, 1_000, 1_000_000_000] {
            assert_eq!(hz_of_tick(ns), None, "{ns} ns is no tick");
        }
    }

    /// A rate a second becomes SYNs a window of 25 ticks at any tick rate (decision
    /// 0032): rounded up, never 0 for a rate, 0 for none, capped.
    #[test]
    fn a_syn_rate_is_counted_per_window_of_ticks() {
        use lb_common::syn_guard_per_window as per_window;
        assert_eq!(per_window(10_000, 250), 1_000, "100 ms windows");
        assert_eq!(per_window(10_000, 100), 2_500, "250 ms windows");
        assert_eq!(per_window(10_000, 1_000), 250, "25 ms windows");
        assert_eq!(per_window(10_000, 300), 834, "83.3 ms windows, rounded up");
        assert_eq!(per_window(5, 1_000), 1, "a rate allows at least one");
        assert_eq!(per_window(0, 250), 0, "never stays never");
        assert_eq!(per_window(u32::MAX, 10), u32::MAX, "capped");
    }

    #[test]
    fn this_kernel_has_a_tick_rate() {
        let hz = kernel_hz();
        assert!((10..=10_000).contains(&hz), "{hz}");
    }
}
