//! Group commit: the single writer of the embedded store.
//!
//! One dedicated thread owns every write. It takes the first queued request, then everything
//! else already queued (up to [`MAX_ROUND_EVENTS`] events), stages them into one sled batch,
//! applies it, flushes once, and only then answers every request of the round and advances the
//! durable point. While a flush is under way new requests queue up and form the next round, so
//! concurrent publishers share flushes instead of paying one each.
//!
//! Promises:
//! - A request is answered Ok only after the flush that made it durable.
//! - A request is atomic: each of its events is stored, or recognised as an idempotent repeat,
//!   or the whole request fails and none of it is staged.
//! - Sequences are assigned here, contiguously, in commit order.
//! - The writer runs to completion whatever the caller does: a client that hangs up leaves its
//!   events wholly stored or absent, never partial.
//! - Retention trims run as rounds of their own, oldest first, at most [`MAX_TRIM`] events
//!   each, so publishes queued meanwhile wait for one bounded round at most.
//! - After a storage error the writer refuses further writes (reads go on): sled keeps its
//!   first I/O error until the store is reopened, and a half-applied round must never be
//!   followed by another that reuses its sequences.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;
use crate::event::{id, time, NewEvent};
use crate::metrics::Metrics;
use crate::store::durability::Syncer;
use crate::store::embedded::{load, stored, Loaded, SharedTree, StoreConfig};
use crate::store::recent::Recent;
use crate::store::{keys, Appended, StoredEvent};

/// Most events staged into one round (one sled batch, one flush).
pub const MAX_ROUND_EVENTS: usize = 4_096;

/// Least time between two attempts to reopen the store after a storage error.
const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Most events one trim command removes, so a trim never stalls publishes for long.
pub const MAX_TRIM: u64 = 1_000;

/// Event counts per (livemode, type): the basis of ListEvents' exact totals.
pub type Counts = BTreeMap<(bool, String), u64>;

/// What the last flush made durable.
#[derive(Debug, Default)]
pub struct DurableState {
    /// The newest durable sequence.
    pub sequence: u64,
    /// The oldest kept sequence (retention removes events below it).
    pub first: u64,
    /// Counts of durable events per (livemode, type).
    pub counts: Counts,
}

/// A request to the writer.
pub enum Command {
    /// Store these events atomically and answer once durable.
    Append {
        /// The validated events, in order.
        events: Vec<NewEvent>,
        /// Where the answer goes; a dropped receiver does not stop the write.
        reply: oneshot::Sender<Result<Vec<Appended>, Error>>,
    },
    /// Remove the oldest events through this sequence (a bounded number per command).
    Trim {
        /// The last sequence to remove.
        through: u64,
        /// Answered with the new first kept sequence.
        done: oneshot::Sender<Result<u64, Error>>,
    },
    /// Finish what is queued before this, flush, and stop.
    Close {
        /// Signalled once the writer has stopped.
        done: oneshot::Sender<()>,
    },
}

/// The writer's state, owned by its thread.
pub struct Committer {
    tree: sled::Tree,
    shared: SharedTree,
    config: StoreConfig,
    last_recovery: Option<std::time::Instant>,
    last_seq: u64,
    first_seq: u64,
    counts: Counts,
    failed: Arc<AtomicBool>,
    syncer: Syncer,
    metrics: Metrics,
    recent: Arc<Recent>,
    state: watch::Sender<Arc<DurableState>>,
    durable: watch::Sender<u64>,
}

/// Where a request's answer goes, and the answer.
type Reply = (oneshot::Sender<Result<Vec<Appended>, Error>>, Result<Vec<Appended>, Error>);

/// One round's staged work.
#[derive(Default)]
struct Round {
    batch: sled::Batch,
    new_events: usize,
    /// Events staged in this round by id, so a repeat within the round is recognised.
    staged: HashMap<String, StoredEvent>,
    replies: Vec<Reply>,
    received: Option<prost_types::Timestamp>,
}

