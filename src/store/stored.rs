//! The stored form of an event: its `events.v1.Event` encoding, made once at publish, plus the
//! few fields readers route on, decoded once.
//!
//! What it promises:
//! - **One encoding**: [`StoredEvent::bytes`] are the bytes the store holds; GetEvent, list
//!   pages and every subscriber send these, never a re-encoding.
//! - **Cheap to share**: a clone is one reference count, so the recent-events cache, a list
//!   page and a thousand subscribers hold one copy of each event between them.
//! - **Routing without `data`, and without copies**: type, mode, times, labels and sequence
//!   are read once from the bytes, skipping `data` (the bulk of an event); strings stay in
//!   the bytes (a range each), so reading an event from the log allocates nothing beyond its
//!   one shared handle, and filters and indexes never pay for `data`.
//! - **JSON once**: [`StoredEvent::data_json`] transcodes `data` from the bytes the first time a
//!   JSON reader asks, and every later reader of the event shares that text.
//!   [`StoredEvent::decode`] gives the whole message to the few paths that need `data` as a
//!   `Struct` (an idempotent repeat whose `data` bytes differ, the CLI).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;
use prost_types::Timestamp;

use crate::error::Error;
use crate::event::wire_json::{self, Field};
use crate::event::NewEvent;
use crate::proto::Event;

/// One stored event: its `events.v1.Event` encoding, written once at publish, and the few
/// fields readers route on, decoded once. Cheap to clone (one Arc): GetEvent, list pages and
/// every subscriber share the same bytes.
#[derive(Clone)]
pub struct StoredEvent(Arc<Inner>);

struct Inner {
    bytes: Bytes,
    routing: Routing,
    /// The JSON text of `data`, transcoded from `bytes` by the first reader that asks and
    /// shared by every later one (`None`: the event has no data).
    data_json: OnceLock<Result<Option<Bytes>, String>>,
}

impl Inner {
    fn new(bytes: Bytes, routing: Routing) -> Arc<Self> {
        Arc::new(Inner { bytes, routing, data_json: OnceLock::new() })
    }
}

/// Every field of `events.v1.Event` but `data`, read from the bytes in one pass with no
/// allocation: strings are ranges of the bytes (checked to be UTF-8 once, here), the rest
/// values. Like a protobuf decoder it skips unknown fields (groups too), keeps the last of a
/// repeated scalar, merges a repeated message, and refuses what a decoder refuses (a known
/// field of the wrong wire type, a string that is not UTF-8, a truncated field).
#[derive(Debug, Clone, Default, PartialEq)]
struct Routing {
    id: Span,
    r#type: Span,
    created: Option<Timestamp>,
    received: Option<Timestamp>,
    livemode: bool,
    api_version: Span,
    location: Span,
    sequence: u64,
    source: Span,
}

/// Where a string field lies in the event's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Span {
    start: u32,
    len: u32,
}

impl Routing {
    fn parse(bytes: &[u8]) -> Result<Routing, String> {
        let mut routing = Routing::default();
        let base = bytes.as_ptr() as usize;
        for field in wire_json::fields(bytes) {
            let (tag, field) = field.map_err(|e| e.to_string())?;
            match (tag, field) {
                (1 | 2 | 7 | 8 | 10, Field::Bytes(text)) => {
                    std::str::from_utf8(text).map_err(|_| format!("field {tag} is not UTF-8"))?;
                    let span = Span {
                        start: (text.as_ptr() as usize - base) as u32,
                        len: text.len() as u32,
                    };
                    match tag {
                        1 => routing.id = span,
                        2 => routing.r#type = span,
                        7 => routing.api_version = span,
                        8 => routing.location = span,
                        _ => routing.source = span,
                    }
                }
                (3 | 4, Field::Bytes(message)) => {
                    // A message field given twice is merged, as a decoder merges it.
                    let time = if tag == 3 { &mut routing.created } else { &mut routing.received };
                    time.get_or_insert_with(Timestamp::default)
                        .merge(message)
                        .map_err(|e| e.to_string())?;
                }
                (5, Field::Varint(flag)) => routing.livemode = flag != 0,
                (9, Field::Varint(sequence)) => routing.sequence = sequence,
                (6, Field::Bytes(_)) => {}
                (1..=10, _) => return Err(format!("field {tag} has the wrong wire type")),
                _ => {}
            }
        }
        Ok(routing)
    }
}

