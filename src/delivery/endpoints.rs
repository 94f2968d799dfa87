//! The operations of `WebhookService`, for every transport: gRPC (`api::webhooks`) and the
//! HTTP routes (`views::endpoints`) are thin adapters over [`Webhooks`].
//!
//! Owns validation at the boundary (every field checked, errors naming it), the `admin`
//! scope, the creator's mode (an endpoint never receives events its creator's key could not
//! read), secret generation and rotation, and the delivery log's listing. It promises that a
//! refused request changes nothing, that a secret leaves eventsd only in the answers of
//! CreateEndpoint and RotateEndpointSecret, and that every write after creation goes through
//! the endpoint's worker ([`dispatch`]) so none overwrites another.

use std::time::Duration;

use base64::Engine;
use prost_types::FieldMask;

use crate::auth::{Mode, Principal, Scope};
use crate::delivery::dispatch::{self, delivery_id, Dispatcher};
use crate::delivery::state::{EndpointRecord, SecretRecord, ENDPOINT_ID_LEN};
use crate::delivery::target;
use crate::error::Error;
use crate::event::time;
use crate::ingest::webhook::signature::{self, Provider};
use crate::proto::replay_endpoint_request::Start;
use crate::proto::{
    CreateEndpointRequest, Delivery, DeliveryStatus, Endpoint, EndpointFormat,
    ListDeliveriesRequest, ListDeliveriesResponse, ReplayEndpointRequest, UpdateEndpointRequest,
};

/// `max_in_flight` when a create leaves it 0.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;

/// The most `max_in_flight` an endpoint may ask for.
pub const MAX_MAX_IN_FLIGHT: u32 = 1_000;

/// The longest `description`, in characters.
pub const MAX_DESCRIPTION: usize = 1_000;

/// `ListDeliveries` page size when `limit` is 0, and the most it may be.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// Most log events one `ListDeliveries` page reads looking for untried matches.
const MAX_UNTRIED_SCAN: usize = 10_000;

/// The fields `UpdateEndpoint` may change.
const UPDATABLE: &[&str] =
    &["url", "types", "livemode", "description", "disabled", "max_in_flight", "format"];

/// The webhook operations; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    dispatcher: Dispatcher,
    rotation_overlap: Duration,
}

/// Checks an endpoint id's shape; `field` names where it came from.
pub fn check_endpoint_id(field: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let valid = id.len() == ENDPOINT_ID_LEN
        && id.starts_with("ep_")
        && id[3..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(Error::invalid(
            field,
            "must be `ep_` followed by 20 lowercase letters or digits",
        ));
    }
    Ok(())
}

/// Splits a delivery id into its endpoint id and sequence; `field` names where it came from.
pub fn parse_delivery_id(field: &str, id: &str) -> Result<(String, u64), Error> {
    let bad = || Error::invalid(field, "must be `dlv_<endpoint id suffix>_<sequence>`");
    let rest = id.strip_prefix("dlv_").ok_or_else(bad)?;
    let (suffix, text) = rest.split_once('_').ok_or_else(bad)?;
    let endpoint = format!("ep_{suffix}");
    check_endpoint_id(field, &endpoint).map_err(|_| bad())?;
    let sequence: u64 = text.parse().map_err(|_| bad())?;
    // One spelling per delivery: no zero, no leading zeros, no sign.
    if sequence == 0 || sequence.to_string() != text {
        return Err(bad());
    }
    Ok((endpoint, sequence))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("the system has no randomness: {e}")))?;
    Ok(bytes)
}

/// A new endpoint id: `ep_` and 20 random lowercase base32 characters (100 bits).
fn new_endpoint_id() -> Result<String, Error> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bytes = random_bytes::<20>()?;
    let suffix: String = bytes.iter().map(|b| ALPHABET[(b & 31) as usize] as char).collect();
    Ok(format!("ep_{suffix}"))
}

