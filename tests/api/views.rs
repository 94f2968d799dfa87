//! The provider-shaped JSON views on the HTTP listener: `GET /events[/{id}]` in the Omise
//! shapes and `GET /api/v1/events[/{id}]` in the KOMOJU shapes. Provider fixtures published
//! over gRPC read back equal to the fixtures field by field; listings page by offset with
//! ListEvents' semantics; bad parameters are 422 naming the parameter; unknown ids are 404;
//! with API keys the views need a read key and show only its mode.

use eventsd::proto::{Event, PublishEventRequest};
use serde_json::{json, Value as Json};

use crate::helpers::{spawn_app, spawn_app_with_keys, TestApp};
use crate::support::{
    at, event, fixture, json_struct, publish, publish_with_key, rfc3339, HANG_GUARD, T0,
};

/// Fields the views add to the provider shapes; nothing else may appear.
const OMISE_EXTRAS: [&str; 4] = ["sequence", "source", "api_version", "received"];
const KOMOJU_EXTRAS: [&str; 5] = ["livemode", "sequence", "source", "api_version", "received"];

/// An HTTP reply: status and JSON body (`Null` when the body is not JSON).
struct Reply {
    status: u16,
    json: Json,
}

/// GETs `path` on the app's HTTP listener with optional extra headers.
async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Reply {
    let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let mut request = client.get(format!("{}{path}", app.http));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let exchange = async {
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("read the body");
        Reply { status, json: serde_json::from_slice(&bytes).unwrap_or(Json::Null) }
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTP request")
}

async fn get(app: &TestApp, path: &str) -> Reply {
    get_with(app, path, &[]).await
}

/// GETs `path` and expects 200.
async fn get_ok(app: &TestApp, path: &str) -> Json {
    let reply = get(app, path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.json);
    reply.json
}

/// Asserts that `actual` has exactly the fixture's fields, each equal, plus only `extras`.
fn assert_same_fields(actual: &Json, expected: &Json, extras: &[&str], what: &str) {
    let (Some(actual), Some(expected)) = (actual.as_object(), expected.as_object()) else {
        panic!("{what}: both must be objects: {actual} vs {expected}");
    };
    for (field, want) in expected {
        assert_eq!(actual.get(field), Some(want), "{what}: field {field:?}");
    }
    for field in actual.keys() {
        assert!(
            expected.contains_key(field) || extras.contains(&field.as_str()),
            "{what}: unexpected field {field:?}"
        );
    }
}

/// The publish request that stores a provider event as the provider sent it.
fn provider_event(
    id: &Json,
    event_type: &Json,
    created: &Json,
    data: &Json,
) -> PublishEventRequest {
    PublishEventRequest {
        id: id.as_str().expect("id").into(),
        r#type: event_type.as_str().expect("type").into(),
        created: Some(rfc3339(created.as_str().expect("created"))),
        data: Some(json_struct(data.clone())),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_omise_event_reads_back_equal_to_the_omise_fixture_field_by_field() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let sample = fixture("omise/charge.create.json");
    let stored = publish(
        &mut client,
        PublishEventRequest {
            livemode: sample["livemode"].as_bool().expect("livemode"),
            ..provider_event(&sample["id"], &sample["key"], &sample["created"], &sample["data"])
        },
    )
    .await;

    let body = get_ok(&app, &format!("/events/{}", stored.id)).await;

    for field in ["object", "id", "livemode", "location", "key", "created", "data"] {
        assert_eq!(body[field], sample[field], "field {field:?}");
    }
    assert_same_fields(&body, &sample, &OMISE_EXTRAS, "GET /events/{id}");
    assert_eq!(body["sequence"], json!(stored.sequence));
    // The event's location resolves to the event itself.
    let location = body["location"].as_str().expect("location");
    assert_eq!(get_ok(&app, location).await, body);
}

#[tokio::test]
async fn the_komoju_list_reads_back_equal_to_the_komoju_fixture_field_by_field() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let sample = fixture("komoju/events-list.json");
    let events = sample["data"].as_array().expect("data");
    // Both events share one created_at; KOMOJU lists most recent first, and eventsd breaks
    // the tie by sequence, descending. Publishing the fixture's last event first reproduces
    // the fixture's order.
    for e in events.iter().rev() {
        publish(&mut client, provider_event(&e["id"], &e["type"], &e["created_at"], &e["data"]))
            .await;
    }

    let body = get_ok(&app, "/api/v1/events?per_page=10").await;

    for field in ["resource", "total", "page", "per_page", "last_page"] {
        assert_eq!(body[field], sample[field], "field {field:?}");
    }
    let listed = body["data"].as_array().expect("data");
    assert_eq!(listed.len(), events.len());
    for (i, (got, want)) in listed.iter().zip(events).enumerate() {
        for field in ["id", "type", "resource", "data", "created_at"] {
            assert_eq!(got[field], want[field], "data[{i}].{field}");
        }
        assert_same_fields(got, want, &KOMOJU_EXTRAS, &format!("data[{i}]"));
    }
    let keys = |v: &Json| v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&body), keys(&sample), "the list has exactly KOMOJU's fields");
    // The defaults are KOMOJU's: page 1 of 10.
    assert_eq!(get_ok(&app, "/api/v1/events").await, body);
}

