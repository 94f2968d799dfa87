//! Authentication of gRPC calls as a tower layer, placed outside the in-flight limit.
//!
//! Every `events.v1.EventService` and `events.v1.WebhookService` call is authenticated from its `authorization` header here,
//! before anything else runs: a caller without a valid key is refused with UNAUTHENTICATED
//! and never holds one of the shared in-flight permits (`limits.rs`), so keyless traffic
//! cannot starve authenticated callers. The [`Principal`] goes into the request's extensions,
//! where handlers find it (`api::principal`). Health and reflection stay open, as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::KeyRing;

/// The calls that need a key: the event API and the webhook API (health and reflection are
/// open).
const AUTHENTICATED: &[&str] = &["/events.v1.EventService/", "/events.v1.WebhookService/"];

/// The layer; cheap to clone.
#[derive(Clone)]
pub struct AuthLayer(pub KeyRing);

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, keys: self.0.clone() }
    }
}

/// The per-connection service wrapper.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    keys: KeyRing,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if !AUTHENTICATED.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        let header =
            request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match self.keys.authenticate(header) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(err) => {
                let status: tonic::Status = err.into();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
