//! Issue #15: each finding's attack, replayed against a real server, and what it gets now.
//!
//! The attacker holds a test-mode key with the publish, read and subscribe scopes (or no key
//! at all); a live key and an admin key of both modes stand for the operator. Finding 10
//! (memory in bytes) is measured in `tests/memory.rs` and `tests/sse_memory.rs`; the
//! 10,000-connection figure is in `tests/connection_figures.rs`, and the many-types figures
//! (finding 8 and 9 at 1M types) in `tests/type_figures.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use eventsd::proto::{
    GetEventRequest, ListEventsRequest, PublishEventRequest, SubscribeEventsRequest,
};
use prost::Message;
use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::{Code, Request};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{embedded_only, spawn_app_with, TestApp};
use crate::support::{channel, event, everything, json_struct, HANG_GUARD};

pub(crate) const ATTACKER: &str = "sk_test_attacker_Vb8Qz2";
const LIVE: &str = "sk_live_operator_Kp3Rn7";
pub(crate) const ADMIN: &str = "sk_admin_operator_Hx5Tw9";

/// A server with the three keys; `adjust` changes anything else.
pub(crate) async fn secured(adjust: impl FnOnce(&mut eventsd::ServeConfig)) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.toml");
    let text = format!(
        r#"
[[key]]
name = "attacker"
key = "{ATTACKER}"
scopes = ["publish", "read", "subscribe"]
mode = "test"

[[key]]
name = "operator"
key = "{LIVE}"
scopes = ["publish", "read", "subscribe"]
mode = "live"

[[key]]
name = "admin"
key = "{ADMIN}"
scopes = ["admin"]
mode = "all"
"#
    );
    std::fs::write(&path, text).expect("write the key file");
    let app = spawn_app_with(|c| {
        c.api_keys = Some(path);
        adjust(c);
    })
    .await;
    (app, dir)
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(HANG_GUARD).build().expect("HTTP client")
}

/// A live event the operator publishes: what the attacker wants to learn.
fn secret_payout(id: &str) -> PublishEventRequest {
    PublishEventRequest {
        id: id.into(),
        livemode: true,
        data: Some(json_struct(json!({"object": "payout", "amount": 987_654}))),
        ..event("payout.create")
    }
}

// ---- 1 and 2: modes are namespaces (wait on branch `engine`) ----

