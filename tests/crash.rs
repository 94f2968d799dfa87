//! Crash test: the real binary, kill -9'd again and again while clients publish and a
//! subscriber follows, must come back every time with every acknowledged event.
//!
//! One cycle:
//! 1. A subscriber resumes `after_sequence` = the last verified sequence and waits for
//!    `caught_up`; four publishers start (two with caller-supplied ids `crash_<cycle>_<task>_<n>`,
//!    two without), each mixing PublishEvent and PublishEvents (batches of 1–20) until a call
//!    fails. An answered call is recorded as acknowledged, exactly as answered; a failed one
//!    (the kill cuts it) as "maybe": it may or may not be stored, but only whole.
//! 2. After a random 0–300 ms the server gets SIGKILL. Every 10th cycle `eventsd check` runs
//!    on the killed store; every 5th cycle the server is also started and killed again during
//!    start-up (after a random delay around the usual time to ready).
//! 3. The restart must be ready within 30 s. Then the whole store is read back with one
//!    SubscribeEvents stream from the beginning to `caught_up` (one call, in sequence order,
//!    linear in the store; ListEvents pages cost a call per 100 events and are sorted by time,
//!    so they run as a cross-check every 10th cycle instead). Verified: sequences are exactly
//!    1..=N and `caught_up` is N; ListEvents' total is N; each id appears once; every event
//!    verified in an earlier cycle is still there byte for byte; every event acknowledged or
//!    delivered to the subscriber since is there byte for byte (encoded bytes, compared by
//!    fingerprint); every call's events (tagged `marker` = cycle/task/call/index/count in `data`)
//!    are all present in order or all absent, and none twice; GetEvent agrees for every
//!    caller id of a "maybe" call and for a random sample.
//! 4. Every "maybe" call with caller ids is retried as it was sent: it must succeed, return
//!    the stored events unchanged if they were stored, and a second retry must return the
//!    same; what the retries store is verified in the next cycle.
//!
//! Violations are collected, printed with the figures at the end, and fail the test.
//! `EVENTSD_CRASH_CYCLES` (default 5) sets the number of cycles and `EVENTSD_CRASH_SEED`
//! repeats a run's random choices (timing aside). The full run:
//! `EVENTSD_CRASH_CYCLES=200 cargo test --release --test crash -- --nocapture`.

mod child;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{
    Event, GetEventRequest, PublishEventRequest, PublishEventsRequest, SubscribeEventsRequest,
};
use prost_types::value::Kind;
use prost_types::{Struct, Timestamp, Value};
use tokio::sync::oneshot;
use tonic::{Code, Status};

use child::{dump, fingerprint, list_all, run_check, stored_total, Client, Prng, Server};

/// Cycles of a default `cargo test` run.
const DEFAULT_CYCLES: u64 = 5;
/// Concurrent publishers; the first [`WITH_IDS`] supply ids.
const PUBLISHERS: u64 = 4;
const WITH_IDS: u64 = 2;
/// The kill comes 0 to this many milliseconds after publishing starts.
const KILL_WINDOW_MS: u64 = 300;
/// The most a whole cycle may take (publish, kill, restart, verify, retry).
const CYCLE_LIMIT: Duration = Duration::from_secs(180);
/// A publisher stops by itself after this long (the kill normally stops it much earlier).
const PUBLISH_LIMIT: Duration = Duration::from_secs(60);
/// Random events fetched with GetEvent per verification.
const GET_SAMPLE: usize = 100;
/// Violations kept for the report (the count is exact).
const MAX_LISTED: usize = 30;
/// A base time for events with an explicit `created`: 2020-09-13T12:26:40Z.
const T0: i64 = 1_600_000_000;
/// Status codes a publish cut by the kill may end with; anything else is a server fault.
const CUT_CODES: [Code; 4] = [Code::Unavailable, Code::Unknown, Code::Cancelled, Code::Internal];

/// One publish call as sent.
#[derive(Debug, Clone)]
struct Call {
    cycle: u64,
    task: u64,
    number: u64,
    single: bool,
    requests: Vec<PublishEventRequest>,
}

impl Call {
    fn with_ids(&self) -> bool {
        !self.requests[0].id.is_empty()
    }

    fn name(&self) -> String {
        format!("call {}/{}/{}", self.cycle, self.task, self.number)
    }
}

/// A stored event the next verification must find, and why.
struct Expected {
    sequence: u64,
    id: String,
    fingerprint: u64,
    why: &'static str,
}

