//! The connection table's filter from the daemon's side (decision 0026). The data path
//! sets a flow's bit in both halves of `FLOW_FILTER` around each insert into `FLOWS`
//! and, once the filter is complete, looks up only the flows whose bit is set in the
//! half the control word names. Evicted flows leave their bits behind, so the daemon
//! rebuilds the other half from a walk of `FLOWS` now and then and has the data path
//! read it: cleared first, then every flow the walk finds set, then named (with
//! `FLOW_FILTER_COMPLETE`). A flow inserted meanwhile sets its bit itself after its
//! insert, so it is in the new half whether or not the walk saw it.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{
    flow_filter_slot,
    maps::{
        flow_filter_entries, FLOWS, FLOW_FILTER, FLOW_FILTER_COMPLETE, FLOW_FILTER_HALF,
        FLOW_FILTER_LOG2_SHIFT,
    },
    FlowKey, FlowState,
};

use super::DataplaneError;

/// Least time between two rebuilds.
pub const REBUILD_EVERY: Duration = Duration::from_secs(10);
/// A rebuild waits at least this many times as long as the last walk took, so that a
/// large table costs at most a twentieth of a core.
const WALK_SHARE: u32 = 20;
/// A walk that visits this many times the table's entries is given up: flows deleted
/// under its cursor restart it from the first bucket, and a table churning that fast
/// keeps the half in use (correct, only fuller).
const WALK_CUT: usize = 3;

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
    flows: HashMap<MapData, FlowKey, FlowState>,
    /// Entries `FLOWS` holds at most.
    flow_entries: usize,
    /// Keeps the filter's map, and so the mapping's object, alive.
    _map: MapData,
    base: NonNull<u8>,
    bytes: usize,
    log2: u32,
}

// SAFETY: the mapping is owned by this value alone; `&mut self` guards its writes.
unsafe impl Send for FlowFilter {}

impl FlowFilter {
    /// Maps `filter` (the `FLOW_FILTER` of `log2` slots per half) and takes `flows`
    /// (its own descriptor on `FLOWS`, of `flow_entries`).
    pub(super) fn new(
        flows: MapData,
        flow_entries: u32,
        filter: MapData,
        log2: u32,
    ) -> Result<Self, DataplaneError> {
        let map_err = |map| move |source| DataplaneError::Map { map, source };
        let flows = HashMap::try_from(Map::LruHashMap(flows)).map_err(map_err(FLOWS))?;
        let elements = flow_filter_entries(log2) as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (elements * 8).div_ceil(page) * page;
        let fd = filter.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array's own fd at offset 0, of the
        // array's size rounded up to pages, as the kernel takes it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap {
                map: FLOW_FILTER,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(DataplaneError::Mmap {
            map: FLOW_FILTER,
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Self {
            flows,
            flow_entries: flow_entries as usize,
            _map: filter,
            base,
            bytes,
            log2,
        })
    }

    /// The control word, element 0.
    fn control(&self) -> &AtomicU64 {
        // SAFETY: element 0 is 8 bytes at the start of the page-aligned mapping, which
        // lives as long as `self`; the data path reads it with plain loads.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().cast::<u64>()) }
    }

    /// Returns: the half the data path reads, and whether the filter is complete.
    pub fn state(&self) -> (u64, bool) {
        let c = self.control().load(Ordering::Acquire);
        (c & FLOW_FILTER_HALF, c & FLOW_FILTER_COMPLETE != 0)
    }

    /// Returns: whether `key`'s bit is set in the half the data path reads.
    pub fn holds(&mut self, key: &FlowKey) -> bool {
        let (half, _) = self.state();
        let slot = flow_filter_slot(key, self.log2) as usize;
        self.half(half)[slot / 64].load(Ordering::Relaxed) & 1 << (slot % 64) != 0
    }

    /// Has the data path stop trusting the filter until the next rebuild, and gives it
    /// the filter's size. A daemon does this at start: whatever ran before it (a
    /// release without the filter, or one that wrote flows while this map was pinned
    /// aside) may have left flows the filter does not hold.
    pub fn reset(&mut self) {
        let (half, _) = self.state();
        let c = half | u64::from(self.log2) << FLOW_FILTER_LOG2_SHIFT;
        self.control().store(c, Ordering::Release);
    }

    /// Returns: the words of half `half` (64 slots each).
    fn half(&self, half: u64) -> &[AtomicU64] {
        let words = (1usize << self.log2) / 64;
        let at = 8 + words * 8 * half as usize;
        assert!(
            at + words * 8 <= self.bytes,
            "the halves lie within the mapping"
        );
        // SAFETY: within the mapping (asserted), 8-byte aligned (the mapping is page
        // aligned); the data path sets bits with atomic ORs, as these do.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at).cast::<AtomicU64>(), words) }
    }

    /// Rebuilds the half the data path does not read from a walk of `FLOWS` and has it
    /// read that one. Returns: what it did, or `None` if the walk was given up (the
    /// half in use stays: correct, only fuller).
    pub fn rebuild(&mut self) -> Result<Option<Rebuilt>, DataplaneError> {
        let start = Instant::now();
        let (half, _) = self.state();
        let other = 1 - half;
        for w in self.half(other) {
            w.store(0, Ordering::Relaxed);
        }
        let log2 = self.log2;
        let mut keys = Vec::new();
        let cut = self.flow_entries.saturating_mul(WALK_CUT);
        for key in self.flows.keys() {
            // A key deleted under the cursor restarts the walk from the first bucket
            // (the kernel's answer); an error ends it, and a walk that did not reach
            // the end must not be used.
            let key = key.map_err(|source| DataplaneError::Map { map: FLOWS, source })?;
            keys.push(key);
            if keys.len() > cut {
                return Ok(None);
            }
        }
        let new = self.half(other);
        for key in &keys {
            let slot = flow_filter_slot(key, log2) as usize;
            new[slot / 64].fetch_or(1 << (slot % 64), Ordering::Relaxed);
        }
        let slots = new
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum();
        let c = other | FLOW_FILTER_COMPLETE | u64::from(log2) << FLOW_FILTER_LOG2_SHIFT;
        self.control().store(c, Ordering::Release);
        Ok(Some(Rebuilt {
            flows: keys.len(),
            slots,
            of: 1 << log2,
            took: start.elapsed(),
        }))
    }

    /// Rebuilds the filter for the daemon's life: at once, then every
    /// [`REBUILD_EVERY`], or twenty times as long as the last walk took if longer.
    /// Logs the first rebuild and every failure.
    pub fn run(mut self) {
        let mut first = true;
        loop {
            let mut wait = REBUILD_EVERY;
            match self.rebuild() {
                Ok(Some(r)) => {
                    if first {
                        tracing::info!(flows = r.flows, slots_set = r.slots, slots = r.of, took_ms = r.took.as_millis() as u64, "connection table filter complete: new flows skip the table's lookup (decision 0026)");
                        first = false;
                    }
                    wait = wait.max(r.took * WALK_SHARE);
                }
                Ok(None) => {
                    tracing::warn!("connection table filter: the table changed faster than it could be walked; the filter in use stays until the next try")
                }
                Err(e) => tracing::error!("connection table filter: {e}"),
            }
            std::thread::sleep(wait);
        }
    }
}

impl Drop for FlowFilter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `bytes`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
