//! The Omise view: `GET /events` in the Omise list shape and `GET /events/{id}` in the Omise
//! event shape, so the `location` of every event resolves on this listener.
//!
//! Query parameters are Omise's — `from`, `to` (ISO 8601), `offset` (default 0), `limit`
//! (default 20, above 100 reduced to 100, 0 means the default as in ListEvents) and `order`
//! (`chronological`, the default, or `reverse_chronological`) — plus eventsd's filters `type`
//! (repeatable or comma-separated, exact names or a trailing wildcard such as `charge.*`) and
//! `livemode` (`true` or `false`) and `source` (the producer, exactly). The list echoes the
//! effective query and the exact `total`.
//!
//! An event reads `{"object":"event","id","livemode","location":"/events/{id}","key":<type>,
//! "created","data"}` plus eventsd's `sequence`, `source`, `api_version` and `received` (when
//! eventsd committed it), extra fields that Omise clients ignore.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{data_json, find, json_response, reader, time_text, Params, ViewsState};
use crate::error::Error;
use crate::event::wire_json::ObjectWriter;
use crate::proto::{ListEventsRequest, Order};
use crate::store::StoredEvent;

/// `GET /events`: one page in the Omise list shape.
pub async fn list(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let caller = reader(&state, &headers)?;
    let params = Params::new(query)?;
    let request = ListEventsRequest {
        from: params.time("from")?,
        to: params.time("to")?,
        offset: params.int("offset")?.unwrap_or(0),
        limit: params.int("limit")?.unwrap_or(0),
        order: order(params.one("order")?)? as i32,
        types: params.list("type"),
        livemode: params.bool("livemode")?,
        page_token: String::new(),
        source: params.one("source")?.unwrap_or_default().to_string(),
    };
    let page = super::list(&state, &caller, request).await?;
    let order = match page.order {
        Order::ReverseChronological => "reverse_chronological",
        _ => "chronological",
    };
    let mut out = Vec::with_capacity(1024);
    ObjectWriter::new(&mut out)
        .array("data", &page.events, write_event)?
        .str("from", &time_text(&page.from))
        .int("limit", page.limit)
        .str("location", "/events")
        .str("object", "list")
        .int("offset", page.offset)
        .str("order", order)
        .str("to", &time_text(&page.to))
        .int("total", page.total)
        .finish();
    Ok(json_response(out))
}

/// `GET /events/{id}`: one event in the Omise event shape.
pub async fn get(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let caller = reader(&state, &headers)?;
    let stored = find(&state, &caller, id, query).await?;
    let mut out = Vec::with_capacity(stored.bytes().len() + 256);
    write_event(&stored, &mut out)?;
    Ok(json_response(out))
}

/// Omise's `order` values; absent means chronological.
fn order(value: Option<&str>) -> Result<Order, Error> {
    match value {
        None | Some("chronological") => Ok(Order::Chronological),
        Some("reverse_chronological") => Ok(Order::ReverseChronological),
        Some(other) => Err(Error::invalid(
            "order",
            format!("must be chronological or reverse_chronological (got {other:?})"),
        )),
    }
}

/// An event in the Omise event shape, with eventsd's extra fields (`api_version`, `sequence`,
/// `source`), keys in byte order.
pub fn write_event(event: &StoredEvent, out: &mut Vec<u8>) -> Result<(), Error> {
    ObjectWriter::new(out)
        .label("api_version", event.api_version())
        .str("created", &time_text(&event.created()))
        .raw("data", &data_json(event)?)
        .str("id", event.id())
        .str("key", event.event_type())
        .bool("livemode", event.livemode())
        .str("location", &format!("/events/{}", event.id()))
        .str("object", "event")
        .str("received", &time_text(&event.received()))
        .int("sequence", event.sequence())
        .label("source", event.source())
        .finish();
    Ok(())
}
