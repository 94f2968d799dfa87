//! `outbound`: outbound webhooks. Deliveries/s to 10 and to 1,000 endpoints, the latency from
//! a publish's acknowledgement (the commit) to the receiver's 200, and the server's RSS with
//! 1,000 endpoints and 100,000 pending deliveries (full scale; tiny runs smaller counts).
//!
//! Receivers are raw HTTP/1.1 keep-alive responders on 8 loopback ports, inside the bench:
//! each reads a request's head and body, notes the time and answers (200, or 500 for the
//! pending case), as many requests per connection as eventsd sends. Endpoints carry their index in the URL path, so
//! every (endpoint, event) delivery is counted once; events carry caller ids whose ack time the
//! publishers record. Deliveries/s is deliveries over the time from the first publish to the
//! last 200. Every wait is capped; a run short of its deliveries is reported as incomplete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsd::proto::webhook_service_client::WebhookServiceClient;
use eventsd::proto::{CreateEndpointRequest, PublishEventRequest, PublishEventsRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::bench::Context;
use crate::cli::Scale;
use crate::client::{self, status_text, Client};
use crate::error::{Context as _, Result};
use crate::load::{micros_histogram, record};
use crate::payload::{Payload, Rng, CHARGE_CREATE};
use crate::report::{Figure, Latency, Section};
use crate::server::{ServerSpec, Target};

/// Receiver ports.
const PORTS: usize = 8;
/// Events per PublishEvents call.
const BATCH: usize = 100;
/// Concurrent CreateEndpoint calls.
const CREATORS: usize = 16;
/// The longest a run may wait for its deliveries.
const DRAIN_CAP: Duration = Duration::from_secs(300);

/// What the receivers saw.
#[derive(Default)]
struct Seen {
    /// Requests answered, any status.
    requests: u64,
    /// Deliveries answered 200: (endpoint index, event id) → when.
    delivered: HashMap<(u32, String), Instant>,
}

/// The receivers of one run.
struct Receivers {
    urls: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    tasks: JoinSet<()>,
}

impl Receivers {
    async fn start(status: u16) -> Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut urls = Vec::new();
        let mut tasks = JoinSet::new();
        for _ in 0..PORTS {
            let listener =
                TcpListener::bind("127.0.0.1:0").await.context("cannot bind a receiver")?;
            urls.push(format!("http://{}", listener.local_addr().context("receiver address")?));
            let seen = seen.clone();
            tasks.spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(answer(stream, status, seen.clone()));
                }
            });
        }
        Ok(Receivers { urls, seen, tasks })
    }

    fn url(&self, endpoint: usize) -> String {
        format!("{}/e/{endpoint}", self.urls[endpoint % PORTS])
    }

    fn requests(&self) -> u64 {
        self.seen.lock().map_or(0, |s| s.requests)
    }

    fn delivered(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.delivered.len())
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Answers every request of one keep-alive connection with `status`, recording each.
async fn answer(mut stream: TcpStream, status: u16, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let endpoint: u32 = head
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.rsplit('/').next())
            .and_then(|i| i.parse().ok())
            .unwrap_or(u32::MAX);
        let id = header("webhook-id");
        if let Ok(mut seen) = seen.lock() {
            seen.requests += 1;
            if status == 200 {
                seen.delivered.entry((endpoint, id)).or_insert_with(Instant::now);
            }
        }
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The sizes of one scale: (endpoints, events) per delivery run, and of the pending run.
fn sizes(scale: Scale) -> ([(usize, usize); 2], (usize, usize)) {
    match scale {
        Scale::Tiny => ([(10, 20), (1_000, 1)], (100, 10)),
        Scale::Full | Scale::Huge => ([(10, 20_000), (1_000, 200)], (1_000, 100)),
    }
}

/// Runs the outbound scenario.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    let Some(spec) = ctx.spec.clone() else {
        section.note(
            "skipped: --addr server (the bench must start eventsd with --delivery-allow-private)",
        );
        return Ok(section);
    };
    let (runs, (pending_endpoints, pending_events)) = sizes(ctx.settings.scale);
    for (endpoints, events) in runs {
        let mut target = spawn(ctx, &spec, &["0s,1s,5s"], "outbound").await?;
        section.figures.push(deliveries(ctx, &target, endpoints, events).await?);
        target.stop().await?;
    }
    let mut target = spawn(ctx, &spec, &["0s,1h"], "outbound-pending").await?;
    section.figures.push(pending(ctx, &target, pending_endpoints, pending_events).await?);
    target.stop().await?;
    section.note(
        "deliveries/s: (endpoint, event) pairs answered 200 over first publish → last 200; \
         latency: publish acknowledgement → the receiver's 200, per delivery",
    );
    Ok(section)
}

