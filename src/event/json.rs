//! Conversion between JSON (`serde_json::Value`) and `google.protobuf.Struct`, and the checks
//! that keep `data` from being silently altered.
//!
//! Struct numbers are IEEE-754 doubles. On the JSON paths into eventsd (HTTP ingest) an
//! integer whose magnitude is above 2^53 has no exact double, so it is rejected with the path
//! of the offending field instead of being rounded. Over gRPC the client has already made its
//! doubles; eventsd stores them unchanged and only rejects what JSON cannot print back (NaN,
//! infinities, a Value with no kind).

use prost_types::{value::Kind, ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// Deepest nesting accepted in `data`, counting objects and lists. Protobuf decoders stop at
/// 100 nested messages, and each level of a Struct costs up to three (map entry, Value,
/// Struct) below SubscribeEventsResponse → Event: 32 keeps every stored event readable by
/// every RPC and every client.
pub const MAX_DEPTH: usize = 32;
/// Largest integer magnitude a double holds exactly.
const MAX_EXACT_INT: u64 = 1 << 53;

/// Why a value cannot be accepted, and where in it.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonError {
    /// Path below the root, such as `.card.expiration_year` or `.refunds[2]`.
    pub at: String,
    /// What is wrong there.
    pub reason: String,
}

impl JsonError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        JsonError { at: String::new(), reason: reason.into() }
    }

    fn under(mut self, segment: &str) -> Self {
        self.at.insert_str(0, segment);
        self
    }

    /// The full field path, rooted at `root` (for example `data.card.brand`).
    pub fn path(&self, root: &str) -> String {
        format!("{root}{}", self.at)
    }
}

fn key_segment(key: &str) -> String {
    format!(".{key}")
}

/// Checks a Struct that arrived over gRPC: finite numbers, every Value has a kind, bounded depth.
pub fn validate_struct(s: &Struct) -> Result<(), JsonError> {
    validate_fields(s, 1)
}

fn validate_fields(s: &Struct, depth: usize) -> Result<(), JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::new(format!("nests deeper than {MAX_DEPTH} levels")));
    }
    for (k, v) in &s.fields {
        validate_value(v, depth).map_err(|e| e.under(&key_segment(k)))?;
    }
    Ok(())
}

fn validate_value(v: &Value, depth: usize) -> Result<(), JsonError> {
    match &v.kind {
        None => Err(JsonError::new("is a Value with no kind set")),
        Some(Kind::NumberValue(n)) if !n.is_finite() => {
            Err(JsonError::new("is not a finite number (JSON has no NaN or infinity)"))
        }
        Some(Kind::StructValue(s)) => validate_fields(s, depth + 1),
        Some(Kind::ListValue(l)) => {
            if depth + 1 > MAX_DEPTH {
                return Err(JsonError::new(format!("nests deeper than {MAX_DEPTH} levels")));
            }
            for (i, item) in l.values.iter().enumerate() {
                validate_value(item, depth + 1).map_err(|e| e.under(&format!("[{i}]")))?;
            }
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Converts a JSON object to a Struct exactly, or says which field cannot be held exactly.
pub fn object_to_struct(map: &Map<String, Json>) -> Result<Struct, JsonError> {
    fields_to_struct(map, 1)
}

fn fields_to_struct(map: &Map<String, Json>, depth: usize) -> Result<Struct, JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::new(format!("nests deeper than {MAX_DEPTH} levels")));
    }
    let mut fields = std::collections::BTreeMap::new();
    for (k, v) in map {
        let value = json_to_value(v, depth).map_err(|e| e.under(&key_segment(k)))?;
        fields.insert(k.clone(), value);
    }
    Ok(Struct { fields })
}

fn json_to_value(v: &Json, depth: usize) -> Result<Value, JsonError> {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Number(n) => Kind::NumberValue(exact_double(n)?),
        Json::Object(m) => Kind::StructValue(fields_to_struct(m, depth + 1)?),
        Json::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(JsonError::new(format!("nests deeper than {MAX_DEPTH} levels")));
            }
            let values = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    json_to_value(item, depth + 1).map_err(|e| e.under(&format!("[{i}]")))
                })
                .collect::<Result<_, _>>()?;
            Kind::ListValue(ListValue { values })
        }
    };
    Ok(Value { kind: Some(kind) })
}