#[tokio::test]
async fn a_test_key_learns_nothing_of_a_live_event_through_publish_conflicts_on_any_route() {
    // Arrange: one live event per route the attacker will try; Stripe takes unsigned
    // deliveries so the attacker needs no credentials there at all.
    let (mut app, _keys) = secured(|c| c.webhook_unsigned = vec!["stripe".into()]).await;
    for id in ["evt_guess_grpc", "evt_guess_http", "evt_guess_hook"] {
        app.client.publish_event(with_key(secret_payout(id), ADMIN)).await.expect("live publish");
    }
    let wrong_guess = |id: &str| PublishEventRequest {
        id: id.into(),
        data: Some(json_struct(json!({"object": "payout", "amount": 1}))),
        ..event("refund.create")
    };

    // Act: a wrong guess on each route (type and data both differ from the live event).
    let grpc = app.client.publish_event(with_key(wrong_guess("evt_guess_grpc"), ATTACKER)).await;
    let http_reply = http()
        .post(format!("{}/events", app.http))
        .bearer_auth(ATTACKER)
        .json(&json!({"id": "evt_guess_http", "type": "refund.create", "data": {"amount": 1}}))
        .send()
        .await
        .expect("POST /events");
    let http_status = http_reply.status().as_u16();
    let http_text = http_reply.text().await.unwrap_or_default();
    let hook_body = json!({
        "id": "evt_guess_hook", "object": "event", "type": "refund.create",
        "created": 1_700_000_000, "livemode": false,
        "data": {"object": {"object": "refund", "amount": 1}},
    });
    let hook = http()
        .post(format!("{}/webhooks/stripe", app.http))
        .json(&hook_body)
        .send()
        .await
        .expect("POST /webhooks/stripe");
    let hook_status = hook.status().as_u16();
    let hook_text = hook.text().await.unwrap_or_default();

    // Assert: each guess is simply a new test event: no conflict, nothing about the live one.
    let stored = grpc.expect("the test publish is its own event, not a conflict").into_inner();
    assert!(!stored.livemode);
    assert_eq!(stored.r#type, "refund.create");
    assert_eq!(http_status, 201, "POST /events: {http_text}");
    assert_eq!(hook_status, 201, "webhook: {hook_text}");
    for text in [&http_text, &hook_text] {
        assert!(!text.contains("payout") && !text.contains("987654"), "{text}");
    }
}

#[tokio::test]
async fn a_test_publish_of_an_id_does_not_block_the_live_publish_of_that_id() {
    let (mut app, _keys) = secured(|_| {}).await;
    let squat = PublishEventRequest { id: "evt_squatted".into(), ..event("charge.create") };
    app.client.publish_event(with_key(squat, ATTACKER)).await.expect("test publish");

    let live = app.client.publish_event(with_key(secret_payout("evt_squatted"), LIVE)).await;

    let live = live.expect("the live publish is not blocked by a test event").into_inner();
    assert!(live.livemode);
    let get = |key: &str, livemode: Option<bool>| {
        let mut client = app.client.clone();
        let request = GetEventRequest { id: "evt_squatted".into(), livemode };
        let request = with_key(request, key);
        async move { client.get_event(request).await.map(|r| r.into_inner()) }
    };
    assert_eq!(get(ADMIN, None).await.expect("admin, default").r#type, "payout.create");
    assert_eq!(get(ADMIN, Some(false)).await.expect("admin, test").r#type, "charge.create");
    assert_eq!(get(ATTACKER, None).await.expect("attacker").r#type, "charge.create");
}

// ---- GetEvent's livemode, on a store with one id per mode (works before `engine` too) ----

#[tokio::test]
async fn get_event_livemode_picks_the_mode_and_the_other_mode_is_permission_denied() {
    let (mut app, _keys) = secured(|_| {}).await;
    app.client.publish_event(with_key(secret_payout("evt_live_only"), ADMIN)).await.expect("live");
    let get = |key: &str, livemode: Option<bool>| {
        let mut client = app.client.clone();
        let request = with_key(GetEventRequest { id: "evt_live_only".into(), livemode }, key);
        async move { client.get_event(request).await.map(|r| r.into_inner()) }
    };

    assert!(get(ADMIN, None).await.expect("live first for a key of both modes").livemode);
    assert_eq!(get(ADMIN, Some(false)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get(ATTACKER, None).await.unwrap_err().code(), Code::NotFound);
    let denied = get(ATTACKER, Some(true)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("livemode"), "{}", denied.message());

    let view = |q: &str| {
        http().get(format!("{}/events/evt_live_only{q}", app.http)).bearer_auth(ADMIN).send()
    };
    assert_eq!(view("").await.unwrap().status(), 200);
    assert_eq!(view("?livemode=true").await.unwrap().status(), 200);
    assert_eq!(view("?livemode=false").await.unwrap().status(), 404);
    let bad = view("?livemode=maybe").await.unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("livemode"));
}

// ---- 3: page tokens ----

/// The page token's fields as version 1 laid them out (an attacker's copy).
#[derive(Clone, PartialEq, Message)]
struct ForgedToken {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    snapshot: u64,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn first_token(app: &TestApp) -> String {
    let mut client = app.client.clone();
    for i in 0..3 {
        let request = PublishEventRequest { id: format!("evt_page_{i}"), ..event("charge.create") };
        client.publish_event(with_key(request, ADMIN)).await.expect("publish");
    }
    let first = ListEventsRequest { limit: 1, ..everything() };
    let page = client.list_events(with_key(first, ADMIN)).await.expect("first page");
    let token = page.into_inner().next_page_token;
    assert!(!token.is_empty());
    token
}

async fn list_with(app: &TestApp, token: String) -> Result<usize, tonic::Status> {
    let mut client = app.client.clone();
    let request = ListEventsRequest { page_token: token, limit: 1, ..Default::default() };
    client.list_events(with_key(request, ADMIN)).await.map(|r| r.into_inner().data.len())
}

#[tokio::test]
async fn forged_altered_and_pre_upgrade_page_tokens_are_invalid_argument_naming_page_token() {
    let (app, _keys) = secured(|_| {}).await;
    let token = first_token(&app).await;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    let body = &bytes[..bytes.len() - 32];

    // The version 1 scheme an attacker can compute: an unkeyed check value, snapshot raised.
    // Protobuf keeps the last value of a repeated field, so appending overrides the body's.
    let mut forged = body.to_vec();
    forged.extend_from_slice(&ForgedToken { version: 1, snapshot: 1_000_000 }.encode_to_vec());
    let check = Sha256::new_with_prefix(b"eventsd page token").chain_update(&forged).finalize();
    let mut pre_upgrade = forged.clone();
    pre_upgrade.extend_from_slice(&check[..8]);
    // The real token with one body byte changed and its tag kept.
    let mut altered = bytes.clone();
    altered[3] ^= 0x01;
    // The real body signed with a guessed key.
    let mut guessed = body.to_vec();
    guessed.extend_from_slice(&Sha256::digest(body));

    assert_eq!(list_with(&app, token.clone()).await.expect("the real token"), 1);
    for (case, bad) in [
        ("pre-upgrade", b64(&pre_upgrade)),
        ("altered", b64(&altered)),
        ("guessed key", b64(&guessed)),
        ("truncated", token[..token.len() - 4].to_string()),
    ] {
        let status = list_with(&app, bad).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(status.message().starts_with("page_token"), "{case}: {}", status.message());
    }
}

#[tokio::test]
async fn page_tokens_outlive_a_restart_and_another_stores_tokens_are_refused() {
    if embedded_only("page_tokens_outlive_a_restart_and_another_stores_tokens_are_refused") {
        return;
    }
    let (app, _keys) = secured(|_| {}).await;
    let token = first_token(&app).await;
    let key_file: PathBuf = app.config.data_dir.join("page-token.key");
    let (other, _other_keys) = secured(|_| {}).await;
    first_token(&other).await;

    let restarted = app.restart().await;

    assert_eq!(list_with(&restarted, token.clone()).await.expect("after a restart"), 1);
    let foreign = list_with(&other, token).await.expect_err("another store's token");
    assert_eq!(foreign.code(), Code::InvalidArgument);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).expect("the secret file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_page_token_from_one_instance_is_accepted_by_another() {
    // On JetStream `new_client` reaches the second instance, which must hold the same secret.
    let (app, _keys) = secured(|_| {}).await;
    let token = first_token(&app).await;
    let mut other = app.new_client().await;

    let request = ListEventsRequest { page_token: token, limit: 5, ..Default::default() };
    let page = other.list_events(with_key(request, ADMIN)).await;

    let page = page.expect("the other instance accepts the token").into_inner();
    assert_eq!(page.data.len(), 2, "the rest of the listing");
}

// ---- 4: unsigned webhooks ----

#[tokio::test]
async fn with_keys_an_unsigned_webhook_on_loopback_is_refused_and_stores_nothing() {
    let (mut app, _keys) = secured(|_| {}).await;
    let body = json!({
        "id": "evt_unsigned_live", "object": "event", "type": "charge.succeeded",
        "created": 1_700_000_000, "livemode": true, "data": {"object": {"amount": 5}},
    });

    let reply = http().post(format!("{}/webhooks/stripe", app.http)).json(&body).send().await;

    let reply = reply.expect("POST");
    assert_eq!(reply.status(), 401);
    assert!(reply.text().await.unwrap().contains("--webhook-unsigned"));
    let listed = app.client.list_events(with_key(everything(), ADMIN)).await.expect("list");
    assert_eq!(listed.into_inner().total, 0, "nothing stored");
}

#[tokio::test]
async fn webhook_unsigned_refuses_to_start_for_an_unknown_or_signed_source() {
    for (unsigned, secret) in [("nosuch", None), ("stripe", Some("stripe=whsec_c2VjcmV0"))] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = eventsd::ServeConfig::with_data_dir(dir.path().join("data"));
        config.webhook_unsigned = vec![unsigned.into()];
        if let Some(secret) = secret {
            config.webhook_secrets = vec![eventsd::config::parse_webhook_secret(secret).unwrap()];
        }
        let listeners = eventsd::Listeners {
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let result = tokio::time::timeout(HANG_GUARD, eventsd::run(config, listeners, async {}))
            .await
            .expect("start-up ends");
        let err = result.expect_err(unsigned).to_string();
        assert!(err.contains("--webhook-unsigned"), "{err}");
    }
}

// ---- 5: connection cap and HTTP timeouts ----

/// Opens a TCP connection and sends the start of a request whose headers never end.
async fn unfinished(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: eventsd\r\nX-Slow: ").await;
    stream
}

/// Whether the server closes the connection (EOF, reset, or an answer) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(wait, stream.read(&mut buf)).await.is_ok()
}

fn http_addr(app: &TestApp) -> SocketAddr {
    app.http.trim_start_matches("http://").parse().expect("HTTP address")
}

async fn grpc_health(app: &TestApp) -> bool {
    let mut health = HealthClient::new(channel(app.addr).await);
    let check = health.check(HealthCheckRequest { service: String::new() });
    matches!(tokio::time::timeout(Duration::from_secs(5), check).await, Ok(Ok(_)))
}

#[tokio::test]
async fn slow_headers_are_cut_at_the_header_timeout_and_the_cap_refuses_the_rest_at_once() {
    let (app, _keys) = secured(|c| {
        c.max_connections = Some(8);
        c.http_header_timeout = Duration::from_secs(4);
    })
    .await;
    let addr = http_addr(&app);
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(unfinished(addr).await);
    }

    // The 12 beyond the cap are closed at once, the 8 within it held (checking all 20 takes
    // at most 8 × 150 ms, well inside the header timeout).
    let mut held = Vec::new();
    for mut stream in slow {
        if !closed_within(&mut stream, Duration::from_millis(150)).await {
            held.push(stream);
        }
    }
    assert_eq!(held.len(), 8, "the cap is 8");
    assert!(grpc_health(&app).await, "gRPC answers while HTTP is full");

    // The held ones are cut by the header timeout.
    for stream in &mut held {
        assert!(closed_within(stream, HANG_GUARD).await, "cut by the header timeout");
    }
    let healthz = http().get(format!("{}/healthz", app.http)).send().await.expect("healthz");
    assert_eq!(healthz.status(), 200);
}

#[tokio::test]
async fn a_body_that_never_finishes_is_408_after_the_body_timeout() {
    let (app, _keys) = secured(|c| c.http_body_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(http_addr(&app)).await.expect("connect");
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: eventsd\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\""
    );
    stream.write_all(head.as_bytes()).await.expect("send");

    let mut reply = vec![0u8; 4096];
    let read = tokio::time::timeout(HANG_GUARD, stream.read(&mut reply)).await;

    let n = read.expect("an answer within the hang guard").expect("read");
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("--http-body-timeout"), "{reply}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (app, _keys) = secured(|c| c.http_idle_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(http_addr(&app)).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: eventsd\r\n\r\n").await.expect("send");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n.expect("read")]).starts_with("HTTP/1.1 200"));

    let started = Instant::now();
    let after = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await;

    assert!(matches!(after, Ok(Ok(0)) | Ok(Err(_))), "closed: {after:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

// ---- 7: in-flight permits ----

#[tokio::test]
async fn keyless_calls_and_health_checks_that_never_finish_leave_the_permits_to_an_admin() {
    let (mut app, _keys) = secured(|c| c.max_in_flight = 4).await;
    let ch = channel(app.addr).await;
    // 32 health checks and 32 keyless publishes whose request bodies never end.
    let mut held = Vec::new();
    for path in ["/grpc.health.v1.Health/Check", "/events.v1.EventService/PublishEvent"] {
        for _ in 0..32 {
            let mut grpc = tonic::client::Grpc::new(ch.clone());
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
            held.push(tokio::spawn(async move {
                grpc.ready().await.expect("ready");
                let never = tokio_stream::pending::<HealthCheckRequest>();
                let codec = tonic_prost::ProstCodec::<HealthCheckRequest, ()>::default();
                grpc.client_streaming(Request::new(never), path, codec).await.map(drop)
            }));
        }
    }
    tokio::task::yield_now().await;

    let published =
        app.client.publish_event(with_key(event("charge.create"), ADMIN)).await.map(drop);
    let health = grpc_health(&app).await;

    assert!(published.is_ok(), "admin publish: {published:?}");
    assert!(health, "health answers");
    for call in held {
        call.abort();
    }
}

// ---- 8: query cost ----

#[tokio::test]
async fn a_wildcard_over_many_types_with_a_deep_offset_answers_exactly() {
    let app = crate::helpers::spawn_app().await;
    let mut client = app.client.clone();
    // 300 types; `attack.t1*` matches 111 of them (t1, t10–t19, t100–t199), more than a
    // listing merges stream by stream, so it walks time order once.
    let events: Vec<PublishEventRequest> =
        (0..600).map(|i| event(&format!("attack.t{}", i % 300))).collect();
    let stored = client
        .publish_events(eventsd::proto::PublishEventsRequest { events })
        .await
        .expect("publish 600 events over 300 types")
        .into_inner()
        .events;
    let matching: Vec<&str> = stored
        .iter()
        .filter(|e| e.r#type.starts_with("attack.t1"))
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(matching.len(), 222);

    let page = client
        .list_events(eventsd::proto::ListEventsRequest {
            types: vec!["attack.t1*".into()],
            offset: 150,
            limit: 100,
            ..crate::support::everything()
        })
        .await
        .expect("a deep page of a wildcard over 111 types")
        .into_inner();
    assert_eq!(page.total, 222);
    let ids: Vec<&str> = page.data.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, matching[150..].to_vec(), "oldest first (the default), after the first 150");
}

#[tokio::test]
async fn a_listing_past_its_deadline_is_deadline_exceeded_and_503_on_the_views() {
    if embedded_only("a_listing_past_its_deadline_is_deadline_exceeded_and_503_on_the_views") {
        return;
    }
    // A deadline already passed: any listing that must walk more than a few hundred entries
    // one by one is stopped; one that the index answers directly is not.
    let app = spawn_app_with(|c| c.list_deadline = Duration::ZERO).await;
    let mut client = app.client.clone();
    let events: Vec<PublishEventRequest> = (0..600).map(|_| event("charge.create")).collect();
    client
        .publish_events(eventsd::proto::PublishEventsRequest { events })
        .await
        .expect("publish 600");

    let newest = client.list_events(crate::support::everything()).await.expect("newest page");
    assert_eq!(newest.into_inner().total, 600, "totals come from counts, not a walk");

    // No event has this source: the total walks all 600 candidates.
    let walked = client
        .list_events(eventsd::proto::ListEventsRequest {
            source: "omise".into(),
            ..crate::support::everything()
        })
        .await
        .expect_err("a walk of 600 entries past its deadline");
    assert_eq!(walked.code(), Code::DeadlineExceeded, "{walked:?}");
    assert!(walked.message().contains("--list-deadline"), "{walked:?}");

    let view = http()
        .get(format!("{}/events?source=omise", app.http))
        .send()
        .await
        .expect("the view answers");
    assert_eq!(view.status().as_u16(), 503);
    let body: serde_json::Value = view.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "deadline_exceeded", "{body}");
}

