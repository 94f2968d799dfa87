//! Group commit: the single writer of the embedded store.
//!
//! One dedicated thread owns every write to the log. It takes the first queued request, then
//! everything else already queued (up to [`MAX_ROUND_EVENTS`] events), and commits them as one
//! round:
//! 1. the round's new events are encoded once and appended to the log in one write, then one
//!    `fdatasync` (`--durability power-loss`);
//! 2. their ids become pending and the round goes to the index thread (`indexer.rs`), which
//!    applies it to sled behind the log, off this path;
//! 3. the durable point moves (recent cache, durable watch, ack record);
//! 4. every request of the round is answered.
//!
//! While a round is under way new requests queue up and form the next one, so concurrent
//! publishers share one fdatasync instead of paying one each.
//!
//! Promises:
//! - A request is answered Ok only once its events are durable in the log.
//! - A request is atomic: each of its events is stored, or recognised as an idempotent repeat,
//!   or the whole request fails and none of it is staged.
//! - Sequences are assigned here, contiguously, in commit order.
//! - The writer runs to completion whatever the caller does: a client that hangs up leaves its
//!   events wholly stored or absent, never partial.
//! - A failed log write acknowledges nothing and leaves nothing in the log. A failed index
//!   write after the log is durable keeps the acknowledgement (reads find those events as
//!   pending); either way writes are refused until the store recovers in-process (at most one
//!   attempt a second, on a write), which catches the index up from the log.
//! - Retention trims run as rounds of their own, oldest first, at most [`MAX_TRIM`] events
//!   each, so publishes queued meanwhile wait for one bounded round at most.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;
use crate::event::{id, time, NewEvent};
use crate::metrics::Metrics;
use crate::store::durability::{AckWriter, Durability};
use crate::store::embedded::indexer::Job;
use crate::store::embedded::{stored, Shared, StoreConfig};
use crate::store::index;
use crate::store::log::LogWriter;
use crate::store::{Appended, StoredEvent};

/// Most events staged into one round (one log write, one sled batch).
pub const MAX_ROUND_EVENTS: usize = 4_096;

/// Least time between two attempts to recover after a storage error.
const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Most events one trim command removes, so a trim never stalls publishes for long.
pub const MAX_TRIM: u64 = 1_000;

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
    /// Finish what is queued before this, sync, flush the index, and stop.
    Close {
        /// Signalled once the writer has stopped.
        done: oneshot::Sender<()>,
    },
}

/// Which part failed, so recovery knows what to redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// Nothing: writes are accepted.
    No,
    /// A log write or sync failed: nothing of that round was acknowledged.
    Log,
}

/// The writer's state, owned by its thread.
pub struct Writer {
    shared: Arc<Shared>,
    log: LogWriter,
    jobs: SyncSender<Job>,
    config: StoreConfig,
    last_seq: u64,
    first_seq: u64,
    failed: Failed,
    last_recovery: Option<std::time::Instant>,
    acks: AckWriter,
    metrics: Metrics,
    durable: watch::Sender<u64>,
}

/// Where a request's answer goes, and the answer.
type Reply = (oneshot::Sender<Result<Vec<Appended>, Error>>, Result<Vec<Appended>, Error>);

/// One round's staged work.
#[derive(Default)]
struct Round {
    /// New events in sequence order, each encoded once (the bytes the log holds).
    fresh: Vec<StoredEvent>,
    /// Index of each staged event in `fresh` by (livemode, id), so a repeat within the round
    /// is recognised.
    staged: HashMap<(bool, String), usize>,
    replies: Vec<Reply>,
    received: Option<prost_types::Timestamp>,
}

/// How one event of a request resolves.
enum Resolved {
    Existing(StoredEvent),
    New(NewEvent, String),
}