#[tokio::test]
async fn a_komoju_event_reads_back_equal_to_the_komoju_fixture() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let sample = fixture("komoju/payment.captured.json");
    publish(
        &mut client,
        provider_event(&sample["id"], &sample["type"], &sample["created_at"], &sample["data"]),
    )
    .await;

    let body = get_ok(&app, "/api/v1/events/bmon6b8awbd5wftxlpjxzpjte").await;

    for field in ["id", "type", "resource", "data", "created_at"] {
        assert_eq!(body[field], sample[field], "field {field:?}");
    }
    assert_same_fields(&body, &sample, &KOMOJU_EXTRAS, "GET /api/v1/events/{id}");
}

/// Publishes charge events created at T0, T0+1, … (ids `evt_0`, …) and returns them.
async fn publish_series(app: &TestApp, n: i64) -> Vec<Event> {
    let mut client = app.client.clone();
    let mut stored = Vec::new();
    for i in 0..n {
        let request = PublishEventRequest {
            id: format!("evt_{i}"),
            created: Some(at(T0 + i)),
            ..event(if i % 2 == 0 { "charge.create" } else { "refund.create" })
        };
        stored.push(publish(&mut client, request).await);
    }
    stored
}

fn listed_ids(body: &Json) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn the_omise_list_pages_by_offset_limit_order_and_range_with_the_exact_total() {
    let app = spawn_app().await;
    publish_series(&app, 6).await;
    let from = "2020-09-13T12:26:41Z"; // T0 + 1
    let to = "2020-09-13T12:26:44Z"; // T0 + 4

    let body = get_ok(&app, &format!("/events?from={from}&to={to}&offset=1&limit=2")).await;
    assert_eq!(listed_ids(&body), ["evt_2", "evt_3"]);
    assert_eq!(body["object"], "list");
    assert_eq!(body["location"], "/events");
    assert_eq!(body["total"], 4);
    assert_eq!(body["offset"], 1);
    assert_eq!(body["limit"], 2);
    assert_eq!(body["order"], "chronological");
    assert_eq!(body["from"], from);
    assert_eq!(body["to"], to);
    let first = &body["data"][0];
    assert_eq!(first["object"], "event");
    assert_eq!(first["key"], "charge.create");
    assert_eq!(first["created"], "2020-09-13T12:26:42Z");
    assert_eq!(first["location"], "/events/evt_2");

    let reverse = get_ok(
        &app,
        &format!("/events?from={from}&to={to}&offset=1&limit=2&order=reverse_chronological"),
    )
    .await;
    assert_eq!(listed_ids(&reverse), ["evt_3", "evt_2"]);
    assert_eq!(reverse["order"], "reverse_chronological");
    assert_eq!(reverse["total"], 4);

    // Defaults: everything from 1970 to now, 20 per page, offset 0, chronological.
    let all = get_ok(&app, "/events").await;
    assert_eq!(listed_ids(&all), ["evt_0", "evt_1", "evt_2", "evt_3", "evt_4", "evt_5"]);
    assert_eq!((all["limit"].clone(), all["offset"].clone()), (json!(20), json!(0)));
    assert_eq!(all["from"], "1970-01-01T00:00:00Z");
    // A limit above 100 is reduced to 100, as in ListEvents.
    assert_eq!(get_ok(&app, "/events?limit=1000").await["limit"], 100);
    // Past the end: an empty page with the total.
    let past = get_ok(&app, "/events?offset=10").await;
    assert_eq!((listed_ids(&past).len(), past["total"].clone()), (0, json!(6)));
    // A time written with a UTC offset (`+` escaped in the URL) means the same instant.
    let plus = get_ok(&app, "/events?from=2020-09-13T19:26:44%2B07:00&limit=1").await;
    assert_eq!(listed_ids(&plus), ["evt_4"]);
}

