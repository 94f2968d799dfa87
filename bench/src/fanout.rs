//! `fanout`: publish-to-receive latency and delivery throughput with 1, 10, 100 and 1,000
//! live subscribers.
//!
//! For each subscriber count: the subscribers subscribe from now (at most 100 streams per
//! channel) and the run waits for every `caught_up`; then 8 publishers publish at full speed
//! until the event count or the time cap runs out, each event carrying its send time in
//! `created`. Every subscriber records `now - created` per delivery and checks its stream
//! against the acked events: the same set (count, sum and sum of squares of the sequences),
//! strictly increasing. Deliveries/s is total deliveries over the time from the first publish
//! to the last delivery. A subscriber still short of events when the drain cap passes is
//! reported as incomplete, not waited for.
//!
//! The harness ([`measure`]) knows subscribers only as [`Feed`]s and publishers only as
//! [`Acked`] load workers, so the Redis fan-out (an XREAD BLOCK loop per subscriber) runs
//! through the same code, with the same checks and the same figure, as eventsd's.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsd::proto::{PublishEventRequest, SubscribeEventsRequest};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic::Streaming;

use crate::bench::{Compared, Context};
use crate::cli::Settings;
use crate::client::{self, status_text, Client, Pool, StreamItem};
use crate::error::{Context as _, Result};
use crate::load::{self, count_of, Around, Limit, Op};
use crate::payload::{self, Payload, CHARGE_CREATE};
use crate::probe;
use crate::report::{round, Figure, Latency, Section};
use crate::server::{CpuMeter, Target};

/// Concurrent publishers.
const PUBLISHERS: usize = 8;
/// Most subscription streams on one channel.
const STREAMS_PER_CHANNEL: usize = 100;
/// How long all subscribers together may take to reach `caught_up`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Latency bounds of a subscriber's histogram: 1 µs to 10 min.
const MAX_MICROS: u64 = 600_000_000;

/// One subscriber's source of deliveries, as the harness reads it.
pub trait Feed: Send + 'static {
    /// Records what has arrived in `seen`, waiting at most about [`IDLE`] when nothing has;
    /// an error ends the subscriber. Returning on idle lets the subscriber notice its plan
    /// without cancelling a read halfway (a RESP reply cannot be resumed).
    fn read(&mut self, seen: &mut Seen) -> impl Future<Output = Result<(), String>> + Send;
}

/// A publisher that keeps what was acked, as numbers comparable with what subscribers see.
pub trait Acked: Op {
    /// The keys of the acked events (sequences; Redis ids as numbers).
    fn acked(&self) -> &[u64];
}

/// How long a feed waits for a delivery before handing back control.
pub const IDLE: Duration = Duration::from_millis(100);

/// One publisher that stamps `created` and keeps the acked sequences.
struct StampingPublisher {
    client: Client,
    payload: Payload,
    acked: Vec<u64>,
}

impl Op for StampingPublisher {
    async fn call(&mut self) -> Result<u64, String> {
        let request = PublishEventRequest {
            r#type: CHARGE_CREATE.into(),
            data: Some(self.payload.next_struct()),
            created: Some(payload::now()),
            ..Default::default()
        };
        let event = self.client.publish_event(request).await.map_err(|s| status_text(&s))?;
        self.acked.push(event.sequence);
        Ok(1)
    }
}

impl Acked for StampingPublisher {
    fn acked(&self) -> &[u64] {
        &self.acked
    }
}

/// An eventsd subscription read through the slim [`StreamItem`].
struct EventsFeed {
    stream: Streaming<StreamItem>,
}

