//! Deeply nested `data`: the documented 64-level limit (`event::json::MAX_DEPTH`) against what
//! protobuf decoding allows (prost stops at 100 nested messages, about 3 per Struct level), over
//! gRPC and over the JSON path into the same store. An event is either refused, naming `data`,
//! or readable by every RPC: never stored and then unreadable.

use eventsd::proto::{GetEventRequest, ListEventsRequest, PublishEventRequest};
use prost_types::{value::Kind, Struct, Value};
use serde_json::{json, Value as Json};
use tonic::Code;

use crate::helpers::spawn_app;
use crate::support::{
    event, everything, from_beginning, history, stored_total, subscribe, HANG_GUARD,
};

/// Nesting inside the documented limit of 64 and beyond what prost decodes in a request.
const DEPTH: usize = 40;

/// The deepest nesting a PublishEventRequest and a bare Event decode with, but a
/// ListEventsResponse or SubscribeEventsResponse (one message deeper) does not.
const EDGE_DEPTH: usize = 34;

/// `{"a": {"a": … {}}}` with `depth` objects in all.
fn nested_struct(depth: usize) -> Struct {
    let mut data = Struct::default();
    for _ in 1..depth {
        let mut outer = Struct::default();
        outer.fields.insert("a".into(), Value { kind: Some(Kind::StructValue(data)) });
        data = outer;
    }
    data
}

fn nested_json(depth: usize) -> Json {
    let mut data = json!({});
    for _ in 1..depth {
        data = json!({ "a": data });
    }
    data
}

#[tokio::test]
async fn data_nested_34_levels_is_refused_or_readable_by_every_rpc() {
    // Arrange
    let mut app = spawn_app().await;
    let request = PublishEventRequest {
        id: "evt_edge".into(),
        data: Some(nested_struct(EDGE_DEPTH)),
        ..event("charge.create")
    };

    // Act
    let published = app.client.publish_event(request).await;

    // Assert
    if let Err(status) = published {
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains("data"), "{}", status.message());
        assert_eq!(stored_total(&mut app.client).await, 0);
        return;
    }
    let fetched =
        app.client.get_event(GetEventRequest { id: "evt_edge".into(), livemode: None }).await;
    let listed = app.client.list_events(everything()).await;
    let mut subscriber = app.new_client().await;
    let mut stream = subscribe(&mut subscriber, from_beginning()).await;
    let replayed =
        tokio::time::timeout(HANG_GUARD, stream.message()).await.expect("hang guard: subscription");
    let outcome = format!(
        "GetEvent: {:?}\nListEvents: {:?}\nSubscribeEvents: {:?}",
        fetched.as_ref().map(|_| ()).map_err(|s| s.message().to_string()),
        listed.as_ref().map(|_| ()).map_err(|s| s.message().chars().take(120).collect::<String>()),
        replayed.as_ref().map(|_| ()).map_err(|s| s
            .message()
            .chars()
            .take(120)
            .collect::<String>()),
    );
    assert!(
        fetched.is_ok() && listed.is_ok() && replayed.is_ok(),
        "an accepted event cannot be read back:\n{outcome}"
    );
}

#[tokio::test]
async fn data_nested_beyond_what_protobuf_decodes_is_refused_and_stores_nothing() {
    // Arrange
    let mut app = spawn_app().await;
    let request =
        PublishEventRequest { data: Some(nested_struct(DEPTH)), ..event("charge.create") };

    // Act
    let result = app.client.publish_event(request).await;

    // Assert: the request cannot be parsed, which gRPC's status code table makes INTERNAL
    // (tonic's codec answers before eventsd sees the request); INVALID_ARGUMENT would do too.
    let status = result.expect_err("a request nested beyond the decoder's limit");
    assert!(matches!(status.code(), Code::Internal | Code::InvalidArgument), "{status:?}");
    assert!(status.message().contains("data"), "{}", status.message());
    assert_eq!(stored_total(&mut app.client).await, 0);
}

#[tokio::test]
async fn an_event_the_json_path_accepts_can_be_read_back_over_grpc() {
    // Arrange: `POST /events` with data nested 40 levels (the JSON limit is 64).
    let mut app = spawn_app().await;
    let body = json!({
        "id": "evt_deep",
        "type": "charge.create",
        "data": nested_json(DEPTH),
    });
    let response = tokio::time::timeout(
        HANG_GUARD,
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client")
            .post(format!("{}/events", app.http))
            .json(&body)
            .send(),
    )
    .await
    .expect("hang guard: POST /events")
    .expect("POST /events");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    if status != 201 {
        // Refusing it up front is the other correct answer; then nothing may be stored.
        assert_eq!(status, 422, "{text}");
        assert!(text.contains("data"), "{text}");
        assert_eq!(stored_total(&mut app.client).await, 0);
        return;
    }

    // Act
    let fetched =
        app.client.get_event(GetEventRequest { id: "evt_deep".into(), livemode: None }).await;
    let listed = app.client.list_events(ListEventsRequest { ..everything() }).await;
    let mut subscriber = app.new_client().await;
    let mut stream = subscribe(&mut subscriber, from_beginning()).await;
    let replayed =
        tokio::time::timeout(HANG_GUARD, stream.message()).await.expect("hang guard: subscription");

    // Assert: a stored event must never make reads fail.
    let outcome = format!(
        "GetEvent: {:?}\nListEvents: {:?}\nSubscribeEvents: {:?}",
        fetched.as_ref().map(|r| r.get_ref().id.clone()).map_err(|s| s.code()),
        listed.as_ref().map(|r| r.get_ref().total).map_err(|s| s.code()),
        replayed.as_ref().map(|m| m.is_some()).map_err(|s| s.code()),
    );
    assert!(
        fetched.is_ok() && listed.is_ok() && replayed.is_ok(),
        "an accepted event broke reads:\n{outcome}"
    );
    assert_eq!(listed.unwrap().into_inner().total, 1);
    let (events, caught_up) = history(&mut stream, 5).await;
    assert_eq!((events.len(), caught_up), (0, 1), "after the first event only caught_up");
}
