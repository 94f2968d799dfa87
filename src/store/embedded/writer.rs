//! Group commit: the single writer of the embedded store.
//!
//! One dedicated thread owns every write to the log. It takes the first queued request, then
//! everything else already queued (up to [`MAX_ROUND_EVENTS`] events), and commits them as one
//! round:
//! 1. the round's new events are encoded once and appended to the log in one write;
//! 2. their ids become pending (found by GetEvent once durable, and by the next rounds'
//!    repeat checks at once);
//! 3. the round goes to the sync thread (`syncer.rs`), which runs one `fdatasync` for every
//!    round written meanwhile (`--durability power-loss`), moves the durable point, hands the
//!    rounds to the index thread (`indexer.rs`) and answers their requests.
//!
//! While a round is syncing, the writer already stages and writes the next, and new requests
//! queue up meanwhile: concurrent publishers share one fdatasync instead of paying one each,
//! and the CPU work of a round overlaps the previous round's sync.
//!
//! Promises:
//! - A request is answered Ok only once its events are durable in the log (by the sync
//!   thread, in round order).
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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::event::{id, time, NewEvent};
use crate::store::embedded::indexer::Job;
use crate::store::embedded::syncer::{Reply, ToSync, Written};
use crate::store::embedded::Shared;
use crate::store::log::{LogWriter, SegmentSync};
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
    sync: SyncSender<ToSync>,
    last_seq: u64,
    failed: Failed,
    last_recovery: Option<std::time::Instant>,
}

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
    /// New, with the caller's id or `None` for one generated at its sequence.
    New(NewEvent, Option<String>),
}

