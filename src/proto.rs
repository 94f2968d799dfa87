//! The generated protobuf code and the descriptor set that the reflection service serves
//! (with comments, so `grpcurl describe` shows them). The modules mirror the proto packages,
//! because generated code refers from one package to another by relative path; `events.v1`
//! is re-exported here, since that is what the rest of eventsd speaks.
//!
//! The protos are compiled twice (`build.rs`), into two sets of Rust types for one protocol:
//! - **plain** (`events::v1`, re-exported here): every message as prost generates it, with
//!   `Event` as a full struct, and the client. Requests, the CLI, the JSON paths and the tests
//!   use it; decoding a response into it is what every other client does too.
//! - **wire** ([`wire`]): what the server sends. `Event` is [`wire::WireEvent`], the stored
//!   encoding written as it is (its `encoded_len` is the bytes' length), so GetEvent,
//!   ListEvents, SubscribeEvents and the publish responses carry the bytes the store holds,
//!   never a decode and re-encode. Only the responses holding an `Event`
//!   (`PublishEventsResponse`, `ListEventsResponse`, `SubscribeEventsResponse`) and the
//!   service trait are generated here; every other message is the plain set's type.
//!
//! A message embedded in another is a length-delimited field, so a response carrying the stored
//! bytes is byte-identical to one carrying a re-encoded `Event`: reflection serves the one real
//! descriptor set, and grpcurl and every client decode responses unchanged. Two sets keep the
//! full `Event` struct under its own name for decoding, rather than a second, renamed message.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, decode_varint, encode_key, encode_varint, skip_field};
use prost::encoding::{DecodeContext, WireType};
use prost::DecodeError;

/// Package `events.v1`.
pub mod events {
    /// Version 1 of the events API.
    pub mod v1 {
        tonic::include_proto!("events.v1");
    }
}

/// Package `io.cloudevents.v1`: the CloudEvents 1.0 protobuf format.
pub mod io {
    /// CloudEvents.
    pub mod cloudevents {
        /// CloudEvents 1.0.
        pub mod v1 {
            tonic::include_proto!("io.cloudevents.v1");
        }
    }
}

pub use events::v1::*;
pub use wire::event_service_server;
pub use wire::webhook_service_server;

/// The server's side of `events.v1`: responses whose events are stored bytes, and the service
/// trait over them (see the module header).
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/wire/events.v1.rs"));

    pub use super::WireEvent;
}

/// An `events.v1.Event` as encoded bytes: written to the wire as they are, with no decode or
/// re-encode. Built from a stored event (a reference count, not a copy). Decoded from a
/// response (tests), it keeps each field's bytes in order, and [`WireEvent::decode`] gives the
/// full message.
#[derive(Clone, Default, PartialEq)]
pub struct WireEvent(Bytes);

impl WireEvent {
    /// The `Event` encoding this carries.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The full event.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        prost::Message::decode(self.0.clone())
    }
}

impl From<&crate::store::StoredEvent> for WireEvent {
    fn from(event: &crate::store::StoredEvent) -> Self {
        WireEvent(event.bytes().clone())
    }
}

impl std::fmt::Debug for WireEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireEvent({} bytes)", self.0.len())
    }
}

impl prost::Message for WireEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Appends the field as it came: its key, then its value's bytes. Groups (proto2, never
    /// part of an `Event`) are skipped, as prost skips any field it does not know.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if matches!(wire_type, WireType::StartGroup | WireType::EndGroup) {
            return skip_field(wire_type, tag, buf, ctx);
        }
        let mut out = Vec::from(std::mem::take(&mut self.0));
        encode_key(tag, wire_type, &mut out);
        match wire_type {
            WireType::Varint => encode_varint(decode_varint(buf)?, &mut out),
            WireType::ThirtyTwoBit => {
                let mut value = 0;
                encoding::fixed32::merge(wire_type, &mut value, buf, ctx)?;
                out.put_u32_le(value);
            }
            WireType::SixtyFourBit => {
                let mut value = 0;
                encoding::fixed64::merge(wire_type, &mut value, buf, ctx)?;
                out.put_u64_le(value);
            }
            _ => {
                let mut value = Bytes::new();
                encoding::bytes::merge(wire_type, &mut value, buf, ctx)?;
                encode_varint(value.len() as u64, &mut out);
                out.extend_from_slice(&value);
            }
        }
        self.0 = Bytes::from(out);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// The encoded `FileDescriptorSet` of `proto/` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("events_descriptor");

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_wire_event_is_written_as_its_bytes_and_read_back_unchanged() {
        let event = Event {
            id: "evnt_1".into(),
            r#type: "charge.create".into(),
            created: Some(prost_types::Timestamp { seconds: 1, nanos: 2 }),
            livemode: true,
            sequence: 300,
            source: "omise".into(),
            ..Default::default()
        };
        let stored = crate::store::StoredEvent::from_event(&event);
        let response = wire::ListEventsResponse {
            data: vec![WireEvent::from(&stored), WireEvent::from(&stored)],
            total: 2,
            ..Default::default()
        };
        let encoded = response.encode_to_vec();
        // Byte-identical to the plain message with the same events.
        let plain = ListEventsResponse {
            data: vec![event.clone(), event.clone()],
            total: 2,
            ..Default::default()
        };
        assert_eq!(encoded, plain.encode_to_vec());
        let back = wire::ListEventsResponse::decode(&encoded[..]).unwrap();
        assert_eq!(back.data[1].bytes(), stored.bytes());
        assert_eq!(back.data[0].decode().unwrap(), event);
    }
}
