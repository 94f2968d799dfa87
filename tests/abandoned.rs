//! Idle and abandoned subscribers: many idle streams, then abrupt disconnects. The server
//! (a separate process, so its memory is its own) must release every subscription — the
//! `eventsd_subscribers` gauge returns to 0 — and its memory must come back near baseline.
//! Prints the figures; asserts only what must hold whatever the machine's speed.

mod child;

use std::time::Duration;

use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::SubscribeEventsRequest;

async fn gauge(http: std::net::SocketAddr, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{http}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

async fn wait_for_gauge(http: std::net::SocketAddr, name: &str, want: u64) -> bool {
    for _ in 0..300 {
        if gauge(http, name).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn abandoned_subscriptions_release_their_resources() {
    let streams: usize = std::env::var("EVENTSD_ABANDONED_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, _) = child::Server::start(&dir.path().join("data"), &dir.path().join("log"))
        .await
        .expect("start");
    let baseline = child::rss_kib(server.pid());

    for round in 1..=2 {
        // Idle streams spread over connections (the server allows 1,024 per connection).
        let mut clients = Vec::new();
        let mut open = Vec::new();
        for i in 0..streams {
            if i % 500 == 0 {
                clients.push(server.client().await);
            }
            let client = clients.last_mut().expect("a client");
            let mut stream = client
                .subscribe_events(SubscribeEventsRequest::default())
                .await
                .expect("subscribe")
                .into_inner();
            let first = tokio::time::timeout(child::CALL_LIMIT, stream.message()).await;
            assert!(
                matches!(first, Ok(Ok(Some(ref m))) if matches!(m.item, Some(Item::CaughtUp(_)))),
                "stream {i} did not start with caught_up"
            );
            open.push(stream);
        }
        assert!(wait_for_gauge(server.http, "eventsd_subscribers", streams as u64).await);
        let loaded = child::rss_kib(server.pid());

        // Abrupt disconnect: drop the streams and their connections without ending them.
        drop(open);
        drop(clients);
        assert!(
            wait_for_gauge(server.http, "eventsd_subscribers", 0).await,
            "subscriptions were not released after the clients went away"
        );
        let after = child::rss_kib(server.pid());
        println!(
            "abandoned round {round}: {streams} idle streams: RSS {baseline} KiB idle → {loaded} KiB \
             ({:.1} KiB per stream) → {after} KiB after abrupt disconnect; subscribers gauge back to 0",
            (loaded.saturating_sub(baseline)) as f64 / streams as f64
        );
    }
    server.terminate(child::CALL_LIMIT).await.expect("clean stop");
}