/// What the test believes about the store, and what went wrong.
#[derive(Default)]
struct Model {
    /// Every event verified so far, by sequence - 1: (id, fingerprint).
    known: Vec<(String, u64)>,
    /// Acknowledged or delivered since the last verification.
    expected: Vec<Expected>,
    /// Unacknowledged calls since the last verification.
    maybe: Vec<Call>,
    /// Of their caller ids, those the last verification found stored: (sequence, fingerprint).
    maybe_stored: HashMap<String, (u64, u64)>,
    /// The newest sequence the store is known to hold.
    last_sequence: u64,
    violation_count: usize,
    violations: Vec<String>,
}

impl Model {
    fn violation(&mut self, text: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_LISTED {
            println!("VIOLATION: {text}");
            self.violations.push(text);
        }
    }
}

/// The numbers printed at the end.
#[derive(Default)]
struct Figures {
    cycles: u64,
    startup_kills: u64,
    startup_kills_before_serving: u64,
    calls_acked: u64,
    events_acked: u64,
    events_delivered: u64,
    maybe_calls: u64,
    maybe_landed: u64,
    maybe_absent: u64,
    retried_calls: u64,
    retried_existing: u64,
    retried_new: u64,
    cut_codes: BTreeMap<String, u64>,
    ready_after_kill: Vec<Duration>,
    checks: u64,
    checks_ok: u64,
    list_cross_checks: u64,
    get_checks: u64,
}

/// Everything a cycle works on.
struct Crash {
    data: PathBuf,
    logs: PathBuf,
    server: Server,
    rng: Prng,
    model: Model,
    figures: Figures,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_repeated_kill_9_whole_and_in_order() {
    // Arrange
    let seed = child::seed("EVENTSD_CRASH_SEED");
    let cycles: u64 = std::env::var("EVENTSD_CRASH_CYCLES")
        .map(|c| c.parse().expect("EVENTSD_CRASH_CYCLES must be a number"))
        .unwrap_or(DEFAULT_CYCLES);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("create the log folder");
    let (server, _) = Server::start(&data, &logs.join("first.log"))
        .await
        .unwrap_or_else(|e| panic!("first start: {e}"));
    let mut crash = Crash {
        data,
        logs,
        server,
        rng: Prng::new(seed),
        model: Model::default(),
        figures: Figures::default(),
    };
    let started = Instant::now();

    // Act and assert, cycle by cycle.
    for cycle in 0..cycles {
        if tokio::time::timeout(CYCLE_LIMIT, crash.cycle(cycle)).await.is_err() {
            panic!(
                "cycle {cycle} did not finish within {CYCLE_LIMIT:?}; server stderr:\n{}",
                crash.server.stderr_tail()
            );
        }
        crash.figures.cycles += 1;
    }

    // A clean stop at the end, and `eventsd check` on the result.
    let status = crash.server.terminate(Duration::from_secs(30)).await.expect("SIGTERM stop");
    if !status.success() {
        crash.model.violation(format!("the final SIGTERM stop exited with {status}"));
    }
    let check = run_check(&crash.data).await;
    crash.figures.checks += 1;
    if check.ok() {
        crash.figures.checks_ok += 1;
    } else {
        crash.model.violation(format!("eventsd check after the final stop: {}", check.output));
    }

    crash.report(seed, started.elapsed());
    assert_eq!(
        crash.model.violation_count, 0,
        "{} violation(s); the first: {:?}",
        crash.model.violation_count, crash.model.violations
    );
}

impl Crash {
    async fn cycle(&mut self, cycle: u64) {
        self.publish_and_kill(cycle).await;
        if (cycle + 1).is_multiple_of(10) {
            self.check_killed_store(cycle).await;
        }
        if (cycle + 1).is_multiple_of(5) {
            self.kill_during_startup(cycle).await;
        }
        let log = self.logs.join(format!("cycle-{cycle}.log"));
        let (server, took) = Server::start(&self.data, &log)
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: the restart after kill -9 failed: {e}"));
        self.server = server;
        self.figures.ready_after_kill.push(took);
        self.verify(cycle).await;
        self.retry_maybe_calls().await;
    }

