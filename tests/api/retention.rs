//! Retention (`--max-events`, `--retention`): the oldest events are removed in the
//! background, in sequence order; what is kept reads back unchanged, sequences go on after
//! removals and restarts, and a position before the oldest kept event (a subscription's
//! `after_sequence`, a page token) is OUT_OF_RANGE with an ErrorInfo naming the earliest
//! available sequence. Idempotency holds only while an event is kept: a removed id published
//! again is a new event with a new sequence.
//!
//! Retention runs once a second, so these tests wait for its effect by polling ListEvents
//! (bounded), never by sleeping a fixed time and never by asserting how long it took.

use std::time::Duration;

use eventsd::proto::{Event, GetEventRequest, ListEventsRequest, PublishEventRequest};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::cloudevents::get_with_headers;
use crate::helpers::{embedded_only, spawn_app_with, TestApp};
use crate::support::{
    after_sequence, all_events, event, everything, from_beginning, history, open_sse, publish,
    publish_batch, sequences, stored_total, subscribe, Client,
};

/// How many events `--max-events` keeps in these tests.
const MAX_EVENTS: u64 = 5;

/// Polls ListEvents until the store holds exactly `n` events. Bounded (200 × 100 ms) so a
/// retention that never runs fails the test instead of hanging it.
async fn wait_for_total(client: &mut Client, n: i64) {
    let mut total = stored_total(client).await;
    for _ in 0..200 {
        if total == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        total = stored_total(client).await;
    }
    panic!("retention did not bring the store to {n} events (it holds {total})");
}

/// A publish request with a caller-supplied id, so it can be repeated.
fn numbered(n: u64) -> PublishEventRequest {
    PublishEventRequest { id: format!("evnt_test_ret{n:02}"), ..event("charge.create") }
}

/// A server keeping at most five events, after one batch of twelve (sequences 1 to 12) and
/// retention's removal of the first seven. One batch is one commit, so retention sees all
/// twelve at once and removes 1 to 7 in one step.
async fn spawn_trimmed() -> (TestApp, Vec<Event>) {
    let mut app = spawn_app_with(|c| c.max_events = Some(MAX_EVENTS)).await;
    let published = publish_batch(&mut app.client, (1..=12).map(numbered).collect()).await;
    assert_eq!(sequences(&published), (1..=12).collect::<Vec<u64>>());
    wait_for_total(&mut app.client, MAX_EVENTS as i64).await;
    (app, published)
}

