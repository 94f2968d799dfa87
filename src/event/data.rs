//! A publish's `data` as the bytes that arrived: checked in one pass over the encoding, and
//! kept as they are when they already are what eventsd stores.
//!
//! eventsd stores `data` as prost encodes a `prost_types::Struct`: map entries in key order,
//! each with its key and then its value, every varint minimal, a Value with exactly one kind.
//! Clients built on prost, and any that serialise maps deterministically, send exactly that.
//! [`stored`] walks those bytes once without building anything, checks what
//! `json::validate_struct` checks (a kind in every Value, finite numbers, bounded depth) and
//! keeps them. Bytes in any other valid form (keys out of order, a key twice, unknown fields,
//! a longer varint) are decoded into a `Struct`, checked and re-encoded, exactly as before
//! this fast path existed; so the stored bytes, the answers and the error messages are the
//! same whichever way a client encodes the same `data`.

use bytes::Bytes;
use prost::encoding::{decode_varint, encoded_len_varint};
use prost::Message;
use prost_types::Struct;

use crate::event::json::{self, JsonError, MAX_DEPTH};

/// Field keys (number and wire type in one byte) of the messages walked.
const ENTRY: u8 = 0x0A; // Struct.fields (1, bytes); MapEntry.key (1, bytes); ListValue.values
const ENTRY_VALUE: u8 = 0x12; // MapEntry.value (2, bytes)
const NULL_VALUE: u8 = 0x08; // Value.null_value (1, varint)
const NUMBER_VALUE: u8 = 0x11; // Value.number_value (2, 64-bit)
const STRING_VALUE: u8 = 0x1A; // Value.string_value (3, bytes)
const BOOL_VALUE: u8 = 0x20; // Value.bool_value (4, varint)
const STRUCT_VALUE: u8 = 0x2A; // Value.struct_value (5, bytes)
const LIST_VALUE: u8 = 0x32; // Value.list_value (6, bytes)

/// The stored encoding of a `data` Struct that arrived as `raw`, or why it is refused.
pub fn stored(raw: Bytes) -> Result<Bytes, JsonError> {
    if canonical_struct(&raw, 1) {
        return Ok(raw);
    }
    let data = Struct::decode(raw).map_err(|e| {
        JsonError::new(format!("is not a valid google.protobuf.Struct encoding: {e}"))
    })?;
    json::validate_struct(&data)?;
    Ok(Bytes::from(data.encode_to_vec()))
}

/// Whether `buf` is prost's encoding of a valid Struct at this depth.
fn canonical_struct(mut buf: &[u8], depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let mut previous: Option<&[u8]> = None;
    while !buf.is_empty() {
        let Some(mut entry) = field(&mut buf, ENTRY) else { return false };
        let Some(key) = field(&mut entry, ENTRY) else { return false };
        // prost leaves out an empty key, and writes keys in strictly increasing order.
        if key.is_empty() || previous.is_some_and(|p| p >= key) || std::str::from_utf8(key).is_err()
        {
            return false;
        }
        let Some(value) = field(&mut entry, ENTRY_VALUE) else { return false };
        if !entry.is_empty() || !canonical_value(value, depth) {
            return false;
        }
        previous = Some(key);
    }
    true
}

/// Whether `value` is prost's encoding of a valid Value (exactly one kind) at this depth.
fn canonical_value(value: &[u8], depth: usize) -> bool {
    let Some((&key, rest)) = value.split_first() else { return false };
    let mut whole = value;
    match key {
        NULL_VALUE => rest == [0],
        NUMBER_VALUE => {
            rest.len() == 8 && f64::from_le_bytes(rest.try_into().expect("8 bytes")).is_finite()
        }
        BOOL_VALUE => rest == [0] || rest == [1],
        STRING_VALUE => field(&mut whole, key)
            .is_some_and(|text| whole.is_empty() && std::str::from_utf8(text).is_ok()),
        STRUCT_VALUE => field(&mut whole, key)
            .is_some_and(|inner| whole.is_empty() && canonical_struct(inner, depth + 1)),
        LIST_VALUE => {
            depth < MAX_DEPTH
                && field(&mut whole, key)
                    .is_some_and(|list| whole.is_empty() && canonical_list(list, depth + 1))
        }
        _ => false,
    }
}

