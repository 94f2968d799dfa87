//! Bad input on every RPC: the exact gRPC code, a message naming the field at fault, and
//! nothing stored. (`data` that is not an object cannot be sent: a Struct is always one.)

use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::{
    GetEventRequest, ListEventsRequest, Order, PublishEventRequest, PublishEventsRequest,
    SubscribeEventsRequest,
};
use prost_types::{value::Kind, Timestamp, Value};
use serde_json::json;
use tonic::{Code, Status};

use crate::helpers::{spawn_app, spawn_app_with};
use crate::support::{
    assert_rejected, at, event, json_struct, order, publish_batch, stored_total, Client, T0,
};

/// One call of any RPC, so a single table can hold every kind of bad request.
enum Call {
    Publish(PublishEventRequest),
    PublishBatch(Vec<PublishEventRequest>),
    Get(String),
    List(ListEventsRequest),
    Subscribe(SubscribeEventsRequest),
}

/// Makes the call; Ok means the server accepted it.
async fn send(client: &mut Client, call: Call) -> Result<(), Status> {
    match call {
        Call::Publish(request) => client.publish_event(request).await.map(drop),
        Call::PublishBatch(events) => {
            client.publish_events(PublishEventsRequest { events }).await.map(drop)
        }
        Call::Get(id) => client.get_event(GetEventRequest { id, livemode: None }).await.map(drop),
        Call::List(request) => client.list_events(request).await.map(drop),
        Call::Subscribe(request) => client.subscribe_events(request).await.map(drop),
    }
}

/// A row of the table: what is sent, the code expected, and what the message must contain.
struct Case {
    name: &'static str,
    call: Call,
    code: Code,
    names: String,
}

/// A row. `field` is the field at fault; messages read `field: reason`, so the message must
/// contain `field:` (which keeps a short name such as `to` from matching by accident). A
/// NOT_FOUND row names the id instead.
fn case(name: &'static str, call: Call, code: Code, field: &str) -> Case {
    let names = match code {
        Code::NotFound => field.to_string(),
        _ => format!("{field}:"),
    };
    Case { name, call, code, names }
}

/// Year 10000, one second past the last valid timestamp.
fn year_10000() -> Timestamp {
    at(253_402_300_800)
}

fn with_id(id: &str) -> PublishEventRequest {
    PublishEventRequest { id: id.into(), ..event("charge.create") }
}

fn with_type(event_type: &str) -> PublishEventRequest {
    event(event_type)
}