// ---- 9 and 11: metrics ----

#[tokio::test]
async fn metrics_labels_stop_growing_at_metrics_max_types() {
    let (mut app, _keys) = secured(|c| c.metrics_max_types = 10).await;
    let events: Vec<PublishEventRequest> =
        (0..300).map(|i| event(&format!("attack.type{i}"))).collect();
    let batch = eventsd::proto::PublishEventsRequest { events };
    app.client.publish_events(with_key(batch, ADMIN)).await.expect("publish 300 types");

    let text = http()
        .get(format!("{}/metrics", app.http))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .unwrap();

    let series: Vec<&str> =
        text.lines().filter(|l| l.starts_with("eventsd_events_published_total{")).collect();
    assert_eq!(series.len(), 11, "10 types and other: {series:#?}");
    assert!(
        series.iter().any(|l| l.contains(r#"type="other""#) && l.ends_with(" 290")),
        "{series:#?}"
    );
}

#[tokio::test]
async fn with_keys_metrics_need_an_admin_key_and_metrics_listen_moves_them() {
    let (app, _keys) = secured(|_| {}).await;
    let scrape = |key: Option<&str>| {
        let mut request = http().get(format!("{}/metrics", app.http));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.expect("scrape").status().as_u16() }
    };
    assert_eq!(scrape(None).await, 401);
    assert_eq!(scrape(Some(ATTACKER)).await, 403);
    assert_eq!(scrape(Some(LIVE)).await, 403);
    assert_eq!(scrape(Some(ADMIN)).await, 200);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (moved, _keys) = secured(|c| c.metrics_listen = Some(port)).await;
    let main = http().get(format!("{}/metrics", moved.http)).bearer_auth(ADMIN).send().await;
    assert_eq!(main.unwrap().status(), 404, "not on the HTTP listener any more");
    let own = http().get(format!("http://{port}/metrics")).send().await.expect("scrape");
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("eventsd_durable_sequence"));
}

