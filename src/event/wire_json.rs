//! JSON straight from the protobuf wire: an event's `data` (a `google.protobuf.Struct`) read
//! from the stored `events.v1.Event` encoding and written as JSON text in one pass, with no
//! `prost_types::Struct` or `serde_json::Value` in between; and [`ObjectWriter`], which the
//! views use to wrap that text in their providers' fixed shapes.
//!
//! What it promises: the text is byte for byte what the `prost_types` path printed
//! (`json::struct_to_object`, then serde_json): object keys in byte order with one entry per
//! key (the last, as a protobuf map keeps it), whole doubles within 2^53 as integers, other
//! numbers and string escapes as serde_json prints them, a Value with no kind as `null`. A
//! record that does not parse is [`Error::Corrupt`]; nesting deeper than protobuf decoders
//! accept (100) is refused rather than recursed into.

use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

use crate::error::Error;
use crate::event::json::number_to_json;

/// `Event.data`.
const EVENT_DATA: u32 = 6;
/// Deepest Struct/ListValue nesting read (what protobuf decoders accept).
const MAX_DEPTH: usize = 100;

/// One field of an encoded message.
pub(crate) enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
    /// A group, skipped: no field eventsd reads is one.
    Group,
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("stored event data: {what}"))
}

/// The fields of an encoded message, in wire order.
pub(crate) fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u32, Field<'_>), Error>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        Some(next_field(&mut buf))
    })
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Field<'a>), Error> {
    let (tag, wire_type) = decode_key(buf).map_err(|e| corrupt(&e.to_string()))?;
    let field = match wire_type {
        WireType::Varint => Field::Varint(varint(buf)?),
        WireType::SixtyFourBit => {
            Field::Fixed64(u64::from_le_bytes(take(buf, 8)?.try_into().expect("8 bytes")))
        }
        WireType::ThirtyTwoBit => {
            take(buf, 4)?;
            Field::Fixed32
        }
        WireType::LengthDelimited => {
            let len = usize::try_from(varint(buf)?).map_err(|_| corrupt("a huge length"))?;
            Field::Bytes(take(buf, len)?)
        }
        // A group (proto2) is skipped whole, as decoders skip a field they do not know.
        WireType::StartGroup => {
            skip_field(wire_type, tag, buf, DecodeContext::default())
                .map_err(|e| corrupt(&e.to_string()))?;
            Field::Group
        }
        WireType::EndGroup => return Err(corrupt("an end of group with no start")),
    };
    Ok((tag, field))
}

fn varint(buf: &mut &[u8]) -> Result<u64, Error> {
    decode_varint(buf).map_err(|e| corrupt(&e.to_string()))
}

