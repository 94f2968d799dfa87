//! `POST /events` (the proto3 JSON form of PublishEventRequest) and `GET /healthz` on the
//! HTTP listener: 201 with the stored event, 200 for an idempotent repeat, 409 for a
//! conflict, and every bad body refused with its status, a JSON error naming the field, and
//! nothing stored. The small HTTP helpers at the top are shared with `webhooks`.

use eventsd::proto::GetEventRequest;
use serde_json::{json, Value as Json};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use crate::support::{rfc3339, stored_total, struct_json, HANG_GUARD};

/// An HTTP response: its status, its raw text (for failure messages) and its JSON body
/// (`Null` when the body is not JSON).
pub(crate) struct Reply {
    pub status: u16,
    pub text: String,
    pub json: Json,
}

/// A plain-HTTP client that never goes through a proxy, whatever the environment says.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("HTTP client")
}

fn into_reply(status: u16, bytes: &[u8]) -> Reply {
    Reply {
        status,
        text: String::from_utf8_lossy(bytes).into_owned(),
        json: serde_json::from_slice(bytes).unwrap_or(Json::Null),
    }
}

/// POSTs `body` to `url` with the given content type (none when `None`) and extra headers.
pub(crate) async fn post(
    url: &str,
    content_type: Option<&str>,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Reply {
    let mut request = http_client().post(url).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let exchange = async {
        let response = request.send().await.expect("send the request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("read the response body");
        into_reply(status, &bytes)
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTP request")
}

/// GETs `url`.
pub(crate) async fn get(url: &str) -> Reply {
    let exchange = async {
        let response = http_client().get(url).send().await.expect("send");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("read the response body");
        into_reply(status, &bytes)
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTP request")
}

/// The error `code` that goes with each HTTP status (`error.rs`, `http_status`).
fn code_for(status: u16) -> &'static str {
    match status {
        400 => "malformed_json",
        401 => "unauthenticated",
        404 => "not_found",
        409 => "already_exists",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_argument",
        other => panic!("no error code is expected with status {other}"),
    }
}

/// Asserts an error reply: the status, and a body that is exactly
/// `{"object":"error","code":…,"message":…}` with the status's code and a message
/// containing `names`.
pub(crate) fn assert_error(reply: &Reply, status: u16, names: &str, case: &str) {
    let code = code_for(status);
    assert_eq!(reply.status, status, "{case}: wrong status; body: {}", reply.text);
    let Some(body) = reply.json.as_object() else {
        panic!("{case}: the error body is not a JSON object: {}", reply.text);
    };
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "object"], "{case}: {}", reply.text);
    assert_eq!(body["object"], "error", "{case}: {}", reply.text);
    assert_eq!(body["code"], code, "{case}: {}", reply.text);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(names), "{case}: the message should name {names:?}: {message}");
}

async fn publish_json(app: &TestApp, body: &Json) -> Reply {
    let bytes = serde_json::to_vec(body).expect("serialise");
    post(&format!("{}/events", app.http), Some("application/json"), &[], bytes).await
}

/// A complete, valid request in the proto3 JSON form.
fn full_request() -> Json {
    json!({
        "id": "evnt_test_http0001",
        "type": "charge.create",
        "created": "2024-05-01T10:00:00Z",
        "livemode": true,
        "data": {"object": "charge", "amount": 100000, "card": {"brand": "Visa"}, "refunds": []},
        "apiVersion": "2019-05-29",
        "source": "payments"
    })
}

