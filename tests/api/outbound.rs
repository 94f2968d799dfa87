//! Outbound webhooks (WebhookService and its HTTP routes) against real HTTP receivers on
//! loopback. Each receiver verifies every Standard Webhooks signature with its own HMAC code
//! (hmac + sha2 + base64 here, not eventsd's signer) and records what it got.
//!
//! The retry schedule is shortened through the config, so retries happen in milliseconds; the
//! waits are bounded by the hang guard and never assert on speed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use eventsd::proto::webhook_service_client::WebhookServiceClient;
use eventsd::proto::{
    CreateEndpointRequest, DeleteEndpointRequest, Delivery, DeliveryStatus, Endpoint,
    GetEndpointRequest, ListDeliveriesRequest, ListEndpointsRequest, PublishEventRequest,
    RetryDeliveryRequest, RotateEndpointSecretRequest, UpdateEndpointRequest,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value as Json};
use sha2::Sha256;
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::{embedded_only, spawn_app_with, TestApp};
use crate::support::{event, publish, publish_batch, HANG_GUARD};

type Webhooks = WebhookServiceClient<Channel>;

/// `--delivery-lease` in these tests: a takeover after an instance stops takes one of these.
const LEASE: Duration = Duration::from_secs(2);

/// What a receiver answers.
#[derive(Clone)]
enum Behaviour {
    /// 200.
    Ok,
    /// This status, every time.
    Status(u16),
    /// 500 for the first `n` requests of each event, then 200.
    FailFirst(usize),
    /// Never answers until released, then 200.
    Hang(Arc<Notify>),
    /// Hangs on the first request of each event (until the client gives up), then 200.
    HangFirst,
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    webhook_id: String,
    timestamp: i64,
    /// Which of the receiver's known secrets verified one of the signatures.
    verified_by: Vec<String>,
    body: Json,
    answered: u16,
}

struct ReceiverState {
    behaviour: Mutex<Behaviour>,
    secrets: Mutex<Vec<String>>,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// An HTTP receiver on loopback.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

/// HMAC-SHA256 of `id.timestamp.body`, keyed with the secret's base64 after `whsec_`.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let signatures: Vec<String> = header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,").map(str::to_owned))
        .collect();
    let secrets = state.secrets.lock().unwrap().clone();
    let verified_by: Vec<String> = secrets
        .iter()
        .filter(|secret| {
            let expected = expected_signature(secret, &id, &timestamp, &body);
            signatures.contains(&expected)
        })
        .cloned()
        .collect();
    let earlier = state.received.lock().unwrap().iter().filter(|r| r.webhook_id == id).count();
    let behaviour = state.behaviour.lock().unwrap().clone();
    let answer = match behaviour {
        Behaviour::Ok => 200,
        Behaviour::Status(code) => code,
        Behaviour::FailFirst(n) => {
            if earlier < n {
                500
            } else {
                200
            }
        }
        Behaviour::Hang(release) => {
            release.notified().await;
            200
        }
        Behaviour::HangFirst => {
            if earlier == 0 {
                state.received.lock().unwrap().push(Received {
                    webhook_id: id.clone(),
                    timestamp: timestamp.parse().unwrap_or_default(),
                    verified_by: verified_by.clone(),
                    body: serde_json::from_slice(&body).unwrap_or(Json::Null),
                    answered: 0,
                });
                state.arrived.notify_waiters();
                std::future::pending::<()>().await;
            }
            200
        }
    };
    state.received.lock().unwrap().push(Received {
        webhook_id: id,
        timestamp: timestamp.parse().unwrap_or_default(),
        verified_by,
        body: serde_json::from_slice(&body).unwrap_or(Json::Null),
        answered: answer,
    });
    state.arrived.notify_waiters();
    StatusCode::from_u16(answer).unwrap_or(StatusCode::OK)
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr: SocketAddr = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState {
            behaviour: Mutex::new(behaviour),
            secrets: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let app = Router::new().route("/hook", post(receive)).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url: format!("http://{addr}/hook"), state }
    }

    fn trust(&self, secret: &str) {
        self.state.secrets.lock().unwrap().push(secret.to_owned());
    }

    fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The distinct event ids answered with a 2xx.
    fn delivered(&self) -> HashSet<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| r.webhook_id)
            .collect()
    }

    /// Waits (bounded) until `done` holds for what arrived.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let wait = async {
            loop {
                let arrived = self.state.arrived.notified();
                if done(&self.received()) {
                    return;
                }
                // A bounded poll as well as the notification, so a check that depends on
                // eventsd's state (not a new request) is also re-evaluated.
                let _ = tokio::time::timeout(Duration::from_millis(50), arrived).await;
            }
        };
        if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
            panic!("receiver: {what} did not happen; got {:#?}", self.received());
        }
    }
}

