//! How several instances over one JetStream stream share outbound webhooks: one worker per
//! endpoint in the whole cluster at a time, held through a lease in the delivery state bucket,
//! and control requests (update, replay, retry, delete) carried to whichever instance holds it.
//!
//! **Leases.** `lease.<endpoint>` names the holding instance. An instance runs an endpoint's
//! worker only while it holds the lease:
//! - it takes a lease that is absent or deleted with `create` (one winner), or one whose
//!   revision it has seen unchanged for a whole lease period (`--delivery-lease`, measured on
//!   its own monotonic clock from when it first saw that revision) with `update` at that
//!   revision (compare-and-set, one winner);
//! - the holder renews every quarter period with `update` at its revision, and stops its
//!   worker — aborting every attempt in flight — as soon as a renewal is refused, or half a
//!   period after the last renewal it sent that succeeded, whichever comes first;
//! - on a clean shutdown (or a delete) it deletes the lease at its revision, so another
//!   instance takes over at its next poll instead of after a period.
//!
//! A taker needs a full period without renewal, counted from a moment after the holder sent
//! it; the holder stops half a period after that send. So the holder has stopped before any
//! taker starts, and no attempt is made by two instances at once, without trusting clocks to
//! agree across machines (only their rates, within a factor of two). Endpoints spread over
//! instances by whoever creates the lease first.
//!
//! **Controls.** The holder answers requests on `_EVENTSD.<stream>.ctl.<endpoint>` (core NATS
//! request/reply, outside every stream's subjects) and hands them to its worker, so every
//! endpoint write after creation still goes through one worker. An instance that does not
//! hold the endpoint sends its request there, retrying while no instance holds it (a takeover)
//! for a bounded time. Every request is safe to repeat.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::delivery::kv_state::{lease_key, KvDeliveries};
use crate::delivery::state::{DeliveryStore, EndpointRecord};
use crate::error::Error;
use crate::proto::Delivery;

/// Pause after a failed KV call before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Longest one control request waits for an answer from the holder.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a lease release on shutdown may take.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

/// What a control request asks of an endpoint's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Op {
    /// Not a request this version knows.
    Unknown = 0,
    /// Store the endpoint's new fields, secrets or state.
    Update = 1,
    /// Move the cursor to `sequence` and deliver everything matching above it.
    Replay = 2,
    /// Attempt the delivery of `sequence` again now.
    Retry = 3,
    /// Abort everything, fail pending deliveries, mark the endpoint deleted, and end.
    Delete = 4,
}

/// A request to one endpoint's worker, from this instance or (encoded) from another.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ControlRequest {
    /// What is asked.
    #[prost(enumeration = "Op", tag = "1")]
    pub op: i32,
    /// The endpoint as it should be stored (update).
    #[prost(message, optional, tag = "2")]
    pub record: Option<EndpointRecord>,
    /// The sequence of a replay or a retry.
    #[prost(uint64, tag = "3")]
    pub sequence: u64,
}

/// A worker's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ControlReply {
    /// The endpoint as stored (update).
    #[prost(message, optional, tag = "1")]
    pub record: Option<EndpointRecord>,
    /// The delivery as stored (retry).
    #[prost(message, optional, tag = "2")]
    pub delivery: Option<Delivery>,
}

/// An answer as it travels between instances.
#[derive(Clone, PartialEq, prost::Message)]
struct WireReply {
    #[prost(message, optional, tag = "1")]
    ok: Option<ControlReply>,
    /// [`ErrorKind`] of a refusal.
    #[prost(uint32, tag = "2")]
    kind: u32,
    /// The id (no such …) or message of a refusal.
    #[prost(string, tag = "3")]
    text: String,
}

/// How a refusal crosses instances.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum ErrorKind {
    Internal = 1,
    NoSuchDelivery = 2,
    NoSuchEndpoint = 3,
    /// The worker is gone (lease lost, shutting down): ask again.
    Retry = 4,
}

fn to_wire(result: Result<ControlReply, Error>) -> WireReply {
    match result {
        Ok(reply) => WireReply { ok: Some(reply), kind: 0, text: String::new() },
        Err(Error::NoSuch { kind: "delivery", id }) => {
            WireReply { ok: None, kind: ErrorKind::NoSuchDelivery as u32, text: id }
        }
        Err(Error::NoSuch { id, .. }) => {
            WireReply { ok: None, kind: ErrorKind::NoSuchEndpoint as u32, text: id }
        }
        Err(Error::ShuttingDown) => {
            WireReply { ok: None, kind: ErrorKind::Retry as u32, text: String::new() }
        }
        Err(other) => {
            WireReply { ok: None, kind: ErrorKind::Internal as u32, text: other.to_string() }
        }
    }
}

