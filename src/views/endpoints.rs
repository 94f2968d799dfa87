//! The HTTP routes of outbound webhooks, for the console and scripts: a thin adapter over
//! [`Webhooks`], with the messages of `webhooks.proto` in their proto3 JSON form
//! (lowerCamelCase names; both spellings accepted on input, as proto3 JSON parsers do).
//!
//! - `GET /endpoints`, `POST /endpoints` (201 with the secret)
//! - `GET|PATCH|DELETE /endpoints/{id}`: PATCH changes the fields present in the body
//!   (JSON merge semantics); DELETE answers 204
//! - `POST /endpoints/{id}/rotate` (optional body `{"secret"}`), `POST /endpoints/{id}/replay`
//!   (`{"afterSequence"}` or `{"fromCreated"}`)
//! - `GET /endpoints/{id}/deliveries?status=&event_id=&limit=&page_token=`
//! - `POST /deliveries/{id}/retry`
//!
//! Every route needs a key with the `admin` scope. Errors are the JSON error bodies of the
//! other HTTP routes; a malformed id in the path is 404, like any unknown id.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::auth::{KeyRing, Principal};
use crate::delivery::endpoints::{check_endpoint_id, parse_delivery_id, Webhooks};
use crate::error::Error;
use crate::event::time;
use crate::ingest::http::{body_bytes, parse_json, require_json};
use crate::proto::replay_endpoint_request::Start;
use crate::proto::{
    CreateEndpointRequest, Delivery, DeliveryAttempt, DeliveryStatus, Endpoint, EndpointFormat,
    ListDeliveriesRequest, ReplayEndpointRequest, UpdateEndpointRequest,
};

/// Largest request body these routes read.
const MAX_BODY: usize = 64 * 1024;

/// What the routes share.
#[derive(Clone)]
pub struct EndpointsState {
    /// The webhook operations.
    pub webhooks: Webhooks,
    /// The API keys.
    pub keys: KeyRing,
}

/// The routes, to merge into the HTTP router.
pub fn router(state: EndpointsState) -> Router {
    Router::new()
        .route("/endpoints", get(list).post(create))
        .route("/endpoints/{id}", get(read).patch(update).delete(delete))
        .route("/endpoints/{id}/rotate", post(rotate))
        .route("/endpoints/{id}/replay", post(replay))
        .route("/endpoints/{id}/deliveries", get(deliveries))
        .route("/deliveries/{id}/retry", post(retry))
        .with_state(state)
}

fn caller(state: &EndpointsState, headers: &HeaderMap) -> Result<Principal, Error> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.keys.authenticate(authorization)
}

/// An endpoint id from the path: a malformed one is simply not found.
fn path_endpoint(id: &str) -> Result<(), Error> {
    check_endpoint_id("id", id).map_err(|_| Error::NoSuch { kind: "endpoint", id: id.to_owned() })
}

fn body_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    optional: bool,
) -> Result<Map<String, Value>, Error> {
    let body = body_bytes(body, MAX_BODY)?;
    if optional && body.is_empty() {
        return Ok(Map::new());
    }
    require_json(headers)?;
    match parse_json(&body)? {
        Value::Object(map) => Ok(map),
        _ => Err(Error::MalformedJson("the body must be a JSON object".into())),
    }
}

/// A field by its proto3 JSON name or its proto name.
fn field<'a>(map: &'a Map<String, Value>, json_name: &str, proto_name: &str) -> Option<&'a Value> {
    map.get(json_name).or_else(|| map.get(proto_name)).filter(|v| !v.is_null())
}

fn string(map: &Map<String, Value>, json_name: &str, proto_name: &str) -> Result<String, Error> {
    match field(map, json_name, proto_name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::invalid(proto_name, "must be a string")),
    }
}

fn strings(map: &Map<String, Value>, name: &str) -> Result<Vec<String>, Error> {
    match field(map, name, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::invalid(format!("{name}[{i}]"), "must be a string"))
            })
            .collect(),
        Some(_) => Err(Error::invalid(name, "must be an array of strings")),
    }
}

fn boolean(map: &Map<String, Value>, name: &str) -> Result<Option<bool>, Error> {
    match field(map, name, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::invalid(name, "must be true or false")),
    }
}

