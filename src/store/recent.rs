//! The most recently committed events, in memory, for live subscribers.
//!
//! The writer appends each round's new events here, in sequence order, just before it
//! advances the durable point, so everything in the cache is durable by the time a reader can
//! ask for it. A subscriber that is current reads from here — no store read, no decoding, no
//! hop to the blocking pool; one that has fallen further behind than the cache holds reads
//! from the store as before.
//!
//! Memory is bounded in bytes: the sum of the cached events' stored bytes stays at or below
//! the capacity given at construction (the oldest events go first), whatever the events'
//! size. The cache holds [`StoredEvent`]s, so what it keeps is shared with every reader, never
//! copied.

use std::collections::VecDeque;
use std::sync::RwLock;

use crate::store::StoredEvent;

/// The share of `--cache-bytes` the recent-events cache gets (one part in this many); the
/// store's own cache gets the rest.
pub const SHARE_OF_CACHE: u64 = 4;

/// The recent cache's capacity under a total cache budget of `cache_bytes`.
pub fn capacity_from(cache_bytes: u64) -> usize {
    usize::try_from(cache_bytes / SHARE_OF_CACHE).unwrap_or(usize::MAX)
}

/// The cache; shared between the writer and the readers.
pub struct Recent {
    capacity_bytes: usize,
    inner: RwLock<Cached>,
}

#[derive(Default)]
struct Cached {
    events: VecDeque<StoredEvent>,
    /// The sum of `events`' stored bytes.
    bytes: usize,
}

impl Recent {
    /// An empty cache holding at most `capacity_bytes` of stored events.
    pub fn new(capacity_bytes: usize) -> Self {
        Recent { capacity_bytes, inner: RwLock::new(Cached::default()) }
    }

    /// Appends a round's new events (consecutive sequences, in order), then forgets the
    /// oldest events until the cache fits its capacity.
    pub fn push(&self, fresh: Vec<StoredEvent>) {
        let mut cached = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A gap (the store was reopened, say) makes older entries useless for "after N" reads.
        if let (Some(last), Some(first)) = (cached.events.back(), fresh.first()) {
            if last.sequence() + 1 != first.sequence() {
                cached.events.clear();
                cached.bytes = 0;
            }
        }
        for event in fresh {
            cached.bytes += event.bytes().len();
            cached.events.push_back(event);
        }
        while cached.bytes > self.capacity_bytes {
            let Some(oldest) = cached.events.pop_front() else { break };
            cached.bytes -= oldest.bytes().len();
        }
    }

    /// Forgets events below `first` (removed by retention).
    pub fn prune_before(&self, first: u64) {
        let mut cached = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        while cached.events.front().is_some_and(|e| e.sequence() < first) {
            if let Some(oldest) = cached.events.pop_front() {
                cached.bytes -= oldest.bytes().len();
            }
        }
    }

    /// Up to `max` events with sequences in `after + 1 ..= durable`, or `None` when the cache
    /// does not reach back to `after + 1` (read the store instead).
    pub fn read(&self, after: u64, max: usize, durable: u64) -> Option<Vec<StoredEvent>> {
        let cached = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let front = cached.events.front()?.sequence();
        if after + 1 < front {
            return None;
        }
        let start = usize::try_from(after + 1 - front).ok()?;
        Some(
            cached
                .events
                .iter()
                .skip(start)
                .take_while(|e| e.sequence() <= durable)
                .take(max)
                .cloned()
                .collect(),
        )
    }

    /// The cached event `seq`, if the cache still holds it (a listing's page reads its
    /// recent events from here instead of the log).
    pub fn get(&self, seq: u64) -> Option<StoredEvent> {
        let cached = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let front = cached.events.front()?.sequence();
        let at = usize::try_from(seq.checked_sub(front)?).ok()?;
        cached.events.get(at).filter(|e| e.sequence() == seq).cloned()
    }

    /// The sum of the cached events' stored bytes (what the tests check the bound on).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Event;

    fn event(sequence: u64, size: usize) -> StoredEvent {
        StoredEvent::from_event(&Event { sequence, id: "x".repeat(size), ..Default::default() })
    }

    #[test]
    fn the_cache_stays_within_its_bytes_whatever_the_event_size() {
        let recent = Recent::new(10_000);
        recent.push((1..=100).map(|s| event(s, 1_000)).collect());
        assert!(recent.bytes() <= 10_000, "{} bytes", recent.bytes());
        let kept = recent.read(0, 1_000, 100);
        assert!(kept.is_none(), "the oldest events are gone, so an early read goes to the store");
        let newest = recent.read(95, 10, 100).expect("the newest events are cached");
        assert_eq!(
            newest.iter().map(StoredEvent::sequence).collect::<Vec<_>>(),
            [96, 97, 98, 99, 100]
        );
        assert_eq!(recent.get(97).map(|e| e.sequence()), Some(97));
        assert_eq!(recent.get(101), None);
        assert_eq!(recent.get(1), None, "forgotten");

        // One event larger than the whole cache is not kept at all.
        recent.push(vec![event(101, 20_000)]);
        assert_eq!(recent.bytes(), 0);
        recent.prune_before(200);
        assert_eq!(recent.read(100, 1, 101), None);
    }
}