#[tokio::test]
async fn every_bad_request_is_rejected_with_its_code_naming_the_field_and_stores_nothing() {
    // Arrange: a 1 KiB data cap so an oversized `data` is cheap to build.
    let mut app = spawn_app_with(|config| config.max_data_bytes = 1024).await;
    let mut nan = event("charge.create");
    nan.data
        .as_mut()
        .unwrap()
        .fields
        .insert("amount".into(), Value { kind: Some(Kind::NumberValue(f64::NAN)) });
    let too_many: Vec<_> = (0..1_001).map(|_| event("charge.create")).collect();
    let cases = vec![
        // PublishEvent: required fields.
        case("missing type", Call::Publish(with_type("")), Code::InvalidArgument, "type"),
        case(
            "missing data",
            Call::Publish(PublishEventRequest { data: None, ..event("charge.create") }),
            Code::InvalidArgument,
            "data",
        ),
        case(
            "data over the cap",
            Call::Publish(PublishEventRequest {
                data: Some(json_struct(json!({"blob": "x".repeat(2048)}))),
                ..event("charge.create")
            }),
            Code::InvalidArgument,
            "data",
        ),
        case("data with NaN", Call::Publish(nan), Code::InvalidArgument, "data.amount"),
        // PublishEvent: ids.
        case("id with a space", Call::Publish(with_id("evt 1")), Code::InvalidArgument, "id"),
        case("id with a slash", Call::Publish(with_id("evt/1")), Code::InvalidArgument, "id"),
        case(
            "id of 129 characters",
            Call::Publish(with_id(&"a".repeat(129))),
            Code::InvalidArgument,
            "id",
        ),
        case("id not ASCII", Call::Publish(with_id("évt_1")), Code::InvalidArgument, "id"),
        // PublishEvent: types.
        case(
            "type with a space",
            Call::Publish(with_type("charge create")),
            Code::InvalidArgument,
            "type",
        ),
        case(
            "type with a wildcard",
            Call::Publish(with_type("charge.*")),
            Code::InvalidArgument,
            "type",
        ),
        case("type not ASCII", Call::Publish(with_type("chärge")), Code::InvalidArgument, "type"),
        case(
            "type of 129 characters",
            Call::Publish(with_type(&"t".repeat(129))),
            Code::InvalidArgument,
            "type",
        ),
        // PublishEvent: created, api_version, source.
        case(
            "created in year 10000",
            Call::Publish(PublishEventRequest {
                created: Some(year_10000()),
                ..event("charge.create")
            }),
            Code::InvalidArgument,
            "created",
        ),
        case(
            "created before year 1",
            Call::Publish(PublishEventRequest {
                created: Some(at(-62_135_596_801)),
                ..event("charge.create")
            }),
            Code::InvalidArgument,
            "created",
        ),
        case(
            "created with negative nanos",
            Call::Publish(PublishEventRequest {
                created: Some(Timestamp { seconds: T0, nanos: -1 }),
                ..event("charge.create")
            }),
            Code::InvalidArgument,
            "created",
        ),
        case(
            "api_version of 65 characters",
            Call::Publish(PublishEventRequest {
                api_version: "v".repeat(65),
                ..event("charge.create")
            }),
            Code::InvalidArgument,
            "api_version",
        ),
        case(
            "source with a control character",
            Call::Publish(PublishEventRequest {
                source: "omise\n".into(),
                ..event("charge.create")
            }),
            Code::InvalidArgument,
            "source",
        ),
        // PublishEvents.
        case(
            "a batch of 1,001 events",
            Call::PublishBatch(too_many),
            Code::InvalidArgument,
            "events",
        ),
        case("an empty batch", Call::PublishBatch(vec![]), Code::InvalidArgument, "events"),
        case(
            "the same id twice in a batch",
            Call::PublishBatch(vec![with_id("evt_twice"), with_id("evt_twice")]),
            Code::InvalidArgument,
            "events[1].id",
        ),
        case(
            "a bad entry in a batch",
            Call::PublishBatch(vec![event("charge.create"), event("charge.create"), with_type("")]),
            Code::InvalidArgument,
            "events[2].type",
        ),
        // GetEvent.
        case("get with an empty id", Call::Get(String::new()), Code::InvalidArgument, "id"),
        case("get with a malformed id", Call::Get("evt 1".into()), Code::InvalidArgument, "id"),
        case("get an unknown id", Call::Get("evt_unknown".into()), Code::NotFound, "evt_unknown"),
        // ListEvents.
        case(
            "list from after to",
            Call::List(ListEventsRequest {
                from: Some(at(T0 + 1)),
                to: Some(at(T0)),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "from",
        ),
        case(
            "list from in year 10000",
            Call::List(ListEventsRequest { from: Some(year_10000()), ..Default::default() }),
            Code::InvalidArgument,
            "from",
        ),
        case(
            "list to in year 10000",
            Call::List(ListEventsRequest { to: Some(year_10000()), ..Default::default() }),
            Code::InvalidArgument,
            "to",
        ),
        case(
            "list with a negative limit",
            Call::List(ListEventsRequest { limit: -1, ..Default::default() }),
            Code::InvalidArgument,
            "limit",
        ),
        case(
            "list with a negative offset",
            Call::List(ListEventsRequest { offset: -1, ..Default::default() }),
            Code::InvalidArgument,
            "offset",
        ),
        case(
            "list with an unknown order",
            Call::List(ListEventsRequest { order: 7, ..Default::default() }),
            Code::InvalidArgument,
            "order",
        ),
        case(
            "list with a garbage page token",
            Call::List(ListEventsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "page_token",
        ),
        case(
            "list with a wildcard inside a type pattern",
            Call::List(ListEventsRequest { types: vec!["char*ge".into()], ..Default::default() }),
            Code::InvalidArgument,
            "types[0]",
        ),
        case(
            "list with a bad second type pattern",
            Call::List(ListEventsRequest {
                types: vec!["charge.*".into(), "re fund".into()],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "types[1]",
        ),
        // SubscribeEvents.
        case(
            "subscribe with a wildcard inside a type pattern",
            Call::Subscribe(SubscribeEventsRequest {
                types: vec!["char*ge".into()],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "types[0]",
        ),
        case(
            "subscribe after a sequence beyond the newest",
            Call::Subscribe(SubscribeEventsRequest {
                start: Some(Start::AfterSequence(1)),
                ..Default::default()
            }),
            Code::OutOfRange,
            "after_sequence",
        ),
        case(
            "subscribe from a created in year 10000",
            Call::Subscribe(SubscribeEventsRequest {
                start: Some(Start::FromCreated(year_10000())),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "from_created",
        ),
    ];

    for Case { name, call, code, names } in cases {
        // Act
        let result = send(&mut app.client, call).await;

        // Assert
        assert_rejected(result, code, &names, name);
        assert_eq!(stored_total(&mut app.client).await, 0, "{name}: something was stored");
    }
}

#[tokio::test]
async fn a_page_token_is_rejected_when_garbled_or_when_the_query_around_it_changes() {
    // Arrange: a first page of a filtered listing, with a token for the next one.
    let mut app = spawn_app().await;
    publish_batch(
        &mut app.client,
        (0..3)
            .map(|i| PublishEventRequest { created: Some(at(T0 + i)), ..event("charge.create") })
            .collect(),
    )
    .await;
    let first = ListEventsRequest {
        from: Some(at(T0)),
        to: Some(at(T0 + 100)),
        limit: 1,
        order: order(Order::Chronological),
        types: vec!["charge.*".into()],
        livemode: Some(false),
        ..Default::default()
    };
    let token = app
        .client
        .list_events(first.clone())
        .await
        .expect("first page")
        .into_inner()
        .next_page_token;
    assert!(!token.is_empty());
    let mut flipped: Vec<char> = token.chars().collect();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    let next = ListEventsRequest { page_token: token.clone(), ..first.clone() };
    let cases = [
        (
            "garbage token",
            ListEventsRequest { page_token: "garbage".into(), ..next.clone() },
            "page_token",
        ),
        (
            "token with one character changed",
            ListEventsRequest { page_token: flipped, ..next.clone() },
            "page_token",
        ),
        (
            "token with a different from",
            ListEventsRequest { from: Some(at(T0 - 1)), ..next.clone() },
            "from",
        ),
        (
            "token with a different to",
            ListEventsRequest { to: Some(at(T0 + 101)), ..next.clone() },
            "to",
        ),
        (
            "token with a different order",
            ListEventsRequest { order: order(Order::ReverseChronological), ..next.clone() },
            "order",
        ),
        (
            "token with different types",
            ListEventsRequest { types: vec!["charge.create".into()], ..next.clone() },
            "types",
        ),
        (
            "token with a different livemode",
            ListEventsRequest { livemode: Some(true), ..next.clone() },
            "livemode",
        ),
        (
            "token with a different offset",
            ListEventsRequest { offset: 2, ..next.clone() },
            "offset",
        ),
    ];

    for (name, request, field) in cases {
        // Act
        let result = app.client.list_events(request).await;

        // Assert
        assert_rejected(result, Code::InvalidArgument, &format!("{field}:"), name);
    }
    let page = app.client.list_events(next).await.expect("the unchanged token still works");
    assert_eq!(page.into_inner().data.len(), 1);
    assert_eq!(stored_total(&mut app.client).await, 3);
}
