//! The JetStream API calls the backend makes, as raw requests: publishing with expectations,
//! atomic batches, reads by sequence and by id, and stream info. Raw requests keep every
//! header and error code in view; each answer is classified into what the caller must do
//! ([`Failure`]): retry, re-read the ids, or give up.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{Client, HeaderValue};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use crate::error::Error;
use crate::store::StoredEvent;

/// JetStream error codes the backend acts on.
mod codes {
    /// `Nats-Expected-Last-Subject-Sequence` did not hold: the id is already stored.
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// The same expectation failed inside an atomic batch (no winner's sequence given).
    pub const WRONG_LAST_SEQUENCE_BATCH: u64 = 10164;
    /// No message matched a get.
    pub const NO_MESSAGE: u64 = 10037;
}

/// How a call failed, by what the caller should do next.
#[derive(Debug)]
pub enum Failure {
    /// An expected-last-subject-sequence check failed: one of the ids is already stored.
    IdTaken,
    /// No answer, no responders, or the stream is between leaders: the outcome of a write is
    /// unknown and the same call (same ids) may be retried.
    Transient(String),
    /// Anything else: the call is refused for good.
    Refused(String),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::IdTaken => Error::Unavailable("an id was stored concurrently".into()),
            Failure::Transient(why) | Failure::Refused(why) => Error::Unavailable(why),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct PubAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    error: Option<ApiError>,
}

/// One stored message as the API returns it.
#[derive(Debug, Deserialize)]
struct StoredMessage {
    seq: u64,
    #[serde(default)]
    data: String,
}

#[derive(Debug, Deserialize)]
struct MsgGetResponse {
    #[serde(default)]
    message: Option<StoredMessage>,
    #[serde(default)]
    error: Option<ApiError>,
}

/// The parts of stream info the backend reads.
#[derive(Debug, Deserialize)]
pub struct StreamInfo {
    /// The stream's configuration as the server holds it.
    pub config: serde_json::Value,
    /// Message counts.
    pub state: StreamState,
    /// Replica placement; absent on a single server without clustering.
    #[serde(default)]
    pub cluster: Option<ClusterInfo>,
}

/// Sequence range of a stream.
#[derive(Debug, Deserialize)]
pub struct StreamState {
    /// First stored sequence (the sequence the next message takes when empty).
    pub first_seq: u64,
    /// Last stored sequence (0 when empty).
    pub last_seq: u64,
}

/// Which server leads a stream, and when it last heard from each other replica.
#[derive(Debug, Deserialize)]
pub struct ClusterInfo {
    /// The leader's server name, when one is elected.
    #[serde(default)]
    pub leader: Option<String>,
    /// The other replicas, as the leader sees them.
    #[serde(default)]
    pub replicas: Vec<PeerInfo>,
}

/// One replica of a stream, as its leader reports it.
#[derive(Debug, Deserialize)]
pub struct PeerInfo {
    /// The server is known to be down.
    #[serde(default)]
    pub offline: bool,
    /// Nanoseconds since the leader last heard from it (0: never, or unknown).
    #[serde(default)]
    pub active: u64,
}

impl StreamInfo {
    /// Whether the server that answered leads the stream and has heard from a quorum of its
    /// replicas (itself counted) within `fresh`. A leader cut off from the majority answers as
    /// leader until it notices it lost its quorum (up to 20 s in nats-server), while the
    /// majority may elect another leader and move on: its answer is current only while its
    /// followers' contact is fresher than their election timeout. A stream on one server
    /// (no cluster, or one replica) always passes.
    pub fn led_by_quorum(&self, fresh: Duration) -> bool {
        let Some(cluster) = &self.cluster else { return true };
        if cluster.leader.is_none() {
            return false;
        }
        let limit = u64::try_from(fresh.as_nanos()).unwrap_or(u64::MAX);
        let heard = cluster
            .replicas
            .iter()
            .filter(|r| !r.offline && r.active > 0 && r.active < limit)
            .count();
        let replicas = cluster.replicas.len() + 1;
        1 + heard > replicas / 2
    }
}

#[derive(Debug, Deserialize)]
struct InfoResponse {
    #[serde(flatten)]
    info: Option<StreamInfo>,
    #[serde(default)]
    error: Option<ApiError>,
}

/// A handle for raw JetStream API calls on one stream.
#[derive(Clone)]
pub struct Api {
    client: Client,
    stream: String,
    timeout: Duration,
}

