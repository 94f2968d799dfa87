//! SubscribeEvents: start positions (beginning, now, after a sequence, from a time), filters,
//! exactly-once in-order delivery under concurrent publishers, many subscribers, heartbeats,
//! slow and vanishing clients, and shutdown with streams open.

use std::collections::HashSet;

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{Event, ListEventsRequest, PublishEventRequest, SubscribeEventsRequest};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::{spawn_app, spawn_app_with};
use crate::support::{
    after_sequence, all_events, at, caught_up, event, everything, from_beginning, history, ids,
    json_struct, list_all, next_event, next_events, next_item, publish, publish_batch, sequences,
    subscribe, Client, Rng, Subscription, HANG_GUARD, T0,
};

/// `n` test events of the given type.
fn events(event_type: &str, n: usize) -> Vec<PublishEventRequest> {
    (0..n).map(|_| event(event_type)).collect()
}

/// An event whose `data` is about `kib` KiB, to fill transport windows and queues quickly.
fn bulky_event(kib: usize) -> PublishEventRequest {
    PublishEventRequest {
        data: Some(json_struct(json!({"object": "charge", "padding": "p".repeat(kib * 1024)}))),
        ..event("charge.create")
    }
}

#[tokio::test]
async fn from_beginning_replays_history_in_order_then_caught_up_once_then_live_events() {
    // Arrange
    let mut app = spawn_app().await;
    let mut published = publish_batch(&mut app.client, events("charge.create", 3)).await;
    published.push(
        publish(&mut app.client, PublishEventRequest { livemode: true, ..event("refund.create") })
            .await,
    );
    published.push(publish(&mut app.client, event("charge.capture")).await);
    let mut client = app.new_client().await;

    // Act
    let mut stream = subscribe(&mut client, from_beginning()).await;
    let replayed = next_events(&mut stream, 5).await;
    let caught_up_at = caught_up(&mut stream).await;
    let live = publish_batch(&mut app.client, events("charge.update", 3)).await;
    let delivered_live = next_events(&mut stream, 3).await;
    let later = publish(&mut app.client, event("charge.expire")).await;
    let delivered_later = next_event(&mut stream).await;

    // Assert
    assert_eq!(replayed, published, "history comes as stored, in sequence order");
    assert_eq!(caught_up_at, 5);
    assert_eq!(delivered_live, live);
    assert_eq!(delivered_later, later, "no second caught_up before live events");
}

#[tokio::test]
async fn with_no_start_the_stream_is_caught_up_first_and_carries_only_new_events() {
    // Arrange
    let mut app = spawn_app().await;
    publish_batch(&mut app.client, events("charge.create", 3)).await;
    let mut client = app.new_client().await;

    // Act
    let mut stream = subscribe(&mut client, SubscribeEventsRequest::default()).await;
    let first = caught_up(&mut stream).await;
    let new = publish_batch(&mut app.client, events("charge.update", 2)).await;
    let delivered = next_events(&mut stream, 2).await;

    // Assert
    assert_eq!(first, 3, "caught up at the newest sequence, with no history");
    assert_eq!(delivered, new);
    assert_eq!(sequences(&delivered), vec![4, 5]);
}

#[tokio::test]
async fn from_beginning_false_also_starts_from_now() {
    // Arrange
    let mut app = spawn_app().await;
    publish(&mut app.client, event("charge.create")).await;
    let mut client = app.new_client().await;

    // Act
    let mut stream = subscribe(
        &mut client,
        SubscribeEventsRequest { start: Some(Start::FromBeginning(false)), ..Default::default() },
    )
    .await;

    // Assert
    assert_eq!(caught_up(&mut stream).await, 1);
    let new = publish(&mut app.client, event("charge.update")).await;
    assert_eq!(next_event(&mut stream).await, new);
}

#[tokio::test]
async fn after_sequence_delivers_exactly_the_events_that_follow_it() {
    // Arrange
    let mut app = spawn_app().await;
    let published = publish_batch(&mut app.client, events("charge.create", 10)).await;
    let mut client = app.new_client().await;

    for after in [0, 4, 9, 10] {
        // Act
        let mut stream = subscribe(&mut client, after_sequence(after)).await;
        let (replayed, caught_up_at) = history(&mut stream, 20).await;

        // Assert
        assert_eq!(replayed, published[after as usize..].to_vec(), "after {after}");
        assert_eq!(caught_up_at, 10);
    }
}