/// The field number of `Event.sequence`, for [`StoredEvent::from_unsequenced`].
const SEQUENCE_FIELD: u32 = 9;

impl StoredEvent {
    /// From an encoded `Event` (as read from the store); decodes only the routing fields.
    /// Bytes that do not decode are [`Error::Corrupt`].
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let routing = Routing::parse(&bytes)
            .map_err(|e| Error::Corrupt(format!("a stored event does not decode: {e}")))?;
        Ok(StoredEvent(Inner::new(bytes, routing)))
    }

    /// Encodes an event (tests build events this way).
    #[cfg(test)]
    pub fn from_event(event: &Event) -> Self {
        Self::from_bytes(Bytes::from(event.encode_to_vec())).expect("an encoded Event parses")
    }

    /// Encodes a new event once ([`NewEvent::encode`]), with the id and the sequence the
    /// committer assigned.
    pub fn from_new(
        new: &NewEvent,
        id: &str,
        sequence: u64,
        received: Timestamp,
    ) -> Result<Self, Error> {
        Self::from_bytes(Bytes::from(new.encode(id, sequence, received)))
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

    /// A string field of the event.
    fn text(&self, span: Span) -> &str {
        let bytes = &self.0.bytes[span.start as usize..][..span.len as usize];
        // SAFETY: `Routing::parse` checked that every span it records is UTF-8, and the
        // bytes never change after it.
        unsafe { std::str::from_utf8_unchecked(bytes) }
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
        self.text(self.0.routing.id)
    }

    /// The event type, such as `charge.create`.
    pub fn event_type(&self) -> &str {
        self.text(self.0.routing.r#type)
    }

    /// The producer name (empty if not given).
    pub fn source(&self) -> &str {
        self.text(self.0.routing.source)
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

    /// Schema version of `data` (empty if not given).
    pub fn api_version(&self) -> &str {
        self.text(self.0.routing.api_version)
    }

    /// The event's path on the HTTP listener.
    pub fn location(&self) -> &str {
        self.text(self.0.routing.location)
    }

    /// The encoded `data` Struct as stored, or `None` when the event has no `data` field or
    /// (never written by eventsd) has it more than once.
    pub fn data_bytes(&self) -> Result<Option<&[u8]>, Error> {
        wire_json::data_field(&self.0.bytes)
    }

    /// The JSON text of `data` (`None` if the event has none), transcoded from the stored
    /// bytes once and shared by every reader of this event.
    pub fn data_json(&self) -> Result<Option<&Bytes>, Error> {
        let cached = self.0.data_json.get_or_init(|| {
            wire_json::data_json(&self.0.bytes)
                .map(|json| json.map(Bytes::from))
                .map_err(|e| e.to_string())
        });
        match cached {
            Ok(json) => Ok(json.as_ref()),
            Err(why) => Err(Error::Corrupt(format!("event {}: {why}", self.sequence()))),
        }
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
    use prost_types::Struct;

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
        // Truncated; an id that is not UTF-8; livemode as a string; sequence as a string.
        let bad: [&[u8]; 4] = [&[0x0a, 0xff], &[0x0a, 1, 0xff], &[0x2a, 1, b'x'], &[0x4a, 0]];
        for bytes in bad {
            let err = StoredEvent::from_bytes(Bytes::from_static(bytes)).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{bytes:?}: {err}");
            assert!(Event::decode(bytes).is_err(), "a decoder refuses {bytes:?} too");
        }
        // Unknown fields are skipped, as a decoder skips them, and a repeated timestamp is
        // merged as a decoder merges it.
        let mut bytes = sample(5).encode_to_vec();
        bytes.extend([0x98, 0x06, 1]); // field 99, varint 1
        bytes.extend([0x9b, 0x06, 0x08, 1, 0x9c, 0x06]); // field 99, a group holding a varint
        bytes.extend([0x1a, 0x02, 0x08, 0x09]); // created again: seconds 9, nanos kept
        let decoded = Event::decode(&bytes[..]).unwrap();
        let stored = StoredEvent::from_bytes(Bytes::from(bytes)).unwrap();
        assert_eq!(stored.sequence(), 5);
        assert_eq!(stored.id(), "evnt_test_1");
        assert_eq!(Some(stored.created()), decoded.created);
        assert_eq!(stored.created().seconds, 9);
    }

    /// A new event as a publish request carries it: the fields of `event` the caller gives.
    fn new_event(event: &Event, given_created: bool) -> NewEvent {
        NewEvent {
            id: Some(event.id.clone()),
            event_type: event.r#type.clone(),
            data: Bytes::from(event.data.as_ref().unwrap().encode_to_vec()),
            created: if given_created { event.created } else { None },
            livemode: event.livemode,
            api_version: event.api_version.clone(),
            source: event.source.clone(),
        }
    }

    #[test]
    fn a_new_event_is_encoded_exactly_as_prost_encodes_the_event() {
        for sequence in [0, 1, 42, u64::MAX] {
            for (livemode, labels, given_created) in
                [(true, true, true), (false, false, false), (true, false, false)]
            {
                let mut event = sample(sequence);
                event.livemode = livemode;
                if !labels {
                    event.api_version.clear();
                    event.source.clear();
                }
                let received = event.received.unwrap();
                if !given_created {
                    event.created = Some(received);
                }
                let new = new_event(&event, given_created);
                let stored = StoredEvent::from_new(&new, &event.id, sequence, received).unwrap();
                assert_eq!(stored.bytes()[..], event.encode_to_vec()[..], "{sequence} {livemode}");
                // The routing fields agree with the ones decoded from the bytes.
                let decoded = StoredEvent::from_bytes(stored.bytes().clone()).unwrap();
                assert_eq!(stored.0.routing, decoded.0.routing);
                assert_eq!(stored.data_bytes().unwrap(), Some(&new.data[..]));
                assert_eq!(new.differs_from(&stored).unwrap(), None);
            }
        }
    }

    #[test]
    fn a_repeat_differs_in_the_first_field_it_changes() {
        let event = sample(3);
        let stored = StoredEvent::from_event(&event);
        let mut new = new_event(&event, true);
        assert_eq!(new.differs_from(&stored).unwrap(), None);
        // Another encoding of the same data is the same data.
        let mut zero = event.clone();
        let negative =
            prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(-0.0)) };
        zero.data.as_mut().unwrap().fields.insert("zero".into(), negative);
        let stored_zero = StoredEvent::from_event(&zero);
        let mut positive = zero.data.clone().unwrap();
        positive.fields.insert(
            "zero".into(),
            prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(0.0)) },
        );
        new.data = Bytes::from(positive.encode_to_vec());
        assert_ne!(stored_zero.data_bytes().unwrap(), Some(&new.data[..]));
        assert_eq!(new.differs_from(&stored_zero).unwrap(), None);
        new.data = Bytes::from(Struct::default().encode_to_vec());
        assert_eq!(new.differs_from(&stored).unwrap(), Some("data"));
        let mut new = new_event(&event, true);
        new.created = Some(Timestamp { seconds: 1, nanos: 0 });
        assert_eq!(new.differs_from(&stored).unwrap(), Some("created"));
        new.source = "komoju".into();
        assert_eq!(new.differs_from(&stored).unwrap(), Some("source"));
        new.event_type = "charge.update".into();
        assert_eq!(new.differs_from(&stored).unwrap(), Some("type"));
    }
}
