//! The connection table's filter (decision 0026): a bit per slot of
//! `lb_common::flow_filter_slot`, set where `FLOWS` may hold a flow. A packet whose
//! bit is clear in the half the daemon last rebuilt skips the `FLOWS` lookup, whose miss
//! is most of a new flow's cost.

use core::intrinsics::AtomicOrdering;

use lb_common::{
    flow_filter_slot,
    maps::{
        FLOW_FILTER_COMPLETE, FLOW_FILTER_HALF, FLOW_FILTER_LOG2_MAX, FLOW_FILTER_LOG2_MIN,
        FLOW_FILTER_LOG2_SHIFT,
    },
    FlowKey,
};

use crate::maps::FLOW_FILTER;

/// Returns: the control word and log2 of the slots per half it names, once the
/// daemon has sized the filter (a log2 in range).
#[inline(always)]
fn control() -> Option<(u64, u32)> {
    let ctrl = *FLOW_FILTER.get(0)?;
    let log2 = ((ctrl >> FLOW_FILTER_LOG2_SHIFT) & 0xff) as u32;
    (FLOW_FILTER_LOG2_MIN..=FLOW_FILTER_LOG2_MAX)
        .contains(&log2)
        .then_some((ctrl, log2))
}

/// Returns: the word of slot `slot` of half `half` (of `1 << log2` slots, 64 a word),
/// and the slot's bit in it.
#[inline(always)]
fn word(half: u32, log2: u32, slot: u32) -> Option<(*mut u64, u64)> {
    let i = (half << log2) + slot;
    let w = FLOW_FILTER.get_ptr_mut(1 + i / 64)?;
    Some((w, 1 << (i % 64)))
}

/// Returns: whether `FLOWS` may hold `key`: `false` only when the half the daemon
/// rebuilt has `key`'s bit clear.
#[inline(always)]
pub fn may_hold(key: &FlowKey) -> bool {
    let Some((ctrl, log2)) = control() else {
        return true;
    };
    if ctrl & FLOW_FILTER_COMPLETE == 0 {
        return true;
    }
    let half = (ctrl & FLOW_FILTER_HALF) as u32;
    // SAFETY: array value pointer, valid for this run.
    word(half, log2, flow_filter_slot(key, log2)).is_none_or(|(w, bit)| unsafe { *w } & bit != 0)
}

/// Sets `key`'s bit in both halves. Called before an insert, so that no CPU finds
/// the bit clear while the entry exists, and after it, so that a rebuild that cleared
/// the other half and walked past the entry's bucket before the entry was there
/// does not leave it out.
#[inline(always)]
pub fn hold(key: &FlowKey) {
    let Some((_, log2)) = control() else {
        return;
    };
    let slot = flow_filter_slot(key, log2);
    for half in [0, 1] {
        if let Some((w, bit)) = word(half, log2, slot) {
            // SAFETY: as in `may_hold`; an atomic OR, so that CPUs setting bits of one
            // word at once (and the daemon) lose none.
            unsafe { core::intrinsics::atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit) };
        }
    }
}