/// A server that may deliver to loopback over plain http, retrying quickly.
async fn app(schedule: &str) -> TestApp {
    app_timing(schedule, Duration::from_millis(500)).await
}

/// [`app`] with this `--delivery-timeout`.
async fn app_timing(schedule: &str, timeout: Duration) -> TestApp {
    let schedule = schedule.to_owned();
    spawn_app_with(move |c| {
        c.delivery.allow_private = true;
        c.delivery.allow_http = true;
        c.delivery.timeout = timeout;
        c.delivery.lease = LEASE;
        c.delivery.retry_schedule = eventsd::delivery::schedule::RetrySchedule::parse(
            "--delivery-retry-schedule",
            &schedule,
        )
        .expect("schedule");
    })
    .await
}

async fn webhooks(app: &TestApp) -> Webhooks {
    WebhookServiceClient::connect(format!("http://{}", app.addr)).await.expect("connect")
}

async fn create(
    client: &mut Webhooks,
    receiver: &Receiver,
    request: CreateEndpointRequest,
) -> Endpoint {
    let endpoint = client
        .create_endpoint(CreateEndpointRequest { url: receiver.url.clone(), ..request })
        .await
        .expect("create endpoint")
        .into_inner();
    receiver.trust(&endpoint.secret);
    endpoint
}

