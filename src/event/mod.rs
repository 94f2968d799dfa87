//! The event domain: what a valid event is, before and after it is stored.
//!
//! Requests are validated once, here, at the boundary ([`NewEvent::from_request`] and
//! [`NewEvent::batch_from_requests`]); the store only ever sees [`NewEvent`]s, so every rule
//! about ids, types, sizes and timestamps lives in this module and nowhere else. The stored
//! form is the public `events.v1.Event` message itself: encoding it once at commit time
//! ([`NewEvent::encode`]) means GetEvent, ListEvents and SubscribeEvents serve the same bytes
//! the writer made durable. `data` stays encoded from the request to the log ([`data`]).

pub mod cloudevent;
pub(crate) mod data;
pub(crate) mod filter;
pub(crate) mod id;
pub mod json;
pub(crate) mod time;
pub(crate) mod wire_json;

use std::collections::HashSet;

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use prost_types::{Struct, Timestamp};

use crate::error::Error;
use crate::proto::wire::PublishEventRequest;
use crate::store::StoredEvent;

pub use filter::Filter;

/// Most events one PublishEvents call may carry.
pub const MAX_BATCH: usize = 1_000;
/// Longest accepted event id and type.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted `api_version` and `source`.
pub const MAX_LABEL_LEN: usize = 64;

/// Size limits that apply to every event, whatever path it arrives by.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest encoded `data` Struct, in bytes.
    pub max_data_bytes: usize,
}

/// A validated event, ready to be committed. Fields the caller left out are `None`, so an
/// idempotent repeat can be compared with exactly what the first caller supplied.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The caller's id, or `None` to have one generated at commit.
    pub id: Option<String>,
    /// The event key, such as `charge.create`.
    pub event_type: String,
    /// The object snapshot: the encoding of a valid `google.protobuf.Struct`, as eventsd
    /// stores it ([`data::stored`]).
    pub data: Bytes,
    /// When the event happened, if the caller said.
    pub created: Option<Timestamp>,
    /// Live (true) or test (false).
    pub livemode: bool,
    /// Schema version of `data`; empty if not given.
    pub api_version: String,
    /// Producer name; empty if not given.
    pub source: String,
}

impl NewEvent {
    /// Validates one publish request. `field` prefixes the names in error messages, so a
    /// batch entry reports `events[3].type` rather than `type`.
    pub fn from_request(
        req: PublishEventRequest,
        limits: &EventLimits,
        field: &str,
    ) -> Result<Self, Error> {
        let name = |f: &str| {
            if field.is_empty() {
                f.to_string()
            } else {
                format!("{field}.{f}")
            }
        };
        let id = if req.id.is_empty() {
            None
        } else {
            id::validate(&req.id).map_err(|reason| Error::invalid(name("id"), reason))?;
            Some(req.id)
        };
        if req.r#type.is_empty() {
            return Err(Error::invalid(name("type"), "is required"));
        }
        validate_type(&req.r#type).map_err(|reason| Error::invalid(name("type"), reason))?;
        let Some(data) = req.data else {
            return Err(Error::invalid(name("data"), "is required (a JSON object)"));
        };
        let data = data::stored(data.into_bytes())
            .map_err(|e| Error::invalid(name(&e.path("data")), e.reason))?;
        let size = data.len();
        if size > limits.max_data_bytes {
            return Err(Error::invalid(
                name("data"),
                format!("is {size} bytes encoded, over the {} byte limit", limits.max_data_bytes),
            ));
        }
        if let Some(created) = &req.created {
            time::validate(created).map_err(|reason| Error::invalid(name("created"), reason))?;
        }
        validate_label(&req.api_version).map_err(|r| Error::invalid(name("api_version"), r))?;
        validate_label(&req.source).map_err(|r| Error::invalid(name("source"), r))?;
        Ok(NewEvent {
            id,
            event_type: req.r#type,
            data,
            created: req.created,
            livemode: req.livemode,
            api_version: req.api_version,
            source: req.source,
        })
    }

