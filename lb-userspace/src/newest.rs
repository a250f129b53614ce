//! Bounding the connections a local endpoint holds by keeping the newest: when a new
//! connection would pass the bound, the oldest one held is told to close. Clients that
//! open connections and send nothing (slowloris) then cost a bounded number of
//! descriptors and buffers, and cannot lock out a client that sends its request at
//! once: that one is always among the newest.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::oneshot;

/// The connections held, oldest first: each one's number and what closes it.
pub struct Newest {
    max: usize,
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A [`Newest`] shared by the accepting task and the connections' tasks.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Newest>>);

impl Shared {
    /// Returns: a bound of `max` connections.
    pub fn new(max: usize) -> Self {
        Shared(Arc::new(Mutex::new(Newest {
            max,
            next: 0,
            queue: VecDeque::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Newest> {
        // Nothing it guards is left half-changed by a panic.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds a new connection, telling the oldest held to close when full.
    /// Returns: its number (for [`Shared::release`]) and what tells it to close.
    pub fn admit(&self) -> (u64, oneshot::Receiver<()>) {
        let mut n = self.lock();
        if n.queue.len() >= n.max {
            if let Some((_, oldest)) = n.queue.pop_front() {
                let _ = oldest.send(());
            }
        }
        let (tx, rx) = oneshot::channel();
        n.next += 1;
        let id = n.next;
        n.queue.push_back((id, tx));
        (id, rx)
    }

    /// Forgets connection `id` (done, or no longer to be closed for room).
    pub fn release(&self, id: u64) {
        self.lock().queue.retain(|(i, _)| *i != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_held_is_closed_for_a_new_one_and_released_ones_leave_room() {
        let n = Shared::new(2);
        let (a, mut ra) = n.admit();
        let (b, mut rb) = n.admit();
        let (_, mut rc) = n.admit();
        assert!(ra.try_recv().is_ok(), "the oldest is told to close");
        assert!(rb.try_recv().is_err() && rc.try_recv().is_err());
        n.release(a);
        n.release(b);
        let (_, _rd) = n.admit();
        assert!(rc.try_recv().is_err(), "room was left by the release");
    }
}