fn number(
    map: &Map<String, Value>,
    json_name: &str,
    proto_name: &str,
) -> Result<Option<u64>, Error> {
    match field(map, json_name, proto_name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| Error::invalid(proto_name, "must be a whole number"))
        }
        // proto3 JSON writes 64-bit integers as strings.
        Some(Value::String(s)) => {
            s.parse().map(Some).map_err(|_| Error::invalid(proto_name, "must be a whole number"))
        }
        Some(_) => Err(Error::invalid(proto_name, "must be a whole number")),
    }
}

fn small_number(map: &Map<String, Value>, json_name: &str, proto_name: &str) -> Result<u32, Error> {
    match number(map, json_name, proto_name)? {
        None => Ok(0),
        Some(n) => u32::try_from(n).map_err(|_| Error::invalid(proto_name, "is too large")),
    }
}

fn format_value(map: &Map<String, Value>) -> Result<i32, Error> {
    match field(map, "format", "format") {
        None => Ok(0),
        Some(Value::String(name)) => EndpointFormat::from_str_name(name)
            .map(|f| f as i32)
            .ok_or_else(|| Error::invalid("format", format!("unknown value {name:?}"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| Error::invalid("format", "is not a known value")),
        Some(_) => Err(Error::invalid("format", "must be a format name")),
    }
}

fn timestamp_json(ts: &Option<prost_types::Timestamp>) -> Value {
    ts.as_ref().map_or(Value::Null, |t| Value::String(time::to_rfc3339(t)))
}

/// An endpoint in proto3 JSON (the secret only when set).
pub fn endpoint_json(endpoint: &Endpoint) -> Value {
    let format = EndpointFormat::try_from(endpoint.format).unwrap_or(EndpointFormat::EventJson);
    let mut out = json!({
        "id": endpoint.id,
        "url": endpoint.url,
        "types": endpoint.types,
        "description": endpoint.description,
        "disabled": endpoint.disabled,
        "created": timestamp_json(&endpoint.created),
        "maxInFlight": endpoint.max_in_flight,
        "format": format.as_str_name(),
    });
    if let Some(livemode) = endpoint.livemode {
        out["livemode"] = Value::Bool(livemode);
    }
    if !endpoint.secret.is_empty() {
        out["secret"] = Value::String(endpoint.secret.clone());
    }
    out
}

fn attempt_json(attempt: &DeliveryAttempt) -> Value {
    let latency = attempt
        .latency
        .as_ref()
        .map_or(Value::Null, |d| Value::String(format!("{}.{:09}s", d.seconds, d.nanos.max(0))));
    json!({
        "time": timestamp_json(&attempt.time),
        "httpStatus": attempt.http_status,
        "latency": latency,
        "error": attempt.error,
    })
}

/// A delivery in proto3 JSON.
pub fn delivery_json(delivery: &Delivery) -> Value {
    let status = DeliveryStatus::try_from(delivery.status).unwrap_or(DeliveryStatus::Unspecified);
    json!({
        "id": delivery.id,
        "endpointId": delivery.endpoint_id,
        "eventId": delivery.event_id,
        "sequence": delivery.sequence.to_string(),
        "status": status.as_str_name(),
        "attempts": delivery.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
        "nextAttempt": timestamp_json(&delivery.next_attempt),
        "error": delivery.error,
    })
}

async fn list(State(state): State<EndpointsState>, headers: HeaderMap) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    let endpoints = state.webhooks.list(&caller).await?;
    Ok(Json(json!({ "endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>() }))
        .into_response())
}

async fn create(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    let map = body_object(&headers, body, false)?;
    let request = CreateEndpointRequest {
        url: string(&map, "url", "url")?,
        types: strings(&map, "types")?,
        livemode: boolean(&map, "livemode")?,
        description: string(&map, "description", "description")?,
        secret: string(&map, "secret", "secret")?,
        format: format_value(&map)?,
        max_in_flight: small_number(&map, "maxInFlight", "max_in_flight")?,
    };
    let endpoint = state.webhooks.create(&caller, request).await?;
    Ok((StatusCode::CREATED, Json(endpoint_json(&endpoint))).into_response())
}

async fn read(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    path_endpoint(&id)?;
    Ok(Json(endpoint_json(&state.webhooks.get(&caller, &id).await?)).into_response())
}

async fn update(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    path_endpoint(&id)?;
    let map = body_object(&headers, body, false)?;
    let mut paths = Vec::new();
    let mut endpoint = Endpoint { id: id.clone(), ..Endpoint::default() };
    for (key, value) in &map {
        let path = match key.as_str() {
            "maxInFlight" | "max_in_flight" => "max_in_flight",
            "url" | "types" | "livemode" | "description" | "disabled" | "format" => key.as_str(),
            other => {
                return Err(Error::invalid(other, "cannot be updated (updatable: url, types, livemode, description, disabled, maxInFlight, format)"))
            }
        };
        paths.push(path.to_owned());
        match path {
            "url" => endpoint.url = string(&map, "url", "url")?,
            "types" => endpoint.types = strings(&map, "types")?,
            // null clears livemode (every mode the creator may read).
            "livemode" => {
                endpoint.livemode = if value.is_null() { None } else { boolean(&map, "livemode")? }
            }
            "description" => endpoint.description = string(&map, "description", "description")?,
            "disabled" => endpoint.disabled = boolean(&map, "disabled")?.unwrap_or(false),
            "max_in_flight" => {
                endpoint.max_in_flight = small_number(&map, "maxInFlight", "max_in_flight")?
            }
            _ => endpoint.format = format_value(&map)?,
        }
    }
    if paths.is_empty() {
        return Err(Error::invalid("body", "names no field to update"));
    }
    let request = UpdateEndpointRequest {
        endpoint: Some(endpoint),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    Ok(Json(endpoint_json(&state.webhooks.update(&caller, request).await?)).into_response())
}

async fn delete(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    path_endpoint(&id)?;
    state.webhooks.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rotate(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    path_endpoint(&id)?;
    let map = body_object(&headers, body, true)?;
    let secret = string(&map, "secret", "secret")?;
    Ok(Json(endpoint_json(&state.webhooks.rotate(&caller, &id, &secret).await?)).into_response())
}

async fn replay(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    path_endpoint(&id)?;
    let map = body_object(&headers, body, false)?;
    let after = number(&map, "afterSequence", "after_sequence")?;
    let created = string(&map, "fromCreated", "from_created")?;
    let start = match (after, created.is_empty()) {
        (Some(_), false) => {
            return Err(Error::invalid("afterSequence", "and fromCreated cannot both be given"))
        }
        (Some(after), true) => Some(Start::AfterSequence(after)),
        (None, false) => Some(Start::FromCreated(time::from_chrono(
            chrono::DateTime::parse_from_rfc3339(&created)
                .map_err(|e| {
                    Error::invalid("fromCreated", format!("is not an RFC 3339 time: {e}"))
                })?
                .with_timezone(&chrono::Utc),
        ))),
        (None, true) => None,
    };
    let request = ReplayEndpointRequest { endpoint_id: id, start };
    Ok(Json(endpoint_json(&state.webhooks.replay(&caller, request).await?)).into_response())
}

async fn deliveries(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    path_endpoint(&id)?;
    let Query(params) = query.map_err(|e| Error::invalid("query", e.body_text()))?;
    let mut request = ListDeliveriesRequest { endpoint_id: id, ..ListDeliveriesRequest::default() };
    for (name, value) in params {
        match name.as_str() {
            "status" => {
                let upper = value.to_ascii_uppercase();
                let full = if upper.starts_with("DELIVERY_STATUS_") {
                    upper
                } else {
                    format!("DELIVERY_STATUS_{upper}")
                };
                request.status = DeliveryStatus::from_str_name(&full).ok_or_else(|| {
                    Error::invalid(
                        "status",
                        format!("unknown value {value:?} (pending, succeeded, failed)"),
                    )
                })? as i32;
            }
            "event_id" => request.event_id = value,
            "limit" => {
                request.limit =
                    value.parse().map_err(|_| Error::invalid("limit", "must be a whole number"))?
            }
            "page_token" => request.page_token = value,
            _ => {}
        }
    }
    let page = state.webhooks.list_deliveries(&caller, request).await?;
    Ok(Json(json!({
        "deliveries": page.deliveries.iter().map(delivery_json).collect::<Vec<_>>(),
        "nextPageToken": page.next_page_token,
    }))
    .into_response())
}

async fn retry(
    State(state): State<EndpointsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let caller = caller(&state, &headers)?;
    parse_delivery_id("id", &id).map_err(|_| Error::NoSuch { kind: "delivery", id: id.clone() })?;
    Ok(Json(delivery_json(&state.webhooks.retry(&caller, &id).await?)).into_response())
}
