//! One SubscribeEvents stream: its start position, its task, and its policy for lag,
//! disconnect and shutdown (see the module header of `fanout`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::auth::{KeyRing, Principal, Scope};
use crate::error::Error;
use crate::event::{cloudevent, time, Filter};
use crate::fanout::limit::{StreamLimit, StreamPermit};
use crate::fanout::queue::{queue, QueueSender, QueueStream};
use crate::metrics::{Metrics, SubscriberGuard};
use crate::proto::wire::{subscribe_events_response::Item, SubscribeEventsResponse};
use crate::proto::{CaughtUp, Heartbeat, WireEvent};
use crate::store::{EventStore, StoredEvent};

/// The stream type tonic serves for SubscribeEvents.
pub type SubscribeEventsStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<SubscribeEventsResponse, Status>> + Send>>;

/// Most events read from the store per step.
const READ_BATCH: usize = 256;
/// Events read in a subscription's first step, before their size is known.
const FIRST_BATCH: usize = 16;
/// The stored bytes a read step aims at: later steps read as many events as fit, judged by
/// the last step's sizes, so a subscriber's batch stays near this whatever the event size.
const READ_BATCH_BYTES: usize = 1 << 20;
/// How long the final status of a stream may wait for room in its queue.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(5);
/// Items queued towards the transport per subscriber.
const SEND_QUEUE: usize = 64;
/// Bytes of encoded items queued towards the transport per subscriber.
const SEND_QUEUE_BYTES: u32 = 1 << 20;

/// Where a subscription begins.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Only events committed after the subscription starts.
    Now,
    /// Every stored event.
    Beginning,
    /// Events with a sequence above this one.
    After(u64),
    /// Events created at or after this time (history and live alike).
    Created(Timestamp),
}

/// Server-wide subscription settings.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionConfig {
    /// How often a heartbeat is sent.
    pub heartbeat: Duration,
    /// Most streams open at once (`--max-subscribers`).
    pub max_subscribers: u32,
}

/// Everything subscriptions share: cheap-to-clone handles.
#[derive(Clone)]
pub struct Fanout {
    store: Arc<dyn EventStore>,
    config: SubscriptionConfig,
    limit: StreamLimit,
    metrics: Metrics,
    keys: KeyRing,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Fanout {
    /// Subscriptions over `store`; their tasks are tracked on `tasks` and end on `shutdown`,
    /// or when a reload of `keys` takes the subscriber's right away.
    pub fn new(
        store: Arc<dyn EventStore>,
        config: SubscriptionConfig,
        metrics: Metrics,
        keys: KeyRing,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let limit = StreamLimit::new(config.max_subscribers);
        Fanout { store, config, limit, metrics, keys, shutdown, tasks }
    }

    /// Resolves the start position and spawns the subscription's task for `caller` (already
    /// checked for the `subscribe` scope; `filter` already narrowed to its mode).
    /// `cloudevents` sends events as CloudEvents instead of events.v1.Event.
    pub async fn subscribe(
        &self,
        caller: Principal,
        start: Start,
        filter: Filter,
        cloudevents: bool,
    ) -> Result<SubscribeEventsStream, Error> {
        Ok(Box::pin(spawn(self, caller, start, filter, cloudevents).await?))
    }

    /// [`Fanout::subscribe`] in the events.v1 format, as the queue itself, for a transport
    /// that reframes events ([`QueueStream::with_events`] hands it each stored event).
    pub async fn subscribe_queue(
        &self,
        caller: Principal,
        start: Start,
        filter: Filter,
    ) -> Result<QueueStream, Error> {
        spawn(self, caller, start, filter, false).await
    }
}

async fn spawn(
    fanout: &Fanout,
    caller: Principal,
    start: Start,
    filter: Filter,
    cloudevents: bool,
) -> Result<QueueStream, Error> {
    let permit = fanout.limit.admit()?;
    // Watched from before the check, so a reload between the caller's authentication and
    // here is not missed.
    let reloads = fanout.keys.changes();
    fanout.keys.still_grants(&caller, Scope::Subscribe)?;
    let store = fanout.store.clone();
    let durable = store.newest().await?;
    let first = store.first_sequence();
    let (cursor, created_from) = match start {
        Start::Now => (durable, None),
        Start::Beginning => (first - 1, None),
        Start::After(seq) if seq.saturating_add(1) < first => {
            return Err(Error::Expired { position: "after_sequence", earliest: first });
        }
        Start::After(seq) if seq > durable => {
            return Err(Error::OutOfRange {
                field: "after_sequence",
                // Not the newest sequence itself: to a one-mode key it would count the other
                // mode's events.
                reason: format!("{seq} is beyond the newest durable sequence"),
            });
        }
        Start::After(seq) => (seq, None),
        Start::Created(t) => {
            time::validate(&t).map_err(|r| Error::invalid("from_created", r))?;
            let first = store.first_sequence_created_from(t).await?;
            (first.map_or(durable, |s| s - 1), Some(t))
        }
    };
    let (tx, rx) = queue(SEND_QUEUE, SEND_QUEUE_BYTES);
    let subscription = Subscription {
        _permit: permit,
        batch: FIRST_BATCH,
        store,
        filter,
        created_from,
        cursor,
        tx,
        config: fanout.config,
        shutdown: fanout.shutdown.clone(),
        gauge: fanout.metrics.subscriber(),
        metrics: fanout.metrics.clone(),
        cloudevents,
        keys: fanout.keys.clone(),
        reloads,
        caller,
    };
    fanout.tasks.spawn(subscription.run());
    Ok(rx)
}

struct Subscription {
    /// This stream's slot under `--max-subscribers`, freed when the task ends.
    _permit: StreamPermit,
    /// Events to read in the next step (see [`READ_BATCH_BYTES`]).
    batch: usize,
    store: Arc<dyn EventStore>,
    filter: Filter,
    created_from: Option<Timestamp>,
    /// Every matching event up to this sequence has been sent.
    cursor: u64,
    tx: QueueSender,
    config: SubscriptionConfig,
    shutdown: CancellationToken,
    gauge: SubscriberGuard,
    metrics: Metrics,
    cloudevents: bool,
    keys: KeyRing,
    /// Changes on every key reload: the caller's rights are then checked again.
    reloads: watch::Receiver<u64>,
    caller: Principal,
}

/// Why a subscription task stops.
enum Stop {
    ClientGone,
    Shutdown,
    /// A key reload took the caller's right to this stream away.
    Revoked(Error),
    Failed(Error),
}

impl Subscription {
    async fn run(mut self) {
        let stop = self.serve().await;
        let status = match stop {
            Stop::ClientGone => return,
            Stop::Shutdown => Status::from(Error::StreamShutDown { after_sequence: self.cursor }),
            Stop::Revoked(err) | Stop::Failed(err) => Status::from(err),
        };
        // The final status must reach the client, or a slow reader would see its stream end
        // with OK and not resume. A client that stops reading entirely gets a bounded wait;
        // the server's shutdown grace bounds the rest.
        let _ = tokio::time::timeout(FINAL_STATUS_WAIT, self.tx.send(Err(status))).await;
    }