/// A new signing secret: `whsec_` and base64 of 32 random bytes.
fn new_secret() -> Result<String, Error> {
    let bytes = random_bytes::<32>()?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// The given secret checked, or a new one when it is empty.
fn secret_or_new(field: &str, secret: &str) -> Result<String, Error> {
    if secret.is_empty() {
        return new_secret();
    }
    let body = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| Error::invalid(field, "must start with `whsec_`"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Error::invalid(field, "must be `whsec_` followed by base64"))?;
    if !(24..=64).contains(&decoded.len()) {
        return Err(Error::invalid(
            field,
            format!("must decode to 24 to 64 bytes (got {})", decoded.len()),
        ));
    }
    signature::validate_secret(Provider::StandardWebhooks, secret)
        .map_err(|e| Error::invalid(field, e.to_string()))?;
    Ok(secret.to_owned())
}

fn check_format(format: i32) -> Result<i32, Error> {
    match EndpointFormat::try_from(format) {
        Ok(EndpointFormat::Unspecified) => Ok(EndpointFormat::EventJson as i32),
        Ok(known) => Ok(known as i32),
        Err(_) => Err(Error::invalid("format", format!("unknown value {format}"))),
    }
}

fn check_max_in_flight(field: &str, value: u32) -> Result<u32, Error> {
    match value {
        0 => Ok(DEFAULT_MAX_IN_FLIGHT),
        1..=MAX_MAX_IN_FLIGHT => Ok(value),
        _ => Err(Error::invalid(field, format!("must be 1 to {MAX_MAX_IN_FLIGHT}"))),
    }
}

fn check_description(field: &str, text: &str) -> Result<(), Error> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(Error::invalid(field, format!("is longer than {MAX_DESCRIPTION} characters")));
    }
    Ok(())
}

fn mode_name(mode: Mode) -> String {
    mode.as_str().to_owned()
}

