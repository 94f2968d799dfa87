//! `GET /stream/events`, SubscribeEvents as Server-Sent Events: catch-up then live with the
//! same JSON as `GET /events/{id}`, `caught_up` once, heartbeats, resume by `Last-Event-ID`
//! across a restart, the filters and start parameters, keys and modes, `--max-subscribers`
//! shared with gRPC, many concurrent streams, and `GET /whoami`. (A key removed by a reload
//! is in `security`, which runs the binary to send it SIGHUP; an expired position is in
//! `retention`.)

use std::time::Duration;

use eventsd::proto::{PublishEventRequest, SubscribeEventsRequest};
use serde_json::{json, Value as Json};
use tonic::Code;

use crate::helpers::{spawn_app, spawn_app_with, spawn_app_with_keys, TestApp};
use crate::support::{
    at, event, http_client, open_sse, open_sse_with, publish, publish_batch, publish_with_key,
    SseFrame, HANG_GUARD, T0,
};

/// Extra request headers.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// `GET {path}` as JSON (status and body).
async fn get_json(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (u16, Json) {
    let mut request = http_client().get(format!("{}{path}", app.http));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response =
        tokio::time::timeout(HANG_GUARD, request.send()).await.expect("hang guard").expect("send");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
}

/// Publishes events `evt_{from}`..`evt_{to}` (exclusive) of alternating types.
async fn publish_range(app: &TestApp, from: u64, to: u64) {
    let requests = (from..to)
        .map(|i| PublishEventRequest {
            id: format!("evt_{i}"),
            created: Some(at(T0 + i as i64)),
            ..event(if i % 2 == 0 { "charge.create" } else { "refund.create" })
        })
        .collect();
    publish_batch(&mut app.client.clone(), requests).await;
}

fn ids(events: &[(u64, Json)]) -> Vec<String> {
    events.iter().map(|(_, e)| e["id"].as_str().expect("id").to_string()).collect()
}

#[tokio::test]
async fn a_stream_replays_the_history_says_caught_up_once_then_delivers_live_events() {
    // Arrange
    let app = spawn_app().await;
    publish_range(&app, 0, 3).await;

    // Act
    let mut stream = open_sse(&app.http, "?from_beginning=true", &[]).await.expect("open");
    let (history, caught_up) = stream.history(10).await;
    publish_range(&app, 3, 5).await;
    let live = [stream.event().await, stream.event().await];

    // Assert: ids are sequences, data is exactly what GET /events/{id} answers.
    assert_eq!(ids(&history), ["evt_0", "evt_1", "evt_2"]);
    assert_eq!(history.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(caught_up, 3);
    for (id, body) in history.iter().chain(&live) {
        let (status, view) =
            get_json(&app, &format!("/events/{}", body["id"].as_str().unwrap()), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body, &view, "event {id}");
        assert_eq!(body["sequence"], json!(id));
    }
    assert_eq!(ids(&live), ["evt_3", "evt_4"]);

    // Without a start, only what commits from now on.
    let mut from_now = open_sse(&app.http, "", &[]).await.expect("open");
    assert_eq!(from_now.history(0).await, (vec![], 5));
    publish_range(&app, 5, 6).await;
    assert_eq!(ids(&[from_now.event().await]), ["evt_5"]);
}

#[tokio::test]
async fn heartbeats_are_comments_at_the_heartbeat_interval() {
    let app = spawn_app_with(|c| c.heartbeat_interval = Duration::from_millis(50)).await;
    let mut stream = open_sse(&app.http, "", &[]).await.expect("open");
    assert_eq!(stream.history(0).await.1, 0);
    let mut beats = 0;
    for _ in 0..100 {
        match stream.frame().await.expect("open") {
            SseFrame::Comment(text) if text == "heartbeat" => beats += 1,
            other => panic!("only heartbeats are due on an idle stream, got {other:?}"),
        }
        if beats == 2 {
            break;
        }
    }
    assert_eq!(beats, 2);
}

#[tokio::test]
async fn last_event_id_resumes_across_a_restart_with_nothing_lost_or_repeated() {
    // Arrange: read part of the history, remember the last id, stop the server.
    let app = spawn_app().await;
    publish_range(&app, 0, 6).await;
    let mut stream = open_sse(&app.http, "?from_beginning=true", &[]).await.expect("open");
    let first = [stream.event().await, stream.event().await];
    drop(stream);
    let app = app.restart().await;
    publish_range(&app, 6, 8).await;

    // Act: resume as EventSource does, with Last-Event-ID (it wins over the query's start).
    let last = first[1].0.to_string();
    let resume = [("last-event-id", last.as_str())];
    let mut resumed = open_sse(&app.http, "?from_beginning=true", &resume).await.expect("resume");
    let (rest, caught_up) = resumed.history(20).await;

    // Assert
    let mut all = ids(&first);
    all.extend(ids(&rest));
    assert_eq!(all, (0..8).map(|i| format!("evt_{i}")).collect::<Vec<_>>());
    assert_eq!(caught_up, 8);
    // The caught_up message carries an id too, so a reconnect after it resumes from there.
    let mut again = open_sse(&app.http, "", &[("last-event-id", "8")]).await.expect("resume");
    assert_eq!(again.history(0).await, (vec![], 8));
}

#[tokio::test]
async fn the_query_parameters_filter_and_place_the_start_as_the_views_name_them() {
    let app = spawn_app().await;
    publish_range(&app, 0, 6).await;
    let live = PublishEventRequest {
        id: "evt_live".into(),
        livemode: true,
        created: Some(at(T0 + 100)),
        ..event("charge.capture")
    };
    publish(&mut app.client.clone(), live).await;

    let cases: [(&str, &[&str]); 6] = [
        ("?from_beginning=true&type=charge.*", &["evt_0", "evt_2", "evt_4", "evt_live"]),
        (
            "?from_beginning=true&type=refund.create,charge.capture",
            &["evt_1", "evt_3", "evt_5", "evt_live"],
        ),
        (
            "?from_beginning=true&type=refund.create&type=charge.capture&livemode=false",
            &["evt_1", "evt_3", "evt_5"],
        ),
        ("?from_beginning=true&livemode=true", &["evt_live"]),
        ("?after_sequence=4", &["evt_4", "evt_5", "evt_live"]),
        ("?from_created=2020-09-13T12:26:43Z", &["evt_3", "evt_4", "evt_5", "evt_live"]),
    ];
    for (query, want) in cases {
        let mut stream = open_sse(&app.http, query, &[]).await.expect(query);
        let (events, caught_up) = stream.history(20).await;
        assert_eq!(ids(&events), want, "{query}");
        assert_eq!(caught_up, 7, "{query}");
    }

    let bad: [(&str, Headers<'_>, u16, &str); 8] = [
        ("?from_beginning=true&after_sequence=1", &[], 422, "from_beginning, after_sequence"),
        (
            "?after_sequence=1&from_created=2020-09-13T12:26:43Z",
            &[],
            422,
            "after_sequence, from_created",
        ),
        ("?type=charge.*x", &[], 422, "type"),
        ("?livemode=yes", &[], 422, "livemode"),
        ("?after_sequence=-1", &[], 422, "after_sequence"),
        ("?from_created=yesterday", &[], 422, "from_created"),
        ("", &[("last-event-id", "abc")], 422, "Last-Event-ID"),
        ("?after_sequence=99", &[], 400, "after_sequence"),
    ];
    for (query, headers, status, field) in bad {
        let Err((got, body)) = open_sse(&app.http, query, headers).await else {
            panic!("{query} {headers:?}: expected {status}");
        };
        assert_eq!(got, status, "{query} {headers:?}: {body}");
        assert_eq!(body["object"], "error", "{query}: {body}");
        let message = body["message"].as_str().unwrap_or("");
        assert!(message.starts_with(field), "{query}: the message should name {field}: {body}");
    }
    let Err((_, beyond)) = open_sse(&app.http, "", &[("last-event-id", "99")]).await else {
        panic!("a Last-Event-ID beyond the store is refused");
    };
    assert!(beyond["message"].as_str().unwrap_or("").starts_with("Last-Event-ID"), "{beyond}");
}

const KEYS: &str = r#"
[[key]]
name = "admin"
key = "sk_admin_stream"
scopes = ["admin"]
mode = "all"

[[key]]
name = "test-subscriber"
key = "sk_test_subscriber"
scopes = ["subscribe"]
mode = "test"

[[key]]
name = "reader"
key = "sk_reader"
scopes = ["read", "publish"]
mode = "live"
"#;

#[tokio::test]
async fn with_api_keys_a_stream_needs_the_subscribe_scope_and_shows_only_its_mode() {
    let (app, _keys) = spawn_app_with_keys(KEYS).await;
    let mut client = app.client.clone();
    for (id, livemode) in [("evt_test_1", false), ("evt_live_1", true)] {
        let request = PublishEventRequest { id: id.into(), livemode, ..event("charge.create") };
        publish_with_key(&mut client, "sk_admin_stream", request).await;
    }

    let refusals: [(&[(&str, &str)], u16); 3] = [
        (&[], 401),
        (&[("authorization", "Bearer sk_unknown")], 401),
        (&[("authorization", "Bearer sk_reader")], 403),
    ];
    for (headers, status) in refusals {
        let Err((got, body)) = open_sse(&app.http, "?from_beginning=true", headers).await else {
            panic!("{headers:?}: expected {status}");
        };
        assert_eq!(got, status, "{headers:?}: {body}");
    }
    // 401 comes before the parameters are looked at.
    let Err((status, _)) = open_sse(&app.http, "?livemode=yes", &[]).await else { panic!() };
    assert_eq!(status, 401);

    let bearer = [("authorization", "Bearer sk_test_subscriber")];
    let mut test = open_sse(&app.http, "?from_beginning=true", &bearer).await.expect("test key");
    assert_eq!(ids(&test.history(10).await.0), ["evt_test_1"]);
    let Err((status, body)) = open_sse(&app.http, "?livemode=true", &bearer).await else {
        panic!()
    };
    assert_eq!(status, 403, "{body}");
    // HTTP Basic with the key as the user name works too (curl -u sk_…:).
    let basic = [("authorization", "Basic c2tfYWRtaW5fc3RyZWFtOg==")]; // sk_admin_stream:
    let mut admin = open_sse(&app.http, "?from_beginning=true", &basic).await.expect("admin key");
    assert_eq!(ids(&admin.history(10).await.0), ["evt_test_1", "evt_live_1"]);

    // whoami answers for any valid key, whatever its scopes.
    let (status, me) = get_json(&app, "/whoami", &[("authorization", "Bearer sk_reader")]).await;
    assert_eq!(status, 200);
    assert_eq!(me, json!({"name": "reader", "scopes": ["read", "publish"], "mode": "live"}));
    assert_eq!(get_json(&app, "/whoami", &[]).await.0, 401);
    assert_eq!(get_json(&app, "/whoami", &[("authorization", "Bearer nope")]).await.0, 401);
}

#[tokio::test]
async fn without_keys_whoami_is_the_unrestricted_anonymous_caller() {
    let app = spawn_app().await;
    let (status, me) = get_json(&app, "/whoami", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(me, json!({"name": "anonymous", "scopes": ["admin"], "mode": "all"}));
}

#[tokio::test]
async fn max_subscribers_counts_sse_and_grpc_streams_together() {
    let app = spawn_app_with(|c| c.max_subscribers = 1).await;
    let sse = open_sse(&app.http, "", &[]).await.expect("the first stream");
    let Err((status, body)) = open_sse(&app.http, "", &[]).await else { panic!("over the cap") };
    assert_eq!(status, 503, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("--max-subscribers"), "{body}");
    let grpc = app.client.clone().subscribe_events(SubscribeEventsRequest::default()).await;
    assert_eq!(grpc.expect_err("over the cap").code(), Code::ResourceExhausted);
    drop(sse);
    // The slot comes back once the server sees the stream gone (bounded retries, no sleep
    // for speed: each try is a request).
    for _ in 0..1_000 {
        if let Ok(mut stream) = open_sse(&app.http, "", &[]).await {
            assert_eq!(stream.history(0).await.1, 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the slot of a closed SSE stream never came back");
}

#[tokio::test]
async fn a_thousand_concurrent_streams_each_get_every_event_in_order() {
    const STREAMS: usize = 1_000;
    const EVENTS: u64 = 20;
    let app = spawn_app().await;
    let client = http_client();
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut stream = open_sse_with(&client, &app.http, "", &[]).await.expect("open");
        assert_eq!(stream.history(0).await.1, 0);
        streams.push(stream);
    }
    publish_range(&app, 0, EVENTS).await;
    let readers = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(EVENTS as usize);
            for _ in 0..EVENTS {
                got.push(stream.event().await.0);
            }
            got
        })
    });
    let want: Vec<u64> = (1..=EVENTS).collect();
    for (i, reader) in readers.collect::<Vec<_>>().into_iter().enumerate() {
        assert_eq!(reader.await.expect("reader"), want, "stream {i}");
    }
}