    /// Runs the subscriber and the publishers, kills the server at a random moment, and
    /// records what each call and the subscriber saw.
    async fn publish_and_kill(&mut self, cycle: u64) {
        let after = self.model.last_sequence;
        let (caught_up_tx, caught_up) = oneshot::channel();
        let subscriber = tokio::spawn(subscriber(self.server.client().await, after, caught_up_tx));
        match tokio::time::timeout(child::CALL_LIMIT, caught_up).await {
            Ok(Ok(())) => {}
            _ => self.model.violation(format!("cycle {cycle}: the subscriber never caught up")),
        }
        let mut publishers = Vec::new();
        for task in 0..PUBLISHERS {
            let client = self.server.client().await;
            publishers.push(tokio::spawn(publisher(client, cycle, task, self.rng.fork())));
        }
        // The random moment of the crash (a chosen point in time, not a wait for anything).
        tokio::time::sleep(Duration::from_millis(self.rng.range(0, KILL_WINDOW_MS))).await;
        self.server.kill9();

        for publisher in publishers {
            let outcomes = publisher.await.expect("publisher task");
            for (call, result) in outcomes {
                self.record_call(after, call, result);
            }
        }
        let delivered = subscriber.await.expect("subscriber task");
        for problem in delivered.problems {
            self.model.violation(format!("cycle {cycle}: subscriber: {problem}"));
        }
        self.figures.events_delivered += delivered.events.len() as u64;
        for (sequence, id, fingerprint) in delivered.events {
            self.model.expected.push(Expected { sequence, id, fingerprint, why: "delivered" });
        }
    }

    /// Checks an answer against its request and remembers it as acknowledged or maybe.
    fn record_call(&mut self, after: u64, call: Call, result: Result<Vec<Event>, Status>) {
        let events = match result {
            Ok(events) => events,
            Err(status) => {
                *self.figures.cut_codes.entry(format!("{:?}", status.code())).or_default() += 1;
                if !CUT_CODES.contains(&status.code()) {
                    self.model.violation(format!("{}: failed with {status}", call.name()));
                }
                self.figures.maybe_calls += 1;
                self.model.maybe.push(call);
                return;
            }
        };
        self.figures.calls_acked += 1;
        self.figures.events_acked += events.len() as u64;
        if let Some(problem) = answer_problem(&call, &events, after) {
            self.model.violation(format!("{}: {problem}", call.name()));
        }
        for event in events {
            self.model.expected.push(Expected {
                sequence: event.sequence,
                fingerprint: fingerprint(&event),
                id: event.id,
                why: "acknowledged",
            });
        }
    }

    async fn check_killed_store(&mut self, cycle: u64) {
        let check = run_check(&self.data).await;
        self.figures.checks += 1;
        if check.ok() {
            self.figures.checks_ok += 1;
        } else {
            self.model.violation(format!(
                "cycle {cycle}: eventsd check on the killed store exited {:?}: {}",
                check.code, check.output
            ));
        }
    }

    /// Starts the server and kills it after a random delay of up to about 1.5 times the
    /// average time to ready, so most kills land inside start-up (store recovery).
    async fn kill_during_startup(&mut self, cycle: u64) {
        let ready = &self.figures.ready_after_kill;
        let average = if ready.is_empty() {
            Duration::from_millis(20)
        } else {
            ready.iter().sum::<Duration>() / ready.len() as u32
        };
        let window = (average.as_micros() as u64 * 3 / 2).max(1_000);
        let log = self.logs.join(format!("startup-kill-{cycle}.log"));
        let mut server = Server::spawn(&self.data, &log);
        tokio::time::sleep(Duration::from_micros(self.rng.range(0, window))).await;
        server.kill9();
        self.figures.startup_kills += 1;
        if !server.stderr().contains("eventsd serving") {
            self.figures.startup_kills_before_serving += 1;
        }
    }