async fn get_event(client: &mut Client, id: &str) -> Result<Event, Status> {
    client
        .get_event(GetEventRequest { id: id.into(), livemode: None })
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts an OUT_OF_RANGE status for an expired position: the message names `field` and
/// the earliest sequence, and the ErrorInfo carries both in machine-readable form.
fn assert_expired(status: &Status, field: &str, earliest: u64, case: &str) {
    assert_eq!(status.code(), Code::OutOfRange, "{case}: {}", status.message());
    assert!(status.message().contains(field), "{case}: should name {field}: {}", status.message());
    let names_earliest = format!("earliest available sequence is {earliest}");
    assert!(status.message().contains(&names_earliest), "{case}: {}", status.message());
    let Some(info) = status.get_details_error_info() else {
        panic!("{case}: no google.rpc.ErrorInfo in the status details");
    };
    assert_eq!(info.reason, "events_expired", "{case}");
    assert_eq!(info.domain, "eventsd", "{case}");
    assert_eq!(
        info.metadata.get("earliest_sequence").map(String::as_str),
        Some(earliest.to_string().as_str()),
        "{case}: {:?}",
        info.metadata
    );
}

#[tokio::test]
async fn beyond_max_events_only_the_newest_are_kept() {
    if embedded_only("beyond_max_events_only_the_newest_are_kept") {
        return;
    }
    // Arrange + Act
    let (mut app, published) = spawn_trimmed().await;

    // Assert
    let kept = all_events(&mut app.client).await;
    assert_eq!(sequences(&kept), (8..=12).collect::<Vec<u64>>());
    assert_eq!(kept, published[7..].to_vec(), "kept events read back unchanged");
    let removed = get_event(&mut app.client, &published[0].id).await;
    assert_eq!(removed.err().map(|s| s.code()), Some(Code::NotFound), "sequence 1 is removed");
    let oldest = get_event(&mut app.client, &published[7].id).await.expect("sequence 8 is kept");
    assert_eq!(oldest.sequence, 8);
}

#[tokio::test]
async fn the_metrics_show_the_kept_count_and_the_durable_sequence_after_removal() {
    if embedded_only("the_metrics_show_the_kept_count_and_the_durable_sequence_after_removal") {
        return;
    }
    let (app, _) = spawn_trimmed().await;

    let metrics = get_with_headers(&format!("{}/metrics", app.http)).await;

    let lines: Vec<&str> = metrics.text.lines().collect();
    assert!(lines.contains(&"eventsd_store_events 5"), "{}", metrics.text);
    assert!(lines.contains(&"eventsd_durable_sequence 12"), "{}", metrics.text);
}

#[tokio::test]
async fn resuming_a_subscription_before_the_oldest_kept_event_is_out_of_range() {
    if embedded_only("resuming_a_subscription_before_the_oldest_kept_event_is_out_of_range") {
        return;
    }
    let (mut app, _) = spawn_trimmed().await;

    for after in [0, 2, 6] {
        let result = app.client.subscribe_events(after_sequence(after)).await;

        let Err(status) = result else {
            panic!("after_sequence {after}: expected OUT_OF_RANGE, the subscription opened");
        };
        assert_expired(&status, "after_sequence", 8, &format!("after_sequence {after}"));
    }
}

#[tokio::test]
async fn a_subscription_resuming_just_before_the_oldest_kept_event_or_from_the_beginning_starts_there(
) {
    if embedded_only("a_subscription_resuming_just_before_the_oldest_kept_event_or_from_the_beginning_starts_there") {
        return;
    }
    let (mut app, _) = spawn_trimmed().await;

    for (case, request) in
        [("after_sequence 7", after_sequence(7)), ("from_beginning", from_beginning())]
    {
        let mut stream = subscribe(&mut app.client, request).await;
        let (events, through) = history(&mut stream, 20).await;

        assert_eq!(sequences(&events), (8..=12).collect::<Vec<u64>>(), "{case}");
        assert_eq!(through, 12, "{case}");
    }
}

#[tokio::test]
async fn a_page_token_taken_before_a_removal_is_out_of_range() {
    if embedded_only("a_page_token_taken_before_a_removal_is_out_of_range") {
        return;
    }
    // Arrange: five events fit the limit, so nothing is removed while the first page is read.
    let mut app = spawn_app_with(|c| c.max_events = Some(MAX_EVENTS)).await;
    publish_batch(&mut app.client, (1..=5).map(numbered).collect()).await;
    let first = ListEventsRequest { limit: 2, ..everything() };
    let page = app.client.list_events(first).await.expect("first page").into_inner();
    assert_eq!(page.total, 5);
    assert!(!page.next_page_token.is_empty(), "a second page follows");
    // Five more push the first five out.
    publish_batch(&mut app.client, (6..=10).map(numbered).collect()).await;
    wait_for_total(&mut app.client, MAX_EVENTS as i64).await;

    // Act
    let next =
        ListEventsRequest { page_token: page.next_page_token, limit: 2, ..Default::default() };
    let result = app.client.list_events(next).await;

    // Assert
    let Err(status) = result else {
        panic!("a page token from before the removal must be OUT_OF_RANGE: {result:?}");
    };
    assert_expired(&status, "page_token", 6, "page token");
}

#[tokio::test]
async fn after_a_restart_sequences_continue_and_the_limit_still_holds() {
    if embedded_only("after_a_restart_sequences_continue_and_the_limit_still_holds") {
        return;
    }
    // Arrange
    let (app, _) = spawn_trimmed().await;
    let mut app = app.restart().await;
    assert_eq!(stored_total(&mut app.client).await, MAX_EVENTS as i64, "the restart keeps five");

    // Act
    let next = publish(&mut app.client, event("charge.create")).await;
    wait_for_total(&mut app.client, MAX_EVENTS as i64).await;

    // Assert
    assert_eq!(next.sequence, 13);
    assert_eq!(sequences(&all_events(&mut app.client).await), (9..=13).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_removed_id_published_again_is_a_new_event_while_a_kept_id_is_idempotent() {
    if embedded_only("a_removed_id_published_again_is_a_new_event_while_a_kept_id_is_idempotent") {
        return;
    }
    // Idempotency by id holds only while the event is kept.
    let (mut app, published) = spawn_trimmed().await;

    let kept_again = publish(&mut app.client, numbered(12)).await;
    let removed_again = publish(&mut app.client, numbered(1)).await;

    assert_eq!(kept_again, published[11], "a kept id repeated returns the stored event");
    assert_eq!(removed_again.id, published[0].id);
    assert_eq!(removed_again.sequence, 13, "a removed id is stored anew, with a new sequence");
    let read = get_event(&mut app.client, &published[0].id).await.expect("the new event");
    assert_eq!(read.sequence, 13);
}

#[tokio::test]
async fn events_older_than_the_retention_age_are_removed_and_sequences_go_on() {
    if embedded_only("events_older_than_the_retention_age_are_removed_and_sequences_go_on") {
        return;
    }
    // Arrange
    let mut app = spawn_app_with(|c| c.retention = Some(Duration::from_secs(1))).await;
    publish_batch(&mut app.client, vec![event("charge.create"); 3]).await;

    // Act
    wait_for_total(&mut app.client, 0).await;
    let next = publish(&mut app.client, event("charge.create")).await;

    // Assert
    assert_eq!(next.sequence, 4);
}

#[tokio::test]
async fn after_every_event_expired_a_restart_keeps_the_sequence_going() {
    if embedded_only("after_every_event_expired_a_restart_keeps_the_sequence_going") {
        return;
    }
    // Arrange: every event removed, so no stored event holds the last sequence.
    let mut app = spawn_app_with(|c| c.retention = Some(Duration::from_secs(1))).await;
    publish_batch(&mut app.client, vec![event("charge.create"); 3]).await;
    wait_for_total(&mut app.client, 0).await;

    // Act
    let mut app = app.restart().await;
    let next = publish(&mut app.client, event("charge.create")).await;

    // Assert
    assert_eq!(next.sequence, 4);
}

#[tokio::test]
async fn polling_cloudevents_before_the_oldest_kept_event_is_400_events_expired() {
    if embedded_only("polling_cloudevents_before_the_oldest_kept_event_is_400_events_expired") {
        return;
    }
    // `GET /cloudevents` promises (views/cloudevents.rs) that a position before the oldest
    // kept event is 400 `events_expired`, as SubscribeEvents answers OUT_OF_RANGE with the
    // same name in its ErrorInfo.
    let (app, _) = spawn_trimmed().await;

    let reply = get_with_headers(&format!("{}/cloudevents?after_sequence=2", app.http)).await;

    assert_eq!(reply.status, 400, "after_sequence=2 after removal of 1..=7: {}", reply.text);
    assert_eq!(reply.json["code"], "events_expired", "{}", reply.text);
    let message = reply.json["message"].as_str().unwrap_or_default();
    assert!(message.contains("earliest available sequence is 8"), "{message}");
}

#[tokio::test]
async fn resuming_after_the_largest_sequence_is_out_of_range_not_a_failed_call() {
    if embedded_only("resuming_after_the_largest_sequence_is_out_of_range_not_a_failed_call") {
        return;
    }
    // The expiry check (`after_sequence + 1 < first kept`) must not overflow on u64::MAX: it
    // is a checkpoint from another store, OUT_OF_RANGE like any position beyond the newest.
    let (mut app, _) = spawn_trimmed().await;

    let result = app.client.subscribe_events(after_sequence(u64::MAX)).await;

    let Err(status) = result else {
        panic!("after_sequence u64::MAX: expected OUT_OF_RANGE, the subscription opened");
    };
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(status.message().contains("after_sequence"), "{}", status.message());
    // Wrapping `u64::MAX + 1` to 0 would call it expired instead, which it is not.
    assert!(
        status.message().contains("beyond the newest durable sequence"),
        "{}",
        status.message()
    );
    let reason = status.get_details_error_info().map(|info| info.reason);
    assert_eq!(reason.as_deref(), Some("out_of_range"), "not events_expired: {}", status.message());
}

#[tokio::test]
async fn an_sse_stream_resuming_before_the_oldest_kept_event_is_400_events_expired() {
    if embedded_only("an_sse_stream_resuming_before_the_oldest_kept_event_is_400_events_expired") {
        return;
    }
    let (app, _) = spawn_trimmed().await;
    for (query, headers, field) in [
        ("?after_sequence=3", vec![], "after_sequence"),
        ("", vec![("last-event-id", "3")], "Last-Event-ID"),
    ] {
        let Err((status, body)) = open_sse(&app.http, query, &headers).await else {
            panic!("{field}: a position before the oldest kept event must be refused");
        };
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["reason"], "EVENTS_EXPIRED", "{field}: {body}");
        assert_eq!(body["earliest_sequence"], 8, "{field}: {body}");
        assert!(body["message"].as_str().unwrap_or("").starts_with(field), "{body}");
    }
    // Just before the oldest kept event is fine: nothing is skipped.
    let mut stream = open_sse(&app.http, "?after_sequence=7", &[]).await.expect("from 7");
    let (events, caught_up) = stream.history(10).await;
    assert_eq!(events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [8, 9, 10, 11, 12]);
    assert_eq!(caught_up, 12);
}