#[tokio::test]
async fn the_views_filter_by_type_and_livemode_as_list_events_does() {
    let app = spawn_app().await;
    publish_series(&app, 4).await;
    let mut client = app.client.clone();
    let live = PublishEventRequest {
        id: "evt_live".into(),
        livemode: true,
        created: Some(at(T0 + 10)),
        ..event("charge.capture")
    };
    publish(&mut client, live).await;

    let charges = get_ok(&app, "/events?type=charge.*").await;
    assert_eq!(listed_ids(&charges), ["evt_0", "evt_2", "evt_live"]);
    assert_eq!(charges["total"], 3);
    let two = get_ok(&app, "/events?type=refund.create&type=charge.capture").await;
    assert_eq!(listed_ids(&two), ["evt_1", "evt_3", "evt_live"]);
    let comma = get_ok(&app, "/events?type=refund.create,charge.capture").await;
    assert_eq!(listed_ids(&comma), listed_ids(&two));
    let test_only = get_ok(&app, "/events?type=charge.*&livemode=false").await;
    assert_eq!(listed_ids(&test_only), ["evt_0", "evt_2"]);
    let live_only = get_ok(&app, "/events?livemode=true").await;
    assert_eq!(listed_ids(&live_only), ["evt_live"]);
    assert_eq!(live_only["data"][0]["livemode"], true);

    let komoju = get_ok(&app, "/api/v1/events?type=charge.*&per_page=2").await;
    assert_eq!(listed_ids(&komoju), ["evt_live", "evt_2"]);
    assert_eq!((komoju["total"].clone(), komoju["last_page"].clone()), (json!(3), json!(2)));
    let page_2 = get_ok(&app, "/api/v1/events?type=charge.*&per_page=2&page=2").await;
    assert_eq!(listed_ids(&page_2), ["evt_0"]);
    assert_eq!(page_2["page"], 2);
    let beyond = get_ok(&app, "/api/v1/events?per_page=2&page=9").await;
    assert!(listed_ids(&beyond).is_empty());
    assert_eq!(get_ok(&app, "/api/v1/events?per_page=500").await["per_page"], 100);
}

#[tokio::test]
async fn the_views_filter_by_source_and_show_when_each_event_was_received() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    for (i, source) in ["omise", "komoju", "omise", ""].into_iter().enumerate() {
        let request = PublishEventRequest {
            id: format!("evt_{i}"),
            created: Some(at(T0 + i as i64)),
            source: source.into(),
            ..event("charge.create")
        };
        publish(&mut client, request).await;
    }

    let omise = get_ok(&app, "/events?source=omise&order=reverse_chronological").await;
    assert_eq!(listed_ids(&omise), ["evt_2", "evt_0"]);
    assert_eq!(omise["total"], 2);
    assert_eq!(omise["data"][0]["source"], "omise");
    let komoju = get_ok(&app, "/api/v1/events?source=komoju").await;
    assert_eq!(
        (listed_ids(&komoju), komoju["total"].clone()),
        (vec!["evt_1".to_string()], json!(1))
    );
    // `received` is the server's commit time, not the caller's `created`.
    let received = omise["data"][0]["received"].as_str().expect("received is a time");
    let received = rfc3339(received);
    assert!(received.seconds > T0 + 10, "received {received:?} is the commit time");
    let one = get_ok(&app, "/events/evt_1").await;
    assert!(one["received"].is_string(), "{one}");
    assert!(get_ok(&app, "/api/v1/events/evt_1").await["received"].is_string());
    let bad = get(&app, &format!("/events?source={}", "x".repeat(65))).await;
    assert_eq!(bad.status, 422, "{}", bad.json);
    assert!(bad.json["message"].as_str().unwrap_or("").starts_with("source"), "{}", bad.json);
}