    /// Reads the whole store back and checks it against everything known.
    async fn verify(&mut self, cycle: u64) {
        let mut client = self.server.client().await;
        let (events, caught_up) = match dump(&mut client).await {
            Ok(dumped) => dumped,
            Err(status) => {
                self.model.violation(format!("cycle {cycle}: reading the store failed: {status}"));
                return;
            }
        };
        let n = events.len() as u64;
        let fingerprints: Vec<u64> = events.iter().map(fingerprint).collect();
        let model = &mut self.model;

        // Sequences exactly 1..=N.
        if let Some((i, e)) = events.iter().enumerate().find(|(i, e)| e.sequence != *i as u64 + 1) {
            model.violation(format!(
                "cycle {cycle}: position {} holds sequence {} (a gap or disorder)",
                i + 1,
                e.sequence
            ));
        }
        if caught_up != n {
            model.violation(format!("cycle {cycle}: caught_up {caught_up} but {n} events"));
        }
        // Each id once.
        let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            if let Some(first) = by_id.insert(&event.id, i) {
                model.violation(format!(
                    "cycle {cycle}: id {} is stored at sequences {} and {}",
                    event.id,
                    first + 1,
                    i + 1
                ));
            }
        }
        // Everything verified before is still there, byte for byte.
        if (model.known.len() as u64) > n {
            model.violation(format!(
                "cycle {cycle}: the store shrank from {} to {n} events",
                model.known.len()
            ));
        }
        let mut changed = 0;
        for (i, (id, fp)) in model.known.iter().enumerate().take(events.len()) {
            if events[i].id != *id || fingerprints[i] != *fp {
                changed += 1;
            }
        }
        if changed > 0 {
            model.violation(format!(
                "cycle {cycle}: {changed} event(s) verified earlier are altered or moved"
            ));
        }
        // Everything acknowledged or delivered since is there, byte for byte. Losses are
        // reported per kind, with the first few examples, not one line per event.
        let mut lost: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for expected in std::mem::take(&mut model.expected) {
            let at = (expected.sequence as usize).wrapping_sub(1);
            let found = events.get(at).map(|e| (e.id.as_str(), fingerprints[at]));
            if found != Some((expected.id.as_str(), expected.fingerprint)) {
                let how = if found.is_some() { "altered or moved" } else { "missing" };
                let example = format!("{} (sequence {})", expected.id, expected.sequence);
                lost.entry((expected.why, how)).or_default().push(example);
            }
        }
        for ((why, how), examples) in lost {
            model.violation(format!(
                "cycle {cycle}: {} {why} event(s) {how}, first: {}",
                examples.len(),
                examples[..examples.len().min(3)].join(", ")
            ));
        }
        // Each call's events all present in order, or all absent; none twice. Events up to
        // `known` were checked in earlier cycles and are unchanged, so only newer ones are read.
        let new = &events[model.known.len().min(events.len())..];
        for problem in group_problems(new) {
            model.violation(format!("cycle {cycle}: {problem}"));
        }
        for call in &model.maybe {
            let present = call.requests.len() - missing_of(call, new);
            if present == 0 {
                self.figures.maybe_absent += 1;
            } else {
                self.figures.maybe_landed += 1;
            }
        }

        // The other read paths agree: ListEvents' total, GetEvent for every caller id of a
        // maybe call and for a sample, and every 10th cycle a full ListEvents listing.
        match stored_total(&mut client).await {
            Ok(total) if total as u64 == n => {}
            Ok(total) => {
                model.violation(format!("cycle {cycle}: ListEvents total {total}, {n} events"))
            }
            Err(status) => model.violation(format!("cycle {cycle}: ListEvents failed: {status}")),
        }
        let mut ids: Vec<String> = model
            .maybe
            .iter()
            .filter(|c| c.with_ids())
            .flat_map(|c| c.requests.iter().map(|r| r.id.clone()))
            .collect();
        model.maybe_stored = ids
            .iter()
            .filter_map(|id| {
                let &i = by_id.get(id.as_str())?;
                Some((id.clone(), (i as u64 + 1, fingerprints[i])))
            })
            .collect();
        for _ in 0..GET_SAMPLE.min(events.len()) {
            ids.push(events[self.rng.range(0, n - 1) as usize].id.clone());
        }
        for id in ids {
            self.figures.get_checks += 1;
            let stored = by_id.get(id.as_str()).map(|&i| fingerprints[i]);
            let got = get(&mut client, &id).await;
            let got = got.as_ref().map(|r| r.as_ref().map(fingerprint));
            match (stored, got) {
                (Some(fp), Ok(Some(got))) if fp == got => {}
                (None, Ok(None)) => {}
                (stored, got) => model.violation(format!(
                    "cycle {cycle}: GetEvent {id}: {got:?}, the stream {}",
                    if stored.is_some() { "has it" } else { "does not have it" }
                )),
            }
        }
        if (cycle + 1).is_multiple_of(10) {
            self.figures.list_cross_checks += 1;
            match list_all(&mut client).await {
                Ok(listed) if listed.iter().map(fingerprint).eq(fingerprints.iter().copied()) => {}
                Ok(listed) => model.violation(format!(
                    "cycle {cycle}: ListEvents pages ({} events) differ from the stream ({n})",
                    listed.len()
                )),
                Err(status) => model.violation(format!("cycle {cycle}: listing failed: {status}")),
            }
        }

        model.known = events.into_iter().zip(fingerprints).map(|(e, fp)| (e.id, fp)).collect();
        model.last_sequence = n;
    }

