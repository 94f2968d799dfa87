//! The dispatcher: one worker task per endpoint, walking the event log from its cursor and
//! POSTing matching events.
//!
//! Each worker is the only writer of its endpoint's cursor and delivery records, so an
//! endpoint's state changes in one place, in order. Its loop:
//! 1. launch due retries, oldest due first, while fewer than `max_in_flight` attempts run;
//! 2. with slots still free, read events above the cursor from the store, record the matching
//!    ones as pending and move the cursor past them in one atomic write (`state::advance`),
//!    then launch them;
//! 3. wait for an attempt to finish, the durable point to move, the next retry to fall due,
//!    a control message (update, replay, retry, delete) or shutdown.
//!
//! Promises:
//! - **Nothing on the publish path**: workers read the log like any subscriber; publishers
//!   never wait for them.
//! - **Isolation**: every endpoint has its own slots and its own task, so a hanging or
//!   failing endpoint never delays another. Within an endpoint deliveries are unordered: a
//!   failing event waits for its retry without holding a slot, and later events go on.
//! - **At least once**: an event is recorded before its first attempt, and a record stays
//!   pending until an attempt succeeds or the schedule is exhausted. After a crash pending
//!   records are retried and events above the cursor scanned again, so a delivery may repeat
//!   (with the same `webhook-id`) but none is lost.
//! - **Shutdown** aborts in-flight attempts (their records stay pending) and returns.
//! - **One worker per endpoint in the cluster**: on the JetStream store a worker runs only while
//!   its instance holds the endpoint's lease (`sharing`); when the lease is lost the worker
//!   stops at once, aborting its attempts, and another instance's worker starts from the
//!   shared state. Control requests reach the holder wherever they arrive.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost_types::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::client::{Outcome, Sender};
use crate::delivery::schedule::{random_unit, RetrySchedule};
use crate::delivery::sharing::{Control, ControlReply, ControlRequest, Op, Sharing};
use crate::delivery::sign;
use crate::delivery::state::{DeliveryStore, EndpointRecord};
use crate::error::Error;
use crate::event::Filter;
use crate::metrics::Metrics;
use crate::proto::{Delivery, DeliveryAttempt, DeliveryStatus, EndpointFormat};
use crate::store::{EventStore, StoredEvent};

/// Most events a worker reads from the store at once.
const READ_BATCH: usize = 256;

/// Most pending retries a worker schedules before it stops scanning for new events (a first
/// retry-schedule entry above zero would otherwise record every event up front).
const MAX_SCHEDULED: usize = 100_000;

/// Wait after a storage error before the worker reads again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The error of deliveries whose endpoint was deleted.
pub const ENDPOINT_DELETED: &str = "endpoint deleted";

/// The error of deliveries whose event retention removed first.
pub const EXPIRED: &str = "expired";

/// What every worker shares.
pub struct Settings {
    /// The event store the workers read.
    pub store: Arc<dyn EventStore>,
    /// Endpoint and delivery state.
    pub state: DeliveryStore,
    /// Makes the attempts.
    pub sender: Sender,
    /// `--delivery-retry-schedule`.
    pub schedule: RetrySchedule,
    /// `--delivery-disable-after`.
    pub disable_after: Duration,
    /// Where attempts and deliveries are counted.
    pub metrics: Metrics,
    /// On JetStream: the leases and control routing that let instances share endpoints.
    pub sharing: Option<Sharing>,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Its endpoint was deleted.
    Deleted,
    /// Shutdown, a lost lease, or its channel closed.
    Stopped,
}

