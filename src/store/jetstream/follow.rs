//! The stream follower: each instance reads the stream in sequence order, from its first
//! message on, and applies every event to the in-memory index and the recent-events cache,
//! then advances the instance's durable point. It is the only writer of both.
//!
//! It reads with an ordered consumer (flow-controlled, recreated by the client on a gap), and
//! after any failure starts a new one right after the last applied sequence, so the index
//! never skips or repeats an event. When the feed is quiet for a second while the stream holds
//! newer events (the consumer's server died: the client may take minutes to notice), it starts
//! a new consumer too. Every event reaches the index only once the stream has
//! stored it on a quorum of replicas (the leader delivers only committed messages), so whatever
//! readers see through the durable point survives the loss of a node.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use prost::Message;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::jetstream::api::{decode, Api};
use crate::store::jetstream::index::{Indexed, SharedIndex};
use crate::store::recent::Recent;
use crate::store::StoredEvent;

/// How long the feed may be quiet before the follower checks it is not stalled.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How far from the stream's end the follower starts decoding whole events for the
/// recent-events cache (which keeps what fits its bytes of them).
const CACHE_TAIL: u64 = 4_096;

/// Pause before a new consumer after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// A stream message as the follower decoded it.
enum Decoded {
    /// The whole event (near the stream's end: it also goes to the recent-events cache).
    Whole(StoredEvent),
    /// Only the indexed fields (far behind the end).
    Fields(Indexed),
}

/// Follows the stream until `stop`, applying events in order.
pub async fn follow(
    api: Api,
    index: SharedIndex,
    recent: Arc<Recent>,
    durable: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        let next = read_index(&index, |i| i.sequence()) + 1;
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = follow_from(&api, next, &index, &recent, &durable) => result,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, from_sequence = next, "stream follower restarting");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn follow_from(
    api: &Api,
    start: u64,
    index: &SharedIndex,
    recent: &Recent,
    durable: &watch::Sender<u64>,
) -> Result<(), Error> {
    let context = async_nats::jetstream::new(api.client().clone());
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("{what} on stream {}: {e}", api.stream()))
    };
    let stream = context
        .get_stream_no_info(api.stream())
        .await
        .map_err(|e| unavailable("cannot open the stream", &e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("cannot create the ordered consumer", &e))?;
    let mut messages =
        consumer.messages().await.map_err(|e| unavailable("cannot read the stream", &e))?;
    // Far behind the stream's end only the indexed fields are decoded; from the last
    // `CACHE_TAIL` events on, whole events, which also feed the recent-events cache.
    let mut caching = false;
    loop {
        let message = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
            Ok(Some(message)) => message.map_err(|e| unavailable("reading failed", &e))?,
            Ok(None) => break,
            Err(_) => {
                // Quiet is fine if the stream holds nothing newer. A consumer whose server died
                // can stay quiet for minutes before the client notices: if the stream is ahead
                // of the index, start a new consumer.
                let applied = read_index(index, |i| i.sequence());
                if let Ok(Some(info)) = api.info().await {
                    if info.state.last_seq > applied {
                        return Err(Error::Unavailable(format!(
                            "the consumer stalled at sequence {applied} while the stream holds {}",
                            info.state.last_seq
                        )));
                    }
                }
                continue;
            }
        };
        let info = message.info().map_err(|e| unavailable("a message without metadata", &e))?;
        let seq = info.stream_sequence;
        caching = caching || info.pending < CACHE_TAIL;
        let decoded = if caching {
            Decoded::Whole(decode(seq, &message.payload)?)
        } else {
            Decoded::Fields(
                Indexed::decode(&message.payload[..])
                    .map_err(|e| Error::Corrupt(format!("stream message {seq}: {e}")))?,
            )
        };
        {
            let mut index = index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seq <= index.sequence() {
                continue; // already applied (a replay after a consumer restart)
            }
            match &decoded {
                Decoded::Whole(e) => {
                    let created = Some(e.created());
                    index.apply(seq, e.id(), e.event_type(), e.livemode(), created, e.source())?
                }
                Decoded::Fields(f) => {
                    index.apply(seq, &f.id, &f.r#type, f.livemode, f.created, &f.source)?
                }
            }
        }
        if let Decoded::Whole(event) = decoded {
            recent.push(vec![event]);
        }
        durable.send_replace(seq);
    }
    Err(Error::Unavailable("the stream's message feed ended".into()))
}

/// Reads the index under its lock.
pub fn read_index<T>(index: &SharedIndex, f: impl FnOnce(&super::index::MemIndex) -> T) -> T {
    f(&index.read().unwrap_or_else(std::sync::PoisonError::into_inner))
}