/// Whether `buf` is prost's encoding of a ListValue of valid Values at this depth.
fn canonical_list(mut buf: &[u8], depth: usize) -> bool {
    while !buf.is_empty() {
        match field(&mut buf, ENTRY) {
            Some(item) if canonical_value(item, depth) => {}
            _ => return false,
        }
    }
    true
}

/// The body of the length-delimited field at the start of `buf` if its key is `key` and its
/// length is minimally encoded; advances `buf` past it.
fn field<'a>(buf: &mut &'a [u8], key: u8) -> Option<&'a [u8]> {
    let (&first, mut rest) = buf.split_first()?;
    if first != key {
        return None;
    }
    let before = rest.len();
    let len = decode_varint(&mut rest).ok()?;
    if before - rest.len() != encoded_len_varint(len) {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    if rest.len() < len {
        return None;
    }
    let (body, tail) = rest.split_at(len);
    *buf = tail;
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::wire_json::strategies;
    use proptest::prelude::*;
    use prost_types::{value::Kind, ListValue, Value};

    fn value(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn sample() -> Struct {
        let mut inner = Struct::default();
        inner.fields.insert("brand".into(), value(Kind::StringValue("Visa".into())));
        inner.fields.insert("empty".into(), value(Kind::StringValue(String::new())));
        let mut data = Struct::default();
        data.fields.insert("amount".into(), value(Kind::NumberValue(100.0)));
        data.fields.insert("card".into(), value(Kind::StructValue(inner)));
        data.fields.insert("paid".into(), value(Kind::BoolValue(false)));
        data.fields.insert("refunds".into(), value(Kind::ListValue(ListValue::default())));
        data.fields.insert("failure".into(), value(Kind::NullValue(0)));
        data.fields.insert("zero".into(), value(Kind::NumberValue(0.0)));
        data
    }

    #[test]
    fn prost_encodings_are_kept_as_they_came() {
        let bytes = Bytes::from(sample().encode_to_vec());
        assert!(canonical_struct(&bytes, 1));
        let kept = stored(bytes.clone()).unwrap();
        assert_eq!(kept.as_ptr(), bytes.as_ptr(), "kept, not copied");
    }

    /// An entry, written by hand: key then value, or in another order.
    fn entry(key: &str, value: &Value, value_first: bool) -> Vec<u8> {
        let mut body = Vec::new();
        let mut k = Vec::new();
        prost::encoding::string::encode(1, &key.to_string(), &mut k);
        let mut v = Vec::new();
        prost::encoding::message::encode(2, value, &mut v);
        if value_first {
            body.extend(v);
            body.extend(k);
        } else {
            body.extend(k);
            body.extend(v);
        }
        let mut out = vec![ENTRY];
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend(body);
        out
    }

    #[test]
    fn other_valid_encodings_are_stored_as_prost_encodes_them() {
        let one = value(Kind::NumberValue(1.0));
        let two = value(Kind::StringValue("two".into()));
        let expected = {
            let mut s = Struct::default();
            s.fields.insert("a".into(), one.clone());
            s.fields.insert("b".into(), two.clone());
            Bytes::from(s.encode_to_vec())
        };
        let reversed = [entry("b", &two, false), entry("a", &one, false)].concat();
        let swapped = [entry("a", &one, true), entry("b", &two, false)].concat();
        let twice =
            [entry("a", &two, false), entry("b", &two, false), entry("a", &one, false)].concat();
        // A bool written as 2, a length written in two bytes, an unknown field in a Value.
        let mut odd = expected.to_vec();
        odd.extend([ENTRY, 6, ENTRY, 1, b'c', ENTRY_VALUE, 1, 0x08]);
        for raw in [reversed, swapped, twice] {
            assert!(!canonical_struct(&raw, 1));
            assert_eq!(stored(Bytes::from(raw)).unwrap(), expected);
        }
        // `c` is a Value whose null_value has no varint: not valid protobuf.
        assert!(stored(Bytes::from(odd)).is_err());
        let bool_two = [ENTRY, 7, ENTRY, 1, b'x', ENTRY_VALUE, 2, BOOL_VALUE, 2];
        let long_len = [ENTRY, 0x87, 0x00, ENTRY, 1, b'x', ENTRY_VALUE, 2, BOOL_VALUE, 1];
        let unknown = [ENTRY, 9, ENTRY, 1, b'x', ENTRY_VALUE, 4, BOOL_VALUE, 1, 0x38, 1];
        for raw in [&bool_two[..], &long_len[..], &unknown[..]] {
            assert!(!canonical_struct(raw, 1), "{raw:?}");
            let decoded = Struct::decode(raw).unwrap();
            assert_eq!(stored(Bytes::copy_from_slice(raw)).unwrap(), decoded.encode_to_vec());
        }
    }

    #[test]
    fn invalid_data_is_refused_with_the_path_whatever_the_encoding() {
        let mut data = sample();
        data.fields.insert("nan".into(), value(Kind::NumberValue(f64::NAN)));
        let canonical = Bytes::from(data.encode_to_vec());
        let err = stored(canonical).unwrap_err();
        assert_eq!(err.path("data"), "data.nan");
        let mut no_kind = Struct::default();
        no_kind.fields.insert("x".into(), Value { kind: None });
        no_kind.fields.insert("y".into(), value(Kind::NullValue(0)));
        let err = stored(Bytes::from(no_kind.encode_to_vec())).unwrap_err();
        assert_eq!(err.path("data"), "data.x");
        let err = stored(Bytes::from_static(&[ENTRY, 5, 0xFF])).unwrap_err();
        assert!(err.reason.contains("not a valid google.protobuf.Struct"), "{err:?}");
        // A group where the map should be: a decoder refuses it, and so does the request.
        let group = [0x0B, 0x0C];
        assert!(Struct::decode(&group[..]).is_err());
        let request = [0x1A, 2, 0x0B, 0x0C]; // PublishEventRequest.data holding the group
        assert!(crate::proto::wire::PublishEventRequest::decode(&request[..]).is_err());
    }

    #[test]
    fn depth_is_bounded_as_the_struct_check_bounds_it() {
        for levels in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1] {
            for list in [false, true] {
                let mut data = Struct::default();
                for _ in 1..levels {
                    let kind = if list {
                        Kind::ListValue(ListValue { values: vec![value(Kind::StructValue(data))] })
                    } else {
                        Kind::StructValue(data)
                    };
                    let mut outer = Struct::default();
                    outer.fields.insert("n".into(), value(kind));
                    data = outer;
                }
                let bytes = Bytes::from(data.encode_to_vec());
                let by_bytes = stored(bytes.clone()).map_err(|e| e.path("data"));
                if Struct::decode(bytes).is_err() {
                    // Deeper than protobuf decoders go (100 messages): refused as a whole.
                    assert_eq!(by_bytes, Err("data".to_string()), "{levels} levels, list {list}");
                    continue;
                }
                let by_struct = json::validate_struct(&data).map_err(|e| e.path("data"));
                assert_eq!(by_struct, by_bytes.map(|_| ()), "{levels} levels, list {list}");
            }
        }
    }

    fn has_empty_key(data: &Struct) -> bool {
        fn in_value(v: &Value) -> bool {
            match &v.kind {
                Some(Kind::StructValue(s)) => has_empty_key(s),
                Some(Kind::ListValue(l)) => l.values.iter().any(in_value),
                _ => false,
            }
        }
        data.fields.iter().any(|(k, v)| k.is_empty() || in_value(v))
    }

    proptest! {
        #[test]
        fn any_struct_is_kept_exactly_as_prost_encodes_it(data in strategies::data()) {
            let bytes = Bytes::from(data.encode_to_vec());
            let valid = json::validate_struct(&data).is_ok();
            // Only an empty key (which prost leaves out) takes a valid Struct off the fast path.
            if !has_empty_key(&data) {
                prop_assert_eq!(canonical_struct(&bytes, 1), valid);
            }
            match stored(bytes.clone()) {
                Ok(kept) => prop_assert_eq!(kept, bytes),
                Err(_) => prop_assert!(!valid),
            }
        }
    }
}
