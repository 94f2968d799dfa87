//! Cancel safety against the real binary: a client that hangs up mid-publish leaves each
//! event whole or absent, and a retry with the same id converges to exactly one event.
//!
//! Each of 300 publishes (single events and batches of 2–5, all with caller ids) is cut at a
//! random point: the call future is polled for a random number of microseconds (mostly
//! 0–200 µs, some up to 20 ms; tokio's timer has millisecond granularity, so the cut is a busy
//! poll with `yield_now`, not `tokio::time::timeout`) and then dropped, which resets the HTTP/2
//! stream; one call in four runs on a connection of its own that is dropped with it, so the
//! server also sees whole connections vanish. Afterwards every id must be NOT_FOUND or the
//! whole event (and stored if its answer had arrived), each batch all or nothing; then every
//! request is retried as it was, some twice, and the store must hold exactly one event per
//! id, sequences 1..=N, each as the retry answered it.
//!
//! `EVENTSD_CANCEL_SEED` repeats a run's random choices (timing aside).

mod child;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use eventsd::proto::{Event, GetEventRequest, PublishEventRequest, PublishEventsRequest};
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tonic::Code;

use child::{dump, stored_total, Client, Prng, Server, CALL_LIMIT};

/// How many publishes are cut.
const ATTEMPTS: usize = 300;

/// One publish as sent: a single event or a batch, with caller-supplied ids.
struct Publish {
    single: bool,
    requests: Vec<PublishEventRequest>,
}

/// What happened to a cut call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The answer arrived before the cut.
    Answered,
    /// The future was dropped first.
    Dropped,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_mid_call_leaves_each_event_whole_or_absent_and_a_retry_converges() {
    // Arrange
    let seed = child::seed("EVENTSD_CANCEL_SEED");
    let mut rng = Prng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _) = Server::start(&dir.path().join("data"), &dir.path().join("server.log"))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let shared = server.client().await;
    let publishes: Vec<Publish> = (0..ATTEMPTS).map(|i| publish_for(i, &mut rng)).collect();

    // Act: cut every call at a random moment.
    let mut cuts = Vec::with_capacity(ATTEMPTS);
    for publish in &publishes {
        let own_connection = rng.chance(25);
        let client = if own_connection { server.client().await } else { shared.clone() };
        // Mostly within the first 200 µs (the request still being written or just read), a
        // quarter up to 3 ms (inside or just after the server's commit), and some long enough
        // for the answer to arrive first, which must then be stored.
        let budget = match rng.range(0, 99) {
            0..=59 => rng.range(0, 200),
            60..=84 => rng.range(200, 3_000),
            _ => rng.range(3_000, 20_000),
        };
        cuts.push(cut_after(client, publish, Duration::from_micros(budget)).await);
    }

    // Assert: every id is absent or whole, every batch all or nothing.
    let mut client = server.client().await;
    let mut landed = 0;
    for (publish, cut) in publishes.iter().zip(&cuts) {
        let mut present = 0;
        for request in &publish.requests {
            match get(&mut client, &request.id).await {
                Some(stored) => {
                    assert_whole(&stored, request);
                    present += 1;
                }
                None => assert_ne!(
                    *cut,
                    Cut::Answered,
                    "{} was acknowledged but is not stored",
                    request.id
                ),
            }
        }
        assert!(
            present == 0 || present == publish.requests.len(),
            "batch {} is partly stored: {present} of {} events",
            publish.requests[0].id,
            publish.requests.len()
        );
        landed += usize::from(present > 0);
    }

    // Act: retry every publish exactly as it was sent.
    let mut first_answers: BTreeMap<String, Event> = BTreeMap::new();
    for publish in &publishes {
        for event in send(&mut client, publish).await.expect("a retry succeeds") {
            first_answers.insert(event.id.clone(), event);
        }
    }
    // A second retry must change nothing: the same events, the same sequences.
    for publish in publishes.iter().filter(|_| rng.chance(20)) {
        for event in send(&mut client, publish).await.expect("a second retry succeeds") {
            assert_eq!(
                event.encode_to_vec(),
                first_answers[&event.id].encode_to_vec(),
                "a second retry of {} returned a different event",
                event.id
            );
        }
    }

    // Assert: exactly one event per id, sequences 1..=N, each as the retry answered it.
    let ids: BTreeSet<&str> =
        publishes.iter().flat_map(|p| p.requests.iter().map(|r| r.id.as_str())).collect();
    let (events, caught_up) = dump(&mut client).await.expect("read the whole store");
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=ids.len() as u64).collect::<Vec<_>>(), "sequences 1..=N");
    assert_eq!(caught_up, ids.len() as u64);
    assert_eq!(stored_total(&mut client).await.expect("total"), ids.len() as i64);
    for event in &events {
        assert!(ids.contains(event.id.as_str()), "unexpected event {}", event.id);
        assert_eq!(event.encode_to_vec(), first_answers[&event.id].encode_to_vec());
    }

    let answered = cuts.iter().filter(|c| **c == Cut::Answered).count();
    println!(
        "cancel safety: {ATTEMPTS} publishes ({} events); answered before the cut {answered}; \
         cut {}; stored although cut {}; one event per id after retries: {} ids, {} events",
        ids.len(),
        ATTEMPTS - answered,
        landed - answered,
        ids.len(),
        events.len()
    );
}

