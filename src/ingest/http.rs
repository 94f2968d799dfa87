//! The HTTP router: webhook receivers, `POST /events` and `GET /healthz`.
//!
//! Order of checks for a delivery, cheapest and least revealing first: route (404), content
//! type (415), body size (413), signature (401), JSON (400), envelope and event rules (422,
//! naming the field), then the durable append: 201 for a new event, 200 for a redelivery of
//! the same event, 409 for the same id with different content. The publish itself (scope,
//! event rules, mode, append) is the service layer's ([`crate::service::publish`]); a webhook
//! delivery publishes as [`Principal::webhook`]. Errors are JSON in the Omise error shape
//! (`error.rs`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value};

use crate::auth::{KeyRing, Principal, Scope};
use crate::connections::BodyTimedOut;
use crate::error::Error;
use crate::event::json::{object_to_struct, write_stored_event};
use crate::event::{time, EventLimits};
use crate::ingest::sources::WebhookConfig;
use crate::ingest::webhook::envelope::{self, WebhookEvent};
use crate::ingest::webhook::signature::{self, Provider};
use crate::metrics::Metrics;
use crate::proto::PublishEventRequest;
use crate::service::{self, Publish};
use crate::store::{Appended, EventStore};

/// What the HTTP handlers share: cheap-to-clone handles.
#[derive(Clone)]
pub struct IngestState {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// Event size limits (shared with gRPC).
    pub limits: EventLimits,
    /// Webhook routes and secrets.
    pub webhooks: Arc<WebhookConfig>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// API keys for `POST /events` (webhook routes use their signatures instead).
    pub keys: KeyRing,
    /// Where refusals are counted.
    pub metrics: Metrics,
}

/// The HTTP routes.
pub fn router(state: IngestState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/events", post(publish))
        .route("/webhooks/{source}", post(webhook))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// 200 while the store accepts writes, 503 otherwise.
async fn healthz(State(state): State<IngestState>) -> Response {
    if state.store.writable() {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
    } else {
        let body = serde_json::json!({ "status": "unavailable", "reason": "the store does not accept writes" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `POST /webhooks/{source}`: one provider delivery; refusals are counted by source.
async fn webhook(
    State(state): State<IngestState>,
    Path(source_name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let route = match state.webhooks.sources.contains_key(&source_name) {
        true => format!("webhook:{source_name}"),
        false => "webhook:unknown".to_string(),
    };
    let result = receive_webhook(State(state.clone()), Path(source_name), headers, body).await;
    result.inspect_err(|e| state.metrics.rejected(&route, e.code_name()))
}

async fn receive_webhook(
    State(state): State<IngestState>,
    Path(source_name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let source = state
        .webhooks
        .sources
        .get(&source_name)
        .ok_or_else(|| Error::UnknownSource(source_name.clone()))?;
    require_json(&headers)?;
    let body = body_bytes(body, state.max_body_bytes)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if !source.secrets.is_empty() {
        let tolerance = chrono::Duration::from_std(state.webhooks.tolerance)
            .unwrap_or(chrono::Duration::seconds(300));
        signature::verify(
            source.provider,
            &source.secrets,
            &header,
            &body,
            chrono::Utc::now(),
            tolerance,
        )
        .map_err(|e| Error::Unauthenticated(e.to_string()))?;
    } else if !source.unsigned {
        return Err(Error::Unauthenticated(format!(
            "no webhook secret is configured for {source_name}; unsigned deliveries are accepted \
             only on routes named in --webhook-unsigned"
        )));
    }
    let json = parse_json(&body)?;
    let webhook_id = signature::standard_webhooks_id(&header);
    let delivery =
        envelope::parse(source.provider, &json, webhook_id.as_deref()).map_err(envelope_error)?;
    let livemode = match source.provider {
        Provider::Komoju => state.webhooks.komoju_livemode,
        _ => delivery.livemode.unwrap_or(false),
    };
    let request = webhook_request(delivery, livemode, &source_name)
        .map_err(|e| as_sent_by(source.provider, e))?;
    let sender = Principal::webhook(&source_name);
    let stored =
        service::publish(&*state.store, &state.limits, &sender, Publish::One(request.into()))
            .await
            .map_err(|e| as_sent_by(source.provider, e))?;
    created(stored)
}

/// `POST /events`: the proto3 JSON form of PublishEventRequest; refusals are counted.
async fn publish(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let result = receive_publish(&state, headers, body).await;
    result.inspect_err(|e| state.metrics.rejected("http", e.code_name()))
}

async fn receive_publish(
    state: &IngestState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = state.keys.authenticate(authorization)?;
    caller.require(Scope::Publish)?;
    require_json(&headers)?;
    let body = body_bytes(body, state.max_body_bytes)?;
    let json = parse_json(&body)?;
    let request = publish_request(&json)?;
    let stored =
        service::publish(&*state.store, &state.limits, &caller, Publish::One(request.into()))
            .await?;
    created(stored)
}

/// The answer to a publish of one event: 201 for a new event, 200 for a redelivery.
fn created(mut stored: Vec<Appended>) -> Result<Response, Error> {
    let Some(Appended { event, new }) = stored.pop() else {
        return Err(Error::Internal("the store returned no event".into()));
    };
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    let mut body = Vec::with_capacity(event.bytes().len() + 256);
    write_stored_event(&event, &mut body)?;
    let content_type = HeaderValue::from_static("application/json");
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(content_type))
    }
}

pub(crate) fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, Error> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit }
        } else if let Some(timeout) = BodyTimedOut::find(&rejection) {
            Error::RequestTimeout(timeout.to_string())
        } else {
            Error::MalformedJson(rejection.body_text())
        }
    })
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|e| Error::MalformedJson(e.to_string()))
}

