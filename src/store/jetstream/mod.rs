//! The JetStream backend: eventsd instances over a replicated NATS JetStream stream, so that
//! several stateless instances serve one set of events and the loss of a machine loses none.
//!
//! All state lives in one stream (`--nats-stream`, default `EVENTSD`): one message per event
//! on its own subject (`subject.rs`), the encoded `Event` as payload, the stream sequence as
//! the event's `sequence`. What the stream guarantees and how eventsd uses it:
//! - **Sequence**: the PubAck's stream sequence; gapless because the stream denies deletes and
//!   purges and has no limits, and rejected or duplicate publishes take no number.
//! - **Permanent idempotency**: each publish expects its (id, mode) subject filter to be
//!   empty, so an id is stored once per mode, ever; a loser reads the winner back and compares fields
//!   (equal: the stored event; different: ALREADY_EXISTS naming the field).
//! - **Atomic PublishEvents**: an atomic batch (ADR-50), all or nothing, in order.
//! - **Durability**: an append returns once the stream leader acknowledged it, i.e. once a
//!   quorum of replicas stored it. Whether that is on disk or in the replicas' page cache is
//!   the servers' `sync_interval` (README: "Running more than one instance").
//! - **Unknown outcomes** (a timeout, a leader election): the append is retried with the same
//!   ids until the request timeout; a retry of a write that did land finds the id stored and
//!   returns it, so nothing is stored twice.
//!
//! Each instance follows the stream (`follow.rs`) into an in-memory index (`index.rs`) and a
//! recent-events cache; its durable point is the last event it applied. GetEvent reads the
//! leader when the index does not know the id yet (read-your-writes from any instance);
//! a first ListEvents page waits until the index holds the stream's last sequence, so a page
//! includes every event acknowledged before it was asked for; subscriptions run on the same
//! fan-out as the embedded store, fed by the follower, so an event published through one
//! instance reaches subscribers of every instance.
//!
//! **Partitions**: where the stream stands is taken only from a leader that heard from a
//! quorum of its replicas within `QUORUM_FRESH` (2 s), under the servers' election timeout, so no
//! other leader can have acknowledged anything meanwhile. A first page, a subscription's start
//! and a GetEvent that finds nothing need that answer; an instance that cannot get it (cut off
//! from the majority, or with it a leader that is) answers UNAVAILABLE instead of serving what
//! it holds as current. Every call that waits on JetStream answers within its budget,
//! a little under `--request-timeout`, so the caller hears UNAVAILABLE from the store rather
//! than CANCELLED from the transport; an append given up on this way goes on in its task
//! until its own deadline, and a retry with the same ids finds what it stored.

pub(crate) mod api;
pub(crate) mod follow;
pub(crate) mod index;
pub(crate) mod setup;
pub(crate) mod subject;
pub(crate) mod urls;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prost_types::Timestamp;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::event::{id, time, NewEvent};
use crate::metrics::Metrics;
use crate::store::jetstream::api::{Api, Failure};
use crate::store::jetstream::follow::read_index;
use crate::store::jetstream::index::{MemIndex, SharedIndex};
use crate::store::recent::{self, Recent};
use crate::store::{list, Appended, EventStore, ListPage, ListQuery, StoredEvent};

pub use setup::JetStreamConfig;

/// Pause between attempts of a write whose outcome was unknown.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Most rounds of "an id is taken, read it back" in one append (each round settles at least
/// the ids stored meanwhile, so more means the stream is misbehaving).
const MAX_CONFLICTS: usize = 8;

/// Longest wait of an append for this instance to read its own write (it is durable already;
/// past this the answer goes out anyway).
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);

/// How often the health task asks for the stream leader.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// How recently the stream leader must have heard from a quorum of replicas for its answer
/// to count as current: above nats-server's heartbeat interval (1 s), so an idle healthy
/// cluster passes, and under its shortest election timeout (4 s), so no follower that was in
/// contact this recently can have elected another leader yet.
const QUORUM_FRESH: Duration = Duration::from_secs(2);

/// A cheap-to-clone handle on the JetStream backend.
#[derive(Clone)]
pub struct JetStreamStore(Arc<Inner>);