#[tokio::test]
async fn bad_query_parameters_are_422_naming_the_parameter() {
    let app = spawn_app().await;
    let cases = [
        ("/events?limit=-1", "limit"),
        ("/events?limit=ten", "limit"),
        ("/events?offset=-5", "offset"),
        ("/events?order=newest", "order"),
        ("/events?order=ORDER_REVERSE_CHRONOLOGICAL", "order"),
        ("/events?from=yesterday", "from"),
        ("/events?to=2020-13-01T00:00:00Z", "to"),
        ("/events?from=2021-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", "from"),
        ("/events?limit=1&limit=2", "limit"),
        ("/events?livemode=yes", "livemode"),
        ("/events?type=charge*create", "type"),
        ("/api/v1/events?page=0", "page"),
        ("/api/v1/events?page=-1", "page"),
        ("/api/v1/events?page=2147483647", "page"),
        ("/api/v1/events?per_page=0", "per_page"),
        ("/api/v1/events?per_page=many", "per_page"),
        ("/api/v1/events?livemode=1", "livemode"),
        ("/api/v1/events?type=*x", "type"),
    ];
    for (path, param) in cases {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, 422, "{path}: {}", reply.json);
        assert_eq!(reply.json["object"], "error", "{path}");
        assert_eq!(reply.json["code"], "invalid_argument", "{path}");
        let message = reply.json["message"].as_str().expect("message");
        assert!(message.starts_with(&format!("{param}: ")), "{path}: {message}");
    }
}

#[tokio::test]
async fn unknown_ids_are_404_in_the_omise_error_shape() {
    let app = spawn_app().await;
    publish_series(&app, 1).await;
    for path in [
        "/events/evnt_test_nope",
        "/api/v1/events/evnt_test_nope",
        "/events/not%20an%20id",
        "/api/v1/events/x%2Fy",
    ] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.json);
        assert_eq!(reply.json["object"], "error", "{path}");
        assert_eq!(reply.json["code"], "not_found", "{path}");
        assert!(reply.json["message"].as_str().is_some_and(|m| m.contains("not found")), "{path}");
    }
}

#[tokio::test]
async fn the_views_do_not_disturb_post_events_on_the_same_path() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let response = client
        .post(format!("{}/events", app.http))
        .header("content-type", "application/json")
        .body(r#"{"id":"evt_http","type":"refund.create","data":{"amount":5000}}"#)
        .send()
        .await
        .expect("POST /events");
    assert_eq!(response.status().as_u16(), 201);
    let body = get_ok(&app, "/events/evt_http").await;
    assert_eq!(
        (body["key"].clone(), body["data"].clone()),
        (json!("refund.create"), json!({"amount": 5000}))
    );
    // A method neither router serves is 405, not a view.
    let delete = client.delete(format!("{}/events", app.http)).send().await.expect("DELETE");
    assert_eq!(delete.status().as_u16(), 405);
}

/// A key file: an admin key, a test-mode read key and a publish-only key.
const KEYS: &str = r#"
[[key]]
name = "admin"
key = "sk_admin_views"
scopes = ["admin"]
mode = "all"

[[key]]
name = "test-reader"
key = "sk_test_reader"
scopes = ["read"]
mode = "test"

[[key]]
name = "publisher"
key = "sk_publisher"
scopes = ["publish"]
mode = "all"
"#;

