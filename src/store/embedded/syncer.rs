//! The sync thread: makes written rounds durable and acknowledges them, while the writer
//! already stages and writes the next ones (pipelined group commit).
//!
//! The writer (`writer.rs`) appends a round to the log (one `write`, page cache only) and hands
//! it here with a handle on the segment it went to. This thread takes every round queued, runs
//! one `fdatasync` per segment they touched (`--durability power-loss`), and then, round by
//! round in sequence order: publishes the events to the recent-events cache, hands them to the
//! index thread, moves the durable point and the ack record, and answers the round's requests.
//!
//! Promises:
//! - **An answer means durable**: no request is answered before the `fdatasync` that covers
//!   its round has returned (an idempotent repeat of a just-written event rides in a later
//!   round, so it is answered after that event's sync).
//! - **In order**: rounds become durable and are answered in sequence order; the durable
//!   point only moves forward, over whole rounds.
//! - **A failed sync acknowledges nothing after it**: that round and every round after it
//!   fail (their pending ids are forgotten), the store turns read-only, and writes stay
//!   refused: after a failed `fdatasync` the kernel may have dropped the written pages, so
//!   nothing past the durable point is trusted again in this process (the next start recovers
//!   the log's tail against the ack record).
//! - Index work (rounds, trims, recovery, close) reaches the index thread through here, so it
//!   is always in sequence order with the rounds.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::durability::{AckWriter, Durability};
use crate::store::embedded::indexer::{Entry, Job};
use crate::store::embedded::Shared;
use crate::store::log::SegmentSync;
use crate::store::{Appended, StoredEvent};

/// Most written rounds waiting for their sync before the writer waits.
pub const QUEUE_ROUNDS: usize = 64;

/// Where a request's answer goes, and the answer.
pub type Reply = (oneshot::Sender<Result<Vec<Appended>, Error>>, Result<Vec<Appended>, Error>);

/// A round written to the log, waiting for its sync.
pub struct Written {
    /// The round's new events, in sequence order (empty for a round of repeats only).
    pub fresh: Vec<StoredEvent>,
    /// The round's requests and their answers once durable.
    pub replies: Vec<Reply>,
    /// The segment the round was written to (`None` when it wrote nothing).
    pub segment: Option<SegmentSync>,
    /// When the writer began writing it (for the commit figures).
    pub started: Instant,
}

/// Work for the sync thread, in the writer's order.
pub enum ToSync {
    /// A written round.
    Round(Written),
    /// Work for the index thread, passed on after every round before it.
    Index(Job),
    /// Signalled once every round sent before it is durable (or failed).
    Drain(SyncSender<()>),
    /// Sync what is queued, close the index thread, sync the ack record, stop.
    Close(SyncSender<()>),
}

/// The sync thread's state.
pub struct Syncer {
    /// What the writer and the readers share.
    pub shared: Arc<Shared>,
    /// The index thread's queue.
    pub index: SyncSender<Job>,
    /// Whether rounds are fdatasynced (`power-loss`) or left to the OS.
    pub durability: Durability,
    /// The ack record, moved after every durable round.
    pub acks: AckWriter,
    /// The durable point readers watch.
    pub durable: watch::Sender<u64>,
    /// Where commit and publish figures go.
    pub metrics: Metrics,
    /// Set after a failed sync: nothing written later is acknowledged.
    pub failed: bool,
}

impl Syncer {
    /// The thread's loop; returns on [`ToSync::Close`] or when the writer is gone.
    pub fn run(mut self, work: Receiver<ToSync>) {
        let mut next = None;
        loop {
            let item = match next.take() {
                Some(item) => item,
                None => match work.recv() {
                    Ok(item) => item,
                    Err(_) => return self.close(),
                },
            };
            match item {
                ToSync::Round(round) => {
                    // Every round already written shares this sync.
                    let mut rounds = vec![round];
                    loop {
                        match work.try_recv() {
                            Ok(ToSync::Round(more)) => rounds.push(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.settle(rounds);
                }
                ToSync::Index(job) => self.send_index(job),
                ToSync::Drain(done) => {
                    let _ = done.send(());
                }
                ToSync::Close(done) => {
                    self.close();
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn send_index(&mut self, job: Job) {
        if self.index.send(job).is_err() {
            tracing::error!("the index thread is gone; refusing writes");
            self.shared.index_failed.store(true, Ordering::Release);
            self.shared.read_only.store(true, Ordering::Relaxed);
        }
    }

    /// One sync for these rounds, then each is published and answered in order.
    fn settle(&mut self, rounds: Vec<Written>) {
        let synced = if self.failed { Err(Error::WritesDisabled) } else { self.sync(&rounds) };
        if let Err(err) = &synced {
            if !self.failed {
                tracing::error!(error = %err, "log sync failed; nothing written since the last sync is acknowledged; refusing writes (restart to recover the log's tail)");
                self.failed = true;
                self.shared.log_failed.store(true, Ordering::Release);
                self.shared.read_only.store(true, Ordering::Relaxed);
            }
        }
        for round in rounds {
            match &synced {
                Ok(()) => self.publish(round),
                Err(err) => {
                    self.shared.pending.forget(&round.fresh);
                    for (reply, _) in round.replies {
                        let _ = reply.send(Err(super::writer::for_reply(err)));
                    }
                }
            }
        }
    }

    /// fdatasync of every segment the rounds touched, oldest first.
    fn sync(&self, rounds: &[Written]) -> Result<(), Error> {
        if self.durability == Durability::ProcessCrash {
            return Ok(());
        }
        let mut synced: Vec<&SegmentSync> = Vec::new();
        for segment in rounds.iter().filter_map(|r| r.segment.as_ref()) {
            if !synced.iter().any(|s| s.same(segment)) {
                segment.sync()?;
                synced.push(segment);
            }
        }
        Ok(())
    }

    /// A durable round: recent cache, index thread, durable point, ack record, answers.
    fn publish(&mut self, round: Written) {
        let Written { fresh, replies, started, .. } = round;
        if let Some(last) = fresh.last().map(StoredEvent::sequence) {
            self.metrics.commit(fresh.len(), started.elapsed());
            // Metrics once per (type, source) per round, not once per event.
            let mut per_stream: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for event in &fresh {
                *per_stream.entry((event.event_type(), event.source())).or_default() += 1;
            }
            for (&(event_type, source), &n) in &per_stream {
                self.metrics.published(event_type, source, n);
            }
            self.send_index(Job::Round(fresh.iter().map(Entry::of).collect()));
            self.shared.recent.push(fresh);
            self.durable.send_replace(last);
            if let Err(err) = self.acks.record_ack(last) {
                // The events are durable; only loss detection after a crash is weakened.
                tracing::error!(error = %err, "cannot write the ack record");
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    /// Lets the index thread finish and flush, and syncs the ack record.
    fn close(&mut self) {
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        if self.index.send(Job::Close { done }).is_ok() {
            let _ = flushed.recv();
        }
        if let Err(err) = self.acks.sync_ack() {
            tracing::error!(error = %err, "cannot sync the ack record at close");
        }
    }
}
