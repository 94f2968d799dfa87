//! Outbound webhooks across kill -9: the real binary delivers to a receiver on loopback that
//! refuses each event's first attempt (so retries are pending at any moment), and is killed
//! with SIGKILL right after each round of publishes is acknowledged. After the last restart
//! every acknowledged event must reach the receiver with a 2xx; repeats are allowed (and
//! counted), losses are not.

mod child;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use eventsd::proto::webhook_service_client::WebhookServiceClient;
use eventsd::proto::{CreateEndpointRequest, PublishEventRequest};
use prost_types::{value::Kind, Struct, Value};

use child::{publish_ids, Server};

/// Kill cycles.
const CYCLES: usize = 3;

/// Events published (and acknowledged) per cycle.
const PER_CYCLE: usize = 100;

/// The longest the final catch-up may take; a guard against hangs, not a speed goal.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

/// Attempts seen per event id, and which ids got a 2xx.
#[derive(Default)]
struct Seen {
    attempts: HashMap<String, usize>,
    delivered: HashSet<String>,
}

async fn receive(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut seen = seen.lock().unwrap();
    let attempts = seen.attempts.entry(id.clone()).or_default();
    *attempts += 1;
    if *attempts == 1 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    seen.delivered.insert(id);
    StatusCode::OK
}

fn flags() -> Vec<String> {
    [
        "--delivery-allow-private",
        "--delivery-allow-http",
        "--delivery-retry-schedule",
        "0s,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn event(i: usize) -> PublishEventRequest {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("n".to_owned(), Value { kind: Some(Kind::NumberValue(i as f64)) });
    PublishEventRequest {
        r#type: "charge.create".into(),
        data: Some(Struct { fields }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_delivered_after_kill_9() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new().route("/hook", post(receive)).with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let (mut server, _) =
        Server::start_with(&data, &log, &flags()).await.unwrap_or_else(|e| panic!("start: {e}"));
    let mut webhooks =
        WebhookServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connect");
    webhooks
        .create_endpoint(CreateEndpointRequest { url, ..Default::default() })
        .await
        .expect("create endpoint");

    let mut acknowledged = HashSet::new();
    for cycle in 0..CYCLES {
        let mut client = server.client().await;
        for chunk in 0..PER_CYCLE / 25 {
            let events = (0..25).map(|i| event(cycle * PER_CYCLE + chunk * 25 + i)).collect();
            acknowledged.extend(publish_ids(&mut client, events).await);
        }
        server.kill9();
        let (restarted, _) = Server::start_with(&data, &log, &flags())
            .await
            .unwrap_or_else(|e| panic!("restart after cycle {cycle}: {e}"));
        server = restarted;
    }

    let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
    loop {
        let missing: Vec<String> = {
            let seen = seen.lock().unwrap();
            acknowledged.difference(&seen.delivered).cloned().collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged events never delivered, such as {:?}\n{}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)],
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let repeated = seen.lock().unwrap().attempts.values().filter(|&&n| n > 2).count();
    println!(
        "outbound kill -9: {} events over {CYCLES} kills, all delivered; {repeated} delivered more than once",
        acknowledged.len()
    );
    let status = server.terminate(Duration::from_secs(30)).await.expect("SIGTERM stop");
    assert!(status.success(), "exit {status}");
}
