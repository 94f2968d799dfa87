//! The gRPC surface: `events.v1.EventService` on top of the store and the fan-out.
//!
//! Handlers are straight-line: validate the request into domain types (the `event` module and
//! [`list::PageRequest`]), call the store, map errors to a status in one place (`error.rs`).
//! A publish is handed to the store's writer, which finishes it even if the client hangs up.
//! Every call carries the caller's [`Principal`], put there by [`Authenticate`]; handlers
//! check its scope and narrow reads to its mode.

pub mod list;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::auth::{KeyRing, Principal, Scope};
use crate::error::Error;
use crate::event::{time, EventLimits, Filter, NewEvent};
use crate::fanout::{self, Start, SubscribeEventsStream, SubscriptionConfig};
use crate::proto::event_service_server::EventService;
use crate::proto::subscribe_events_request::Start as StartProto;
use crate::proto::{
    Event, GetEventRequest, ListEventsRequest, ListEventsResponse, PublishEventRequest,
    PublishEventsRequest, PublishEventsResponse, SubscribeEventsRequest,
};
use crate::store::EventStore;

/// The EventService implementation: a few cheap-to-clone handles.
#[derive(Clone)]
pub struct EventsApi {
    store: Arc<dyn EventStore>,
    limits: EventLimits,
    subscriptions: SubscriptionConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl EventsApi {
    /// Builds the service. Subscription tasks are spawned on `tasks` and end on `shutdown`.
    pub fn new(
        store: Arc<dyn EventStore>,
        limits: EventLimits,
        subscriptions: SubscriptionConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        EventsApi { store, limits, subscriptions, shutdown, tasks }
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
    ) -> Result<Response<Event>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Publish)?;
        let event = NewEvent::from_request(request.into_inner(), &self.limits, "")?;
        caller.require_mode(event.livemode, "livemode")?;
        let mut stored = self.store.append(vec![event]).await?;
        let appended =
            stored.pop().ok_or_else(|| Status::internal("the store returned no event"))?;
        Ok(Response::new(appended.event))
    }

    async fn publish_events(
        &self,
        request: Request<PublishEventsRequest>,
    ) -> Result<Response<PublishEventsResponse>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Publish)?;
        let events = NewEvent::batch_from_requests(request.into_inner().events, &self.limits)?;
        for (i, event) in events.iter().enumerate() {
            caller.require_mode(event.livemode, &format!("events[{i}].livemode"))?;
        }
        let stored = self.store.append(events).await?;
        let events = stored.into_iter().map(|a| a.event).collect();
        Ok(Response::new(PublishEventsResponse { events }))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<Event>, Status> {
        let caller = principal(&request)?;
        caller.require(Scope::Read)?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        crate::event::id::validate(&id).map_err(|r| Error::invalid("id", r))?;
        // An event of the other mode does not exist as far as this caller can tell.
        let Some(event) = self.store.get(&id).await?.filter(|e| caller.allows(e.livemode)) else {
            return Err(Error::NotFound { id }.into());
        };
        Ok(Response::new(event))
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
        Ok(Response::new(page_request.respond(page)))
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
        let stream = fanout::spawn(
            self.store.clone(),
            start,
            filter,
            self.subscriptions,
            self.shutdown.clone(),
            &self.tasks,
        )
        .await?;
        Ok(Response::new(stream))
    }
}
