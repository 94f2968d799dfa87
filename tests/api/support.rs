//! Shared test utilities: request builders, JSON and time conversions, full listings, and
//! stream readers with a hang guard. Nothing here starts a server (that is `helpers`).

use std::net::SocketAddr;
use std::time::Duration;

use eventsd::event::json::{object_to_struct, struct_to_object};
use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{
    Event, ListEventsRequest, Order, PublishEventRequest, PublishEventsRequest,
    SubscribeEventsRequest, SubscribeEventsResponse,
};
use prost_types::{Struct, Timestamp};
use serde_json::{json, Value as Json};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// A generous bound on anything that could hang; never a statement about speed.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// The folder of the provider payload fixtures.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A connected EventService client.
pub type Client = EventServiceClient<Channel>;

/// A subscription stream.
pub type Subscription = Streaming<SubscribeEventsResponse>;

/// A base time for events with an explicit `created`: 2020-09-13T12:26:40Z.
pub const T0: i64 = 1_600_000_000;

/// A Struct from a JSON object literal.
pub fn json_struct(value: Json) -> Struct {
    let Json::Object(map) = value else {
        panic!("data must be a JSON object, got {value}");
    };
    object_to_struct(&map).expect("the JSON object is representable as a Struct")
}

/// A Struct back as a JSON object.
pub fn struct_json(data: &Struct) -> Json {
    Json::Object(struct_to_object(data))
}

