//! The connection table's filter from the daemon's side (decision 0026). The data path
//! sets a flow's bit in both halves of `FLOW_FILTER` around each insert into `FLOWS`
//! and, once the filter is complete, looks up only the flows whose bit is set in the
//! half the control word names. Evicted flows leave their bits behind, so the daemon
//! rebuilds the other half from a walk of `FLOWS` now and then and has the data path
//! read it: cleared first, then every flow the walk finds set, then named (with
//! `FLOW_FILTER_COMPLETE`). A flow inserted meanwhile sets its bit itself after its
//! insert, so it is in the new half whether or not the walk saw it. The walk goes
//! bucket by bucket (`BPF_MAP_LOOKUP_BATCH`), so a flow that stays in the table is met.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::MapData;
use lb_common::{
    flow_filter_slot,
    maps::{
        flow_filter_entries, FLOWS, FLOW_FILTER, FLOW_FILTER_COMPLETE, FLOW_FILTER_HALF,
        FLOW_FILTER_LOG2_SHIFT,
    },
    FlowKey, FlowState,
};

use super::{mmap::Mapping, DataplaneError};

/// Least time between two rebuilds.
pub const REBUILD_EVERY: Duration = Duration::from_secs(10);
/// A rebuild waits at least this many times as long as the last walk took, so that a
/// large table costs at most a twentieth of a core.
const WALK_SHARE: u32 = 20;
/// Entries read per `BPF_MAP_LOOKUP_BATCH`: whole buckets each time, so at least the
/// longest bucket (a few entries: the table has a bucket per entry).
const BATCH: u32 = 4096;

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Flows the walk found.
    pub flows: usize,
    /// Slots set in the new half.
    pub slots: usize,
    /// Slots per half.
    pub of: usize,
    /// How long it took.
    pub took: Duration,
}

/// `FLOW_FILTER` mapped into the daemon's memory, with a descriptor of its own on
/// `FLOWS` to walk.
pub struct FlowFilter {
    flows: MapData,
    /// The filter's map, which it keeps alive.
    mapping: Mapping,
    log2: u32,
}

impl FlowFilter {
    /// Maps `filter` (the `FLOW_FILTER` of `log2` slots per half) and takes `flows`
    /// (its own descriptor on `FLOWS`).
    pub(super) fn new(flows: MapData, filter: MapData, log2: u32) -> Result<Self, DataplaneError> {
        let elements = flow_filter_entries(log2) as usize;
        let mapping = Mapping::shared(&filter, elements * 8, FLOW_FILTER)?;
        Ok(Self {
            flows,
            mapping,
            log2,
        })
    }

    /// The control word, element 0.
    fn control(&self) -> &AtomicU64 {
        // SAFETY: element 0 is 8 bytes at the start of the page-aligned mapping, which
        // lives as long as `self`; the data path reads it with plain loads.
        unsafe { AtomicU64::from_ptr(self.mapping.as_ptr().cast::<u64>()) }
    }

    /// Returns: the half the data path reads, and whether the filter is complete.
    pub fn state(&self) -> (u64, bool) {
        let c = self.control().load(Ordering::Acquire);
        (c & FLOW_FILTER_HALF, c & FLOW_FILTER_COMPLETE != 0)
    }

    /// Returns: whether `key`'s bit is set in the half the data path reads.
    pub fn holds(&self, key: &FlowKey) -> bool {
        let (half, _) = self.state();
        let slot = flow_filter_slot(key, self.log2) as usize;
        self.half(half)[slot / 64].load(Ordering::Relaxed) & 1 << (slot % 64) != 0
    }

    /// Has the data path stop trusting the filter until the next rebuild, and gives it
    /// the filter's size. Done as the maps are taken at load: whatever ran before (a
    /// release without the filter, after one that pinned it) may have left flows the
    /// filter does not hold.
    pub fn reset(&mut self) {
        let (half, _) = self.state();
        self.name(half, false);
    }

    /// Has the data path read half `half`, trusting it when `complete`.
    fn name(&self, half: u64, complete: bool) {
        let done = if complete { FLOW_FILTER_COMPLETE } else { 0 };
        let c = half | done | u64::from(self.log2) << FLOW_FILTER_LOG2_SHIFT;
        self.control().store(c, Ordering::Release);
    }

