//! `GET /stream/events`: the subscription stream as Server-Sent Events, for browsers, shell
//! scripts (`curl -N`) and anything else where gRPC is awkward.
//!
//! It is not a second fan-out: the handler opens the same subscription as SubscribeEvents
//! ([`crate::fanout`]) and only changes the framing, so the guarantees are the same ones:
//! every durable matching event exactly once, in sequence order, never before it is durable;
//! catch-up then live with no gap; a slow reader stays behind on the store and slows nobody
//! (its server-side memory is the subscription's bounded queue plus the connection's
//! buffers); `--max-subscribers` counts these streams with the gRPC ones; a key reload that
//! takes the caller's right away ends the stream at once.
//!
//! Framing:
//! - each event is one message with no `event:` line (so `EventSource.onmessage` fires):
//!   `id:` is its sequence, `data:` the event as `GET /events/{id}` shows it;
//! - `event: caught_up` once, when the history is delivered, with `data: {"sequence":N}` and
//!   `id: N`, so a client that reconnects after it resumes from there;
//! - a comment (`: heartbeat`) every `--heartbeat-interval`;
//! - the stream's end, when the server ends it (shutdown, a removed key), is one
//!   `event: error` message holding the JSON error body (`{"object":"error","code","message"}`).
//!
//! Query parameters are named as the views name them: `type` (repeatable or comma-separated,
//! with trailing wildcards), `livemode=true|false`, and at most one start: `from_beginning=true`,
//! `after_sequence=N` or `from_created=<RFC 3339>` (none: only events committed from now on).
//! A `Last-Event-ID` header (what `EventSource` sends when it reconnects) overrides the start
//! with "after this sequence". Errors come before the first byte, as the views' JSON error
//! bodies: 401 or 403 for the key (the `subscribe` scope is needed), 422 naming the parameter,
//! 400 for a position outside the store (`reason: EVENTS_EXPIRED` when retention removed what
//! follows it), 503 when `--max-subscribers` streams are open.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio_stream::Stream;
use tonic::{Code, Status};

use super::{name_type_param, omise, Params, ViewsState};
use crate::auth::Scope;
use crate::error::Error;
use crate::event::Filter;
use crate::fanout::queue::EventQueueStream;
use crate::fanout::Start;
use crate::proto::wire::subscribe_events_response::Item;
use crate::proto::wire::SubscribeEventsResponse;
use crate::store::StoredEvent;

/// The request header that resumes a stream.
const LAST_EVENT_ID: &str = "last-event-id";
/// A body chunk stops taking ready messages at about this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Most messages the shared message cache keeps, and most bytes.
const CACHE_MESSAGES: usize = 1024;
const CACHE_BYTES: usize = 4 << 20;

/// The SSE messages of recent events, shared by every stream: an event's message is the same
/// for every caller that may see it, so streams delivering the same event (the live tail,
/// above all) write it once. Bounded in messages and in bytes; the oldest written go first.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct MessageCache(Arc<Mutex<Messages>>);