impl Writer {
    /// A writer continuing after the log's last sequence. Called once, by the store's `open`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        log: LogWriter,
        jobs: SyncSender<Job>,
        config: StoreConfig,
        acks: AckWriter,
        durable: watch::Sender<u64>,
    ) -> Result<Self, Error> {
        let (first_seq, last_seq) = {
            let state = shared.state();
            (state.first, state.sequence)
        };
        Ok(Writer {
            shared,
            log,
            jobs,
            metrics: config.metrics.clone(),
            config,
            last_seq,
            first_seq,
            failed: Failed::No,
            last_recovery: None,
            acks,
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
                    None => return self.close(),
                },
            };
            match command {
                Command::Append { events, reply } => {
                    // Group commit: everything already queued joins this round, up to a
                    // trim or close, which run as rounds of their own.
                    let mut round = Round::default();
                    self.take(events, reply, &mut round);
                    while round.fresh.len() < MAX_ROUND_EVENTS {
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
                    self.close();
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Stops writes and leaves the store so that the next start replays nothing.
    fn close(&mut self) {
        self.shared.read_only.store(true, Ordering::Relaxed);
        if let Err(err) = self.log.sync() {
            tracing::error!(error = %err, "cannot sync the log at close");
        }
        let (done, flushed) = sync_channel(1);
        if self.jobs.send(Job::Close { done }).is_ok() {
            let _ = flushed.recv();
        }
        if let Err(err) = self.acks.sync_ack() {
            tracing::error!(error = %err, "cannot sync the ack record at close");
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
        if self.failed != Failed::No || self.shared.index_failed.load(Ordering::Acquire) {
            self.recover()?;
        }
        let tree = self.shared.index.get()?;
        let resolved = events
            .into_iter()
            .map(|e| self.resolve(&tree, e, round))
            .collect::<Result<Vec<_>, _>>()?;
        let received = *round.received.get_or_insert_with(time::now);
        let mut out = Vec::with_capacity(resolved.len());
        for r in resolved {
            match r {
                Resolved::Existing(event) => out.push(Appended { event, new: false }),
                Resolved::New(new, id) => {
                    self.last_seq += 1;
                    // Encoded once, here: these bytes are what the log holds and every
                    // reader sends.
                    let event =
                        StoredEvent::from_event(&new.into_event(id, self.last_seq, received));
                    round
                        .staged
                        .insert((event.livemode(), event.id().to_string()), round.fresh.len());
                    round.fresh.push(event.clone());
                    out.push(Appended { event, new: true });
                }
            }
        }
        Ok(out)
    }

    /// Decides whether an event is new or a repeat, reading the round and the store. Ids are
    /// one namespace per mode: only an event of the same mode can be a repeat or a conflict,
    /// so nothing of the other mode's events is ever compared, named or blocked.
    fn resolve(
        &self,
        tree: &sled::Tree,
        event: NewEvent,
        round: &Round,
    ) -> Result<Resolved, Error> {
        let Some(given) = &event.id else {
            let id = self.fresh_id(tree, event.livemode, round)?;
            return Ok(Resolved::New(event, id));
        };
        let mode = event.livemode;
        let existing = match round.staged.get(&(mode, given.clone())) {
            Some(&at) => Some(round.fresh[at].clone()),
            None => self.stored(tree, mode, given)?,
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

    /// The stored event with this id in this mode: pending (durable, not yet indexed) or in
    /// the index.
    fn stored(
        &self,
        tree: &sled::Tree,
        livemode: bool,
        id: &str,
    ) -> Result<Option<StoredEvent>, Error> {
        let seq = match self.shared.pending.get(livemode, id) {
            Some(seq) => seq,
            None => match index::lookup(tree, livemode, id)? {
                Some(seq) => seq,
                None => return Ok(None),
            },
        };
        stored(seq, self.shared.log.expect(seq)?).map(Some)
    }

    fn fresh_id(&self, tree: &sled::Tree, livemode: bool, round: &Round) -> Result<String, Error> {
        let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
        loop {
            let id = id::generate(livemode, millis);
            let taken = round.staged.contains_key(&(livemode, id.clone()))
                || self.shared.pending.get(livemode, &id).is_some()
                || index::lookup(tree, livemode, &id)?.is_some();
            if !taken {
                return Ok(id);
            }
        }
    }

    /// Makes the round durable, indexes it, moves the durable point, then answers.
    fn commit(&mut self, round: Round) {
        let Round { fresh, replies, .. } = round;
        if !fresh.is_empty() {
            let started = std::time::Instant::now();
            let written = self.write(&fresh);
            self.metrics.commit(fresh.len(), started.elapsed());
            if let Err(err) = written {
                self.last_seq -= fresh.len() as u64;
                for (reply, _) in replies {
                    let _ = reply.send(Err(for_reply(&err)));
                }
                return;
            }
            // Metrics once per (type, source) per round, not once per event.
            let mut per_stream: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for event in &fresh {
                *per_stream.entry((event.event_type(), event.source())).or_default() += 1;
            }
            for (&(event_type, source), &n) in &per_stream {
                self.metrics.published(event_type, source, n);
            }
            self.shared.recent.push(fresh);
            self.durable.send_replace(self.last_seq);
            if let Err(err) = self.acks.record_ack(self.last_seq) {
                // The events are durable; only loss detection after a crash is weakened.
                tracing::error!(error = %err, "cannot write the ack record");
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    /// Log append + sync, then the index. Errors only if the log write failed (nothing was
    /// acknowledged); an index failure is recorded and the round still stands.
    fn write(&mut self, fresh: &[StoredEvent]) -> Result<(), Error> {
        let appended = self
            .log
            .append(fresh.iter().map(|e| (e.sequence(), e.bytes().as_ref())))
            .and_then(|()| match self.config.durability {
                Durability::PowerLoss => self.log.sync(),
                Durability::ProcessCrash => Ok(()),
            });
        if let Err(err) = appended {
            tracing::error!(error = %err, "log write failed; nothing of the round was acknowledged; refusing writes until recovered");
            self.failed = Failed::Log;
            self.shared.read_only.store(true, Ordering::Relaxed);
            return Err(err);
        }
        // Pending before the durable point moves, so every durable event is found by id;
        // then the index thread takes it (waiting here only if it is far behind).
        self.shared.pending.add(fresh);
        if self.jobs.send(Job::Round(fresh.to_vec())).is_err() {
            tracing::error!("the index thread is gone; refusing writes");
            self.shared.index_failed.store(true, Ordering::Release);
            self.shared.read_only.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// After a storage error (a full disk, say), recovers in-process: the log's tail is
    /// scanned again and cut back to its last whole record, the index is reopened (sled keeps
    /// its first I/O error until then) and caught up from the log. At most one attempt per
    /// [`RECOVERY_INTERVAL`], triggered by a write.
    fn recover(&mut self) -> Result<(), Error> {
        if self.last_recovery.is_some_and(|at| at.elapsed() < RECOVERY_INTERVAL) {
            return Err(Error::WritesDisabled);
        }
        self.last_recovery = Some(std::time::Instant::now());
        if let Err(err) = self.try_recover() {
            tracing::error!(error = %err, "recovery failed; writes stay disabled");
            return Err(Error::WritesDisabled);
        }
        self.failed = Failed::No;
        self.shared.read_only.store(false, Ordering::Relaxed);
        tracing::info!(
            last_sequence = self.last_seq,
            "store recovered after a storage error; writes resumed"
        );
        Ok(())
    }

    fn try_recover(&mut self) -> Result<(), Error> {
        self.log.recover(self.last_seq)?;
        if self.log.next() != self.last_seq + 1 {
            return Err(Error::Corrupt(format!(
                "after recovery the log continues at {} but {} events are acknowledged",
                self.log.next(),
                self.last_seq
            )));
        }
        self.log.sync()?;
        if self.shared.index_failed.load(Ordering::Acquire) {
            let (done, recovered) = sync_channel(1);
            let job = Job::Recover { last: self.last_seq, first: self.first_seq, done };
            self.jobs.send(job).map_err(|_| Error::Internal("the index thread is gone".into()))?;
            recovered.recv().map_err(|_| Error::Internal("the index thread is gone".into()))??;
        }
        Ok(())
    }

    /// Removes the oldest events through `through` (at most [`MAX_TRIM`] per call), in
    /// sequence order; returns the new first kept sequence. The log's first kept sequence
    /// moves first (durably), then the index entries go, then whole segments below it.
    fn trim(&mut self, through: u64) -> Result<u64, Error> {
        if self.failed != Failed::No || self.shared.index_failed.load(Ordering::Acquire) {
            return Err(Error::WritesDisabled);
        }
        let upto = through.min(self.last_seq).min(self.first_seq.saturating_add(MAX_TRIM - 1));
        if upto < self.first_seq {
            return Ok(self.first_seq);
        }
        let first = upto + 1;
        let log = self.shared.log.clone();
        log.set_first(first)?;
        // Through the index thread, after every round queued before it.
        let (done, trimmed) = sync_channel(1);
        self.jobs
            .send(Job::Trim { from: self.first_seq, upto, done })
            .map_err(|_| Error::Internal("the index thread is gone".into()))?;
        self.first_seq = first;
        trimmed.recv().map_err(|_| Error::Internal("the index thread is gone".into()))??;
        self.shared.recent.prune_before(first);
        // Only once the index no longer points into them may whole segments go.
        log.delete_below(first)?;
        Ok(first)
    }
}

/// The error each request of a failed round gets: a full disk is RESOURCE_EXHAUSTED, anything
/// else an internal storage error (logged in full where it happened).
fn for_reply(err: &Error) -> Error {
    match err {
        Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => Error::DiskFull,
        Error::DiskFull => Error::DiskFull,
        Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}