async fn deliveries(
    client: &mut Webhooks,
    endpoint: &str,
    status: DeliveryStatus,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_deliveries(ListDeliveriesRequest {
                endpoint_id: endpoint.to_owned(),
                status: status as i32,
                limit: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list deliveries")
            .into_inner();
        out.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Waits (bounded) until the endpoint's deliveries satisfy `done`.
async fn wait_deliveries(
    client: &mut Webhooks,
    endpoint: &str,
    what: &str,
    done: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let all = deliveries(client, endpoint, DeliveryStatus::Unspecified).await;
        if done(&all) {
            return all;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen: {all:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn matching_events_are_delivered_signed_and_others_are_not() {
    let mut app = app("0s,20ms,20ms").await;
    let before = publish(&mut app.client, event("charge.create")).await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(
        &mut client,
        &receiver,
        CreateEndpointRequest { types: vec!["charge.*".into()], ..Default::default() },
    )
    .await;
    assert!(
        endpoint.id.starts_with("ep_") && endpoint.secret.starts_with("whsec_"),
        "{endpoint:?}"
    );
    assert_eq!(endpoint.max_in_flight, 16);
    let published = publish_batch(
        &mut app.client,
        vec![event("charge.create"), event("refund.create"), event("charge.complete")],
    )
    .await;
    receiver.wait_for("two charge events", |r| r.len() >= 2).await;
    let got = receiver.received();
    let ids: HashSet<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids, HashSet::from([published[0].id.as_str(), published[2].id.as_str()]));
    assert!(!ids.contains(before.id.as_str()), "an event from before the endpoint was delivered");
    for r in &got {
        assert_eq!(r.verified_by, vec![endpoint.secret.clone()], "signature of {r:?}");
        assert_eq!(r.body["id"], json!(r.webhook_id), "the body is the event JSON");
        assert!(r.body["type"].as_str().unwrap().starts_with("charge."));
        assert!((r.timestamp - chrono::Utc::now().timestamp()).abs() < 600);
    }
    // A later matching event arrives; the refund never does.
    let last = publish(&mut app.client, event("charge.update")).await;
    receiver.wait_for("the later charge", |r| r.iter().any(|x| x.webhook_id == last.id)).await;
    assert!(!receiver.received().iter().any(|r| r.webhook_id == published[1].id));
    let done = wait_deliveries(&mut client, &endpoint.id, "three succeeded deliveries", |d| {
        d.len() == 3 && d.iter().all(|d| d.status == DeliveryStatus::Succeeded as i32)
    })
    .await;
    assert!(done.iter().all(|d| d.attempts.len() == 1 && d.attempts[0].http_status == 200));
    assert_eq!(done[0].id, format!("dlv_{}_{}", &endpoint.id[3..], done[0].sequence));
}

#[tokio::test]
async fn a_receiver_failing_twice_then_answering_shows_three_attempts() {
    let mut app = app("0s,10ms,10ms,10ms").await;
    let receiver = Receiver::start(Behaviour::FailFirst(2)).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    let published = publish(&mut app.client, event("charge.create")).await;
    let all = wait_deliveries(&mut client, &endpoint.id, "success after two failures", |d| {
        d.first().is_some_and(|d| d.status == DeliveryStatus::Succeeded as i32)
    })
    .await;
    let statuses: Vec<u32> = all[0].attempts.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    assert_eq!(all[0].attempts[0].error, "HTTP 500");
    assert!(all[0].attempts[2].error.is_empty());
    assert_eq!(all[0].event_id, published.id);
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let mut app = app("0s,10ms").await;
    let receiver = Receiver::start(Behaviour::HangFirst).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    publish(&mut app.client, event("charge.create")).await;
    let all = wait_deliveries(&mut client, &endpoint.id, "success after a timeout", |d| {
        d.first().is_some_and(|d| d.status == DeliveryStatus::Succeeded as i32)
    })
    .await;
    let attempts = &all[0].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].http_status, attempts[0].error.as_str()), (0, "timeout"));
    assert_eq!(attempts[1].http_status, 200);
}

#[tokio::test]
async fn an_exhausted_schedule_fails_the_delivery_and_retry_delivery_tries_again() {
    let mut app = app("0s,10ms").await;
    let receiver = Receiver::start(Behaviour::Status(503)).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    publish(&mut app.client, event("charge.create")).await;
    let all = wait_deliveries(&mut client, &endpoint.id, "a failed delivery", |d| {
        d.first().is_some_and(|d| d.status == DeliveryStatus::Failed as i32)
    })
    .await;
    assert_eq!(all[0].attempts.len(), 2);
    assert_eq!(all[0].error, "HTTP 503");
    receiver.set(Behaviour::Ok);
    let retried = client
        .retry_delivery(RetryDeliveryRequest { id: all[0].id.clone() })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.status, DeliveryStatus::Pending as i32);
    let all = wait_deliveries(&mut client, &endpoint.id, "the retried delivery", |d| {
        d.first().is_some_and(|d| d.status == DeliveryStatus::Succeeded as i32)
    })
    .await;
    assert_eq!(all[0].attempts.len(), 3);
    let missing = client
        .retry_delivery(RetryDeliveryRequest { id: format!("dlv_{}_999", &endpoint.id[3..]) })
        .await
        .expect_err("no such delivery");
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = client
        .retry_delivery(RetryDeliveryRequest { id: "dlv_x".into() })
        .await
        .expect_err("bad id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().starts_with("id:"), "{}", malformed.message());
}

#[tokio::test]
async fn a_hanging_and_a_failing_endpoint_never_delay_a_healthy_one() {
    // Attempts to the hanging receiver would time out only after the test.
    let mut app = app_timing("0s,1h", HANG_GUARD * 2).await;
    let release = Arc::new(Notify::new());
    let hanging = Receiver::start(Behaviour::Hang(release.clone())).await;
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let healthy = Receiver::start(Behaviour::Ok).await;
    let mut client = webhooks(&app).await;
    let hang_ep = create(
        &mut client,
        &hanging,
        CreateEndpointRequest { max_in_flight: 4, ..Default::default() },
    )
    .await;
    let fail_ep = create(&mut client, &failing, CreateEndpointRequest::default()).await;
    for _ in 0..10 {
        publish_batch(&mut app.client, (0..100).map(|_| event("charge.create")).collect()).await;
    }
    wait_deliveries(&mut client, &fail_ep.id, "1,000 pending after a failed attempt", |d| {
        d.len() == 1000
            && d.iter().all(|d| d.status == DeliveryStatus::Pending as i32 && d.attempts.len() == 1)
    })
    .await;
    let healthy_ep = create(&mut client, &healthy, CreateEndpointRequest::default()).await;
    let new =
        publish_batch(&mut app.client, (0..100).map(|_| event("refund.create")).collect()).await;
    let wanted: HashSet<String> = new.iter().map(|e| e.id.clone()).collect();
    healthy.wait_for("all 100 new events", |_| healthy.delivered().is_superset(&wanted)).await;
    // The hanging endpoint still holds its slots: nothing it got has been answered.
    assert!(hanging.received().is_empty(), "the hanging receiver answered before release");
    let pending = deliveries(&mut client, &hang_ep.id, DeliveryStatus::Pending).await;
    assert_eq!(pending.len(), 1100, "the hanging endpoint's backlog is listed as pending");
    assert!(pending.iter().filter(|d| !d.attempts.is_empty()).count() == 0);
    assert_eq!(healthy.delivered().len(), 100);
    drop(healthy_ep);
    release.notify_waiters();
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_overlap() {
    let mut app = app("0s").await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    let rotated = client
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: endpoint.id.clone(),
            secret: String::new(),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_ne!(rotated.secret, endpoint.secret);
    assert!(rotated.secret.starts_with("whsec_"));
    receiver.trust(&rotated.secret);
    let published = publish(&mut app.client, event("charge.create")).await;
    receiver.wait_for("the delivery", |r| !r.is_empty()).await;
    let got = &receiver.received()[0];
    assert_eq!(got.webhook_id, published.id);
    let both: HashSet<String> = got.verified_by.iter().cloned().collect();
    assert_eq!(both, HashSet::from([endpoint.secret.clone(), rotated.secret.clone()]));
    // Get never shows the secret.
    let read = client
        .get_endpoint(GetEndpointRequest { id: endpoint.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(read.secret.is_empty());
}

#[tokio::test]
async fn disabling_holds_deliveries_and_enabling_resumes_them() {
    let mut app = app("0s").await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    let mask = |paths: &[&str]| {
        Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
    };
    let disabled = client
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: endpoint.id.clone(),
                disabled: true,
                ..Default::default()
            }),
            update_mask: mask(&["disabled"]),
        })
        .await
        .expect("disable")
        .into_inner();
    assert!(disabled.disabled);
    assert_eq!(disabled.url, endpoint.url, "the mask kept every other field");
    let held =
        publish_batch(&mut app.client, (0..5).map(|_| event("charge.create")).collect()).await;
    let pending = deliveries(&mut client, &endpoint.id, DeliveryStatus::Pending).await;
    assert_eq!(pending.len(), 5, "untried events are listed as pending");
    assert!(receiver.received().is_empty());
    client
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: endpoint.id.clone(),
                disabled: false,
                ..Default::default()
            }),
            update_mask: mask(&["disabled"]),
        })
        .await
        .expect("enable");
    let wanted: HashSet<String> = held.iter().map(|e| e.id.clone()).collect();
    receiver.wait_for("the held events", |_| receiver.delivered() == wanted).await;
    let bad_mask = client
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint { id: endpoint.id.clone(), ..Default::default() }),
            update_mask: mask(&["secret"]),
        })
        .await
        .expect_err("secret is not updatable");
    assert_eq!(bad_mask.code(), Code::InvalidArgument);
    assert!(bad_mask.message().starts_with("update_mask:"), "{}", bad_mask.message());
}

