//! CloudEvents 1.0: SubscribeEvents with FORMAT_CLOUDEVENT sends `cloud_event` items
//! (io.cloudevents.v1 protobuf), and the HTTP listener serves the JSON structured format at
//! `GET /cloudevents/{id}` and JSON batches at `GET /cloudevents?after_sequence=N`, with the
//! next poll position in `Eventsd-Next-After`. The Omise fixture, delivered as a webhook,
//! must read back with every attribute of the mapping and its `data` unchanged.

use std::collections::BTreeSet;

use eventsd::event::cloudevent::proto_to_json;
use eventsd::proto::io::cloudevents::v1::cloud_event::cloud_event_attribute_value::Attr;
use eventsd::proto::io::cloudevents::v1::cloud_event::Data;
use eventsd::proto::io::cloudevents::v1::CloudEvent;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{Format, SubscribeEventsRequest};
use serde_json::{json, Value as Json};
use tonic::Code;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use crate::http_events::post;
use crate::support::{
    assert_rejected, event, fixture, from_beginning, next_item, publish, rfc3339, subscribe,
    Subscription, FIXTURES, HANG_GUARD,
};

/// The Omise fixture's event id.
const OMISE_ID: &str = "evnt_test_56vp5pfwjf1fqjn4ryy";
/// The Omise fixture's charge id: the CloudEvent subject.
const CHARGE_ID: &str = "chrg_test_56vp5pdrw28e2sgyr51";

/// An HTTP reply with the headers the CloudEvents and metrics routes promise.
pub(crate) struct HeaderedReply {
    pub status: u16,
    pub content_type: String,
    /// The `Eventsd-Next-After` header, if any.
    pub next_after: Option<String>,
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Json,
}

/// GETs `url` with a plain-HTTP client that never goes through a proxy.
pub(crate) async fn get_with_headers(url: &str) -> HeaderedReply {
    let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let exchange = async {
        let response = client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: no HTTP response: {e}"));
        let header = |name: &str| {
            response.headers().get(name).map(|v| v.to_str().expect("an ASCII header").to_string())
        };
        let content_type = header("content-type").unwrap_or_default();
        let next_after = header("eventsd-next-after");
        let status = response.status().as_u16();
        let text = response.text().await.expect("read the body");
        let json = serde_json::from_str(&text).unwrap_or(Json::Null);
        HeaderedReply { status, content_type, next_after, text, json }
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTP request")
}

/// A server holding the Omise fixture (delivered unsigned through --webhook-unsigned,
/// sequence 1) and a `customer.create` published over gRPC without a source (sequence 2).
async fn spawn_with_omise_fixture() -> TestApp {
    let mut app = spawn_app_with(|c| c.webhook_unsigned = vec!["omise".into()]).await;
    let raw =
        std::fs::read(format!("{FIXTURES}/omise/charge.create.json")).expect("read the fixture");
    let reply =
        post(&format!("{}/webhooks/omise", app.http), Some("application/json"), &[], raw).await;
    assert_eq!(reply.status, 201, "Omise delivery: {}", reply.text);
    let second = publish(&mut app.client, event("customer.create")).await;
    assert_eq!(second.sequence, 2);
    app
}

/// The fixture event in the CloudEvents JSON structured format, as eventsd must map it.
fn expected_omise_json() -> Json {
    json!({
        "specversion": "1.0",
        "id": OMISE_ID,
        "source": "omise",
        "type": "charge.create",
        "time": "2017-02-03T13:52:54Z",
        "subject": CHARGE_ID,
        "datacontenttype": "application/json",
        "livemode": false,
        "location": format!("/events/{OMISE_ID}"),
        "sequence": "1",
        "data": fixture("omise/charge.create.json")["data"],
    })
}

/// The next item, which must be a CloudEvent.
async fn next_cloud_event(stream: &mut Subscription) -> CloudEvent {
    match next_item(stream).await {
        Item::CloudEvent(ce) => ce,
        other => panic!("expected a cloud_event, got {other:?}"),
    }
}

/// The value of attribute `name`, which must be set.
fn attr<'a>(ce: &'a CloudEvent, name: &str) -> &'a Attr {
    ce.attributes
        .get(name)
        .and_then(|v| v.attr.as_ref())
        .unwrap_or_else(|| panic!("attribute {name:?} is missing: {:?}", ce.attributes))
}

/// The text payload parsed as JSON.
fn text_data_json(ce: &CloudEvent) -> Json {
    let Some(Data::TextData(text)) = &ce.data else {
        panic!("expected text_data, got {:?}", ce.data);
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("text_data is not JSON ({e}): {text}"))
}

fn attribute_names(ce: &CloudEvent) -> BTreeSet<&str> {
    ce.attributes.keys().map(String::as_str).collect()
}

fn cloudevents_subscription() -> SubscribeEventsRequest {
    SubscribeEventsRequest { format: Format::Cloudevent as i32, ..from_beginning() }
}