/// The running workers; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    settings: Arc<Settings>,
    /// The control channel of each worker running in this instance.
    workers: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Control>>>>,
    /// Endpoints with a runner task in this instance (running a worker, or waiting for the
    /// endpoint's lease).
    runners: Arc<Mutex<HashSet<String>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// Starts a worker for every stored, undeleted endpoint; on JetStream, a runner for every
    /// endpoint in the shared bucket, now and as they are created (through any instance).
    pub async fn start(
        settings: Settings,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let dispatcher = Dispatcher {
            settings: Arc::new(settings),
            workers: Arc::default(),
            runners: Arc::default(),
            tracker,
            shutdown,
        };
        match &dispatcher.settings.state {
            DeliveryStore::Sled(_) => {
                for record in dispatcher.settings.state.endpoints().await? {
                    if !record.deleted {
                        dispatcher.spawn(record)?;
                    }
                }
            }
            DeliveryStore::Kv(kv) => {
                let (kv, this) = (kv.clone(), dispatcher.clone());
                dispatcher.tracker.spawn(async move { this.follow_endpoints(kv).await });
            }
        }
        Ok(dispatcher)
    }

    /// What the workers share.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Starts a runner for every endpoint stored in the shared bucket, as it appears.
    async fn follow_endpoints(&self, kv: crate::delivery::kv_state::KvDeliveries) {
        while !self.shutdown.is_cancelled() {
            let mut entries = match kv.bucket().watch_with_history("ep.*").await {
                Ok(watch) => watch,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the webhook endpoints; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(ERROR_BACKOFF) => continue,
                    }
                }
            };
            loop {
                let entry = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    entry = entries.next() => entry,
                };
                let Some(Ok(entry)) = entry else { break };
                if entry.operation != async_nats::jetstream::kv::Operation::Put {
                    continue;
                }
                use prost::Message;
                match EndpointRecord::decode(entry.value.as_ref()) {
                    Ok(record) if !record.deleted => {
                        if let Err(error) = self.spawn(record) {
                            tracing::warn!(%error, "cannot start an endpoint's runner");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(key = %entry.key, %error, "unreadable endpoint"),
                }
            }
        }
    }

    /// Starts running a new (already stored) endpoint; nothing if it runs already.
    pub fn spawn(&self, record: EndpointRecord) -> Result<(), Error> {
        let id = record.id().to_owned();
        let fresh = self
            .runners
            .lock()
            .map_err(|_| Error::Internal("dispatcher lock".into()))?
            .insert(id.clone());
        if fresh {
            let this = self.clone();
            self.tracker.spawn(async move {
                this.run_endpoint(&id).await;
                if let Ok(mut runners) = this.runners.lock() {
                    runners.remove(&id);
                }
            });
        }
        Ok(())
    }

    /// Runs the endpoint's worker until the endpoint is deleted or shutdown; on JetStream
    /// only while this instance holds its lease, waiting for it again after losing it.
    async fn run_endpoint(&self, id: &str) {
        loop {
            let lease = match &self.settings.sharing {
                None => None,
                Some(sharing) => {
                    match sharing.acquire(&self.settings.state, id, &self.shutdown).await {
                        Some(lease) => Some(lease),
                        None => return,
                    }
                }
            };
            let stop = self.shutdown.child_token();
            let done = CancellationToken::new();
            let ended = match self.start_worker(id, stop.clone()).await {
                Err(error) => {
                    // Deleted meanwhile (by the instance that held it): nothing to run.
                    let gone = matches!(error, Error::NoSuch { .. });
                    if !gone {
                        tracing::warn!(endpoint = id, %error, "cannot start the endpoint's worker");
                    }
                    done.cancel();
                    if let Some(lease) = lease {
                        lease.keep(stop.clone(), done.clone()).await;
                    }
                    if gone {
                        return;
                    }
                    None
                }
                Ok((worker, tx)) => {
                    let run = async {
                        let ended = worker.run().await;
                        done.cancel();
                        ended
                    };
                    let keep = async {
                        if let Some(lease) = lease {
                            lease.keep(stop.clone(), done.clone()).await;
                        }
                    };
                    let serve = async {
                        if let Some(sharing) = &self.settings.sharing {
                            sharing.serve(id, tx, done.clone()).await;
                        }
                    };
                    let (ended, (), ()) = tokio::join!(run, keep, serve);
                    Some(ended)
                }
            };
            if let Ok(mut workers) = self.workers.lock() {
                // A worker that ended leaves; one replaced meanwhile stays.
                if workers.get(id).is_some_and(|tx| tx.is_closed()) {
                    workers.remove(id);
                }
            }
            match ended {
                Some(Ended::Deleted) => return,
                _ if self.shutdown.is_cancelled() => return,
                Some(Ended::Stopped) if self.settings.sharing.is_none() => return,
                _ => {
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(if ended.is_none() { ERROR_BACKOFF } else { Duration::ZERO }) => {}
                    }
                }
            }
        }
    }

    /// Loads the endpoint's state and registers its worker's control channel.
    async fn start_worker(
        &self,
        id: &str,
        stop: CancellationToken,
    ) -> Result<(Worker, mpsc::UnboundedSender<Control>), Error> {
        let state = &self.settings.state;
        let record = state
            .endpoint(id)
            .await?
            .filter(|r| !r.deleted)
            .ok_or_else(|| Error::NoSuch { kind: "endpoint", id: id.to_owned() })?;
        let cursor = state.cursor(id).await?.unwrap_or(0);
        let pending = state.pending(id).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker::new(self.settings.clone(), record, cursor, pending, rx, stop);
        self.workers
            .lock()
            .map_err(|_| Error::Internal("dispatcher lock".into()))?
            .insert(id.to_owned(), tx.clone());
        Ok((worker, tx))
    }

    /// Hands a request to the endpoint's worker: in this instance if it runs here, else (on
    /// JetStream) to the instance holding the endpoint.
    async fn call(&self, id: &str, request: ControlRequest) -> Result<ControlReply, Error> {
        let local = {
            let workers =
                self.workers.lock().map_err(|_| Error::Internal("dispatcher lock".into()))?;
            workers.get(id).cloned()
        };
        if let Some(tx) = local {
            let (reply, rx) = oneshot::channel();
            if tx.send(Control { request: request.clone(), reply }).is_ok() {
                if let Ok(answer) = rx.await {
                    return answer;
                }
            }
        }
        match &self.settings.sharing {
            Some(sharing) => sharing.call(id, &request).await,
            None => Err(Error::ShuttingDown),
        }
    }

    /// Stores a changed endpoint through its worker; answers with what was stored.
    pub async fn update(&self, record: EndpointRecord) -> Result<EndpointRecord, Error> {
        let id = record.id().to_owned();
        let request = ControlRequest { op: Op::Update as i32, record: Some(record), sequence: 0 };
        self.call(&id, request)
            .await?
            .record
            .ok_or_else(|| Error::Internal("an update answered without the endpoint".into()))
    }

    /// Moves the endpoint's cursor (a replay); answers once it is stored.
    pub async fn replay(&self, id: &str, cursor: u64) -> Result<(), Error> {
        let request = ControlRequest { op: Op::Replay as i32, record: None, sequence: cursor };
        self.call(id, request).await.map(|_| ())
    }

    /// Schedules one more attempt of a delivery now.
    pub async fn retry(&self, id: &str, sequence: u64) -> Result<Delivery, Error> {
        let request = ControlRequest { op: Op::Retry as i32, record: None, sequence };
        self.call(id, request)
            .await?
            .delivery
            .ok_or_else(|| Error::Internal("a retry answered without the delivery".into()))
    }

    /// Stops the endpoint's worker, aborting its attempts and failing its pending deliveries.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let request = ControlRequest { op: Op::Delete as i32, record: None, sequence: 0 };
        self.call(id, request).await.map(|_| ())
    }

    /// The endpoint's cursor as its worker last stored it.
    pub async fn cursor(&self, id: &str) -> Result<u64, Error> {
        Ok(self.settings.state.cursor(id).await?.unwrap_or(0))
    }
}