    /// Retries every unacknowledged call that had caller ids, twice, exactly as it was sent.
    async fn retry_maybe_calls(&mut self) {
        let mut client = self.server.client().await;
        let known = std::mem::take(&mut self.model.maybe_stored);
        for call in std::mem::take(&mut self.model.maybe).into_iter().filter(Call::with_ids) {
            self.figures.retried_calls += 1;
            let first = match send(&mut client, &call).await {
                Ok(events) => events,
                Err(status) => {
                    self.model.violation(format!("retry of {}: {status}", call.name()));
                    continue;
                }
            };
            if let Some(problem) = answer_problem(&call, &first, 0) {
                self.model.violation(format!("retry of {}: {problem}", call.name()));
            }
            for event in &first {
                match known.get(&event.id) {
                    Some(&(seq, fp)) => {
                        self.figures.retried_existing += 1;
                        if (event.sequence, fingerprint(event)) != (seq, fp) {
                            self.model.violation(format!(
                                "retry of {}: {} came back as sequence {}, stored at {seq}",
                                call.name(),
                                event.id,
                                event.sequence
                            ));
                        }
                    }
                    None => {
                        self.figures.retried_new += 1;
                        self.model.last_sequence = self.model.last_sequence.max(event.sequence);
                        self.model.expected.push(Expected {
                            sequence: event.sequence,
                            id: event.id.clone(),
                            fingerprint: fingerprint(event),
                            why: "retried",
                        });
                    }
                }
            }
            let second = send(&mut client, &call).await;
            let same = second
                .as_ref()
                .is_ok_and(|again| again.iter().map(fingerprint).eq(first.iter().map(fingerprint)));
            if !same {
                self.model.violation(format!(
                    "a second retry of {} did not return the same events: {second:?}",
                    call.name()
                ));
            }
        }
        match stored_total(&mut client).await {
            Ok(total) if total as u64 == self.model.last_sequence => {}
            other => self.model.violation(format!(
                "after the retries ListEvents total is {other:?}, expected {}",
                self.model.last_sequence
            )),
        }
    }

    fn report(&self, seed: u64, took: Duration) {
        let f = &self.figures;
        let ready = &f.ready_after_kill;
        let max = ready.iter().max().copied().unwrap_or_default();
        let avg = if ready.is_empty() {
            Duration::ZERO
        } else {
            ready.iter().sum::<Duration>() / ready.len() as u32
        };
        println!("\n== crash test figures (seed {seed}, {:.1} s)", took.as_secs_f64());
        println!("| figure | value |\n|---|---|");
        println!("| kill -9 cycles | {} |", f.cycles);
        println!(
            "| extra kill -9 during start-up | {} ({} before the server logged `eventsd serving`) |",
            f.startup_kills, f.startup_kills_before_serving
        );
        println!("| events acknowledged | {} in {} calls |", f.events_acked, f.calls_acked);
        println!("| events delivered to the subscriber | {} |", f.events_delivered);
        println!(
            "| calls cut by the kill (unacknowledged) | {}: {} stored whole, {} absent, 0 partial |",
            f.maybe_calls, f.maybe_landed, f.maybe_absent
        );
        println!("| status of cut calls | {:?} |", f.cut_codes);
        println!(
            "| cut calls with ids retried (twice each) | {}: {} events already stored (same sequence), {} stored by the retry |",
            f.retried_calls, f.retried_existing, f.retried_new
        );
        println!(
            "| restart to ready after kill -9 | max {} ms, avg {} ms over {} restarts |",
            max.as_millis(),
            avg.as_millis(),
            ready.len()
        );
        println!(
            "| `eventsd check` on killed / final store | {} of {} ok |",
            f.checks_ok, f.checks
        );
        println!(
            "| GetEvent spot checks / full ListEvents cross-checks | {} / {} |",
            f.get_checks, f.list_cross_checks
        );
        println!("| events in the final store | {} |", self.model.last_sequence);
        println!("| violations | {} |", self.model.violation_count);
        for violation in &self.model.violations {
            println!("- {violation}");
        }
    }
}

/// What the subscriber saw: (sequence, id, fingerprint) of each event, and any problem.
struct Delivered {
    events: Vec<(u64, String, u64)>,
    problems: Vec<String>,
}

/// Follows the store from `after` until the stream breaks (the kill); signals `caught_up`.
async fn subscriber(mut client: Client, after: u64, caught_up: oneshot::Sender<()>) -> Delivered {
    let mut delivered = Delivered { events: Vec::new(), problems: Vec::new() };
    let request =
        SubscribeEventsRequest { start: Some(Start::AfterSequence(after)), ..Default::default() };
    let mut stream = match client.subscribe_events(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            delivered.problems.push(format!("subscribe after {after}: {status}"));
            return delivered;
        }
    };
    let mut caught_up = Some(caught_up);
    let mut next = after + 1;
    let deadline = tokio::time::Instant::now() + PUBLISH_LIMIT;
    while let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, stream.message()).await {
        match message.item {
            Some(Item::Event(event)) => {
                if event.sequence != next {
                    delivered
                        .problems
                        .push(format!("expected sequence {next}, got {}", event.sequence));
                }
                next = event.sequence + 1;
                delivered.events.push((event.sequence, event.id.clone(), fingerprint(&event)));
            }
            Some(Item::CaughtUp(_)) => {
                if let Some(signal) = caught_up.take() {
                    let _ = signal.send(());
                }
            }
            // Heartbeats (and any other kind of item) carry no event of the store.
            _ => {}
        }
    }
    delivered
}