#[tokio::test]
async fn a_cloudevents_subscription_sends_the_omise_event_with_every_attribute_then_caught_up() {
    // Arrange
    let mut app = spawn_with_omise_fixture().await;

    // Act
    let mut stream = subscribe(&mut app.client, cloudevents_subscription()).await;
    let omise = next_cloud_event(&mut stream).await;
    let customer = next_cloud_event(&mut stream).await;
    let after = next_item(&mut stream).await;

    // Assert: the Omise event, attribute by attribute.
    assert_eq!(omise.id, OMISE_ID);
    assert_eq!(omise.source, "omise");
    assert_eq!(omise.spec_version, "1.0");
    assert_eq!(omise.r#type, "charge.create");
    assert_eq!(attr(&omise, "time"), &Attr::CeTimestamp(rfc3339("2017-02-03T13:52:54Z")));
    assert_eq!(attr(&omise, "subject"), &Attr::CeString(CHARGE_ID.into()));
    assert_eq!(attr(&omise, "datacontenttype"), &Attr::CeString("application/json".into()));
    assert_eq!(attr(&omise, "livemode"), &Attr::CeBoolean(false));
    assert_eq!(attr(&omise, "location"), &Attr::CeString(format!("/events/{OMISE_ID}")));
    assert_eq!(attr(&omise, "sequence"), &Attr::CeString("1".into()));
    // The Omise envelope carries no API version, so there is no `apiversion` attribute.
    assert_eq!(
        attribute_names(&omise),
        BTreeSet::from(["time", "subject", "datacontenttype", "livemode", "location", "sequence"])
    );
    assert_eq!(text_data_json(&omise), fixture("omise/charge.create.json")["data"]);

    // Without a source the CloudEvent source is `eventsd`; data without an `id` has no subject.
    assert_eq!(customer.source, "eventsd");
    assert_eq!(customer.r#type, "customer.create");
    assert_eq!(attr(&customer, "sequence"), &Attr::CeString("2".into()));
    assert!(!customer.attributes.contains_key("subject"), "{:?}", customer.attributes);
    assert_eq!(text_data_json(&customer), json!({"object": "charge", "amount": 100000}));

    match after {
        Item::CaughtUp(c) => assert_eq!(c.sequence, 2),
        other => panic!("expected caught_up, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cloudevent_reads_back_as_cloudevents_json_by_id() {
    // Arrange
    let mut app = spawn_with_omise_fixture().await;

    // Act
    let reply = get_with_headers(&format!("{}/cloudevents/{OMISE_ID}", app.http)).await;

    // Assert
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.content_type, "application/cloudevents+json");
    assert_eq!(reply.json, expected_omise_json());
    // The protobuf form carries the same attributes.
    let mut stream = subscribe(&mut app.client, cloudevents_subscription()).await;
    let streamed = next_cloud_event(&mut stream).await;
    assert_eq!(proto_to_json(&streamed), reply.json);
}

#[tokio::test]
async fn an_unknown_cloudevent_id_is_404() {
    let app = spawn_with_omise_fixture().await;

    let reply = get_with_headers(&format!("{}/cloudevents/evnt_test_nope", app.http)).await;

    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.json["code"], "not_found", "{}", reply.text);
}

#[tokio::test]
async fn polling_cloudevents_returns_matching_events_and_the_next_position() {
    // Arrange
    let app = spawn_with_omise_fixture().await;
    let poll =
        |after: u64| format!("{}/cloudevents?after_sequence={after}&type=charge.*", app.http);

    // Act
    let first = get_with_headers(&poll(0)).await;
    let again = get_with_headers(&poll(2)).await;

    // Assert: only the charge, and a next position past the skipped customer event.
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.content_type, "application/cloudevents-batch+json");
    assert_eq!(first.json, json!([expected_omise_json()]));
    assert_eq!(first.next_after.as_deref(), Some("2"));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.content_type, "application/cloudevents-batch+json");
    assert_eq!(again.json, json!([]));
    assert_eq!(again.next_after.as_deref(), Some("2"));
}

#[tokio::test]
async fn polling_cloudevents_from_the_largest_sequence_does_not_drop_the_connection() {
    // A position far beyond the store is a client mistake, not a server failure: it must
    // get an HTTP answer (an empty batch or 400 out_of_range), not a closed connection.
    let app = spawn_with_omise_fixture().await;
    let url = format!("{}/cloudevents?after_sequence={}", app.http, u64::MAX);

    let reply = get_with_headers(&url).await;

    let empty_batch = reply.status == 200 && reply.json == json!([]);
    let out_of_range = reply.status == 400 && reply.json["code"] == "out_of_range";
    assert!(
        empty_batch || out_of_range,
        "after_sequence=u64::MAX: {} {}",
        reply.status,
        reply.text
    );
    // Wrapping `u64::MAX + 1` to 0 would call the position expired, which it is not.
    assert!(!reply.text.contains("before the oldest kept event"), "{}", reply.text);
}

#[tokio::test]
async fn an_unknown_subscription_format_is_invalid_argument_naming_format() {
    let mut app = spawn_app().await;
    let request = SubscribeEventsRequest { format: 9, ..from_beginning() };

    let result = app.client.subscribe_events(request).await.map(|_| ());

    assert_rejected(result, Code::InvalidArgument, "format", "format 9");
}
