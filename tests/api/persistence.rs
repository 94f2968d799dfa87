//! Durability across a restart: every event comes back byte for byte, sequences continue
//! without a gap, and idempotency still holds against what was stored before.

use eventsd::proto::{GetEventRequest, PublishEventRequest};
use prost::Message;
use serde_json::json;
use tonic::Code;

use crate::helpers::spawn_app;
use crate::support::{
    all_events, assert_rejected, at, event, fixture, json_struct, publish, publish_batch,
    sequences, stored_total, T0,
};

#[tokio::test]
async fn every_event_survives_a_restart_byte_for_byte_and_sequences_continue_without_a_gap() {
    // Arrange: 50 events, singles and batches, with ids, modes, times and real payloads.
    let mut app = spawn_app().await;
    let omise = fixture("omise/charge.create.json");
    for i in 0..10 {
        let request = PublishEventRequest {
            livemode: i % 3 == 0,
            created: (i % 2 == 0).then(|| at(T0 + i)),
            api_version: "2019-05-29".into(),
            source: "omise".into(),
            data: Some(json_struct(omise["data"].clone())),
            ..event("charge.create")
        };
        publish(&mut app.client, request).await;
    }
    for batch in 0..4 {
        let requests = (0..10)
            .map(|i| PublishEventRequest {
                id: if i % 2 == 0 { format!("evt_persist_{batch}_{i}") } else { String::new() },
                livemode: i % 4 == 0,
                data: Some(json_struct(
                    json!({"batch": batch, "index": i, "note": "résumé ✓", "ratio": 0.1}),
                )),
                ..event(if i % 3 == 0 { "refund.create" } else { "payment.captured" })
            })
            .collect();
        publish_batch(&mut app.client, requests).await;
    }
    let before = all_events(&mut app.client).await;
    assert_eq!(sequences(&before), (1..=50).collect::<Vec<u64>>());

    // Act
    let mut app = app.restart().await;

    // Assert: the same events, the same bytes, by listing and by id.
    let after = all_events(&mut app.client).await;
    assert_eq!(after, before);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.encode_to_vec(), new.encode_to_vec(), "event {} changed", old.id);
        let fetched = app
            .client
            .get_event(GetEventRequest { id: old.id.clone(), livemode: None })
            .await
            .expect("get after restart")
            .into_inner();
        assert_eq!(&fetched, old);
    }
    let single = publish(&mut app.client, event("charge.create")).await;
    assert_eq!(single.sequence, 51, "the next sequence follows the last stored one");
    let batch =
        publish_batch(&mut app.client, vec![event("charge.create"), event("charge.update")]).await;
    assert_eq!(sequences(&batch), vec![52, 53]);
    assert_eq!(stored_total(&mut app.client).await, 53);
}

#[tokio::test]
async fn an_idempotent_repeat_after_a_restart_returns_the_stored_event() {
    // Arrange
    let mut app = spawn_app().await;
    let request = PublishEventRequest {
        id: "evt_before_restart".into(),
        created: Some(at(T0)),
        ..event("charge.create")
    };
    let stored = publish(&mut app.client, request.clone()).await;
    let mut app = app.restart().await;

    // Act
    let repeat = publish(&mut app.client, request.clone()).await;
    let conflict = app
        .client
        .publish_event(PublishEventRequest { r#type: "charge.update".into(), ..request })
        .await;

    // Assert
    assert_eq!(repeat, stored);
    assert_rejected(conflict, Code::AlreadyExists, "type", "conflict after restart");
    assert_eq!(stored_total(&mut app.client).await, 1);
}

#[tokio::test]
async fn a_server_restarted_twice_with_nothing_stored_starts_at_sequence_1() {
    // Arrange
    let app = spawn_app().await;
    let app = app.restart().await;
    let mut app = app.restart().await;

    // Act
    let first = publish(&mut app.client, event("charge.create")).await;

    // Assert
    assert_eq!(first.sequence, 1);
}
