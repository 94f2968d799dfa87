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
//! - After a storage error the writer refuses further writes (reads go on): sled keeps its
//!   first I/O error until the store is reopened, and a half-applied round must never be
//!   followed by another that reuses its sequences.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;
use crate::event::{id, time, NewEvent};
use crate::proto::Event;
use crate::store::durability::Syncer;
use crate::store::{keys, Appended};

/// Most events staged into one round (one sled batch, one flush).
pub const MAX_ROUND_EVENTS: usize = 4_096;

/// Event counts per (livemode, type): the basis of ListEvents' exact totals.
pub type Counts = BTreeMap<(bool, String), u64>;

/// What the last flush made durable.
#[derive(Debug, Default)]
pub struct DurableState {
    /// The newest durable sequence.
    pub sequence: u64,
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
    /// Finish what is queued before this, flush, and stop.
    Close {
        /// Signalled once the writer has stopped.
        done: oneshot::Sender<()>,
    },
}

/// The writer's state, owned by its thread.
pub struct Committer {
    tree: sled::Tree,
    last_seq: u64,
    counts: Counts,
    failed: Arc<AtomicBool>,
    syncer: Syncer,
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
    staged: HashMap<String, Event>,
    replies: Vec<Reply>,
    received: Option<prost_types::Timestamp>,
}

/// How one event of a request resolves.
enum Resolved {
    Existing(Event),
    New(NewEvent, String),
}

impl Committer {
    /// A writer continuing after `last_seq`, with the stored counts.
    pub fn new(
        tree: sled::Tree,
        last_seq: u64,
        counts: Counts,
        state: watch::Sender<Arc<DurableState>>,
        durable: watch::Sender<u64>,
        failed: Arc<AtomicBool>,
        syncer: Syncer,
    ) -> Self {
        Committer { tree, last_seq, counts, failed, syncer, state, durable }
    }

    /// The writer loop; returns when closed or when every sender is gone.
    pub fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(first) = commands.blocking_recv() {
            let mut round = Round::default();
            let mut close = self.take(first, &mut round);
            while close.is_none() && round.new_events < MAX_ROUND_EVENTS {
                let Ok(next) = commands.try_recv() else { break };
                close = self.take(next, &mut round);
            }
            self.commit(round);
            if let Some(done) = close {
                self.failed.store(true, Ordering::Relaxed);
                if let Err(err) = self.syncer.sync_ack() {
                    tracing::error!(error = %err, "cannot sync the ack record at close");
                }
                let _ = done.send(());
                return;
            }
        }
    }

    fn take(&mut self, command: Command, round: &mut Round) -> Option<oneshot::Sender<()>> {
        match command {
            Command::Append { events, reply } => {
                let result = self.stage(events, round);
                round.replies.push((reply, result));
                None
            }
            Command::Close { done } => Some(done),
        }
    }

    /// Stages one request into the round, all or nothing.
    fn stage(&mut self, events: Vec<NewEvent>, round: &mut Round) -> Result<Vec<Appended>, Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::WritesDisabled);
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
        match event.differs_from(&existing) {
            None => Ok(Resolved::Existing(existing)),
            Some(field) => Err(Error::AlreadyExists { id: given.clone(), field }),
        }
    }

    fn stored(&self, id: &str) -> Result<Option<Event>, Error> {
        let Some(seq) = self.tree.get(keys::id(id))? else {
            return Ok(None);
        };
        let seq =
            keys::u64_value(&seq).ok_or_else(|| Error::Corrupt(format!("id index of {id:?}")))?;
        let bytes = self
            .tree
            .get(keys::event(seq))?
            .ok_or_else(|| Error::Corrupt(format!("id {id:?} points to missing sequence {seq}")))?;
        Event::decode(bytes.as_ref())
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))
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
    ) -> Event {
        self.last_seq += 1;
        let seq = self.last_seq;
        let event = new.into_event(id, seq, received);
        let created = event.created.unwrap_or(received);
        let batch = &mut round.batch;
        batch.insert(&keys::event(seq), event.encode_to_vec());
        batch.insert(keys::id(&event.id), &seq.to_be_bytes());
        batch.insert(keys::entry(&keys::created_prefix(event.livemode), &created, seq), &[]);
        batch.insert(
            keys::entry(&keys::type_prefix(&event.r#type, event.livemode), &created, seq),
            &[],
        );
        let count = self.counts.entry((event.livemode, event.r#type.clone())).or_default();
        *count += 1;
        batch.insert(keys::count(event.livemode, &event.r#type), &count.to_be_bytes());
        round.new_events += 1;
        round.staged.insert(event.id.clone(), event.clone());
        event
    }

    /// Applies and flushes the round, then answers every request in it.
    fn commit(&mut self, round: Round) {
        let Round { batch, new_events, replies, .. } = round;
        if new_events > 0 {
            let written = self.tree.apply_batch(batch).and_then(|()| self.tree.flush().map(drop));
            if let Err(err) = written {
                tracing::error!(error = %err, "commit failed; refusing further writes");
                self.failed.store(true, Ordering::Relaxed);
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Storage(err.clone())));
                }
                return;
            }
            self.state.send_replace(Arc::new(DurableState {
                sequence: self.last_seq,
                counts: self.counts.clone(),
            }));
            self.durable.send_replace(self.last_seq);
            if let Err(err) = self.syncer.record_ack(self.last_seq) {
                // The events are durable; only loss detection after a crash is weakened.
                tracing::error!(error = %err, "cannot write the ack record");
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
}
