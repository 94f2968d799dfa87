//! gRPC plumbing shared by the scenarios: channels with TCP_NODELAY, a round-robin pool of
//! channels, and a client whose responses decode only what the bench checks.
//!
//! Each tonic `Channel` is one HTTP/2 connection; clones share it. Publishers share a small
//! pool (callers `i` use channel `i % n`), as a real service would, rather than opening a
//! connection each. Channels keep tonic's default flow-control windows (hyper's 2 MiB per
//! stream, 5 MiB per connection): adaptive windows start at the 64 KiB HTTP/2 default and,
//! with loopback's tiny round trip, stay small enough to cap a 130 KiB page at ~16 MB/s.
//!
//! Loaders decode only what they check, as the Redis loader parses nothing it does not need:
//! [`Client`] sends the real requests but decodes responses into messages with the same field
//! numbers as the proto's that keep only the event's `id`, `created` and `sequence` (and a
//! page's `total`). Protobuf skips the other fields, so on two shared cores the loader's own
//! decoding of `data` is not measured as eventsd's cost. The server's work is unchanged.

use std::time::Duration;

use eventsd::proto::{
    CaughtUp, GetEventRequest, Heartbeat, ListEventsRequest, PublishEventRequest,
    PublishEventsRequest, SubscribeEventsRequest,
};
use prost_types::Timestamp;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::error::{Context, Result};

const PUBLISH_EVENT_PATH: &str = "/events.v1.EventService/PublishEvent";
const PUBLISH_EVENTS_PATH: &str = "/events.v1.EventService/PublishEvents";
const GET_EVENT_PATH: &str = "/events.v1.EventService/GetEvent";
const LIST_EVENTS_PATH: &str = "/events.v1.EventService/ListEvents";
const SUBSCRIBE_PATH: &str = "/events.v1.EventService/SubscribeEvents";

/// Opens one HTTP/2 connection to `addr`.
pub async fn channel(addr: &str) -> Result<Channel> {
    Endpoint::from_shared(addr.to_string())
        .context(format!("bad server address {addr:?}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .context(format!("cannot connect to {addr}"))
}

/// A few channels shared round-robin by many callers.
#[derive(Clone)]
pub struct Pool {
    channels: Vec<Channel>,
}

impl Pool {
    /// Opens `n` channels to `addr`.
    pub async fn connect(addr: &str, n: usize) -> Result<Self> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            channels.push(channel(addr).await?);
        }
        Ok(Pool { channels })
    }

    /// A client on channel `i % n`.
    pub fn client(&self, i: usize) -> Client {
        Client::new(self.channels[i % self.channels.len()].clone())
    }

    /// How many channels the pool holds.
    pub fn len(&self) -> usize {
        self.channels.len()
    }
}

/// An event as the loaders decode it: only what they check and time. Protobuf skips every
/// other field (`data` above all), so a loader's CPU goes to receiving, not to building the
/// `data` Struct of every event; the server's work is unchanged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventHead {
    /// The event id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The event's `created` (for fan-out: the publisher's send time).
    #[prost(message, optional, tag = "3")]
    pub created: Option<Timestamp>,
    /// Commit order, to check order and completeness.
    #[prost(uint64, tag = "9")]
    pub sequence: u64,
}

/// `ListEventsResponse` as the loaders decode it: the page's event heads and the total.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Page {
    /// The page's events, heads only.
    #[prost(message, repeated, tag = "1")]
    pub data: Vec<EventHead>,
    /// The exact total of the listing.
    #[prost(int64, tag = "2")]
    pub total: i64,
}

/// `PublishEventsResponse` with each stored event kept as its encoded bytes, undecoded: a
/// message field and a bytes field are the same on the wire. The fill sums their lengths (the
/// encoded size of what was stored); [`EventHead`] decodes one when needed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Published {
    /// The stored events, encoded.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub events: Vec<Vec<u8>>,
}

/// `SubscribeEventsResponse` on the wire: its oneof members are plain fields there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamItem {
    /// An event.
    #[prost(message, optional, tag = "1")]
    pub event: Option<EventHead>,
    /// The switch from history to live.
    #[prost(message, optional, tag = "2")]
    pub caught_up: Option<CaughtUp>,
    /// A heartbeat.
    #[prost(message, optional, tag = "3")]
    pub heartbeat: Option<Heartbeat>,
}

/// The EventService as the loaders call it: the real requests, the slim responses above.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc<Channel>,
}

