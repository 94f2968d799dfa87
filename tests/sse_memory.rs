//! An SSE client that never reads (issue #19): while 100,000 events pass, it must not grow the
//! server's memory by more than 16 MiB. Its stream stays behind on the store like any slow
//! gRPC subscriber; what it holds on the server is the subscription's bounded queue and the
//! connection's buffers.
//!
//! The server is a separate process (so its memory is its own) with a small cache. 200,000
//! events are published first with no stream open, so the store's caches reach their steady
//! size; then a control round of 100,000 more with no stream open measures what the store
//! itself grows by per round; then a raw TCP client asks for
//! `GET /stream/events?from_beginning=true` and never reads a byte, and a round of 100,000 is
//! published; then, with the client gone, one more control round. RSS is sampled throughout
//! each round; the stalled client's share is its round's growth (peak over the RSS at the
//! round's start) less the larger control round's, and it must stay within 16 MiB. Every
//! round waits for the index after each call, so the index's lag is no round's share. Prints
//! the figures; asserts nothing about speed.

mod child;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Events published in each round.
const EVENTS: usize = 100_000;
/// Events per PublishEvents call.
const PER_CALL: usize = 1_000;
/// The bound on what the stalled client may add, in MiB.
const GROWTH_LIMIT_MIB: u64 = 16;
/// The whole test must finish within this.
const TEST_LIMIT: Duration = Duration::from_secs(900);

#[tokio::test]
async fn an_sse_client_that_never_reads_grows_the_server_by_at_most_16_mib() {
    tokio::time::timeout(TEST_LIMIT, run()).await.expect("the test took too long");
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = ["--cache-bytes", "8388608", "--durability", "process-crash"];
    let mut server = child::start_in(dir.path(), &flags).await;
    let pid = server.pid();
    let mut client = server.client().await;
    let baseline = child::rss_kib(pid);
    // Warm-up: the store grows most in its first rounds (measured: ~20 MiB in the second
    // 100,000, ~1–4 MiB in the fourth), so the measured rounds come after two.
    child::publish_small(&mut client, 0, 2 * EVENTS / PER_CALL, PER_CALL).await;
    let warmed = child::rss_kib(pid);
    let control_before = round_growth(&mut client, pid, 1).await;

    // The client that never reads: a request, then silence.
    let mut stalled = tokio::net::TcpStream::connect(server.http).await.expect("connect");
    let request = format!(
        "GET /stream/events?from_beginning=true HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
        server.http
    );
    stalled.write_all(request.as_bytes()).await.expect("send the request");
    let mut open = false;
    for _ in 0..300 {
        if child::gauge(server.http, "eventsd_subscribers").await == Some(1) {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(open, "the stalled stream never opened");
    let before = child::rss_kib(pid);
    let round = round_growth(&mut client, pid, 2).await;
    // Still open and stalled, not gone.
    assert_eq!(child::gauge(server.http, "eventsd_subscribers").await, Some(1));
    drop(stalled);
    let control_after = round_growth(&mut client, pid, 3).await;
    let control = control_before.max(control_after);
    let growth = round.saturating_sub(control);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "sse memory: RSS {} MiB at start, {} MiB after 2 x {EVENTS} events with no stream; rounds \
         of {EVENTS} more grew it by {:.1} MiB with no stream, {:.1} MiB with the stalled SSE \
         client open (from {} MiB), {:.1} MiB with it gone: the stalled client's share is \
         +{:.1} MiB (bound {GROWTH_LIMIT_MIB} MiB)",
        baseline / 1024,
        warmed / 1024,
        mib(control_before),
        mib(round),
        before / 1024,
        mib(control_after),
        mib(growth),
    );
    assert!(
        growth <= GROWTH_LIMIT_MIB * 1024,
        "the stalled SSE client grew the server by {growth} KiB beyond the store's own growth \
         of {control} KiB per round (bound {GROWTH_LIMIT_MIB} MiB)"
    );
    server.terminate(child::CALL_LIMIT).await.expect("clean stop");
}

/// Publishes one round of events and returns how far the RSS peak rose over its start.
/// After each call a one-event listing waits for the index to hold what was published, so
/// the index's lag behind a burst of publishes (its queue and pending ids, which vary from
/// round to round) is not counted as the stalled client's.
async fn round_growth(client: &mut child::Client, pid: u32, round: usize) -> u64 {
    let start = child::rss_kib(pid);
    let sampler = child::PeakRss::start(pid);
    for call in 0..EVENTS / PER_CALL {
        child::publish_small(client, round * EVENTS + call, 1, PER_CALL).await;
        let newest = eventsd::proto::ListEventsRequest { limit: 1, ..child::everything() };
        tokio::time::timeout(child::CALL_LIMIT, client.list_events(newest))
            .await
            .expect("hang guard: ListEvents")
            .expect("ListEvents");
    }
    sampler.stop().await.saturating_sub(start)
}