/// A fixture file as JSON, by its path below `tests/fixtures`.
pub fn fixture(name: &str) -> Json {
    let path = format!("{FIXTURES}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// A timestamp `seconds` after the Unix epoch.
pub fn at(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// An RFC 3339 time as a timestamp.
pub fn rfc3339(text: &str) -> Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339 time");
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// A valid test-mode publish request of this type with a small `data`; override fields with
/// struct update syntax: `PublishEventRequest { id: "x".into(), ..event("charge.create") }`.
pub fn event(event_type: &str) -> PublishEventRequest {
    PublishEventRequest {
        r#type: event_type.into(),
        data: Some(json_struct(json!({"object": "charge", "amount": 100000}))),
        ..Default::default()
    }
}

/// Publishes one event and returns it as stored.
pub async fn publish(client: &mut Client, request: PublishEventRequest) -> Event {
    client.publish_event(request).await.expect("publish").into_inner()
}

/// Publishes one event with an API key (`authorization: Bearer <key>`).
pub async fn publish_with_key(
    client: &mut Client,
    key: &str,
    request: PublishEventRequest,
) -> Event {
    let mut request = tonic::Request::new(request);
    let bearer =
        tonic::metadata::MetadataValue::try_from(format!("Bearer {key}")).expect("metadata");
    request.metadata_mut().insert("authorization", bearer);
    client.publish_event(request).await.expect("publish with the key").into_inner()
}

/// Publishes a batch and returns the stored events.
pub async fn publish_batch(client: &mut Client, events: Vec<PublishEventRequest>) -> Vec<Event> {
    client
        .publish_events(PublishEventsRequest { events })
        .await
        .expect("publish batch")
        .into_inner()
        .events
}

/// A listing request covering every valid `created`, so nothing stored is outside it.
pub fn everything() -> ListEventsRequest {
    ListEventsRequest {
        from: Some(Timestamp { seconds: -62_135_596_800, nanos: 0 }),
        to: Some(Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 }),
        ..Default::default()
    }
}

/// How many events the server holds, whatever their `created`.
pub async fn stored_total(client: &mut Client) -> i64 {
    client.list_events(everything()).await.expect("list everything").into_inner().total
}

/// Every event of a listing, page by page, with the total of each page.
pub async fn list_all(client: &mut Client, first: ListEventsRequest) -> (Vec<Event>, Vec<i64>) {
    let limit = first.limit;
    let mut request = first;
    let mut events = Vec::new();
    let mut totals = Vec::new();
    for _ in 0..10_000 {
        let page = client.list_events(request.clone()).await.expect("list page").into_inner();
        events.extend(page.data);
        totals.push(page.total);
        if page.next_page_token.is_empty() {
            return (events, totals);
        }
        request =
            ListEventsRequest { page_token: page.next_page_token, limit, ..Default::default() };
    }
    panic!("the listing did not end within 10,000 pages");
}

/// Every stored event, in sequence order.
pub async fn all_events(client: &mut Client) -> Vec<Event> {
    let (mut events, _) = list_all(client, ListEventsRequest { limit: 100, ..everything() }).await;
    events.sort_by_key(|e| e.sequence);
    events
}

/// The ids of events, in order.
pub fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// The sequences of events, in order.
pub fn sequences(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// A gRPC channel to the server, for the health and reflection clients.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// A subscription request starting from the first stored event.
pub fn from_beginning() -> SubscribeEventsRequest {
    SubscribeEventsRequest {
        start: Some(eventsd::proto::subscribe_events_request::Start::FromBeginning(true)),
        ..Default::default()
    }
}

/// A subscription request resuming after `sequence`.
pub fn after_sequence(sequence: u64) -> SubscribeEventsRequest {
    SubscribeEventsRequest {
        start: Some(eventsd::proto::subscribe_events_request::Start::AfterSequence(sequence)),
        ..Default::default()
    }
}

/// Opens a subscription.
pub async fn subscribe(client: &mut Client, request: SubscribeEventsRequest) -> Subscription {
    tokio::time::timeout(HANG_GUARD, client.subscribe_events(request))
        .await
        .expect("hang guard: subscribe")
        .expect("subscribe")
        .into_inner()
}

/// The next item of a subscription; panics if the stream fails or ends.
pub async fn next_item(stream: &mut Subscription) -> Item {
    tokio::time::timeout(HANG_GUARD, stream.message())
        .await
        .expect("hang guard: next subscription item")
        .expect("the stream carries items, not an error")
        .expect("the stream is still open")
        .item
        .expect("every response sets its item")
}

/// The next item, which must be an event.
pub async fn next_event(stream: &mut Subscription) -> Event {
    match next_item(stream).await {
        Item::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The next `n` items, which must all be events.
pub async fn next_events(stream: &mut Subscription, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next_event(stream).await);
    }
    events
}

/// The next item, which must be `caught_up`; returns its sequence.
pub async fn caught_up(stream: &mut Subscription) -> u64 {
    match next_item(stream).await {
        Item::CaughtUp(c) => c.sequence,
        other => panic!("expected caught_up, got {other:?}"),
    }
}

/// Events up to `caught_up`, and the caught-up sequence (bounded: at most `max` events).
pub async fn history(stream: &mut Subscription, max: usize) -> (Vec<Event>, u64) {
    let mut events = Vec::new();
    for _ in 0..=max {
        match next_item(stream).await {
            Item::Event(event) => events.push(event),
            Item::CaughtUp(c) => return (events, c.sequence),
            Item::Heartbeat(_) => {}
            #[allow(unreachable_patterns)]
            other => panic!("unexpected item {other:?}"),
        }
    }
    panic!("no caught_up within {max} events");
}

/// Asserts that a call failed with `code` and a message naming `field`; returns the status.
pub fn assert_rejected<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    field: &str,
    case: &str,
) -> Status {
    let status = match result {
        Ok(value) => panic!("{case}: expected {code:?} naming {field:?}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{case}: wrong code; message: {}", status.message());
    assert!(
        status.message().contains(field),
        "{case}: the message should name {field:?}: {}",
        status.message()
    );
    status
}

/// A chronological or reverse-chronological order as the request's integer.
pub fn order(order: Order) -> i32 {
    order as i32
}

/// A small deterministic pseudo-random generator (xorshift), so failures can be replayed
/// from the seed they print.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is adjusted).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value below `bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// One Server-Sent Events frame: a message, or a comment line (a heartbeat).
#[derive(Debug, Clone, PartialEq)]
pub enum SseFrame {
    /// A message: its `event:` (none for plain events), `id:` and joined `data:` lines.
    Message { event: Option<String>, id: Option<String>, data: String },
    /// A comment, without its leading colon.
    Comment(String),
}

/// A `GET /stream/events` response being read frame by frame, with a hang guard on each.
pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

/// An HTTP client for the tests: loopback, no proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("HTTP client")
}

/// Opens `GET {http}/stream/events{query}` with extra headers. A status other than 200 comes
/// back as `Err((status, JSON body))`.
pub async fn open_sse(
    http: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<SseStream, (u16, Json)> {
    open_sse_with(&http_client(), http, query, headers).await
}

/// [`open_sse`] over a given client (so many streams can share its connection pool).
pub async fn open_sse_with(
    client: &reqwest::Client,
    http: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<SseStream, (u16, Json)> {
    let mut request = client.get(format!("{http}/stream/events{query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(HANG_GUARD, request.send())
        .await
        .expect("hang guard: open the SSE stream")
        .expect("send the SSE request");
    let status = response.status().as_u16();
    if status != 200 {
        let body = tokio::time::timeout(HANG_GUARD, response.bytes())
            .await
            .expect("hang guard: error body")
            .expect("error body");
        return Err((status, serde_json::from_slice(&body).unwrap_or(Json::Null)));
    }
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("text/event-stream"));
    Ok(SseStream { response, buffer: Vec::new() })
}

impl SseStream {
    /// The next frame, or `None` once the server has ended the stream.
    pub async fn frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return Some(parse_sse_block(&String::from_utf8(block).expect("UTF-8 SSE")));
            }
            let chunk = tokio::time::timeout(HANG_GUARD, self.response.chunk())
                .await
                .expect("hang guard: next SSE bytes")
                .expect("read the SSE stream")?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next message, skipping comments; panics if the stream ends.
    pub async fn message(&mut self) -> (Option<String>, Option<String>, String) {
        for _ in 0..10_000 {
            match self.frame().await.expect("the SSE stream is still open") {
                SseFrame::Message { event, id, data } => return (event, id, data),
                SseFrame::Comment(_) => {}
            }
        }
        panic!("10,000 comments in a row");
    }

    /// The next message, which must be an event: its `id:` and parsed `data:`.
    pub async fn event(&mut self) -> (u64, Json) {
        let (event, id, data) = self.message().await;
        assert_eq!(event, None, "expected an event message, got {event:?}: {data}");
        let id = id.expect("an event message has an id").parse().expect("the id is a sequence");
        (id, serde_json::from_str(&data).expect("data is JSON"))
    }

    /// Events up to `caught_up` (at most `max`), and the caught-up sequence.
    pub async fn history(&mut self, max: usize) -> (Vec<(u64, Json)>, u64) {
        let mut events = Vec::new();
        for _ in 0..=max {
            let (event, id, data) = self.message().await;
            match event.as_deref() {
                None => events.push((
                    id.expect("id").parse().expect("sequence"),
                    serde_json::from_str(&data).expect("JSON"),
                )),
                Some("caught_up") => {
                    let body: Json = serde_json::from_str(&data).expect("caught_up JSON");
                    return (events, body["sequence"].as_u64().expect("caught_up sequence"));
                }
                Some(other) => panic!("unexpected {other:?} message: {data}"),
            }
        }
        panic!("no caught_up within {max} events");
    }
}

fn parse_sse_block(block: &str) -> SseFrame {
    let (mut event, mut id, mut data, mut comment) = (None, None, Vec::new(), None);
    for line in block.lines().filter(|l| !l.is_empty()) {
        if let Some(text) = line.strip_prefix(':') {
            comment = Some(text.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "event" => event = Some(value),
            "id" => id = Some(value),
            "data" => data.push(value),
            other => panic!("unknown SSE field {other:?} in {block:?}"),
        }
    }
    match (comment, data.is_empty() && event.is_none() && id.is_none()) {
        (Some(text), true) => SseFrame::Comment(text),
        _ => SseFrame::Message { event, id, data: data.join("\n") },
    }
}