/// The delivery id of an event's delivery to an endpoint: `dlv_<endpoint suffix>_<sequence>`.
pub fn delivery_id(endpoint_id: &str, sequence: u64) -> String {
    format!("dlv_{}_{sequence}", endpoint_id.trim_start_matches("ep_"))
}

/// The filter an endpoint delivers through: its types and livemode, narrowed to what its
/// creator's key may read.
pub fn endpoint_filter(record: &EndpointRecord) -> Result<Filter, Error> {
    let endpoint = record.endpoint();
    let mut filter = Filter::new(&endpoint.types, endpoint.livemode)?;
    let own = match record.mode() {
        crate::auth::Mode::All => None,
        crate::auth::Mode::Live => Some(true),
        crate::auth::Mode::Test => Some(false),
    };
    if let Some(own) = own {
        match filter.livemode {
            Some(asked) if asked != own => {
                return Err(Error::PermissionDenied(format!(
                    "the endpoint's creator may not read {} events (livemode)",
                    if asked { "live" } else { "test" }
                )))
            }
            _ => filter.livemode = Some(own),
        }
    }
    Ok(filter)
}

/// The body of one POST in the endpoint's format, and its content type.
pub fn render(format: i32, event: &StoredEvent) -> Result<(Bytes, &'static str), Error> {
    let mut out = Vec::with_capacity(event.bytes().len() + 256);
    let content_type = match EndpointFormat::try_from(format) {
        Ok(EndpointFormat::CloudeventJson) => {
            crate::event::cloudevent::write_json(event, &mut out)?;
            "application/cloudevents+json"
        }
        Ok(EndpointFormat::Omise) => {
            crate::views::omise::write_event(event, &mut out)?;
            "application/json"
        }
        _ => {
            crate::event::json::write_stored_event(event, &mut out)?;
            "application/json"
        }
    };
    Ok((Bytes::from(out), content_type))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn timestamp_ms(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

fn ms_of(ts: &Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos / 1_000_000))
}