impl Api {
    /// Calls on `stream`, each answered within `timeout` or treated as transient.
    pub fn new(client: Client, stream: String, timeout: Duration) -> Self {
        Api { client, stream, timeout }
    }

    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<async_nats::Message, Failure> {
        let call = self.client.request_with_headers(subject, headers, payload);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(Failure::Transient("no answer from JetStream in time".into())),
            Ok(Err(err)) => Err(Failure::Transient(format!("JetStream request failed: {err}"))),
            Ok(Ok(message)) => match message.status {
                Some(status) if status.as_u16() == 503 => {
                    Err(Failure::Transient("no JetStream responders (no stream leader)".into()))
                }
                _ => Ok(message),
            },
        }
    }

    async fn api_request(
        &self,
        subject: String,
        body: serde_json::Value,
    ) -> Result<Bytes, Failure> {
        let payload = Bytes::from(body.to_string());
        Ok(self.request(subject, HeaderMap::new(), payload).await?.payload)
    }

    /// Publishes one message that must be the first on `id_filter`; returns its sequence.
    pub async fn publish_new(
        &self,
        subject: String,
        id_filter: &str,
        payload: Bytes,
    ) -> Result<u64, Failure> {
        let reply = self.request(subject, first_on(id_filter), payload).await?;
        ack_sequence(&reply.payload)
    }

    /// Publishes messages as one atomic batch (all stored, in order, or none), each the first
    /// on its id filter; returns the first message's sequence (the rest follow it).
    pub async fn publish_batch(
        &self,
        messages: Vec<(String, String, Bytes)>,
    ) -> Result<u64, Failure> {
        let batch_id = batch_id();
        let count = messages.len();
        let mut last = None;
        for (i, (subject, id_filter, payload)) in messages.into_iter().enumerate() {
            let mut headers = first_on(&id_filter);
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i + 1 == count {
                headers.insert("Nats-Batch-Commit", "1");
                last = Some(self.request(subject, headers, payload).await?);
            } else {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| Failure::Transient(format!("publishing a batch failed: {e}")))?;
            }
        }
        let reply = last.ok_or_else(|| Failure::Refused("an empty batch".into()))?;
        let last_seq = ack_sequence(&reply.payload)?;
        Ok(last_seq + 1 - count as u64)
    }

    /// The stored message with this sequence, from the stream leader.
    pub async fn get_by_sequence(&self, seq: u64) -> Result<Option<StoredEvent>, Failure> {
        self.msg_get(serde_json::json!({ "seq": seq })).await
    }

    /// The newest message on a subject filter (an id's), from the stream leader, which has
    /// every acknowledged write: read-your-writes from any instance.
    pub async fn get_last_on(&self, filter: &str) -> Result<Option<StoredEvent>, Failure> {
        self.msg_get(serde_json::json!({ "last_by_subj": filter })).await
    }

    async fn msg_get(&self, body: serde_json::Value) -> Result<Option<StoredEvent>, Failure> {
        let subject = format!("$JS.API.STREAM.MSG.GET.{}", self.stream);
        let payload = self.api_request(subject, body).await?;
        let response: MsgGetResponse = serde_json::from_slice(&payload)
            .map_err(|e| Failure::Refused(format!("unreadable message get answer: {e}")))?;
        if let Some(error) = response.error {
            return match error.err_code {
                codes::NO_MESSAGE => Ok(None),
                _ => Err(classify(error)),
            };
        }
        let Some(message) = response.message else { return Ok(None) };
        let data = base64::engine::general_purpose::STANDARD
            .decode(message.data)
            .map_err(|e| Failure::Refused(format!("message {} data: {e}", message.seq)))?;
        decode(message.seq, &data).map(Some).map_err(|e| Failure::Refused(e.to_string()))
    }

    /// Up to `max` consecutive messages from `from` on, read directly (any replica may answer,
    /// so a follower that is behind returns fewer; the caller keeps the contiguous prefix).
    pub async fn get_batch(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, Failure> {
        if max == 1 {
            // A point read: the leader's block cache is warm with recent writes, while a
            // follower asked directly often has to load the block first (~5 ms at 1M events).
            return Ok(self.get_by_sequence(from).await?.into_iter().collect());
        }
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Failure::Transient(format!("subscribing failed: {e}")))?;
        let body = serde_json::json!({ "seq": from, "batch": max });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream),
                inbox,
                Bytes::from(body.to_string()),
            )
            .await
            .map_err(|e| Failure::Transient(format!("direct get failed: {e}")))?;
        let mut events = Vec::with_capacity(max.min(1024));
        let mut expected = from;
        loop {
            let next = tokio::time::timeout(self.timeout, futures_next(&mut replies)).await;
            let Ok(Some(message)) = next else { break };
            if message.status.is_some() || events.len() >= max {
                break; // end of batch (204), no messages (404), or an error status
            }
            let Some(seq) = header_u64(&message, "Nats-Sequence") else { break };
            if seq != expected {
                break;
            }
            let event =
                decode(seq, &message.payload).map_err(|e| Failure::Refused(e.to_string()))?;
            events.push(event);
            expected += 1;
        }
        let _ = replies.unsubscribe().await;
        Ok(events)
    }

    /// Stream info from the leader.
    pub async fn info(&self) -> Result<Option<StreamInfo>, Failure> {
        let subject = format!("$JS.API.STREAM.INFO.{}", self.stream);
        let payload = self.api_request(subject, serde_json::json!({})).await?;
        let response: InfoResponse = serde_json::from_slice(&payload)
            .map_err(|e| Failure::Refused(format!("unreadable stream info: {e}")))?;
        match response.error {
            Some(error) if error.code == 404 => Ok(None),
            Some(error) => Err(classify(error)),
            None => Ok(response.info),
        }
    }

    /// Creates the stream with this configuration.
    pub async fn create(&self, config: serde_json::Value) -> Result<StreamInfo, Failure> {
        let subject = format!("$JS.API.STREAM.CREATE.{}", self.stream);
        let payload = self.api_request(subject, config).await?;
        let response: InfoResponse = serde_json::from_slice(&payload)
            .map_err(|e| Failure::Refused(format!("unreadable stream create answer: {e}")))?;
        match (response.error, response.info) {
            (Some(error), _) => Err(classify(error)),
            (None, Some(info)) => Ok(info),
            (None, None) => Err(Failure::Refused("stream create answered nothing".into())),
        }
    }
}

