//! CloudEvents 1.0 in JSON over HTTP, for receivers that poll rather than hold a gRPC stream.
//!
//! - `GET /cloudevents/{id}`: one event, `application/cloudevents+json`.
//! - `GET /cloudevents?after_sequence=N&limit=M`: the next durable events after sequence N in
//!   sequence order, as a JSON batch (`application/cloudevents-batch+json`), filtered by
//!   `type` and `livemode` like ListEvents. The `Eventsd-Next-After` response header is the
//!   position to poll from next (it moves past events the filter skipped), so polling with it
//!   receives every matching event exactly once, in order. A position before the oldest kept
//!   event is 400 `out_of_range`.
//!
//! The same API keys and modes apply as to every read route (see [`super::reader`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{find, reader, Params, ViewsState};
use crate::error::Error;
use crate::event::cloudevent::{write_json, BATCH_CONTENT_TYPE, JSON_CONTENT_TYPE};
use crate::event::Filter;

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
) -> Result<Response, Error> {
    let caller = reader(&state, &headers)?;
    let stored = find(&state, &caller, id).await?;
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
    let events = state.store.read_from(after, limit.min(MAX_LIMIT) as usize).await?;
    let next = events.last().map_or(after, |e| e.sequence());
    let mut body = Vec::with_capacity(4096);
    body.push(b'[');
    for (i, event) in events.iter().filter(|e| filter.matches(e)).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_json(event, &mut body)?;
    }
    body.push(b']');
    Ok(respond(BATCH_CONTENT_TYPE, body, Some(next)))
}

fn respond(content_type: &'static str, body: Vec<u8>, next: Option<u64>) -> Response {
    let mut response =
        ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response();
    if let Some(next) = next {
        response.headers_mut().insert(NEXT_AFTER, HeaderValue::from(next));
    }
    response
}