#[tokio::test]
async fn a_client_that_reconnects_after_its_last_sequence_misses_nothing_and_sees_nothing_twice() {
    // Arrange: a subscriber reads part of the history, then its connection goes away.
    let mut app = spawn_app().await;
    publish_batch(&mut app.client, events("charge.create", 20)).await;
    let mut client = app.new_client().await;
    let mut stream = subscribe(&mut client, from_beginning()).await;
    let mut received = next_events(&mut stream, 7).await;
    let last = received.last().unwrap().sequence;
    drop(stream);
    drop(client);
    publish_batch(&mut app.client, events("charge.update", 10)).await;

    // Act
    let mut client = app.new_client().await;
    let mut stream = subscribe(&mut client, after_sequence(last)).await;
    let (rest, caught_up_at) = history(&mut stream, 100).await;
    received.extend(rest);
    let live = publish(&mut app.client, event("charge.expire")).await;
    received.push(next_event(&mut stream).await);

    // Assert
    assert_eq!(caught_up_at, 30);
    assert_eq!(sequences(&received), (1..=31).collect::<Vec<u64>>());
    assert_eq!(received, [all_events(&mut app.client).await[..30].to_vec(), vec![live]].concat());
}

#[tokio::test]
async fn from_created_delivers_only_events_created_at_or_after_that_time() {
    // Arrange: created out of sequence order.
    let mut app = spawn_app().await;
    let mut published = Vec::new();
    for offset in [5, 1, 3, 2, 4, 0] {
        let request =
            PublishEventRequest { created: Some(at(T0 + offset)), ..event("charge.create") };
        published.push(publish(&mut app.client, request).await);
    }
    let mut client = app.new_client().await;

    // Act
    let mut stream = subscribe(
        &mut client,
        SubscribeEventsRequest {
            start: Some(Start::FromCreated(at(T0 + 3))),
            ..Default::default()
        },
    )
    .await;
    let (replayed, caught_up_at) = history(&mut stream, 10).await;
    publish(
        &mut app.client,
        PublishEventRequest { created: Some(at(T0 + 1)), ..event("charge.old") },
    )
    .await;
    let new = publish(&mut app.client, event("charge.new")).await;
    let live = next_event(&mut stream).await;

    // Assert
    assert_eq!(
        sequences(&replayed),
        vec![1, 3, 5],
        "created at T0+5, T0+3, T0+4, in sequence order"
    );
    assert_eq!(caught_up_at, 6);
    assert_eq!(live, new, "a new event created before the start time is not delivered");
}

#[tokio::test]
async fn from_created_after_every_event_is_caught_up_at_the_newest_and_goes_live() {
    // Arrange
    let mut app = spawn_app().await;
    publish_batch(&mut app.client, events("charge.create", 4)).await;
    let mut client = app.new_client().await;
    let far_future = at(253_402_300_799);

    // Act
    let mut stream = subscribe(
        &mut client,
        SubscribeEventsRequest {
            start: Some(Start::FromCreated(far_future)),
            ..Default::default()
        },
    )
    .await;
    let caught_up_at = caught_up(&mut stream).await;
    let future = publish(
        &mut app.client,
        PublishEventRequest { created: Some(far_future), ..event("charge.create") },
    )
    .await;

    // Assert
    assert_eq!(caught_up_at, 4);
    assert_eq!(next_event(&mut stream).await, future);
}

#[tokio::test]
async fn type_and_livemode_filters_select_what_a_subscription_carries() {
    // Arrange
    let mut app = spawn_app().await;
    let live = |t: &str| PublishEventRequest { livemode: true, ..event(t) };
    let published = publish_batch(
        &mut app.client,
        vec![
            live("charge.create"),
            event("charge.create"),
            live("refund.create"),
            live("charge.capture"),
            live("chargeback.create"),
        ],
    )
    .await;
    let mut client = app.new_client().await;

    // Act
    let mut stream = subscribe(
        &mut client,
        SubscribeEventsRequest {
            types: vec!["charge.*".into()],
            livemode: Some(true),
            ..from_beginning()
        },
    )
    .await;
    let (replayed, caught_up_at) = history(&mut stream, 10).await;
    publish_batch(
        &mut app.client,
        vec![event("charge.update"), live("refund.update"), live("charges")],
    )
    .await;
    let matching = publish(&mut app.client, live("charge.update")).await;
    let delivered = next_event(&mut stream).await;

    // Assert
    assert_eq!(replayed, vec![published[0].clone(), published[3].clone()]);
    assert_eq!(caught_up_at, 5, "caught up to the newest sequence, matched or not");
    assert_eq!(delivered, matching);
}