#[derive(Default)]
struct Messages {
    by_sequence: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl MessageCache {
    /// The message of the event at `sequence`, written by `write` unless cached.
    fn get_or_write(
        &self,
        sequence: u64,
        write: impl FnOnce() -> Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        let cached = self.lock().by_sequence.get(&sequence).cloned();
        if let Some(message) = cached {
            return Ok(message);
        }
        // Written outside the lock; two streams racing write it twice, which is harmless.
        let message = write()?;
        let mut messages = self.lock();
        if messages.by_sequence.insert(sequence, message.clone()).is_none() {
            messages.order.push_back(sequence);
            messages.bytes += message.len();
        }
        while messages.order.len() > CACHE_MESSAGES || messages.bytes > CACHE_BYTES {
            let Some(oldest) = messages.order.pop_front() else { break };
            if let Some(gone) = messages.by_sequence.remove(&oldest) {
                messages.bytes -= gone.len();
            }
        }
        Ok(message)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Messages> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `GET /stream/events`.
pub async fn events(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = state.keys.authenticate(authorization)?;
    caller.require(Scope::Subscribe)?;
    let params = Params::new(query)?;
    let mut filter =
        Filter::new(&params.list("type"), params.bool("livemode")?).map_err(name_type_param)?;
    caller.restrict(&mut filter)?;
    let (start, field) = start(&params, &headers)?;
    let stream = state
        .fanout
        .subscribe_queue(caller, start, filter)
        .await
        .map_err(|err| name_start_param(err, field))?;
    let body = Body::from_stream(Frames(stream.with_events(), state.messages.clone()));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Proxies such as nginx would otherwise hold messages back in their buffers.
        (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
    ];
    Ok((headers, body).into_response())
}

/// Where the stream starts, and the name of the parameter that said so (for errors about
/// the position).
fn start(params: &Params, headers: &HeaderMap) -> Result<(Start, &'static str), Error> {
    let beginning = params.bool("from_beginning")? == Some(true);
    let after = params.one("after_sequence")?.map(|text| sequence("after_sequence", text));
    let after = after.transpose()?;
    let created = params.time("from_created")?;
    let given: Vec<&str> = [
        ("from_beginning", beginning),
        ("after_sequence", after.is_some()),
        ("from_created", created.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if given.len() > 1 {
        return Err(Error::invalid(
            given.join(", "),
            "give at most one of from_beginning=true, after_sequence and from_created",
        ));
    }
    if let Some(resume) = last_event_id(headers)? {
        return Ok((Start::After(resume), "Last-Event-ID"));
    }
    Ok(match (beginning, after, created) {
        (true, _, _) => (Start::Beginning, "from_beginning"),
        (_, Some(seq), _) => (Start::After(seq), "after_sequence"),
        (_, _, Some(t)) => (Start::Created(t), "from_created"),
        _ => (Start::Now, "after_sequence"),
    })
}

/// The sequence in a `Last-Event-ID` header; an empty header (as `EventSource` may send)
/// counts as none.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| Error::invalid("Last-Event-ID", "is not text"))?;
    match text.trim() {
        "" => Ok(None),
        text => sequence("Last-Event-ID", text).map(Some),
    }
}

fn sequence(name: &str, text: &str) -> Result<u64, Error> {
    text.trim()
        .parse()
        .map_err(|_| Error::invalid(name, format!("must be a whole number (got {text:?})")))
}

/// The fan-out names positions as SubscribeEvents' fields; over HTTP they are named as the
/// request gave them.
fn name_start_param(err: Error, field: &'static str) -> Error {
    match err {
        Error::Expired { earliest, .. } => Error::Expired { position: field, earliest },
        Error::OutOfRange { reason, .. } => Error::OutOfRange { field, reason },
        Error::InvalidArgument { reason, .. } if field == "from_created" => {
            Error::invalid(field, reason)
        }
        other => other,
    }
}

/// The body: every message the queue has ready goes into one chunk, so a stream that is
/// behind (catching up, or a burst) writes one chunk per batch rather than one per message.
/// It holds nothing beyond what the queue already bounds.
struct Frames(EventQueueStream, MessageCache);

impl Stream for Frames {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut out = Vec::new();
        while out.len() < CHUNK_BYTES {
            match Pin::new(&mut self.0).poll_next(cx) {
                Poll::Ready(Some((item, event))) => frame(&mut out, item, event, &self.1),
                Poll::Ready(None) if out.is_empty() => return Poll::Ready(None),
                Poll::Pending if out.is_empty() => return Poll::Pending,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(Bytes::from(out))))
    }
}

/// Appends one stream item as SSE text. An event is written from the stored event the queue
/// carries with it (its JSON `data` is cached there, shared by every stream that delivers it).
fn frame(
    out: &mut Vec<u8>,
    item: Result<SubscribeEventsResponse, Status>,
    stored: Option<StoredEvent>,
    messages: &MessageCache,
) {
    match item.map(|response| response.item) {
        Ok(Some(Item::Event(wire))) => {
            let event = stored.map_or_else(|| StoredEvent::from_bytes(wire.bytes().clone()), Ok);
            let written = event.and_then(|event| {
                messages.get_or_write(event.sequence(), || event_message(&event))
            });
            match written {
                // The message ends with its blank line, added below.
                Ok(message) => out.extend_from_slice(&message),
                Err(err) => error_message(out, &Status::from(err)),
            }
        }
        Ok(Some(Item::CaughtUp(caught_up))) => {
            let n = caught_up.sequence;
            out.extend_from_slice(
                format!("event: caught_up\nid: {n}\ndata: {{\"sequence\":{n}}}\n").as_bytes(),
            );
        }
        Ok(Some(Item::Heartbeat(_))) => out.extend_from_slice(b": heartbeat\n"),
        Err(status) => error_message(out, &status),
        // The handler opens its subscriptions in the events.v1 format, which never sends these.
        Ok(Some(Item::CloudEvent(_)) | None) => {
            error_message(out, &Status::internal("the stream sent an item SSE cannot frame"))
        }
    }
    out.push(b'\n');
}

/// An event's message without its closing blank line: `id:` and the view's JSON.
fn event_message(event: &StoredEvent) -> Result<Bytes, Error> {
    let mut json = Vec::with_capacity(event.bytes().len() + 256);
    omise::write_event(event, &mut json)?;
    let mut message = Vec::with_capacity(json.len() + 32);
    message.extend_from_slice(format!("id: {}\n", event.sequence()).as_bytes());
    data_lines(&mut message, &json);
    Ok(Bytes::from(message))
}

/// `data:` lines for a payload: one per line of it (JSON written by eventsd has none, but a
/// bare CR or LF inside a `data:` line would otherwise split the message).
fn data_lines(out: &mut Vec<u8>, payload: &[u8]) {
    if !payload.iter().any(|b| *b == b'\n' || *b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(payload);
        out.push(b'\n');
        return;
    }
    let text = String::from_utf8_lossy(payload).replace("\r\n", "\n").replace('\r', "\n");
    for line in text.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// The stream's final status as an `event: error` message with the JSON error body.
fn error_message(out: &mut Vec<u8>, status: &Status) {
    let code = match status.code() {
        Code::Unavailable => "unavailable",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::OutOfRange => "out_of_range",
        _ => "internal",
    };
    let body = serde_json::json!({"object": "error", "code": code, "message": status.message()});
    out.extend_from_slice(b"event: error\n");
    data_lines(out, body.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CaughtUp, Event, WireEvent};

    fn text(item: Result<SubscribeEventsResponse, Status>) -> String {
        let mut out = Vec::new();
        frame(&mut out, item, None, &MessageCache::default());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn events_caught_up_heartbeats_and_errors_frame_as_sse_messages() {
        let event = Event {
            id: "evt_1".into(),
            r#type: "charge.create".into(),
            sequence: 7,
            data: Some(Default::default()),
            ..Default::default()
        };
        let wire = WireEvent::from(&StoredEvent::from_event(&event));
        let message = text(Ok(SubscribeEventsResponse { item: Some(Item::Event(wire)) }));
        assert!(message.starts_with("id: 7\ndata: {"), "{message}");
        assert!(message.ends_with("}\n\n") && message.matches('\n').count() == 3, "{message}");
        let caught_up = Item::CaughtUp(CaughtUp { sequence: 9 });
        assert_eq!(
            text(Ok(SubscribeEventsResponse { item: Some(caught_up) })),
            "event: caught_up\nid: 9\ndata: {\"sequence\":9}\n\n"
        );
        let ended = text(Err(Status::unauthenticated("key \"a\" was removed")));
        assert!(ended.starts_with("event: error\ndata: {"), "{ended}");
        assert!(ended.contains("\"code\":\"unauthenticated\""), "{ended}");
    }

    #[test]
    fn the_message_cache_writes_each_event_once_and_stays_within_its_bounds() {
        let cache = MessageCache::default();
        let first = cache.get_or_write(1, || Ok(Bytes::from_static(b"one"))).unwrap();
        let again = cache.get_or_write(1, || panic!("a cached message is not written again"));
        assert_eq!(again.unwrap(), first);
        for seq in 2..=(CACHE_MESSAGES as u64 + 10) {
            cache.get_or_write(seq, || Ok(Bytes::from(vec![b'x'; 100]))).unwrap();
        }
        assert_eq!(cache.lock().by_sequence.len(), CACHE_MESSAGES);
        assert!(!cache.lock().by_sequence.contains_key(&1), "the oldest went first");
        let big = Bytes::from(vec![b'y'; CACHE_BYTES]);
        cache.get_or_write(u64::MAX, || Ok(big.clone())).unwrap();
        assert!(cache.lock().bytes <= CACHE_BYTES, "{} bytes", cache.lock().bytes);
    }

    #[test]
    fn a_payload_with_line_breaks_becomes_several_data_lines() {
        let mut out = Vec::new();
        data_lines(&mut out, b"a\r\nb\rc\nd");
        assert_eq!(out, b"data: a\ndata: b\ndata: c\ndata: d\n");
    }
}
