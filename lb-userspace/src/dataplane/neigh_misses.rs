//! The data path's reports of next hops without a neighbour entry (`NEIGH_MISS`,
//! decision 0019), read by the daemon.

use aya::maps::{MapData, RingBuf};
use lb_common::{maps::NEIGH_MISS, NeighMiss};
use tokio::io::unix::AsyncFd;

use super::DataplaneError;

/// The `NEIGH_MISS` ring buffer, taken out of the loaded object.
pub struct NeighMisses(RingBuf<MapData>);

impl NeighMisses {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self(ring)
    }

    /// Takes every report waiting in the ring.
    /// Returns: them, oldest first; a record of the wrong size is skipped.
    pub fn drain(&mut self) -> Vec<NeighMiss> {
        let mut out = Vec::new();
        while let Some(item) = self.0.next() {
            if let Some(m) = NeighMiss::from_bytes(&item) {
                out.push(m);
            }
        }
        out
    }

    /// Waits on the ring from the tokio runtime.
    /// Returns: a reader that wakes when reports arrive.
    pub fn into_async(self) -> Result<AsyncNeighMisses, DataplaneError> {
        // SAFETY: the descriptor is the ring buffer map's, owned by `self` (moved into the
        // AsyncFd): it stays open and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(self) }.map_err(|e| DataplaneError::Poll {
            map: NEIGH_MISS,
            source: e.into(),
        })?;
        Ok(AsyncNeighMisses(fd))
    }
}

impl std::os::fd::AsRawFd for NeighMisses {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// [`NeighMisses`] registered with the tokio runtime.
pub struct AsyncNeighMisses(AsyncFd<NeighMisses>);

impl AsyncNeighMisses {
    /// Waits until at least one report is there.
    /// Returns: every report waiting, oldest first.
    pub async fn next_batch(&mut self) -> Result<Vec<NeighMiss>, DataplaneError> {
        loop {
            let mut guard = self
                .0
                .readable_mut()
                .await
                .map_err(|source| DataplaneError::Poll {
                    map: NEIGH_MISS,
                    source,
                })?;
            let batch = guard.get_inner_mut().drain();
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}
