//! Figures (issue #19): deliveries per second to 100 SSE streams beside the gRPC fan-out to
//! 100 SubscribeEvents streams, in the same run against the same server. Ignored by default
//! (it measures, it asserts nothing about speed); run it with
//!
//!     cargo test --release --test stream_figures -- --ignored --nocapture
//!
//! The server is the `eventsd` binary of the build (a separate process). Each round opens
//! 100 streams from now, publishes the events in batches over gRPC, and times from the first
//! publish until every stream has received every event; deliveries/s is streams × events
//! over that time. The clients run on the same machine and share its cores with the server.

mod child;

use std::time::{Duration, Instant};

use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::SubscribeEventsRequest;
use tokio::task::JoinSet;

const STREAMS: usize = 100;
const EVENTS: usize = 5_000;
const PER_CALL: usize = 100;
/// Streams per gRPC connection (HTTP/2 multiplexes them).
const PER_CONNECTION: usize = 25;

/// Opens the gRPC streams (each past its `caught_up`) and spawns their readers; each reader
/// returns once it has counted every event.
async fn grpc_round(server: &child::Server) -> JoinSet<usize> {
    let mut readers = JoinSet::new();
    let mut client = server.client().await;
    for i in 0..STREAMS {
        if i % PER_CONNECTION == 0 {
            client = server.client().await;
        }
        let mut stream =
            child::subscribe_caught_up(&mut client, SubscribeEventsRequest::default()).await;
        readers.spawn(async move {
            let mut seen = 0;
            while seen < EVENTS {
                let next = tokio::time::timeout(child::CALL_LIMIT, stream.message()).await;
                let item = next.expect("hang guard").expect("stream").expect("open").item;
                seen += usize::from(matches!(item, Some(Item::Event(_))));
            }
            seen
        });
    }
    readers
}

/// The same over `GET /stream/events`, one HTTP/1.1 connection per stream.
async fn sse_round(server: &child::Server) -> JoinSet<usize> {
    let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let mut readers = JoinSet::new();
    for _ in 0..STREAMS {
        let mut response = client
            .get(format!("http://{}/stream/events", server.http))
            .send()
            .await
            .expect("open the stream");
        assert_eq!(response.status().as_u16(), 200);
        let mut buffer = Vec::new();
        // Up to and including caught_up.
        while !buffer.windows(16).any(|w| w == b"event: caught_up") {
            let chunk = tokio::time::timeout(child::CALL_LIMIT, response.chunk()).await;
            buffer.extend_from_slice(&chunk.expect("hang guard").expect("read").expect("open"));
        }
        readers.spawn(async move {
            let mut seen = 0;
            let mut tail: Vec<u8> = Vec::new();
            while seen < EVENTS {
                let chunk = tokio::time::timeout(child::CALL_LIMIT, response.chunk()).await;
                tail.extend_from_slice(&chunk.expect("hang guard").expect("read").expect("open"));
                // Count whole messages; an event's message starts with its `id:` line.
                let mut start = 0;
                while let Some(end) = tail[start..].windows(2).position(|w| w == b"\n\n") {
                    if tail[start..].starts_with(b"id: ") {
                        seen += 1;
                    }
                    start += end + 2;
                }
                tail.drain(..start);
            }
            seen
        });
    }
    readers
}

/// The CPU time (user + system) process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

/// Publishes the events and waits for every reader: the wall time and the server's CPU time.
async fn timed(server: &child::Server, readers: JoinSet<usize>) -> (Duration, f64) {
    let mut publisher = server.client().await;
    let cpu = cpu_seconds(server.pid());
    let started = Instant::now();
    child::publish_small(&mut publisher, 0, EVENTS / PER_CALL, PER_CALL).await;
    let delivered: usize = readers.join_all().await.into_iter().sum();
    assert_eq!(delivered, STREAMS * EVENTS);
    (started.elapsed(), cpu_seconds(server.pid()) - cpu)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "prints figures; run with --ignored --nocapture"]
async fn deliveries_per_second_to_100_sse_streams_beside_100_grpc_streams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = child::start_in(dir.path(), &["--durability", "process-crash"]).await;
    let grpc = grpc_round(&server).await;
    let grpc = timed(&server, grpc).await;
    let sse = sse_round(&server).await;
    let sse = timed(&server, sse).await;
    let rate = |took: Duration| (STREAMS * EVENTS) as f64 / took.as_secs_f64();
    println!(
        "stream figures ({} build): {EVENTS} events to {STREAMS} streams each: gRPC \
         SubscribeEvents {:.0} deliveries/s ({:.2} s, server CPU {:.1} s), SSE /stream/events \
         {:.0} deliveries/s ({:.2} s, server CPU {:.1} s)",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        rate(grpc.0),
        grpc.0.as_secs_f64(),
        grpc.1,
        rate(sse.0),
        sse.0.as_secs_f64(),
        sse.1
    );
    server.terminate(child::CALL_LIMIT).await.expect("clean stop");
}
