//! The gRPC surface: `events.v1.EventService` on top of the store and the fan-out.
//!
//! Handlers are straight-line: validate the request into domain types (the `event` module and
//! [`list::PageRequest`]), call the store, map errors to a status in one place (`error.rs`).
//! A publish is handed to the store's writer, which finishes it even if the client hangs up.
//! Every call carries the caller's [`Principal`], put there by [`Authenticate`]; handlers
//! check its scope and narrow reads to its mode.

pub mod list;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::{KeyRing, Principal, Scope};
use crate::error::Error;
use crate::event::{time, EventLimits, Filter, NewEvent};
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
}

impl EventsApi {
    /// Builds the service.
    pub fn new(
        store: Arc<dyn EventStore>,
        limits: EventLimits,
        fanout: Fanout,
        metrics: Metrics,
    ) -> Self {
        EventsApi { store, limits, fanout, metrics }
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

/// The interceptor that authenticates every EventService call from its `authorization`
/// metadata and attaches the [`Principal`] to the request.
#[derive(Clone)]
pub struct Authenticate(pub KeyRing);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let principal = self.0.authenticate(header)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The durable event with this id that the caller may see. `livemode` names the mode to look
/// in; without it the live event is returned, or the test one when there is no live event
/// with that id. Modes the caller's key cannot read are never looked in.
pub async fn find_event(
    store: &dyn EventStore,
    caller: &Principal,
    id: &str,
    livemode: Option<bool>,
) -> Result<Option<StoredEvent>, Error> {
    let modes = match livemode {
        Some(mode) => vec![mode],
        None => vec![true, false],
    };
    for mode in modes.into_iter().filter(|&m| caller.allows(m)) {
        if let Some(event) = store.get(mode, id).await? {
            return Ok(Some(event));
        }
    }
    Ok(None)
}

/// The caller of a request; a request that did not pass [`Authenticate`] has none (fail closed).
fn principal<T>(request: &Request<T>) -> Result<Principal, Error> {
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
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        crate::event::id::validate(&id).map_err(|r| Error::invalid("id", r))?;
        // An event of the other mode does not exist as far as this caller can tell.
        let Some(event) = find_event(self.store.as_ref(), &caller, &id, None).await? else {
            return Err(Error::NotFound { id }.into());
        };
        Ok(Response::new(WireEvent::from(&event)))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Read)?;
        let mut page_request = list::PageRequest::new(request.into_inner(), time::now())?;
        page_request.restrict_to(&caller)?;
        let page = self.store.list(page_request.query.clone()).await?;
        Ok(Response::new(page_request.respond(page).into_wire()))
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
        let stream = self.fanout.subscribe(start, filter, cloudevents).await?;
        Ok(Response::new(stream))
    }
}