/// The answer, or `None` when the request should be sent again.
fn from_wire(wire: WireReply) -> Option<Result<ControlReply, Error>> {
    match (wire.ok, wire.kind) {
        (Some(reply), 0) => Some(Ok(reply)),
        (_, k) if k == ErrorKind::Retry as u32 => None,
        (_, k) if k == ErrorKind::NoSuchDelivery as u32 => {
            Some(Err(Error::NoSuch { kind: "delivery", id: wire.text }))
        }
        (_, k) if k == ErrorKind::NoSuchEndpoint as u32 => {
            Some(Err(Error::NoSuch { kind: "endpoint", id: wire.text }))
        }
        _ => Some(Err(Error::Internal(format!("the endpoint's instance: {}", wire.text)))),
    }
}

/// A control request on its way to a worker, with where its answer goes.
pub struct Control {
    /// What is asked.
    pub request: ControlRequest,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<ControlReply, Error>>,
}

/// What instances over one stream share; cheap to clone.
#[derive(Clone)]
pub struct Sharing {
    state: KvDeliveries,
    /// This process's name in the leases (random per start).
    instance: Bytes,
    /// Subjects of control requests: `<prefix>.<endpoint>`.
    prefix: String,
    lease: Duration,
}

impl Sharing {
    /// Sharing through this bucket, with leases of `lease`.
    pub fn new(state: KvDeliveries, stream: &str, lease: Duration) -> Result<Self, Error> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Internal(format!("the system has no randomness: {e}")))?;
        let instance = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Ok(Sharing {
            state,
            instance: Bytes::from(instance),
            prefix: format!("_EVENTSD.{stream}.ctl"),
            lease,
        })
    }

    fn kv(&self) -> &kv::Store {
        self.state.bucket()
    }

    fn subject(&self, id: &str) -> String {
        format!("{}.{id}", self.prefix)
    }

    fn poll(&self) -> Duration {
        (self.lease / 4).max(Duration::from_millis(20))
    }

    /// Waits until this instance holds the endpoint's lease; `None` once the endpoint is
    /// deleted (or gone) or at shutdown.
    pub async fn acquire(
        &self,
        state: &DeliveryStore,
        id: &str,
        shutdown: &CancellationToken,
    ) -> Option<Lease> {
        let key = lease_key(id);
        // The lease's revision and when this instance first saw it.
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            match state.endpoint(id).await {
                Ok(Some(record)) if !record.deleted => {}
                Ok(_) => return None,
                Err(error) => tracing::debug!(endpoint = id, %error, "reading the endpoint"),
            }
            let sent = Instant::now();
            let taken = match self.kv().entry(key.as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => match seen {
                    Some((revision, at))
                        if revision == entry.revision && at.elapsed() >= self.lease =>
                    {
                        self.kv().update(&key, self.instance.clone(), revision).await.ok()
                    }
                    Some((revision, _)) if revision == entry.revision => None,
                    _ => {
                        seen = Some((entry.revision, Instant::now()));
                        None
                    }
                },
                Ok(_) => self.kv().create(&key, self.instance.clone()).await.ok(),
                Err(error) => {
                    tracing::debug!(endpoint = id, %error, "reading a lease");
                    None
                }
            };
            if let Some(revision) = taken {
                tracing::debug!(endpoint = id, "lease taken");
                return Some(Lease {
                    sharing: self.clone(),
                    key,
                    revision,
                    valid_until: sent + self.lease / 2,
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.poll()) => {}
            }
        }
    }

    /// Sends a control request to the instance holding the endpoint and returns its answer,
    /// asking again while no instance holds it, for up to two lease periods and a call timeout.
    pub async fn call(&self, id: &str, request: &ControlRequest) -> Result<ControlReply, Error> {
        let deadline = Instant::now() + self.lease * 2 + CALL_TIMEOUT;
        let payload = Bytes::from(request.encode_to_vec());
        let client = self.state.client();
        loop {
            let asked = tokio::time::timeout(
                CALL_TIMEOUT,
                client.request(self.subject(id), payload.clone()),
            )
            .await;
            if let Ok(Ok(message)) = asked {
                let wire = WireReply::decode(message.payload.as_ref())
                    .map_err(|e| Error::Internal(format!("a control answer: {e}")))?;
                if let Some(result) = from_wire(wire) {
                    return result;
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "no instance runs endpoint {id} at the moment (a takeover); try again"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Answers control requests for the endpoint by handing them to its worker, until `done`.
    pub async fn serve(
        &self,
        id: &str,
        worker: mpsc::UnboundedSender<Control>,
        done: CancellationToken,
    ) {
        let client = self.state.client();
        while !done.is_cancelled() {
            let mut requests = match client.subscribe(self.subject(id)).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    tracing::warn!(endpoint = id, %error, "cannot take control requests");
                    tokio::select! {
                        () = done.cancelled() => return,
                        () = tokio::time::sleep(RETRY_PAUSE) => continue,
                    }
                }
            };
            loop {
                let message = tokio::select! {
                    () = done.cancelled() => return,
                    message = requests.next() => message,
                };
                let Some(message) = message else { break };
                let Some(reply_to) = message.reply else { continue };
                let result = match ControlRequest::decode(message.payload.as_ref()) {
                    Err(e) => Err(Error::Internal(format!("a control request: {e}"))),
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        match worker.send(Control { request, reply: tx }) {
                            Err(_) => Err(Error::ShuttingDown),
                            Ok(()) => rx.await.unwrap_or(Err(Error::ShuttingDown)),
                        }
                    }
                };
                let answer = Bytes::from(to_wire(result).encode_to_vec());
                if let Err(error) = client.publish(reply_to, answer).await {
                    tracing::debug!(endpoint = id, %error, "answering a control request");
                }
            }
        }
    }
}