/// The next `len` bytes of `buf`.
fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], Error> {
    if buf.len() < len {
        return Err(corrupt("a field runs past its message"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// The JSON text of an encoded event's `data`, or `None` when the event has none.
pub fn data_json(event: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut entries = Vec::new();
    let mut present = false;
    for field in fields(event) {
        match field? {
            (EVENT_DATA, Field::Bytes(data)) => {
                // A message field given twice is merged: the maps' entries add up.
                present = true;
                struct_entries(data, &mut entries)?;
            }
            (EVENT_DATA, _) => return Err(corrupt("data is not a message")),
            _ => {}
        }
    }
    if !present {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(event.len());
    write_object(entries, &mut out, 1)?;
    Ok(Some(out))
}

/// The bytes of an encoded event's `data` field when it holds exactly one.
pub fn data_field(event: &[u8]) -> Result<Option<&[u8]>, Error> {
    let mut found = None;
    for field in fields(event) {
        if let (EVENT_DATA, field) = field? {
            let Field::Bytes(data) = field else { return Err(corrupt("data is not a message")) };
            if found.replace(data).is_some() {
                return Ok(None);
            }
        }
    }
    Ok(found)
}

/// The value of the top-level string field `key` of an encoded event's `data`, if any.
pub fn data_string(event: &[u8], key: &str) -> Result<Option<String>, Error> {
    let mut entries = Vec::new();
    for field in fields(event) {
        if let (EVENT_DATA, Field::Bytes(data)) = field? {
            struct_entries(data, &mut entries)?;
        }
    }
    let Some((_, value)) = entries.iter().rev().find(|(k, _)| *k == key.as_bytes()) else {
        return Ok(None);
    };
    match kind(value)? {
        Some((STRING_VALUE, Field::Bytes(text))) => Ok(Some(utf8(text)?.to_string())),
        _ => Ok(None),
    }
}

/// A Struct's map entries (key, encoded Value), appended in wire order.
fn struct_entries<'a>(
    data: &'a [u8],
    entries: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Result<(), Error> {
    for field in fields(data) {
        let (1, Field::Bytes(entry)) = field? else { continue };
        let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
        for part in fields(entry) {
            match part? {
                (1, Field::Bytes(k)) => key = k,
                (2, Field::Bytes(v)) => value = v,
                (1 | 2, _) => return Err(corrupt("a map entry of the wrong type")),
                _ => {}
            }
        }
        entries.push((key, value));
    }
    Ok(())
}

const NULL_VALUE: u32 = 1;
const NUMBER_VALUE: u32 = 2;
const STRING_VALUE: u32 = 3;
const BOOL_VALUE: u32 = 4;
const STRUCT_VALUE: u32 = 5;
const LIST_VALUE: u32 = 6;

/// The kind of an encoded Value: the last of its oneof fields, as a decoder keeps it.
fn kind(value: &[u8]) -> Result<Option<(u32, Field<'_>)>, Error> {
    let mut found = None;
    for field in fields(value) {
        let (tag, field) = field?;
        let fits = matches!(
            (tag, &field),
            (NULL_VALUE | BOOL_VALUE, Field::Varint(_))
                | (NUMBER_VALUE, Field::Fixed64(_))
                | (STRING_VALUE | STRUCT_VALUE | LIST_VALUE, Field::Bytes(_))
        );
        match (tag, fits) {
            (NULL_VALUE..=LIST_VALUE, true) => found = Some((tag, field)),
            (NULL_VALUE..=LIST_VALUE, false) => return Err(corrupt("a Value of the wrong type")),
            _ => {}
        }
    }
    Ok(found)
}

fn utf8(text: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(text).map_err(|_| corrupt("a string that is not UTF-8"))
}

/// Writes an object: keys in byte order, the last entry of each key (a BTreeMap's view).
fn write_object(
    mut entries: Vec<(&[u8], &[u8])>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(corrupt("nested too deeply"));
    }
    // eventsd encodes maps in key order already; anything else is put in order here.
    if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
        entries.sort_by(|a, b| a.0.cmp(b.0)); // stable: equal keys keep wire order
        let mut kept: Vec<(&[u8], &[u8])> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        entries = kept;
    }
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(utf8(key)?, out);
        out.push(b':');
        write_value(value, out, depth)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_value(value: &[u8], out: &mut Vec<u8>, depth: usize) -> Result<(), Error> {
    match kind(value)? {
        None | Some((NULL_VALUE, _)) => out.extend_from_slice(b"null"),
        Some((NUMBER_VALUE, Field::Fixed64(bits))) => {
            write_json(&number_to_json(f64::from_bits(bits)), out)
        }
        Some((STRING_VALUE, Field::Bytes(text))) => write_str(utf8(text)?, out),
        Some((BOOL_VALUE, Field::Varint(b))) => {
            out.extend_from_slice(if b != 0 { b"true" } else { b"false" })
        }
        Some((STRUCT_VALUE, Field::Bytes(inner))) => {
            let mut entries = Vec::new();
            struct_entries(inner, &mut entries)?;
            write_object(entries, out, depth + 1)?;
        }
        Some((_, Field::Bytes(list))) => {
            if depth + 1 > MAX_DEPTH {
                return Err(corrupt("nested too deeply"));
            }
            out.push(b'[');
            let mut first = true;
            for field in fields(list) {
                let (1, Field::Bytes(item)) = field? else { continue };
                if !first {
                    out.push(b',');
                }
                first = false;
                write_value(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Some(_) => return Err(corrupt("a Value of the wrong type")),
    }
    Ok(())
}

/// A JSON string, escaped as serde_json escapes it.
pub fn write_str(text: &str, out: &mut Vec<u8>) {
    write_json(text, out);
}

fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing a string or number into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// Writes one JSON object of a fixed shape. Keys must come in byte order, as serde_json's
/// (BTreeMap) objects print them, so a shape written here reads exactly as the `json!` value
/// it replaces.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    last: Option<&'static str>,
}

impl<'a> ObjectWriter<'a> {
    /// Starts an object.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, last: None }
    }

    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(self.last.is_none_or(|last| last < key), "{key} out of order");
        if self.last.is_some() {
            self.out.push(b',');
        }
        self.last = Some(key);
        write_str(key, self.out);
        self.out.push(b':');
        self.out
    }

    /// A value already in JSON.
    pub fn raw(&mut self, key: &'static str, json: &[u8]) -> &mut Self {
        self.key(key).extend_from_slice(json);
        self
    }

    /// A string.
    pub fn str(&mut self, key: &'static str, text: &str) -> &mut Self {
        let out = self.key(key);
        write_str(text, out);
        self
    }

    /// A string, or `null` when it is empty (how the views print an absent label).
    pub fn label(&mut self, key: &'static str, text: &str) -> &mut Self {
        match text.is_empty() {
            true => self.raw(key, b"null"),
            false => self.str(key, text),
        }
    }

    /// A boolean.
    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.raw(key, if value { b"true" } else { b"false" })
    }

    /// An integer.
    pub fn int(&mut self, key: &'static str, value: impl Into<i128>) -> &mut Self {
        let text = value.into().to_string();
        self.raw(key, text.as_bytes())
    }

    /// An array of values written by `each`.
    pub fn array<T>(
        &mut self,
        key: &'static str,
        items: &[T],
        mut each: impl FnMut(&T, &mut Vec<u8>) -> Result<(), Error>,
    ) -> Result<&mut Self, Error> {
        let out = self.key(key);
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(item, out)?;
        }
        out.push(b']');
        Ok(self)
    }

    /// Closes the object.
    pub fn finish(&mut self) {
        self.out.push(b'}');
    }
}

/// Random `data` for property tests of the JSON writers.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use prost_types::value::Kind;
    use prost_types::{ListValue, Struct, Value};

    /// Random Values of every kind, nested a few levels.
    pub fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Kind::NullValue(0)),
            any::<bool>().prop_map(Kind::BoolValue),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Kind::NumberValue),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(|i| Kind::NumberValue(i as f64)),
            any::<String>().prop_map(Kind::StringValue),
            "[a-z\"\\\\\n\u{7f}é😀]{0,8}".prop_map(Kind::StringValue),
        ]
        .prop_map(|kind| Value { kind: Some(kind) });
        let leaf = prop_oneof![9 => leaf, 1 => Just(Value { kind: None })];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|values| Kind::ListValue(ListValue { values })),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|fields| Kind::StructValue(Struct { fields })),
            ]
            .prop_map(|kind| Value { kind: Some(kind) })
        })
    }

    /// Random `data` objects: every kind of Value, nested, odd keys and strings.
    pub fn data() -> impl Strategy<Value = Struct> {
        prop::collection::btree_map("[a-z_]{0,6}|.{0,4}", value(), 0..8)
            .prop_map(|fields| Struct { fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::json::struct_to_object;
    use crate::proto::Event;
    use proptest::prelude::*;
    use prost::Message;
    use prost_types::Struct;

    use strategies::data;

    fn old_path(data: &Struct) -> Vec<u8> {
        serde_json::to_vec(&serde_json::Value::Object(struct_to_object(data))).unwrap()
    }

    proptest! {
        #[test]
        fn data_json_equals_the_prost_types_path(data in data()) {
            let event = Event { id: "e".into(), data: Some(data.clone()), ..Default::default() };
            let new = data_json(&event.encode_to_vec()).unwrap().unwrap();
            prop_assert_eq!(String::from_utf8(new).unwrap(), String::from_utf8(old_path(&data)).unwrap());
        }

        #[test]
        fn entries_out_of_order_or_repeated_read_as_a_decoder_reads_them(
            data in data(), extra in data()
        ) {
            // Two data fields, concatenated: a decoder merges the maps, later keys winning.
            let mut bytes = Event { data: Some(data.clone()), ..Default::default() }.encode_to_vec();
            bytes.extend(Event { data: Some(extra.clone()), ..Default::default() }.encode_to_vec());
            let decoded = Event::decode(&bytes[..]).unwrap().data.unwrap();
            let new = data_json(&bytes).unwrap().unwrap();
            prop_assert_eq!(new, old_path(&decoded));
        }

        #[test]
        fn damaged_records_are_refused_or_read_never_panicking(
            data in data(), cut in any::<prop::sample::Index>(), flip in any::<u8>()
        ) {
            let mut bytes = Event { data: Some(data), ..Default::default() }.encode_to_vec();
            let at = cut.index(bytes.len().max(1));
            if let Some(b) = bytes.get_mut(at) { *b ^= flip; }
            let _ = data_json(&bytes);
            let _ = data_json(&bytes[..at]);
        }
    }

    #[test]
    fn an_event_without_data_has_none_and_subjects_come_from_the_top_level() {
        assert_eq!(data_json(&Event::default().encode_to_vec()).unwrap(), None);
        let doc = serde_json::json!({"id": "chrg_1", "nested": {"id": "no"}});
        let data = crate::event::json::object_to_struct(doc.as_object().unwrap()).unwrap();
        let bytes = Event { data: Some(data), ..Default::default() }.encode_to_vec();
        assert_eq!(data_string(&bytes, "id").unwrap().as_deref(), Some("chrg_1"));
        assert_eq!(data_string(&bytes, "nested").unwrap(), None);
    }
}