#[tokio::test]
async fn with_api_keys_the_views_need_a_read_key_and_show_only_its_mode() {
    let (app, _keys) = spawn_app_with_keys(KEYS).await;
    let mut client = app.client.clone();
    for (id, livemode) in [("evt_test_1", false), ("evt_live_1", true)] {
        let request = PublishEventRequest { id: id.into(), livemode, ..event("charge.create") };
        publish_with_key(&mut client, "sk_admin_views", request).await;
    }

    for path in ["/events", "/events/evt_test_1", "/api/v1/events", "/api/v1/events/evt_test_1"] {
        let anonymous = get(&app, path).await;
        assert_eq!(anonymous.status, 401, "{path} without a key: {}", anonymous.json);
        let wrong = get_with(&app, path, &[("authorization", "Bearer sk_wrong")]).await;
        assert_eq!(wrong.status, 401, "{path} with an unknown key");
        let publisher = get_with(&app, path, &[("authorization", "Bearer sk_publisher")]).await;
        assert_eq!(publisher.status, 403, "{path} with a publish-only key: {}", publisher.json);
    }
    // Bad parameters from a caller without a key reveal nothing: 401 before 422.
    assert_eq!(get(&app, "/events?limit=-1").await.status, 401);

    // HTTP Basic with the key as the user name, as `curl -u sk_…:` sends it.
    let basic = [("authorization", "Basic c2tfdGVzdF9yZWFkZXI6")]; // sk_test_reader:
    let bearer = [("authorization", "Bearer sk_test_reader")];
    let omise = get_with(&app, "/events", &basic).await;
    assert_eq!(omise.status, 200, "{}", omise.json);
    assert_eq!(
        (listed_ids(&omise.json), omise.json["total"].clone()),
        (vec!["evt_test_1".to_string()], json!(1))
    );
    let komoju = get_with(&app, "/api/v1/events", &bearer).await;
    assert_eq!(
        (listed_ids(&komoju.json), komoju.json["total"].clone()),
        (vec!["evt_test_1".to_string()], json!(1))
    );
    assert_eq!(get_with(&app, "/events/evt_test_1", &bearer).await.status, 200);
    // A live event does not exist for a test key, and asking for live events is refused.
    assert_eq!(get_with(&app, "/events/evt_live_1", &bearer).await.status, 404);
    assert_eq!(get_with(&app, "/api/v1/events/evt_live_1", &basic).await.status, 404);
    assert_eq!(get_with(&app, "/events?livemode=true", &bearer).await.status, 403);
    let admin = get_with(&app, "/events", &[("authorization", "Bearer sk_admin_views")]).await;
    assert_eq!(admin.json["total"], 2);
}

/// True for `YYYY-MM-DDTHH:MM:SSZ` exactly: whole seconds, UTC, `Z`.
fn is_provider_time(value: &Json) -> bool {
    let Some(text) = value.as_str() else { return false };
    let shape = text.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        19 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    text.len() == 20 && shape
}

#[tokio::test]
async fn the_omise_and_komoju_views_print_times_in_whole_seconds_with_z() {
    // Arrange: an event created with a fraction of a second, and a range that has one.
    let mut app = spawn_app().await;
    let created = prost_types::Timestamp { seconds: T0, nanos: 987_654_321 };
    let stored =
        publish(&mut app.client, PublishEventRequest { created: Some(created), ..event("a.b") })
            .await;
    let range = "from=2020-09-13T12:26:39.5Z&to=2999-01-01T00:00:00.25Z";

    // Act
    let omise_event = get_ok(&app, &format!("/events/{}", stored.id)).await;
    let omise_list = get_ok(&app, &format!("/events?{range}")).await;
    let komoju_event = get_ok(&app, &format!("/api/v1/events/{}", stored.id)).await;
    let komoju_list = get_ok(&app, "/api/v1/events").await;

    // Assert: the fraction is dropped, never rounded up.
    assert_eq!(omise_event["created"], "2020-09-13T12:26:40Z", "{omise_event}");
    assert_eq!(omise_list["from"], "2020-09-13T12:26:39Z", "{omise_list}");
    assert_eq!(omise_list["to"], "2999-01-01T00:00:00Z", "{omise_list}");
    assert_eq!(omise_list["data"][0]["created"], "2020-09-13T12:26:40Z", "{omise_list}");
    assert_eq!(komoju_event["created_at"], "2020-09-13T12:26:40Z", "{komoju_event}");
    assert_eq!(komoju_list["data"][0]["created_at"], "2020-09-13T12:26:40Z", "{komoju_list}");
    // The default `to` (now) has a fraction too; it prints the same way.
    let default_range = get_ok(&app, "/events").await;
    assert!(is_provider_time(&default_range["to"]), "{default_range}");
    assert!(is_provider_time(&default_range["from"]), "{default_range}");
}