#[tokio::test]
async fn deleting_an_endpoint_fails_its_pending_deliveries() {
    let mut app = app("0s,1h").await;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    publish_batch(&mut app.client, (0..3).map(|_| event("charge.create")).collect()).await;
    wait_deliveries(&mut client, &endpoint.id, "three pending", |d| {
        d.len() == 3 && d.iter().all(|d| d.attempts.len() == 1)
    })
    .await;
    client
        .delete_endpoint(DeleteEndpointRequest { id: endpoint.id.clone() })
        .await
        .expect("delete");
    let all = deliveries(&mut client, &endpoint.id, DeliveryStatus::Unspecified).await;
    assert_eq!(all.len(), 3);
    assert!(
        all.iter()
            .all(|d| d.status == DeliveryStatus::Failed as i32 && d.error == "endpoint deleted"),
        "{all:#?}"
    );
    let gone = client
        .get_endpoint(GetEndpointRequest { id: endpoint.id.clone() })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    let listed = client.list_endpoints(ListEndpointsRequest {}).await.unwrap().into_inner();
    assert!(listed.endpoints.is_empty());
}

#[tokio::test]
async fn an_event_removed_by_retention_before_delivery_is_expired() {
    if embedded_only("retention") {
        return;
    }
    let mut app = spawn_app_with(|c| {
        c.delivery.allow_private = true;
        c.delivery.allow_http = true;
        c.delivery.retry_schedule =
            eventsd::delivery::schedule::RetrySchedule::parse("s", "0s,1h,1h").expect("schedule");
        c.max_events = Some(2);
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(
        &mut client,
        &receiver,
        CreateEndpointRequest { types: vec!["charge.create".into()], ..Default::default() },
    )
    .await;
    let first = publish(&mut app.client, event("charge.create")).await;
    receiver.wait_for("the first attempt", |r| !r.is_empty()).await;
    // Three more events push the first one out (--max-events 2); then its retry is asked for.
    publish_batch(&mut app.client, (0..3).map(|_| event("other.type")).collect()).await;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while app
        .client
        .get_event(eventsd::proto::GetEventRequest { id: first.id.clone(), livemode: None })
        .await
        .is_ok()
    {
        assert!(tokio::time::Instant::now() < deadline, "retention never removed the event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = deliveries(&mut client, &endpoint.id, DeliveryStatus::Unspecified).await;
    client.retry_delivery(RetryDeliveryRequest { id: all[0].id.clone() }).await.expect("retry");
    let all = wait_deliveries(&mut client, &endpoint.id, "the expired delivery", |d| {
        d.iter().any(|d| d.event_id == first.id && d.status == DeliveryStatus::Failed as i32)
    })
    .await;
    let expired = all.iter().find(|d| d.event_id == first.id).unwrap();
    assert_eq!(expired.error, "expired");
    assert_eq!(expired.attempts.len(), 1);
    assert_eq!(receiver.received().len(), 1, "nothing was sent for the removed event");
}

#[tokio::test]
async fn endpoint_requests_are_validated_and_need_the_admin_scope() {
    let app = spawn_app_with(|_| {}).await;
    let mut client = webhooks(&app).await;
    let refused = |url: &str| CreateEndpointRequest { url: url.into(), ..Default::default() };
    for (url, why) in [
        ("ftp://example.com/hook", "scheme"),
        ("https://user:pw@example.com/hook", "userinfo"),
        ("http://example.com/hook", "http without --delivery-allow-http"),
        ("https://127.0.0.1/hook", "loopback without --delivery-allow-private"),
        ("https://10.1.2.3/hook", "private"),
        ("https://localhost/hook", "localhost"),
        ("", "empty"),
    ] {
        let err = client.create_endpoint(refused(url)).await.expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert!(err.message().starts_with("url:"), "{why}: {}", err.message());
    }
    let long = format!("https://example.com/{}", "a".repeat(2100));
    assert_eq!(
        client.create_endpoint(refused(&long)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let ok = "https://example.com/hook";
    for (request, field) in [
        (CreateEndpointRequest { max_in_flight: 5000, ..refused(ok) }, "max_in_flight:"),
        (CreateEndpointRequest { format: 99, ..refused(ok) }, "format:"),
        (CreateEndpointRequest { secret: "nope".into(), ..refused(ok) }, "secret:"),
        (CreateEndpointRequest { types: vec!["bad type".into()], ..refused(ok) }, "types[0]:"),
    ] {
        let err = client.create_endpoint(request).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().starts_with(field), "{field}: {}", err.message());
    }
    let err = client.get_endpoint(GetEndpointRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!((err.code(), err.message().starts_with("id:")), (Code::InvalidArgument, true));
    let err = client
        .get_endpoint(GetEndpointRequest { id: "ep_aaaaaaaaaaaaaaaaaaaa".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.list_deliveries(ListDeliveriesRequest::default()).await.unwrap_err();
    assert!(err.message().starts_with("endpoint_id:"), "{}", err.message());
    // A public https endpoint is accepted (nothing is sent to it while no event matches).
    let created = client
        .create_endpoint(CreateEndpointRequest { types: vec!["never.*".into()], ..refused(ok) })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.url, ok);
}

#[tokio::test]
async fn endpoints_need_an_admin_key_and_deliver_only_the_creators_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[key]]\nname = \"ops-test\"\nkey = \"sk_admin_test_1\"\nscopes = [\"admin\"]\nmode = \"test\"\n\n\
         [[key]]\nname = \"reader\"\nkey = \"sk_read_all_1\"\nscopes = [\"read\"]\nmode = \"all\"\n\n\
         [[key]]\nname = \"ops\"\nkey = \"sk_admin_all_1\"\nscopes = [\"admin\"]\nmode = \"all\"\n",
    )
    .unwrap();
    let mut app = spawn_app_with(|c| {
        c.api_keys = Some(keys.clone());
        c.delivery.allow_private = true;
        c.delivery.allow_http = true;
    })
    .await;
    let channel =
        Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await.unwrap();
    let with_key = |key: &'static str| {
        WebhookServiceClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
            Ok(r)
        })
    };
    let receiver = Receiver::start(Behaviour::Ok).await;
    let err = with_key("sk_read_all_1")
        .create_endpoint(CreateEndpointRequest { url: receiver.url.clone(), ..Default::default() })
        .await
        .expect_err("read key");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = with_key("sk_admin_test_1")
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url.clone(),
            livemode: Some(true),
            ..Default::default()
        })
        .await
        .expect_err("a test key asking for live events");
    assert_eq!(err.code(), Code::PermissionDenied);
    let endpoint = with_key("sk_admin_test_1")
        .create_endpoint(CreateEndpointRequest { url: receiver.url.clone(), ..Default::default() })
        .await
        .expect("create")
        .into_inner();
    receiver.trust(&endpoint.secret);
    let mut publisher = eventsd::proto::event_service_client::EventServiceClient::with_interceptor(
        channel.clone(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", "Bearer sk_admin_all_1".parse().unwrap());
            Ok(r)
        },
    );
    let live = publisher
        .publish_event(PublishEventRequest { livemode: true, ..event("charge.create") })
        .await
        .unwrap()
        .into_inner();
    let test = publisher.publish_event(event("charge.create")).await.unwrap().into_inner();
    receiver.wait_for("the test event", |r| r.iter().any(|x| x.webhook_id == test.id)).await;
    assert!(
        !receiver.received().iter().any(|r| r.webhook_id == live.id),
        "a live event reached a test key's endpoint"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_http_routes_manage_endpoints_and_deliveries() {
    let mut app = app("0s").await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/endpoints", app.http))
        .json(&json!({"url": receiver.url, "types": ["charge.*"], "description": "billing", "maxInFlight": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Json = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    receiver.trust(&secret);
    assert_eq!(created["maxInFlight"], 4);
    assert_eq!(created["format"], "ENDPOINT_FORMAT_EVENT_JSON");
    let listed: Json =
        http.get(format!("{}/endpoints", app.http)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["endpoints"][0]["id"], json!(id));
    assert!(listed["endpoints"][0].get("secret").is_none(), "a listing shows no secret");
    let patched = http
        .patch(format!("{}/endpoints/{id}", app.http))
        .json(&json!({"description": "billing v2", "format": "ENDPOINT_FORMAT_CLOUDEVENT_JSON"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Json = patched.json().await.unwrap();
    assert_eq!(
        (patched["description"].as_str(), patched["types"][0].as_str()),
        (Some("billing v2"), Some("charge.*"))
    );
    let published = publish(&mut app.client, event("charge.create")).await;
    receiver.wait_for("a CloudEvent", |r| !r.is_empty()).await;
    let got = &receiver.received()[0];
    assert_eq!(got.body["id"], json!(published.id));
    assert_eq!(got.body["specversion"], "1.0", "the CloudEvents format: {}", got.body);
    assert_eq!(got.verified_by, vec![secret]);
    let page: Json = http
        .get(format!("{}/endpoints/{id}/deliveries?status=succeeded", app.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deliveries = page["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{page}");
    assert_eq!(deliveries[0]["eventId"], json!(published.id));
    assert_eq!(deliveries[0]["status"], "DELIVERY_STATUS_SUCCEEDED");
    assert_eq!(deliveries[0]["attempts"][0]["httpStatus"], 200);
    let delivery_id = deliveries[0]["id"].as_str().unwrap();
    let retried =
        http.post(format!("{}/deliveries/{delivery_id}/retry", app.http)).send().await.unwrap();
    assert_eq!(retried.status(), 200);
    receiver.wait_for("the retried delivery", |r| r.len() == 2).await;
    for (method, path, status) in [
        ("GET", "/endpoints/nope".to_string(), 404),
        ("GET", "/endpoints/ep_aaaaaaaaaaaaaaaaaaaa".to_string(), 404),
        ("POST", "/deliveries/nope/retry".to_string(), 404),
        ("GET", format!("/endpoints/{id}/deliveries?status=maybe"), 422),
        ("GET", format!("/endpoints/{id}/deliveries?limit=5000"), 422),
    ] {
        let response = http
            .request(method.parse().unwrap(), format!("{}{path}", app.http))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let body: Json = response.json().await.unwrap();
        assert_eq!(body["object"], "error", "{body}");
    }
    let bad = http
        .post(format!("{}/endpoints", app.http))
        .json(&json!({"url": "ftp://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.json::<Json>().await.unwrap()["message"].as_str().unwrap().starts_with("url:"));
    let deleted = http.delete(format!("{}/endpoints/{id}", app.http)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        http.get(format!("{}/endpoints/{id}", app.http)).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn endpoints_and_pending_deliveries_survive_a_restart() {
    let mut app = app("0s,50ms").await;
    let receiver = Receiver::start(Behaviour::Status(503)).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    let published =
        publish_batch(&mut app.client, (0..20).map(|_| event("charge.create")).collect()).await;
    receiver.wait_for("a first attempt", |r| !r.is_empty()).await;
    let mut app = app.restart().await;
    receiver.set(Behaviour::Ok);
    let wanted: HashSet<String> = published.iter().map(|e| e.id.clone()).collect();
    receiver.wait_for("every event after the restart", |_| receiver.delivered() == wanted).await;
    let mut client = webhooks(&app).await;
    let read = client
        .get_endpoint(GetEndpointRequest { id: endpoint.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.url, endpoint.url);
    app.stop().await;
}

#[tokio::test]
async fn replay_redelivers_and_deliveries_list_by_event_and_metrics_count_them() {
    let mut app = app("0s").await;
    let receiver = Receiver::start(Behaviour::Ok).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    let published =
        publish_batch(&mut app.client, (0..3).map(|_| event("charge.create")).collect()).await;
    receiver.wait_for("three deliveries", |r| r.len() == 3).await;
    let replayed = client
        .replay_endpoint(eventsd::proto::ReplayEndpointRequest {
            endpoint_id: endpoint.id.clone(),
            start: Some(eventsd::proto::replay_endpoint_request::Start::AfterSequence(
                published[0].sequence,
            )),
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replayed.id, endpoint.id);
    receiver.wait_for("the two later events again", |r| r.len() == 5).await;
    let again: Vec<String> =
        receiver.received()[3..].iter().map(|r| r.webhook_id.clone()).collect();
    let later: HashSet<String> = published[1..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(again.into_iter().collect::<HashSet<_>>(), later);
    // The receiver sees an attempt before its outcome is stored: wait for the records.
    wait_deliveries(&mut client, &endpoint.id, "the replayed attempts recorded", |d| {
        d.iter().filter(|d| d.attempts.len() == 2).count() == 2
    })
    .await;
    let one = client
        .list_deliveries(ListDeliveriesRequest {
            endpoint_id: endpoint.id.clone(),
            event_id: published[2].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.deliveries.len(), 1);
    let delivery = &one.deliveries[0];
    assert_eq!(
        (delivery.event_id.as_str(), delivery.attempts.len()),
        (published[2].id.as_str(), 2)
    );
    let too_far = client
        .replay_endpoint(eventsd::proto::ReplayEndpointRequest {
            endpoint_id: endpoint.id.clone(),
            start: Some(eventsd::proto::replay_endpoint_request::Start::AfterSequence(1_000)),
        })
        .await
        .expect_err("beyond the newest sequence");
    assert_eq!(too_far.code(), Code::OutOfRange);
    // Each instance counts the deliveries it made (on JetStream, whichever held the endpoint).
    let series = format!(
        "eventsd_webhook_deliveries_total{{endpoint=\"{}\",status=\"succeeded\"}} ",
        endpoint.id
    );
    let mut counted = 0.0;
    for http in app.all_http() {
        let metrics = reqwest::get(format!("{http}/metrics")).await.unwrap().text().await.unwrap();
        assert!(!metrics.contains(&endpoint.secret), "a secret in the metrics");
        counted += metrics
            .lines()
            .filter_map(|l| l.strip_prefix(series.as_str()))
            .map(|v| v.trim().parse::<f64>().expect("a count"))
            .sum::<f64>();
    }
    assert_eq!(counted, 5.0, "{series}");
}

#[tokio::test]
async fn an_endpoint_failing_past_disable_after_is_disabled_and_resumes_when_enabled() {
    let mut app = spawn_app_with(|c| {
        c.delivery.allow_private = true;
        c.delivery.allow_http = true;
        c.delivery.retry_schedule =
            eventsd::delivery::schedule::RetrySchedule::parse("s", "0s,20ms,20ms,20ms").unwrap();
        c.delivery.disable_after = Duration::from_millis(1);
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let mut client = webhooks(&app).await;
    let endpoint = create(&mut client, &receiver, CreateEndpointRequest::default()).await;
    let published = publish(&mut app.client, event("charge.create")).await;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let read = client
            .get_endpoint(GetEndpointRequest { id: endpoint.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if read.disabled {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = deliveries(&mut client, &endpoint.id, DeliveryStatus::Pending).await;
    assert_eq!(pending.len(), 1, "the delivery waits while the endpoint is disabled: {pending:?}");
    receiver.set(Behaviour::Ok);
    client
        .update_endpoint(UpdateEndpointRequest {
            endpoint: Some(Endpoint {
                id: endpoint.id.clone(),
                disabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
        })
        .await
        .expect("enable");
    receiver
        .wait_for("the delivery after enabling", |_| receiver.delivered().contains(&published.id))
        .await;
}

/// What the overlap receiver saw: requests in flight and finished per (endpoint path, event
/// id), and every moment two were in flight at once.
#[derive(Default)]
struct Overlaps {
    in_flight: std::collections::HashMap<(String, String), usize>,
    answered: std::collections::HashMap<(String, String), usize>,
    overlaps: Vec<(String, String)>,
}

/// Counts a request out of flight however it ends (answered, or dropped with its connection).
struct InFlight(Arc<Mutex<Overlaps>>, (String, String));

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.0.lock().unwrap().in_flight.get_mut(&self.1) {
            *n -= 1;
        }
    }
}

/// Holds each request 20 ms (so overlaps would be seen), refuses the first request of each
/// (endpoint, event) with 500 so retries are always due, and answers later ones with 200.
async fn overlap_receive(
    State(seen): State<Arc<Mutex<Overlaps>>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = (path, id.to_owned());
    let first = {
        let mut seen = seen.lock().unwrap();
        let n = seen.in_flight.entry(key.clone()).or_default();
        *n += 1;
        if *n > 1 {
            seen.overlaps.push(key.clone());
        }
        !seen.answered.contains_key(&key)
    };
    let _in_flight = InFlight(seen.clone(), key.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    *seen.lock().unwrap().answered.entry(key).or_default() += 1;
    if first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_attempt_one_delivery_at_once_and_a_stopped_one_hands_over() {
    if crate::helpers::jetstream_urls().is_none() {
        eprintln!(
            "two instances: needs EVENTSD_TEST_STORE (JetStream); skipped on the embedded store"
        );
        return;
    }
    let seen = Arc::new(Mutex::new(Overlaps::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let base = format!("http://{}/hook", listener.local_addr().unwrap());
    let router =
        Router::new().route("/hook/{path}", post(overlap_receive)).with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut app = app("0s,10ms,10ms,10ms,10ms,10ms").await;
    let peer = app.peer_addr().expect("two instances on JetStream");
    let mut here = webhooks(&app).await;
    let mut there = WebhookServiceClient::connect(format!("http://{peer}")).await.unwrap();
    // Six endpoints, created through both instances; whichever takes an endpoint's lease
    // delivers it.
    let mut endpoints = Vec::new();
    for n in 0..6 {
        let client = if n % 2 == 0 { &mut here } else { &mut there };
        let request = CreateEndpointRequest {
            url: format!("{base}/{n}"),
            max_in_flight: 4,
            ..Default::default()
        };
        endpoints.push(client.create_endpoint(request).await.expect("create").into_inner());
    }
    let mut wanted = HashSet::new();
    for _ in 0..2 {
        let events =
            publish_batch(&mut app.client, (0..10).map(|_| event("charge.create")).collect()).await;
        wanted.extend(events.into_iter().map(|e| e.id));
    }
    // Mid-way (attempts and retries under way on both instances), the first instance stops;
    // the second takes its endpoints over and delivers everything.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while seen.lock().unwrap().answered.len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "no attempts began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop_first().await;
    let mut publisher = app.new_client().await;
    for _ in 0..2 {
        let events =
            publish_batch(&mut publisher, (0..10).map(|_| event("charge.create")).collect()).await;
        wanted.extend(events.into_iter().map(|e| e.id));
    }
    let complete = |seen: &Overlaps| {
        (0..6).all(|n| {
            wanted
                .iter()
                .all(|id| seen.answered.get(&(n.to_string(), id.clone())).is_some_and(|&k| k >= 2))
        })
    };
    let deadline = tokio::time::Instant::now() + HANG_GUARD * 2;
    while !complete(&seen.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event reached every endpoint after the handover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let overlaps = seen.lock().unwrap().overlaps.clone();
    assert!(overlaps.is_empty(), "attempts of one delivery overlapped: {overlaps:?}");
    for endpoint in &endpoints {
        let all = wait_deliveries(&mut there, &endpoint.id, "every delivery succeeded", |d| {
            d.len() == wanted.len()
                && d.iter().all(|d| d.status == DeliveryStatus::Succeeded as i32)
        })
        .await;
        // An attempt aborted by the stop is not recorded; the last recorded one succeeded.
        assert!(
            all.iter().all(|d| d.attempts.last().is_some_and(|a| a.http_status == 200)),
            "{all:#?}"
        );
    }
}
