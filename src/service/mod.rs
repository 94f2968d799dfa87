//! The service layer: what an event API call does for an authenticated caller, whatever the
//! transport. gRPC (`api`), the HTTP views (`views`) and CloudEvents are adapters over it: they
//! authenticate the caller and turn their request into these arguments, and the service checks
//! the scope, validates, narrows to the caller's mode and reads the store, so the same input
//! gets the same answer on every transport.
//!
//! Here today: [`publish`] (PublishEvent, PublishEvents, `POST /events`, webhook deliveries),
//! and the reads (GetEvent, ListEvents and their HTTP views): [`get`] for which mode's event an
//! id names, [`list`] for ListEvents' defaults, paging and page tokens; and [`subscribe`],
//! which opens a stream on the fan-out.
//!
//! An id has two readings, as the transports receive it:
//! - in a request field ([`IdIn::Field`]), a malformed id is INVALID_ARGUMENT naming `id`;
//! - in a URL path ([`IdIn::Path`]), no event could have it, so it is NOT_FOUND, the
//!   answer for any path that names nothing.
//!
//! The layer passes the store's stored bytes through untouched.

pub(crate) mod get;
pub mod list;

use crate::auth::{Principal, Scope};
use crate::error::Error;
use crate::event::{id, EventLimits, Filter, NewEvent};
use crate::fanout::{Fanout, Start, SubscribeEventsStream};
use crate::proto::subscribe_events_request::Start as StartProto;
use crate::proto::wire::PublishEventRequest;
use crate::proto::{Format, SubscribeEventsRequest};
use crate::store::{Appended, EventStore, StoredEvent};
use list::{Listing, PageTokens};

/// What a publish carries.
pub(crate) enum Publish {
    /// One event: PublishEvent, `POST /events`, a webhook delivery.
    One(PublishEventRequest),
    /// PublishEvents: all or nothing, fields named `events[i].…`.
    Batch(Vec<PublishEventRequest>),
}

/// Publish: the scope, the event rules, the caller's mode for every event, then the durable
/// append; the answer holds each event as stored and whether this call stored it.
pub(crate) async fn publish(
    store: &dyn EventStore,
    limits: &EventLimits,
    caller: &Principal,
    publish: Publish,
) -> Result<Vec<Appended>, Error> {
    caller.require(Scope::Publish)?;
    let (events, batch) = match publish {
        Publish::One(request) => (vec![NewEvent::from_request(request, limits, "")?], false),
        Publish::Batch(requests) => (NewEvent::batch_from_requests(requests, limits)?, true),
    };
    for (i, event) in events.iter().enumerate() {
        let field = if batch { format!("events[{i}].livemode") } else { "livemode".to_string() };
        caller.require_mode(event.livemode, &field)?;
    }
    store.append(events).await
}

/// SubscribeEvents: the scope, the filter narrowed to the caller's mode, the start position
/// and the format, then a stream from the fan-out (which refuses positions outside the store).
pub(crate) async fn subscribe(
    fanout: &Fanout,
    caller: &Principal,
    request: SubscribeEventsRequest,
) -> Result<SubscribeEventsStream, Error> {
    caller.require(Scope::Subscribe)?;
    let mut filter = Filter::new(&request.types, request.livemode)?;
    caller.restrict(&mut filter)?;
    let start = match request.start {
        None | Some(StartProto::FromBeginning(false)) => Start::Now,
        Some(StartProto::FromBeginning(true)) => Start::Beginning,
        Some(StartProto::AfterSequence(seq)) => Start::After(seq),
        Some(StartProto::FromCreated(t)) => Start::Created(t),
    };
    let cloudevents = match Format::try_from(request.format) {
        Ok(Format::Unspecified | Format::Event) => false,
        Ok(Format::Cloudevent) => true,
        Err(_) => {
            return Err(Error::invalid("format", format!("unknown value {}", request.format)))
        }
    };
    fanout.subscribe(caller.clone(), start, filter, cloudevents).await
}

/// Where a transport found the id it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdIn {
    /// A request field (GetEventRequest.id): a malformed id is INVALID_ARGUMENT naming `id`.
    Field,
    /// A URL path segment: an id eventsd could never have stored is simply not found.
    Path,
}

/// GetEvent: the durable event with this id, in the mode `livemode` asks for (see [`get`]
/// for the default).
pub(crate) async fn get_event(
    store: &dyn EventStore,
    caller: &Principal,
    event_id: &str,
    livemode: Option<bool>,
    id_in: IdIn,
) -> Result<StoredEvent, Error> {
    caller.require(Scope::Read)?;
    let malformed = match event_id {
        "" => Err("is required".to_string()),
        _ => id::validate(event_id),
    };
    match (malformed, id_in) {
        (Ok(()), _) => get::find_event(store, caller, event_id, livemode).await,
        (Err(reason), IdIn::Field) => Err(Error::invalid("id", reason)),
        (Err(_), IdIn::Path) => Err(Error::NotFound { id: event_id.to_string() }),
    }
}

/// ListEvents: one page of the listing, as the caller may see it.
pub(crate) async fn list_events(
    store: &dyn EventStore,
    tokens: &PageTokens,
    caller: &Principal,
    request: crate::proto::ListEventsRequest,
) -> Result<Listing, Error> {
    caller.require(Scope::Read)?;
    list::list_page(store, tokens, caller, request).await
}
