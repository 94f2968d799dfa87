//! The most recently committed events, in memory, for live subscribers.
//!
//! The writer appends each round's new events here, in sequence order, just before it
//! advances the durable point, so everything in the cache is durable by the time a reader can
//! ask for it. A subscriber that is current reads from here — no store read, no decoding, no
//! hop to the blocking pool; one that has fallen further behind than the cache holds reads
//! from the store as before. Memory is bounded by [`CAPACITY`] events.

use std::collections::VecDeque;
use std::sync::RwLock;

use crate::store::StoredEvent;

/// Events kept (about 1 KiB each for a typical payment event).
pub const CAPACITY: usize = 4_096;

/// The cache; shared between the writer and the readers.
#[derive(Default)]
pub struct Recent(RwLock<VecDeque<StoredEvent>>);

impl Recent {
    /// Appends a round's new events (consecutive sequences, in order).
    pub fn push(&self, fresh: Vec<StoredEvent>) {
        let mut events = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A gap (the store was reopened, say) makes older entries useless for "after N" reads.
        if let (Some(last), Some(first)) = (events.back(), fresh.first()) {
            if last.sequence() + 1 != first.sequence() {
                events.clear();
            }
        }
        events.extend(fresh);
        let excess = events.len().saturating_sub(CAPACITY);
        events.drain(..excess);
    }

    /// Forgets events below `first` (removed by retention).
    pub fn prune_before(&self, first: u64) {
        let mut events = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        while events.front().is_some_and(|e| e.sequence() < first) {
            events.pop_front();
        }
    }

    /// Up to `max` events with sequences in `after + 1 ..= durable`, or `None` when the cache
    /// does not reach back to `after + 1` (read the store instead).
    pub fn read(&self, after: u64, max: usize, durable: u64) -> Option<Vec<StoredEvent>> {
        let events = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let front = events.front()?.sequence();
        if after + 1 < front {
            return None;
        }
        let start = usize::try_from(after + 1 - front).ok()?;
        Some(
            events
                .iter()
                .skip(start)
                .take_while(|e| e.sequence() <= durable)
                .take(max)
                .cloned()
                .collect(),
        )
    }
}
