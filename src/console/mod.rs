//! `/console`: a web console served by eventsd itself, to watch events arrive, browse and
//! inspect them, see webhook deliveries by source, publish a test event, and (admin keys)
//! manage outbound webhook endpoints and retry their deliveries, with no gRPC client and
//! nothing to install.
//!
//! The page is one HTML file, one script and one style sheet under `assets/`, compiled into
//! the binary (`include_str!`): no CDN, no network access, no build step, and `cargo run`
//! needs no Node. The script reads only through the public HTTP API (`/whoami`, `/events`,
//! `/events/{id}`, `/stream/events`, `POST /events`, and the outbound webhook routes
//! `/endpoints…` and `POST /deliveries/{id}/retry`), so it can do exactly what the key it is
//! given may do. What the console promises:
//! - Every response carries `Content-Security-Policy: default-src 'self'` (no inline script,
//!   no other origin), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//!   `Referrer-Policy: no-referrer`.
//! - Server text is inserted as text, never parsed as HTML: an event whose data holds markup
//!   shows the markup and runs nothing.
//! - The key is asked for once, kept in the tab's sessionStorage, and sent as the
//!   `authorization` header only, never in a URL (the live stream is read with `fetch()`).
//! - The assets need no key: they hold no data.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// The policy every console response carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'";

/// The console's routes, to merge into the HTTP router.
pub fn router() -> Router {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // The assets change with the binary: revalidate rather than keep a stale script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}
