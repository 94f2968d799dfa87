//! Publishers for the fault tests over JetStream (`tests/jetstream.rs`, `tests/partition.rs`;
//! each includes this module with `mod publishers;`), and the check of what they were
//! acknowledged against what is stored.
//!
//! A [`publisher`] publishes its own ids (`p<task>.<n>`, singles and batches of 5) and retries
//! a failed call with the same ids until it is answered, as a careful client does; [`Acked`]
//! collects every acknowledged event and every failure. [`lost_or_doubled`] then names each
//! acknowledged event that is missing or changed in a read-back of the whole stream, each id
//! stored twice, and any gap in the sequences. Every loop is bounded by [`PHASE_LIMIT`].

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::{Event, PublishEventRequest, PublishEventsRequest};
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Most time any one phase of a test may take.
pub const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// A small live `charge.create` event with this id, its data naming `marker`.
pub fn request(id: &str, marker: &str) -> PublishEventRequest {
    let string = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
    PublishEventRequest {
        id: id.into(),
        r#type: "charge.create".into(),
        livemode: true,
        source: "scale-out-test".into(),
        data: Some(Struct {
            fields: [("object", string("charge")), ("marker", string(marker))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        ..Default::default()
    }
}

/// What the publishers of a test share.
pub struct Acked {
    /// Every acknowledged event, as the acknowledgement carried it.
    pub events: Mutex<Vec<Event>>,
    /// How many events were acknowledged.
    pub count: AtomicU64,
    /// How many calls failed (and were retried).
    pub failures: AtomicU64,
    /// Distinct messages of failed calls, with their counts.
    pub failure_kinds: Mutex<HashMap<String, u64>>,
    /// When the last acknowledgement came, and the longest time without one.
    last_ack: Mutex<(Instant, Duration)>,
    /// Set by [`Acked::stop`]: publishers start no new call.
    stopping: AtomicBool,
}

impl Default for Acked {
    fn default() -> Self {
        Acked {
            events: Mutex::default(),
            count: AtomicU64::default(),
            failures: AtomicU64::default(),
            failure_kinds: Mutex::default(),
            last_ack: Mutex::new((Instant::now(), Duration::ZERO)),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Acked {
    fn record(&self, events: Vec<Event>) {
        let mut last = self.last_ack.lock().unwrap();
        let now = Instant::now();
        last.1 = last.1.max(now - last.0);
        last.0 = now;
        self.count.fetch_add(events.len() as u64, Ordering::Relaxed);
        self.events.lock().unwrap().extend(events);
    }

    /// Tells the publishers to start no new call; each finishes (and retries) the one it is
    /// in, so every call made is acknowledged.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The longest time without an acknowledgement so far.
    pub fn longest_pause(&self) -> Duration {
        self.last_ack.lock().unwrap().1
    }

    /// The highest acknowledged sequence and the id of the event that has it.
    pub fn newest(&self) -> Option<(u64, String)> {
        let events = self.events.lock().unwrap();
        events.iter().max_by_key(|e| e.sequence).map(|e| (e.sequence, e.id.clone()))
    }

    /// Prints the failed calls by kind.
    pub fn print_failures(&self) {
        for (kind, n) in self.failure_kinds.lock().unwrap().iter() {
            println!("  failed call ×{n}: {kind}");
        }
    }
}

/// Publishes `count` events (ids `p<task>.<n>`, singles and batches of 5), retrying a failed
/// call with the same ids until it is answered; stops early after [`Acked::stop`]. Gives up
/// (panics) once [`PHASE_LIMIT`] passes.
pub async fn publisher(
    mut client: EventServiceClient<Channel>,
    task: usize,
    count: usize,
    acked: Arc<Acked>,
) {
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut n = 0;
    while n < count && Instant::now() < deadline && !acked.stopping.load(Ordering::Relaxed) {
        let size = if n % 3 == 0 { 5.min(count - n) } else { 1 };
        let requests: Vec<_> = (n..n + size)
            .map(|i| request(&format!("p{task}.{i}"), &format!("{task}/{i}")))
            .collect();
        loop {
            let answer = if size == 1 {
                client.publish_event(requests[0].clone()).await.map(|r| vec![r.into_inner()])
            } else {
                let batch = PublishEventsRequest { events: requests.clone() };
                client.publish_events(batch).await.map(|r| r.into_inner().events)
            };
            match answer {
                Ok(events) => {
                    acked.record(events);
                    break;
                }
                Err(status) if Instant::now() < deadline => {
                    acked.failures.fetch_add(1, Ordering::Relaxed);
                    let kind = format!("{:?}: {}", status.code(), status.message());
                    *acked.failure_kinds.lock().unwrap().entry(kind).or_default() += 1;
                    // A retry, not a wait for a start: the same call again a moment later.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("publisher {task} gave up: {status}"),
            }
        }
        n += size;
    }
}

/// Spawns `tasks` publishers of `count` events each; task `t` publishes through its own
/// connection to `addrs[t % addrs.len()]`.
pub async fn spawn(
    addrs: &[SocketAddr],
    tasks: usize,
    count: usize,
    acked: &Arc<Acked>,
) -> Vec<JoinHandle<()>> {
    let mut spawned = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let addr = addrs[task % addrs.len()];
        let client = EventServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("connect to eventsd at {addr}: {e}"));
        spawned.push(tokio::spawn(publisher(client, task, count, acked.clone())));
    }
    spawned
}

/// Waits for every publisher to finish (each within [`PHASE_LIMIT`]).
pub async fn join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        tokio::time::timeout(PHASE_LIMIT, task).await.expect("publisher hang guard").unwrap();
    }
}

/// Events per publisher of a fault test: `EVENTSD_NATS_EVENTS`, else `default`.
pub fn events_per_publisher(default: usize) -> usize {
    std::env::var("EVENTSD_NATS_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Waits until `acked` reaches `target`; returns how long that took.
pub async fn until_acked(acked: &Acked, target: u64) -> Duration {
    let started = Instant::now();
    while acked.count.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < PHASE_LIMIT,
            "publishing stalled at {acked:?}",
            acked = acked.count
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Checks a whole stream read back in sequence order: sequences exactly 1..=N, ids once each.
pub fn check_contiguous(events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if event.sequence != i as u64 + 1 {
            problems.push(format!("position {i} holds sequence {}", event.sequence));
            break;
        }
    }
    let mut ids = HashSet::new();
    for event in events {
        if !ids.insert(event.id.as_str()) {
            problems.push(format!("id {} stored twice", event.id));
        }
    }
    problems
}

/// Everything wrong with `stored` (the whole stream in sequence order) given what was
/// acknowledged: gaps, ids stored twice, acknowledged events missing or not byte-identical,
/// and a count other than `published`.
pub fn lost_or_doubled(acked: &[Event], stored: &[Event], published: u64) -> Vec<String> {
    let mut problems = check_contiguous(stored);
    let by_id: HashMap<&str, Vec<u8>> =
        stored.iter().map(|e| (e.id.as_str(), e.encode_to_vec())).collect();
    for event in acked {
        if by_id.get(event.id.as_str()) != Some(&event.encode_to_vec()) {
            problems.push(format!(
                "acknowledged {} (seq {}) missing or changed",
                event.id, event.sequence
            ));
        }
    }
    if stored.len() as u64 != published {
        problems.push(format!("{} stored, {published} published", stored.len()));
    }
    problems
}