/// What an attempt task hands back.
struct Finished {
    record: Delivery,
    outcome: Outcome,
    /// The worker stopped during the attempt (shutdown, lost lease): nothing to record.
    cancelled: bool,
}

struct Worker {
    settings: Arc<Settings>,
    record: EndpointRecord,
    url: Option<url::Url>,
    filter: Option<Filter>,
    cursor: u64,
    /// Pending deliveries waiting for their next attempt: (due, sequence).
    due: BTreeSet<(i64, u64)>,
    /// The due time of each sequence in `due`.
    due_at: HashMap<u64, i64>,
    /// Sequences with an attempt under way.
    running: HashSet<u64>,
    attempts: JoinSet<Finished>,
    rx: mpsc::UnboundedReceiver<Control>,
    durable: watch::Receiver<u64>,
    /// Cancelled at shutdown or when the lease is lost: attempts end at once.
    stop: CancellationToken,
}

impl Worker {
    fn new(
        settings: Arc<Settings>,
        record: EndpointRecord,
        cursor: u64,
        pending: Vec<Delivery>,
        rx: mpsc::UnboundedReceiver<Control>,
        stop: CancellationToken,
    ) -> Self {
        let durable = settings.store.durable();
        let mut worker = Worker {
            settings,
            record: EndpointRecord::default(),
            url: None,
            filter: None,
            cursor,
            due: BTreeSet::new(),
            due_at: HashMap::new(),
            running: HashSet::new(),
            attempts: JoinSet::new(),
            rx,
            durable,
            stop,
        };
        worker.set_record(record);
        let now = now_ms();
        for delivery in pending {
            let at = delivery.next_attempt.as_ref().map_or(now, ms_of);
            worker.schedule(delivery.sequence, at);
        }
        worker
    }

    fn id(&self) -> &str {
        self.record.id()
    }

