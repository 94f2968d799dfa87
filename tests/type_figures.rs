//! Figures for RELIABILITY.md (issue #15, findings 8 and 9) at many distinct types: the real
//! binary as a child process, loaded over loopback by this test process.
//!
//! 1. Publish latency (32 publishers, unary PublishEvent) with one type in the store.
//! 2. A fill of `EVENTSD_FIGURE_TYPES` events (default 100,000; RELIABILITY.md quotes
//!    1,000,000), each of its own type `t.<n>`, with PublishEvents of 1,000.
//! 3. Publish latency again, with that many types stored (every publish a new type).
//! 4. Listings with a wildcard matching about a ninth of the types (`t.1*`), first page and at
//!    offset 100,000 (or the last page, on a smaller fill): each must answer, or end with
//!    DEADLINE_EXCEEDED, within `--list-deadline` (10 s) plus a margin.
//! 5. The server's RSS after it all.
//!
//! Nothing here depends on the machine's speed except the printed figures; every loop is
//! bounded in count, and every call has a hang guard. Run it in release:
//! `EVENTSD_FIGURE_TYPES=1000000 cargo test --release --test type_figures -- --ignored --nocapture`.

mod child;

use std::time::{Duration, Instant};

use child::{rss_kib, Server};
use eventsd::proto::{ListEventsRequest, PublishEventRequest, PublishEventsRequest};
use prost_types::Timestamp;

/// Unary publishes per latency round.
const ROUND_CALLS: usize = 6_400;
/// Concurrent publishers per latency round.
const PUBLISHERS: usize = 32;
/// Longest any one call may take before the test fails as hung.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn event(event_type: String) -> PublishEventRequest {
    PublishEventRequest {
        r#type: event_type,
        data: Some(
            eventsd::event::json::object_to_struct(
                serde_json::json!({"object": "charge", "amount": 100_000, "currency": "thb"})
                    .as_object()
                    .expect("an object"),
            )
            .expect("representable"),
        ),
        ..Default::default()
    }
}

/// p50 and p99 of unary publishes from [`PUBLISHERS`] tasks; `types(i)` names call i's type.
async fn publish_latency(
    server: &Server,
    types: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (Duration, Duration, f64) {
    let types = std::sync::Arc::new(types);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut client = server.client().await;
        let types = types.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for i in (p..ROUND_CALLS).step_by(PUBLISHERS) {
                let at = Instant::now();
                tokio::time::timeout(HANG_GUARD, client.publish_event(event(types(i))))
                    .await
                    .expect("hang guard: PublishEvent")
                    .expect("PublishEvent");
                took.push(at.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("publisher task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (all[all.len() / 2], all[all.len() * 99 / 100], rate)
}

/// One listing: how long it took and what it answered (total, or the status code).
async fn timed_list(server: &Server, request: ListEventsRequest) -> (Duration, String) {
    let mut client = server.client().await;
    let at = Instant::now();
    let answer = tokio::time::timeout(HANG_GUARD, client.list_events(request))
        .await
        .expect("hang guard: ListEvents");
    let took = at.elapsed();
    let what = match answer {
        Ok(page) => {
            let page = page.into_inner();
            format!("total {}, {} events", page.total, page.data.len())
        }
        Err(status) => format!("{:?}", status.code()),
    };
    (took, what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure run: prints figures for RELIABILITY.md (see the module header)"]
async fn publish_latency_and_wildcard_listings_with_many_types() {
    let types: usize =
        std::env::var("EVENTSD_FIGURE_TYPES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("eventsd.log");
    let (server, _) = Server::start(&dir.path().join("data"), &log).await.expect("eventsd starts");

    let (p50, p99, rate) = publish_latency(&server, |_| "charge.create".to_string()).await;
    println!("one type: {ROUND_CALLS} publishes from {PUBLISHERS} publishers: p50 {p50:?}, p99 {p99:?}, {rate:.0}/s");

    let filled = Instant::now();
    let mut client = server.client().await;
    let mut n = 0;
    while n < types {
        let batch = (n..(n + 1_000).min(types)).map(|i| event(format!("t.{i}"))).collect();
        tokio::time::timeout(
            HANG_GUARD,
            client.publish_events(PublishEventsRequest { events: batch }),
        )
        .await
        .expect("hang guard: PublishEvents")
        .expect("PublishEvents");
        n = (n + 1_000).min(types);
    }
    println!(
        "fill: {types} events of as many types in {:?}; RSS {} MiB",
        filled.elapsed(),
        rss_kib(server.pid()) / 1024
    );

    let (p50_many, p99_many, rate_many) =
        publish_latency(&server, move |i| format!("new.{types}.{i}")).await;
    println!(
        "{types} types: {ROUND_CALLS} publishes of new types from {PUBLISHERS} publishers: p50 {p50_many:?}, p99 {p99_many:?}, {rate_many:.0}/s (p50 {:.2}x one type's)",
        p50_many.as_secs_f64() / p50.as_secs_f64()
    );

    let everything = ListEventsRequest {
        from: Some(Timestamp { seconds: -62_135_596_800, nanos: 0 }),
        to: Some(Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 }),
        types: vec!["t.1*".into()],
        limit: 100,
        ..Default::default()
    };
    let deadline = Duration::from_secs(10);
    let deep = (types / 9).saturating_sub(100).min(100_000) as i32;
    for (what, request) in [
        ("first page", everything.clone()),
        ("offset {deep}", ListEventsRequest { offset: deep, ..everything.clone() }),
        (
            "offset {deep}, newest first",
            ListEventsRequest { offset: deep, order: 2, ..everything.clone() },
        ),
    ] {
        let (took, answer) = timed_list(&server, request).await;
        println!(
            "wildcard t.1* over {types} types, {}: {answer} in {took:?}",
            what.replace("{deep}", &deep.to_string())
        );
        assert!(took < deadline + Duration::from_secs(5), "{what}: {took:?} is past the deadline");
    }
    println!("server RSS at the end: {} MiB", rss_kib(server.pid()) / 1024);
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
