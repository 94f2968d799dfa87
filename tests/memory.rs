//! Memory bounded in bytes (issue #15, finding 10): large events and stalled subscribers must
//! not grow the server without bound. Before the caches were bounded in bytes, 4,500 events of
//! ~256 KiB took the server to 1.4 GiB through the recent-events cache, and 8 subscribers
//! reading from the beginning that never read added 455 MiB more.
//!
//! The server is a separate process (so its memory is its own), with `--cache-bytes 64 MiB`.
//! Half the events are published, 8 subscribers open from the beginning on connections of
//! their own and never read, then the other half is published (the live path that feeds the
//! recent-events cache and wakes every subscriber). RSS is sampled throughout; the peak, and
//! what the second half and the subscribers add to it, must stay far below what the old
//! bounds allowed. Prints the figures. Takes about 15 seconds in a debug build.

mod child;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::{PublishEventRequest, PublishEventsRequest, SubscribeEventsRequest};
use serde_json::json;

/// Events published, and the size of each one's data.
const EVENTS: usize = 4_096;
const DATA_BYTES: usize = 250_000;
/// Events per PublishEvents call: 15 × ~250 KB fits the 4 MiB request limit.
const PER_CALL: usize = 15;
/// Stalled subscribers.
const SUBSCRIBERS: usize = 8;
/// The bound on the peak: the old bounds allowed 1.4 GiB for the events alone and ~1.9 GiB with
/// the subscribers. With the bodies in the event log instead of sled, the peak measured 124 MiB
/// (debug build; it was 523 MiB with them in sled), so twice that is the bound.
const RSS_LIMIT_MIB: u64 = 256;
/// The bound on what the second half of the events and the stalled subscribers add on top of
/// the first half: the recent-events cache (16 MiB here), 8 × (read batch + send queue, about
/// 1 MiB each, + the transport's buffers), and sled's growth. Before the fix the cache alone
/// added ~490 MiB here and the subscribers ~455 MiB.
const GROWTH_LIMIT_MIB: u64 = 256;
/// The whole test must finish within this (it normally takes well under a minute).
const TEST_LIMIT: Duration = Duration::from_secs(600);

fn batch(first: usize, count: usize) -> PublishEventsRequest {
    let blob = "x".repeat(DATA_BYTES);
    let events = (first..first + count)
        .map(|i| PublishEventRequest {
            r#type: "file.uploaded".into(),
            data: Some(
                eventsd::event::json::object_to_struct(
                    json!({"n": i, "blob": blob}).as_object().expect("an object"),
                )
                .expect("representable"),
            ),
            ..Default::default()
        })
        .collect();
    PublishEventsRequest { events }
}

async fn publish(client: &mut child::Client, range: std::ops::Range<usize>) {
    let mut i = range.start;
    while i < range.end {
        let count = PER_CALL.min(range.end - i);
        let call = client.publish_events(batch(i, count));
        tokio::time::timeout(child::CALL_LIMIT, call)
            .await
            .expect("hang guard: PublishEvents")
            .expect("PublishEvents");
        i += count;
    }
}

async fn gauge(http: std::net::SocketAddr, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{http}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

#[tokio::test]
async fn large_events_and_stalled_subscribers_keep_the_server_within_its_byte_bounds() {
    tokio::time::timeout(TEST_LIMIT, run()).await.expect("the test took too long");
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = ["--cache-bytes", "67108864", "--durability", "process-crash"].map(String::from);
    let (mut server, _) =
        child::Server::start_with(&dir.path().join("data"), &dir.path().join("log"), &flags)
            .await
            .expect("start");
    let pid = server.pid();
    let baseline = child::rss_kib(pid);
    let started = Instant::now();

    // RSS sampled every 20 ms from here on; the peak is what counts.
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(child::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut client = server.client().await;
    publish(&mut client, 0..EVENTS / 2).await;
    let after_history = child::rss_kib(pid);

    // Stalled subscribers: each on its own connection, from the beginning, never read.
    let mut stalled = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut own = server.client().await;
        let request = SubscribeEventsRequest {
            start: Some(Start::FromBeginning(true)),
            ..Default::default()
        };
        let stream = tokio::time::timeout(child::CALL_LIMIT, own.subscribe_events(request))
            .await
            .expect("hang guard: subscribe")
            .expect("subscribe");
        stalled.push((own, stream));
    }
    publish(&mut client, EVENTS / 2..EVENTS).await;
    let published = started.elapsed();

    // The subscribers are still open (stalled, not gone), each behind by thousands of events.
    assert_eq!(gauge(server.http, "eventsd_subscribers").await, Some(SUBSCRIBERS as u64));
    // Give the stalled subscribers' tasks a moment more to fill whatever they may buffer.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    let end = child::rss_kib(pid);
    println!(
        "memory: {EVENTS} events of ~{} KiB ({} MiB) and {SUBSCRIBERS} stalled subscribers \
         with --cache-bytes 64 MiB: RSS {} MiB at start, {} MiB after the first half, \
         peak {} MiB (+{} MiB), {} MiB at the end (published in {:.1} s)",
        DATA_BYTES / 1024,
        EVENTS * DATA_BYTES / (1 << 20),
        baseline / 1024,
        after_history / 1024,
        peak / 1024,
        peak.saturating_sub(after_history) / 1024,
        end / 1024,
        published.as_secs_f64()
    );
    assert!(
        peak / 1024 < RSS_LIMIT_MIB,
        "peak RSS {} MiB is above {RSS_LIMIT_MIB} MiB",
        peak / 1024
    );
    let growth = peak.saturating_sub(after_history) / 1024;
    assert!(
        growth < GROWTH_LIMIT_MIB,
        "the second half and the stalled subscribers added {growth} MiB (bound {GROWTH_LIMIT_MIB} MiB)"
    );
    drop(stalled);
    server.terminate(child::CALL_LIMIT).await.expect("clean stop");
}
