//! GetEvent's lookup, for every transport: which mode's event an id names.
//!
//! Test and live are separate namespaces, so an id may name one event in each. A caller
//! chooses with `livemode`; without it a one-mode key looks in its own mode, and a key that
//! sees both looks for the live event first, then the test one. An event the caller's mode
//! cannot see does not exist for it (NOT_FOUND, the same answer as for an id never stored),
//! while explicitly asking for the other mode is PERMISSION_DENIED naming `livemode`, as it
//! is for lists and subscriptions.

use crate::auth::Principal;
use crate::error::Error;
use crate::event::Filter;
use crate::store::{EventStore, StoredEvent};

/// The modes to look in, in order.
fn modes(caller: &Principal, livemode: Option<bool>) -> Result<Vec<bool>, Error> {
    let mut filter = Filter::new(&[], livemode)?;
    caller.restrict(&mut filter)?;
    Ok(match filter.livemode {
        Some(mode) => vec![mode],
        None => vec![true, false],
    })
}

/// The durable event with this id in the first of the caller's modes that has one.
pub async fn find_event(
    store: &dyn EventStore,
    caller: &Principal,
    id: &str,
    livemode: Option<bool>,
) -> Result<StoredEvent, Error> {
    for mode in modes(caller, livemode)? {
        if let Some(event) = store.get(mode, id).await? {
            return Ok(event);
        }
    }
    Err(Error::NotFound { id: id.to_string() })
}
