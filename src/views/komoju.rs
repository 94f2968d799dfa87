//! The KOMOJU view: `GET /api/v1/events` in the KOMOJU list shape and
//! `GET /api/v1/events/{id}` in the KOMOJU event shape.
//!
//! The list runs from most recent to least recent, as KOMOJU's documentation says: by
//! (created, sequence) descending, so of two events created in the same second the one
//! committed later comes first. Parameters are KOMOJU's `page` (default 1) and `per_page`
//! (default 10, as in KOMOJU's sample; above 100 reduced to 100), plus eventsd's filters `type`,
//! `livemode` and `source` as in the Omise view. The range is ListEvents' default: created from
//! 1970-01-01T00:00:00Z up to now. `last_page` is at least 1: an empty listing still has its
//! first, empty page.
//!
//! An event reads `{"id","type","resource":"event","data","created_at"}` plus eventsd's
//! `livemode`, `sequence`, `source`, `api_version` and `received`, extra fields KOMOJU clients
//! ignore.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{data_json, find, json_response, reader, time_text, Params, ViewsState};
use crate::error::Error;
use crate::event::wire_json::ObjectWriter;
use crate::proto::{ListEventsRequest, Order};
use crate::service::list::MAX_LIMIT;
use crate::store::StoredEvent;

/// KOMOJU's page size when `per_page` is not given.
pub const DEFAULT_PER_PAGE: i32 = 10;

/// `GET /api/v1/events`: one page in the KOMOJU list shape, most recent first.
pub async fn list(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let caller = reader(&state, &headers)?;
    let params = Params::new(query)?;
    let page = params.int("page")?.unwrap_or(1);
    if page < 1 {
        return Err(Error::invalid("page", format!("must be 1 or more (got {page})")));
    }
    let per_page = params.int("per_page")?.unwrap_or(DEFAULT_PER_PAGE);
    if per_page < 1 {
        return Err(Error::invalid("per_page", format!("must be 1 or more (got {per_page})")));
    }
    let per_page = per_page.min(MAX_LIMIT);
    let offset = (page - 1)
        .checked_mul(per_page)
        .ok_or_else(|| Error::invalid("page", format!("{page} is beyond the last page")))?;
    let request = ListEventsRequest {
        offset,
        limit: per_page,
        order: Order::ReverseChronological as i32,
        types: params.list("type"),
        livemode: params.bool("livemode")?,
        source: params.one("source")?.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let listing = super::list(&state, &caller, request).await?;
    let total = u64::try_from(listing.total).unwrap_or(0);
    let last_page = total.div_ceil(per_page.unsigned_abs().into()).max(1);
    let mut out = Vec::with_capacity(1024);
    ObjectWriter::new(&mut out)
        .array("data", &listing.events, write_event)?
        .int("last_page", last_page)
        .int("page", page)
        .int("per_page", per_page)
        .str("resource", "list")
        .int("total", listing.total)
        .finish();
    Ok(json_response(out))
}

/// `GET /api/v1/events/{id}`: one event in the KOMOJU event shape.
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

/// An event in the KOMOJU event shape, with eventsd's extra fields (`api_version`,
/// `livemode`, `sequence`, `source`), keys in byte order.
pub fn write_event(event: &StoredEvent, out: &mut Vec<u8>) -> Result<(), Error> {
    ObjectWriter::new(out)
        .label("api_version", event.api_version())
        .str("created_at", &time_text(&event.created()))
        .raw("data", &data_json(event)?)
        .str("id", event.id())
        .bool("livemode", event.livemode())
        .str("received", &time_text(&event.received()))
        .str("resource", "event")
        .int("sequence", event.sequence())
        .label("source", event.source())
        .str("type", event.event_type())
        .finish();
    Ok(())
}