impl Writer {
    /// A writer continuing after the log's last sequence. Called once, by the store's `open`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        log: LogWriter,
        sync: SyncSender<ToSync>,
    ) -> Result<Self, Error> {
        let last_seq = shared.state().sequence;
        Ok(Writer { shared, log, sync, last_seq, failed: Failed::No, last_recovery: None })
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

    /// Stops writes and leaves the store so that the next start replays nothing: the sync
    /// thread settles every round written, closes the index thread and syncs the ack record.
    fn close(&mut self) {
        self.shared.read_only.store(true, Ordering::Relaxed);
        let (done, closed) = sync_channel(1);
        if self.sync.send(ToSync::Close(done)).is_ok() {
            let _ = closed.recv();
        }
        if let Err(err) = self.log.sync() {
            tracing::error!(error = %err, "cannot sync the log at close");
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
        let resolved =
            events.into_iter().map(|e| self.resolve(e, round)).collect::<Result<Vec<_>, _>>()?;
        let received = *round.received.get_or_insert_with(time::now);
        // A generated id must not equal an id this request gives (by a one-in-2^50 guess).
        let mut given = HashSet::new();
        if resolved.iter().any(|r| matches!(r, Resolved::New(_, None))) {
            for r in &resolved {
                if let Resolved::New(new, Some(id)) = r {
                    given.insert((new.livemode, id.as_str()));
                }
            }
        }
        let mut out = Vec::with_capacity(resolved.len());
        let mut next = self.last_seq;
        let mut fresh = Vec::new();
        for r in &resolved {
            match r {
                Resolved::Existing(event) => {
                    out.push(Appended { event: event.clone(), new: false })
                }
                Resolved::New(new, id) => {
                    next += 1;
                    let generated;
                    let id = match id {
                        Some(id) => id.as_str(),
                        None => {
                            generated = self.fresh_id(new.livemode, round, &given, next)?;
                            generated.as_str()
                        }
                    };
                    // Encoded once, here: these bytes are what the log holds and every
                    // reader sends.
                    let event = StoredEvent::from_new(new, id, next, received)?;
                    fresh.push(event.clone());
                    out.push(Appended { event, new: true });
                }
            }
        }
        // Nothing is staged until every event of the request is encoded.
        self.last_seq = next;
        for event in fresh {
            round.staged.insert((event.livemode(), event.id().to_string()), round.fresh.len());
            round.fresh.push(event);
        }
        Ok(out)
    }

    /// Decides whether an event is new (with the caller's id, or `None` to generate one at
    /// its sequence) or a repeat, reading the round and the store. Ids are one namespace per
    /// mode: only an event of the same mode can be a repeat or a conflict, so nothing of the
    /// other mode's events is ever compared, named or blocked.
    fn resolve(&self, event: NewEvent, round: &Round) -> Result<Resolved, Error> {
        let Some(given) = &event.id else {
            return Ok(Resolved::New(event, None));
        };
        let mode = event.livemode;
        let existing = match round.staged.get(&(mode, given.clone())) {
            Some(&at) => Some(round.fresh[at].clone()),
            // Every sequence up to the writer's last is in the log (durable or not yet).
            None => self.shared.locate(mode, given, self.last_seq)?,
        };
        let Some(existing) = existing else {
            let id = given.clone();
            return Ok(Resolved::New(event, Some(id)));
        };
        match event.differs_from(&existing)? {
            None => Ok(Resolved::Existing(existing)),
            Some(field) => Err(Error::AlreadyExists { id: given.clone(), field }),
        }
    }

    /// A new id for the event at `seq` (`id::generate_at`, so the id names its sequence and
    /// the index keeps no entry for it), checked against every id a caller gave.
    fn fresh_id(
        &self,
        livemode: bool,
        round: &Round,
        given: &HashSet<(bool, &str)>,
        seq: u64,
    ) -> Result<String, Error> {
        let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
        loop {
            let id = id::generate_at(livemode, millis, seq);
            let taken = given.contains(&(livemode, id.as_str()))
                || round.staged.contains_key(&(livemode, id.clone()))
                || self.shared.pending.get(livemode, &id).is_some()
                || !self.shared.ids.candidates(livemode, &id)?.is_empty();
            if !taken {
                return Ok(id);
            }
        }
    }

    /// Writes the round to the log and hands it to the sync thread, which answers it once
    /// durable. A failed write answers the round's requests at once and acknowledges nothing.
    fn commit(&mut self, round: Round) {
        let Round { fresh, replies, .. } = round;
        let started = std::time::Instant::now();
        let segment = match self.write(&fresh) {
            Ok(segment) => segment,
            Err(err) => {
                self.last_seq -= fresh.len() as u64;
                for (reply, _) in replies {
                    let _ = reply.send(Err(for_reply(&err)));
                }
                return;
            }
        };
        let written = Written { fresh, replies, segment, started };
        if self.sync.send(ToSync::Round(written)).is_err() {
            // The sync thread is gone only at close; the round's requests then see their
            // answers dropped, which reads as a shutdown.
            tracing::error!("the sync thread is gone; refusing writes");
            self.failed = Failed::Log;
            self.shared.read_only.store(true, Ordering::Relaxed);
        }
    }

    /// Appends the round to the log (page cache only) and marks its ids pending; returns the
    /// segment to sync, if anything was written.
    fn write(&mut self, fresh: &[StoredEvent]) -> Result<Option<SegmentSync>, Error> {
        if fresh.is_empty() {
            return Ok(None);
        }
        // A refusal for want of headroom writes nothing, so the store stays writable.
        let bytes = fresh.iter().map(|e| e.bytes().len() as u64 + 64).sum();
        self.log.room_for(bytes)?;
        let appended = self.log.append(fresh.iter().map(|e| (e.sequence(), e.bytes().as_ref())));
        if let Err(err) = appended {
            tracing::error!(error = %err, "log write failed; nothing of the round was acknowledged; refusing writes until recovered");
            self.failed = Failed::Log;
            self.shared.read_only.store(true, Ordering::Relaxed);
            return Err(err);
        }
        // Pending at once, so the next rounds' repeat checks find these ids; readers see them
        // only once the durable point passes them.
        self.shared.pending.add(fresh);
        Ok(Some(self.log.sync_handle()))
    }

    /// Waits until every round written so far is durable (or failed).
    fn drain(&self) -> Result<(), Error> {
        let (done, drained) = sync_channel(1);
        self.sync.send(ToSync::Drain(done)).map_err(|_| gone("sync"))?;
        drained.recv().map_err(|_| gone("sync"))
    }

    /// Sends work to the index thread (through the sync thread, so it follows every round
    /// written before it) and waits for its outcome.
    fn index_job(
        &self,
        job: impl FnOnce(SyncSender<Result<(), Error>>) -> Job,
    ) -> Result<(), Error> {
        let (done, finished) = sync_channel(1);
        self.sync.send(ToSync::Index(job(done))).map_err(|_| gone("sync"))?;
        finished.recv().map_err(|_| gone("index"))?
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
        self.drain()?;
        if self.shared.log_failed.load(Ordering::Acquire) {
            return Err(Error::WritesDisabled);
        }
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
            let (last, first) = (self.last_seq, self.first_seq());
            self.index_job(|done| Job::Recover { last, first, done })?;
        }
        Ok(())
    }

    /// The first kept sequence: the writer is the only one that moves it.
    fn first_seq(&self) -> u64 {
        self.shared.first_kept.load(Ordering::Acquire)
    }

    /// Removes the oldest events through `through` (at most [`MAX_TRIM`] per call), in
    /// sequence order; returns the new first kept sequence. The log's first kept sequence
    /// moves first (durably), then the index entries go, then whole segments below it.
    fn trim(&mut self, through: u64) -> Result<u64, Error> {
        if self.failed != Failed::No || self.shared.index_failed.load(Ordering::Acquire) {
            return Err(Error::WritesDisabled);
        }
        let from = self.first_seq();
        let upto = through.min(self.last_seq).min(from.saturating_add(MAX_TRIM - 1));
        if upto < from {
            return Ok(from);
        }
        let first = upto + 1;
        let log = self.shared.log.clone();
        log.set_first(first)?;
        self.shared.first_kept.store(first, Ordering::Release);
        // Through the index thread, after every round written before it.
        self.index_job(|done| Job::Trim { from, upto, done })?;
        self.shared.recent.prune_before(first);
        // Only once the index no longer points into them may whole segments go.
        log.delete_below(first)?;
        Ok(first)
    }
}

/// The error for a helper thread that has stopped (only at close).
fn gone(which: &str) -> Error {
    Error::Internal(format!("the {which} thread is gone"))
}

/// The error each request of a failed round gets: a full disk is RESOURCE_EXHAUSTED, anything
/// else an internal storage error (logged in full where it happened).
pub(super) fn for_reply(err: &Error) -> Error {
    match err {
        Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => Error::DiskFull,
        Error::DiskFull => Error::DiskFull,
        Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}
