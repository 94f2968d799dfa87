//! The index thread: applies durable rounds to the sled index behind the log, off the
//! acknowledgement path.
//!
//! The writer (`writer.rs`) makes a round durable in the log, records its events as
//! *pending* (id → sequence, [`Pending`]), hands the round here and answers its publishers.
//! This thread takes every round queued, applies them to sled in one batch, and then, under
//! the state lock, moves the listing view (`DurableState`: sequence, counts) and the applied
//! sequence, and forgets the pending ids it applied.
//!
//! Promises:
//! - **Nothing acknowledged is unreadable meanwhile**: an id is pending from before its event
//!   is durable until after the index holds it, so GetEvent and the writer's repeat check find
//!   every durable event in one of the two.
//! - **Listings wait for the index, never read around it**: a listing first waits until the
//!   applied sequence reaches the durable point it saw (`SledStore::caught_up`), so a publish
//!   acknowledged before a listing starts is in it.
//! - **In order, whole rounds**: rounds are applied in sequence order, each batch atomically
//!   with the applied sequence, so after a crash the index is the state after some whole
//!   round and the open replays the rest from the log.
//! - **Batched**: a batch gathers the rounds that arrive within [`BATCH_WINDOW`] (5 ms) and is
//!   applied at once when a listing waits for it ([`Job::Nudge`]), so under a trickle of
//!   publishes sled sees a few large batches a second rather than one per round.
//! - **Bounded lag**: the queue holds at most [`QUEUE_ROUNDS`] rounds; a writer that gets
//!   that far ahead waits, so memory never grows with the lag.
//! - **Failure**: a failed index write marks the store read-only (publishes are refused) and
//!   stops applying; rounds keep their pending ids, reads keep finding them, and
//!   [`Job::Recover`] (sent by the writer when it next tries to recover) reopens the index and
//!   replays the log into it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::store::embedded::{Shared, StoreConfig};
use crate::store::index::{self, Change, Counts, Fields};
use crate::store::StoredEvent;

/// Most rounds queued for the index before the writer waits.
pub const QUEUE_ROUNDS: usize = 64;

/// Most events applied in one sled batch when rounds have queued up. sled copies a leaf on
/// every change and frees the old copies only once the batch is done, so bigger batches cost
/// memory: after a 200,000-event fill RSS was 630–960 MiB with batches of 16,384 and
/// 450–480 MiB with 2,048 (512 was no better), at the same publish rate.
const MAX_BATCH_EVENTS: usize = 2_048;

/// How often the id table is made durable (`fdatasync`) behind the applied sequence.
const IDS_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a batch gathers rounds before it is applied, unless a reader nudges it.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// Work for the index thread, in the order the writer sends it.
pub enum Job {
    /// A durable round's new events, in sequence order (what the index needs of them: the
    /// queue holds no event bodies).
    Round(Vec<Entry>),
    /// Retention: remove the events `from..=upto` and make `upto + 1` the first kept
    /// sequence; answered once applied and flushed.
    Trim {
        /// The first event to remove.
        from: u64,
        /// The last event to remove.
        upto: u64,
        /// The outcome.
        done: SyncSender<Result<(), Error>>,
    },
    /// After a failure: reopen the index and replay the log into it through `last`.
    Recover {
        /// The last durable sequence.
        last: u64,
        /// The log's first kept sequence.
        first: u64,
        /// The outcome.
        done: SyncSender<Result<(), Error>>,
    },
    /// A reader waits for the index: apply the batch being gathered now.
    Nudge,
    /// Apply what is queued, flush the index, stop.
    Close {
        /// Signalled once the index is flushed.
        done: SyncSender<()>,
    },
}

/// What the index needs of one durable event.
pub struct Entry {
    seq: u64,
    livemode: bool,
    id: String,
    event_type: String,
    created: prost_types::Timestamp,
}

impl Entry {
    /// The index's part of a stored event.
    pub fn of(event: &StoredEvent) -> Self {
        Entry {
            seq: event.sequence(),
            livemode: event.livemode(),
            id: event.id().to_string(),
            event_type: event.event_type().to_string(),
            created: event.created(),
        }
    }
}

/// Durable events the index does not hold yet: one id → sequence map per mode (test, live),
/// so a lookup by `&str` builds no key.
#[derive(Default)]
pub struct Pending(Mutex<[HashMap<String, u64>; 2]>);