/// Publish number `i`: one event (half the time) or a batch of 2–5, each with its own id.
fn publish_for(i: usize, rng: &mut Prng) -> Publish {
    let single = rng.chance(50);
    let count = if single { 1 } else { rng.range(2, 5) as usize };
    let requests = (0..count)
        .map(|j| {
            let id = if single { format!("cancel_{i}") } else { format!("cancel_{i}_{j}") };
            // Padding of up to 16 KiB makes a request span several HTTP/2 frames.
            let pad = rng.range(0, 16 * 1024) as usize;
            PublishEventRequest {
                id,
                r#type: "charge.create".into(),
                livemode: rng.chance(50),
                source: "cancel-test".into(),
                data: Some(data(&[
                    ("object", string("charge")),
                    ("attempt", number(i as f64)),
                    ("index", number(j as f64)),
                    ("pad", string(&rng.text(pad))),
                ])),
                ..Default::default()
            }
        })
        .collect();
    Publish { single, requests }
}

/// Polls the publish call for `budget`, yielding between polls, then drops it.
async fn cut_after(mut client: Client, publish: &Publish, budget: Duration) -> Cut {
    let deadline = Instant::now() + budget;
    let call = send(&mut client, publish);
    tokio::pin!(call);
    loop {
        let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = polled {
            result.expect("a publish that completes succeeds");
            return Cut::Answered;
        }
        if Instant::now() >= deadline {
            return Cut::Dropped;
        }
        tokio::task::yield_now().await;
    }
}

/// Sends the publish the way it was built (PublishEvent or PublishEvents).
async fn send(client: &mut Client, publish: &Publish) -> Result<Vec<Event>, tonic::Status> {
    let call = async {
        if publish.single {
            let event = client.publish_event(publish.requests[0].clone()).await?;
            Ok(vec![event.into_inner()])
        } else {
            let batch = PublishEventsRequest { events: publish.requests.clone() };
            Ok(client.publish_events(batch).await?.into_inner().events)
        }
    };
    tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("hang guard: publish")))
}

/// The stored event with this id, or None on NOT_FOUND.
async fn get(client: &mut Client, id: &str) -> Option<Event> {
    let request = GetEventRequest { id: id.into(), livemode: None };
    let answer =
        tokio::time::timeout(CALL_LIMIT, client.get_event(request)).await.expect("hang guard: get");
    match answer {
        Ok(event) => Some(event.into_inner()),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("GetEvent {id}: {status}"),
    }
}

/// The stored event carries exactly what the request sent.
fn assert_whole(stored: &Event, request: &PublishEventRequest) {
    assert_eq!(stored.id, request.id);
    assert_eq!(stored.r#type, request.r#type, "type of {}", request.id);
    assert_eq!(stored.livemode, request.livemode, "livemode of {}", request.id);
    assert_eq!(stored.source, request.source, "source of {}", request.id);
    assert_eq!(stored.data, request.data, "data of {}", request.id);
}

fn data(fields: &[(&str, Value)]) -> Struct {
    Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn number(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}