async fn spawn(ctx: &Context, spec: &ServerSpec, schedule: &[&str], label: &str) -> Result<Target> {
    let mut spec = spec.clone();
    spec.args.extend(
        ["--delivery-allow-private", "--delivery-allow-http", "--delivery-retry-schedule"]
            .iter()
            .map(|s| s.to_string()),
    );
    spec.args.push(schedule.join(","));
    Target::spawn(&spec, ctx.root(), label).await
}

/// Creates `n` endpoints for every event type, pointing at `receivers`.
async fn create_endpoints(target: &Target, receivers: &Receivers, n: usize) -> Result<()> {
    let channel = client::channel(&target.addr).await?;
    let mut tasks = JoinSet::new();
    let urls: Vec<String> = (0..n).map(|i| receivers.url(i)).collect();
    let urls = Arc::new(Mutex::new(urls));
    for _ in 0..CREATORS {
        let mut webhooks = WebhookServiceClient::new(channel.clone());
        let urls = urls.clone();
        tasks.spawn(async move {
            loop {
                let Some(url) = urls.lock().ok().and_then(|mut u| u.pop()) else { return Ok(()) };
                webhooks
                    .create_endpoint(CreateEndpointRequest { url, ..Default::default() })
                    .await
                    .map_err(|s| format!("CreateEndpoint: {}", status_text(&s)))?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a CreateEndpoint task failed")?.map_err(|e: String| e)?;
    }
    Ok(())
}

/// Publishes `events` events with caller ids in batches; returns each id's ack time.
async fn publish(
    ctx: &Context,
    target: &Target,
    events: usize,
) -> Result<(Instant, HashMap<String, Instant>)> {
    let mut client = Client::new(client::channel(&target.addr).await?);
    let mut payload = Payload::new(&ctx.template);
    let run = Rng::seeded().base36(8);
    let mut acked = HashMap::with_capacity(events);
    let started = Instant::now();
    let mut next = 0;
    while next < events {
        let ids: Vec<String> =
            (next..(next + BATCH).min(events)).map(|i| format!("ob_{run}_{i}")).collect();
        next += ids.len();
        let requests = ids
            .iter()
            .map(|id| PublishEventRequest {
                id: id.clone(),
                r#type: CHARGE_CREATE.into(),
                data: Some(payload.next_struct()),
                ..Default::default()
            })
            .collect();
        client
            .publish_events(PublishEventsRequest { events: requests })
            .await
            .map_err(|s| format!("PublishEvents: {}", status_text(&s)))?;
        let now = Instant::now();
        acked.extend(ids.into_iter().map(|id| (id, now)));
    }
    Ok((started, acked))
}

/// Waits until `done` or the cap; says whether it was reached.
async fn wait(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + DRAIN_CAP;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn deliveries(
    ctx: &Context,
    target: &Target,
    endpoints: usize,
    events: usize,
) -> Result<Figure> {
    let receivers = Receivers::start(200).await?;
    create_endpoints(target, &receivers, endpoints).await?;
    let expected = endpoints * events;
    let (started, acked) = publish(ctx, target, events).await?;
    let complete = wait(|| receivers.delivered() >= expected).await;
    let seen = receivers.seen.lock().map_err(|_| "receiver lock")?;
    let mut histogram = micros_histogram();
    let mut last = started;
    for ((_, id), at) in &seen.delivered {
        if let Some(ack) = acked.get(id) {
            record(&mut histogram, at.saturating_duration_since(*ack));
        }
        last = last.max(*at);
    }
    let mut figure = Figure::new("outbound", format!("{endpoints} endpoints × {events} events"));
    figure.ops = seen.delivered.len() as u64;
    figure.seconds = last.duration_since(started).as_secs_f64();
    figure.latency = Latency::from_micros(&histogram);
    figure.set("requests", seen.requests);
    figure.set("complete", complete);
    if !complete {
        figure.set("missing", (expected - seen.delivered.len().min(expected)) as u64);
    }
    if let Ok(rss) = target.rss() {
        rss.apply(&mut figure);
    }
    Ok(figure)
}

async fn pending(
    ctx: &Context,
    target: &Target,
    endpoints: usize,
    events: usize,
) -> Result<Figure> {
    let receivers = Receivers::start(500).await?;
    create_endpoints(target, &receivers, endpoints).await?;
    let before = target.rss().ok();
    let expected = (endpoints * events) as u64;
    let started = Instant::now();
    publish(ctx, target, events).await?;
    let complete = wait(|| receivers.requests() >= expected).await;
    tokio::time::sleep(ctx.settings.settle).await;
    let mut figure = Figure::new(
        "outbound",
        format!("RSS, {endpoints} endpoints with {} pending", endpoints * events),
    );
    figure.ops = receivers.requests();
    figure.seconds = started.elapsed().as_secs_f64();
    figure.set("complete", complete);
    if let Some(before) = before {
        figure.set("rss_before_events_mib", (before.total_kib as f64 / 102.4).round() / 10.0);
    }
    target.rss()?.apply(&mut figure);
    Ok(figure)
}