#[tokio::test]
async fn a_filtered_subscription_agrees_with_list_events_under_the_same_filter() {
    // Arrange
    let mut app = spawn_app().await;
    let types = ["charge.create", "charge.capture", "refund.create", "transfer.create", "charge"];
    let mut rng = Rng::new(11);
    for _ in 0..6 {
        let batch = (0..10)
            .map(|_| PublishEventRequest {
                livemode: rng.below(2) == 0,
                created: Some(at(T0 + rng.below(100) as i64)),
                ..event(types[rng.below(types.len() as u64) as usize])
            })
            .collect();
        publish_batch(&mut app.client, batch).await;
    }
    let filter_types = vec!["charge.*".to_string(), "refund.create".to_string()];
    let mut client = app.new_client().await;

    // Act
    let mut stream = subscribe(
        &mut client,
        SubscribeEventsRequest {
            types: filter_types.clone(),
            livemode: Some(false),
            ..from_beginning()
        },
    )
    .await;
    let (replayed, _) = history(&mut stream, 100).await;
    let (mut listed, _) = list_all(
        &mut app.client,
        ListEventsRequest {
            types: filter_types,
            livemode: Some(false),
            limit: 100,
            ..everything()
        },
    )
    .await;

    // Assert
    listed.sort_by_key(|e| e.sequence);
    assert!(!listed.is_empty());
    assert_eq!(replayed, listed);
}

/// How many events each publisher writes per run, in singles and small batches.
const EVENTS_PER_PUBLISHER: usize = 20;
const PUBLISHERS: usize = 3;
const RUNS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_and_a_subscriber_joining_midway_see_every_sequence_once_in_order() {
    for run in 0..RUNS {
        // Arrange: three publishers, and a subscriber that joins after a random number of
        // events (chosen from the run's seed) has been published.
        let mut rng = Rng::new(run);
        let app = spawn_app().await;
        let total = PUBLISHERS * EVENTS_PER_PUBLISHER;
        let join_after = rng.below(total as u64) as usize;
        let (published_tx, mut published_rx) = watch::channel(0usize);
        let mut subscriber_client = app.new_client().await;
        let subscriber = tokio::spawn(async move {
            published_rx.wait_for(|n| *n >= join_after).await.expect("publishers running");
            subscribe(&mut subscriber_client, from_beginning()).await
        });

        // Act
        let mut publishers = JoinSet::new();
        for p in 0..PUBLISHERS {
            let mut client = app.new_client().await;
            let published_tx = published_tx.clone();
            let mut sizes = Vec::new();
            let mut left = EVENTS_PER_PUBLISHER;
            while left > 0 {
                let size = (1 + rng.below(4) as usize).min(left);
                sizes.push(size);
                left -= size;
            }
            publishers.spawn(async move {
                let mut stored = Vec::new();
                for size in sizes {
                    let requests = events(&format!("publisher.p{p}"), size);
                    if size == 1 {
                        stored.push(publish(&mut client, requests[0].clone()).await);
                    } else {
                        stored.extend(publish_batch(&mut client, requests).await);
                    }
                    published_tx.send_modify(|n| *n += size);
                }
                stored
            });
        }
        let mut stored = Vec::new();
        while let Some(done) =
            timeout(HANG_GUARD, publishers.join_next()).await.expect("hang guard: publishers")
        {
            stored.extend(done.expect("publisher task"));
        }
        let last = stored.iter().map(|e| e.sequence).max().unwrap();
        let mut stream = timeout(HANG_GUARD, subscriber)
            .await
            .expect("hang guard: subscriber")
            .expect("subscriber task");
        let mut delivered = Vec::new();
        let mut caught_ups = Vec::new();
        for _ in 0..total + 10 {
            match next_item(&mut stream).await {
                Item::Event(event) => delivered.push(event),
                Item::CaughtUp(c) => caught_ups.push((c.sequence, delivered.len())),
                Item::Heartbeat(_) => {}
                #[allow(unreachable_patterns)]
                other => panic!("unexpected item {other:?}"),
            }
            if !caught_ups.is_empty() && delivered.last().is_some_and(|e| e.sequence == last) {
                break;
            }
        }

        // Assert
        let seed = format!("run {run} (joined after {join_after} events)");
        assert_eq!(last, total as u64, "{seed}");
        assert_eq!(
            sequences(&delivered),
            (1..=last).collect::<Vec<u64>>(),
            "{seed}: every sequence once, in order"
        );
        assert_eq!(caught_ups.len(), 1, "{seed}: caught_up exactly once");
        let (caught_up_at, delivered_before) = caught_ups[0];
        assert_eq!(
            caught_up_at, delivered_before as u64,
            "{seed}: caught_up names the last event delivered before it"
        );
        assert_eq!(
            delivered,
            all_events(&mut app.client.clone()).await,
            "{seed}: the stream agrees with ListEvents"
        );
        let distinct: HashSet<&str> = delivered.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(distinct.len(), total, "{seed}");
    }
}