/// The endpoint as answers show it: without its secret, unless `with_secret`.
fn public(record: &EndpointRecord, with_secret: bool) -> Endpoint {
    let mut endpoint = record.endpoint().clone();
    endpoint.secret = if with_secret {
        record.secrets.first().map(|s| s.secret.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    endpoint
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Webhooks {
    /// The operations over a running dispatcher.
    pub fn new(dispatcher: Dispatcher, rotation_overlap: Duration) -> Self {
        Webhooks { dispatcher, rotation_overlap }
    }

    /// Flushes the delivery state (shutdown).
    pub async fn flush(&self) -> Result<(), Error> {
        self.dispatcher.settings().state.flush().await
    }

    async fn record(&self, field: &str, id: &str) -> Result<EndpointRecord, Error> {
        check_endpoint_id(field, id)?;
        match self.dispatcher.settings().state.endpoint(id).await? {
            Some(record) if !record.deleted => Ok(record),
            _ => Err(Error::NoSuch { kind: "endpoint", id: id.to_owned() }),
        }
    }

    /// CreateEndpoint.
    pub async fn create(
        &self,
        caller: &Principal,
        request: CreateEndpointRequest,
    ) -> Result<Endpoint, Error> {
        caller.require(Scope::Admin)?;
        let rules = self.dispatcher.settings().sender.rules();
        let url = target::validate_url(&request.url, rules)?;
        check_description("description", &request.description)?;
        let endpoint = Endpoint {
            id: new_endpoint_id()?,
            url: url.to_string(),
            types: request.types,
            livemode: request.livemode,
            description: request.description,
            disabled: false,
            created: Some(time::now()),
            max_in_flight: check_max_in_flight("max_in_flight", request.max_in_flight)?,
            format: check_format(request.format)?,
            secret: String::new(),
        };
        let record = EndpointRecord {
            endpoint: Some(endpoint),
            secrets: vec![SecretRecord {
                secret: secret_or_new("secret", &request.secret)?,
                expires_ms: 0,
            }],
            creator_mode: mode_name(caller.mode),
            failing_since_ms: 0,
            deleted: false,
        };
        let mut filter = dispatch::endpoint_filter(&record)?;
        caller.restrict(&mut filter)?;
        // Only events committed from now on: the cursor starts at the newest durable one.
        let state = &self.dispatcher.settings().state;
        let newest = self.dispatcher.settings().store.newest().await?;
        state.set_cursor(record.id(), newest).await?;
        state.put_endpoint(&record).await?;
        self.dispatcher.spawn(record.clone())?;
        tracing::info!(
            endpoint = record.id(),
            host = url.host_str().unwrap_or_default(),
            "endpoint created"
        );
        Ok(public(&record, true))
    }

    /// GetEndpoint.
    pub async fn get(&self, caller: &Principal, id: &str) -> Result<Endpoint, Error> {
        caller.require(Scope::Admin)?;
        Ok(public(&self.record("id", id).await?, false))
    }

    /// ListEndpoints: every endpoint, oldest first.
    pub async fn list(&self, caller: &Principal) -> Result<Vec<Endpoint>, Error> {
        caller.require(Scope::Admin)?;
        let mut endpoints: Vec<Endpoint> = self
            .dispatcher
            .settings()
            .state
            .endpoints()
            .await?
            .iter()
            .filter(|r| !r.deleted)
            .map(|r| public(r, false))
            .collect();
        endpoints.sort_by(|a, b| {
            let key = |e: &Endpoint| e.created.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(endpoints)
    }

    /// UpdateEndpoint: the fields the mask names (all of them when it is empty).
    pub async fn update(
        &self,
        caller: &Principal,
        request: UpdateEndpointRequest,
    ) -> Result<Endpoint, Error> {
        caller.require(Scope::Admin)?;
        let given = request.endpoint.ok_or_else(|| Error::invalid("endpoint", "is required"))?;
        let mut record = self.record("endpoint.id", &given.id).await?;
        let paths = match request.update_mask {
            Some(FieldMask { paths }) if !paths.is_empty() => paths,
            _ => UPDATABLE.iter().map(|p| (*p).to_owned()).collect(),
        };
        let rules = self.dispatcher.settings().sender.rules();
        let Some(endpoint) = record.endpoint.as_mut() else {
            return Err(Error::Corrupt("endpoint record without fields".into()));
        };
        for path in &paths {
            match path.as_str() {
                "url" => {
                    endpoint.url = target::validate_url(&given.url, rules)
                        .map_err(|e| rename(e, "endpoint.url"))?
                        .to_string()
                }
                "types" => endpoint.types = given.types.clone(),
                "livemode" => endpoint.livemode = given.livemode,
                "description" => {
                    check_description("endpoint.description", &given.description)?;
                    endpoint.description = given.description.clone();
                }
                "disabled" => endpoint.disabled = given.disabled,
                "max_in_flight" => {
                    endpoint.max_in_flight =
                        check_max_in_flight("endpoint.max_in_flight", given.max_in_flight)?
                }
                "format" => {
                    endpoint.format =
                        check_format(given.format).map_err(|e| rename(e, "endpoint.format"))?
                }
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "{other:?} cannot be updated (updatable: {})",
                            UPDATABLE.join(", ")
                        ),
                    ))
                }
            }
        }
        let filter = dispatch::endpoint_filter(&record).map_err(|e| match e {
            Error::InvalidArgument { field, reason } => {
                Error::InvalidArgument { field: format!("endpoint.{field}"), reason }
            }
            other => other,
        })?;
        let mut narrowed = filter;
        caller.restrict(&mut narrowed)?;
        let stored = self.dispatcher.update(record).await?;
        Ok(public(&stored, false))
    }

    /// DeleteEndpoint.
    pub async fn delete(&self, caller: &Principal, id: &str) -> Result<(), Error> {
        caller.require(Scope::Admin)?;
        self.record("id", id).await?;
        self.dispatcher.delete(id).await?;
        tracing::info!(endpoint = id, "endpoint deleted");
        Ok(())
    }

    /// RotateEndpointSecret: a new current secret; the previous one signs beside it for
    /// `--delivery-rotation-overlap`, older ones stop.
    pub async fn rotate(
        &self,
        caller: &Principal,
        id: &str,
        secret: &str,
    ) -> Result<Endpoint, Error> {
        caller.require(Scope::Admin)?;
        let mut record = self.record("id", id).await?;
        let secret = secret_or_new("secret", secret)?;
        let now = now_ms();
        let expires = now.saturating_add(self.rotation_overlap.as_millis() as i64);
        let mut secrets = vec![SecretRecord { secret, expires_ms: 0 }];
        if let Some(previous) = record.secrets.iter().find(|s| s.expires_ms == 0) {
            secrets.push(SecretRecord { secret: previous.secret.clone(), expires_ms: expires });
        }
        record.secrets = secrets;
        let stored = self.dispatcher.update(record).await?;
        tracing::info!(endpoint = id, "endpoint secret rotated");
        Ok(public(&stored, true))
    }

    /// ReplayEndpoint: moves the cursor back; nothing is written per past event.
    pub async fn replay(
        &self,
        caller: &Principal,
        request: ReplayEndpointRequest,
    ) -> Result<Endpoint, Error> {
        caller.require(Scope::Admin)?;
        let record = self.record("endpoint_id", &request.endpoint_id).await?;
        let store = &self.dispatcher.settings().store;
        let cursor = match request.start {
            None => {
                return Err(Error::invalid("start", "is required: after_sequence or from_created"))
            }
            Some(Start::AfterSequence(after)) => after,
            Some(Start::FromCreated(created)) => {
                time::validate(&created).map_err(|r| Error::invalid("from_created", r))?;
                match store.first_sequence_created_from(created).await? {
                    Some(first) => first - 1,
                    None => store.newest().await?,
                }
            }
        };
        let newest = store.newest().await?;
        if cursor > newest {
            return Err(Error::OutOfRange {
                field: "after_sequence",
                reason: format!("is above the newest sequence {newest}"),
            });
        }
        let cursor = cursor.max(store.first_sequence().saturating_sub(1));
        self.dispatcher.replay(record.id(), cursor).await?;
        tracing::info!(endpoint = record.id(), after_sequence = cursor, "endpoint replay");
        Ok(public(&record, false))
    }

    /// ListDeliveries: recorded deliveries in sequence order, then (for pending or every
    /// status) matching events not yet tried.
    pub async fn list_deliveries(
        &self,
        caller: &Principal,
        request: ListDeliveriesRequest,
    ) -> Result<ListDeliveriesResponse, Error> {
        caller.require(Scope::Admin)?;
        check_endpoint_id("endpoint_id", &request.endpoint_id)?;
        let settings = self.dispatcher.settings();
        let record = settings
            .state
            .endpoint(&request.endpoint_id)
            .await?
            .ok_or_else(|| Error::NoSuch { kind: "endpoint", id: request.endpoint_id.clone() })?;
        let status = match DeliveryStatus::try_from(request.status) {
            Ok(status) => status,
            Err(_) => {
                return Err(Error::invalid("status", format!("unknown value {}", request.status)))
            }
        };
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n if n < 0 || n as usize > MAX_LIMIT => {
                return Err(Error::invalid("limit", format!("must be 1 to {MAX_LIMIT}")))
            }
            n => n as usize,
        };
        let after: u64 = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Error::invalid("page_token", "is not a token this call returned"))?
        };
        let filter = dispatch::endpoint_filter(&record)?;
        if !request.event_id.is_empty() {
            crate::event::id::validate(&request.event_id)
                .map_err(|r| Error::invalid("event_id", r))?;
            return self.delivery_of_event(&record, &filter, &request.event_id, status).await;
        }
        let cursor = self.dispatcher.cursor(record.id()).await?;
        let wanted =
            |d: &Delivery| status == DeliveryStatus::Unspecified || d.status == status as i32;
        let (mut deliveries, more) =
            settings.state.deliveries(record.id(), after, limit, wanted).await?;
        let next = |d: &[Delivery]| d.last().map(|d| d.sequence.to_string()).unwrap_or_default();
        if more {
            let token = next(&deliveries);
            return Ok(ListDeliveriesResponse { deliveries, next_page_token: token });
        }
        let untried = !record.deleted
            && matches!(status, DeliveryStatus::Unspecified | DeliveryStatus::Pending);
        if !untried {
            return Ok(ListDeliveriesResponse { deliveries, next_page_token: String::new() });
        }
        // Events above the cursor: not tried yet, listed as pending without a record.
        let newest = *settings.store.durable().borrow();
        let mut position = after.max(cursor).max(settings.store.first_sequence().saturating_sub(1));
        let mut scanned = 0;
        while position < newest && deliveries.len() < limit && scanned < MAX_UNTRIED_SCAN {
            let events = settings.store.read_from(position, 256).await?;
            if events.is_empty() {
                break;
            }
            for event in events {
                if deliveries.len() == limit {
                    break;
                }
                position = event.sequence();
                scanned += 1;
                if filter.matches(&event) {
                    deliveries.push(untried_delivery(record.id(), &event));
                }
            }
        }
        let token = if position < newest { position.to_string() } else { String::new() };
        Ok(ListDeliveriesResponse { deliveries, next_page_token: token })
    }

    /// The delivery of one event, recorded or not yet tried; none if it does not match.
    async fn delivery_of_event(
        &self,
        record: &EndpointRecord,
        filter: &crate::event::Filter,
        event_id: &str,
        status: DeliveryStatus,
    ) -> Result<ListDeliveriesResponse, Error> {
        let settings = self.dispatcher.settings();
        let mut found = None;
        for livemode in [true, false] {
            if filter.matches_mode(livemode) {
                if let Some(event) = settings.store.get(livemode, event_id).await? {
                    found = Some(event);
                    break;
                }
            }
        }
        let mut deliveries = Vec::new();
        if let Some(event) = found.filter(|e| filter.matches(e)) {
            let recorded = settings.state.delivery(record.id(), event.sequence()).await?;
            let cursor = self.dispatcher.cursor(record.id()).await?;
            let delivery = match recorded {
                Some(delivery) => Some(delivery),
                None if event.sequence() > cursor && !record.deleted => {
                    Some(untried_delivery(record.id(), &event))
                }
                None => None,
            };
            if let Some(delivery) = delivery {
                if status == DeliveryStatus::Unspecified || delivery.status == status as i32 {
                    deliveries.push(delivery);
                }
            }
        }
        Ok(ListDeliveriesResponse { deliveries, next_page_token: String::new() })
    }

    /// RetryDelivery.
    pub async fn retry(&self, caller: &Principal, id: &str) -> Result<Delivery, Error> {
        caller.require(Scope::Admin)?;
        let (endpoint, sequence) = parse_delivery_id("id", id)?;
        let record = self
            .record("id", &endpoint)
            .await
            .map_err(|_| Error::NoSuch { kind: "delivery", id: id.to_owned() })?;
        let cursor = self.dispatcher.cursor(record.id()).await?;
        if sequence > cursor {
            if sequence < self.dispatcher.settings().store.first_sequence() {
                return Err(Error::NoSuch { kind: "delivery", id: id.to_owned() });
            }
            // Not tried yet: it is on its way; say so without writing anything.
            let settings = self.dispatcher.settings();
            let events = settings.store.read_from(sequence - 1, 1).await?;
            let filter = dispatch::endpoint_filter(&record)?;
            return match events.into_iter().next() {
                Some(event) if event.sequence() == sequence && filter.matches(&event) => {
                    Ok(untried_delivery(record.id(), &event))
                }
                _ => Err(Error::NoSuch { kind: "delivery", id: id.to_owned() }),
            };
        }
        self.dispatcher.retry(record.id(), sequence).await
    }
}