impl Feed for EventsFeed {
    async fn read(&mut self, seen: &mut Seen) -> Result<(), String> {
        // Streaming::message is cancel safe: a timeout loses nothing.
        let Ok(item) = tokio::time::timeout(IDLE, self.stream.message()).await else {
            return Ok(());
        };
        match item {
            Ok(Some(item)) => {
                if let Some(event) = item.event {
                    seen.observe(event.sequence, event.created.map(|t| timestamp_time(&t)));
                }
                Ok(())
            }
            Ok(None) => Err("the stream ended".into()),
            Err(status) => Err(status_text(&status)),
        }
    }
}

/// Opens an eventsd subscription from now and reads it to `caught_up`.
async fn open_events_feed(channel: Channel) -> Result<EventsFeed, String> {
    let mut stream = client::subscribe(channel, SubscribeEventsRequest::default())
        .await
        .map_err(|s| status_text(&s))?;
    client::caught_up(&mut stream).await.map_err(|e| e.to_string())?;
    Ok(EventsFeed { stream })
}

fn timestamp_time(t: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

/// What every subscriber must end with, known once the publishers are done.
#[derive(Debug, Clone, Copy)]
struct Plan {
    expected: Fingerprint,
    /// Subscribers stop here even if incomplete.
    deadline: Instant,
}

/// A set of sequences, summarised so a stream can be checked without storing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    count: u64,
    sum: u64,
    sum_of_squares: u64,
}

impl Fingerprint {
    /// Adds one sequence.
    pub fn add(&mut self, sequence: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(sequence);
        self.sum_of_squares = self.sum_of_squares.wrapping_add(sequence.wrapping_mul(sequence));
    }
}

/// What one subscriber saw.
pub struct Seen {
    fingerprint: Fingerprint,
    in_order: bool,
    last_sequence: u64,
    last_delivery: Option<Instant>,
    latency: Histogram<u64>,
    error: Option<String>,
}

impl Seen {
    fn new() -> Self {
        Seen {
            fingerprint: Fingerprint::default(),
            in_order: true,
            last_sequence: 0,
            last_delivery: None,
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 2)
                .expect("constant histogram bounds are valid"),
            error: None,
        }
    }

    /// Records one delivery: its key (sequence) and the publisher's send time, if known.
    pub fn observe(&mut self, key: u64, sent: Option<SystemTime>) {
        let received = SystemTime::now();
        self.last_delivery = Some(Instant::now());
        if key <= self.last_sequence {
            self.in_order = false;
        }
        self.last_sequence = key;
        self.fingerprint.add(key);
        if let Some(sent) = sent {
            let took = received.duration_since(sent).unwrap_or_default();
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(micros.clamp(1, MAX_MICROS));
        }
    }

    fn complete(&self, expected: &Fingerprint) -> bool {
        self.error.is_none() && self.in_order && self.fingerprint == *expected
    }
}

/// Runs the fan-out scenario.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let target = ctx.fresh_target("fanout").await?;
    let publishers = Pool::connect(&target.addr, crate::publish::CHANNELS).await?;
    let mut section = Section::default();
    for subscribers in ctx.settings.fanout_subscribers.clone() {
        eprintln!("[fanout] {subscribers} subscribers");
        let figure = one_case(ctx, &target, &publishers, subscribers).await?;
        ctx.baseline.insert(Compared::Fanout(subscribers), figure.clone());
        section.figures.push(figure);
    }
    section.note(format!(
        "{PUBLISHERS} publishers on {} shared channels; subscribers from now, at most \
         {STREAMS_PER_CHANNEL} streams per channel, each waited to caught_up before publishing",
        publishers.len()
    ));
    section.note(notes(&ctx.settings));
    section.note(
        "subscribers decode only id, created and sequence of each event (data is skipped), \
         so the loader's CPU goes to receiving",
    );
    Ok(section)
}

/// The note every fan-out section carries.
pub fn notes(settings: &Settings) -> String {
    format!(
        "ops = deliveries; seconds = first publish to last delivery; latency = receive time - \
         send time (stamped by the publisher), 2 significant digits; each run publishes at \
         most {} events or for {:?}; CPU per op = per delivery",
        settings.fanout_events, settings.duration
    )
}

