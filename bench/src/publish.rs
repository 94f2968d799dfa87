//! `publish`: durable publish throughput and latency on an empty store.
//!
//! Unary PublishEvent with 1, 32 and 128 concurrent publishers, then PublishEvents batches of
//! 100 with 4 concurrent batchers. Each publisher is its own task; all share a pool of 4 gRPC
//! channels round-robin. Every event is the ~1 KiB charge with a fresh id and amount and no
//! caller id (the server generates it). An OK means the event is on disk, so every figure is
//! bounded by the disk: the fsync probe runs just before and after each one.

use eventsd::proto::{PublishEventRequest, PublishEventsRequest};

use crate::bench::{Compared, Context};
use crate::client::{status_text, Client, EventHead, Pool};
use crate::error::Result;
use crate::load::{self, count_of, Limit, Op};
use crate::payload::{Payload, Template, CHARGE_CREATE};
use crate::report::Section;

/// Channels shared by the publishers.
pub const CHANNELS: usize = 4;
/// Publisher counts of the unary runs.
pub const CONCURRENCY: [usize; 3] = [1, 32, 128];
/// Events per PublishEvents call.
const BATCH: usize = 100;
/// Concurrent PublishEvents callers.
const BATCHERS: usize = 4;

/// One unary publisher.
pub struct UnaryPublisher {
    client: Client,
    payload: Payload,
}

impl UnaryPublisher {
    /// A publisher on `client` sending the template's events.
    pub fn new(client: Client, template: &Template) -> Self {
        UnaryPublisher { client, payload: Payload::new(template) }
    }

    /// Publishes the next event (a fresh charge, no id, no `created`) and returns the stored
    /// event's head.
    pub async fn publish(&mut self) -> Result<EventHead, String> {
        let request = PublishEventRequest {
            r#type: CHARGE_CREATE.into(),
            data: Some(self.payload.next_struct()),
            ..Default::default()
        };
        self.client.publish_event(request).await.map_err(|s| status_text(&s))
    }
}

impl Op for UnaryPublisher {
    async fn call(&mut self) -> Result<u64, String> {
        self.publish().await.map(|_| 1)
    }
}

/// One PublishEvents caller.
struct BatchPublisher {
    client: Client,
    payload: Payload,
}

impl Op for BatchPublisher {
    async fn call(&mut self) -> Result<u64, String> {
        let events: Vec<PublishEventRequest> = (0..BATCH)
            .map(|_| PublishEventRequest {
                r#type: CHARGE_CREATE.into(),
                data: Some(self.payload.next_struct()),
                ..Default::default()
            })
            .collect();
        let response = self
            .client
            .publish_events(PublishEventsRequest { events })
            .await
            .map_err(|s| status_text(&s))?;
        Ok(response.events.len() as u64)
    }
}

/// Runs the publish scenario.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let target = ctx.fresh_target("publish").await?;
    let pool = Pool::connect(&target.addr, CHANNELS).await?;
    let settings = ctx.settings.clone();
    let mut section = Section::default();

    let around = target.around(true);
    for publishers in CONCURRENCY {
        let workers =
            (0..publishers).map(|i| UnaryPublisher::new(pool.client(i), &ctx.template)).collect();
        let limit = Limit { calls: settings.publish_events, time: settings.duration };
        let case = format!("PublishEvent, {}", count_of(publishers, "publisher"));
        let (figure, _) = load::run_figure(workers, limit, around, "publish", case).await?;
        ctx.baseline.insert(Compared::Publish(publishers), figure.clone());
        section.figures.push(figure);
    }

    let workers = (0..BATCHERS)
        .map(|i| BatchPublisher { client: pool.client(i), payload: Payload::new(&ctx.template) })
        .collect();
    let calls = settings.batch_events.div_ceil(BATCH as u64);
    let limit = Limit { calls, time: settings.duration };
    let case = format!("PublishEvents x{BATCH}, {BATCHERS} batchers");
    let (mut figure, outcome) = load::run_figure(workers, limit, around, "publish", case).await?;
    figure.set("batches", outcome.calls);
    figure.set("batch_size", BATCH as u64);
    ctx.baseline.insert(Compared::Batches, figure.clone());
    section.figures.push(figure);

    section.note(format!(
        "each publisher is its own task; the {} channels (HTTP/2 connections) are shared \
         round-robin by all publishers",
        pool.len()
    ));
    section.note(format!(
        "ops = acked events; ops/s = acked events / wall time; latency is per call \
         (per batch of {BATCH} for PublishEvents); server-generated ids; responses decoded \
         for id and sequence only"
    ));
    section.note(format!(
        "each run stops at {} events or {:?}, whichever comes first",
        settings.publish_events, settings.duration
    ));
    Ok(section)
}
