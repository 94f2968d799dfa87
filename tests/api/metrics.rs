//! `GET /metrics` on the HTTP listener: OpenMetrics text that counts publishes by type and
//! source, refusals by route and reason, the store's size and durable point, commit batches,
//! open subscriptions and deliveries, every event API request by transport, operation and
//! outcome, and ends with `# EOF`. No secret ever appears in it.
//!
//! The text is read simply, line by line: a sample line is `series value`, where `series` is
//! the metric name with its labels exactly as the server writes them.

use eventsd::config::parse_webhook_secret;
use eventsd::proto::{
    GetEventRequest, ListEventsRequest, PublishEventRequest, SubscribeEventsRequest,
};
use tonic::Code;

use crate::cloudevents::get_with_headers;
use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use crate::http_events::post;
use crate::support::{assert_rejected, event, from_beginning, history, publish, subscribe};

/// An Omise webhook secret (base64 of "secret_key"); its text must never reach the metrics.
const OMISE_SECRET: &str = "omise=c2VjcmV0X2tleQ==";

/// One scrape of `GET /metrics`: the content type and the text.
struct Scrape {
    content_type: String,
    text: String,
}

impl Scrape {
    /// The value of the sample line whose series is exactly `series`, if there is one.
    fn value(&self, series: &str) -> Option<f64> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .map(|(_, value)| {
                value.parse().unwrap_or_else(|_| panic!("{series}: {value:?} is not a number"))
            })
    }

    /// Asserts that `series` is present with `expected`.
    fn assert_value(&self, series: &str, expected: f64) {
        let Some(actual) = self.value(series) else {
            panic!("no sample {series} in the metrics:\n{}", self.text);
        };
        assert_eq!(actual, expected, "{series}; metrics:\n{}", self.text);
    }
}

/// Scrapes the metrics and expects 200.
async fn scrape(app: &TestApp) -> Scrape {
    let reply = get_with_headers(&format!("{}/metrics", app.http)).await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text);
    Scrape { content_type: reply.content_type, text: reply.text }
}