/// Publishes calls until one fails (the kill) and returns every call with its result.
async fn publisher(
    mut client: Client,
    cycle: u64,
    task: u64,
    mut rng: Prng,
) -> Vec<(Call, Result<Vec<Event>, Status>)> {
    let mut outcomes = Vec::new();
    let mut next_id = 0;
    let started = Instant::now();
    for number in 0.. {
        let call = make_call(cycle, task, number, &mut next_id, &mut rng);
        let result = send(&mut client, &call).await;
        let failed = result.is_err();
        outcomes.push((call, result));
        if failed || started.elapsed() > PUBLISH_LIMIT {
            break;
        }
    }
    outcomes
}

/// A random call: PublishEvent half the time, else PublishEvents with 1–20 events.
fn make_call(cycle: u64, task: u64, number: u64, next_id: &mut u64, rng: &mut Prng) -> Call {
    const TYPES: [&str; 5] =
        ["charge.create", "charge.capture", "payment.captured", "refund.create", "transfer.pay"];
    let single = rng.chance(50);
    let count = if single { 1 } else { rng.range(1, 20) };
    let requests = (0..count)
        .map(|index| {
            let id = if task < WITH_IDS {
                *next_id += 1;
                format!("crash_{cycle}_{task}_{}", *next_id - 1)
            } else {
                String::new()
            };
            // Mostly small events; one in fifty carries 16–64 KiB.
            let pad = if rng.chance(2) { rng.range(16_384, 65_536) } else { rng.range(0, 512) };
            let marker = format!("{cycle}/{task}/{number}/{index}/{count}");
            PublishEventRequest {
                id,
                r#type: TYPES[rng.range(0, 4) as usize].into(),
                livemode: rng.chance(50),
                created: rng
                    .chance(25)
                    .then(|| Timestamp { seconds: T0 + rng.range(0, 1_000_000) as i64, nanos: 0 }),
                api_version: if rng.chance(30) { "2019-05-29".into() } else { String::new() },
                source: "crash-test".into(),
                data: Some(Struct {
                    fields: [
                        ("object", string("charge")),
                        ("marker", string(&marker)),
                        ("amount", float(rng.range(1, 10_000_000) as f64)),
                        ("pad", string(&rng.text(pad as usize))),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                }),
            }
        })
        .collect();
    Call { cycle, task, number, single, requests }
}

/// Sends a call the way it was built, bounded by the hang guard.
async fn send(client: &mut Client, call: &Call) -> Result<Vec<Event>, Status> {
    let publish = async {
        if call.single {
            Ok(vec![client.publish_event(call.requests[0].clone()).await?.into_inner()])
        } else {
            let batch = PublishEventsRequest { events: call.requests.clone() };
            Ok(client.publish_events(batch).await?.into_inner().events)
        }
    };
    tokio::time::timeout(child::CALL_LIMIT, publish)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("hang guard: publish")))
}

/// GetEvent: Ok(None) on NOT_FOUND.
async fn get(client: &mut Client, id: &str) -> Result<Option<Event>, Status> {
    let request = GetEventRequest { id: id.into(), livemode: None };
    match tokio::time::timeout(child::CALL_LIMIT, client.get_event(request)).await {
        Err(_) => Err(Status::deadline_exceeded("hang guard: get")),
        Ok(Ok(event)) => Ok(Some(event.into_inner())),
        Ok(Err(status)) if status.code() == Code::NotFound => Ok(None),
        Ok(Err(status)) => Err(status),
    }
}