    /// Clears every bit of half `half`.
    fn clear_half(&self, half: u64) {
        for w in self.half(half) {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Returns: the words of half `half` (64 slots each).
    fn half(&self, half: u64) -> &[AtomicU64] {
        let words = (1usize << self.log2) / 64;
        let at = 8 + words * 8 * half as usize;
        assert!(
            at + words * 8 <= self.mapping.bytes(),
            "the halves lie within the mapping"
        );
        // SAFETY: within the mapping (asserted), 8-byte aligned (the mapping is page
        // aligned); the data path sets bits with atomic ORs, as these do.
        unsafe {
            std::slice::from_raw_parts(self.mapping.as_ptr().add(at).cast::<AtomicU64>(), words)
        }
    }

    /// Clears both halves and marks the filter incomplete, as a release that never set
    /// its bits would leave it (for tests of the walk).
    pub fn clear(&mut self) {
        self.reset();
        self.clear_half(0);
        self.clear_half(1);
    }

    /// Rebuilds the half the data path does not read from a walk of `FLOWS` and has it
    /// read that one. A walk that fails leaves the half in use (correct, only fuller).
    /// Returns: what it did.
    pub fn rebuild(&mut self) -> Result<Rebuilt, DataplaneError> {
        let start = Instant::now();
        let (half, _) = self.state();
        let other = 1 - half;
        self.clear_half(other);
        let log2 = self.log2;
        let new = self.half(other);
        let walked = walk_keys(self.flows.fd().as_fd().as_raw_fd(), |key| {
            let slot = flow_filter_slot(key, log2) as usize;
            new[slot / 64].fetch_or(1 << (slot % 64), Ordering::Relaxed);
        })
        .map_err(|source| DataplaneError::Walk { map: FLOWS, source })?;
        let slots = new
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum();
        self.name(other, true);
        Ok(Rebuilt {
            flows: walked,
            slots,
            of: 1 << log2,
            took: start.elapsed(),
        })
    }

    /// Rebuilds the filter for the daemon's life: at once, then every
    /// [`REBUILD_EVERY`], or twenty times as long as the last walk took if longer.
    /// Logs the first rebuild and every failure.
    pub fn run(mut self) {
        let mut first = true;
        loop {
            let mut wait = REBUILD_EVERY;
            match self.rebuild() {
                Ok(r) => {
                    if first {
                        tracing::info!(flows = r.flows, slots_set = r.slots, slots = r.of, took_ms = r.took.as_millis() as u64, "connection table filter complete: new flows skip the table's lookup (decision 0026)");
                        first = false;
                    }
                    wait = wait.max(r.took * WALK_SHARE);
                }
                Err(e) => tracing::error!(
                    "connection table filter: walking the table, the half in use stays: {e}"
                ),
            }
            std::thread::sleep(wait);
        }
    }
}

/// The `bpf_attr` of `BPF_MAP_LOOKUP_BATCH` (linux/bpf.h, `batch`).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `BPF_MAP_LOOKUP_BATCH`, which aya does not offer.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Calls `each` with every key of the connection table at `fd`, bucket by bucket
/// (`BPF_MAP_LOOKUP_BATCH`: each bucket read whole under its lock, so a flow that
/// stays in the table throughout is met, whatever else is inserted or evicted; a
/// key-by-key walk can skip buckets when its cursor's element is evicted and reused).
/// Returns: the keys met, or the error that ended the walk early.
fn walk_keys(fd: std::os::fd::RawFd, mut each: impl FnMut(&FlowKey)) -> std::io::Result<usize> {
    let mut keys = vec![FlowKey::default(); BATCH as usize];
    let mut values = vec![FlowState::default(); BATCH as usize];
    // A hash map's batch token is a bucket index.
    let (mut next, mut out) = (0u32, 0u32);
    let mut total = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &next as *const u32 as u64 },
            out_batch: &mut out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attr points at buffers of BATCH keys and values of the map's
        // sizes (40 and 16 bytes), and at two u32 tokens, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        // Filled even by the last call, which ends with ENOENT.
        let n = (attr.count as usize).min(keys.len());
        keys[..n].iter().for_each(&mut each);
        total += n;
        match err {
            None => next = out,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Some(e) => return Err(e),
        }
        first = false;
    }
}
