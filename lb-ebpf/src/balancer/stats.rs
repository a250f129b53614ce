//! Counters. Per-CPU maps, so plain adds are race-free.

use lb_common::Counters;

use crate::maps::{STATS_REAL, STATS_VS, VERDICTS};

#[inline(always)]
pub fn count_verdict(reason: u32) {
    if let Some(c) = VERDICTS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, valid for this program run.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add(c: Option<*mut Counters>, bytes: u64) {
    if let Some(c) = c {
        // SAFETY: per-CPU slot, valid for this program run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Counts one forwarded packet of `bytes` for its virtual server and real.
#[inline(always)]
pub fn count_forward(vs_index: u32, real_id: u32, bytes: u64) {
    add(STATS_VS.get_ptr_mut(vs_index), bytes);
    add(STATS_REAL.get_ptr_mut(real_id), bytes);
}

/// Counts a new flow for its virtual server and real, when it is scheduled: before its
/// packet is forwarded, so that a packet dropped on its way out (a next hop without a
/// neighbour entry) leaves no flow in the connection table uncounted, whose later
/// packets would not be new. IPVS counts a connection when it makes it.
#[inline(always)]
pub fn count_new_flow(vs_index: u32, real_id: u32) {
    add_new_flow(STATS_VS.get_ptr_mut(vs_index));
    add_new_flow(STATS_REAL.get_ptr_mut(real_id));
}

#[inline(always)]
fn add_new_flow(c: Option<*mut Counters>) {
    if let Some(c) = c {
        // SAFETY: per-CPU slot, valid for this program run.
        unsafe { (*c).new_flows += 1 };
    }
}

/// Counts one NAT reply of `bytes` for its virtual server.
#[inline(always)]
pub fn count_reply(vs_index: u32, bytes: u64) {
    if let Some(c) = STATS_VS.get_ptr_mut(vs_index) {
        // SAFETY: per-CPU slot, valid for this program run.
        unsafe {
            (*c).reply_packets += 1;
            (*c).reply_bytes += bytes;
        }
    }
}