/// A pending-id map per mode.
type ByMode = [HashMap<String, u64>; 2];

impl Pending {
    fn map(&self) -> std::sync::MutexGuard<'_, ByMode> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a round's events before they are durable to readers.
    pub fn add(&self, events: &[StoredEvent]) {
        let mut map = self.map();
        for event in events {
            map[usize::from(event.livemode())].insert(event.id().to_string(), event.sequence());
        }
    }

    /// The sequence of a pending event.
    pub fn get(&self, livemode: bool, id: &str) -> Option<u64> {
        self.map()[usize::from(livemode)].get(id).copied()
    }

    /// Forgets the events of a round that did not become durable.
    pub fn forget(&self, events: &[StoredEvent]) {
        let mut map = self.map();
        for event in events {
            Self::remove(&mut map, event.livemode(), event.id(), event.sequence());
        }
    }

    /// Forgets the pending events the index now holds.
    fn applied(&self, entries: &[Entry]) {
        let mut map = self.map();
        for entry in entries {
            Self::remove(&mut map, entry.livemode, &entry.id, entry.seq);
        }
    }

    /// Removes (livemode, id) if it still names `seq` (a later event may have taken the id).
    fn remove(map: &mut ByMode, livemode: bool, id: &str, seq: u64) {
        let ids = &mut map[usize::from(livemode)];
        if ids.get(id) == Some(&seq) {
            ids.remove(id);
        }
    }

    /// Forgets everything at or below `last` (after a replay from the log).
    fn applied_through(&self, last: u64) {
        for ids in self.map().iter_mut() {
            ids.retain(|_, seq| *seq > last);
        }
    }
}

/// The index thread's state.
pub struct Indexer {
    shared: Arc<Shared>,
    tree: sled::Tree,
    counts: Counts,
    config: StoreConfig,
    /// Set after a failed write: rounds are not applied until a [`Job::Recover`].
    failed: bool,
    /// When the id table was last made durable.
    ids_synced: std::time::Instant,
}

impl Indexer {
    /// The index thread over the opened tree, whose counts are `counts`.
    pub fn new(shared: Arc<Shared>, tree: sled::Tree, counts: Counts, config: StoreConfig) -> Self {
        Indexer {
            shared,
            tree,
            counts,
            config,
            failed: false,
            ids_synced: std::time::Instant::now(),
        }
    }

