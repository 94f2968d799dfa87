//! gRPC plumbing shared by the scenarios: channels with TCP_NODELAY, a round-robin pool of
//! channels, and a SubscribeEvents reader that decodes only what the bench measures.
//!
//! Each tonic `Channel` is one HTTP/2 connection; clones share it. Publishers share a small
//! pool (callers `i` use channel `i % n`), as a real service would, rather than opening a
//! connection each. Channels keep tonic's default flow-control windows (hyper's 2 MiB per
//! stream, 5 MiB per connection): adaptive windows start at the 64 KiB HTTP/2 default and,
//! with loopback's tiny round trip, stay small enough to cap a 130 KiB page at ~16 MB/s.
//!
//! Subscribers decode each item into [`StreamItem`], a message with the same field numbers as
//! `SubscribeEventsResponse` whose event keeps only `id`, `created` and `sequence`: protobuf
//! skips the other fields, so the bench's CPU goes to receiving, not to building the `data`
//! Struct of every delivery. The server's work is unchanged.

use std::time::Duration;

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::{CaughtUp, Heartbeat, SubscribeEventsRequest};
use prost_types::Timestamp;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::error::{Context, Result};

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
    pub fn client(&self, i: usize) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channels[i % self.channels.len()].clone())
    }

    /// How many channels the pool holds.
    pub fn len(&self) -> usize {
        self.channels.len()
    }
}

/// An event as the bench's subscribers decode it: only what they check and time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Delivery {
    /// The event id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The publisher's send time, for publish-to-receive latency.
    #[prost(message, optional, tag = "3")]
    pub created: Option<Timestamp>,
    /// Commit order, to check order and completeness.
    #[prost(uint64, tag = "9")]
    pub sequence: u64,
}

/// `SubscribeEventsResponse` on the wire: its oneof members are plain fields there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamItem {
    /// An event.
    #[prost(message, optional, tag = "1")]
    pub event: Option<Delivery>,
    /// The switch from history to live.
    #[prost(message, optional, tag = "2")]
    pub caught_up: Option<CaughtUp>,
    /// A heartbeat.
    #[prost(message, optional, tag = "3")]
    pub heartbeat: Option<Heartbeat>,
}

/// Opens a SubscribeEvents stream on `channel`.
pub async fn subscribe(
    channel: Channel,
    request: SubscribeEventsRequest,
) -> Result<Streaming<StreamItem>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
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
