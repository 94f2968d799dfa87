//! The gRPC surface: `events.v1.EventService` on top of the store and the fan-out.
//!
//! Handlers are straight-line: validate the request into domain types (the `event` module and
//! [`list::PageRequest`]), call the store, map errors to a status in one place (`error.rs`).
//! A publish is handed to the store's writer, which finishes it even if the client hangs up.
//! Every call carries the caller's [`Principal`], put there by the auth layer; handlers
//! check its scope and narrow reads to its mode.

pub mod get;
pub mod list;
pub mod webhooks;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::{Principal, Scope};
use crate::error::Error;
use crate::event::{EventLimits, Filter, NewEvent};
use crate::fanout::{Fanout, Start, SubscribeEventsStream};
use crate::metrics::Metrics;
use crate::proto::event_service_server::EventService;
use crate::proto::subscribe_events_request::Start as StartProto;
use crate::proto::wire::{ListEventsResponse, PublishEventsResponse};
use crate::proto::Format;
use crate::proto::{
    GetEventRequest, ListEventsRequest, PublishEventRequest, PublishEventsRequest,
    SubscribeEventsRequest, WireEvent,
};
use crate::store::{EventStore, StoredEvent};

/// The EventService implementation: a few cheap-to-clone handles.
#[derive(Clone)]
pub struct EventsApi {
    store: Arc<dyn EventStore>,
    limits: EventLimits,
    fanout: Fanout,
    metrics: Metrics,
    tokens: list::PageTokens,
}

impl EventsApi {
    /// Builds the service.
    pub fn new(
        store: Arc<dyn EventStore>,
        limits: EventLimits,
        fanout: Fanout,
        metrics: Metrics,
        tokens: list::PageTokens,
    ) -> Self {
        EventsApi { store, limits, fanout, metrics, tokens }
    }

    /// PublishEvent and PublishEvents: authorise, validate, append; refusals are counted.
    async fn publish<T>(
        &self,
        request: Request<T>,
        batch: bool,
        entries: impl FnOnce(T) -> Vec<PublishEventRequest>,
    ) -> Result<Vec<StoredEvent>, Status> {
        let result = async {
            let caller = principal(&request)?;
            caller.require(Scope::Publish)?;
            let mut entries = entries(request.into_inner());
            let events = if batch {
                NewEvent::batch_from_requests(entries, &self.limits)?
            } else {
                let entry = entries.pop().unwrap_or_default();
                vec![NewEvent::from_request(entry, &self.limits, "")?]
            };
            for (i, event) in events.iter().enumerate() {
                let field =
                    if batch { format!("events[{i}].livemode") } else { "livemode".to_string() };
                caller.require_mode(event.livemode, &field)?;
            }
            self.store.append(events).await
        }
        .await;
        match result {
            Ok(stored) => Ok(stored.into_iter().map(|a| a.event).collect()),
            Err(err) => {
                self.metrics.rejected("grpc", err.code_name());
                Err(err.into())
            }
        }
    }
}

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
        request: Request<PublishEventRequest>,
    ) -> Result<Response<WireEvent>, Status> {
        let mut stored = self.publish(request, false, |r| vec![r]).await?;
        let appended =
            stored.pop().ok_or_else(|| Status::internal("the store returned no event"))?;
        Ok(Response::new(WireEvent::from(&appended)))
    }

    async fn publish_events(
        &self,
        request: Request<PublishEventsRequest>,
    ) -> Result<Response<PublishEventsResponse>, Status> {
        let stored = self.publish(request, true, |r| r.events).await?;
        let events = stored.iter().map(WireEvent::from).collect();
        Ok(Response::new(PublishEventsResponse { events }))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<WireEvent>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Read)?;
        let GetEventRequest { id, livemode } = request.into_inner();
        if id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        crate::event::id::validate(&id).map_err(|r| Error::invalid("id", r))?;
        let event = get::find_event(&*self.store, &caller, &id, livemode).await?;
        Ok(Response::new(WireEvent::from(&event)))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Read)?;
        let page =
            list::list_page(&*self.store, &self.tokens, &caller, request.into_inner()).await?;
        Ok(Response::new(page.into_wire()))
    }

    type SubscribeEventsStream = SubscribeEventsStream;

    async fn subscribe_events(
        &self,
        request: Request<SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Subscribe)?;
        let req = request.into_inner();
        let mut filter = Filter::new(&req.types, req.livemode)?;
        caller.restrict(&mut filter)?;
        let start = match req.start {
            None | Some(StartProto::FromBeginning(false)) => Start::Now,
            Some(StartProto::FromBeginning(true)) => Start::Beginning,
            Some(StartProto::AfterSequence(seq)) => Start::After(seq),
            Some(StartProto::FromCreated(t)) => Start::Created(t),
        };
        let cloudevents = match Format::try_from(req.format) {
            Ok(Format::Unspecified | Format::Event) => false,
            Ok(Format::Cloudevent) => true,
            Err(_) => {
                return Err(Error::invalid("format", format!("unknown value {}", req.format)).into())
            }
        };
        let stream = self.fanout.subscribe(caller, start, filter, cloudevents).await?;
        Ok(Response::new(stream))
    }
}