const SUBSCRIBERS: usize = 1_000;
const CONNECTIONS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_receive_a_published_batch_in_order() {
    // Arrange: 1,000 streams over 10 connections, each caught up.
    let mut app = spawn_app().await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(app.new_client().await);
    }
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(SUBSCRIBERS);
    let mut subscribers = JoinSet::new();
    for i in 0..SUBSCRIBERS {
        let mut client = clients[i % CONNECTIONS].clone();
        let ready = ready_tx.clone();
        subscribers.spawn(async move {
            let mut stream = subscribe(&mut client, SubscribeEventsRequest::default()).await;
            assert_eq!(caught_up(&mut stream).await, 0);
            ready.send(()).await.expect("test alive");
            next_events(&mut stream, 10).await
        });
    }
    for _ in 0..SUBSCRIBERS {
        timeout(HANG_GUARD, ready_rx.recv())
            .await
            .expect("hang guard: subscribers caught up")
            .expect("ready");
    }

    // Act
    let batch = publish_batch(&mut app.client, events("charge.create", 10)).await;

    // Assert
    let mut finished = 0;
    while let Some(result) =
        timeout(HANG_GUARD, subscribers.join_next()).await.expect("hang guard: subscribers")
    {
        assert_eq!(result.expect("subscriber task"), batch);
        finished += 1;
    }
    assert_eq!(finished, SUBSCRIBERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_gives_a_subscriber_whose_filter_matches_nothing_the_newest_sequence() {
    // Arrange
    let mut app =
        spawn_app_with(|c| c.heartbeat_interval = std::time::Duration::from_millis(200)).await;
    let mut client = app.new_client().await;
    let mut stream = subscribe(
        &mut client,
        SubscribeEventsRequest { types: vec!["nothing.matches".into()], ..Default::default() },
    )
    .await;
    assert_eq!(caught_up(&mut stream).await, 0);

    // Act
    publish_batch(&mut app.client, events("charge.create", 5)).await;
    publish(&mut app.client, event("charge.update")).await;

    // Assert: heartbeats never run ahead of the newest sequence, and one reaches it.
    let mut beats = Vec::new();
    for _ in 0..1_000 {
        match next_item(&mut stream).await {
            Item::Heartbeat(beat) => {
                assert!(beat.time.is_some());
                beats.push(beat.sequence);
                if beat.sequence == 6 {
                    break;
                }
            }
            other => {
                panic!("only heartbeats can come through a filter that matches nothing: {other:?}")
            }
        }
    }
    assert_eq!(beats.last(), Some(&6), "beats {beats:?}");
    assert!(beats.windows(2).all(|w| w[0] <= w[1]), "beats {beats:?}");
    let mut resumed = subscribe(&mut client, after_sequence(6)).await;
    assert_eq!(caught_up(&mut resumed).await, 6, "a heartbeat's sequence is a valid resume point");
}

/// The resume point named in a shutdown status: the number after `after_sequence=`.
fn resume_point(message: &str) -> u64 {
    let (_, rest) = message
        .split_once("after_sequence=")
        .unwrap_or_else(|| panic!("no after_sequence= in {message:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no sequence after after_sequence= in {message:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_unavailable_naming_where_to_resume() {
    // Arrange: five caught-up streams.
    let mut app = spawn_app().await;
    publish_batch(&mut app.client, events("charge.create", 3)).await;
    let mut streams: Vec<(Client, Subscription)> = Vec::new();
    for _ in 0..5 {
        let mut client = app.new_client().await;
        let mut stream = subscribe(&mut client, from_beginning()).await;
        let (replayed, caught_up_at) = history(&mut stream, 10).await;
        assert_eq!((replayed.len(), caught_up_at), (3, 3));
        streams.push((client, stream));
    }

    // Act
    timeout(HANG_GUARD, app.stop()).await.expect("stop returns with streams open");

    // Assert
    let mut resume_points = Vec::new();
    for (_, mut stream) in streams {
        let end = timeout(HANG_GUARD, stream.message()).await.expect("hang guard: stream end");
        let status = end.expect_err("the stream ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        assert!(status.message().contains("after_sequence="), "{}", status.message());
        resume_points.push(resume_point(status.message()));
    }
    assert_eq!(resume_points, vec![3; 5]);

    // And a server started again on the same data resumes each of them with nothing lost.
    let config = app.config.clone();
    let mut again = spawn_app_with(move |c| *c = config).await;
    let more = publish_batch(&mut again.client, events("charge.update", 2)).await;
    let mut stream = subscribe(&mut again.client, after_sequence(resume_points[0])).await;
    let (rest, caught_up_at) = history(&mut stream, 10).await;
    assert_eq!(rest, more);
    assert_eq!(caught_up_at, 5);
}

/// Waits, without reading any stream, until the server refuses new connections: its
/// shutdown has begun. Bounded in attempts; each attempt is a real connect.
async fn until_refusing_connections(addr: std::net::SocketAddr) {
    for _ in 0..100_000 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(connection) => drop(connection),
            Err(_) => return,
        }
    }
    panic!("the server kept accepting connections after stop");
}

/// How a lagging subscriber's stream ended when the server shut down.
struct LaggingEnd {
    /// The sequences it received, in order.
    delivered: Vec<u64>,
    /// The final status, or `None` if the stream ended with OK.
    status: Option<tonic::Status>,
}

/// Starts a server holding 300 events of 4 KiB, subscribes from the beginning on a connection
/// with small HTTP/2 windows (64 KiB), reads only the first event (so the server's send queue
/// towards the subscriber fills up), shuts the server down, and then reads the stream to its
/// end.
async fn shut_down_with_a_lagging_subscriber() -> LaggingEnd {
    let mut app = spawn_app().await;
    for _ in 0..3 {
        publish_batch(&mut app.client, (0..100).map(|_| bulky_event(4)).collect()).await;
    }
    let narrow = Channel::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = EventServiceClient::new(narrow);
    let mut stream = subscribe(&mut client, from_beginning()).await;
    let mut delivered = vec![next_event(&mut stream).await.sequence];

    let addr = app.addr;
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    until_refusing_connections(addr).await;
    let mut status = None;
    for _ in 0..1_000 {
        let message = timeout(HANG_GUARD, stream.message()).await.expect("hang guard: stream");
        match message {
            Ok(Some(response)) => match response.item.expect("item") {
                Item::Event(event) => delivered.push(event.sequence),
                Item::CaughtUp(_) | Item::Heartbeat(_) => {}
                #[allow(unreachable_patterns)]
                other => panic!("unexpected item {other:?}"),
            },
            Ok(None) => break,
            Err(end) => {
                status = Some(end);
                break;
            }
        }
    }
    let _app = timeout(HANG_GUARD, stopping).await.expect("hang guard: stop").expect("stop task");
    LaggingEnd { delivered, status }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_far_behind_at_shutdown_is_never_told_its_stream_completed() {
    // Three attempts: how full the server's queue is when the shutdown begins depends on
    // scheduling, and a correct server passes every one of them.
    for attempt in 1..=3 {
        // Arrange, Act
        let LaggingEnd { delivered, status } = shut_down_with_a_lagging_subscriber().await;

        // Assert: a stream that never completes by design must not end with OK, or the client
        // takes it as finished and does not resume. UNAVAILABLE must name the last event sent.
        let last = *delivered.last().unwrap();
        assert_eq!(delivered, (1..=last).collect::<Vec<u64>>(), "attempt {attempt}: contiguous");
        let status = status.unwrap_or_else(|| {
            panic!(
                "attempt {attempt}: the stream ended with OK after sequence {last} of 300: \
                 no UNAVAILABLE, no resume point"
            )
        });
        if status.code() == Code::Unknown && status.message().starts_with("h2 protocol error") {
            // The connection itself was cut as the server closed it (a TCP reset can overtake
            // the last frames); the client resumes after `last`, which it knows.
            continue;
        }
        assert_eq!(status.code(), Code::Unavailable, "attempt {attempt}, after {last}: {status:?}");
        assert_eq!(resume_point(status.message()), last, "attempt {attempt}: the resume point");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reads_nothing_never_holds_up_publishers_and_catches_up_later() {
    // Arrange
    let mut app = spawn_app().await;
    let mut idle_client = app.new_client().await;
    let mut idle = subscribe(&mut idle_client, SubscribeEventsRequest::default()).await;
    assert_eq!(caught_up(&mut idle).await, 0);

    // Act: publish far more than the subscriber's queue and window hold, without reading.
    let mut published = Vec::new();
    timeout(HANG_GUARD, async {
        for _ in 0..10 {
            published.extend(
                publish_batch(&mut app.client, (0..100).map(|_| bulky_event(1)).collect()).await,
            );
        }
    })
    .await
    .expect("publishers are never held up by a subscriber");

    // Assert
    let delivered = next_events(&mut idle, published.len()).await;
    assert_eq!(ids(&delivered), ids(&published));
    assert_eq!(sequences(&delivered), (1..=1_000).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_serving_subscribers_after_100_clients_hang_up() {
    // Arrange: a long-lived subscriber, and 100 streams over four connections that go away
    // (half of them mid-history, half caught up).
    let mut app = spawn_app().await;
    let first: Vec<Event> = publish_batch(&mut app.client, events("charge.create", 5)).await;
    let mut watcher_client = app.new_client().await;
    let mut watcher = subscribe(&mut watcher_client, from_beginning()).await;
    assert_eq!(history(&mut watcher, 10).await, (first.clone(), 5));
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.new_client().await);
    }
    let mut doomed = Vec::new();
    for i in 0..100 {
        let mut stream = subscribe(&mut clients[i % 4], from_beginning()).await;
        if i % 2 == 0 {
            next_event(&mut stream).await;
        } else {
            history(&mut stream, 10).await;
        }
        doomed.push(stream);
    }

    // Act
    drop(doomed);
    drop(clients);
    let second = publish_batch(&mut app.client, events("charge.update", 5)).await;

    // Assert
    assert_eq!(next_events(&mut watcher, 5).await, second);
    let mut newcomer_client = app.new_client().await;
    let mut newcomer = subscribe(&mut newcomer_client, from_beginning()).await;
    assert_eq!(history(&mut newcomer, 20).await, ([first, second].concat(), 10));
    let last = publish(&mut app.client, event("charge.expire")).await;
    assert_eq!(next_event(&mut watcher).await, last);
    assert_eq!(next_event(&mut newcomer).await, last);
}

#[tokio::test]
async fn streams_beyond_max_subscribers_are_resource_exhausted_naming_the_flag_until_one_ends() {
    // On JetStream an app is two instances, each with its own cap: one client reaches one.
    let app = spawn_app_with(|c| c.max_subscribers = 2).await;
    let mut client = app.client.clone();
    let first = crate::support::subscribe(&mut client, SubscribeEventsRequest::default()).await;
    let _second = crate::support::subscribe(&mut client, SubscribeEventsRequest::default()).await;

    let refused = client.subscribe_events(SubscribeEventsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-subscribers"), "{}", refused.message());
    assert!(refused.message().contains('2'), "{}", refused.message());

    // A stream that ends frees its slot (once its task has seen the client go).
    drop(first);
    let admitted = timeout(crate::support::HANG_GUARD, async {
        loop {
            match client.subscribe_events(SubscribeEventsRequest::default()).await {
                Ok(stream) => return stream,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::task::yield_now().await
                }
                Err(status) => panic!("unexpected refusal: {status:?}"),
            }
        }
    });
    admitted.await.expect("hang guard: a slot is freed after a stream ends");
}