fn exact_double(n: &Number) -> Result<f64, JsonError> {
    let too_big = || {
        JsonError::new(format!(
            "integer {n} is beyond 2^53 and cannot be stored exactly; send it as a string"
        ))
    };
    if let Some(u) = n.as_u64() {
        return if u <= MAX_EXACT_INT { Ok(u as f64) } else { Err(too_big()) };
    }
    if let Some(i) = n.as_i64() {
        return if i.unsigned_abs() <= MAX_EXACT_INT { Ok(i as f64) } else { Err(too_big()) };
    }
    // An integer literal beyond the 64-bit range arrives here as a float; a whole number this
    // large cannot be promised exact either way, so it is refused like the integers above.
    match n.as_f64() {
        Some(f) if f.is_finite() && !(f.fract() == 0.0 && f.abs() > MAX_EXACT_INT as f64) => Ok(f),
        Some(f) if f.is_finite() => Err(too_big()),
        _ => Err(JsonError::new(format!("number {n} is out of range"))),
    }
}

/// Converts a Struct to a JSON object. Whole doubles within 2^53 print as integers, so a
/// JSON integer that came in goes out as the same integer.
pub fn struct_to_object(s: &Struct) -> Map<String, Json> {
    s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()
}

/// Converts one Value to JSON (a Value with no kind, rejected at ingest, prints as null).
pub fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_object(s)),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// A double as JSON: whole numbers within 2^53 as integers, others as serde_json prints them.
pub(crate) fn number_to_json(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT as f64 {
        Json::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

/// An event in the proto3 JSON mapping (lowerCamelCase names, RFC 3339 times, `sequence` as
/// a string), the same shape grpcurl prints, with every field present.
pub fn event_to_json(event: &crate::proto::Event) -> Json {
    let ts = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map_or(Json::Null, |t| Json::String(super::time::to_rfc3339(t)))
    };
    serde_json::json!({
        "id": event.id,
        "type": event.r#type,
        "created": ts(&event.created),
        "received": ts(&event.received),
        "livemode": event.livemode,
        "data": event.data.as_ref().map_or(Json::Null, |d| Json::Object(struct_to_object(d))),
        "apiVersion": event.api_version,
        "location": event.location,
        "sequence": event.sequence.to_string(),
        "source": event.source,
    })
}

/// A stored event in the [`event_to_json`] shape, written from its stored bytes (`data`
/// transcoded once per event and shared), keys in byte order as serde_json prints them.
pub fn write_stored_event(
    event: &crate::store::StoredEvent,
    out: &mut Vec<u8>,
) -> Result<(), crate::error::Error> {
    use super::time::to_rfc3339;
    let data = event.data_json()?;
    super::wire_json::ObjectWriter::new(out)
        .str("apiVersion", event.api_version())
        .str("created", &to_rfc3339(&event.created()))
        .raw("data", data.map_or(&b"null"[..], |d| &d[..]))
        .str("id", event.id())
        .bool("livemode", event.livemode())
        .str("location", event.location())
        .str("received", &to_rfc3339(&event.received()))
        .str("sequence", &event.sequence().to_string())
        .str("source", event.source())
        .str("type", event.event_type())
        .finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_struct_unchanged() {
        let doc = json!({"amount": 100000, "neg": -42, "f": 1.5, "s": "x", "n": null,
            "b": true, "list": [1, {"deep": [2.25, "y"]}], "empty": {}});
        let s = object_to_struct(doc.as_object().unwrap()).unwrap();
        assert_eq!(Json::Object(struct_to_object(&s)), doc);
    }

    #[test]
    fn integers_beyond_2_pow_53_are_rejected_with_their_path() {
        let doc = json!({"card": {"ids": [1, 9007199254740993u64]}});
        let err = object_to_struct(doc.as_object().unwrap()).unwrap_err();
        assert_eq!(err.path("data"), "data.card.ids[1]");
        assert!(err.reason.contains("2^53"));
        let edge = json!({"x": 9007199254740992u64, "y": -9007199254740992i64});
        assert!(object_to_struct(edge.as_object().unwrap()).is_ok());
    }

    #[test]
    fn non_finite_numbers_and_empty_values_are_rejected() {
        let mut s = Struct::default();
        s.fields.insert("x".into(), Value { kind: Some(Kind::NumberValue(f64::NAN)) });
        assert_eq!(validate_struct(&s).unwrap_err().path("data"), "data.x");
        let mut s = Struct::default();
        s.fields.insert("y".into(), Value { kind: None });
        assert!(validate_struct(&s).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let mut doc = json!({});
        for _ in 0..MAX_DEPTH {
            doc = json!({ "a": doc });
        }
        assert!(object_to_struct(doc.as_object().unwrap()).is_err());
    }
}