/// A matching event above the cursor, shown as a pending delivery with no attempt yet.
fn untried_delivery(endpoint_id: &str, event: &crate::store::StoredEvent) -> Delivery {
    Delivery {
        id: delivery_id(endpoint_id, event.sequence()),
        endpoint_id: endpoint_id.to_owned(),
        event_id: event.id().to_owned(),
        sequence: event.sequence(),
        status: DeliveryStatus::Pending as i32,
        attempts: Vec::new(),
        next_attempt: None,
        error: String::new(),
    }
}

/// The same error, naming the field as the request spells it.
fn rename(error: Error, field: &str) -> Error {
    match error {
        Error::InvalidArgument { reason, .. } => {
            Error::InvalidArgument { field: field.to_owned(), reason }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_are_checked_by_shape() {
        let id = new_endpoint_id().unwrap();
        assert!(check_endpoint_id("id", &id).is_ok(), "{id}");
        for bad in [
            "",
            "ep_",
            "ep_ABCDEFGHIJKLMNOPQRST",
            "xx_aaaaaaaaaaaaaaaaaaaa",
            "ep_aaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(check_endpoint_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn delivery_ids_round_trip_and_refuse_other_shapes() {
        let id = delivery_id("ep_aaaaaaaaaaaaaaaaaaaa", 42);
        assert_eq!(
            parse_delivery_id("id", &id).unwrap(),
            ("ep_aaaaaaaaaaaaaaaaaaaa".to_owned(), 42)
        );
        for bad in [
            "dlv_aaaaaaaaaaaaaaaaaaaa_0",
            "dlv_aaaaaaaaaaaaaaaaaaaa_042",
            "dlv_aaaaaaaaaaaaaaaaaaaa_x",
            "dlv_short_1",
            "ep_aaaaaaaaaaaaaaaaaaaa_1",
        ] {
            assert!(parse_delivery_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_generated_or_checked() {
        let generated = secret_or_new("secret", "").unwrap();
        assert!(generated.starts_with("whsec_"));
        assert_eq!(secret_or_new("secret", &generated).unwrap(), generated);
        for bad in ["plain", "whsec_!!!", "whsec_c2hvcnQ="] {
            let err = secret_or_new("secret", bad).unwrap_err();
            assert!(err.to_string().starts_with("secret:"), "{err}");
        }
    }
}