async fn one_case(
    ctx: &Context,
    target: &Target,
    publishers: &Pool,
    subscribers: usize,
) -> Result<Figure> {
    let channel_count = subscribers.div_ceil(STREAMS_PER_CHANNEL);
    let channels = open_channels(&target.addr, channel_count).await?;
    let opens = (0..subscribers)
        .map(|i| open_events_feed(channels[i / STREAMS_PER_CHANNEL].clone()))
        .collect();
    let workers: Vec<StampingPublisher> = (0..PUBLISHERS)
        .map(|i| StampingPublisher {
            client: publishers.client(i),
            payload: Payload::new(&ctx.template),
            acked: Vec::new(),
        })
        .collect();
    let case = count_of(subscribers, "subscriber");
    let mut figure =
        measure(opens, workers, &ctx.settings, target.around(true), "fanout", case).await?;
    figure.set("channels", channel_count as u64);
    if let Ok(threads) = target.threads() {
        figure.set("server_threads", threads);
    }
    Ok(figure)
}

/// Opens every subscriber and waits until all are ready, then runs the publishers, lets the
/// subscribers drain, and makes the figure: deliveries over first publish to last delivery,
/// publish-to-receive latency, completeness, CPU per delivery, fsync around it all.
pub async fn measure<F, O, P>(
    opens: Vec<O>,
    workers: Vec<P>,
    settings: &Settings,
    around: Around<'_>,
    scenario: &'static str,
    case: String,
) -> Result<Figure>
where
    F: Feed,
    O: Future<Output = Result<F, String>> + Send + 'static,
    P: Acked,
{
    let subscribers = opens.len();
    let (plan_tx, plan_rx) = watch::channel(None::<Plan>);
    let (ready_tx, mut ready_rx) = mpsc::channel(subscribers.max(1));
    let tasks: Vec<_> = opens
        .into_iter()
        .map(|open| tokio::spawn(subscriber(open, ready_tx.clone(), plan_rx.clone())))
        .collect();
    drop(ready_tx);
    let open_result = wait_ready(&mut ready_rx, subscribers).await;
    if let Err(err) = open_result {
        stop_now(&plan_tx);
        for task in tasks {
            let _ = task.await;
        }
        return Err(err);
    }

    let limit = Limit { calls: settings.fanout_events, time: settings.duration };
    let drain_cap = (settings.duration * 3).max(Duration::from_secs(10));
    let work = async {
        let commits_before = load::scrape(around.http).await;
        let meter = CpuMeter::start(around.server_pid);
        let first_publish = Instant::now();
        let outcome = load::run(workers, limit).await;
        let commits = commits_before.zip(load::scrape(around.http).await);
        let mut expected = Fingerprint::default();
        if let Ok(outcome) = &outcome {
            for key in outcome.workers.iter().flat_map(|w| w.acked()) {
                expected.add(*key);
            }
        }
        let _ = plan_tx.send(Some(Plan { expected, deadline: Instant::now() + drain_cap }));
        let mut seen = Vec::with_capacity(tasks.len());
        for task in tasks {
            seen.push(task.await.context("a subscriber task panicked")?);
        }
        let cpu = meter.stop();
        Ok::<_, crate::error::Error>((first_publish, outcome?, expected, seen, cpu, commits))
    };
    let (fsync, result) = match around.probe_dir {
        Some(dir) => {
            let (fsync, result) = probe::around(dir, work).await;
            (Some(fsync), result)
        }
        None => (None, work.await),
    };
    let (first_publish, outcome, expected, seen, cpu, commits) = result?;

    let mut latency = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 2)
        .expect("constant histogram bounds are valid");
    let mut deliveries = 0;
    let mut incomplete = 0u64;
    let mut last_delivery = first_publish;
    let mut first_error = None;
    for s in &seen {
        latency.add(&s.latency).context("cannot merge latency histograms")?;
        deliveries += s.fingerprint.count;
        if !s.complete(&expected) {
            incomplete += 1;
        }
        last_delivery = last_delivery.max(s.last_delivery.unwrap_or(first_publish));
        if first_error.is_none() {
            first_error = s.error.clone();
        }
    }
    let mut figure = Figure::new(scenario, case);
    figure.ops = deliveries;
    figure.seconds = (last_delivery - first_publish).as_secs_f64();
    figure.latency = Latency::from_micros(&latency);
    figure.fsync = fsync;
    figure.set("events", expected.count);
    let publish_rate = outcome.units as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
    figure.set("publish_per_sec", publish_rate.round());
    if let Some(publish) = Latency::from_micros(&outcome.latency) {
        figure.set("publish_p50_ms", round(publish.p50_ms));
        figure.set("publish_p99_ms", round(publish.p99_ms));
    }
    cpu.apply(&mut figure);
    if let Some((before, after)) = commits {
        before.apply_since(&after, &mut figure);
    }
    figure.set("complete", incomplete == 0 && outcome.errors == 0);
    if incomplete > 0 {
        figure.set("incomplete_subscribers", incomplete);
    }
    if outcome.errors > 0 {
        figure.set("publish_errors", outcome.errors);
    }
    if let Some(err) = outcome.first_error.or(first_error) {
        figure.set("first_error", err);
    }
    Ok(figure)
}

