//! The gRPC surface: `events.v1.EventService`, a thin adapter over the service layer.
//!
//! Every call carries the caller's [`Principal`], put there by the auth layer; a handler
//! hands it and the request to [`crate::service`] (scope, validation, mode, the store or the
//! fan-out), and turns the answer into the response, or the error into a status through the
//! one classification (`error.rs`). A publish is handed to the store's writer, which finishes
//! it even if the client hangs up. Every answer is counted in
//! `eventsd_requests_total{transport="grpc"}`; the auth layer and the in-flight limit count
//! the calls they refuse before a handler runs.
//! [`webhooks`] is the `events.v1.WebhookService` surface (outbound webhooks).

pub(crate) mod webhooks;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::error::Error;
use crate::event::EventLimits;
use crate::fanout::{Fanout, SubscribeEventsStream};
use crate::metrics::Metrics;
use crate::proto::event_service_server::EventService;
use crate::proto::wire::{self, ListEventsResponse, PublishEventsResponse};
use crate::proto::{GetEventRequest, ListEventsRequest, SubscribeEventsRequest, WireEvent};
use crate::service::list::{Listing, PageTokens};
use crate::service::{self, IdIn, Publish};
use crate::store::{EventStore, StoredEvent};

/// The EventService implementation: a few cheap-to-clone handles.
#[derive(Clone)]
pub struct EventsApi {
    store: Arc<dyn EventStore>,
    limits: EventLimits,
    fanout: Fanout,
    metrics: Metrics,
    tokens: PageTokens,
}

impl EventsApi {
    /// Builds the service.
    pub fn new(
        store: Arc<dyn EventStore>,
        limits: EventLimits,
        fanout: Fanout,
        metrics: Metrics,
        tokens: PageTokens,
    ) -> Self {
        EventsApi { store, limits, fanout, metrics, tokens }
    }

    /// PublishEvent and PublishEvents over the service layer; every answer is counted,
    /// refusals also as ingest rejections.
    async fn publish<T>(
        &self,
        request: Request<T>,
        publish: impl FnOnce(T) -> Publish,
    ) -> Result<Vec<StoredEvent>, Error> {
        let result = async {
            let caller = principal(&request)?;
            let publish = publish(request.into_inner());
            service::publish(&*self.store, &self.limits, &caller, publish).await
        }
        .await
        .map(|stored| stored.into_iter().map(|a| a.event).collect());
        if let Err(err) = &result {
            self.metrics.rejected("grpc", err.code_name());
        }
        self.metrics.count(TRANSPORT, "publish", result)
    }

    async fn get(&self, request: Request<GetEventRequest>) -> Result<StoredEvent, Error> {
        let caller = principal(&request)?;
        let GetEventRequest { id, livemode } = request.into_inner();
        service::get_event(&*self.store, &caller, &id, livemode, IdIn::Field).await
    }

    async fn list(&self, request: Request<ListEventsRequest>) -> Result<Listing, Error> {
        let caller = principal(&request)?;
        service::list_events(&*self.store, &self.tokens, &caller, request.into_inner()).await
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeEventsRequest>,
    ) -> Result<SubscribeEventsStream, Error> {
        let caller = principal(&request)?;
        service::subscribe(&self.fanout, &caller, request.into_inner()).await
    }
}

/// The `transport` label of every gRPC request.
const TRANSPORT: &str = "grpc";

/// The caller of a request, put there by [`crate::auth::layer::AuthLayer`]; a request that
/// did not pass it has none (fail closed).
pub(crate) fn principal<T>(request: &Request<T>) -> Result<Principal, Error> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("the request carries no credentials".into()))
}

#[tonic::async_trait]
impl EventService for EventsApi {
    async fn publish_event(
        &self,
        request: Request<wire::PublishEventRequest>,
    ) -> Result<Response<WireEvent>, Status> {
        let mut stored = self.publish(request, Publish::One).await?;
        let appended =
            stored.pop().ok_or_else(|| Error::Internal("the store returned no event".into()))?;
        Ok(Response::new(WireEvent::from(&appended)))
    }

    async fn publish_events(
        &self,
        request: Request<wire::PublishEventsRequest>,
    ) -> Result<Response<PublishEventsResponse>, Status> {
        let stored = self.publish(request, |r| Publish::Batch(r.events)).await?;
        let events = stored.iter().map(WireEvent::from).collect();
        Ok(Response::new(PublishEventsResponse { events }))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<WireEvent>, Status> {
        let event = self.metrics.count(TRANSPORT, "get", self.get(request).await)?;
        Ok(Response::new(WireEvent::from(&event)))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let page = self.metrics.count(TRANSPORT, "list", self.list(request).await)?;
        Ok(Response::new(page.into_wire()))
    }

    type SubscribeEventsStream = SubscribeEventsStream;

    async fn subscribe_events(
        &self,
        request: Request<SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let stream = self.metrics.count(TRANSPORT, "subscribe", self.subscribe(request).await)?;
        Ok(Response::new(stream))
    }
}
