//! The service layer: what an event API call does for an authenticated caller, whatever the
//! transport. gRPC (`api`), the HTTP views (`views`) and CloudEvents are adapters over it: they
//! authenticate the caller and turn their request into these arguments, and the service checks
//! the scope, validates, narrows to the caller's mode and reads the store, so the same input
//! gets the same answer on every transport.
//!
//! Reads (GetEvent, ListEvents and their HTTP views) live here today: [`get`] for which mode's
//! event an id names, [`list`] for ListEvents' defaults, paging and page tokens. Publish and
//! subscribe still run in their transports.
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
use crate::event::id;
use crate::store::{EventStore, StoredEvent};
use list::{Listing, PageTokens};

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
