//! Property tests at the boundary: whatever a client sends, validation never panics, and a
//! refusal is always INVALID_ARGUMENT naming a field. Covers publish requests, ListEvents
//! requests and page tokens, and filters (webhook envelopes and signatures have their own
//! property tests beside their code).

use eventsd::event::{EventLimits, Filter, NewEvent};
use eventsd::proto::{ListEventsRequest, PublishEventRequest};
use eventsd::service::list::{PageRequest, PageTokens};
use eventsd::Error;
use proptest::prelude::*;
use prost_types::{value::Kind, ListValue, Struct, Timestamp, Value};

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value { kind: None }),
        any::<bool>().prop_map(|b| Value { kind: Some(Kind::BoolValue(b)) }),
        any::<f64>().prop_map(|n| Value { kind: Some(Kind::NumberValue(n)) }),
        ".{0,20}".prop_map(|s| Value { kind: Some(Kind::StringValue(s)) }),
        Just(Value { kind: Some(Kind::NullValue(0)) }),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|values| Value { kind: Some(Kind::ListValue(ListValue { values })) }),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|fields| Value { kind: Some(Kind::StructValue(Struct { fields })) }),
        ]
    })
}

fn any_timestamp() -> impl Strategy<Value = Option<Timestamp>> {
    prop::option::of(
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }),
    )
}

fn any_publish() -> impl Strategy<Value = PublishEventRequest> {
    (
        prop_oneof![Just(String::new()), "[A-Za-z0-9_.:-]{1,130}", ".{0,40}"],
        prop_oneof![Just(String::new()), "[a-z.]{1,20}", ".{0,40}"],
        prop::option::of(prop::collection::btree_map(".{0,8}", any_value(), 0..5)),
        any_timestamp(),
        any::<bool>(),
        ".{0,70}",
        ".{0,70}",
    )
        .prop_map(|(id, r#type, data, created, livemode, api_version, source)| {
            PublishEventRequest {
                id,
                r#type,
                data: data.map(|fields| Struct { fields }),
                created,
                livemode,
                api_version,
                source,
            }
        })
}

fn invalid_field(err: &Error) -> Option<&str> {
    match err {
        Error::InvalidArgument { field, .. } => Some(field),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn publish_validation_never_panics_and_names_a_field(req in any_publish()) {
        let limits = EventLimits { max_data_bytes: 4096 };
        if let Err(err) = NewEvent::from_request(req.into(), &limits, "") {
            let field = invalid_field(&err);
            prop_assert!(field.is_some_and(|f| !f.is_empty()), "{err:?}");
        }
    }

    #[test]
    fn batch_validation_names_the_entry(reqs in prop::collection::vec(any_publish(), 0..5)) {
        let limits = EventLimits { max_data_bytes: 4096 };
        if let Err(err) = NewEvent::batch_from_requests(reqs.into_iter().map(Into::into).collect(), &limits) {
            let field = invalid_field(&err).unwrap_or_default().to_string();
            prop_assert!(field.starts_with("events"), "{err:?}");
        }
    }

    #[test]
    fn list_requests_and_page_tokens_never_panic(
        from in any_timestamp(), to in any_timestamp(), offset in any::<i32>(), limit in any::<i32>(),
        order in any::<i32>(), types in prop::collection::vec(".{0,12}", 0..3),
        livemode in prop::option::of(any::<bool>()), page_token in ".{0,80}",
    ) {
        let req = ListEventsRequest { from, to, offset, limit, order, types, livemode, page_token, source: String::new() };
        let now = Timestamp { seconds: 1_700_000_000, nanos: 0 };
        if let Err(err) = PageRequest::new(req, now, &PageTokens::new([1; 32])) {
            prop_assert!(invalid_field(&err).is_some(), "{err:?}");
        }
    }

    #[test]
    fn filters_accept_exact_names_and_trailing_wildcards_only(pattern in ".{0,20}") {
        match Filter::new(std::slice::from_ref(&pattern), None) {
            Ok(_) => prop_assert!(!pattern.strip_suffix('*').unwrap_or(&pattern).contains('*')),
            Err(err) => prop_assert_eq!(invalid_field(&err), Some("types[0]")),
        }
    }
}