#[tokio::test]
async fn a_published_event_is_stored_and_returned_as_json_with_201() {
    let mut app = spawn_app().await;

    let reply = publish_json(&app, &full_request()).await;

    assert_eq!(reply.status, 201, "{}", reply.text);
    let body = &reply.json;
    assert_eq!(body["id"], "evnt_test_http0001");
    assert_eq!(body["type"], "charge.create");
    assert_eq!(body["created"], "2024-05-01T10:00:00Z");
    assert_eq!(body["livemode"], true);
    assert_eq!(body["data"], full_request()["data"]);
    assert_eq!(body["apiVersion"], "2019-05-29");
    assert_eq!(body["source"], "payments");
    assert_eq!(body["location"], "/events/evnt_test_http0001");
    assert_eq!(body["sequence"], "1", "sequence is a string in proto3 JSON");
    assert!(body["received"].is_string(), "{}", reply.text);

    let stored = app
        .client
        .get_event(GetEventRequest { id: "evnt_test_http0001".into(), livemode: None })
        .await
        .expect("the event is durable once the 201 is sent")
        .into_inner();
    assert_eq!(stored.r#type, "charge.create");
    assert_eq!(stored.created, Some(rfc3339("2024-05-01T10:00:00Z")));
    assert!(stored.livemode);
    assert_eq!(stored.api_version, "2019-05-29");
    assert_eq!(stored.source, "payments");
    assert_eq!(stored.sequence, 1);
    assert_eq!(struct_json(stored.data.as_ref().expect("data")), full_request()["data"]);
}

#[tokio::test]
async fn an_event_without_an_id_gets_a_generated_test_id() {
    let app = spawn_app().await;

    let reply = publish_json(&app, &json!({"type": "charge.create", "data": {"amount": 1}})).await;

    assert_eq!(reply.status, 201, "{}", reply.text);
    let id = reply.json["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("evnt_test_"), "{id}");
    assert_eq!(reply.json["location"], format!("/events/{id}"));
    assert_eq!(reply.json["livemode"], false);
}

#[tokio::test]
async fn an_idempotent_repeat_is_200_with_the_same_body() {
    let mut app = spawn_app().await;

    let first = publish_json(&app, &full_request()).await;
    let repeat = publish_json(&app, &full_request()).await;

    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(repeat.status, 200, "{}", repeat.text);
    assert_eq!(repeat.json, first.json);
    assert_eq!(stored_total(&mut app.client).await, 1);
}

#[tokio::test]
async fn a_conflicting_repeat_is_409_and_keeps_the_first_event() {
    let mut app = spawn_app().await;
    let first = publish_json(&app, &full_request()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let mut changed = full_request();
    changed["data"]["amount"] = json!(1);

    let reply = publish_json(&app, &changed).await;

    assert_error(&reply, 409, "data", "a different data");
    assert_eq!(stored_total(&mut app.client).await, 1);
    let stored = app
        .client
        .get_event(GetEventRequest { id: "evnt_test_http0001".into(), livemode: None })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(struct_json(stored.data.as_ref().expect("data")), full_request()["data"]);
}

#[tokio::test]
async fn api_version_is_accepted_in_both_spellings() {
    let mut app = spawn_app().await;

    for (n, key) in ["apiVersion", "api_version"].into_iter().enumerate() {
        let id = format!("evnt_test_spelling{n}");
        let mut request = json!({"id": id, "type": "charge.create", "data": {"amount": 1}});
        request[key] = json!("2024-01-01");

        let reply = publish_json(&app, &request).await;

        assert_eq!(reply.status, 201, "{key}: {}", reply.text);
        assert_eq!(reply.json["apiVersion"], "2024-01-01", "{key}");
        let stored = app
            .client
            .get_event(GetEventRequest { id, livemode: None })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(stored.api_version, "2024-01-01", "{key}");
    }
}

#[tokio::test]
async fn healthz_reports_ok() {
    let app = spawn_app().await;

    let reply = get(&format!("{}/healthz", app.http)).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, json!({"status": "ok"}));
}

/// A row of the bad-body table: what is sent, the status expected, and what the error
/// message must name.
struct Bad {
    case: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    names: &'static str,
}

/// A JSON body, sent as `application/json`.
fn bad(case: &'static str, body: Json, status: u16, names: &'static str) -> Bad {
    bad_bytes(case, serde_json::to_vec(&body).expect("serialise"), status, names)
}

/// Raw bytes, sent as `application/json`.
fn bad_bytes(case: &'static str, body: Vec<u8>, status: u16, names: &'static str) -> Bad {
    Bad { case, content_type: Some("application/json"), body, status, names }
}

/// `{"type":…,"data":{"a":[[[…]]]}}` with `levels` nested lists inside `data`.
fn nested_data(levels: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"charge.create","data":{{"a":{}{}}}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
    .into_bytes()
}

#[tokio::test]
async fn every_bad_publish_is_refused_with_its_status_naming_the_field_and_stores_nothing() {
    // Arrange: a 1 KiB body limit, so an oversized body is cheap to build.
    let mut app = spawn_app_with(|config| config.max_body_bytes = 1024).await;
    let valid = || json!({"id": "evnt_test_bad", "type": "charge.create", "data": {"amount": 1}});
    let with = |key: &str, value: Json| {
        let mut body = valid();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = valid();
        body.as_object_mut().expect("object").remove(key);
        body
    };
    let beyond_2_53 = json!({"card": {"amount": 9_007_199_254_740_993_u64}});
    let padded = json!({"pad": "x".repeat(2048)});
    let invalid_utf8 = b"{\"type\":\"charge.create\",\"data\":{\"name\":\"\xff\"}}".to_vec();
    let plain = |content_type| Bad { content_type, ..bad("", valid(), 415, "application/json") };

    let cases = vec![
        bad("missing type", without("type"), 422, "type"),
        bad("empty type", with("type", json!("")), 422, "type"),
        bad("missing data", without("data"), 422, "data"),
        bad("data is a string", with("data", json!("charge")), 422, "data"),
        bad("data is a list", with("data", json!([1])), 422, "data"),
        bad("data is null", with("data", Json::Null), 422, "data"),
        bad("an unknown field", with("amount", json!(1)), 422, "amount"),
        bad("created not RFC 3339", with("created", json!("2024-05-01 10:00")), 422, "created"),
        bad("created a number", with("created", json!(1_714_557_600)), 422, "created"),
        bad("id with a space", with("id", json!("evnt 1")), 422, "id"),
        bad("id with a slash", with("id", json!("evnt/1")), 422, "id"),
        bad("id a number", with("id", json!(7)), 422, "id"),
        bad("livemode a string", with("livemode", json!("yes")), 422, "livemode"),
        bad("an integer beyond 2^53", with("data", beyond_2_53), 422, "data.card.amount"),
        bad("a JSON array body", json!([valid()]), 422, "body"),
        bad_bytes("data nested 100 levels", nested_data(100), 422, "data.a"),
        bad_bytes("data nested 200 levels", nested_data(200), 400, "JSON"),
        bad_bytes("not JSON", b"type=charge.create".to_vec(), 400, "JSON"),
        bad_bytes("truncated JSON", br#"{"type":"charge.create","data":{"#.to_vec(), 400, "JSON"),
        bad_bytes("invalid UTF-8", invalid_utf8, 400, "JSON"),
        bad("2 KiB over a 1 KiB limit", with("data", padded), 413, "1024"),
        Bad { case: "text/plain", ..plain(Some("text/plain")) },
        Bad { case: "no content type", ..plain(None) },
    ];

    for Bad { case, content_type, body, status, names } in cases {
        let reply = post(&format!("{}/events", app.http), content_type, &[], body).await;

        assert_error(&reply, status, names, case);
        assert_eq!(stored_total(&mut app.client).await, 0, "{case}: something was stored");
    }
}