struct Inner {
    api: Api,
    index: SharedIndex,
    recent: Arc<Recent>,
    durable: watch::Receiver<u64>,
    /// Connected, with a known stream leader (updated every [`HEALTH_INTERVAL`]).
    healthy: Arc<AtomicBool>,
    /// How long a call may wait for JetStream (retries of unknown outcomes included).
    deadline: Duration,
    /// How long a caller waits for an answer: a tenth under `deadline` (the server's request
    /// timeout), so the store's UNAVAILABLE arrives before the transport gives up.
    budget: Duration,
    metrics: Metrics,
    stop: CancellationToken,
    /// The store's own tasks (following the stream, health, appends). They outlive the
    /// server's task tracker on purpose: in-flight calls need them until the server has
    /// drained, and `close` (after the drain) stops them and waits for them.
    tasks: TaskTracker,
    /// Signs page tokens; the same in every instance (`setup::page_token_key`).
    page_token_key: [u8; 32],
}

/// How one event of an append resolves.
enum Slot {
    /// To be published (an id not seen stored yet): the event encoded once, without a
    /// sequence (which the stream assigns); its bytes are the message's payload.
    Pending(StoredEvent),
    /// Stored before this call, or by an earlier attempt of this call.
    Stored(StoredEvent),
    /// Stored by this call.
    Published(StoredEvent),
    /// A repeat of the event at this earlier position of the same call.
    RepeatOf(usize),
}

impl JetStreamStore {
    /// Connects, creates or verifies the stream, starts following it, and returns once the
    /// index holds every event the stream held at start.
    pub async fn open(config: &JetStreamConfig) -> Result<Self, Error> {
        let (api, info) = setup::connect(config).await?;
        let page_token_key = setup::page_token_key(api.client(), config).await?;
        let first = info.state.first_seq.max(1);
        let index: SharedIndex = Arc::new(std::sync::RwLock::new(MemIndex::starting_at(first)));
        let recent = Arc::new(Recent::new(recent::capacity_from(config.cache_bytes)));
        let (durable_tx, durable) = watch::channel(first - 1);
        let stop = CancellationToken::new();
        let healthy = Arc::new(AtomicBool::new(true));
        let tasks = TaskTracker::new();
        tasks.spawn(follow::follow(
            api.clone(),
            index.clone(),
            recent.clone(),
            durable_tx,
            stop.clone(),
        ));
        tasks.spawn(watch_health(api.clone(), healthy.clone(), stop.clone()));
        let store = JetStreamStore(Arc::new(Inner {
            api,
            index,
            recent,
            durable,
            healthy,
            deadline: config.request_timeout,
            budget: config.request_timeout * 9 / 10,
            metrics: config.metrics.clone(),
            stop,
            tasks,
            page_token_key,
        }));
        let started = Instant::now();
        let target = info.state.last_seq;
        let mut durable = store.0.durable.clone();
        durable
            .wait_for(|seq| *seq >= target)
            .await
            .map_err(|_| Error::Startup("the stream follower stopped".into()))?;
        tracing::info!(events = target, took = ?started.elapsed(), "index built from the stream");
        Ok(store)
    }

    /// The NATS connection (outbound webhooks keep their shared state beside the stream).
    pub fn client(&self) -> async_nats::Client {
        self.0.api.client().clone()
    }

    /// The secret every instance over this stream signs page tokens with.
    pub fn page_token_key(&self) -> [u8; 32] {
        self.0.page_token_key
    }

