//! CloudEvents 1.0 in JSON over HTTP, for receivers that poll rather than hold a gRPC stream.
//!
//! - `GET /cloudevents/{id}`: one event, `application/cloudevents+json`.
//! - `GET /cloudevents?after_sequence=N&limit=M`: the next durable events after sequence N in
//!   sequence order, as a JSON batch (`application/cloudevents-batch+json`), filtered by
//!   `type` and `livemode` like ListEvents. The `Eventsd-Next-After` response header is the
//!   position to poll from next (it moves past events the filter skipped), so polling with it
//!   receives every matching event exactly once, in order. A position before the oldest kept
//!   event is 400 `events_expired`. For a key limited to one mode the header never steps over
//!   the other mode's events (see `own_mode_batch`), and `limit` counts events returned
//!   rather than events examined.
//!
//! The same API keys and modes apply as to every read route (see [`super::reader`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{find, reader, Params, ViewsState};
use crate::auth::Mode;
use crate::error::Error;
use crate::event::cloudevent::{write_json, BATCH_CONTENT_TYPE, JSON_CONTENT_TYPE};
use crate::event::Filter;
use crate::store::{EventStore, StoredEvent};

/// Events examined per poll when `limit` is not given, and the most allowed.
const DEFAULT_LIMIT: i32 = 100;
const MAX_LIMIT: i32 = 1_000;
/// The header carrying the next poll position.
const NEXT_AFTER: HeaderName = HeaderName::from_static("eventsd-next-after");

/// `GET /cloudevents/{id}`.
pub async fn get(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let caller = reader(&state, &headers)?;
    let stored = find(&state, &caller, id, query).await?;
    let mut body = Vec::with_capacity(stored.bytes().len() + 256);
    write_json(&stored, &mut body)?;
    Ok(respond(JSON_CONTENT_TYPE, body, None))
}

/// `GET /cloudevents?after_sequence=N`.
pub async fn poll(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let caller = reader(&state, &headers)?;
    let params = Params::new(query)?;
    // Without a position, polling starts at the oldest kept event; an explicit position
    // before it is refused (read_from), as SubscribeEvents refuses it, so nothing is skipped.
    let after = match params.one("after_sequence")? {
        None => state.store.first_sequence() - 1,
        Some(text) => text.trim().parse::<u64>().map_err(|_| {
            Error::invalid("after_sequence", format!("must be a whole number (got {text:?})"))
        })?,
    };
    let limit = params.int("limit")?.unwrap_or(DEFAULT_LIMIT);
    if limit < 1 {
        return Err(Error::invalid("limit", format!("must be at least 1 (got {limit})")));
    }
    let mut filter = Filter::new(&params.list("type"), params.bool("livemode")?)
        .map_err(super::name_type_param)?;
    caller.restrict(&mut filter)?;
    // Everything acknowledged before the poll (through any instance) is in its answer.
    state.store.newest().await?;
    let limit = limit.min(MAX_LIMIT) as usize;
    let (events, next) = if caller.mode == Mode::All {
        let events = state.store.read_from(after, limit).await?;
        let next = events.last().map_or(after, |e| e.sequence());
        (events.into_iter().filter(|e| filter.matches(e)).collect(), next)
    } else {
        own_mode_batch(&*state.store, &filter, after, limit).await?
    };
    let mut body = Vec::with_capacity(4096);
    body.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_json(event, &mut body)?;
    }
    body.push(b']');
    Ok(respond(BATCH_CONTENT_TYPE, body, Some(next)))
}

/// Most events a one-mode key's poll reads looking for its own; past it the poll moves on.
const OWN_MODE_SCAN: usize = 10_000;

/// A poll for a one-mode key: up to `limit` matching events, and a next position that is the
/// last event returned, so `Eventsd-Next-After` does not step over the other mode's events
/// and so count them. Only a stretch of [`OWN_MODE_SCAN`] events without one of the key's
/// own moves the position past events it cannot see (what the README says a test key can
/// still infer: that a stretch of at least that many other events exists).
async fn own_mode_batch(
    store: &dyn EventStore,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> Result<(Vec<StoredEvent>, u64), Error> {
    let (mut batch, mut cursor, mut scanned) = (Vec::new(), after, 0);
    while batch.len() < limit && scanned < OWN_MODE_SCAN {
        let events = store.read_from(cursor, MAX_LIMIT as usize).await?;
        let Some(last) = events.last() else { break };
        cursor = last.sequence();
        scanned += events.len();
        batch.extend(events.into_iter().filter(|e| filter.matches(e)));
    }
    batch.truncate(limit);
    let next = match batch.last() {
        Some(event) => event.sequence(),
        None if scanned >= OWN_MODE_SCAN => cursor,
        None => after,
    };
    Ok((batch, next))
}

fn respond(content_type: &'static str, body: Vec<u8>, next: Option<u64>) -> Response {
    let mut response =
        ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response();
    if let Some(next) = next {
        response.headers_mut().insert(NEXT_AFTER, HeaderValue::from(next));
    }
    response
}