/// How one event of a request resolves.
enum Resolved {
    Existing(StoredEvent),
    New(NewEvent, String),
}

impl Committer {
    /// A writer continuing after `last_seq`, with the stored counts. Called once, by the
    /// store's `open`, which owns every one of these parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: SharedTree,
        config: StoreConfig,
        (first_seq, last_seq): (u64, u64),
        counts: Counts,
        state: watch::Sender<Arc<DurableState>>,
        durable: watch::Sender<u64>,
        failed: Arc<AtomicBool>,
        syncer: Syncer,
        metrics: Metrics,
        recent: Arc<Recent>,
    ) -> Result<Self, Error> {
        Ok(Committer {
            tree: shared.get()?,
            shared,
            config,
            last_recovery: None,
            last_seq,
            first_seq,
            counts,
            failed,
            syncer,
            metrics,
            recent,
            state,
            durable,
        })
    }

    /// The writer loop; returns when closed or when every sender is gone.
    pub fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut next = None;
        loop {
            let command = match next.take() {
                Some(command) => command,
                None => match commands.blocking_recv() {
                    Some(command) => command,
                    None => return,
                },
            };
            match command {
                Command::Append { events, reply } => {
                    // Group commit: everything already queued joins this round, up to a
                    // trim or close, which run as rounds of their own.
                    let mut round = Round::default();
                    self.take(events, reply, &mut round);
                    while round.new_events < MAX_ROUND_EVENTS {
                        match commands.try_recv() {
                            Ok(Command::Append { events, reply }) => {
                                self.take(events, reply, &mut round)
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(round);
                }
                Command::Trim { through, done } => {
                    let _ = done.send(self.trim(through));
                }
                Command::Close { done } => {
                    self.failed.store(true, Ordering::Relaxed);
                    if let Err(err) = self.syncer.sync_ack() {
                        tracing::error!(error = %err, "cannot sync the ack record at close");
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn take(
        &mut self,
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Appended>, Error>>,
        round: &mut Round,
    ) {
        let result = self.stage(events, round);
        round.replies.push((reply, result));
    }

    /// Stages one request into the round, all or nothing.
    fn stage(&mut self, events: Vec<NewEvent>, round: &mut Round) -> Result<Vec<Appended>, Error> {
        if self.failed.load(Ordering::Relaxed) {
            self.recover()?;
        }
        let resolved =
            events.into_iter().map(|e| self.resolve(e, round)).collect::<Result<Vec<_>, _>>()?;
        let received = *round.received.get_or_insert_with(time::now);
        let mut out = Vec::with_capacity(resolved.len());
        for r in resolved {
            match r {
                Resolved::Existing(event) => out.push(Appended { event, new: false }),
                Resolved::New(new, id) => {
                    let event = self.stage_new(new, id, received, round);
                    out.push(Appended { event, new: true });
                }
            }
        }
        Ok(out)
    }

    /// Decides whether an event is new or a repeat, reading the round and the store.
    fn resolve(&self, event: NewEvent, round: &Round) -> Result<Resolved, Error> {
        let Some(given) = &event.id else {
            let id = self.fresh_id(event.livemode, round)?;
            return Ok(Resolved::New(event, id));
        };
        let existing = match round.staged.get(given) {
            Some(staged) => Some(staged.clone()),
            None => self.stored(given)?,
        };
        let Some(existing) = existing else {
            let id = given.clone();
            return Ok(Resolved::New(event, id));
        };
        match event.differs_from(&existing.decode()?) {
            None => Ok(Resolved::Existing(existing)),
            Some(field) => Err(Error::AlreadyExists { id: given.clone(), field }),
        }
    }

    fn stored(&self, id: &str) -> Result<Option<StoredEvent>, Error> {
        let Some(seq) = self.tree.get(keys::id(id))? else {
            return Ok(None);
        };
        let seq =
            keys::u64_value(&seq).ok_or_else(|| Error::Corrupt(format!("id index of {id:?}")))?;
        let bytes = self
            .tree
            .get(keys::event(seq))?
            .ok_or_else(|| Error::Corrupt(format!("id {id:?} points to missing sequence {seq}")))?;
        stored(seq, bytes).map(Some)
    }

    fn fresh_id(&self, livemode: bool, round: &Round) -> Result<String, Error> {
        let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
        loop {
            let id = id::generate(livemode, millis);
            if !round.staged.contains_key(&id) && !self.tree.contains_key(keys::id(&id))? {
                return Ok(id);
            }
        }
    }

    fn stage_new(
        &mut self,
        new: NewEvent,
        id: String,
        received: prost_types::Timestamp,
        round: &mut Round,
    ) -> StoredEvent {
        self.last_seq += 1;
        let seq = self.last_seq;
        // Encoded once, here: these bytes are what the store holds and every reader sends.
        let event = StoredEvent::from_event(&new.into_event(id, seq, received));
        let created = event.created();
        let (livemode, event_type) = (event.livemode(), event.event_type());
        let batch = &mut round.batch;
        batch.insert(&keys::event(seq), event.bytes().as_ref());
        batch.insert(keys::id(event.id()), &seq.to_be_bytes());
        batch.insert(keys::entry(&keys::created_prefix(livemode), &created, seq), &[]);
        batch.insert(keys::entry(&keys::type_prefix(event_type, livemode), &created, seq), &[]);
        *self.counts.entry((livemode, event_type.to_string())).or_default() += 1;
        round.new_events += 1;
        round.staged.insert(event.id().to_string(), event.clone());
        event
    }

    /// Applies and flushes the round, then answers every request in it.
    fn commit(&mut self, round: Round) {
        let Round { mut batch, new_events, replies, staged, .. } = round;
        if new_events > 0 {
            let started = std::time::Instant::now();
            let mut fresh: Vec<StoredEvent> = staged.into_values().collect();
            fresh.sort_unstable_by_key(StoredEvent::sequence);
            // Counters and metrics once per stream per round, not once per event.
            let mut per_stream: BTreeMap<(bool, &str, &str), u64> = BTreeMap::new();
            for event in &fresh {
                *per_stream
                    .entry((event.livemode(), event.event_type(), event.source()))
                    .or_default() += 1;
            }
            let mut streams = std::collections::BTreeSet::new();
            for (&(livemode, event_type, source), &n) in &per_stream {
                self.metrics.published(event_type, source, n);
                if streams.insert((livemode, event_type)) {
                    let count =
                        self.counts.get(&(livemode, event_type.to_string())).copied().unwrap_or(0);
                    batch.insert(keys::count(livemode, event_type), &count.to_be_bytes());
                }
            }
            let written = self.write(batch, fresh);
            self.metrics.commit(new_events, started.elapsed());
            if let Err(err) = written {
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::from_storage(err.clone())));
                }
                return;
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    /// Applies a batch, makes it durable, and publishes the new durable state. After a
    /// failure every later write is refused (see the module header).
    fn write(&mut self, batch: sled::Batch, fresh: Vec<StoredEvent>) -> Result<(), sled::Error> {
        let written = self
            .tree
            .apply_batch(batch)
            .and_then(|()| self.tree.flush().map(drop))
            .and_then(|()| self.syncer.sync().map_err(sled::Error::Io));
        if let Err(err) = written {
            tracing::error!(error = %err, "commit failed; refusing further writes");
            self.failed.store(true, Ordering::Relaxed);
            return Err(err);
        }
        // The cache first: once the durable point moves, readers may ask for these events.
        self.recent.push(fresh);
        self.state.send_replace(Arc::new(DurableState {
            sequence: self.last_seq,
            first: self.first_seq,
            counts: self.counts.clone(),
        }));
        self.durable.send_replace(self.last_seq);
        if let Err(err) = self.syncer.record_ack(self.last_seq) {
            // The events are durable; only loss detection after a crash is weakened.
            tracing::error!(error = %err, "cannot write the ack record");
        }
        Ok(())
    }

    /// After a storage error (a full disk, say), reopens the store in-process: sled keeps its
    /// first I/O error until reopened. At most one attempt per [`RECOVERY_INTERVAL`], triggered
    /// by a write. Whatever sled recovered is synced before it becomes visible, and the ack
    /// record is checked again, so no acknowledged event can have gone missing unnoticed.
    fn recover(&mut self) -> Result<(), Error> {
        if self.last_recovery.is_some_and(|at| at.elapsed() < RECOVERY_INTERVAL) {
            return Err(Error::WritesDisabled);
        }
        self.last_recovery = Some(std::time::Instant::now());
        let recovered = self.shared.reopen(&mut self.tree, &self.config).and_then(|()| {
            let loaded = load(&self.tree, &self.config.path)?;
            self.tree.flush()?;
            let mut syncer = Syncer::open(&self.config.path, self.config.durability)?;
            syncer.sync()?;
            Ok((loaded, syncer))
        });
        let (Loaded { first_seq, last_seq, counts }, syncer) = match recovered {
            Ok(recovered) => recovered,
            Err(err) => {
                tracing::error!(error = %err, "reopening the store failed; writes stay disabled");
                return Err(Error::WritesDisabled);
            }
        };
        self.syncer = syncer;
        self.first_seq = first_seq;
        self.last_seq = last_seq;
        self.counts = counts;
        self.state.send_replace(Arc::new(DurableState {
            sequence: last_seq,
            first: first_seq,
            counts: self.counts.clone(),
        }));
        self.durable.send_replace(last_seq);
        self.failed.store(false, Ordering::Relaxed);
        tracing::info!(
            last_sequence = last_seq,
            "store reopened after a storage error; writes resumed"
        );
        Ok(())
    }

    /// Removes the oldest events through `through` (at most [`MAX_TRIM`] per call), in
    /// sequence order, with their index entries; returns the new first kept sequence.
    fn trim(&mut self, through: u64) -> Result<u64, Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::WritesDisabled);
        }
        let upto = through.min(self.last_seq).min(self.first_seq.saturating_add(MAX_TRIM - 1));
        if upto < self.first_seq {
            return Ok(self.first_seq);
        }
        let mut batch = sled::Batch::default();
        for seq in self.first_seq..=upto {
            let Some(bytes) = self.tree.get(keys::event(seq))? else {
                return Err(Error::Corrupt(format!("event {seq} is missing while trimming")));
            };
            let event = stored(seq, bytes)?;
            let created = event.created();
            batch.remove(&keys::event(seq));
            // An id removed earlier and published again belongs to the newer event.
            if self.tree.get(keys::id(event.id()))?.as_deref() == Some(&seq.to_be_bytes()[..]) {
                batch.remove(keys::id(event.id()));
            }
            batch.remove(keys::entry(&keys::created_prefix(event.livemode()), &created, seq));
            batch.remove(keys::entry(
                &keys::type_prefix(event.event_type(), event.livemode()),
                &created,
                seq,
            ));
            let stream = (event.livemode(), event.event_type().to_string());
            let count = self.counts.get(&stream).copied().unwrap_or(0).saturating_sub(1);
            batch.insert(keys::count(stream.0, &stream.1), &count.to_be_bytes());
            self.counts.insert(stream, count);
        }
        batch.insert(&keys::FIRST_KEY, &(upto + 1).to_be_bytes());
        let previous = self.first_seq;
        self.first_seq = upto + 1;
        if let Err(err) = self.write(batch, Vec::new()) {
            self.first_seq = previous;
            return Err(Error::from_storage(err));
        }
        self.recent.prune_before(self.first_seq);
        Ok(self.first_seq)
    }
}