    /// Runs the JetStream part of a caller's request within [`Inner::budget`]; past it the
    /// caller gets UNAVAILABLE.
    async fn in_time<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let budget = self.0.budget;
        tokio::time::timeout(budget, call).await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "no answer from the JetStream cluster within {budget:?}"
            )))
        })
    }

    /// Waits until this instance has applied `target` (bounded by the call deadline).
    async fn caught_up(&self, target: u64) -> Result<(), Error> {
        self.caught_up_within(target, self.0.deadline).await
    }

    /// Waits until this instance has applied `target`, for at most `limit`.
    async fn caught_up_within(&self, target: u64, limit: Duration) -> Result<(), Error> {
        let mut durable = self.0.durable.clone();
        let reached = tokio::time::timeout(limit, durable.wait_for(|s| *s >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "this instance has not yet read up to sequence {target} of the stream"
            )))
        }
    }

    /// The stream's last sequence, from a leader in touch with a quorum of its replicas.
    async fn last_sequence(&self) -> Result<u64, Error> {
        let info = self.0.api.info().await?;
        let info = info.ok_or_else(|| Error::Unavailable("the stream is missing".into()))?;
        if !info.led_by_quorum(QUORUM_FRESH) {
            return Err(Error::Unavailable(format!(
                "the stream's leader has not heard from a quorum of its replicas within {QUORUM_FRESH:?}"
            )));
        }
        Ok(info.state.last_seq)
    }

    /// The stored event with this id in this mode: from the index if this instance has
    /// applied it, else from the stream leader, which holds every acknowledged write.
    async fn stored(&self, livemode: bool, id: &str) -> Result<Option<StoredEvent>, Failure> {
        if let Some(seq) = read_index(&self.0.index, |i| i.sequence_of(livemode, id)) {
            if let Some(event) = self.event_at(seq).await? {
                return Ok(Some(event));
            }
        }
        self.0.api.get_last_on(&subject::id_filter(self.0.api.stream(), id, livemode)).await
    }

    /// The event at `seq` (known to be stored): from the recent cache, else from the leader.
    async fn event_at(&self, seq: u64) -> Result<Option<StoredEvent>, Failure> {
        if let Some(mut cached) = self.0.recent.read(seq - 1, 1, seq) {
            if let Some(event) = cached.pop() {
                return Ok(Some(event));
            }
        }
        self.0.api.get_by_sequence(seq).await
    }

    /// The events at these sequences, in the same order (each one known to be stored). Runs of
    /// consecutive sequences not in the recent cache are read concurrently, one direct batch
    /// read each; whatever a lagging replica did not return comes from the leader.
    async fn events_at(&self, sequences: &[u64]) -> Result<Vec<StoredEvent>, Error> {
        let mut found: HashMap<u64, StoredEvent> = HashMap::with_capacity(sequences.len());
        let mut sorted = sequences.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut reads = tokio::task::JoinSet::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j] == sorted[j - 1] + 1 {
                j += 1;
            }
            let cached =
                self.0.recent.read(sorted[i] - 1, j - i, sorted[j - 1]).unwrap_or_default();
            if cached.len() == j - i {
                found.extend(cached.into_iter().map(|e| (e.sequence(), e)));
            } else {
                let (api, from, len) = (self.0.api.clone(), sorted[i], j - i);
                reads.spawn(async move { api.get_batch(from, len).await });
            }
            i = j;
        }
        while let Some(read) = reads.join_next().await {
            let events = read.map_err(|e| Error::Internal(format!("read task: {e}")))??;
            found.extend(events.into_iter().map(|e| (e.sequence(), e)));
        }
        let mut out = Vec::with_capacity(sequences.len());
        for &seq in sequences {
            let event = match found.remove(&seq) {
                Some(event) => event,
                None => self.0.api.get_by_sequence(seq).await?.ok_or_else(|| {
                    Error::Corrupt(format!("the stream has no message {seq} though it was read"))
                })?,
            };
            out.push(event);
        }
        Ok(out)
    }

    /// One append, run to completion whatever the caller does.
    async fn append_all(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, Error> {
        let started = Instant::now();
        let received = time::now();
        let millis = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let mut slots: Vec<Slot> = Vec::with_capacity(events.len());
        let mut positions: HashMap<String, usize> = HashMap::new();
        for (i, new) in events.iter().enumerate() {
            let given = new.id.clone();
            if let Some(&first) = given.as_ref().and_then(|id| positions.get(id)) {
                let Slot::Pending(earlier) = &slots[first] else { unreachable_slot()? };
                if let Some(field) = new.differs_from(earlier)? {
                    return Err(Error::AlreadyExists { id: earlier.id().to_string(), field });
                }
                slots.push(Slot::RepeatOf(first));
                continue;
            }
            let id = given.unwrap_or_else(|| id::generate(new.livemode, millis));
            positions.insert(id.clone(), i);
            slots.push(Slot::Pending(StoredEvent::from_new(new, &id, 0, received)?));
        }
        let mut conflicts = 0;
        loop {
            let pending: Vec<usize> =
                (0..slots.len()).filter(|&i| matches!(slots[i], Slot::Pending(..))).collect();
            if pending.is_empty() {
                break;
            }
            match self.publish(&slots, &pending).await {
                Ok(first_seq) => {
                    for (n, &i) in pending.iter().enumerate() {
                        if let Slot::Pending(pending) = &slots[i] {
                            let event = api::decode(first_seq + n as u64, pending.bytes())?;
                            slots[i] = Slot::Published(event);
                        }
                    }
                }
                Err(Failure::IdTaken) => {
                    // Some id is stored: read each back and compare, then publish the rest.
                    conflicts += 1;
                    if conflicts > MAX_CONFLICTS {
                        // Either other publishes keep taking these ids, or the stream holds an
                        // earlier attempt of this one that it has not committed (a leader cut
                        // off from its replicas); a retry with the same ids is safe either way.
                        return Err(Error::Unavailable(format!(
                            "the stream refused these ids {MAX_CONFLICTS} times without showing \
                             a stored event for them (concurrent publishes of the same ids, or \
                             an earlier attempt not yet committed); retry with the same ids"
                        )));
                    }
                    for &i in &pending {
                        let Slot::Pending(event) = &slots[i] else { continue };
                        if let Some(stored) = self.stored(event.livemode(), event.id()).await? {
                            if let Some(field) = events[i].differs_from(&stored)? {
                                let id = stored.id().to_string();
                                return Err(Error::AlreadyExists { id, field });
                            }
                            slots[i] = Slot::Stored(stored);
                        }
                    }
                }
                Err(Failure::Transient(why)) if started.elapsed() < self.0.deadline => {
                    tracing::debug!(reason = %why, "publish outcome unknown; retrying with the same ids");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(failure) => return Err(failure.into()),
            }
        }
        let mut out: Vec<Appended> = Vec::with_capacity(slots.len());
        for slot in &slots {
            out.push(match slot {
                Slot::Published(event) => Appended { event: event.clone(), new: true },
                Slot::Stored(event) => Appended { event: event.clone(), new: false },
                Slot::RepeatOf(i) => Appended { event: out[*i].event.clone(), new: false },
                Slot::Pending(..) => unreachable_slot()?,
            });
        }
        // Metrics once per (type, source), not once per event.
        let mut per_stream: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for appended in out.iter().filter(|a| a.new) {
            let event = &appended.event;
            *per_stream.entry((event.event_type(), event.source())).or_default() += 1;
        }
        for (&(event_type, source), &n) in &per_stream {
            self.0.metrics.published(event_type, source, n);
        }
        let stored = per_stream.values().sum::<u64>();
        if stored > 0 {
            self.0.metrics.commit(stored as usize, started.elapsed());
        }
        // Read-your-writes on this instance: answer once the follower has applied the events,
        // so a list, a poll or a subscription right after sees them. They are durable either
        // way; past the wait (which leaves the caller's budget room to hear the answer) it
        // goes out regardless.
        if let Some(last) = out.iter().map(|a| a.event.sequence()).max() {
            let left = self.0.budget.saturating_sub(started.elapsed() + RETRY_PAUSE);
            if self.caught_up_within(last, OWN_WRITE_WAIT.min(left)).await.is_err() {
                tracing::warn!(
                    sequence = last,
                    "answering before this instance read its own write"
                );
            }
        }
        self.0.metrics.publish_latency(started.elapsed());
        Ok(out)
    }

    /// Publishes the pending slots: one message, or an atomic batch. Returns the first
    /// sequence; the others follow it in order.
    async fn publish(&self, slots: &[Slot], pending: &[usize]) -> Result<u64, Failure> {
        let stream = self.0.api.stream();
        let mut messages = Vec::with_capacity(pending.len());
        for &i in pending {
            let Slot::Pending(event) = &slots[i] else { continue };
            messages.push((
                subject::event(stream, event.id(), event.livemode(), event.event_type()),
                subject::id_filter(stream, event.id(), event.livemode()),
                event.bytes().clone(),
            ));
        }
        if messages.len() == 1 {
            let (subject, filter, payload) = messages.pop().expect("one message");
            self.0.api.publish_new(subject, &filter, payload).await
        } else {
            self.0.api.publish_batch(messages).await
        }
    }
}

/// A slot state the append loop never leaves behind; reported rather than panicking.
fn unreachable_slot<T>() -> Result<T, Error> {
    Err(Error::Corrupt("append bookkeeping went wrong".into()))
}

/// Marks the store unhealthy while the connection is down or the stream has no leader in touch
/// with a quorum of its replicas.
async fn watch_health(api: Api, healthy: Arc<AtomicBool>, stop: CancellationToken) {
    loop {
        let connected = api.client().connection_state() == async_nats::connection::State::Connected;
        let led = match api.info().await {
            Ok(Some(info)) => info.led_by_quorum(QUORUM_FRESH),
            _ => false,
        };
        let now = connected && led;
        if healthy.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(healthy = now, "JetStream health changed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

#[async_trait]
impl EventStore for JetStreamStore {
    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, Error> {
        if self.0.stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        // Its own task: neither a caller that hangs up nor the budget cuts a batch or a retry
        // short.
        let store = self.clone();
        let task = self.0.tasks.spawn(async move { store.append_all(events).await });
        self.in_time(async {
            task.await.map_err(|e| Error::Internal(format!("append task: {e}")))?
        })
        .await
    }

    fn writable(&self) -> bool {
        self.0.healthy.load(Ordering::Relaxed) && !self.0.stop.is_cancelled()
    }

    async fn get(&self, livemode: bool, id: &str) -> Result<Option<StoredEvent>, Error> {
        self.in_time(async {
            let found = self.stored(livemode, id).await?;
            if found.is_none() {
                // "No such event" is news only from a leader in touch with the majority.
                self.last_sequence().await?;
            }
            Ok(found)
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> Result<ListPage, Error> {
        // A first page includes everything acknowledged before it was asked for; a later one
        // needs this instance to hold its view's snapshot.
        match &query.resume {
            Some(resume) => self.in_time(self.caught_up(resume.snapshot)).await?,
            None => {
                self.newest().await?;
            }
        }
        let index = self.0.index.clone();
        // Index reads block on a lock; awaited in place, so not background tasks.
        let page = tokio::task::spawn_blocking(move || {
            read_index(&index, |index| {
                list::page(index, index.state(), &query, |seq, s| Ok(index.source_is(seq, s)))
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("list task: {e}")))??;
        let events = self.in_time(self.events_at(&page.sequences)).await?;
        Ok(page.with_events(events))
    }

    async fn read_from(&self, after: u64, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let first = self.first_sequence();
        if after.saturating_add(1) < first {
            return Err(Error::Expired { position: "after_sequence", earliest: first });
        }
        let durable = *self.0.durable.borrow();
        if after >= durable || max == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.0.recent.read(after, max, durable) {
            if !events.is_empty() {
                return Ok(events);
            }
        }
        let want = max.min(usize::try_from(durable - after).unwrap_or(usize::MAX));
        let events = self.0.api.get_batch(after + 1, want).await?;
        if !events.is_empty() {
            return Ok(events);
        }
        // A replica behind answered the direct read: the leader has it.
        match self.0.api.get_by_sequence(after + 1).await? {
            Some(event) => Ok(vec![event]),
            None => Err(Error::Corrupt(format!("the stream has no message {}", after + 1))),
        }
    }

    async fn newest(&self) -> Result<u64, Error> {
        self.in_time(async {
            let target = self.last_sequence().await?;
            self.caught_up(target).await?;
            Ok(*self.0.durable.borrow())
        })
        .await
    }

    async fn first_sequence_created_from(&self, created: Timestamp) -> Result<Option<u64>, Error> {
        let index = self.0.index.clone();
        let durable = *self.0.durable.borrow();
        tokio::task::spawn_blocking(move || {
            read_index(&index, |index| list::first_created_from(index, &created, durable))
        })
        .await
        .map_err(|e| Error::Internal(format!("scan task: {e}")))?
    }

    fn first_sequence(&self) -> u64 {
        read_index(&self.0.index, |i| i.state().first)
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.0.durable.clone()
    }

    async fn close(&self) {
        self.0.stop.cancel();
        self.0.tasks.close();
        // An append still retrying ends within its deadline; the followers end at `stop`.
        let bound = self.0.deadline + Duration::from_secs(5);
        if tokio::time::timeout(bound, self.0.tasks.wait()).await.is_err() {
            tracing::warn!(?bound, "JetStream store tasks still running at close");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.0.api.client().flush()).await;
    }
}
