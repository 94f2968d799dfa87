//! An SSE client that never reads (issue #19): while 100,000 events pass, it must not grow the
//! server's memory by more than 16 MiB. Its stream stays behind on the store like any slow
//! gRPC subscriber; what it holds on the server is the subscription's bounded queue and the
//! connection's buffers.
//!
//! The server is a separate process (so its memory is its own) with a small cache. 100,000
//! events are published first with no stream open, so the store's caches reach their steady
//! size; then a control round of 100,000 more with no stream open measures what the store
//! itself grows by per round; then a raw TCP client asks for
//! `GET /stream/events?from_beginning=true` and never reads a byte, and a third round of
//! 100,000 is published. RSS is sampled throughout each round; the stalled client's share is
//! the third round's growth (peak over the RSS before it) less the control round's, and it
//! must stay within 16 MiB. Prints the figures; asserts nothing about speed.

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
    child::publish_small(&mut client, 0, EVENTS / PER_CALL, PER_CALL).await;
    let warmed = child::rss_kib(pid);
    let sampler = child::PeakRss::start(pid);
    child::publish_small(&mut client, 1, EVENTS / PER_CALL, PER_CALL).await;
    let control = sampler.stop().await.saturating_sub(warmed);

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

    let sampler = child::PeakRss::start(pid);
    child::publish_small(&mut client, 2, EVENTS / PER_CALL, PER_CALL).await;
    // Still open and stalled, not gone.
    assert_eq!(child::gauge(server.http, "eventsd_subscribers").await, Some(1));
    let peak = sampler.stop().await;
    let round = peak.saturating_sub(before);
    let growth = round.saturating_sub(control);
    println!(
        "sse memory: RSS {} MiB at start, {} MiB after {EVENTS} events with no stream; \
         {EVENTS} more with no stream grew it by {:.1} MiB (the store's own growth); \
         {} MiB with the stalled SSE client open, peak {} MiB while {EVENTS} more passed \
         (+{:.1} MiB): the stalled client's share is +{:.1} MiB (bound {GROWTH_LIMIT_MIB} MiB)",
        baseline / 1024,
        warmed / 1024,
        control as f64 / 1024.0,
        before / 1024,
        peak / 1024,
        round as f64 / 1024.0,
        growth as f64 / 1024.0,
    );
    assert!(
        growth <= GROWTH_LIMIT_MIB * 1024,
        "the stalled SSE client grew the server by {growth} KiB beyond the store's own growth \
         of {control} KiB per round (bound {GROWTH_LIMIT_MIB} MiB)"
    );
    drop(stalled);
    server.terminate(child::CALL_LIMIT).await.expect("clean stop");
}
