//! Reading a provider's JSON webhook delivery into one provider-neutral event.
//!
//! This module owns the mapping from each provider's envelope (Omise, KOMOJU,
//! Stripe, Standard Webhooks) to a [`WebhookEvent`]: where the event's id,
//! type, creation time, live-mode flag, API version and payload live, and what
//! JSON types they must have. It promises that every field a provider always
//! sends is required, that a field of the wrong JSON type or an unreadable
//! timestamp is refused with an error naming the field, that the payload is
//! handed on exactly as received, and that no input makes it panic. It runs
//! after the signature has been verified and before the core accepts the
//! event, and it deliberately does not judge the characters of ids or types:
//! the core's rules for those apply to every source alike.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::signature::Provider;

/// One delivery, reduced to what every provider has in common.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// The provider's id for the event, stable across redeliveries, so it is
    /// what deduplication keys on (for Standard Webhooks, the `webhook-id`
    /// header).
    pub id: String,
    /// The provider's event type, such as `charge.create` or
    /// `payment.captured`, exactly as sent.
    pub event_type: String,
    /// When the provider says the event happened. Every supported provider
    /// sends it; it is optional so that a future provider without one fits.
    pub created: Option<DateTime<Utc>>,
    /// Whether the event comes from live (rather than test) mode, when the
    /// envelope says so; `None` for KOMOJU and Standard Webhooks, whose
    /// envelopes do not, so the caller decides from its configuration.
    pub livemode: Option<bool>,
    /// The provider API version the payload is shaped by, when the provider
    /// states one (only Stripe does, and it may send `null`).
    pub api_version: Option<String>,
    /// The event's payload object, unchanged: Omise's, KOMOJU's and Standard
    /// Webhooks' `data`, and Stripe's `data.object`.
    pub data: Map<String, Value>,
}

/// Why a delivery's body is not a well-formed envelope for its provider.
///
/// The messages name the field (by its JSON path) and what was expected, and
/// never repeat the value sent, so they are safe to return to the sender.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// A field the provider always sends is absent; it holds the field's path,
    /// such as `key` or `data.object` (or `webhook-id` for the header).
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field is present with the wrong JSON type (`null` included).
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field's path, such as `created` or `data.object`.
        field: &'static str,
        /// What it must be, phrased to follow "must be", such as "a string".
        expected: &'static str,
    },
    /// A field has the right JSON type but an unusable value, such as an
    /// unparseable timestamp or an empty id.
    #[error("field `{field}` {reason}")]
    Invalid {
        /// The field's path.
        field: &'static str,
        /// What is wrong, phrased to follow the field's name, such as "must be
        /// an RFC 3339 timestamp".
        reason: String,
    },
}

/// What the JSON-type errors say a string field must be.
const A_STRING: &str = "a string";
/// What the JSON-type errors say a boolean field must be.
const A_BOOLEAN: &str = "a boolean";
/// What the JSON-type errors say an object field must be.
const AN_OBJECT: &str = "an object";
/// What the JSON-type errors say an RFC 3339 field must be.
const AN_RFC3339_STRING: &str = "an RFC 3339 timestamp string";
/// What the JSON-type errors say a unix-seconds field must be.
const UNIX_SECONDS: &str = "an integer number of unix seconds";

