//! The KOMOJU view: `GET /api/v1/events` in the KOMOJU list shape and
//! `GET /api/v1/events/{id}` in the KOMOJU event shape.
//!
//! The list runs from most recent to least recent, as KOMOJU's documentation says: by
//! (created, sequence) descending, so of two events created in the same second the one
//! committed later comes first. Parameters are KOMOJU's `page` (default 1) and `per_page`
//! (default 10, as in KOMOJU's sample; above 100 reduced to 100), plus eventsd's filters `type`
//! and `livemode` as in the Omise view. The range is ListEvents' default: created from
//! 1970-01-01T00:00:00Z up to now. `last_page` is at least 1: an empty listing still has its
//! first, empty page.
//!
//! An event reads `{"id","type","resource":"event","data","created_at"}` plus eventsd's
//! `livemode`, `sequence`, `source` and `api_version`, extra fields KOMOJU clients ignore.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::{add_extras, data_json, find, reader, time_json, Params, ViewsState};
use crate::api::list::MAX_LIMIT;
use crate::error::Error;
use crate::proto::{Event, ListEventsRequest, Order};

/// KOMOJU's page size when `per_page` is not given.
pub const DEFAULT_PER_PAGE: i32 = 10;

/// `GET /api/v1/events`: one page in the KOMOJU list shape, most recent first.
pub async fn list(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, Error> {
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
        ..Default::default()
    };
    let listing = super::list(&state, &caller, request).await?;
    let total = u64::try_from(listing.total).unwrap_or(0);
    let last_page = total.div_ceil(per_page.unsigned_abs().into()).max(1);
    Ok(Json(json!({
        "resource": "list",
        "total": listing.total,
        "page": page,
        "per_page": per_page,
        "last_page": last_page,
        "data": listing.events.iter().map(|e| e.decode().map(|e| event(&e))).collect::<Result<Vec<_>, _>>()?,
    })))
}

/// `GET /api/v1/events/{id}`: one event in the KOMOJU event shape.
pub async fn get(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, Error> {
    let caller = reader(&state, &headers)?;
    let stored = find(&state, &caller, id, query).await?;
    Ok(Json(event(&stored)))
}

/// An event in the KOMOJU event shape, with eventsd's extra fields.
pub fn event(event: &Event) -> Value {
    let mut object = json!({
        "id": event.id,
        "type": event.r#type,
        "resource": "event",
        "data": data_json(event),
        "created_at": time_json(&event.created),
    });
    if let Value::Object(map) = &mut object {
        map.insert("livemode".into(), Value::Bool(event.livemode));
        add_extras(map, event);
    }
    object
}
