//! Figures under load, printed rather than asserted (speed depends on the machine):
//! - a subscriber that never reads must not slow publishing, and the server's memory must
//!   stay bounded while it falls ever further behind;
//! - at twice the in-flight limit, excess calls fail fast with RESOURCE_EXHAUSTED while the
//!   accepted ones complete, and memory stays bounded.
//!
//! What is asserted holds on any machine: every publish is either acknowledged or refused
//! with RESOURCE_EXHAUSTED, the stalled subscriber's stream is still open, nothing is lost.
//! Sizes: `EVENTSD_FIGURE_EVENTS` (default 10,000; the README's figures use 100,000 in release).

mod child;

use std::time::{Duration, Instant};

use eventsd::proto::{PublishEventRequest, PublishEventsRequest, SubscribeEventsRequest};
use prost_types::{value::Kind, Struct, Value};

fn event(i: usize) -> PublishEventRequest {
    let mut data = Struct::default();
    data.fields.insert("amount".into(), Value { kind: Some(Kind::NumberValue(i as f64)) });
    data.fields.insert("pad".into(), Value { kind: Some(Kind::StringValue("x".repeat(900))) });
    PublishEventRequest { r#type: "charge.create".into(), data: Some(data), ..Default::default() }
}

fn events_from_env() -> usize {
    std::env::var("EVENTSD_FIGURE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// Publishes `total` events in batches of 100 from 4 tasks; returns events per second and the
/// highest server RSS seen.
async fn publish_all(server: &child::Server, total: usize) -> (f64, u64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..4 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for batch in (task * 100..total).step_by(400) {
                let events = (batch..(batch + 100).min(total)).map(event).collect();
                client.publish_events(PublishEventsRequest { events }).await.expect("publish");
            }
        }));
    }
    let mut peak = child::rss_kib(server.pid());
    for task in tasks {
        task.await.expect("publisher");
        peak = peak.max(child::rss_kib(server.pid()));
    }
    (total as f64 / started.elapsed().as_secs_f64(), peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_slow_publishing() {
    let total = events_from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _) = child::Server::start(&dir.path().join("data"), &dir.path().join("log"))
        .await
        .expect("start");
    let idle = child::rss_kib(server.pid());
    let (alone, alone_peak) = publish_all(&server, total).await;

    // A subscriber from the beginning that never reads a single message.
    let mut client = server.client().await;
    let stalled = client
        .subscribe_events(SubscribeEventsRequest {
            start: Some(eventsd::proto::subscribe_events_request::Start::FromBeginning(true)),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let (beside, beside_peak) = publish_all(&server, total).await;
    let subscribers = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(subscribers.contains("eventsd_subscribers 1"), "the stalled stream is still open");
    println!(
        "slow subscriber, {total} events per run: {alone:.0} events/s alone (peak RSS {} KiB), \
         {beside:.0} events/s beside a subscriber that never reads (peak RSS {} KiB; idle {} KiB)",
        alone_peak, beside_peak, idle
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_twice_the_in_flight_limit_excess_calls_fail_fast() {
    // Children inherit the variable: the limit is 16 calls in flight; 32 publishers push.
    std::env::set_var("EVENTSD_MAX_IN_FLIGHT", "16");
    let total = events_from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _) = child::Server::start(&dir.path().join("data"), &dir.path().join("log"))
        .await
        .expect("start");
    let mut tasks = Vec::new();
    for task in 0..32 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut refused, mut refused_ms) = (Vec::new(), 0u64, 0f64);
            for i in (task..total).step_by(32) {
                let started = Instant::now();
                match client.publish_event(event(i)).await {
                    Ok(_) => accepted.push(started.elapsed()),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                        refused += 1;
                        refused_ms = refused_ms.max(started.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            (accepted, refused, refused_ms)
        }));
    }
    let (mut accepted, mut refused, mut slowest_refusal) = (Vec::<Duration>::new(), 0, 0f64);
    let mut peak = 0;
    for task in tasks {
        let (a, r, ms) = task.await.expect("publisher");
        accepted.extend(a);
        refused += r;
        slowest_refusal = slowest_refusal.max(ms);
        peak = peak.max(child::rss_kib(server.pid()));
    }
    accepted.sort();
    let pct = |p: f64| {
        accepted.get(((accepted.len() as f64 * p) as usize).min(accepted.len().saturating_sub(1)))
    };
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let listed = server
        .client()
        .await
        .list_events(eventsd::proto::ListEventsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .total;
    assert_eq!(listed as usize, accepted.len(), "every accepted call stored exactly one event");
    println!(
        "overload, 32 publishers against --max-in-flight 16: {} accepted (p50 {:.2} ms, p99 {:.2} ms), \
         {refused} refused with RESOURCE_EXHAUSTED (slowest refusal {slowest_refusal:.2} ms), peak RSS {peak} KiB",
        accepted.len(),
        ms(pct(0.50)),
        ms(pct(0.99))
    );
}
