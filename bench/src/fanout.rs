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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::{PublishEventRequest, SubscribeEventsRequest};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::bench::Context;
use crate::client::{self, status_text, Delivery, Pool};
use crate::error::{Context as _, Result};
use crate::load::{self, count_of, Limit, Op};
use crate::payload::{self, Payload, Template, CHARGE_CREATE};
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

/// One publisher that stamps `created` and keeps the acked sequences.
struct StampingPublisher {
    client: EventServiceClient<Channel>,
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
        let event =
            self.client.publish_event(request).await.map_err(|s| status_text(&s))?.into_inner();
        self.acked.push(event.sequence);
        Ok(1)
    }
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
struct Fingerprint {
    count: u64,
    sum: u64,
    sum_of_squares: u64,
}

impl Fingerprint {
    fn add(&mut self, sequence: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(sequence);
        self.sum_of_squares = self.sum_of_squares.wrapping_add(sequence.wrapping_mul(sequence));
    }
}

/// What one subscriber saw.
struct Seen {
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

    fn observe(&mut self, event: Delivery) {
        let received = SystemTime::now();
        self.last_delivery = Some(Instant::now());
        if event.sequence <= self.last_sequence {
            self.in_order = false;
        }
        self.last_sequence = event.sequence;
        self.fingerprint.add(event.sequence);
        if let Some(created) = event.created {
            let sent = UNIX_EPOCH
                + Duration::new(created.seconds.max(0) as u64, created.nanos.max(0) as u32);
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
        section.figures.push(figure);
    }
    section.note(format!(
        "{PUBLISHERS} publishers on {} shared channels; subscribers from now, at most \
         {STREAMS_PER_CHANNEL} streams per channel, each waited to caught_up before publishing",
        publishers.len()
    ));
    section.note(format!(
        "ops = deliveries; seconds = first publish to last delivery; latency = receive time - \
         created (stamped by the publisher at send), 2 significant digits; each run publishes \
         at most {} events or for {:?}",
        ctx.settings.fanout_events, ctx.settings.duration
    ));
    section.note(
        "subscribers decode only id, created and sequence of each event (data is skipped), \
         so the loader's CPU goes to receiving",
    );
    Ok(section)
}

async fn one_case(
    ctx: &Context,
    target: &Target,
    publishers: &Pool,
    subscribers: usize,
) -> Result<Figure> {
    let settings = &ctx.settings;
    let server_pid = target.pid();
    let channel_count = subscribers.div_ceil(STREAMS_PER_CHANNEL);
    let channels = open_channels(&target.addr, channel_count).await?;
    let (plan_tx, plan_rx) = watch::channel(None::<Plan>);
    let (ready_tx, mut ready_rx) = mpsc::channel(subscribers.max(1));
    let tasks: Vec<_> = (0..subscribers)
        .map(|i| {
            let channel = channels[i / STREAMS_PER_CHANNEL].clone();
            tokio::spawn(subscriber(channel, ready_tx.clone(), plan_rx.clone()))
        })
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

    let template: &Template = &ctx.template;
    let workers: Vec<StampingPublisher> = (0..PUBLISHERS)
        .map(|i| StampingPublisher {
            client: publishers.client(i),
            payload: Payload::new(template),
            acked: Vec::new(),
        })
        .collect();
    let limit = Limit { calls: settings.fanout_events, time: settings.duration };
    let drain_cap = (settings.duration * 3).max(Duration::from_secs(10));
    let work = async {
        let commits_before = load::scrape(target.http).await;
        let meter = CpuMeter::start(server_pid);
        let first_publish = Instant::now();
        let outcome = load::run(workers, limit).await;
        let commits = commits_before.zip(load::scrape(target.http).await);
        let threads = target.threads().ok();
        let mut expected = Fingerprint::default();
        if let Ok(outcome) = &outcome {
            for sequence in outcome.workers.iter().flat_map(|w| &w.acked) {
                expected.add(*sequence);
            }
        }
        let _ = plan_tx.send(Some(Plan { expected, deadline: Instant::now() + drain_cap }));
        let mut seen = Vec::with_capacity(tasks.len());
        for task in tasks {
            seen.push(task.await.context("a subscriber task panicked")?);
        }
        let cpu = meter.stop();
        Ok::<_, crate::error::Error>((
            first_publish,
            outcome?,
            expected,
            seen,
            cpu,
            commits,
            threads,
        ))
    };
    let (fsync, result) = probe::around(target.probe_dir(), work).await;
    let (first_publish, outcome, expected, seen, cpu, commits, threads) = result?;

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
    let mut figure = Figure::new("fanout", count_of(subscribers, "subscriber"));
    figure.ops = deliveries;
    figure.seconds = (last_delivery - first_publish).as_secs_f64();
    figure.latency = Latency::from_micros(&latency);
    figure.fsync = Some(fsync);
    figure.set("events", expected.count);
    let publish_rate = outcome.units as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
    figure.set("publish_per_sec", publish_rate.round());
    if let Some(publish) = Latency::from_micros(&outcome.latency) {
        figure.set("publish_p50_ms", round(publish.p50_ms));
        figure.set("publish_p99_ms", round(publish.p99_ms));
    }
    figure.set("channels", channel_count as u64);
    cpu.apply(&mut figure);
    if let Some(threads) = threads {
        figure.set("server_threads", threads);
    }
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

/// One subscriber: subscribe from now, report `caught_up`, then read until it has the
/// expected events or the plan's deadline passes.
async fn subscriber(
    channel: Channel,
    ready: mpsc::Sender<Result<(), String>>,
    mut plan: watch::Receiver<Option<Plan>>,
) -> Seen {
    let mut seen = Seen::new();
    let opened = async {
        let mut stream = client::subscribe(channel, SubscribeEventsRequest::default())
            .await
            .map_err(|s| status_text(&s))?;
        client::caught_up(&mut stream).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(stream)
    };
    let mut stream = match opened.await {
        Ok(stream) => {
            let _ = ready.send(Ok(())).await;
            stream
        }
        Err(err) => {
            seen.error = Some(err.clone());
            let _ = ready.send(Err(err)).await;
            return seen;
        }
    };
    drop(ready);
    loop {
        let current = *plan.borrow_and_update();
        if let Some(p) = current {
            if seen.fingerprint.count >= p.expected.count || Instant::now() >= p.deadline {
                break;
            }
        }
        let deadline = current.map(|p| tokio::time::Instant::from_std(p.deadline));
        tokio::select! {
            item = stream.message() => match item {
                Ok(Some(item)) => {
                    if let Some(event) = item.event {
                        seen.observe(event);
                    }
                }
                Ok(None) => {
                    seen.error = Some("the stream ended".into());
                    break;
                }
                Err(status) => {
                    seen.error = Some(status_text(&status));
                    break;
                }
            },
            changed = plan.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = sleep_until(deadline) => break,
        }
    }
    seen
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