#[tokio::test]
async fn a_test_key_is_never_told_global_positions() {
    let (mut app, _keys) = secured(|_| {}).await;
    let test_event = |id: &str| PublishEventRequest { id: id.into(), ..event("charge.create") };
    app.client.publish_event(with_key(test_event("evt_t1"), ADMIN)).await.expect("t1");
    for i in 0..5 {
        let live = PublishEventRequest { id: format!("evt_l{i}"), ..secret_payout("x") };
        app.client.publish_event(with_key(live, ADMIN)).await.expect("live");
    }
    app.client.publish_event(with_key(test_event("evt_t2"), ADMIN)).await.expect("t2");
    for i in 5..9 {
        let live = PublishEventRequest { id: format!("evt_l{i}"), ..secret_payout("x") };
        app.client.publish_event(with_key(live, ADMIN)).await.expect("live");
    }

    // SubscribeEvents beyond the end: the message does not quote the newest sequence (11).
    let beyond = SubscribeEventsRequest {
        start: Some(eventsd::proto::subscribe_events_request::Start::AfterSequence(500)),
        ..Default::default()
    };
    let status = app.client.subscribe_events(with_key(beyond, ATTACKER)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(!status.message().contains("11"), "{}", status.message());

    // CloudEvents polls: the next position is the key's own last event, never a live one.
    let poll = |after: u64| {
        http()
            .get(format!("{}/cloudevents?after_sequence={after}&limit=1", app.http))
            .bearer_auth(ATTACKER)
            .send()
    };
    let next = |reply: &reqwest::Response| -> u64 {
        reply.headers()["eventsd-next-after"].to_str().unwrap().parse().unwrap()
    };
    let first = poll(0).await.expect("poll");
    assert_eq!(next(&first), 1, "after t1");
    let second = poll(1).await.expect("poll");
    assert_eq!(next(&second), 7, "after t2, not after the live events between");
    let third = poll(7).await.expect("poll");
    assert_eq!(next(&third), 7, "no step over the live events after t2");
    assert_eq!(third.text().await.unwrap(), "[]");
}

// ---- 12: secrets in flags ----

#[test]
fn help_and_a_bad_store_value_print_no_secret() {
    let binary = env!("CARGO_BIN_EXE_eventsd");
    let secrets = [
        "hunter2natspass",
        "whsec_c2VjcmV0aHVudGVy",
        "natscert-path",
        "natskey-path",
        "natscreds-path",
    ];
    let help = std::process::Command::new(binary)
        .arg("--help")
        .env("EVENTSD_STORE", "nats://eventsd:hunter2natspass@127.0.0.1:4222")
        .env("EVENTSD_NATS_TLS_CERT", "/run/secrets/natscert-path.pem")
        .env("EVENTSD_NATS_TLS_KEY", "/run/secrets/natskey-path.pem")
        .env("EVENTSD_NATS_CREDS", "/run/secrets/natscreds-path.creds")
        .env("EVENTSD_WEBHOOK_SECRET", "stripe=whsec_c2VjcmV0aHVudGVy")
        .output()
        .expect("run --help");
    let bad = std::process::Command::new(binary)
        .args(["--store", "nats//eventsd:hunter2natspass@127.0.0.1:4222"])
        .output()
        .expect("run with a bad --store");

    let help_text = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.status.success() && help_text.contains("--store"), "{help_text}");
    let bad_text = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(!bad.status.success() && bad_text.contains("--store"), "{bad_text}");
    for secret in secrets {
        assert!(!help_text.contains(secret), "--help shows {secret}");
        assert!(!bad_text.contains(secret), "the error shows {secret}: {bad_text}");
    }
}
