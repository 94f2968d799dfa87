//! Provider webhooks on `POST /webhooks/{source}`, for Omise, KOMOJU, Stripe and Standard
//! Webhooks: a signed delivery is stored and reads back over gRPC mapped field by field; a
//! forged, stale or unsigned one is refused with 401 and stores nothing; a redelivery is 200
//! and stored once; bad bodies are refused with their status and a JSON error naming the
//! field. Requests are signed with `signature::sign`, and one test checks `sign` and the
//! server against signatures computed independently (python3 `hmac`).

use std::time::Duration;

use eventsd::config::{parse_webhook_secret, WebhookSecret};
use eventsd::event::json::struct_to_object;
use eventsd::ingest::webhook::signature::{sign, Provider};
use eventsd::proto::{Event, GetEventRequest, SubscribeEventsRequest};
use eventsd::ServeConfig;
use prost_types::Timestamp;
use serde_json::{json, Value as Json};
use tonic::{Code, Status};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use crate::http_events::{assert_error, post, Reply};
use crate::support::{
    at, caught_up, fixture, next_event, rfc3339, stored_total, subscribe, Client, FIXTURES,
};

/// One webhook route: the provider whose rules it follows, its source name, its secret and
/// a second secret (the other side of a rotation, or simply the wrong one).
#[derive(Clone, Copy, Debug)]
struct Route {
    provider: Provider,
    source: &'static str,
    secret: &'static str,
    other_secret: &'static str,
}

/// Omise secrets are base64: `c2VjcmV0` is "secret".
const OMISE: Route = Route {
    provider: Provider::Omise,
    source: "omise",
    secret: "c2VjcmV0",
    other_secret: "b3RoZXJfc2VjcmV0",
};

const KOMOJU: Route = Route {
    provider: Provider::Komoju,
    source: "komoju",
    secret: "komoju_webhook_secret_7Hq2",
    other_secret: "komoju_rotated_secret_9Xc4",
};

const STRIPE: Route = Route {
    provider: Provider::Stripe,
    source: "stripe",
    secret: "whsec_test_stripe_2J7vHcRvZ3kQxN8m",
    other_secret: "whsec_test_stripe_rotated_Lp3QwE",
};

/// A Standard Webhooks source exists because a secret names it.
const STANDARD: Route = Route {
    provider: Provider::StandardWebhooks,
    source: "billing",
    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    other_secret: "whsec_YW5vdGhlci1zdy1zZWNyZXQtYnl0ZXMh",
};

const ROUTES: [Route; 4] = [OMISE, KOMOJU, STRIPE, STANDARD];

/// The providers that sign a timestamp (KOMOJU signs none).
const TIMESTAMPED: [Route; 3] = [OMISE, STRIPE, STANDARD];

/// The Standard Webhooks message id, sent in the `webhook-id` header.
const SW_ID: &str = "msg_2KxNbTzq8aLk0Vh3rXyP5mQw";

/// A small Omise delivery; also the known-answer body.
const OMISE_SMALL: &str = r#"{"object":"event","id":"evnt_test_5xkat0mise","livemode":false,"key":"charge.create","created":"2024-05-01T10:00:00Z","data":{"object":"charge","amount":100}}"#;

/// A small KOMOJU delivery; also the known-answer body.
const KOMOJU_SMALL: &str = r#"{"id":"kat0komoju0event","type":"payment.captured","resource":"event","created_at":"2024-05-01T10:00:00Z","data":{"id":"kat0payment","resource":"payment","amount":300}}"#;

const STRIPE_BODY: &str = r#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","api_version":"2023-10-16","created":1686089970,"livemode":false,"type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","amount":2000}}}"#;

const SW_BODY: &str = r#"{"type":"invoice.paid","timestamp":"2024-05-01T10:00:00Z","data":{"invoice":"in_1","amount":500}}"#;

// ---- Arrange: configuration, bodies, deliveries ----

fn secret(source: &str, secret: &str) -> WebhookSecret {
    parse_webhook_secret(&format!("{source}={secret}")).expect("a well-formed SOURCE=SECRET")
}

/// Gives every route its first secret, and keeps heartbeats out of the way of stream tests.
fn signed_routes(config: &mut ServeConfig) {
    config.webhook_secrets = ROUTES.iter().map(|r| secret(r.source, r.secret)).collect();
    config.heartbeat_interval = Duration::from_secs(3600);
}

async fn signed_app() -> TestApp {
    spawn_app_with(signed_routes).await
}