/// What is wrong with an answer to `call`, if anything: one event per request, carrying the
/// request's fields, in increasing sequence order above `after` (0: no bound).
fn answer_problem(call: &Call, events: &[Event], after: u64) -> Option<String> {
    if events.len() != call.requests.len() {
        return Some(format!("{} events answered for {} sent", events.len(), call.requests.len()));
    }
    let mut previous = after;
    for (request, event) in call.requests.iter().zip(events) {
        let same = (request.id.is_empty() || request.id == event.id)
            && request.r#type == event.r#type
            && request.livemode == event.livemode
            && request.data == event.data
            && request.api_version == event.api_version
            && request.source == event.source
            && (request.created.is_none() || request.created == event.created);
        if !same {
            return Some(format!("the answer {} does not match its request", event.id));
        }
        if after > 0 && event.sequence <= previous {
            return Some(format!("sequence {} does not follow {previous}", event.sequence));
        }
        previous = event.sequence;
    }
    None
}

/// The `marker` of an event as (cycle, task, call, index, count).
fn marker(event: &Event) -> Option<[u64; 5]> {
    let Some(Kind::StringValue(text)) =
        event.data.as_ref()?.fields.get("marker").and_then(|v| v.kind.as_ref())
    else {
        return None;
    };
    let parts: Vec<u64> = text.split('/').filter_map(|p| p.parse().ok()).collect();
    parts.try_into().ok()
}

/// A call's declared event count and the (index, sequence) of each of its stored events.
type Members = (u64, Vec<(u64, u64)>);

/// Calls whose events are partly present, out of order or present twice.
fn group_problems(events: &[Event]) -> Vec<String> {
    let mut groups: HashMap<[u64; 3], Members> = HashMap::new();
    let mut problems = Vec::new();
    for event in events {
        let Some([cycle, task, call, index, count]) = marker(event) else {
            problems.push(format!("event {} has no marker", event.id));
            continue;
        };
        let group = groups.entry([cycle, task, call]).or_insert((count, Vec::new()));
        group.1.push((index, event.sequence));
    }
    for ([cycle, task, call], (count, mut members)) in groups {
        members.sort_unstable();
        let indexes: Vec<u64> = members.iter().map(|m| m.0).collect();
        let distinct: HashSet<u64> = indexes.iter().copied().collect();
        let ordered = members.windows(2).all(|w| w[0].1 < w[1].1);
        if indexes != (0..count).collect::<Vec<_>>() || distinct.len() != indexes.len() || !ordered
        {
            problems.push(format!(
                "call {cycle}/{task}/{call} ({count} events) is stored as indexes {indexes:?} \
                 at sequences {:?}: not all-or-nothing, in order, once",
                members.iter().map(|m| m.1).collect::<Vec<_>>()
            ));
        }
    }
    problems
}

/// How many of the call's events are absent from `events` (by marker).
fn missing_of(call: &Call, events: &[Event]) -> usize {
    let present = events
        .iter()
        .filter_map(marker)
        .filter(|m| m[..3] == [call.cycle, call.task, call.number])
        .count();
    call.requests.len().saturating_sub(present)
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn float(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}

/// The store written by the sled-only release, committed in `tests/fixtures/store-v1/`.
fn fixture_copy(to: &std::path::Path) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let data = to.join("data");
    child::copy_dir(&root.join("data"), &data);
    data
}

/// `eventsd migrate --data-dir DIR`, aborted (as by kill -9) at `abort_at` if given, one of
/// the migration's steps. Returns the exit code, or `None` if it was aborted.
async fn migrate(data: &std::path::Path, abort_at: Option<&str>) -> Option<i32> {
    let mut command = std::process::Command::new(child::BINARY);
    command.arg("migrate").arg("--data-dir").arg(data).env("RUST_LOG", "warn");
    if let Some(step) = abort_at {
        command.env("EVENTSD_MIGRATE_ABORT_AT", step);
    }
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn eventsd migrate");
    let deadline = Instant::now() + child::READY_LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("poll migrate") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "eventsd migrate did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `data`, and checks that `eventsd list --all` prints exactly what the sled-only
/// release printed for the fixture, and that a publish continues the sequence.
async fn assert_serves_the_fixture(data: &std::path::Path, log: &std::path::Path) {
    let expected = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/store-v1/events.jsonl"),
    )
    .expect("read the fixture's listing");
    let (mut server, _) = Server::start(data, log).await.expect("the migrated store serves");
    let listed = std::process::Command::new(child::BINARY)
        .args(["list", "--all", "--addr", &format!("http://{}", server.grpc)])
        .output()
        .expect("run eventsd list");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(String::from_utf8_lossy(&listed.stdout), expected, "the migrated listing differs");
    let mut client = server.client().await;
    let event = client
        .publish_event(PublishEventRequest {
            r#type: "after.migrate".into(),
            data: Some(Struct {
                fields: [("n".to_string(), Value { kind: Some(Kind::NumberValue(1.0)) })].into(),
            }),
            ..Default::default()
        })
        .await
        .expect("publish after migrate")
        .into_inner();
    assert_eq!(event.sequence, 38, "the sequence continues after the fixture's 37 events");
    server.kill9();
}