/// A stream message as a stored event: the payload is the event encoded without its
/// sequence, which the stream assigned (see [`StoredEvent::from_unsequenced`]).
pub fn decode(seq: u64, payload: &[u8]) -> Result<StoredEvent, Error> {
    StoredEvent::from_unsequenced(payload, seq)
        .map_err(|e| Error::Corrupt(format!("stream message {seq}: {e}")))
}

/// Headers saying "this must be the first message on `filter`".
fn first_on(filter: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", HeaderValue::from(filter));
    headers
}

fn ack_sequence(payload: &[u8]) -> Result<u64, Failure> {
    let ack: PubAck = serde_json::from_slice(payload)
        .map_err(|e| Failure::Transient(format!("unreadable publish answer: {e}")))?;
    match ack.error {
        Some(error) => Err(classify(error)),
        None if ack.seq > 0 => Ok(ack.seq),
        None => Err(Failure::Refused("publish answered without a sequence".into())),
    }
}

fn classify(error: ApiError) -> Failure {
    match error.err_code {
        codes::WRONG_LAST_SEQUENCE | codes::WRONG_LAST_SEQUENCE_BATCH => Failure::IdTaken,
        _ if error.code == 503 || error.code == 408 || error.code == 500 => {
            Failure::Transient(format!("JetStream: {} ({})", error.description, error.err_code))
        }
        _ => Failure::Refused(format!("JetStream: {} ({})", error.description, error.err_code)),
    }
}

fn header_u64(message: &async_nats::Message, name: &str) -> Option<u64> {
    message.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

async fn futures_next(sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    use tokio_stream::StreamExt;
    sub.next().await
}

/// A batch id unique across instances: 22 random base64url characters.
fn batch_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cluster: serde_json::Value) -> StreamInfo {
        let mut info = serde_json::json!({
            "config": {}, "state": { "first_seq": 1, "last_seq": 0 }
        });
        if !cluster.is_null() {
            info["cluster"] = cluster;
        }
        serde_json::from_value(info).expect("stream info")
    }

    const FRESH: Duration = Duration::from_secs(2);
    const RECENT: u64 = 300_000_000;
    const LONG_AGO: u64 = 5_000_000_000;

    #[test]
    fn a_leader_that_heard_from_one_of_two_replicas_recently_has_a_quorum() {
        let replicas = [("n2", RECENT), ("n3", LONG_AGO)]
            .map(|(name, active)| serde_json::json!({ "name": name, "active": active }));
        let cluster = serde_json::json!({ "leader": "n1", "replicas": replicas });
        assert!(info(cluster).led_by_quorum(FRESH));
    }

    #[test]
    fn a_leader_cut_off_from_both_replicas_or_without_a_leader_has_none() {
        let stale = [("n2", LONG_AGO), ("n3", LONG_AGO)]
            .map(|(name, active)| serde_json::json!({ "name": name, "active": active }));
        assert!(
            !info(serde_json::json!({ "leader": "n1", "replicas": stale })).led_by_quorum(FRESH)
        );
        let offline_or_unseen = [
            serde_json::json!({ "name": "n2", "active": RECENT, "offline": true }),
            serde_json::json!({ "name": "n3", "active": 0 }),
        ];
        let cluster = serde_json::json!({ "leader": "n1", "replicas": offline_or_unseen });
        assert!(!info(cluster).led_by_quorum(FRESH));
        let fresh = [serde_json::json!({ "name": "n2", "active": RECENT })];
        assert!(!info(serde_json::json!({ "replicas": fresh })).led_by_quorum(FRESH));
    }

    #[test]
    fn a_stream_on_one_server_needs_no_replica() {
        assert!(info(serde_json::Value::Null).led_by_quorum(FRESH));
        assert!(info(serde_json::json!({ "leader": "n1" })).led_by_quorum(FRESH));
    }
}