/// An endpoint's lease, held by this instance.
pub struct Lease {
    sharing: Sharing,
    key: String,
    revision: u64,
    /// When this instance must have stopped unless a renewal succeeds first.
    valid_until: Instant,
}

impl Lease {
    /// Renews the lease until `done`, then releases it. Cancels `lost` (which stops the worker)
    /// as soon as the lease can no longer be trusted, and returns.
    pub async fn keep(mut self, lost: CancellationToken, done: CancellationToken) {
        let lease = self.sharing.lease;
        loop {
            tokio::select! {
                () = done.cancelled() => return self.release().await,
                () = tokio::time::sleep(self.sharing.poll()) => {}
            }
            loop {
                let sent = Instant::now();
                let renewed = tokio::time::timeout_at(
                    self.valid_until,
                    self.sharing.kv().update(
                        &self.key,
                        self.sharing.instance.clone(),
                        self.revision,
                    ),
                )
                .await;
                match renewed {
                    Ok(Ok(revision)) => {
                        self.revision = revision;
                        self.valid_until = sent + lease / 2;
                        break;
                    }
                    Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        tracing::warn!(lease = %self.key, "lease taken by another instance; stopping");
                        lost.cancel();
                        return;
                    }
                    Ok(Err(error)) if Instant::now() + RETRY_PAUSE < self.valid_until => {
                        tracing::debug!(lease = %self.key, %error, "lease renewal failed; trying again");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    _ => {
                        tracing::warn!(lease = %self.key, "lease not renewed in time; stopping");
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }

    /// Deletes the lease (at its revision), so another instance may take the endpoint at once.
    async fn release(self) {
        let deleted = tokio::time::timeout(
            RELEASE_LIMIT,
            self.sharing.kv().delete_expect_revision(&self.key, Some(self.revision)),
        )
        .await;
        if !matches!(deleted, Ok(Ok(()))) {
            tracing::debug!(lease = %self.key, "lease not released; it expires instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_cross_instances_as_the_same_errors() {
        let round = |e: Error| from_wire(to_wire(Err(e)));
        assert!(matches!(
            round(Error::NoSuch { kind: "delivery", id: "dlv_x_1".into() }),
            Some(Err(Error::NoSuch { kind: "delivery", id })) if id == "dlv_x_1"
        ));
        assert!(matches!(
            round(Error::NoSuch { kind: "endpoint", id: "ep_x".into() }),
            Some(Err(Error::NoSuch { kind: "endpoint", .. }))
        ));
        assert!(round(Error::ShuttingDown).is_none(), "a gone worker is asked again");
        assert!(matches!(round(Error::Corrupt("x".into())), Some(Err(Error::Internal(_)))));
        let ok = ControlReply { delivery: Some(Delivery::default()), record: None };
        assert_eq!(from_wire(to_wire(Ok(ok.clone()))).unwrap().unwrap(), ok);
    }
}