#[tokio::test]
async fn a_store_of_the_sled_only_release_is_refused_then_migrated_with_every_event_unchanged() {
    // Arrange
    let dir = tempfile::tempdir().expect("temp dir");
    let data = fixture_copy(dir.path());

    // Act: a start is refused, naming the command.
    let mut refused = Server::spawn(&data, &dir.path().join("refused.log"));
    let startup = refused.wait_ready(child::READY_LIMIT).await;
    assert!(
        matches!(startup, child::Startup::Exited(s) if !s.success()),
        "the old store was served"
    );
    let expected = format!("eventsd migrate --data-dir {}", data.display());
    assert!(refused.stderr().contains(&expected), "{}", refused.stderr());
    assert_eq!(migrate(&data, None).await, Some(0));

    // Assert: served as before; the old files are gone; a rerun has nothing to do.
    assert!(!data.join("db").exists() && !data.join("migrating").exists());
    assert_serves_the_fixture(&data, &dir.path().join("server.log")).await;
    assert_eq!(migrate(&data, None).await, Some(0), "a rerun of a finished migration");
    let check = run_check(&data).await;
    assert!(check.ok(), "{}", check.output);
}

#[tokio::test]
async fn migrate_cut_short_at_every_step_and_rerun_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    for step in eventsd::store::embedded::MIGRATE_STEPS {
        // Arrange: a fresh copy of the fixture.
        let data = fixture_copy(&dir.path().join(step));
        // Act: the migration dies at this step (abort, as kill -9), a start is refused, and a
        // rerun finishes it.
        assert_eq!(migrate(&data, Some(step)).await, None, "migrate was not cut at {step}");
        if step != "finished" {
            let mut server = Server::spawn(&data, &dir.path().join(format!("{step}-refused.log")));
            let startup = server.wait_ready(child::READY_LIMIT).await;
            assert!(
                matches!(startup, child::Startup::Exited(s) if !s.success()),
                "a store cut at {step} was served"
            );
            assert!(server.stderr().contains("eventsd migrate --data-dir"), "{}", server.stderr());
        }
        assert_eq!(migrate(&data, None).await, Some(0), "the rerun after {step}");
        // Assert
        assert_serves_the_fixture(&data, &dir.path().join(format!("{step}.log"))).await;
    }
}

#[tokio::test]
async fn a_kill_during_the_index_replay_at_start_loses_nothing() {
    let mut rng = Prng::new(child::seed("EVENTSD_CRASH_SEED"));
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    // Arrange: 2,000 acknowledged events, then the index deleted so every start replays the log.
    let (mut server, _) = Server::start(&data, &log).await.expect("start");
    let mut client = server.client().await;
    let mut acked = Vec::new();
    for n in 0..20 {
        let events = (0..100)
            .map(|i| PublishEventRequest {
                id: format!("replay_{n}_{i}"),
                r#type: "replay.test".into(),
                data: Some(Struct {
                    fields: [("i".to_string(), Value { kind: Some(Kind::NumberValue(i as f64)) })]
                        .into(),
                }),
                ..Default::default()
            })
            .collect();
        acked.extend(
            client
                .publish_events(PublishEventsRequest { events })
                .await
                .expect("publish")
                .into_inner()
                .events,
        );
    }
    server.kill9();
    std::fs::remove_dir_all(data.join("index")).expect("delete the index");

    // Act: starts killed at random points of the replay.
    let mut before_ready = 0;
    for k in 0..6 {
        let mut server = Server::spawn(&data, &dir.path().join(format!("replay-{k}.log")));
        tokio::time::sleep(Duration::from_millis(rng.range(0, 150))).await;
        if server.exited().is_none() && !server.stderr().contains("eventsd serving") {
            before_ready += 1;
        }
        server.kill9();
    }

    // Assert
    let (server, _) = Server::start(&data, &log).await.expect("the store serves");
    let mut client = server.client().await;
    let (events, caught_up) = dump(&mut client).await.expect("read everything");
    assert_eq!(caught_up, acked.len() as u64);
    assert_eq!(
        events.iter().map(fingerprint).collect::<Vec<_>>(),
        acked.iter().map(fingerprint).collect::<Vec<_>>()
    );
    for event in acked.iter().step_by(97) {
        let got = get(&mut client, &event.id).await.expect("get").expect("found");
        assert_eq!(fingerprint(&got), fingerprint(event));
    }
    println!("replay: {before_ready} of 6 kills came before the server was ready");
}
