//! ListEvents: defaults, limits, ordering by (created, sequence), inclusive bounds, type and
//! livemode filters, exact totals, offsets, and paging (including under concurrent inserts).

use eventsd::proto::{Event, ListEventsRequest, Order, PublishEventRequest};
use prost_types::Timestamp;
use tonic::Code;

use crate::helpers::spawn_app;
use crate::support::{
    assert_rejected, at, event, ids, list_all, order, publish, publish_batch, Client, Rng, T0,
};

/// One page.
async fn page(
    client: &mut Client,
    request: ListEventsRequest,
) -> eventsd::proto::ListEventsResponse {
    client.list_events(request).await.expect("list").into_inner()
}

/// Sorts events as a listing must: by (created, sequence), reversed for reverse order.
fn expected_order(mut events: Vec<Event>, order: Order) -> Vec<Event> {
    events.sort_by_key(|e| {
        let c = e.created.unwrap_or_default();
        (c.seconds, c.nanos, e.sequence)
    });
    if order == Order::ReverseChronological {
        events.reverse();
    }
    events
}

fn created_at(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

#[tokio::test]
async fn an_empty_request_echoes_the_omise_defaults() {
    // Arrange
    let mut app = spawn_app().await;
    let before = chrono::Utc::now().timestamp();

    // Act
    let response = page(&mut app.client, ListEventsRequest::default()).await;

    // Assert
    let after = chrono::Utc::now().timestamp();
    assert_eq!(response.from, Some(at(0)), "from defaults to 1970-01-01T00:00:00Z");
    let to = response.to.expect("to is echoed");
    assert!((before..=after).contains(&to.seconds), "to defaults to now: {to:?}");
    assert_eq!(response.offset, 0);
    assert_eq!(response.limit, 20);
    assert_eq!(response.order, order(Order::Chronological));
    assert_eq!(response.total, 0);
    assert!(response.data.is_empty());
    assert!(response.next_page_token.is_empty());
}

#[tokio::test]
async fn a_limit_of_0_means_20_and_a_limit_above_100_is_reduced_to_100() {
    // Arrange
    let mut app = spawn_app().await;
    publish_batch(&mut app.client, (0..150).map(|_| event("charge.create")).collect()).await;

    for (asked, effective) in [(0, 20), (500, 100), (101, 100), (7, 7), (100, 100)] {
        // Act
        let response =
            page(&mut app.client, ListEventsRequest { limit: asked, ..Default::default() }).await;

        // Assert
        assert_eq!(response.limit, effective, "limit {asked}");
        assert_eq!(response.data.len(), effective as usize, "limit {asked}");
        assert_eq!(response.total, 150);
        assert!(!response.next_page_token.is_empty());
    }
}

#[tokio::test]
async fn both_orders_sort_by_created_then_sequence() {
    // Arrange: created out of sequence order, with ties on created and nanosecond differences.
    let mut app = spawn_app().await;
    let created = [
        created_at(T0 + 50, 0),
        created_at(T0 + 10, 0),
        created_at(T0 + 30, 0),
        created_at(T0 + 10, 0),
        created_at(T0 + 10, 500),
        created_at(T0 + 40, 0),
        created_at(T0 + 30, 0),
        created_at(T0 + 9, 999_999_999),
    ];
    let mut published = Vec::new();
    for (i, c) in created.iter().enumerate() {
        let request =
            PublishEventRequest { created: *c, livemode: i % 2 == 0, ..event("charge.create") };
        published.push(publish(&mut app.client, request).await);
    }

    for direction in [Order::Chronological, Order::ReverseChronological] {
        // Act
        let response = page(
            &mut app.client,
            ListEventsRequest { order: order(direction), ..Default::default() },
        )
        .await;

        // Assert
        assert_eq!(response.order, order(direction));
        let expected = expected_order(published.clone(), direction);
        assert_eq!(ids(&response.data), ids(&expected), "{direction:?}");
        assert_eq!(response.total, 8);
    }
    let chronological: Vec<u64> =
        expected_order(published, Order::Chronological).iter().map(|e| e.sequence).collect();
    assert_eq!(chronological, vec![8, 2, 4, 5, 3, 7, 6, 1]);
}

#[tokio::test]
async fn from_and_to_are_inclusive_bounds() {
    // Arrange
    let mut app = spawn_app().await;
    let created = [
        created_at(T0 - 1, 999_999_999), // just before from
        created_at(T0, 0),               // exactly at from
        created_at(T0 + 5, 0),
        created_at(T0 + 10, 0), // exactly at to
        created_at(T0 + 10, 1), // just after to
    ];
    let mut published = Vec::new();
    for c in created {
        published.push(
            publish(&mut app.client, PublishEventRequest { created: c, ..event("charge.create") })
                .await,
        );
    }

    for direction in [Order::Chronological, Order::ReverseChronological] {
        // Act
        let response = page(
            &mut app.client,
            ListEventsRequest {
                from: Some(at(T0)),
                to: Some(at(T0 + 10)),
                order: order(direction),
                ..Default::default()
            },
        )
        .await;

        // Assert
        assert_eq!(response.total, 3, "{direction:?}");
        assert_eq!(ids(&response.data), ids(&expected_order(published[1..4].to_vec(), direction)));
    }
    let single = page(
        &mut app.client,
        ListEventsRequest { from: Some(at(T0)), to: Some(at(T0)), ..Default::default() },
    )
    .await;
    assert_eq!(ids(&single.data), vec![published[1].id.clone()], "from == to selects that instant");
    assert_eq!(single.total, 1);
}

/// A store with a spread of types, modes and times, and what it holds.
async fn varied_store(client: &mut Client) -> Vec<Event> {
    let types = [
        "charge.create",
        "charge.capture",
        "charge.update",
        "charge",
        "charges.legacy",
        "refund.create",
        "transfer.create",
        "payment.captured",
    ];
    let mut rng = Rng::new(7);
    let requests: Vec<PublishEventRequest> = (0..80)
        .map(|_| PublishEventRequest {
            r#type: types[rng.below(types.len() as u64) as usize].into(),
            livemode: rng.below(2) == 1,
            created: Some(at(T0 + rng.below(60) as i64)),
            ..event("x")
        })
        .collect();
    let mut stored = Vec::new();
    for chunk in requests.chunks(13) {
        stored.extend(publish_batch(client, chunk.to_vec()).await);
    }
    stored
}

/// The brute-force answer: what a filter selects from what was published.
fn select(
    published: &[Event],
    types: &[&str],
    livemode: Option<bool>,
    range: (i64, i64),
) -> Vec<Event> {
    published
        .iter()
        .filter(|e| {
            types.is_empty()
                || types.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => e.r#type.starts_with(prefix),
                    None => e.r#type == *p,
                })
        })
        .filter(|e| livemode.is_none_or(|m| e.livemode == m))
        .filter(|e| {
            let c = e.created.unwrap();
            c.seconds >= range.0 && (c.seconds, c.nanos) <= (range.1, 0)
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn type_and_livemode_filters_select_exactly_the_matching_events_with_an_exact_total() {
    // Arrange
    let mut app = spawn_app().await;
    let published = varied_store(&mut app.client).await;
    let type_filters: [&[&str]; 10] = [
        &[],
        &["charge.create"],
        &["charge.*"],
        &["charge*"],
        &["charge.*", "refund.create"],
        &["*"],
        &["charge"],
        &["charge.create", "charge.*"],
        &["nothing.matches"],
        &["payment.*", "refund.*", "transfer.create"],
    ];
    let ranges = [(T0, T0 + 59), (T0 + 10, T0 + 40), (T0 + 25, T0 + 25), (T0 + 100, T0 + 200)];

    for types in type_filters {
        for livemode in [None, Some(true), Some(false)] {
            for range in ranges {
                for direction in [Order::Chronological, Order::ReverseChronological] {
                    let what = format!(
                        "types {types:?}, livemode {livemode:?}, range {range:?}, {direction:?}"
                    );
                    let request = ListEventsRequest {
                        from: Some(at(range.0)),
                        to: Some(at(range.1)),
                        types: types.iter().map(|t| t.to_string()).collect(),
                        livemode,
                        order: order(direction),
                        limit: 9,
                        ..Default::default()
                    };

                    // Act
                    let (listed, totals) = list_all(&mut app.client, request).await;

                    // Assert
                    let expected =
                        expected_order(select(&published, types, livemode, range), direction);
                    assert_eq!(ids(&listed), ids(&expected), "{what}");
                    assert!(
                        totals.iter().all(|t| *t == expected.len() as i64),
                        "{what}: totals {totals:?}, expected {}",
                        expected.len()
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn an_offset_skips_that_many_matching_events() {
    // Arrange
    let mut app = spawn_app().await;
    let published =
        publish_batch(&mut app.client, (0..30).map(|_| event("charge.create")).collect()).await;

    // Act
    let first =
        page(&mut app.client, ListEventsRequest { offset: 5, limit: 10, ..Default::default() })
            .await;
    let second = page(
        &mut app.client,
        ListEventsRequest { page_token: first.next_page_token.clone(), ..Default::default() },
    )
    .await;
    let reverse = page(
        &mut app.client,
        ListEventsRequest {
            offset: 25,
            limit: 10,
            order: order(Order::ReverseChronological),
            ..Default::default()
        },
    )
    .await;
    let beyond =
        page(&mut app.client, ListEventsRequest { offset: 31, ..Default::default() }).await;

    // Assert
    assert_eq!(first.offset, 5);
    assert_eq!(ids(&first.data), ids(&published[5..15]));
    assert_eq!(second.offset, 15, "offset counts the events before this page");
    assert_eq!(second.limit, 20, "a limit left out on a later page is the default");
    assert_eq!(ids(&second.data), ids(&published[15..30]));
    assert!(second.next_page_token.is_empty());
    let mut reversed_head = published[0..5].to_vec();
    reversed_head.reverse();
    assert_eq!(ids(&reverse.data), ids(&reversed_head));
    assert!(beyond.data.is_empty());
    assert_eq!(beyond.total, 30);
    assert!(beyond.next_page_token.is_empty());
}

#[tokio::test]
async fn paging_through_95_events_returns_each_exactly_once_in_order() {
    // Arrange
    let mut app = spawn_app().await;
    let published =
        publish_batch(&mut app.client, (0..95).map(|_| event("charge.create")).collect()).await;
    let mut request = ListEventsRequest { limit: 10, ..Default::default() };
    let mut listed = Vec::new();
    let mut pages = Vec::new();

    // Act
    for _ in 0..20 {
        let response = page(&mut app.client, request.clone()).await;
        listed.extend(response.data.clone());
        let token = response.next_page_token.clone();
        pages.push(response);
        if token.is_empty() {
            break;
        }
        request = ListEventsRequest { limit: 10, page_token: token, ..Default::default() };
    }

    // Assert
    assert_eq!(pages.len(), 10);
    assert_eq!(ids(&listed), ids(&published));
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.total, 95);
        assert_eq!(p.offset, 10 * i as i32);
        assert_eq!(p.from, pages[0].from);
        assert_eq!(p.to, pages[0].to, "later pages echo the first page's to");
        assert_eq!(p.next_page_token.is_empty(), i == 9);
    }
    assert_eq!(pages[9].data.len(), 5);
}

#[tokio::test]
async fn later_pages_show_the_listing_as_of_its_first_page_despite_concurrent_inserts() {
    for direction in [Order::Chronological, Order::ReverseChronological] {
        // Arrange: 40 events one second apart, and the first page of a listing of them.
        let mut app = spawn_app().await;
        let before = publish_batch(
            &mut app.client,
            (0..40)
                .map(|i| PublishEventRequest {
                    created: Some(at(T0 + i)),
                    ..event("charge.create")
                })
                .collect(),
        )
        .await;
        let range = (Some(at(T0)), Some(at(T0 + 1_000)));
        let first = page(
            &mut app.client,
            ListEventsRequest {
                from: range.0,
                to: range.1,
                limit: 10,
                order: order(direction),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(first.total, 40);

        // Act: insert events inside the range, before and after the position, then page on
        // with a changing limit.
        let inserted = publish_batch(
            &mut app.client,
            [T0 + 2, T0 + 20, T0 + 37, T0 + 500, T0 - 5]
                .into_iter()
                .map(|c| PublishEventRequest { created: Some(at(c)), ..event("charge.create") })
                .collect(),
        )
        .await;
        publish(&mut app.client, event("charge.create")).await;
        let mut listed = first.data.clone();
        let mut token = first.next_page_token.clone();
        let mut totals = vec![first.total];
        for limit in [3, 25, 1, 100, 7, 2, 50, 4, 9, 100] {
            if token.is_empty() {
                break;
            }
            let next = page(
                &mut app.client,
                ListEventsRequest { page_token: token, limit, ..Default::default() },
            )
            .await;
            listed.extend(next.data);
            totals.push(next.total);
            token = next.next_page_token;
        }

        // Assert
        assert!(token.is_empty(), "{direction:?}: the listing ended");
        assert_eq!(ids(&listed), ids(&expected_order(before.clone(), direction)), "{direction:?}");
        assert!(totals.iter().all(|t| *t == 40), "{direction:?}: totals {totals:?}");
        for late in &inserted {
            assert!(
                !listed.iter().any(|e| e.id == late.id),
                "{direction:?}: a later event appeared"
            );
        }
        let fresh = page(
            &mut app.client,
            ListEventsRequest { from: range.0, to: range.1, ..Default::default() },
        )
        .await;
        assert_eq!(fresh.total, 44, "a new listing sees the inserted events");
    }
}

#[tokio::test]
async fn a_page_token_works_with_the_same_filters_restated() {
    // Arrange
    let mut app = spawn_app().await;
    varied_store(&mut app.client).await;
    let first_request = ListEventsRequest {
        from: Some(at(T0 + 5)),
        to: Some(at(T0 + 55)),
        order: order(Order::ReverseChronological),
        types: vec!["charge.*".into(), "refund.create".into()],
        livemode: Some(true),
        limit: 4,
        offset: 1,
        ..Default::default()
    };
    let first = page(&mut app.client, first_request.clone()).await;
    assert!(!first.next_page_token.is_empty());

    // Act
    let restated = page(
        &mut app.client,
        ListEventsRequest { page_token: first.next_page_token.clone(), ..first_request },
    )
    .await;
    let bare = page(
        &mut app.client,
        ListEventsRequest {
            page_token: first.next_page_token.clone(),
            limit: 4,
            ..Default::default()
        },
    )
    .await;

    // Assert
    assert_eq!(restated, bare);
    assert_eq!(restated.offset, 5);
    assert_eq!(restated.order, order(Order::ReverseChronological));
    assert_eq!(restated.total, first.total);
}

#[tokio::test]
async fn a_page_token_with_different_types_is_rejected() {
    // Arrange
    let mut app = spawn_app().await;
    publish_batch(&mut app.client, (0..3).map(|_| event("charge.create")).collect()).await;
    let first = page(
        &mut app.client,
        ListEventsRequest { types: vec!["charge.*".into()], limit: 1, ..Default::default() },
    )
    .await;

    // Act
    let result = app
        .client
        .list_events(ListEventsRequest {
            types: vec!["charge.create".into()],
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await;

    // Assert
    assert_rejected(result, Code::InvalidArgument, "types:", "different types");
}

#[tokio::test]
async fn the_source_filter_keeps_one_producer_with_an_exact_total_across_pages() {
    // Arrange: 30 events, every third from omise, the rest from two other producers.
    let mut app = spawn_app().await;
    let sources = ["omise", "stripe", ""];
    let requests = (0..30)
        .map(|i| PublishEventRequest {
            id: format!("evt_{i:02}"),
            created: Some(at(T0 + i)),
            source: sources[i as usize % 3].into(),
            ..event(if i % 2 == 0 { "charge.create" } else { "refund.create" })
        })
        .collect();
    publish_batch(&mut app.client, requests).await;

    // Act: page through omise's events, 4 at a time, newest first.
    let first = ListEventsRequest {
        source: "omise".into(),
        limit: 4,
        order: order(Order::ReverseChronological),
        ..Default::default()
    };
    let (events, totals) = list_all(&mut app.client, first).await;

    // Assert
    let want: Vec<String> =
        (0..30).rev().filter(|i| i % 3 == 0).map(|i| format!("evt_{i:02}")).collect();
    assert_eq!(ids(&events), want);
    assert!(totals.iter().all(|t| *t == 10), "every page carries the exact total: {totals:?}");
    let charges = page(
        &mut app.client,
        ListEventsRequest {
            source: "omise".into(),
            types: vec!["charge.*".into()],
            offset: 1,
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&charges.data), ["evt_06", "evt_12"]);
    assert_eq!(charges.total, 5);
    let nobody =
        page(&mut app.client, ListEventsRequest { source: "komoju".into(), ..Default::default() })
            .await;
    assert_eq!((nobody.data.len(), nobody.total), (0, 0));
    // A page token belongs to its listing's source.
    let token = page(
        &mut app.client,
        ListEventsRequest { source: "omise".into(), limit: 1, ..Default::default() },
    )
    .await
    .next_page_token;
    let other = app
        .client
        .list_events(ListEventsRequest {
            page_token: token,
            source: "stripe".into(),
            ..Default::default()
        })
        .await;
    assert_rejected(other, Code::InvalidArgument, "source", "a token with another source");
    let long = app
        .client
        .list_events(ListEventsRequest { source: "x".repeat(65), ..Default::default() })
        .await;
    assert_rejected(long, Code::InvalidArgument, "source", "a source longer than 64 characters");
}