/// Reads `body`, a delivery from `provider`, into a [`WebhookEvent`].
///
/// `body` must be a JSON object. `webhook_id_header` is the value of the
/// `webhook-id` header, which Standard Webhooks uses as the event id (its body
/// carries none); other providers ignore it. Fields are checked in a fixed
/// order (id, type, creation time, live mode, API version, payload), so the
/// error for a body with several problems is predictable.
pub fn parse(
    provider: Provider,
    body: &Value,
    webhook_id_header: Option<&str>,
) -> Result<WebhookEvent, EnvelopeError> {
    let envelope =
        body.as_object().ok_or(EnvelopeError::WrongType { field: "body", expected: AN_OBJECT })?;
    match provider {
        Provider::Omise => Ok(WebhookEvent {
            id: non_empty_string(envelope, "id", "id")?,
            event_type: non_empty_string(envelope, "key", "key")?,
            created: Some(rfc3339(envelope, "created")?),
            livemode: Some(boolean(envelope, "livemode")?),
            api_version: None,
            data: object(envelope, "data", "data")?.clone(),
        }),
        Provider::Komoju => Ok(WebhookEvent {
            id: non_empty_string(envelope, "id", "id")?,
            event_type: non_empty_string(envelope, "type", "type")?,
            created: Some(rfc3339(envelope, "created_at")?),
            livemode: None,
            api_version: None,
            data: object(envelope, "data", "data")?.clone(),
        }),
        Provider::Stripe => Ok(WebhookEvent {
            id: non_empty_string(envelope, "id", "id")?,
            event_type: non_empty_string(envelope, "type", "type")?,
            created: Some(unix_seconds(envelope, "created")?),
            livemode: Some(boolean(envelope, "livemode")?),
            api_version: nullable_string(envelope, "api_version")?,
            data: object(object(envelope, "data", "data")?, "object", "data.object")?.clone(),
        }),
        Provider::StandardWebhooks => {
            let id = webhook_id_header.ok_or(EnvelopeError::Missing("webhook-id"))?;
            if id.trim().is_empty() {
                return Err(empty("webhook-id"));
            }
            Ok(WebhookEvent {
                id: id.to_owned(),
                event_type: non_empty_string(envelope, "type", "type")?,
                created: Some(rfc3339(envelope, "timestamp")?),
                livemode: None,
                api_version: None,
                data: object(envelope, "data", "data")?.clone(),
            })
        }
    }
}

/// Looks up a required field; `path` is how errors name it, which differs
/// from `key` for nested fields such as `data.object`.
fn required<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a Value, EnvelopeError> {
    map.get(key).ok_or(EnvelopeError::Missing(path))
}

/// The error for an id or type that is present but empty (or only spaces),
/// which no provider sends and which would be useless as a key.
fn empty(field: &'static str) -> EnvelopeError {
    EnvelopeError::Invalid { field, reason: "must not be empty".to_owned() }
}

/// Reads a required string that must have some content. Only emptiness is
/// judged here; which characters are allowed is the core's decision.
fn non_empty_string(
    map: &Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<String, EnvelopeError> {
    let text = required(map, key, path)?
        .as_str()
        .ok_or(EnvelopeError::WrongType { field: path, expected: A_STRING })?;
    if text.trim().is_empty() {
        return Err(empty(path));
    }
    Ok(text.to_owned())
}

/// Reads an optional string for which absence and `null` both mean "not
/// stated", as Stripe's `api_version` does for events not tied to a version.
fn nullable_string(
    map: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, EnvelopeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(EnvelopeError::WrongType { field: key, expected: A_STRING }),
    }
}

/// Reads a required boolean.
fn boolean(map: &Map<String, Value>, key: &'static str) -> Result<bool, EnvelopeError> {
    required(map, key, key)?
        .as_bool()
        .ok_or(EnvelopeError::WrongType { field: key, expected: A_BOOLEAN })
}

/// Reads a required object, borrowed so that a nested lookup (Stripe's
/// `data.object`) clones only the part it keeps.
fn object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a Map<String, Value>, EnvelopeError> {
    required(map, key, path)?
        .as_object()
        .ok_or(EnvelopeError::WrongType { field: path, expected: AN_OBJECT })
}

/// Reads a required RFC 3339 timestamp string (any offset) as UTC.
fn rfc3339(map: &Map<String, Value>, key: &'static str) -> Result<DateTime<Utc>, EnvelopeError> {
    let text = required(map, key, key)?
        .as_str()
        .ok_or(EnvelopeError::WrongType { field: key, expected: AN_RFC3339_STRING })?;
    DateTime::parse_from_rfc3339(text).map(|time| time.with_timezone(&Utc)).map_err(|_| {
        EnvelopeError::Invalid { field: key, reason: "must be an RFC 3339 timestamp".to_owned() }
    })
}