/// An envelope error as a 422 naming the field.
fn envelope_error(err: envelope::EnvelopeError) -> Error {
    match err {
        envelope::EnvelopeError::Missing(field) => Error::invalid(field, "is required"),
        envelope::EnvelopeError::WrongType { field, expected } => {
            Error::invalid(field, format!("must be {expected}"))
        }
        envelope::EnvelopeError::Invalid { field, reason } => Error::invalid(field, reason),
    }
}

/// Renames a field error from eventsd's names to the names in the provider's delivery
/// (`type` is Omise's `key`, `data` is Stripe's `data.object`, `id` is Standard Webhooks'
/// `webhook-id` header), so the sender can find the field at fault.
fn as_sent_by(provider: Provider, err: Error) -> Error {
    let Error::InvalidArgument { field, reason } = err else { return err };
    let renamed = match (provider, field.as_str()) {
        (Provider::Omise, "type") => "key".to_string(),
        (Provider::Komoju, "created") => "created_at".to_string(),
        (Provider::StandardWebhooks, "id") => "webhook-id".to_string(),
        (Provider::StandardWebhooks, "created") => "timestamp".to_string(),
        (Provider::Stripe, f)
            if f == "data" || f.starts_with("data.") || f.starts_with("data[") =>
        {
            format!("data.object{}", &f[4..])
        }
        _ => field,
    };
    Error::InvalidArgument { field: renamed, reason }
}

/// A webhook delivery as a publish request; `data` must convert to a Struct exactly.
fn webhook_request(
    delivery: WebhookEvent,
    livemode: bool,
    source: &str,
) -> Result<PublishEventRequest, Error> {
    let data =
        object_to_struct(&delivery.data).map_err(|e| Error::invalid(e.path("data"), e.reason))?;
    Ok(PublishEventRequest {
        id: delivery.id,
        r#type: delivery.event_type,
        data: Some(data),
        created: delivery.created.map(time::from_chrono),
        livemode,
        api_version: delivery.api_version.unwrap_or_default(),
        source: source.to_string(),
    })
}

/// Reads the proto3 JSON form of PublishEventRequest, naming the field at fault.
fn publish_request(json: &Value) -> Result<PublishEventRequest, Error> {
    let Some(object) = json.as_object() else {
        return Err(Error::invalid("body", "must be a JSON object"));
    };
    let mut request = PublishEventRequest::default();
    for (key, value) in object {
        match key.as_str() {
            "id" => request.id = string_field(value, "id")?,
            "type" => request.r#type = string_field(value, "type")?,
            "source" => request.source = string_field(value, "source")?,
            "api_version" | "apiVersion" => {
                request.api_version = string_field(value, "api_version")?
            }
            "livemode" => {
                request.livemode = value
                    .as_bool()
                    .ok_or_else(|| Error::invalid("livemode", "must be true or false"))?;
            }
            "created" => {
                let text = value.as_str().ok_or_else(|| {
                    Error::invalid("created", "must be an RFC 3339 timestamp string")
                })?;
                let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
                    Error::invalid("created", format!("must be an RFC 3339 timestamp ({e})"))
                })?;
                request.created = Some(time::from_chrono(parsed.to_utc()));
            }
            "data" => {
                let map: &Map<String, Value> = value
                    .as_object()
                    .ok_or_else(|| Error::invalid("data", "must be a JSON object"))?;
                let data =
                    object_to_struct(map).map_err(|e| Error::invalid(e.path("data"), e.reason))?;
                request.data = Some(data);
            }
            other => return Err(Error::invalid(other, "is not a field of PublishEventRequest")),
        }
    }
    Ok(request)
}

fn string_field(value: &Value, field: &str) -> Result<String, Error> {
    value.as_str().map(str::to_string).ok_or_else(|| Error::invalid(field, "must be a string"))
}