async fn open_channels(addr: &str, n: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(client::channel(addr).await?);
    }
    Ok(channels)
}

/// Waits until `n` subscribers report `caught_up`, or one fails, or the timeout passes.
async fn wait_ready(ready: &mut mpsc::Receiver<Result<(), String>>, n: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    for done in 0..n {
        match tokio::time::timeout_at(deadline, ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(err))) => {
                return Err(format!("subscriber {done} could not start: {err}").into())
            }
            Ok(None) => return Err("subscriber tasks ended before caught_up".into()),
            Err(_) => {
                return Err(format!(
                    "only {done} of {n} subscribers caught up within {OPEN_TIMEOUT:?}"
                )
                .into())
            }
        }
    }
    Ok(())
}

/// Tells every subscriber to stop at once.
fn stop_now(plan: &watch::Sender<Option<Plan>>) {
    let _ = plan.send(Some(Plan { expected: Fingerprint::default(), deadline: Instant::now() }));
}

/// One subscriber: open its feed, report ready, then read until it has the expected events or
/// the plan's deadline passes.
async fn subscriber<F: Feed>(
    open: impl Future<Output = Result<F, String>>,
    ready: mpsc::Sender<Result<(), String>>,
    plan: watch::Receiver<Option<Plan>>,
) -> Seen {
    let mut seen = Seen::new();
    let mut feed = match open.await {
        Ok(feed) => {
            let _ = ready.send(Ok(())).await;
            feed
        }
        Err(err) => {
            seen.error = Some(err.clone());
            let _ = ready.send(Err(err)).await;
            return seen;
        }
    };
    drop(ready);
    loop {
        let current = *plan.borrow();
        if let Some(p) = current {
            if seen.fingerprint.count >= p.expected.count || Instant::now() >= p.deadline {
                break;
            }
        }
        if let Err(err) = feed.read(&mut seen).await {
            seen.error = Some(err);
            break;
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_a_missing_or_repeated_sequence_apart() {
        let of = |seqs: &[u64]| {
            let mut f = Fingerprint::default();
            seqs.iter().for_each(|s| f.add(*s));
            f
        };
        assert_eq!(of(&[1, 2, 3, 4]), of(&[4, 3, 2, 1]));
        assert_ne!(of(&[1, 2, 3, 4]), of(&[1, 2, 2, 5]));
        assert_ne!(of(&[1, 2, 3, 4]), of(&[1, 2, 3]));
    }
}
