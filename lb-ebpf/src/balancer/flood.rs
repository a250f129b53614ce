//! The SYN-flood switch (decision 0025): while one CPU sees more opening SYNs than the
//! daemon's `SYN_GUARD` allows in a window, SYNs are balanced without looking up the
//! connection table, whose miss is the dearest part of a SYN.

use lb_common::SYN_WINDOW_JIFFIES;

use crate::{
    maps::{SYN_GUARD, SYN_RATE},
    ticks,
};

/// Counts one opening SYN to a virtual server on this CPU.
/// Returns: whether it skips the connection table: this window or the last counted
/// more than `SYN_GUARD` allows (never when that is 0 or unwritten).
#[inline(always)]
pub fn syn_skips_table() -> bool {
    let allowed = match SYN_GUARD.get(0) {
        Some(&n) if n != 0 => n,
        _ => return false,
    };
    let Some(r) = SYN_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, valid for this run; nothing else on this CPU runs
    // the program meanwhile.
    let r = unsafe { &mut *r };
    let now = ticks::now();
    let since = now.wrapping_sub(r.window);
    if since >= SYN_WINDOW_JIFFIES {
        r.previous = if since < 2 * SYN_WINDOW_JIFFIES {
            r.count
        } else {
            0
        };
        r.count = 0;
        r.window = now;
    }
    r.count = r.count.saturating_add(1);
    let skips = r.count > allowed || r.previous > allowed;
    if skips {
        r.skipped += 1;
    }
    skips
}
