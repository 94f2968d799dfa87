//! PublishEvent, PublishEvents and GetEvent: round trips, generated and provider ids,
//! idempotent repeats and conflicts, atomic ordered batches, provider payloads unchanged.

use crate::helpers::{jetstream_urls, spawn_app, spawn_app_with};
use crate::support::{
    assert_rejected, at, event, fixture, ids, json_struct, publish, publish_batch, rfc3339,
    sequences, stored_total, struct_json, T0,
};
use eventsd::proto::{GetEventRequest, PublishEventRequest, PublishEventsRequest};
use prost::Message;
use prost_types::{value::Kind, Struct, Timestamp, Value};
use serde_json::json;
use tonic::Code;

fn data(amount: f64) -> Struct {
    let mut s = Struct::default();
    s.fields.insert("amount".into(), Value { kind: Some(Kind::NumberValue(amount)) });
    s
}

#[tokio::test]
async fn a_published_event_can_be_fetched_by_its_id() {
    let mut app = spawn_app().await;
    let published = app
        .client
        .publish_event(PublishEventRequest {
            r#type: "charge.create".into(),
            data: Some(data(100.0)),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner();
    assert!(published.id.starts_with("evnt_test_"), "{}", published.id);
    assert_eq!(published.sequence, 1);
    assert_eq!(published.location, format!("/events/{}", published.id));

    let fetched = app
        .client
        .get_event(GetEventRequest { id: published.id.clone(), livemode: None })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, published);
}

#[tokio::test]
async fn generated_ids_start_with_evnt_for_live_and_evnt_test_for_test_events() {
    // Arrange
    let mut app = spawn_app().await;

    // Act
    let live =
        publish(&mut app.client, PublishEventRequest { livemode: true, ..event("charge.create") })
            .await;
    let test = publish(&mut app.client, event("charge.create")).await;

    // Assert
    let base36 =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
    let live_rest = live.id.strip_prefix("evnt_").expect("live ids start with evnt_");
    assert!(!live_rest.starts_with("test_"), "a live id is not a test id: {}", live.id);
    assert!(base36(live_rest), "{}", live.id);
    let test_rest = test.id.strip_prefix("evnt_test_").expect("test ids start with evnt_test_");
    assert!(base36(test_rest), "{}", test.id);
    assert_ne!(live.id, test.id);
    assert!(live.livemode);
    assert!(!test.livemode);
}

#[tokio::test]
async fn ids_shaped_like_generated_ones_are_found_whichever_event_they_name() {
    // Generated ids end with their event's sequence, so the index keeps no entry for them;
    // a caller's id of the same shape must still be found, and never mistaken for another.
    let mut app = spawn_app().await;
    let generated = publish(&mut app.client, event("charge.create")).await;
    assert_eq!(generated.sequence, 1);
    let rest = generated.id.strip_prefix("evnt_test_").expect("a test id");
    if jetstream_urls().is_none() {
        // The embedded store's ids name their sequence (JetStream's are made before the
        // stream assigns one); either way the ids below must resolve alike.
        assert!(rest.ends_with('1'), "the id ends with its sequence: {}", generated.id);
    }
    // Names sequence 1 with other random digits: the caller's event 2.
    let other_random = format!("evnt_test_{}{}1", &rest[..9], "0".repeat(10));
    // Names sequence 3, which it gets: found by its id alone.
    let own = format!("evnt_test_{}{}3", &rest[..9], "1".repeat(10));
    let second = PublishEventRequest { id: other_random.clone(), ..event("charge.update") };
    let third = PublishEventRequest { id: own.clone(), ..event("charge.capture") };
    assert_eq!(publish(&mut app.client, second.clone()).await.sequence, 2);
    assert_eq!(publish(&mut app.client, third.clone()).await.sequence, 3);
    for (id, sequence, event_type) in [
        (&generated.id, 1, "charge.create"),
        (&other_random, 2, "charge.update"),
        (&own, 3, "charge.capture"),
    ] {
        let got = app
            .client
            .get_event(GetEventRequest { id: id.clone(), livemode: None })
            .await
            .expect("get")
            .into_inner();
        assert_eq!((got.sequence, got.r#type.as_str()), (sequence, event_type), "{id}");
    }
    // Repeats are recognised either way, and the live namespace holds none of them.
    assert_eq!(publish(&mut app.client, second).await.sequence, 2);
    assert_eq!(publish(&mut app.client, third).await.sequence, 3);
    assert_eq!(stored_total(&mut app.client).await, 3);
    let live = app.client.get_event(GetEventRequest { id: own, livemode: Some(true) }).await;
    assert_eq!(live.expect_err("no live event").code(), Code::NotFound);
}

#[tokio::test]
async fn provider_ids_are_accepted_and_kept_as_given() {
    // Arrange
    let mut app = spawn_app().await;
    let longest = "a".repeat(128);
    let provider_ids = [
        "evt_1NG8Du2eZvKYlo2CUI79vXWy",  // Stripe style
        "evnt_test_56vp5pfwjf1fqjn4ryy", // Omise
        "bmon6b8awbd5wftxlpjxzpjte",     // KOMOJU, base36
        "4xwf1falwkeagr4mn0gg6n19d",     // KOMOJU, starting with a digit
        "a",
        "x:y.z-1_2",
        longest.as_str(), // 128 characters, the longest allowed
    ];

    for (i, id) in provider_ids.into_iter().enumerate() {
        // Act
        let stored = publish(
            &mut app.client,
            PublishEventRequest { id: id.into(), ..event("charge.create") },
        )
        .await;

        // Assert
        assert_eq!(stored.id, id);
        assert_eq!(stored.sequence, i as u64 + 1);
        assert_eq!(stored.location, format!("/events/{id}"));
        let fetched = app
            .client
            .get_event(GetEventRequest { id: id.into(), livemode: None })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(fetched, stored);
    }
}

#[tokio::test]
async fn an_identical_repeat_returns_the_stored_event_unchanged_and_stores_nothing() {
    // Arrange
    let mut app = spawn_app().await;
    let request = PublishEventRequest {
        id: "evt_repeat".into(),
        created: Some(at(T0)),
        api_version: "2019-05-29".into(),
        source: "omise".into(),
        ..event("charge.create")
    };
    let first = publish(&mut app.client, request.clone()).await;

    // Act
    let repeat = publish(&mut app.client, request.clone()).await;
    let repeat_in_batch = publish_batch(&mut app.client, vec![request]).await;

    // Assert
    assert_eq!(repeat, first, "same sequence, same received, same everything");
    assert_eq!(repeat_in_batch, vec![first.clone()]);
    assert_eq!(stored_total(&mut app.client).await, 1);
    let next = publish(&mut app.client, event("charge.create")).await;
    assert_eq!(next.sequence, 2, "a repeat uses no sequence");
}

#[tokio::test]
async fn the_same_id_in_the_other_mode_is_another_event_where_ids_are_per_mode() {
    // Ids are one namespace per mode on both stores.
    let mut app = spawn_app().await;
    let test = PublishEventRequest { id: "evt_both_modes".into(), ..event("charge.create") };
    let stored_test = publish(&mut app.client, test.clone()).await;
    let live = app.client.publish_event(PublishEventRequest { livemode: true, ..test }).await;
    let stored_live = live.expect("the live event is another event").into_inner();
    assert!(stored_live.livemode && !stored_test.livemode);
    assert_ne!(stored_live.sequence, stored_test.sequence);
    assert_eq!(stored_total(&mut app.client).await, 2);
    // A key that sees both modes gets the live one.
    let fetched = app
        .client
        .get_event(GetEventRequest { id: "evt_both_modes".into(), livemode: None })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, stored_live);
}

#[tokio::test]
async fn a_repeat_that_differs_in_any_field_is_already_exists_naming_that_field() {
    // Arrange
    let mut app = spawn_app().await;
    let original = PublishEventRequest {
        id: "evt_conflict".into(),
        created: Some(at(T0)),
        api_version: "2019-05-29".into(),
        source: "omise".into(),
        livemode: false,
        ..event("charge.create")
    };
    let stored = publish(&mut app.client, original.clone()).await;
    let cases = [
        ("type", PublishEventRequest { r#type: "charge.update".into(), ..original.clone() }),
        (
            "data",
            PublishEventRequest {
                data: Some(json_struct(json!({"object": "charge", "amount": 100001}))),
                ..original.clone()
            },
        ),
        (
            "api_version",
            PublishEventRequest { api_version: "2017-11-02".into(), ..original.clone() },
        ),
        ("source", PublishEventRequest { source: "komoju".into(), ..original.clone() }),
        (
            "created",
            PublishEventRequest {
                created: Some(Timestamp { seconds: T0, nanos: 1 }),
                ..original.clone()
            },
        ),
    ];
    let fields = ["type", "data", "api_version", "source", "created"];

    for (field, repeat) in cases {
        // Act
        let result = app.client.publish_event(repeat).await;

        // Assert
        let status = assert_rejected(result, Code::AlreadyExists, field, field);
        for other in fields.iter().filter(|f| **f != field) {
            assert!(
                !status.message().contains(other),
                "{field}: names {other} too: {}",
                status.message()
            );
        }
    }
    assert_eq!(stored_total(&mut app.client).await, 1);
    let fetched = app
        .client
        .get_event(GetEventRequest { id: "evt_conflict".into(), livemode: None })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, stored);
}

#[tokio::test]
async fn a_repeat_without_created_is_a_repeat_of_an_event_that_had_one() {
    // Arrange
    let mut app = spawn_app().await;
    let original = PublishEventRequest {
        id: "evt_created".into(),
        created: Some(at(T0)),
        ..event("charge.create")
    };
    let stored = publish(&mut app.client, original.clone()).await;

    // Act
    let repeat = publish(&mut app.client, PublishEventRequest { created: None, ..original }).await;

    // Assert
    assert_eq!(repeat, stored);
    assert_eq!(repeat.created, Some(at(T0)));
    assert_eq!(stored_total(&mut app.client).await, 1);
}

#[tokio::test]
async fn a_batch_is_stored_in_request_order_with_consecutive_sequences() {
    // Arrange
    let mut app = spawn_app().await;
    publish(&mut app.client, event("charge.create")).await;
    let batch = vec![
        PublishEventRequest { id: "evt_b1".into(), ..event("charge.create") },
        event("charge.capture"),
        PublishEventRequest { id: "evt_b3".into(), livemode: true, ..event("refund.create") },
        event("transfer.create"),
        PublishEventRequest {
            id: "evt_b5".into(),
            created: Some(at(T0)),
            ..event("charge.update")
        },
    ];

    // Act
    let stored = publish_batch(&mut app.client, batch.clone()).await;

    // Assert
    assert_eq!(sequences(&stored), vec![2, 3, 4, 5, 6]);
    for (request, event) in batch.iter().zip(&stored) {
        assert_eq!(event.r#type, request.r#type);
        assert_eq!(event.livemode, request.livemode);
        if !request.id.is_empty() {
            assert_eq!(event.id, request.id);
        }
        let fetched = app
            .client
            .get_event(GetEventRequest { id: event.id.clone(), livemode: None })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(&fetched, event);
    }
    assert_eq!(stored[4].created, Some(at(T0)));
    assert_eq!(stored_total(&mut app.client).await, 6);
}

#[tokio::test]
async fn a_batch_holding_an_already_stored_identical_event_returns_the_stored_one() {
    // Arrange
    let mut app = spawn_app().await;
    let repeated = PublishEventRequest { id: "evt_old".into(), ..event("charge.create") };
    let old = publish(&mut app.client, repeated.clone()).await;

    // Act
    let stored = publish_batch(
        &mut app.client,
        vec![
            PublishEventRequest { id: "evt_new_1".into(), ..event("charge.capture") },
            repeated,
            PublishEventRequest { id: "evt_new_2".into(), ..event("charge.update") },
        ],
    )
    .await;

    // Assert
    assert_eq!(ids(&stored), vec!["evt_new_1", "evt_old", "evt_new_2"]);
    assert_eq!(stored[1], old, "the repeat comes back as first stored");
    assert_eq!(stored[0].sequence, 2);
    assert_eq!(stored[2].sequence, 3);
    assert_eq!(stored_total(&mut app.client).await, 3);
}

#[tokio::test]
async fn a_batch_with_one_conflicting_event_stores_nothing() {
    // Arrange
    let mut app = spawn_app().await;
    let existing = PublishEventRequest { id: "evt_taken".into(), ..event("charge.create") };
    publish(&mut app.client, existing.clone()).await;

    // Act
    let result = app
        .client
        .publish_events(PublishEventsRequest {
            events: vec![
                PublishEventRequest { id: "evt_a".into(), ..event("charge.create") },
                event("charge.capture"),
                PublishEventRequest { id: "evt_b".into(), ..event("charge.update") },
                PublishEventRequest { r#type: "charge.expire".into(), ..existing },
            ],
        })
        .await;

    // Assert
    assert_rejected(result, Code::AlreadyExists, "type", "conflicting batch");
    assert_eq!(stored_total(&mut app.client).await, 1);
    for id in ["evt_a", "evt_b"] {
        let missing = app.client.get_event(GetEventRequest { id: id.into(), livemode: None }).await;
        assert_rejected(missing, Code::NotFound, id, id);
    }
    let next = publish(&mut app.client, event("charge.create")).await;
    assert_eq!(next.sequence, 2, "the failed batch used no sequence");
}

#[tokio::test]
async fn provider_payloads_round_trip_with_data_unchanged() {
    // Arrange
    let mut app = spawn_app().await;
    let omise = fixture("omise/charge.create.json");
    let mut payloads = vec![(
        omise["id"].as_str().unwrap().to_string(),
        omise["key"].as_str().unwrap().to_string(),
        omise["created"].as_str().unwrap().to_string(),
        omise["livemode"].as_bool().unwrap(),
        omise["data"].clone(),
        "omise",
    )];
    let komoju_one = fixture("komoju/payment.captured.json");
    let komoju_list = fixture("komoju/events-list.json");
    let komoju_events = std::iter::once(&komoju_one).chain(komoju_list["data"].as_array().unwrap());
    for e in komoju_events {
        payloads.push((
            e["id"].as_str().unwrap().to_string(),
            e["type"].as_str().unwrap().to_string(),
            e["created_at"].as_str().unwrap().to_string(),
            false,
            e["data"].clone(),
            "komoju",
        ));
    }
    assert_eq!(payloads.len(), 4);

    for (id, event_type, created, livemode, data, source) in payloads {
        // Act
        let published = publish(
            &mut app.client,
            PublishEventRequest {
                id: id.clone(),
                r#type: event_type.clone(),
                data: Some(json_struct(data.clone())),
                created: Some(rfc3339(&created)),
                livemode,
                source: source.into(),
                ..Default::default()
            },
        )
        .await;
        let fetched = app
            .client
            .get_event(GetEventRequest { id: id.clone(), livemode: None })
            .await
            .expect("get")
            .into_inner();

        // Assert
        assert_eq!(fetched, published);
        assert_eq!(fetched.id, id);
        assert_eq!(fetched.r#type, event_type);
        assert_eq!(fetched.created, Some(rfc3339(&created)));
        assert_eq!(fetched.source, source);
        let back = struct_json(fetched.data.as_ref().expect("data"));
        assert_eq!(back, data, "{id}: data changed on the way through");
    }
    let charge = app
        .client
        .get_event(GetEventRequest { id: omise["id"].as_str().unwrap().into(), livemode: None })
        .await
        .expect("get")
        .into_inner();
    let amount = &struct_json(charge.data.as_ref().unwrap())["amount"];
    assert_eq!(amount.to_string(), "100000", "an integer comes back as the same integer JSON");
    assert!(amount.is_u64());
}

#[tokio::test]
async fn types_may_use_every_allowed_character_and_be_128_characters_long() {
    // Arrange
    let mut app = spawn_app().await;
    let longest = "t".repeat(128);

    for event_type in ["charge.create", "komoju/payment.captured", "A-Z_a-z:0-9", longest.as_str()]
    {
        // Act
        let stored = publish(&mut app.client, event(event_type)).await;

        // Assert
        assert_eq!(stored.r#type, event_type);
    }
}

#[tokio::test]
async fn data_exactly_at_the_size_cap_is_accepted_and_one_byte_more_is_refused() {
    // Arrange: `data` whose encoded size is exactly the 1 KiB cap, and one byte more.
    let mut app = spawn_app_with(|config| config.max_data_bytes = 1024).await;
    let sized = |n: usize| json_struct(json!({"blob": "x".repeat(n)}));
    let at_cap = (900..1024)
        .find(|n| sized(*n).encoded_len() == 1024)
        .expect("a string length that encodes to exactly 1024 bytes");
    assert_eq!(sized(at_cap + 1).encoded_len(), 1025);

    // Act
    let accepted = app
        .client
        .publish_event(PublishEventRequest { data: Some(sized(at_cap)), ..event("charge.create") })
        .await;
    let refused = app
        .client
        .publish_event(PublishEventRequest {
            data: Some(sized(at_cap + 1)),
            ..event("charge.create")
        })
        .await;

    // Assert
    assert!(accepted.is_ok(), "{accepted:?}");
    assert_rejected(refused, Code::InvalidArgument, "data", "one byte over the cap");
    assert_eq!(stored_total(&mut app.client).await, 1);
}