    /// Validates a batch: 1 to [`MAX_BATCH`] events, each valid, no id twice.
    pub fn batch_from_requests(
        reqs: Vec<PublishEventRequest>,
        limits: &EventLimits,
    ) -> Result<Vec<Self>, Error> {
        if reqs.is_empty() {
            return Err(Error::invalid("events", "must hold at least one event"));
        }
        if reqs.len() > MAX_BATCH {
            return Err(Error::invalid(
                "events",
                format!("holds {} events, more than the {MAX_BATCH} allowed", reqs.len()),
            ));
        }
        let mut seen = HashSet::new();
        let mut events = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            let event = Self::from_request(req, limits, &format!("events[{i}]"))?;
            if let Some(id) = &event.id {
                if !seen.insert(id.clone()) {
                    return Err(Error::invalid(
                        format!("events[{i}].id"),
                        format!("{id:?} appears more than once in the batch"),
                    ));
                }
            }
            events.push(event);
        }
        Ok(events)
    }

    /// The stored encoding of the event: an `events.v1.Event` exactly as prost encodes it,
    /// with `data` written as it is. `id` is the caller's or a generated one; `sequence` and
    /// `received` are assigned by the committer (a sequence of 0 is left out, as a replicated
    /// stream stores an event before it assigns the sequence).
    pub fn encode(&self, id: &str, sequence: u64, received: Timestamp) -> Vec<u8> {
        use prost::encoding::{bool, message, uint64};
        /// A string field, left out when empty (as prost leaves out a default).
        fn text(tag: u32, value: &str, out: &mut Vec<u8>) {
            if !value.is_empty() {
                bytes(tag, value.as_bytes(), out);
            }
        }
        fn bytes(tag: u32, value: &[u8], out: &mut Vec<u8>) {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(value.len() as u64, out);
            out.extend_from_slice(value);
        }
        let location = format!("/events/{id}");
        let created = self.created.unwrap_or(received);
        let labels = self.event_type.len() + self.api_version.len() + self.source.len();
        let mut out = Vec::with_capacity(self.data.len() + 2 * id.len() + labels + 64);
        text(1, id, &mut out);
        text(2, &self.event_type, &mut out);
        message::encode(3, &created, &mut out);
        message::encode(4, &received, &mut out);
        if self.livemode {
            bool::encode(5, &self.livemode, &mut out);
        }
        bytes(6, &self.data, &mut out);
        text(7, &self.api_version, &mut out);
        text(8, &location, &mut out);
        if sequence != 0 {
            uint64::encode(9, &sequence, &mut out);
        }
        text(10, &self.source, &mut out);
        out
    }

    /// The first field in which this request differs from the stored event, or `None` when
    /// the request is an exact repeat (fields the caller left out are not compared).
    pub fn differs_from(&self, stored: &StoredEvent) -> Result<Option<&'static str>, Error> {
        if self.event_type != stored.event_type() {
            return Ok(Some("type"));
        }
        if !self.same_data(stored)? {
            return Ok(Some("data"));
        }
        if self.livemode != stored.livemode() {
            return Ok(Some("livemode"));
        }
        if self.api_version != stored.api_version() {
            return Ok(Some("api_version"));
        }
        if self.source != stored.source() {
            return Ok(Some("source"));
        }
        if self.created.is_some_and(|created| created != stored.created()) {
            return Ok(Some("created"));
        }
        Ok(None)
    }

    /// Whether `data` equals the stored event's: the same bytes, or else the same Struct
    /// (two encodings of one Struct, such as 0.0 and -0.0, which compare equal).
    fn same_data(&self, stored: &StoredEvent) -> Result<bool, Error> {
        if stored.data_bytes()? == Some(&self.data[..]) {
            return Ok(true);
        }
        let mine = Struct::decode(&self.data[..])
            .map_err(|e| Error::Internal(format!("validated data does not decode: {e}")))?;
        Ok(stored.decode()?.data.as_ref() == Some(&mine))
    }
}

/// Event types: 1–128 characters of `[A-Za-z0-9_.:/-]`. `*` is reserved for filters.
pub fn validate_type(t: &str) -> Result<(), String> {
    validate_token(t, &['_', '.', ':', '/', '-'])
}

/// Ids and types: 1–128 ASCII letters, digits and the given punctuation.
pub(crate) fn validate_token(s: &str, punctuation: &[char]) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || punctuation.contains(c))) {
        let allowed: Vec<String> = punctuation.iter().map(char::to_string).collect();
        return Err(format!("contains {c:?}; allowed are A-Z a-z 0-9 {}", allowed.join(" ")));
    }
    Ok(())
}

/// `api_version` and `source`: optional, at most 64 printable characters.
pub(crate) fn validate_label(s: &str) -> Result<(), String> {
    if s.chars().count() > MAX_LABEL_LEN {
        return Err(format!("is longer than {MAX_LABEL_LEN} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(())
}
