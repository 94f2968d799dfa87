//! The stored form of an event: its `events.v1.Event` encoding, made once at publish, plus the
//! few fields readers route on, decoded once.
//!
//! What it promises:
//! - **One encoding**: [`StoredEvent::bytes`] are the bytes the store holds; GetEvent, list
//!   pages and every subscriber send these, never a re-encoding.
//! - **Cheap to share**: a clone is one reference count, so the recent-events cache, a list
//!   page and a thousand subscribers hold one copy of each event between them.
//! - **Routing without `data`**: type, mode, times and sequence are decoded once from the
//!   bytes, skipping `data` (the bulk of an event), so filters and indexes never pay for it.
//!   [`StoredEvent::decode`] gives the whole message to the few paths that need `data` as a
//!   `Struct` (idempotency comparison, the CLI).

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use prost_types::Timestamp;

use crate::error::Error;
use crate::proto::Event;

/// One stored event: its `events.v1.Event` encoding, written once at publish, and the few
/// fields readers route on, decoded once. Cheap to clone (one Arc): GetEvent, list pages and
/// every subscriber share the same bytes.
#[derive(Clone)]
pub struct StoredEvent(Arc<Inner>);

struct Inner {
    bytes: Bytes,
    routing: Routing,
}

/// The routing fields of `events.v1.Event`, under the same field numbers. prost skips the
/// fields this message does not declare (`data`, `api_version`, `location`), so decoding it
/// reads past `data` without building a `Struct`.
#[derive(Clone, PartialEq, prost::Message)]
struct Routing {
    /// `Event.id`.
    #[prost(string, tag = "1")]
    id: String,
    /// `Event.type`.
    #[prost(string, tag = "2")]
    r#type: String,
    /// `Event.created`.
    #[prost(message, optional, tag = "3")]
    created: Option<Timestamp>,
    /// `Event.received`.
    #[prost(message, optional, tag = "4")]
    received: Option<Timestamp>,
    /// `Event.livemode`.
    #[prost(bool, tag = "5")]
    livemode: bool,
    /// `Event.sequence`.
    #[prost(uint64, tag = "9")]
    sequence: u64,
    /// `Event.source`.
    #[prost(string, tag = "10")]
    source: String,
}

/// The field number of `Event.sequence`, for [`StoredEvent::from_unsequenced`].
const SEQUENCE_FIELD: u32 = 9;

impl StoredEvent {
    /// From an encoded `Event` (as read from the store); decodes only the routing fields.
    /// Bytes that do not decode are [`Error::Corrupt`].
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let routing = Routing::decode(bytes.clone())
            .map_err(|e| Error::Corrupt(format!("a stored event does not decode: {e}")))?;
        Ok(StoredEvent(Arc::new(Inner { bytes, routing })))
    }

    /// Encodes an event once.
    pub fn from_event(event: &Event) -> Self {
        let routing = Routing {
            id: event.id.clone(),
            r#type: event.r#type.clone(),
            created: event.created,
            received: event.received,
            livemode: event.livemode,
            sequence: event.sequence,
            source: event.source.clone(),
        };
        StoredEvent(Arc::new(Inner { bytes: Bytes::from(event.encode_to_vec()), routing }))
    }

    /// From an event encoded without its sequence (sequence 0, so the field is absent), as a
    /// replicated stream stores it before the stream assigns the sequence: the sequence field
    /// is appended. Protobuf reads a repeated scalar field as its last value, so the result is
    /// the encoding of the event with that sequence, and every reader of the stream derives
    /// the same bytes from the same message.
    pub fn from_unsequenced(payload: &[u8], sequence: u64) -> Result<Self, Error> {
        let mut bytes = Vec::with_capacity(payload.len() + 11);
        bytes.extend_from_slice(payload);
        prost::encoding::uint64::encode(SEQUENCE_FIELD, &sequence, &mut bytes);
        Self::from_bytes(Bytes::from(bytes))
    }

    /// The stored encoding of the `events.v1.Event`.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// The store's position of the event.
    pub fn sequence(&self) -> u64 {
        self.0.routing.sequence
    }

    /// The event id (unique per mode).
    pub fn id(&self) -> &str {
        &self.0.routing.id
    }

    /// The event type, such as `charge.create`.
    pub fn event_type(&self) -> &str {
        &self.0.routing.r#type
    }

    /// The producer name (empty if not given).
    pub fn source(&self) -> &str {
        &self.0.routing.source
    }

    /// Live (true) or test (false).
    pub fn livemode(&self) -> bool {
        self.0.routing.livemode
    }

    /// When the event happened: `created`, which the store sets to `received` when the
    /// publisher gave none.
    pub fn created(&self) -> Timestamp {
        self.0.routing.created.or(self.0.routing.received).unwrap_or_default()
    }

    /// When eventsd stored the event.
    pub fn received(&self) -> Timestamp {
        self.0.routing.received.unwrap_or_default()
    }

    /// The whole event, decoded (idempotency comparison, the CLI).
    pub fn decode(&self) -> Result<Event, Error> {
        Event::decode(self.0.bytes.clone()).map_err(|e| {
            Error::Corrupt(format!("stored event {} does not decode: {e}", self.sequence()))
        })
    }
}

impl std::fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEvent")
            .field("sequence", &self.sequence())
            .field("id", &self.id())
            .field("livemode", &self.livemode())
            .field("type", &self.event_type())
            .field("bytes", &self.0.bytes.len())
            .finish()
    }
}

/// Two stored events are equal when their stored bytes are.
impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes == other.0.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::json::object_to_struct;

    fn sample(sequence: u64) -> Event {
        let data = serde_json::json!({"object": "charge", "amount": 100});
        Event {
            id: "evnt_test_1".into(),
            r#type: "charge.create".into(),
            created: Some(Timestamp { seconds: 1_486_129_974, nanos: 0 }),
            received: Some(Timestamp { seconds: 1_486_129_975, nanos: 5 }),
            livemode: true,
            data: Some(object_to_struct(data.as_object().unwrap()).unwrap()),
            api_version: "2019-05-29".into(),
            location: "/events/evnt_test_1".into(),
            sequence,
            source: "omise".into(),
        }
    }

    #[test]
    fn routing_fields_come_from_the_bytes_and_decode_gives_the_whole_event() {
        let event = sample(42);
        let stored = StoredEvent::from_bytes(Bytes::from(event.encode_to_vec())).unwrap();
        assert_eq!(stored, StoredEvent::from_event(&event));
        assert_eq!(stored.sequence(), 42);
        assert_eq!(stored.id(), "evnt_test_1");
        assert_eq!(stored.event_type(), "charge.create");
        assert_eq!(stored.source(), "omise");
        assert!(stored.livemode());
        assert_eq!(stored.created(), event.created.unwrap());
        assert_eq!(stored.received(), event.received.unwrap());
        assert_eq!(stored.decode().unwrap(), event);
    }

    #[test]
    fn an_unsequenced_encoding_gets_its_sequence_appended() {
        let stored = StoredEvent::from_unsequenced(&sample(0).encode_to_vec(), 7).unwrap();
        assert_eq!(stored.sequence(), 7);
        assert_eq!(stored.decode().unwrap(), sample(7));
    }

    #[test]
    fn bytes_that_are_not_an_event_are_corrupt() {
        let err = StoredEvent::from_bytes(Bytes::from_static(&[0x0a, 0xff])).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }
}