/// Reads a required integer count of unix seconds, as Stripe sends `created`.
/// A fractional or too-large number is the wrong type; an integer beyond the
/// range of dates chrono represents is invalid.
fn unix_seconds(
    map: &Map<String, Value>,
    key: &'static str,
) -> Result<DateTime<Utc>, EnvelopeError> {
    let seconds = required(map, key, key)?
        .as_i64()
        .ok_or(EnvelopeError::WrongType { field: key, expected: UNIX_SECONDS })?;
    DateTime::from_timestamp(seconds, 0).ok_or_else(|| EnvelopeError::Invalid {
        field: key,
        reason: "is outside the range of representable dates".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const OMISE_SAMPLE: &str = r#"{"object":"event","id":"evnt_test_56vp5pfwjf1fqjn4ryy","livemode":false,"location":"/events/evnt_test_56vp5pfwjf1fqjn4ryy","key":"charge.create","created":"2017-02-03T13:52:54Z","data":{"object":"charge","id":"chrg_test_56vp5pdrw28e2sgyr51","livemode":false,"amount":100000,"currency":"jpy","status":"successful","card":{"object":"card","last_digits":"4242","expiration_year":2019},"customer":null}}"#;

    const KOMOJU_SAMPLE: &str = r#"{"id":"bmon6b8awbd5wftxlpjxzpjte","type":"payment.captured","resource":"event","data":{"id":"5fa8jqcd5hemrwmd2ay9lgqcm","resource":"payment","status":"captured","amount":1000,"currency":"JPY","payment_details":{"type":"konbini","store":"lawson"}},"created_at":"2018-11-13T06:20:21Z"}"#;

    const STRIPE_SAMPLE: &str = r#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","api_version":"2019-02-19","created":1686089970,"data":{"object":{"id":"seti_1NG8Du2eZvKYlo2C9XMqbR0x","object":"setup_intent","status":"requires_confirmation","metadata":{}},"previous_attributes":{"status":"requires_payment_method"}},"livemode":false,"pending_webhooks":0,"request":{"id":null,"idempotency_key":null},"type":"setup_intent.created"}"#;

    const STANDARD_SAMPLE: &str = r#"{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52-5198-4599-803e-771906343485","type":"contact"}}"#;

    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";

    fn sample(provider: Provider) -> Value {
        let text = match provider {
            Provider::Omise => OMISE_SAMPLE,
            Provider::Komoju => KOMOJU_SAMPLE,
            Provider::Stripe => STRIPE_SAMPLE,
            Provider::StandardWebhooks => STANDARD_SAMPLE,
        };
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    fn parse_sample(provider: Provider, body: &Value) -> Result<WebhookEvent, EnvelopeError> {
        parse(provider, body, Some(MSG_ID))
    }

    fn time(rfc3339: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(rfc3339).ok().map(|t| t.with_timezone(&Utc))
    }

    fn object_of(value: &Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    /// Returns `body` with the field at `path` (dot-separated) replaced, or
    /// removed when `replacement` is `None`.
    fn edited(body: &Value, path: &str, replacement: Option<Value>) -> Value {
        let mut body = body.clone();
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().unwrap_or_default();
        let mut cursor = &mut body;
        for key in keys {
            cursor = match cursor.get_mut(key) {
                Some(next) => next,
                None => return body,
            };
        }
        if let Some(map) = cursor.as_object_mut() {
            match replacement {
                Some(value) => {
                    map.insert(last.to_owned(), value);
                }
                None => {
                    map.remove(last);
                }
            }
        }
        body
    }

    // ---- Happy paths ----

    #[test]
    fn omise_sample_parses_with_data_unchanged() {
        let body = sample(Provider::Omise);
        let event = parse(Provider::Omise, &body, None);
        let expected_data = object_of(&body["data"]);
        assert_eq!(
            event,
            Ok(WebhookEvent {
                id: "evnt_test_56vp5pfwjf1fqjn4ryy".to_owned(),
                event_type: "charge.create".to_owned(),
                created: time("2017-02-03T13:52:54Z"),
                livemode: Some(false),
                api_version: None,
                data: expected_data,
            })
        );
        // The nested payload survives byte for byte when re-serialised.
        let data = event.map(|e| Value::Object(e.data)).unwrap_or_default();
        assert_eq!(
            data,
            json!({"object":"charge","id":"chrg_test_56vp5pdrw28e2sgyr51","livemode":false,
                   "amount":100000,"currency":"jpy","status":"successful",
                   "card":{"object":"card","last_digits":"4242","expiration_year":2019},
                   "customer":null})
        );
    }

    #[test]
    fn komoju_sample_parses() {
        let body = sample(Provider::Komoju);
        assert_eq!(
            parse(Provider::Komoju, &body, None),
            Ok(WebhookEvent {
                id: "bmon6b8awbd5wftxlpjxzpjte".to_owned(),
                event_type: "payment.captured".to_owned(),
                created: time("2018-11-13T06:20:21Z"),
                livemode: None,
                api_version: None,
                data: object_of(&body["data"]),
            })
        );
    }

    #[test]
    fn stripe_sample_parses_data_object() {
        let body = sample(Provider::Stripe);
        assert_eq!(
            parse(Provider::Stripe, &body, None),
            Ok(WebhookEvent {
                id: "evt_1NG8Du2eZvKYlo2CUI79vXWy".to_owned(),
                event_type: "setup_intent.created".to_owned(),
                created: DateTime::from_timestamp(1_686_089_970, 0),
                livemode: Some(false),
                api_version: Some("2019-02-19".to_owned()),
                data: object_of(&body["data"]["object"]),
            })
        );
    }

    #[test]
    fn stripe_api_version_may_be_null_or_absent() {
        let body = sample(Provider::Stripe);
        for variant in
            [edited(&body, "api_version", Some(Value::Null)), edited(&body, "api_version", None)]
        {
            let event = parse(Provider::Stripe, &variant, None);
            assert_eq!(event.map(|e| e.api_version), Ok(None));
        }
        assert_eq!(
            parse(Provider::Stripe, &edited(&body, "api_version", Some(json!(2019))), None),
            Err(EnvelopeError::WrongType { field: "api_version", expected: "a string" })
        );
    }

    #[test]
    fn standard_webhooks_sample_parses_with_header_id() {
        let body = sample(Provider::StandardWebhooks);
        assert_eq!(
            parse(Provider::StandardWebhooks, &body, Some(MSG_ID)),
            Ok(WebhookEvent {
                id: MSG_ID.to_owned(),
                event_type: "contact.created".to_owned(),
                created: time("2022-11-03T20:26:10.344522Z"),
                livemode: None,
                api_version: None,
                data: object_of(&body["data"]),
            })
        );
    }

    #[test]
    fn standard_webhooks_needs_a_non_empty_id_header() {
        let body = sample(Provider::StandardWebhooks);
        assert_eq!(
            parse(Provider::StandardWebhooks, &body, None),
            Err(EnvelopeError::Missing("webhook-id"))
        );
        assert_eq!(
            parse(Provider::StandardWebhooks, &body, Some(" ")),
            Err(EnvelopeError::Invalid {
                field: "webhook-id",
                reason: "must not be empty".to_owned()
            })
        );
    }

    #[test]
    fn timestamps_with_offsets_are_converted_to_utc() {
        let body = edited(
            &sample(Provider::Komoju),
            "created_at",
            Some(json!("2018-11-13T15:20:21+09:00")),
        );
        let created = parse(Provider::Komoju, &body, None).map(|e| e.created);
        assert_eq!(created, Ok(time("2018-11-13T06:20:21Z")));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        for provider in Provider::ALL {
            let body = edited(&sample(provider), "something_new", Some(json!({"x": 1})));
            assert!(parse_sample(provider, &body).is_ok(), "{provider}");
        }
    }

    // ---- Missing fields ----

    /// The fields each provider always sends, by path.
    fn required_fields(provider: Provider) -> &'static [&'static str] {
        match provider {
            Provider::Omise => &["id", "key", "created", "livemode", "data"],
            Provider::Komoju => &["id", "type", "created_at", "data"],
            Provider::Stripe => &["id", "type", "created", "livemode", "data", "data.object"],
            Provider::StandardWebhooks => &["type", "timestamp", "data"],
        }
    }

    #[test]
    fn each_missing_field_is_named() {
        for provider in Provider::ALL {
            let body = sample(provider);
            for &path in required_fields(provider) {
                let result = parse_sample(provider, &edited(&body, path, None));
                assert_eq!(result, Err(EnvelopeError::Missing(path)), "{provider} {path}");
            }
        }
    }

    #[test]
    fn missing_message_names_the_field() {
        let body = edited(&sample(Provider::Omise), "key", None);
        let message = parse(Provider::Omise, &body, None).err().map(|e| e.to_string());
        assert_eq!(message.as_deref(), Some("missing field `key`"));
    }

    // ---- Wrong types ----

    /// For each provider: a field, a value of the wrong JSON type, and what
    /// the error must say the field should be.
    fn wrong_types(provider: Provider) -> Vec<(&'static str, Value, &'static str)> {
        let common_id = vec![("id", json!(42), "a string"), ("id", Value::Null, "a string")];
        let specific = match provider {
            Provider::Omise => vec![
                ("key", json!(["charge.create"]), "a string"),
                ("created", json!(1_486_129_974), "an RFC 3339 timestamp string"),
                ("livemode", json!("false"), "a boolean"),
                ("livemode", Value::Null, "a boolean"),
                ("data", json!("charge"), "an object"),
                ("data", json!([]), "an object"),
            ],
            Provider::Komoju => vec![
                ("type", json!(true), "a string"),
                ("created_at", Value::Null, "an RFC 3339 timestamp string"),
                ("data", json!(1), "an object"),
            ],
            Provider::Stripe => vec![
                ("type", json!({}), "a string"),
                ("created", json!("1686089970"), "an integer number of unix seconds"),
                ("created", json!(1_686_089_970.5), "an integer number of unix seconds"),
                ("created", json!(u64::MAX), "an integer number of unix seconds"),
                ("livemode", json!(0), "a boolean"),
                ("data", json!(null), "an object"),
                ("data.object", json!("setup_intent"), "an object"),
            ],
            Provider::StandardWebhooks => vec![
                ("type", json!(7), "a string"),
                ("timestamp", json!(1_667_506_770), "an RFC 3339 timestamp string"),
                ("data", json!([{"id": 1}]), "an object"),
            ],
        };
        match provider {
            Provider::StandardWebhooks => specific,
            _ => common_id.into_iter().chain(specific).collect(),
        }
    }

    #[test]
    fn each_wrong_type_is_named() {
        for provider in Provider::ALL {
            let body = sample(provider);
            for (field, value, expected) in wrong_types(provider) {
                let result = parse_sample(provider, &edited(&body, field, Some(value.clone())));
                assert_eq!(
                    result,
                    Err(EnvelopeError::WrongType { field, expected }),
                    "{provider} {field} = {value}"
                );
            }
        }
    }

    #[test]
    fn non_object_bodies_are_refused() {
        for provider in Provider::ALL {
            for body in [json!(null), json!([]), json!("event"), json!(1), json!(true)] {
                let result = parse_sample(provider, &body);
                assert_eq!(
                    result,
                    Err(EnvelopeError::WrongType { field: "body", expected: "an object" }),
                    "{provider} {body}"
                );
            }
        }
    }

    // ---- Invalid values ----

    #[test]
    fn bad_rfc3339_timestamps_are_invalid() {
        let cases = [
            (Provider::Omise, "created"),
            (Provider::Komoju, "created_at"),
            (Provider::StandardWebhooks, "timestamp"),
        ];
        for (provider, field) in cases {
            for bad in [
                "",
                "yesterday",
                "2017-02-03",
                "2017-02-03 13:52:54",
                "2017-02-03T13:52:54",
                "2017-13-03T13:52:54Z",
                "2017-02-30T13:52:54Z",
                "1486129974",
            ] {
                let body = edited(&sample(provider), field, Some(json!(bad)));
                let result = parse_sample(provider, &body);
                assert_eq!(
                    result,
                    Err(EnvelopeError::Invalid {
                        field,
                        reason: "must be an RFC 3339 timestamp".to_owned()
                    }),
                    "{provider} {bad:?}"
                );
            }
        }
        let body = edited(&sample(Provider::Omise), "created", Some(json!("soon")));
        let message = parse(Provider::Omise, &body, None).err().map(|e| e.to_string());
        assert_eq!(message.as_deref(), Some("field `created` must be an RFC 3339 timestamp"));
    }

    #[test]
    fn stripe_created_outside_chrono_range_is_invalid() {
        let body = edited(&sample(Provider::Stripe), "created", Some(json!(i64::MAX)));
        assert!(matches!(
            parse(Provider::Stripe, &body, None),
            Err(EnvelopeError::Invalid { field: "created", .. })
        ));
    }

    #[test]
    fn empty_ids_and_types_are_invalid() {
        for provider in Provider::ALL {
            let fields: &[&'static str] = match provider {
                Provider::Omise => &["id", "key"],
                Provider::Komoju | Provider::Stripe => &["id", "type"],
                Provider::StandardWebhooks => &["type"],
            };
            for &field in fields {
                for blank in ["", "   "] {
                    let body = edited(&sample(provider), field, Some(json!(blank)));
                    assert_eq!(
                        parse_sample(provider, &body),
                        Err(EnvelopeError::Invalid {
                            field,
                            reason: "must not be empty".to_owned()
                        }),
                        "{provider} {field}"
                    );
                }
            }
        }
    }

    #[test]
    fn display_messages() {
        assert_eq!(
            EnvelopeError::Missing("data.object").to_string(),
            "missing field `data.object`"
        );
        assert_eq!(
            EnvelopeError::WrongType { field: "livemode", expected: "a boolean" }.to_string(),
            "field `livemode` must be a boolean"
        );
    }

    // ---- Properties ----

    /// Keys that real envelopes use, mixed with arbitrary ones, so that
    /// random objects often look like a real envelope and reach deep checks.
    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "id", "key", "type", "created", "created_at", "timestamp",
                "livemode", "api_version", "data", "object",
            ])
            .prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    /// Arbitrary JSON values of bounded depth and size.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| {
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }),
            any::<String>().prop_map(Value::String),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((arb_key(), inner), 0..8)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(
            provider in prop::sample::select(Provider::ALL.to_vec()),
            body in arb_json(),
            header in prop::option::of(any::<String>()),
        ) {
            let result = parse(provider, &body, header.as_deref());
            // Whatever comes back, a success must honour the promises.
            if let Ok(event) = result {
                prop_assert!(!event.id.trim().is_empty());
                prop_assert!(!event.event_type.trim().is_empty());
            }
        }

        #[test]
        fn a_sample_with_one_field_replaced_never_panics(
            provider in prop::sample::select(Provider::ALL.to_vec()),
            field in arb_key(),
            value in arb_json(),
        ) {
            let body = edited(&sample(provider), &field, Some(value));
            let _ = parse_sample(provider, &body);
        }
    }
}