/// A server with an Omise webhook secret, three `charge.create` events from `payments`, one
/// gRPC publish refused for its missing type, and one webhook to an unknown source.
async fn spawn_busy_app() -> TestApp {
    let mut app = spawn_app_with(|c| {
        c.webhook_secrets = vec![parse_webhook_secret(OMISE_SECRET).expect("a valid secret")];
    })
    .await;
    for _ in 0..3 {
        let request = PublishEventRequest { source: "payments".into(), ..event("charge.create") };
        publish(&mut app.client, request).await;
    }
    let untyped = PublishEventRequest { r#type: String::new(), ..event("charge.create") };
    let refused = app.client.publish_event(untyped).await.map(|_| ());
    assert_rejected(refused, Code::InvalidArgument, "type", "a publish without a type");
    let url = format!("{}/webhooks/nope", app.http);
    let reply = post(&url, Some("application/json"), &[], br#"{"object":"event"}"#.to_vec()).await;
    assert_eq!(reply.status, 404, "webhook to an unknown source: {}", reply.text);
    app
}

#[tokio::test]
async fn publishes_refusals_and_the_store_are_counted_in_openmetrics_text() {
    // Arrange
    let app = spawn_busy_app().await;

    // Act
    let metrics = scrape(&app).await;

    // Assert
    assert!(
        metrics.content_type.starts_with("application/openmetrics-text"),
        "content type: {}",
        metrics.content_type
    );
    metrics.assert_value(
        r#"eventsd_events_published_total{type="charge.create",source="payments"}"#,
        3.0,
    );
    metrics.assert_value(
        r#"eventsd_ingest_rejections_total{route="grpc",reason="invalid_argument"}"#,
        1.0,
    );
    metrics.assert_value(
        r#"eventsd_ingest_rejections_total{route="webhook:unknown",reason="not_found"}"#,
        1.0,
    );
    metrics.assert_value("eventsd_store_events", 3.0);
    metrics.assert_value("eventsd_durable_sequence", 3.0);
    metrics.assert_value("eventsd_publish_duration_seconds_count", 3.0);
    // Each publish was awaited before the next, so each had a commit of its own.
    assert!(
        metrics.text.lines().any(|l| l == "# TYPE eventsd_commit_batch_events histogram"),
        "no commit batch histogram:\n{}",
        metrics.text
    );
    metrics.assert_value("eventsd_commit_batch_events_count", 3.0);
    metrics.assert_value("eventsd_commit_batch_events_sum", 3.0);
    metrics.assert_value(r#"eventsd_commit_batch_events_bucket{le="+Inf"}"#, 3.0);
    metrics.assert_value("eventsd_subscribers", 0.0);
    metrics.assert_value("eventsd_deliveries_total", 0.0);
}

#[tokio::test]
async fn the_metrics_text_ends_with_eof_and_every_other_line_is_a_comment_or_a_sample() {
    let app = spawn_busy_app().await;

    let metrics = scrape(&app).await;

    let lines: Vec<&str> = metrics.text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "the last line must be # EOF:\n{}", metrics.text);
    assert_eq!(lines.iter().filter(|l| **l == "# EOF").count(), 1, "{}", metrics.text);
    assert!(metrics.text.ends_with("# EOF\n"), "{:?}", metrics.text);
    for line in &lines[..lines.len() - 1] {
        let is_comment = line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ");
        let is_sample = line.rsplit_once(' ').is_some_and(|(name, value)| {
            name.starts_with("eventsd_") && value.parse::<f64>().is_ok()
        });
        assert!(is_comment || is_sample, "not a comment or a sample: {line:?}");
    }
}

#[tokio::test]
async fn no_webhook_secret_appears_in_the_metrics() {
    let app = spawn_busy_app().await;

    let metrics = scrape(&app).await;

    assert!(!metrics.text.contains("c2VjcmV0X2tleQ"), "the secret leaked:\n{}", metrics.text);
    assert!(!metrics.text.contains("secret_key"), "the decoded secret leaked:\n{}", metrics.text);
}

#[tokio::test]
async fn an_open_subscription_is_counted_and_only_matching_deliveries_are() {
    // Arrange: two charges and a customer event; the subscription takes charges only.
    let mut app = spawn_app().await;
    for event_type in ["charge.create", "customer.create", "charge.capture"] {
        publish(&mut app.client, event(event_type)).await;
    }
    let request = SubscribeEventsRequest { types: vec!["charge.*".into()], ..from_beginning() };

    // Act: caught_up is sent after every history event, so both deliveries are counted.
    let mut stream = subscribe(&mut app.client, request).await;
    let (delivered, through) = history(&mut stream, 10).await;
    let metrics = scrape(&app).await;

    // Assert
    assert_eq!(delivered.len(), 2);
    assert_eq!(through, 3);
    metrics.assert_value("eventsd_subscribers", 1.0);
    metrics.assert_value("eventsd_subscribers_lagging", 0.0);
    metrics.assert_value("eventsd_deliveries_total", 2.0);
    drop(stream);
}

/// Sends one request of each event API call over each transport, some refused, and returns
/// the scrape: `eventsd_requests_total` must count each under its transport, operation and
/// outcome (the error's name in the one classification, or `ok`).
#[tokio::test]
async fn every_request_is_counted_by_transport_operation_and_outcome_rejections_included() {
    // Arrange
    let mut app = spawn_app_with(|c| c.webhook_unsigned = vec!["omise".into()]).await;
    let stored = publish(&mut app.client, event("charge.create")).await;
    let bad_id = GetEventRequest { id: "bad id!".into(), livemode: None };
    let refused = app.client.get_event(bad_id).await.map(|_| ());
    assert_rejected(refused, Code::InvalidArgument, "id", "a malformed id");
    app.client.list_events(ListEventsRequest::default()).await.expect("list");
    drop(subscribe(&mut app.client, from_beginning()).await);
    let events = format!("{}/events", app.http);
    let json = Some("application/json");
    let created = post(&events, json, &[], br#"{"type": "a.b", "data": {}}"#.to_vec()).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let untyped = post(&events, json, &[], br#"{"data": {}}"#.to_vec()).await;
    assert_eq!(untyped.status, 422, "{}", untyped.text);
    let hook = format!("{}/webhooks/nope", app.http);
    assert_eq!(post(&hook, json, &[], b"{}".to_vec()).await.status, 404);
    let omise = get_with_headers(&format!("{}/events/{}", app.http, stored.id)).await;
    assert_eq!(omise.status, 200, "{}", omise.text);
    let komoju = get_with_headers(&format!("{}/api/v1/events?per_page=0", app.http)).await;
    assert_eq!(komoju.status, 422, "{}", komoju.text);
    let polled = get_with_headers(&format!("{}/cloudevents", app.http)).await;
    assert_eq!(polled.status, 200, "{}", polled.text);

    // Act
    let metrics = scrape(&app).await;

    // Assert
    let counted = [
        ("grpc", "publish", "ok"),
        ("grpc", "get", "invalid_argument"),
        ("grpc", "list", "ok"),
        ("grpc", "subscribe", "ok"),
        ("http", "publish", "ok"),
        ("http", "publish", "invalid_argument"),
        ("webhook", "publish", "not_found"),
        ("omise", "get", "ok"),
        ("komoju", "list", "invalid_argument"),
        ("cloudevents", "list", "ok"),
    ];
    for (transport, operation, code) in counted {
        let expected =
            if (transport, operation) == ("grpc", "list") { 1.0 + startup_lists() } else { 1.0 };
        metrics.assert_value(
            &format!(
                r#"eventsd_requests_total{{transport="{transport}",operation="{operation}",code="{code}"}}"#
            ),
            expected,
        );
    }
    // Scrapes and health checks are not event API requests: nothing else was counted.
    let series = metrics.text.lines().filter(|l| l.starts_with("eventsd_requests_total{"));
    assert_eq!(series.count(), counted.len(), "{}", metrics.text);
}

/// Calls the auth layer refuses never reach a handler; they are counted all the same.
#[tokio::test]
async fn calls_refused_for_their_key_are_counted_too() {
    // Arrange
    let (mut app, _keys) = crate::hardening::secured(|_| {}).await;
    let keyless = app.client.list_events(ListEventsRequest::default()).await.map(|_| ());
    assert_rejected(keyless, Code::Unauthenticated, "", "a keyless ListEvents");

    // Act
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
        .get(format!("{}/metrics", app.http))
        .bearer_auth(crate::hardening::ADMIN)
        .send()
        .await
        .expect("scrape");
    let text = reply.text().await.expect("metrics text");

    // Assert
    let series =
        r#"eventsd_requests_total{transport="grpc",operation="list",code="unauthenticated"}"#;
    let metrics = Scrape { content_type: String::new(), text };
    metrics.assert_value(series, 1.0 + startup_lists());
}

/// ListEvents calls the test helper itself makes on the first instance before a test starts:
/// on JetStream it lists once (keyless) so the stream exists before the second instance joins.
fn startup_lists() -> f64 {
    if crate::helpers::jetstream_urls().is_some() {
        1.0
    } else {
        0.0
    }
}