    /// The thread's loop; returns on [`Job::Close`] or when the writer is gone.
    pub fn run(mut self, jobs: Receiver<Job>) {
        let mut next = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return self.flush(),
                },
            };
            match job {
                Job::Round(mut events) => {
                    // Rounds arriving within the batch window join this batch, unless a
                    // reader is waiting for it (a nudge) or it is full: fewer, larger sled
                    // batches cost sled far less than one per round.
                    let window = std::time::Instant::now() + BATCH_WINDOW;
                    while events.len() < MAX_BATCH_EVENTS {
                        let wait = window.saturating_duration_since(std::time::Instant::now());
                        match jobs.recv_timeout(wait) {
                            Ok(Job::Round(more)) => events.extend(more),
                            Ok(Job::Nudge) => break,
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply(&events);
                }
                Job::Nudge => {}
                Job::Trim { from, upto, done } => {
                    let _ = done.send(self.trim(from, upto));
                }
                Job::Recover { last, first, done } => {
                    let _ = done.send(self.recover(first, last));
                }
                Job::Close { done } => {
                    self.flush();
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn flush(&self) {
        let applied = *self.shared.applied.borrow();
        if let Err(err) = self.shared.ids.sync(applied) {
            tracing::error!(error = %err, "cannot sync the id table at close (the next start replays it)");
        }
        if let Err(err) = self.shared.entries.close() {
            tracing::error!(error = %err, "cannot write the index entries at close (the next start replays them)");
        }
        if let Err(err) = self.tree.flush() {
            tracing::error!(error = %err, "cannot flush the index at close (the next start replays it)");
        }
    }

    /// Applies durable events (consecutive sequences) in one batch, then moves the view.
    fn apply(&mut self, events: &[Entry]) {
        let (Some(first), Some(last)) =
            (events.first().map(|e| e.seq), events.last().map(|e| e.seq))
        else {
            return;
        };
        if self.failed {
            return;
        }
        let mut change = Change::default();
        for e in events {
            let fields = (e.seq, e.livemode, e.event_type.as_str(), &e.created);
            change.insert(&mut self.counts, fields);
        }
        let kept_from = self.shared.state().first;
        // The ids first (before their pending entries go, below); an id the table holds for
        // an event the index does not hold yet is found the same way as a pending one.
        let ids = events.iter().filter(|e| !index::names_itself(&e.id, e.seq));
        let ids = ids.map(|e| (e.livemode, e.id.as_str(), e.seq)).collect::<Vec<_>>();
        let added = self.shared.ids.add(ids.into_iter(), kept_from).and_then(|()| self.sync_ids());
        // The batch and the view move under the state lock together, so a listing that reads
        // bucket counts under it sees exactly the events of its snapshot.
        let mut state = self.shared.state_mut();
        let (touched, applied) = match added {
            Ok(()) => {
                change.apply((&self.tree, &self.shared.entries), &self.counts, last, kept_from)
            }
            Err(err) => (Default::default(), Err(err)),
        };
        if let Err(err) = applied {
            drop(state);
            tracing::error!(error = %err, from = first, "index write failed after the log was durable; the events stand and reads find them; refusing writes until the index catches up");
            self.fail();
            return;
        }
        state.sequence = last;
        copy_counts(&self.counts, touched, &mut state);
        drop(state);
        self.shared.applied.send_replace(last);
        self.shared.pending.applied(events);
    }

    /// Makes the id table durable through the applied sequence at most once per
    /// [`IDS_SYNC_EVERY`] (the open adds again the ids of the records after its durable point).
    fn sync_ids(&mut self) -> Result<(), Error> {
        if self.ids_synced.elapsed() < IDS_SYNC_EVERY {
            return Ok(());
        }
        self.ids_synced = std::time::Instant::now();
        self.shared.ids.sync(*self.shared.applied.borrow())
    }

    fn fail(&mut self) {
        self.failed = true;
        self.shared.index_failed.store(true, Ordering::Release);
        self.shared.read_only.store(true, Ordering::Relaxed);
    }

    /// Removes the oldest events (retention) and moves the first kept sequence.
    fn trim(&mut self, from: u64, upto: u64) -> Result<(), Error> {
        if self.failed {
            return Err(Error::WritesDisabled);
        }
        let log = self.shared.log.clone();
        let mut change = Change::default();
        for seq in from..=upto {
            let fields = Fields::decode(seq, &log.expect(seq)?)?;
            change.remove(&mut self.counts, seq, &fields);
        }
        let first = upto + 1;
        let removed = {
            let mut state = self.shared.state_mut();
            let index = (&self.tree, &self.shared.entries);
            let (touched, removed) = change.apply(index, &self.counts, state.sequence, first);
            state.first = first;
            copy_counts(&self.counts, touched, &mut state);
            removed
        };
        if let Err(err) = removed.and_then(|()| self.tree.flush().map(drop).map_err(Error::from)) {
            // The log already says what is kept; the next start finishes the removal.
            tracing::error!(error = %err, "index write failed during retention; refusing writes until the index catches up");
            self.fail();
            return Err(err);
        }
        Ok(())
    }

    /// Reopens the index (sled keeps its first I/O error until then) and replays the log
    /// into it through `last`.
    fn recover(&mut self, first: u64, last: u64) -> Result<(), Error> {
        self.shared.index.reopen(&mut self.tree, &self.config)?;
        let loaded = index::load(&self.tree)?;
        let index = (&self.tree, &self.shared.entries);
        let counts = index::catch_up(index, &self.shared.log, loaded, (first, last))?;
        let synced = self.shared.ids.synced();
        index::add_ids(&self.shared.ids, &self.shared.log, synced, (first, last))?;
        self.counts = counts.clone();
        {
            let mut state = self.shared.state_mut();
            state.counts = counts;
            state.sequence = last;
            state.first = first;
        }
        self.shared.applied.send_replace(last);
        self.shared.pending.applied_through(last);
        self.failed = false;
        self.shared.index_failed.store(false, Ordering::Release);
        Ok(())
    }
}

/// Copies the counts of the streams a batch touched into the listing view.
fn copy_counts(
    counts: &Counts,
    touched: std::collections::BTreeSet<(bool, String)>,
    state: &mut crate::store::index::DurableState,
) {
    for stream in touched {
        let n = counts.get(&stream).copied().unwrap_or(0);
        state.counts.insert(stream, n);
    }
}
