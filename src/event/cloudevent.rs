//! CloudEvents 1.0: an eventsd event in the protobuf format (`io.cloudevents.v1.CloudEvent`)
//! and in the JSON structured format (`application/cloudevents+json`).
//!
//! Mapping: `id` → id; `source` → source (`eventsd` when empty); `type` → type; `created` →
//! time; the data object's `id` (when it is a string) → subject; `data` → data as JSON
//! (`datacontenttype: application/json`); and the extension attributes `livemode` (boolean),
//! `location`, `apiversion` and `sequence` (strings: CloudEvents integers are 32-bit, too small
//! for a sequence).

use std::collections::HashMap;

use prost_types::value::Kind;
use serde_json::{json, Map, Value as Json};

use crate::event::json::struct_to_object;
use crate::event::time;
use crate::proto::io::cloudevents::v1::cloud_event::cloud_event_attribute_value::Attr;
use crate::proto::io::cloudevents::v1::cloud_event::{CloudEventAttributeValue, Data};
use crate::proto::io::cloudevents::v1::CloudEvent;
use crate::proto::Event;

/// The CloudEvents version eventsd speaks.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of one CloudEvent in the JSON format.
pub const JSON_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Content type of a JSON batch of CloudEvents.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

fn source(event: &Event) -> String {
    if event.source.is_empty() {
        "eventsd".to_string()
    } else {
        event.source.clone()
    }
}

fn subject(event: &Event) -> Option<String> {
    match event.data.as_ref()?.fields.get("id")?.kind.as_ref()? {
        Kind::StringValue(id) => Some(id.clone()),
        _ => None,
    }
}

fn data_json(event: &Event) -> Map<String, Json> {
    event.data.as_ref().map(struct_to_object).unwrap_or_default()
}

/// The event as a protobuf CloudEvent.
pub fn to_proto(event: &Event) -> CloudEvent {
    let string = |s: String| CloudEventAttributeValue { attr: Some(Attr::CeString(s)) };
    let mut attributes = HashMap::new();
    if let Some(created) = event.created {
        attributes.insert(
            "time".to_string(),
            CloudEventAttributeValue { attr: Some(Attr::CeTimestamp(created)) },
        );
    }
    if let Some(subject) = subject(event) {
        attributes.insert("subject".to_string(), string(subject));
    }
    attributes.insert("datacontenttype".to_string(), string("application/json".into()));
    attributes.insert(
        "livemode".to_string(),
        CloudEventAttributeValue { attr: Some(Attr::CeBoolean(event.livemode)) },
    );
    attributes.insert("location".to_string(), string(event.location.clone()));
    attributes.insert("sequence".to_string(), string(event.sequence.to_string()));
    if !event.api_version.is_empty() {
        attributes.insert("apiversion".to_string(), string(event.api_version.clone()));
    }
    CloudEvent {
        id: event.id.clone(),
        source: source(event),
        spec_version: SPEC_VERSION.to_string(),
        r#type: event.r#type.clone(),
        attributes,
        data: Some(Data::TextData(Json::Object(data_json(event)).to_string())),
    }
}

/// The event in the CloudEvents JSON structured format.
pub fn to_json(event: &Event) -> Json {
    let mut ce = json!({
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": source(event),
        "type": event.r#type,
        "datacontenttype": "application/json",
        "data": data_json(event),
        "livemode": event.livemode,
        "location": event.location,
        "sequence": event.sequence.to_string(),
    });
    if let Some(created) = &event.created {
        ce["time"] = Json::String(time::to_rfc3339(created));
    }
    if let Some(subject) = subject(event) {
        ce["subject"] = Json::String(subject);
    }
    if !event.api_version.is_empty() {
        ce["apiversion"] = Json::String(event.api_version.clone());
    }
    ce
}

/// A protobuf CloudEvent in the JSON structured format (what `eventsd tail --cloudevents`
/// prints). A text payload that is JSON is embedded as JSON.
pub fn proto_to_json(ce: &CloudEvent) -> Json {
    let mut out = Map::new();
    out.insert("specversion".into(), Json::String(ce.spec_version.clone()));
    out.insert("id".into(), Json::String(ce.id.clone()));
    out.insert("source".into(), Json::String(ce.source.clone()));
    out.insert("type".into(), Json::String(ce.r#type.clone()));
    let mut names: Vec<&String> = ce.attributes.keys().collect();
    names.sort();
    for name in names {
        let value = match ce.attributes[name].attr.as_ref() {
            Some(Attr::CeBoolean(b)) => Json::Bool(*b),
            Some(Attr::CeInteger(i)) => json!(i),
            Some(Attr::CeString(s)) | Some(Attr::CeUri(s)) | Some(Attr::CeUriRef(s)) => {
                Json::String(s.clone())
            }
            Some(Attr::CeBytes(b)) => {
                Json::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b))
            }
            Some(Attr::CeTimestamp(t)) => Json::String(time::to_rfc3339(t)),
            None => Json::Null,
        };
        out.insert(name.clone(), value);
    }
    match &ce.data {
        Some(Data::TextData(text)) => {
            let data = serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.clone()));
            out.insert("data".into(), data);
        }
        Some(Data::BinaryData(bytes)) => {
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
            out.insert("data_base64".into(), Json::String(encoded));
        }
        Some(Data::ProtoData(_)) | None => {}
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::json::object_to_struct;

    fn sample() -> Event {
        let data = json!({"object": "charge", "id": "chrg_test_1", "amount": 100000});
        Event {
            id: "evnt_test_1".into(),
            r#type: "charge.create".into(),
            created: Some(prost_types::Timestamp { seconds: 1_486_129_974, nanos: 0 }),
            received: None,
            livemode: false,
            data: Some(object_to_struct(data.as_object().unwrap()).unwrap()),
            api_version: "2019-05-29".into(),
            location: "/events/evnt_test_1".into(),
            sequence: 7,
            source: "omise".into(),
        }
    }

    #[test]
    fn the_protobuf_and_json_forms_carry_the_same_attributes() {
        let event = sample();
        let from_proto = proto_to_json(&to_proto(&event));
        assert_eq!(from_proto, to_json(&event));
        assert_eq!(from_proto["time"], "2017-02-03T13:52:54Z");
        assert_eq!(from_proto["subject"], "chrg_test_1");
        assert_eq!(from_proto["sequence"], "7");
        assert_eq!(from_proto["livemode"], false);
        assert_eq!(from_proto["data"]["amount"], 100000);
    }
}