impl Client {
    /// A client on `channel` (clones share its connection).
    pub fn new(channel: Channel) -> Self {
        Client { grpc: Grpc::new(channel) }
    }

    /// PublishEvent; the stored event's head.
    pub async fn publish_event(
        &mut self,
        request: PublishEventRequest,
    ) -> Result<EventHead, Status> {
        self.unary(PUBLISH_EVENT_PATH, request).await
    }

    /// PublishEvents; the stored events, encoded.
    pub async fn publish_events(
        &mut self,
        request: PublishEventsRequest,
    ) -> Result<Published, Status> {
        self.unary(PUBLISH_EVENTS_PATH, request).await
    }

    /// GetEvent by id; the event's head.
    pub async fn get_event(&mut self, id: &str) -> Result<EventHead, Status> {
        self.unary(GET_EVENT_PATH, GetEventRequest { id: id.to_string(), livemode: None }).await
    }

    /// ListEvents; the page's heads and total.
    pub async fn list_events(&mut self, request: ListEventsRequest) -> Result<Page, Status> {
        self.unary(LIST_EVENTS_PATH, request).await
    }

    async fn unary<Q, R>(&mut self, path: &'static str, request: Q) -> Result<R, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        let path = PathAndQuery::from_static(path);
        let response = self.grpc.unary(tonic::Request::new(request), path, codec).await?;
        Ok(response.into_inner())
    }
}

/// Opens a SubscribeEvents stream on `channel`.
pub async fn subscribe(
    channel: Channel,
    request: SubscribeEventsRequest,
) -> Result<Streaming<StreamItem>, Status> {
    let mut grpc = Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<SubscribeEventsRequest, StreamItem>::default();
    let path = PathAndQuery::from_static(SUBSCRIBE_PATH);
    let response = grpc.server_streaming(tonic::Request::new(request), path, codec).await?;
    Ok(response.into_inner())
}

/// Reads a fresh stream up to its `caught_up` and returns that sequence. Events before it
/// (none for a subscription from now) are skipped.
pub async fn caught_up(stream: &mut Streaming<StreamItem>) -> Result<u64> {
    loop {
        let item = stream
            .message()
            .await
            .context("subscription failed before caught_up")?
            .ok_or("the subscription ended before caught_up")?;
        if let Some(mark) = item.caught_up {
            return Ok(mark.sequence);
        }
    }
}

/// The server's newest durable sequence: the `caught_up` of a subscription from now.
pub async fn durable_sequence(addr: &str) -> Result<u64> {
    let channel = channel(addr).await?;
    let mut stream =
        subscribe(channel, SubscribeEventsRequest::default()).await.context("cannot subscribe")?;
    caught_up(&mut stream).await
}

/// A status as short text: `Unavailable: message`.
pub fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use eventsd::proto::{Event, ListEventsResponse, PublishEventsResponse};
    use prost::Message;

    use super::*;
    use crate::payload::Template;

    fn full_event(n: u64) -> Event {
        Event {
            id: format!("evt_{n}"),
            r#type: "charge.create".into(),
            created: Some(Timestamp { seconds: 1_700_000_000 + n as i64, nanos: 7 }),
            data: Some(Template::new().unwrap().indexed(n)),
            sequence: 1_000 + n,
            source: "omise".into(),
            ..Default::default()
        }
    }

    #[test]
    fn slim_responses_keep_what_the_loaders_check() {
        let event = full_event(3);
        let head = EventHead::decode(event.encode_to_vec().as_slice()).unwrap();
        assert_eq!((head.id.as_str(), head.sequence), ("evt_3", 1_003));
        assert_eq!(head.created, event.created);

        let response = ListEventsResponse {
            data: (0..3).map(full_event).collect(),
            total: 42,
            ..Default::default()
        };
        let page = Page::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(page.total, 42);
        let ids: Vec<&str> = page.data.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["evt_0", "evt_1", "evt_2"]);

        let batch = PublishEventsResponse { events: (0..2).map(full_event).collect() };
        let published = Published::decode(batch.encode_to_vec().as_slice()).unwrap();
        let sizes: Vec<usize> = published.events.iter().map(Vec::len).collect();
        assert_eq!(sizes, [full_event(0).encoded_len(), full_event(1).encoded_len()]);
        assert_eq!(EventHead::decode(published.events[1].as_slice()).unwrap().id, "evt_1");
    }
}
