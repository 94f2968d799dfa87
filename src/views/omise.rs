//! The Omise view: `GET /events` in the Omise list shape and `GET /events/{id}` in the Omise
//! event shape, so the `location` of every event resolves on this listener.
//!
//! Query parameters are Omise's — `from`, `to` (ISO 8601), `offset` (default 0), `limit`
//! (default 20, above 100 reduced to 100, 0 means the default as in ListEvents) and `order`
//! (`chronological`, the default, or `reverse_chronological`) — plus eventsd's filters `type`
//! (repeatable or comma-separated, exact names or a trailing wildcard such as `charge.*`) and
//! `livemode` (`true` or `false`). The list echoes the effective query and the exact `total`.
//!
//! An event reads `{"object":"event","id","livemode","location":"/events/{id}","key":<type>,
//! "created","data"}` plus eventsd's `sequence`, `source` and `api_version`, extra fields that
//! Omise clients ignore.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::{add_extras, data_json, find, reader, time_json, Params, ViewsState};
use crate::error::Error;
use crate::proto::{Event, ListEventsRequest, Order};

/// `GET /events`: one page in the Omise list shape.
pub async fn list(
    State(state): State<ViewsState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, Error> {
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
    };
    let page = super::list(&state, &caller, request).await?;
    let order = match page.order {
        Order::ReverseChronological => "reverse_chronological",
        _ => "chronological",
    };
    Ok(Json(json!({
        "object": "list",
        "data": page.events.iter().map(|e| e.decode().map(|e| event(&e))).collect::<Result<Vec<_>, _>>()?,
        "limit": page.limit,
        "offset": page.offset,
        "total": page.total,
        "location": "/events",
        "order": order,
        "from": time_json(&Some(page.from)),
        "to": time_json(&Some(page.to)),
    })))
}

/// `GET /events/{id}`: one event in the Omise event shape.
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

/// An event in the Omise event shape, with eventsd's extra fields.
pub fn event(event: &Event) -> Value {
    let mut object = json!({
        "object": "event",
        "id": event.id,
        "livemode": event.livemode,
        "location": format!("/events/{}", event.id),
        "key": event.r#type,
        "created": time_json(&event.created),
        "data": data_json(event),
    });
    if let Value::Object(map) = &mut object {
        add_extras(map, event);
    }
    object
}