    fn set_record(&mut self, record: EndpointRecord) {
        self.url = url::Url::parse(&record.endpoint().url).ok();
        self.filter = match endpoint_filter(&record) {
            Ok(filter) => Some(filter),
            Err(error) => {
                tracing::error!(endpoint = record.id(), %error, "endpoint filter is invalid; delivering nothing");
                None
            }
        };
        self.record = record;
    }

    fn schedule(&mut self, sequence: u64, at: i64) {
        if let Some(old) = self.due_at.insert(sequence, at) {
            self.due.remove(&(old, sequence));
        }
        self.due.insert((at, sequence));
    }

    fn unschedule(&mut self, sequence: u64) {
        if let Some(at) = self.due_at.remove(&sequence) {
            self.due.remove(&(at, sequence));
        }
    }

    fn max_in_flight(&self) -> usize {
        (self.record.endpoint().max_in_flight as usize).max(1)
    }

    fn free(&self) -> usize {
        self.max_in_flight().saturating_sub(self.running.len())
    }

    fn active(&self) -> bool {
        !self.record.endpoint().disabled && self.url.is_some() && self.filter.is_some()
    }

    async fn run(mut self) -> Ended {
        let stop = self.stop.clone();
        let mut ended = Ended::Stopped;
        loop {
            let mut backoff = false;
            if self.active() {
                if let Err(error) = self.launch_due().await {
                    tracing::warn!(endpoint = self.id(), %error, "reading a due delivery failed");
                    backoff = true;
                }
                match self.scan().await {
                    Ok(()) => {}
                    // The state says another worker runs this endpoint (JetStream): stop.
                    Err(Error::ShuttingDown) => break,
                    Err(error) => {
                        tracing::warn!(endpoint = self.id(), %error, "reading new events failed");
                        backoff = true;
                    }
                }
            }
            self.report();
            let can_launch = self.active() && self.free() > 0;
            let next_due = self.due.first().map(|(at, _)| *at);
            let scan_more = can_launch
                && self.due.len() < MAX_SCHEDULED
                && self.cursor < *self.durable.borrow();
            let sleep = match (backoff, can_launch, next_due, scan_more) {
                (true, _, _, _) => Some(ERROR_BACKOFF),
                (false, true, _, true) => Some(Duration::ZERO),
                (false, true, Some(at), false) => {
                    Some(Duration::from_millis((at - now_ms()).max(0) as u64))
                }
                _ => None,
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(finished) = self.attempts.join_next(), if !self.attempts.is_empty() => {
                    if let Ok(finished) = finished {
                        self.finish(finished).await;
                    }
                }
                control = self.rx.recv() => match control {
                    None => break,
                    Some(Control { request, reply }) if request.op() == Op::Delete => {
                        let result = match self.delete().await {
                            Ok(()) => self.tombstone().await,
                            Err(error) => Err(error),
                        };
                        let deleted = result.is_ok();
                        let _ = reply.send(result.map(|()| ControlReply::default()));
                        if deleted {
                            ended = Ended::Deleted;
                            break;
                        }
                    }
                    Some(control) => self.control(control).await,
                },
                changed = self.durable.changed(), if can_launch && sleep.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
        }
        self.attempts.abort_all();
        self.clear_report();
        ended
    }

    /// Launches due retries while slots are free.
    async fn launch_due(&mut self) -> Result<(), Error> {
        let now = now_ms();
        while self.free() > 0 {
            let Some(&(at, sequence)) = self.due.first() else { break };
            if at > now {
                break;
            }
            self.unschedule(sequence);
            let Some(mut record) = self.settings.state.delivery(self.id(), sequence).await? else {
                continue;
            };
            if record.status != DeliveryStatus::Pending as i32 {
                continue;
            }
            match self.event(sequence).await? {
                Some(event) => self.launch(record, event),
                None => {
                    record.status = DeliveryStatus::Failed as i32;
                    record.next_attempt = None;
                    record.error = EXPIRED.to_owned();
                    self.settings.state.put_delivery(self.id(), &record).await?;
                    self.settings.metrics.webhook_delivery(self.id(), "failed");
                }
            }
        }
        Ok(())
    }

    /// The stored event with this sequence, or `None` if retention removed it.
    async fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, Error> {
        if sequence < self.settings.store.first_sequence() {
            return Ok(None);
        }
        let events = self.settings.store.read_from(sequence.saturating_sub(1), 1).await?;
        Ok(events.into_iter().next().filter(|e| e.sequence() == sequence))
    }

    /// Reads events above the cursor and launches the matching ones while slots are free.
    async fn scan(&mut self) -> Result<(), Error> {
        while self.active() && self.free() > 0 && self.due.len() < MAX_SCHEDULED {
            let durable = *self.durable.borrow();
            if self.cursor >= durable {
                break;
            }
            // Retention removed events this endpoint had not reached: they are gone for it
            // too (no record is written for them), and the walk goes on from the oldest kept.
            let oldest = self.settings.store.first_sequence().saturating_sub(1);
            if self.cursor < oldest {
                tracing::warn!(
                    endpoint = self.id(),
                    skipped = oldest - self.cursor,
                    "retention removed events before this endpoint reached them"
                );
                self.settings.state.advance(self.id(), oldest, &[]).await?;
                self.cursor = oldest;
                continue;
            }
            let events = self.settings.store.read_from(self.cursor, READ_BATCH).await?;
            if events.is_empty() {
                break;
            }
            let mut free = self.free();
            let mut cursor = self.cursor;
            let now = now_ms();
            let mut chosen = Vec::new();
            for event in events {
                if free == 0 {
                    break;
                }
                cursor = event.sequence();
                if !self.filter.as_ref().is_some_and(|f| f.matches(&event))
                    || self.running.contains(&event.sequence())
                {
                    continue;
                }
                let delay = self.settings.schedule.delay(1, random_unit()).unwrap_or_default();
                let at = now + delay.as_millis() as i64;
                if at <= now {
                    free -= 1;
                }
                chosen.push((event, at));
            }
            // A replay passes events that already have a record: the record goes on.
            let sequences: Vec<u64> = chosen.iter().map(|(e, _)| e.sequence()).collect();
            let mut recorded = self.settings.state.deliveries_at(self.id(), &sequences).await?;
            let mut picked = Vec::with_capacity(chosen.len());
            for (event, at) in chosen {
                let mut record = recorded.remove(&event.sequence()).unwrap_or_else(|| Delivery {
                    id: delivery_id(self.id(), event.sequence()),
                    endpoint_id: self.id().to_owned(),
                    event_id: event.id().to_owned(),
                    sequence: event.sequence(),
                    ..Delivery::default()
                });
                record.status = DeliveryStatus::Pending as i32;
                record.error.clear();
                record.next_attempt = Some(timestamp_ms(at));
                picked.push((record, event, at));
            }
            let records: Vec<Delivery> = picked.iter().map(|(r, _, _)| r.clone()).collect();
            self.settings.state.advance(self.id(), cursor, &records).await?;
            self.cursor = cursor;
            for (record, event, at) in picked {
                if at <= now {
                    self.unschedule(record.sequence);
                    self.launch(record, event);
                } else {
                    self.schedule(record.sequence, at);
                }
            }
        }
        Ok(())
    }

    /// Starts one attempt.
    fn launch(&mut self, record: Delivery, event: StoredEvent) {
        let Some(url) = self.url.clone() else { return };
        self.running.insert(record.sequence);
        let sender = self.settings.sender.clone();
        let format = self.record.endpoint().format;
        let secrets: Vec<String> =
            self.record.active_secrets(now_ms()).into_iter().map(str::to_owned).collect();
        let stop = self.stop.clone();
        self.attempts.spawn(async move {
            let started = now_ms();
            let attempt = async {
                match render(format, &event) {
                    Err(error) => Outcome {
                        status: 0,
                        error: format!("rendering the event: {error}"),
                        latency: Duration::ZERO,
                    },
                    Ok((body, content_type)) => {
                        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
                        match sign::headers(&refs, event.id(), started.div_euclid(1000), &body) {
                            Err(error) => Outcome {
                                status: 0,
                                error: error.to_string(),
                                latency: Duration::ZERO,
                            },
                            Ok(headers) => sender.post(&url, content_type, &headers, body).await,
                        }
                    }
                }
            };
            let Some(outcome) = stop.run_until_cancelled(attempt).await else {
                let outcome =
                    Outcome { status: 0, error: "stopped".into(), latency: Duration::ZERO };
                return Finished { record, outcome, cancelled: true };
            };
            let mut record = record;
            record.attempts.push(DeliveryAttempt {
                time: Some(timestamp_ms(started)),
                http_status: u32::from(outcome.status),
                latency: prost_types::Duration::try_from(outcome.latency).ok(),
                error: outcome.error.clone(),
            });
            Finished { record, outcome, cancelled: false }
        });
    }

    /// Records an attempt's outcome and schedules what follows.
    async fn finish(&mut self, finished: Finished) {
        let Finished { mut record, outcome, cancelled } = finished;
        self.running.remove(&record.sequence);
        if cancelled {
            return;
        }
        let now = now_ms();
        let id = self.id().to_owned();
        self.settings.metrics.webhook_attempt(&id, outcome.succeeded(), outcome.latency);
        if outcome.succeeded() {
            record.status = DeliveryStatus::Succeeded as i32;
            record.next_attempt = None;
            record.error.clear();
            self.settings.metrics.webhook_delivery(&id, "succeeded");
        } else {
            let attempt = record.attempts.len() + 1;
            match self.settings.schedule.delay(attempt, random_unit()) {
                Some(delay) => {
                    let at = now + delay.as_millis() as i64;
                    record.status = DeliveryStatus::Pending as i32;
                    record.next_attempt = Some(timestamp_ms(at));
                    self.schedule(record.sequence, at);
                }
                None => {
                    record.status = DeliveryStatus::Failed as i32;
                    record.next_attempt = None;
                    record.error = outcome.error.clone();
                    self.settings.metrics.webhook_delivery(&id, "failed");
                }
            }
        }
        if let Err(error) = self.settings.state.put_delivery(&id, &record).await {
            tracing::warn!(endpoint = %id, %error, "storing a delivery's outcome failed; it will be attempted again");
        }
        self.track_failure(outcome.succeeded(), now).await;
    }

    /// Clears or extends the endpoint's failing streak, disabling it past
    /// `--delivery-disable-after`.
    async fn track_failure(&mut self, succeeded: bool, now: i64) {
        let before = self.record.clone();
        if succeeded {
            self.record.failing_since_ms = 0;
        } else if self.record.failing_since_ms == 0 {
            self.record.failing_since_ms = now;
        } else if now - self.record.failing_since_ms
            >= self.settings.disable_after.as_millis() as i64
            && !self.record.endpoint().disabled
        {
            if let Some(endpoint) = self.record.endpoint.as_mut() {
                endpoint.disabled = true;
            }
            tracing::warn!(
                endpoint = self.id(),
                "endpoint disabled: every attempt failed for --delivery-disable-after"
            );
        }
        if self.record != before {
            if let Err(error) = self.settings.state.put_endpoint(&self.record).await {
                tracing::warn!(endpoint = self.id(), %error, "storing the endpoint failed");
            }
        }
    }

    async fn control(&mut self, control: Control) {
        let Control { request, reply } = control;
        let result = match request.op() {
            Op::Update => match request.record {
                Some(record) => self.update(record).await,
                None => Err(Error::Internal("an update without the endpoint".into())),
            },
            Op::Replay => {
                let cursor = request.sequence;
                let result = self.settings.state.set_cursor(self.id(), cursor).await;
                if result.is_ok() {
                    self.cursor = cursor;
                }
                result.map(|()| ControlReply::default())
            }
            Op::Retry => self
                .retry(request.sequence)
                .await
                .map(|d| ControlReply { delivery: Some(d), record: None }),
            Op::Delete | Op::Unknown => Err(Error::Internal("an unknown control request".into())),
        };
        let _ = reply.send(result);
    }

    async fn update(&mut self, mut record: EndpointRecord) -> Result<ControlReply, Error> {
        // The failing streak is the worker's to keep; re-enabling starts a new one.
        let reenabled = self.record.endpoint().disabled && !record.endpoint().disabled;
        record.failing_since_ms = if reenabled { 0 } else { self.record.failing_since_ms };
        self.settings.state.put_endpoint(&record).await?;
        self.set_record(record.clone());
        Ok(ControlReply { record: Some(record), delivery: None })
    }

    async fn retry(&mut self, sequence: u64) -> Result<Delivery, Error> {
        let id = self.id().to_owned();
        let not_found = || Error::NoSuch { kind: "delivery", id: delivery_id(&id, sequence) };
        let Some(mut record) = self.settings.state.delivery(&id, sequence).await? else {
            return Err(not_found());
        };
        if self.running.contains(&sequence) {
            return Ok(record);
        }
        let now = now_ms();
        record.status = DeliveryStatus::Pending as i32;
        record.error.clear();
        record.next_attempt = Some(timestamp_ms(now));
        self.settings.state.put_delivery(&id, &record).await?;
        self.schedule(sequence, now);
        Ok(record)
    }

    /// Aborts every attempt and fails every pending delivery with "endpoint deleted".
    async fn delete(&mut self) -> Result<(), Error> {
        self.attempts.abort_all();
        let id = self.id().to_owned();
        for mut record in self.settings.state.pending(&id).await? {
            record.status = DeliveryStatus::Failed as i32;
            record.next_attempt = None;
            record.error = ENDPOINT_DELETED.to_owned();
            self.settings.state.put_delivery(&id, &record).await?;
        }
        self.due.clear();
        self.due_at.clear();
        self.running.clear();
        Ok(())
    }

    /// Marks the endpoint deleted on disk, keeping its delivery log readable.
    async fn tombstone(&mut self) -> Result<(), Error> {
        self.record.deleted = true;
        self.settings.state.put_endpoint(&self.record).await
    }

    /// Pending deliveries and the oldest one's age, for the metrics.
    fn report(&self) {
        let oldest = self
            .due
            .iter()
            .map(|(at, _)| *at)
            .min()
            .map_or(0.0, |at| ((now_ms() - at).max(0) as f64) / 1000.0);
        self.settings.metrics.webhook_pending(
            self.id(),
            self.due.len() + self.running.len(),
            oldest,
        );
    }

    fn clear_report(&self) {
        self.settings.metrics.webhook_pending(self.id(), 0, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_name_endpoint_and_sequence() {
        assert_eq!(delivery_id("ep_abc", 42), "dlv_abc_42");
    }

    #[test]
    fn millisecond_timestamps_round_trip() {
        for ms in [0, 1, 999, 1_000, 1_700_000_000_123, -1] {
            assert_eq!(ms_of(&timestamp_ms(ms)), ms);
        }
    }

    #[test]
    fn creator_mode_narrows_the_filter() {
        use crate::proto::Endpoint;
        let mut record = EndpointRecord {
            endpoint: Some(Endpoint::default()),
            creator_mode: "test".into(),
            ..EndpointRecord::default()
        };
        assert_eq!(endpoint_filter(&record).unwrap().livemode, Some(false));
        record.endpoint.as_mut().unwrap().livemode = Some(true);
        assert!(endpoint_filter(&record).is_err());
        record.creator_mode = "all".into();
        assert_eq!(endpoint_filter(&record).unwrap().livemode, Some(true));
    }
}
