//! `GET /whoami`: who the caller is, so a client (the console) can show only what its key
//! may do. It answers `{"name","scopes","mode"}` for any valid key, whatever its scopes:
//! `scopes` as the key file lists them (`admin` implies the others), `mode` one of `test`,
//! `live`, `all`. Without a key file every caller is the unrestricted
//! `{"name":"anonymous","scopes":["admin"],"mode":"all"}`. A missing or unknown key is 401.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::ViewsState;
use crate::error::Error;

/// `GET /whoami`.
pub async fn whoami(
    State(state): State<ViewsState>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = state.keys.authenticate(authorization)?;
    let scopes: Vec<&str> = caller.scopes().iter().map(|s| s.as_str()).collect();
    let body =
        serde_json::json!({"name": caller.name, "scopes": scopes, "mode": caller.mode.as_str()});
    Ok(axum::Json(body).into_response())
}
