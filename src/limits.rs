//! Overload protection: one limit on unary calls in flight across every connection.
//!
//! tonic's own concurrency limit is per connection, so many connections could still pile up
//! unbounded work. This layer shares one semaphore among all connections: a unary call that
//! finds no free permit is refused at once with RESOURCE_EXHAUSTED (load shedding) instead of
//! queueing, so accepted calls keep their latency and memory stays bounded. Streams
//! (SubscribeEvents, reflection) are long-lived and bounded by the per-connection stream
//! limit instead, so they do not hold permits. Health checks hold none either: they do no
//! work, and a load balancer must see the server healthy while it sheds load. The limit sits
//! inside the authentication layer, so keyless calls never take a permit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::metrics::{grpc_operation, Metrics};

/// Paths the limit leaves alone: streaming methods and health checks.
const EXEMPT: &[&str] =
    &["/events.v1.EventService/SubscribeEvents", "/grpc.reflection.", "/grpc.health.v1.Health/"];

/// The shared limit; cheap to clone.
#[derive(Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Arc<AtomicU64>,
    metrics: Metrics,
}

impl InFlightLimit {
    /// A limit of `limit` unary calls in flight; shed calls are counted in `metrics`.
    pub fn new(limit: usize, metrics: Metrics) -> Self {
        InFlightLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: Arc::new(AtomicU64::new(0)),
            metrics,
        }
    }

    /// Calls refused so far.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for InFlightLimit {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService { inner, limit: self.clone() }
    }
}

/// The per-connection service wrapper; every clone shares the same semaphore.
#[derive(Clone)]
pub struct LimitService<S> {
    inner: S,
    limit: InFlightLimit,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LimitService<S>
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

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let permit: OwnedSemaphorePermit = match self.limit.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.limit.shed.fetch_add(1, Ordering::Relaxed);
                let err = Error::Overloaded { max: self.limit.limit };
                if let Some(operation) = grpc_operation(path) {
                    self.limit.metrics.request("grpc", operation, err.code_name());
                }
                let status = tonic::Status::from(err);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            drop(permit);
            result
        })
    }
}
