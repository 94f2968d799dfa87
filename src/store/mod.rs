//! Storage: the narrow interface every backend implements, the embedded backend (log + index),
//! and the JetStream backend for several instances ([`jetstream`]).
//!
//! The interface is five operations: append a batch, get by (mode, id), list a range, read
//! from a sequence, and watch the durable point. Reads hand out [`StoredEvent`]s: the bytes
//! encoded once at publish, which every transport sends as they are. It promises:
//! - `append` returns only once every event of the batch is durable, and a batch is stored
//!   atomically and in order (all or nothing).
//! - `sequence` starts at 1 and grows by exactly one per stored event.
//! - No read returns an event whose sequence is above the durable point, so a crash can never
//!   erase an event a reader has seen or reuse its sequence.
//!
//! The embedded backend lives in [`embedded`]: an event log of our own ([`log`], the source
//! of truth) beside an index derived from it ([`index`]: entries in sorted runs of our own,
//! counts in sled, an id table), written by a pipeline of three
//! threads (writer, sync, index). Listing over an index is in [`list`] (plan, exact totals
//! and offsets from time-bucket counts, the merge, the deadline), which the JetStream
//! backend's in-memory index shares. For JetStream, "durable" is per instance: the last event
//! this instance has read from the stream ([`EventStore::newest`] catches up to the stream).

pub mod check;
pub(crate) mod durability;
pub mod embedded;
pub(crate) mod index;
pub mod jetstream;
pub(crate) mod list;
pub(crate) mod log;
pub(crate) mod recent;
pub(crate) mod retention;
pub(crate) mod stored;

use async_trait::async_trait;
use prost_types::Timestamp;
use tokio::sync::watch;

use crate::error::Error;
use crate::event::{Filter, NewEvent};
pub use durability::Durability;
pub use embedded::{SledStore, StoreConfig};
pub(crate) use index::keys;
pub use stored::StoredEvent;

/// A listing's sort direction, by (created, sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Earliest first.
    Chronological,
    /// Latest first.
    ReverseChronological,
}

/// Where a listing stopped: the (created, sequence) of the last event returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last event's `created`.
    pub created: Timestamp,
    /// The last event's sequence.
    pub sequence: u64,
}

/// Continues a listing as the consistent view of its first page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The durable sequence the first page saw; later events are not part of the view.
    pub snapshot: u64,
    /// The last event already returned.
    pub after: Position,
    /// The total the first page counted.
    pub total: u64,
    /// The oldest kept sequence when the first page was served; if retention has removed
    /// events since, the view can no longer be honoured.
    pub first: u64,
}

/// One page request, already validated.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Earliest `created`, inclusive.
    pub from: Timestamp,
    /// Latest `created`, inclusive.
    pub to: Timestamp,
    /// Sort direction.
    pub direction: Direction,
    /// Type and livemode filter.
    pub filter: Filter,
    /// Matching events to skip before the page (first page only).
    pub offset: usize,
    /// Page size.
    pub limit: usize,
    /// Set for pages after the first.
    pub resume: Option<Resume>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The page's events, in order.
    pub events: Vec<StoredEvent>,
    /// Exact count of matching events in the view.
    pub total: u64,
    /// The durable sequence that bounds the view.
    pub snapshot: u64,
    /// Whether matching events follow this page.
    pub has_more: bool,
    /// The oldest kept sequence the page was served with.
    pub first: u64,
}

/// One event of an append, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored event.
    pub event: StoredEvent,
    /// True if this append stored it; false for an idempotent repeat of a stored event.
    pub new: bool,
}

/// What a storage backend offers eventsd. See the module header for the promises.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores a batch atomically and in order; returns the stored events once durable.
    /// Events whose caller-supplied id is already stored with equal fields come back as
    /// stored (idempotent repeat); a difference is [`Error::AlreadyExists`].
    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, Error>;

    /// Whether the store accepts writes (false after a storage error or once closed).
    fn writable(&self) -> bool;

    /// The durable event with this id in this mode, if any. Ids are one namespace per mode:
    /// the same caller id may name one test and one live event.
    async fn get(&self, livemode: bool, id: &str) -> Result<Option<StoredEvent>, Error>;

    /// One page of events in a time range, with the exact total.
    async fn list(&self, query: ListQuery) -> Result<ListPage, Error>;

    /// Up to `max` durable events with a sequence above `after`, in sequence order.
    async fn read_from(&self, after: u64, max: usize) -> Result<Vec<StoredEvent>, Error>;

    /// The lowest sequence among durable events created at or after `created`, if any.
    async fn first_sequence_created_from(&self, created: Timestamp) -> Result<Option<u64>, Error>;

    /// The oldest kept sequence; retention removes events below it.
    fn first_sequence(&self) -> u64;

    /// The newest durable sequence, updated after every commit.
    fn durable(&self) -> watch::Receiver<u64>;

    /// Waits until this instance's durable point includes every event acknowledged anywhere
    /// before the call, and returns it. For a store that several instances share, another
    /// instance's writes reach this one's [`EventStore::durable`] point a moment after their
    /// acknowledgement; readers that promise "everything up to now" (a subscription's
    /// catch-up, a poll) start here. The embedded store has one point and never waits.
    async fn newest(&self) -> Result<u64, Error> {
        Ok(*self.durable().borrow())
    }

    /// Finishes queued writes, flushes, and stops accepting new ones.
    async fn close(&self);
}

/// A small deterministic generator for the store's randomized tests, so a failing case can be
/// replayed.
#[cfg(test)]
pub(crate) struct Lcg(pub u64);

#[cfg(test)]
impl Lcg {
    /// The next number below `n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}
