//! The generated protobuf code and the descriptor set that the reflection service serves
//! (with comments, so `grpcurl describe` shows them). The modules mirror the proto packages,
//! because generated code refers from one package to another by relative path; `events.v1`
//! is re-exported here, since that is what the rest of eventsd speaks.
//!
//! The protos are compiled twice (`build.rs`), into two sets of Rust types for one protocol:
//! - **plain** (`events::v1`, re-exported here): every message as prost generates it, with
//!   `Event` as a full struct, and the client. Requests, the CLI, the JSON paths and the tests
//!   use it; decoding a response into it is what every other client does too.
//! - **wire** ([`wire`]): what the server reads and sends. `Event` is [`wire::WireEvent`], the
//!   stored encoding written as it is (its `encoded_len` is the bytes' length), so GetEvent,
//!   ListEvents, SubscribeEvents and the publish responses carry the bytes the store holds,
//!   never a decode and re-encode. A publish's `data` is a [`WireStruct`], the bytes that
//!   arrived, so a publish builds no `Struct` either. Only the publish requests, the responses
//!   holding an `Event` (`PublishEventsResponse`, `ListEventsResponse`,
//!   `SubscribeEventsResponse`) and the service trait are generated here; every other message
//!   is the plain set's type.
//!
//! A message embedded in another is a length-delimited field, so a response carrying the stored
//! bytes is byte-identical to one carrying a re-encoded `Event`: reflection serves the one real
//! descriptor set, and grpcurl and every client decode responses unchanged. Two sets keep the
//! full `Event` struct under its own name for decoding, rather than a second, renamed message.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, decode_varint, encode_key, encode_varint};
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

/// A message of type `M` as encoded bytes: written to the wire as they are, with no decode or
/// re-encode. Decoded from a message that holds it, it keeps each field's bytes in order (see
/// [`append_field`]), so it never builds an `M`.
pub struct Encoded<M> {
    bytes: Bytes,
    message: PhantomData<fn() -> M>,
}

impl<M> Encoded<M> {
    fn new(bytes: Bytes) -> Self {
        Encoded { bytes, message: PhantomData }
    }

    /// The encoding this carries.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoding, as arrived or built.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl<M> Default for Encoded<M> {
    fn default() -> Self {
        Encoded::new(Bytes::new())
    }
}

impl<M> Clone for Encoded<M> {
    fn clone(&self) -> Self {
        Encoded::new(self.bytes.clone())
    }
}

impl<M> PartialEq for Encoded<M> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<M> std::fmt::Debug for Encoded<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or_default();
        write!(f, "Encoded<{name}>({} bytes)", self.bytes.len())
    }
}

impl<M> prost::Message for Encoded<M> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    /// Appends the field as it came (see [`append_field`]).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut out = Vec::from(std::mem::take(&mut self.bytes));
        append_field(&mut out, tag, wire_type, buf, ctx)?;
        self.bytes = Bytes::from(out);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes = Bytes::new();
    }
}

/// Appends one field of a message being decoded to `out` as it came: its key, then its
/// value's bytes, so `out` is an encoding of the message without it being built. A group
/// (proto2; no field of `Event` or `Struct` is one) is refused as a wire-type error, so nothing
/// a decoder would refuse is kept.
fn append_field(
    out: &mut Vec<u8>,
    tag: u32,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    if matches!(wire_type, WireType::StartGroup | WireType::EndGroup) {
        encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    }
    encode_key(tag, wire_type, out);
    match wire_type {
        WireType::Varint => encode_varint(decode_varint(buf)?, out),
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
            encode_varint(value.len() as u64, out);
            out.extend_from_slice(&value);
        }
    }
    Ok(())
}

/// An `events.v1.Event` as encoded bytes: what the server sends. Built from a stored event (a
/// reference count, not a copy). Decoded from a response (tests), [`WireEvent::decode`] gives
/// the full message.
pub type WireEvent = Encoded<Event>;

impl WireEvent {
    /// The full event.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        prost::Message::decode(self.bytes.clone())
    }
}

impl From<&crate::store::StoredEvent> for WireEvent {
    fn from(event: &crate::store::StoredEvent) -> Self {
        Encoded::new(event.bytes().clone())
    }
}

/// A `google.protobuf.Struct` as the bytes that arrived: a publish's `data`, read by the
/// server without building a `prost_types::Struct` (a tree of maps and strings, the bulk of a
/// publish's CPU). `event::data` checks the bytes and keeps them when they are already the
/// encoding eventsd stores; anything else is decoded and re-encoded there.
pub type WireStruct = Encoded<prost_types::Struct>;

impl WireStruct {
    /// The encoding of a Struct.
    pub fn from_struct(data: &prost_types::Struct) -> Self {
        Encoded::new(Bytes::from(prost::Message::encode_to_vec(data)))
    }
}

/// A plain request (built from JSON by the HTTP paths) as the server's request type.
impl From<PublishEventRequest> for wire::PublishEventRequest {
    fn from(req: PublishEventRequest) -> Self {
        wire::PublishEventRequest {
            id: req.id,
            r#type: req.r#type,
            data: req.data.as_ref().map(WireStruct::from_struct),
            created: req.created,
            livemode: req.livemode,
            api_version: req.api_version,
            source: req.source,
        }
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