fn parse(text: &str) -> Json {
    serde_json::from_str(text).expect("a JSON constant")
}

/// The sample delivery body of each provider: the Omise and KOMOJU fixtures, and the Stripe
/// and Standard Webhooks bodies above.
fn sample(route: Route) -> Json {
    match route.provider {
        Provider::Omise => fixture("omise/charge.create.json"),
        Provider::Komoju => fixture("komoju/payment.captured.json"),
        Provider::Stripe => parse(STRIPE_BODY),
        Provider::StandardWebhooks => parse(SW_BODY),
    }
}

/// A small body of each provider, for servers with a 1 KiB body limit.
fn small(route: Route) -> Json {
    match route.provider {
        Provider::Omise => parse(OMISE_SMALL),
        Provider::Komoju => parse(KOMOJU_SMALL),
        Provider::Stripe => parse(STRIPE_BODY),
        Provider::StandardWebhooks => parse(SW_BODY),
    }
}

/// The event's payload inside a provider body: `data`, or Stripe's `data.object`.
fn payload_mut(route: Route, body: &mut Json) -> &mut Json {
    match route.provider {
        Provider::Stripe => &mut body["data"]["object"],
        _ => &mut body["data"],
    }
}

/// The sample with the same id and a different amount.
fn changed(route: Route) -> Json {
    let mut body = sample(route);
    payload_mut(route, &mut body)["amount"] = json!(1);
    body
}

/// `body` with the field at `path` (dot-separated) removed.
fn without(mut body: Json, path: &str) -> Json {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (parent.split('.').collect::<Vec<_>>(), last),
        None => (Vec::new(), path),
    };
    let mut cursor = &mut body;
    for key in parent {
        cursor = &mut cursor[key];
    }
    cursor.as_object_mut().expect("an object").remove(last);
    body
}

/// `body` with the field at the top level set to `value`.
fn with(mut body: Json, key: &str, value: Json) -> Json {
    body[key] = value;
    body
}