    async fn serve(&mut self) -> Stop {
        let mut durable = self.store.durable();
        let mut next_beat = Instant::now() + self.config.heartbeat;
        let mut caught_up = false;
        loop {
            let newest = *durable.borrow_and_update();
            self.gauge.set_lagging(newest.saturating_sub(self.cursor) > READ_BATCH as u64);
            while self.cursor < newest {
                let batch = match self.store.read_from(self.cursor, self.batch).await {
                    Ok(batch) if !batch.is_empty() => batch,
                    Ok(_) => break,
                    Err(err) => return Stop::Failed(err),
                };
                let bytes: usize = batch.iter().map(|e| e.bytes().len()).sum();
                self.batch = (READ_BATCH_BYTES * batch.len() / bytes.max(1)).clamp(1, READ_BATCH);
                for event in batch {
                    let sequence = event.sequence();
                    if self.wanted(&event) {
                        let item = match self.cloudevents {
                            true => match cloudevent::to_proto(&event) {
                                Ok(cloud_event) => Item::CloudEvent(cloud_event),
                                Err(err) => return Stop::Failed(err),
                            },
                            // The stored bytes, shared: no encoding per subscriber.
                            false => Item::Event(WireEvent::from(&event)),
                        };
                        if let Err(stop) = self.send_event(item, event).await {
                            return stop;
                        }
                        self.metrics.delivered();
                    }
                    self.cursor = sequence;
                }
                if let Err(stop) = self.check_access() {
                    return stop;
                }
                if Instant::now() >= next_beat {
                    next_beat = Instant::now() + self.config.heartbeat;
                    if let Err(stop) = self.send(self.heartbeat_item()).await {
                        return stop;
                    }
                }
            }
            if !caught_up {
                caught_up = true;
                if let Err(stop) =
                    self.send(Item::CaughtUp(CaughtUp { sequence: self.cursor })).await
                {
                    return stop;
                }
            }
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Stop::Shutdown;
                    }
                }
                _ = sleep_until(next_beat) => {
                    next_beat = Instant::now() + self.config.heartbeat;
                    if let Err(stop) = self.send(self.heartbeat_item()).await {
                        return stop;
                    }
                }
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
                _ = self.tx.closed() => return Stop::ClientGone,
                // The task holds a clone of the ring, so the sender outlives this receiver.
                Ok(()) = self.reloads.changed() => {
                    if let Err(err) = self.keys.still_grants(&self.caller, Scope::Subscribe) {
                        return Stop::Revoked(err);
                    }
                }
            }
        }
    }

    /// Between read steps: whether a key reload since the last check took the caller's
    /// right to this stream away.
    fn check_access(&mut self) -> Result<(), Stop> {
        if !self.reloads.has_changed().unwrap_or(false) {
            return Ok(());
        }
        self.reloads.borrow_and_update();
        self.keys.still_grants(&self.caller, Scope::Subscribe).map_err(Stop::Revoked)
    }

    fn wanted(&self, event: &StoredEvent) -> bool {
        self.filter.matches(event)
            && self
                .created_from
                .as_ref()
                .is_none_or(|from| time::cmp(&event.created(), from).is_ge())
    }

    fn heartbeat_item(&self) -> Item {
        Item::Heartbeat(Heartbeat { sequence: self.cursor, time: Some(time::now()) })
    }

    /// Queues one item, giving up if the client leaves or the server shuts down meanwhile.
    async fn send(&self, item: Item) -> Result<(), Stop> {
        self.send_with(item, None).await
    }

    /// Queues an event's item with the event itself.
    async fn send_event(&self, item: Item, event: StoredEvent) -> Result<(), Stop> {
        self.send_with(item, Some(event)).await
    }

    async fn send_with(&self, item: Item, event: Option<StoredEvent>) -> Result<(), Stop> {
        let response = SubscribeEventsResponse { item: Some(item) };
        tokio::select! {
            sent = self.tx.send_with(Ok(response), event) => sent.map_err(|_| Stop::ClientGone),
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
        }
    }
}