fn bytes(body: &Json) -> Vec<u8> {
    serde_json::to_vec(body).expect("serialise")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One POST to a webhook route.
#[derive(Clone)]
struct Delivery {
    source: &'static str,
    content_type: Option<&'static str>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Delivery {
    fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn with_header(self, name: &str, value: String) -> Self {
        let mut delivery = self.without_header(name);
        delivery.headers.push((name.to_string(), value));
        delivery
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Self {
        self.content_type = content_type;
        self
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}

/// `body` as `route`'s provider would send it, signed with `secret` at `timestamp`.
fn signed_with(route: Route, secret: &str, timestamp: i64, body: Vec<u8>) -> Delivery {
    let id = (route.provider == Provider::StandardWebhooks).then_some(SW_ID);
    let headers = sign(route.provider, secret, id, timestamp, &body).expect("sign");
    Delivery { source: route.source, content_type: Some("application/json"), headers, body }
}

/// `body` signed now with the route's secret.
fn signed(route: Route, body: &Json) -> Delivery {
    signed_with(route, route.secret, now(), bytes(body))
}

/// Raw bytes with no signature headers.
fn unsigned(source: &'static str, body: Vec<u8>) -> Delivery {
    Delivery { source, content_type: Some("application/json"), headers: Vec::new(), body }
}

async fn deliver(app: &TestApp, delivery: &Delivery) -> Reply {
    let url = format!("{}/webhooks/{}", app.http, delivery.source);
    post(&url, delivery.content_type, &delivery.headers, delivery.body.clone()).await
}

// ---- Assert: what a stored delivery must look like ----

async fn get_event(client: &mut Client, id: &str) -> Result<Event, Status> {
    client
        .get_event(GetEventRequest { id: id.into(), livemode: None })
        .await
        .map(tonic::Response::into_inner)
}

async fn assert_not_stored(client: &mut Client, id: &str, case: &str) {
    let status = get_event(client, id).await.err();
    assert_eq!(status.map(|s| s.code()), Some(Code::NotFound), "{case}: {id} must not be stored");
    assert_eq!(stored_total(client).await, 0, "{case}: nothing may be stored");
}

/// What a provider's sample must become once stored. The ids, types and times are written
/// out rather than read from the body, so a mapping that reads the wrong field fails.
struct Expected {
    id: &'static str,
    event_type: &'static str,
    created: Timestamp,
    livemode: bool,
    api_version: &'static str,
    data: Json,
}

fn expected(route: Route) -> Expected {
    match route.provider {
        Provider::Omise => Expected {
            id: "evnt_test_56vp5pfwjf1fqjn4ryy",
            event_type: "charge.create",
            created: rfc3339("2017-02-03T13:52:54Z"),
            livemode: false,
            api_version: "",
            data: sample(route)["data"].clone(),
        },
        Provider::Komoju => Expected {
            id: "bmon6b8awbd5wftxlpjxzpjte",
            event_type: "payment.captured",
            created: rfc3339("2018-11-13T06:20:21Z"),
            livemode: false,
            api_version: "",
            data: sample(route)["data"].clone(),
        },
        Provider::Stripe => Expected {
            id: "evt_1NG8Du2eZvKYlo2CUI79vXWy",
            event_type: "payment_intent.succeeded",
            created: at(1_686_089_970),
            livemode: false,
            api_version: "2023-10-16",
            data: json!({"id": "pi_1", "object": "payment_intent", "amount": 2000}),
        },
        Provider::StandardWebhooks => Expected {
            id: SW_ID,
            event_type: "invoice.paid",
            created: rfc3339("2024-05-01T10:00:00Z"),
            livemode: false,
            api_version: "",
            data: json!({"invoice": "in_1", "amount": 500}),
        },
    }
}

fn data_json(event: &Event) -> Json {
    Json::Object(struct_to_object(event.data.as_ref().expect("data is set")))
}

fn assert_event(event: &Event, expected: &Expected, source: &str, case: &str) {
    assert_eq!(event.id, expected.id, "{case}: id");
    assert_eq!(event.r#type, expected.event_type, "{case}: type");
    assert_eq!(event.created, Some(expected.created), "{case}: created");
    assert_eq!(event.livemode, expected.livemode, "{case}: livemode");
    assert_eq!(event.api_version, expected.api_version, "{case}: api_version");
    assert_eq!(event.source, source, "{case}: source");
    assert_eq!(event.location, format!("/events/{}", expected.id), "{case}: location");
    assert_eq!(data_json(event), expected.data, "{case}: data");
}

// ---- Valid deliveries ----

#[tokio::test]
async fn a_signed_delivery_from_each_provider_is_stored_and_reads_back_mapped() {
    let mut app = signed_app().await;

    for route in ROUTES {
        let case = route.provider.name();
        let reply = deliver(&app, &signed(route, &sample(route))).await;

        assert_eq!(reply.status, 201, "{case}: {}", reply.text);
        let want = expected(route);
        assert_eq!(reply.json["id"], want.id, "{case}: the response is the stored event");
        let stored = get_event(&mut app.client, want.id).await.expect("GetEvent");
        assert_event(&stored, &want, route.source, case);
    }
    assert_eq!(stored_total(&mut app.client).await, 4);
}

#[tokio::test]
async fn omise_and_stripe_take_livemode_from_the_body() {
    let mut app = signed_app().await;

    for route in [OMISE, STRIPE] {
        let body = with(sample(route), "livemode", json!(true));
        let reply = deliver(&app, &signed(route, &body)).await;

        assert_eq!(reply.status, 201, "{route:?}: {}", reply.text);
        let stored = get_event(&mut app.client, expected(route).id).await.expect("GetEvent");
        assert!(stored.livemode, "{route:?}");
    }
}

#[tokio::test]
async fn komoju_deliveries_take_livemode_from_the_komoju_livemode_setting() {
    for setting in [false, true] {
        let mut app = spawn_app_with(|config| {
            signed_routes(config);
            config.komoju_livemode = setting;
        })
        .await;

        let reply = deliver(&app, &signed(KOMOJU, &sample(KOMOJU))).await;

        assert_eq!(reply.status, 201, "--komoju-livemode={setting}: {}", reply.text);
        let stored = get_event(&mut app.client, expected(KOMOJU).id).await.expect("GetEvent");
        assert_eq!(stored.livemode, setting, "--komoju-livemode={setting}");
    }
}

#[tokio::test]
async fn a_standard_webhooks_source_named_in_webhook_unsigned_accepts_unsigned_deliveries() {
    let mut app = spawn_app_with(|config| {
        config.webhook_sources = vec!["orders".into()];
        config.webhook_unsigned = vec!["orders".into()];
    })
    .await;
    let delivery = unsigned("orders", SW_BODY.into()).with_header("webhook-id", SW_ID.into());

    let reply = deliver(&app, &delivery).await;

    assert_eq!(reply.status, 201, "{}", reply.text);
    let stored = get_event(&mut app.client, SW_ID).await.expect("GetEvent");
    assert_event(&stored, &expected(STANDARD), "orders", "unsigned Standard Webhooks");
}

#[tokio::test]
async fn the_fixtures_are_accepted_unsigned_where_allowed_and_read_back_unchanged() {
    // No secrets: the built-in routes named in --webhook-unsigned accept unsigned deliveries.
    let mut app =
        spawn_app_with(|config| config.webhook_unsigned = vec!["omise".into(), "komoju".into()])
            .await;

    for route in [OMISE, KOMOJU] {
        let path = match route.provider {
            Provider::Omise => "omise/charge.create.json",
            _ => "komoju/payment.captured.json",
        };
        let raw = std::fs::read(format!("{FIXTURES}/{path}")).expect("read the fixture");

        let reply = deliver(&app, &unsigned(route.source, raw)).await;

        assert_eq!(reply.status, 201, "{path}: {}", reply.text);
        let stored = get_event(&mut app.client, expected(route).id).await.expect("GetEvent");
        assert_event(&stored, &expected(route), route.source, path);
        assert_eq!(data_json(&stored), fixture(path)["data"], "{path}: data unchanged");
    }
}

#[tokio::test]
async fn a_delivery_shows_up_on_a_live_subscription() {
    let mut app = signed_app().await;
    let mut stream = subscribe(&mut app.client, SubscribeEventsRequest::default()).await;
    caught_up(&mut stream).await;

    for route in ROUTES {
        let reply = deliver(&app, &signed(route, &sample(route))).await;
        assert_eq!(reply.status, 201, "{route:?}: {}", reply.text);

        let event = next_event(&mut stream).await;

        assert_eq!(event.id, expected(route).id, "{route:?}");
        assert_eq!(event.source, route.source, "{route:?}");
    }
}

// ---- Signatures ----

/// Hand-computed with python3: `hmac.new(key, message, hashlib.sha256)`, where the key is the
/// base64-decoded secret (Omise; Standard Webhooks after `whsec_`) or the secret's bytes
/// (KOMOJU; Stripe with its `whsec_` prefix), and the message is `{t}.{body}` (Omise, Stripe),
/// the body (KOMOJU) or `{id}.{t}.{body}` (Standard Webhooks).
const KNOWN_TIMESTAMP: i64 = 1_714_557_600;

/// A route, its secret, and the headers a sender computes, for each provider.
type KnownAnswer = (Route, &'static str, Vec<(&'static str, &'static str)>);

fn known_answers() -> Vec<KnownAnswer> {
    vec![
        (
            OMISE,
            OMISE_SMALL,
            vec![
                (
                    "Omise-Signature",
                    "cba31bfef4198cfb8536587a3b6ef58d1bdae843f32334abb2fc083d6def9e15",
                ),
                ("Omise-Signature-Timestamp", "1714557600"),
            ],
        ),
        (
            KOMOJU,
            KOMOJU_SMALL,
            vec![(
                "X-Komoju-Signature",
                "4a690d6027e9c2591fb1d46923e43039550d80d4606d6e4c4b2c45c095fc26a3",
            )],
        ),
        (
            STRIPE,
            STRIPE_BODY,
            vec![(
                "Stripe-Signature",
                "t=1714557600,v1=c7edc1f51246054a05c392ce363970836726d91a60612a5fa604a7bb32a641de",
            )],
        ),
        (
            STANDARD,
            SW_BODY,
            vec![
                ("webhook-id", SW_ID),
                ("webhook-timestamp", "1714557600"),
                ("webhook-signature", "v1,I9rNyCHPkV+dcarj6EojPVYuqBF1gGPiW+iW79Hiwhw="),
            ],
        ),
    ]
}

#[test]
fn sign_matches_signatures_computed_independently() {
    for (route, body, headers) in known_answers() {
        let id = (route.provider == Provider::StandardWebhooks).then_some(SW_ID);
        let signed =
            sign(route.provider, route.secret, id, KNOWN_TIMESTAMP, body.as_bytes()).expect("sign");
        let want: Vec<(String, String)> =
            headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(signed, want, "{}", route.provider);
    }
}

#[tokio::test]
async fn the_server_accepts_signatures_computed_independently() {
    // The known answers are signed at a fixed time, so widen the tolerance to a century.
    let app = spawn_app_with(|config| {
        signed_routes(config);
        config.webhook_tolerance = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    })
    .await;

    for (route, body, headers) in known_answers() {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let delivery = Delivery { headers, ..unsigned(route.source, body.into()) };

        let reply = deliver(&app, &delivery).await;

        assert_eq!(reply.status, 201, "{}: {}", route.provider, reply.text);
    }
}

#[tokio::test]
async fn a_tampered_body_is_refused_and_nothing_is_stored() {
    let mut app = signed_app().await;

    for route in ROUTES {
        let genuine = signed(route, &sample(route));
        let tampered = Delivery { body: bytes(&changed(route)), ..genuine };

        let reply = deliver(&app, &tampered).await;

        let case = format!("{} tampered", route.provider);
        assert_error(&reply, 401, "signature does not match", &case);
        assert_not_stored(&mut app.client, expected(route).id, &case).await;
    }
}

#[tokio::test]
async fn a_delivery_signed_with_another_secret_is_refused() {
    let mut app = signed_app().await;

    for route in ROUTES {
        let delivery = signed_with(route, route.other_secret, now(), bytes(&sample(route)));

        let reply = deliver(&app, &delivery).await;

        let case = format!("{} wrong secret", route.provider);
        assert_error(&reply, 401, "signature does not match", &case);
        assert_not_stored(&mut app.client, expected(route).id, &case).await;
    }
}

#[tokio::test]
async fn a_timestamp_outside_the_tolerance_in_either_direction_is_refused() {
    let mut app = spawn_app_with(|config| {
        signed_routes(config);
        config.webhook_tolerance = Duration::from_secs(300);
    })
    .await;

    for route in TIMESTAMPED {
        for (when, offset) in [("an hour old", -3600), ("an hour ahead", 3600)] {
            let delivery = signed_with(route, route.secret, now() + offset, bytes(&sample(route)));

            let reply = deliver(&app, &delivery).await;

            let case = format!("{} {when}", route.provider);
            assert_error(&reply, 401, "stale timestamp", &case);
            assert_not_stored(&mut app.client, expected(route).id, &case).await;
        }
    }
}

#[tokio::test]
async fn a_timestamp_inside_the_tolerance_is_accepted() {
    let app = spawn_app_with(|config| {
        signed_routes(config);
        config.webhook_tolerance = Duration::from_secs(300);
    })
    .await;

    for route in TIMESTAMPED {
        let delivery = signed_with(route, route.secret, now() - 120, bytes(&sample(route)));

        let reply = deliver(&app, &delivery).await;

        assert_eq!(reply.status, 201, "{}: {}", route.provider, reply.text);
    }
}

#[tokio::test]
async fn during_a_rotation_a_delivery_signed_with_either_secret_is_accepted() {
    let mut app = spawn_app_with(|config| {
        config.webhook_secrets = ROUTES
            .iter()
            .flat_map(|r| [secret(r.source, r.secret), secret(r.source, r.other_secret)])
            .collect();
    })
    .await;

    for route in ROUTES {
        let old = signed_with(route, route.secret, now(), bytes(&sample(route)));
        let new = signed_with(route, route.other_secret, now(), bytes(&sample(route)));

        let first = deliver(&app, &old).await;
        let second = deliver(&app, &new).await;

        // The second is a redelivery of the same event, so it is 200 rather than 201; a
        // refused signature would be 401.
        assert_eq!(first.status, 201, "{} old secret: {}", route.provider, first.text);
        assert_eq!(second.status, 200, "{} new secret: {}", route.provider, second.text);
    }
    assert_eq!(stored_total(&mut app.client).await, 4);
}

#[tokio::test]
async fn a_header_with_two_signatures_is_accepted_when_only_the_second_matches() {
    let mut app = signed_app().await;

    for route in TIMESTAMPED {
        let t = now();
        let body = bytes(&sample(route));
        let good = signed_with(route, route.secret, t, body.clone());
        let bad = signed_with(route, route.other_secret, t, body);
        let delivery = match route.provider {
            Provider::Omise => {
                let both =
                    format!("{},{}", bad.header("Omise-Signature"), good.header("Omise-Signature"));
                good.with_header("Omise-Signature", both)
            }
            Provider::Stripe => {
                let v1 = |d: &Delivery| {
                    d.header("Stripe-Signature").split_once(",v1=").expect("v1").1.to_string()
                };
                let both = format!("t={t},v1={},v1={}", v1(&bad), v1(&good));
                good.with_header("Stripe-Signature", both)
            }
            _ => {
                let both = format!(
                    "{} {}",
                    bad.header("webhook-signature"),
                    good.header("webhook-signature")
                );
                good.with_header("webhook-signature", both)
            }
        };

        let reply = deliver(&app, &delivery).await;

        assert_eq!(reply.status, 201, "{}: {}", route.provider, reply.text);
    }
    assert_eq!(stored_total(&mut app.client).await, 3);
}

#[tokio::test]
async fn a_delivery_without_a_signature_header_is_refused() {
    let mut app = signed_app().await;
    let cases = [
        (OMISE, "Omise-Signature"),
        (OMISE, "Omise-Signature-Timestamp"),
        (KOMOJU, "X-Komoju-Signature"),
        (STRIPE, "Stripe-Signature"),
        (STANDARD, "webhook-signature"),
        (STANDARD, "webhook-timestamp"),
        (STANDARD, "webhook-id"),
    ];

    for (route, header) in cases {
        let delivery = signed(route, &sample(route)).without_header(header);

        let reply = deliver(&app, &delivery).await;

        let case = format!("{} without {header}", route.provider);
        assert_error(&reply, 401, &format!("missing header {header}"), &case);
        assert_not_stored(&mut app.client, expected(route).id, &case).await;
    }
}

// ---- Idempotency ----

#[tokio::test]
async fn a_redelivery_is_acknowledged_with_200_and_stored_once() {
    for route in ROUTES {
        let mut app = signed_app().await;

        let first = deliver(&app, &signed(route, &sample(route))).await;
        let again = deliver(&app, &signed(route, &sample(route))).await;

        assert_eq!(first.status, 201, "{}: {}", route.provider, first.text);
        assert_eq!(again.status, 200, "{}: {}", route.provider, again.text);
        assert_eq!(
            again.json, first.json,
            "{}: the redelivery returns the stored event",
            route.provider
        );
        assert_eq!(stored_total(&mut app.client).await, 1, "{}", route.provider);
    }
}

#[tokio::test]
async fn the_same_id_with_different_content_is_a_conflict() {
    let mut app = signed_app().await;

    for route in ROUTES {
        let first = deliver(&app, &signed(route, &sample(route))).await;
        let reply = deliver(&app, &signed(route, &changed(route))).await;

        assert_eq!(first.status, 201, "{}: {}", route.provider, first.text);
        assert_error(&reply, 409, "data", route.provider.name());
        let stored = get_event(&mut app.client, expected(route).id).await.expect("GetEvent");
        assert_eq!(data_json(&stored), expected(route).data, "{}: the first stays", route.provider);
    }
    assert_eq!(stored_total(&mut app.client).await, 4);
}

// ---- Routes and bad input ----

#[tokio::test]
async fn an_unknown_source_is_404() {
    let app = spawn_app().await;

    let reply = deliver(&app, &unsigned("nope", OMISE_SMALL.into())).await;

    assert_error(&reply, 404, "nope", "/webhooks/nope");
}

/// A row of the bad-delivery table: what is sent, the status expected, and what the
/// error message must name.
struct Bad {
    case: &'static str,
    delivery: Delivery,
    status: u16,
    names: &'static str,
}

fn bad(case: &'static str, delivery: Delivery, status: u16, names: &'static str) -> Bad {
    Bad { case, delivery, status, names }
}

/// A small Omise body whose `data` holds `{"a": [[…]]}`, `levels` lists deep.
fn omise_nested(levels: usize) -> Vec<u8> {
    let text = OMISE_SMALL.replace(
        r#""data":{"object":"charge","amount":100}"#,
        &format!(r#""data":{{"a":{}{}}}"#, "[".repeat(levels), "]".repeat(levels)),
    );
    assert_ne!(text, OMISE_SMALL, "the data object was replaced");
    text.into_bytes()
}

#[tokio::test]
async fn every_bad_delivery_is_refused_with_its_status_naming_the_field_and_stores_nothing() {
    // Arrange: every route signed, an unsigned Standard Webhooks route, and a 1 KiB limit.
    let mut app = spawn_app_with(|config| {
        signed_routes(config);
        config.webhook_sources = vec!["orders".into()];
        config.webhook_unsigned = vec!["orders".into()];
        config.max_body_bytes = 1024;
    })
    .await;
    let raw = |body: &[u8]| signed_with(OMISE, OMISE.secret, now(), body.to_vec());
    let omise = |body: Json| signed(OMISE, &body);
    let komoju = |body: Json| signed(KOMOJU, &body);
    let stripe = |body: Json| signed(STRIPE, &body);
    let standard = |body: Json| signed(STANDARD, &body);
    let mut beyond_2_53 = small(OMISE);
    beyond_2_53["data"]["card"] = json!({"expiration_year": 9_007_199_254_740_993_u64});
    let mut padded = small(OMISE);
    padded["data"]["pad"] = json!("x".repeat(2048));
    // A lone 0xFF byte, which never occurs in UTF-8, inside a string of `data`.
    let invalid_utf8: Vec<u8> = OMISE_SMALL
        .replace(r#""object":"charge""#, r#""object":"ch#rge""#)
        .bytes()
        .map(|b| if b == b'#' { 0xFF } else { b })
        .collect();
    let array = format!("[{OMISE_SMALL}]");

    let cases = vec![
        bad("2 KiB over a 1 KiB limit", omise(padded), 413, "1024"),
        bad("not JSON", raw(b"key=charge.create"), 400, "JSON"),
        bad("an empty body", raw(b""), 400, "JSON"),
        bad("invalid UTF-8", raw(&invalid_utf8), 400, "JSON"),
        bad("data nested 200 levels", raw(&omise_nested(200)), 400, "JSON"),
        bad("text/plain", omise(small(OMISE)).content_type(Some("text/plain")), 415, "text/plain"),
        bad("no content type", omise(small(OMISE)).content_type(None), 415, "application/json"),
        bad("Omise without key", omise(without(small(OMISE), "key")), 422, "key"),
        bad("Omise without data", omise(without(small(OMISE), "data")), 422, "data"),
        bad(
            "Omise livemode \"yes\"",
            omise(with(small(OMISE), "livemode", json!("yes"))),
            422,
            "livemode",
        ),
        bad(
            "Omise created not RFC 3339",
            omise(with(small(OMISE), "created", json!("soon"))),
            422,
            "created",
        ),
        bad("Omise id with a space", omise(with(small(OMISE), "id", json!("evnt 1"))), 422, "id"),
        bad("KOMOJU without type", komoju(without(small(KOMOJU), "type")), 422, "type"),
        bad(
            "KOMOJU created_at a number",
            komoju(with(small(KOMOJU), "created_at", json!(1))),
            422,
            "created_at",
        ),
        bad(
            "Stripe without data.object",
            stripe(without(small(STRIPE), "data.object")),
            422,
            "data.object",
        ),
        bad(
            "Stripe created a string",
            stripe(with(small(STRIPE), "created", json!("1"))),
            422,
            "created",
        ),
        bad("SW without webhook-id", unsigned("orders", SW_BODY.into()), 422, "webhook-id"),
        bad("SW without type", standard(without(small(STANDARD), "type")), 422, "type"),
        bad("an integer beyond 2^53", omise(beyond_2_53), 422, "data.card.expiration_year"),
        bad("a JSON array body", raw(array.as_bytes()), 422, "body"),
        bad("data nested 100 levels", raw(&omise_nested(100)), 422, "data.a"),
    ];

    for Bad { case, delivery, status, names } in cases {
        let reply = deliver(&app, &delivery).await;

        assert_error(&reply, status, names, case);
        assert_eq!(stored_total(&mut app.client).await, 0, "{case}: something was stored");
    }
}

#[tokio::test]
async fn a_field_error_names_the_field_as_the_provider_spells_it() {
    // The sender must be able to find the field in what it sent: Omise's type is `key`,
    // Stripe's payload is `data.object`, and a Standard Webhooks id is the `webhook-id` header.
    let mut app = signed_app().await;
    let mut stripe_beyond_2_53 = small(STRIPE);
    stripe_beyond_2_53["data"]["object"]["amount"] = json!(9_007_199_254_740_993_u64);
    let cases = [
        (
            "Omise key with a space",
            signed(OMISE, &with(small(OMISE), "key", json!("charge create"))),
            "key",
        ),
        (
            "Stripe integer beyond 2^53 in data.object",
            signed(STRIPE, &stripe_beyond_2_53),
            "data.object.amount",
        ),
        (
            "Standard Webhooks webhook-id with a space",
            Delivery {
                headers: sign(
                    Provider::StandardWebhooks,
                    STANDARD.secret,
                    Some("msg 1"),
                    now(),
                    SW_BODY.as_bytes(),
                )
                .expect("sign"),
                ..unsigned(STANDARD.source, SW_BODY.into())
            },
            "webhook-id",
        ),
    ];

    // Every row is tried before failing, so one run reports every mismatch.
    let mut mismatches = Vec::new();
    for (case, delivery, names) in cases {
        let reply = deliver(&app, &delivery).await;

        assert_eq!(reply.status, 422, "{case}: {}", reply.text);
        assert_eq!(stored_total(&mut app.client).await, 0, "{case}: something was stored");
        let message = reply.json["message"].as_str().unwrap_or_default().to_string();
        if !message.contains(names) {
            mismatches.push(format!("{case}: should name {names:?}, says {message:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test]
async fn a_content_type_with_parameters_or_a_json_suffix_is_accepted() {
    let mut app = signed_app().await;

    for (route, content_type) in [
        (OMISE, "application/json; charset=utf-8"),
        (STRIPE, "Application/JSON"),
        (STANDARD, "application/webhook+json"),
    ] {
        let delivery = signed(route, &sample(route)).content_type(Some(content_type));

        let reply = deliver(&app, &delivery).await;

        assert_eq!(reply.status, 201, "{content_type}: {}", reply.text);
    }
    assert_eq!(stored_total(&mut app.client).await, 3);
}

#[tokio::test]
async fn secrets_from_the_secrets_file_sign_deliveries_alongside_the_flag_secrets() {
    // The flag holds the old Omise secret, the file the new one and the Stripe one.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let lines = format!(
        "# rotated on 2024-05-01\n\nomise={}\nstripe={}\n",
        OMISE.other_secret, STRIPE.secret
    );
    std::fs::write(file.path(), lines).expect("write the secrets file");
    let path = file.path().to_path_buf();
    let mut app = spawn_app_with(|config| {
        config.webhook_secrets = vec![secret("omise", OMISE.secret)];
        config.webhook_secrets_file = Some(path);
    })
    .await;

    let old = deliver(&app, &signed_with(OMISE, OMISE.secret, now(), OMISE_SMALL.into())).await;
    let new =
        deliver(&app, &signed_with(OMISE, OMISE.other_secret, now(), OMISE_SMALL.into())).await;
    let stripe = deliver(&app, &signed(STRIPE, &sample(STRIPE))).await;
    let unsigned_stripe = deliver(&app, &unsigned("stripe", STRIPE_BODY.into())).await;

    assert_eq!(old.status, 201, "flag secret: {}", old.text);
    assert_eq!(new.status, 200, "file secret: {}", new.text);
    assert_eq!(stripe.status, 201, "file secret for Stripe: {}", stripe.text);
    assert_error(&unsigned_stripe, 401, "Stripe-Signature", "unsigned Stripe");
    assert_eq!(stored_total(&mut app.client).await, 2);
}

/// Deliveries signed by the reference libraries (`standardwebhooks` and `svix` from PyPI,
/// written by `scripts/webhook-libraries.py --write`): both header sets, rotation on either
/// side, malformed entries before a valid one, and the mixed and conflicting sets that must
/// fail. Each is posted to a real server holding the fixture's two secrets, with a tolerance
/// wide enough for the fixture's fixed timestamps; a delivery that should be stored is stored
/// under its message id, and one that should fail stores nothing.
#[tokio::test]
async fn deliveries_signed_by_the_reference_libraries_are_verified_as_they_verify_them() {
    let doc = fixture("webhooks/libraries.json");
    let source = doc["source"].as_str().expect("source").to_owned();
    let secrets: Vec<WebhookSecret> = doc["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| secret(&source, s.as_str().expect("a secret")))
        .collect();
    let app = spawn_app_with(move |config| {
        config.webhook_secrets = secrets;
        config.webhook_tolerance = Duration::from_secs(100 * 365 * 86_400);
    })
    .await;
    let mut client = app.client.clone();
    let mut stored: i64 = 0;
    for delivery in doc["deliveries"].as_array().expect("deliveries") {
        let name = delivery["name"].as_str().expect("name");
        let headers: Vec<(String, String)> = delivery["headers"]
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("a header value").to_owned()))
            .collect();
        let body = delivery["body"].as_str().expect("body").as_bytes().to_vec();
        let url = format!("{}/webhooks/{source}", app.http);
        let reply = post(&url, Some("application/json"), &headers, body).await;
        let expected = delivery["status"].as_u64().expect("status");
        assert_eq!(u64::from(reply.status), expected, "{name}: {}", reply.text);
        let id = headers
            .iter()
            .find(|(k, _)| k == "webhook-id" || k == "svix-id")
            .map(|(_, v)| v.clone())
            .expect("a message id");
        if expected == 201 {
            stored += 1;
            let event = get_event(&mut client, &id).await.expect("stored under its message id");
            assert_eq!(event.id, id, "{name}");
        } else {
            assert_eq!(reply.json["code"], "unauthenticated", "{name}: {}", reply.text);
            assert_eq!(stored_total(&mut client).await, stored, "{name}: nothing more is stored");
        }
    }
    assert_eq!(stored, 5, "the fixture's five valid deliveries");
}
