//! Corruption: a damaged store is either served with every acknowledged event, or refused at
//! start with a clear error and a non-zero exit; it is never served with silent loss.
//!
//! The real binary builds a store of 500 events over two lives, each ended with SIGTERM, with
//! 64 KiB log segments (so the log has several sealed segments and an active one) and three
//! events of 300 KiB in a row (records larger than a segment, each alone in one).
//!
//! Each damage case works on two fresh copies of that folder, damaged identically:
//! `eventsd check` runs on one, the server starts on the other (three cases at a time). A
//! start must end within 30 s either ready — and then every acknowledged event must come back
//! byte for byte in a subscription stream from the beginning, with nothing extra, ListEvents'
//! total exact and GetEvent agreeing on every 5th event — or exited non-zero with an
//! `eventsd: …` line on stderr. Anything else fails the test: SILENT-LOSS (served with an
//! event missing, altered or extra), SERVED-BROKEN (served, but reads fail, and `eventsd check`
//! does not name the damage), UNCLEAR (exited without an `eventsd:` line, or with status 0)
//! and HUNG.
//!
//! A start reads only the last segment and the ends of the others (a start costs one segment,
//! not the history), so damage inside a sealed segment's records is found by the checksum of
//! the read that meets it: such a store is served, the damaged events' reads fail (INTERNAL,
//! the server log naming the segment and sequence), and `eventsd check` names it. That is
//! SERVED-LOUDLY, accepted only when check reports the damage.
//!
//! Damage: random byte flips in the records of the last and of sealed segments, truncations
//! of both, a deleted segment (first, middle, last), deleted offset files (rebuilt), a deleted
//! or damaged index (sled's files, the entries' run files and manifest; the index is derived,
//! rebuilt or refused naming `eventsd reindex`), and a damaged or deleted `eventsd.ack`. Deleting `eventsd.ack` leaves
//! the server nothing to prove completeness with, so that row is reported, not judged.
//! A table of outcomes, with `eventsd check`'s verdict beside each, is printed;
//! `EVENTSD_CORRUPTION_SEED` repeats a run's random choices.

mod child;

use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eventsd::proto::{Event, GetEventRequest, PublishEventRequest, PublishEventsRequest};
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tokio::sync::Semaphore;
use tonic::Code;

use child::{
    copy_dir, dump, fingerprint, run_check, stored_total, CheckOutcome, Client, Prng, Server,
    Startup, CALL_LIMIT, READY_LIMIT,
};

/// Events in the store.
const EVENTS: usize = 500;
/// Of which this many, published in a row, carry [`LARGE_PAD`] bytes of data.
const LARGE: usize = 3;
const LARGE_PAD: usize = 300 * 1024;
/// Log segment size of the test's servers.
const SEGMENT_BYTES: u64 = 64 * 1024;

/// Small segments, and a data limit above the default 256 KiB so that a record can be larger
/// than a segment. Children inherit the variables.
fn small_segments_and_large_events() {
    std::env::set_var("EVENTSD_MAX_DATA_BYTES", (1024 * 1024).to_string());
    std::env::set_var("EVENTSD_SEGMENT_BYTES", SEGMENT_BYTES.to_string());
}
/// Random byte flips in the last segment and in sealed ones, each on its own copy.
const FLIPS: usize = 8;
/// Damage cases run at once (each runs `eventsd check`, then a server).
const PARALLEL: usize = 3;
/// GetEvent checks every this many events of a served store.
const GET_STRIDE: usize = 5;
/// The ack record's file name.
const ACK: &str = "eventsd.ack";

/// One change to one file of the store (paths relative to the store folder).
#[derive(Debug, Clone)]
enum Damage {
    Flip { file: String, offset: u64, mask: u8 },
    Zero { file: String, offset: u64, len: u64 },
    Truncate { file: String, len: u64 },
    Delete { file: String },
}

/// A named damage case.
struct Case {
    name: String,
    damage: Vec<Damage>,
    /// False when the store cannot prove completeness after this damage (a deleted ack
    /// record): the outcome is reported, not judged.
    judged: bool,
}

/// What the server did with a damaged store.
#[derive(Debug)]
enum Outcome {
    ServedComplete {
        writes: String,
    },
    Refused {
        code: i32,
        message: String,
    },
    /// Served; reads of damaged records fail loudly (see the module header).
    ServedLoudly(String),
    SilentLoss(String),
    ServedBroken(String),
    Unclear(String),
    Hung,
}

impl Outcome {
    fn acceptable(&self) -> bool {
        matches!(
            self,
            Outcome::ServedComplete { .. } | Outcome::Refused { .. } | Outcome::ServedLoudly(_)
        )
    }

    fn label(&self) -> String {
        match self {
            Outcome::ServedComplete { writes } => format!("served-complete ({writes})"),
            Outcome::Refused { code, message } => format!("refused (exit {code}): {message}"),
            Outcome::ServedLoudly(detail) => format!("served-loudly: {detail}"),
            Outcome::SilentLoss(detail) => format!("SILENT-LOSS: {detail}"),
            Outcome::ServedBroken(detail) => format!("SERVED-BROKEN: {detail}"),
            Outcome::Unclear(detail) => format!("UNCLEAR: {detail}"),
            Outcome::Hung => format!("HUNG: neither ready nor exited within {READY_LIMIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_served_complete_or_refused_never_served_with_silent_loss() {
    small_segments_and_large_events();
    // Arrange: a store of acknowledged events, stopped cleanly.
    let seed = child::seed("EVENTSD_CORRUPTION_SEED");
    let mut rng = Prng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let pristine = dir.path().join("pristine");
    let log = dir.path().join("build.log");
    let acked = build_store(&pristine, &log, &mut rng, EVENTS, 200..200 + LARGE).await;
    let files = store_files(&pristine);
    println!("store: {} events; files: {}", acked.len(), describe(&pristine, &files));
    let baseline = run_check(&copy_of(&pristine, &dir.path().join("baseline"))).await;
    assert!(baseline.ok(), "eventsd check on the undamaged store: {}", baseline.output);

    // Act: every damage case on its own copies, a few at a time.
    let cases = cases(&pristine, &files, &mut rng);
    let acked = Arc::new(acked);
    let limit = Arc::new(Semaphore::new(PARALLEL));
    let mut running = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (pristine, work) = (pristine.clone(), dir.path().join(format!("case-{i}")));
        let (damage, acked, limit) = (case.damage.clone(), acked.clone(), limit.clone());
        running.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.expect("the semaphore stays open");
            let result = run_case(&pristine, &work, &damage, &acked).await;
            // Each case's copies are large; keep the disk use of a run flat.
            let _ = std::fs::remove_dir_all(&work);
            result
        }));
    }
    let mut rows = Vec::new();
    for (case, task) in cases.iter().zip(running) {
        let (outcome, check) = task.await.expect("damage case task");
        // A read failure of a served store is loud only if check names the damage.
        let outcome = match outcome {
            Outcome::ServedBroken(detail) if !check.ok() => Outcome::ServedLoudly(detail),
            other => other,
        };
        rows.push((case, outcome, check));
    }

    // Assert
    println!("\n== corruption outcomes (seed {seed})");
    println!("| damage | outcome | `eventsd check` |\n|---|---|---|");
    let mut failures = Vec::new();
    for (case, outcome, check) in &rows {
        let verdict = check_label(check);
        let judged = if case.judged { "" } else { " (not judged)" };
        println!("| {} | {}{judged} | {verdict} |", case.name, outcome.label());
        if case.judged && !outcome.acceptable() {
            failures.push(format!("{}: {}", case.name, outcome.label()));
        }
    }
    let refused = rows.iter().filter(|r| matches!(r.1, Outcome::Refused { .. })).count();
    let loudly = rows.iter().filter(|r| matches!(r.1, Outcome::ServedLoudly(_))).count();
    let complete = rows.iter().filter(|r| matches!(r.1, Outcome::ServedComplete { .. })).count();
    let flagged = rows.iter().filter(|r| !r.2.ok()).count();
    println!(
        "\n{} cases: {complete} served complete, {refused} refused, {loudly} served loudly, {} \
         unacceptable; eventsd check reported damage in {flagged}",
        rows.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "unacceptable outcomes:\n{}", failures.join("\n"));
}

/// Builds a store of `events` events, those in `large` with [`LARGE_PAD`] bytes of data, over
/// two lives of the server, each ended with SIGTERM, and returns every event as acknowledged.
async fn build_store(
    data: &Path,
    log: &Path,
    rng: &mut Prng,
    events: usize,
    large: Range<usize>,
) -> Vec<Event> {
    let mut acked = Vec::with_capacity(events);
    // The large events go one per call (a batch of them would exceed the request limit).
    for until in [events / 2, events] {
        let (mut server, _) =
            Server::start(data, log).await.unwrap_or_else(|e| panic!("start the server: {e}"));
        let mut client = server.client().await;
        while acked.len() < until {
            let n = acked.len();
            let room = if n < large.start { large.start - n } else { until - n };
            let batch = if large.contains(&n) || rng.chance(50) {
                1
            } else {
                (rng.range(2, 20) as usize).min(room).min(until - n)
            };
            let requests: Vec<PublishEventRequest> =
                (n..n + batch).map(|i| request(i, large.contains(&i), rng)).collect();
            let answer = if batch == 1 {
                client.publish_event(requests[0].clone()).await.map(|r| vec![r.into_inner()])
            } else {
                let batch = PublishEventsRequest { events: requests };
                client.publish_events(batch).await.map(|r| r.into_inner().events)
            };
            acked.extend(answer.expect("publish while building the store"));
        }
        let status = server.terminate(Duration::from_secs(30)).await.expect("SIGTERM stop");
        assert!(status.success(), "the clean stop exited with {status}");
    }
    acked
}

/// The deleted index on its own, small and quick: it is rebuilt from the log at start, and
/// the rebuilt store serves every event and takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_index_is_rebuilt_from_the_log_at_start() {
    small_segments_and_large_events();
    // Arrange
    let mut rng = Prng::new(child::seed("EVENTSD_CORRUPTION_SEED"));
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let acked = build_store(&data, &dir.path().join("build.log"), &mut rng, 60, 0..0).await;

    // Act
    std::fs::remove_dir_all(data.join("index")).expect("delete the index");
    let outcome = serve(&data, &dir.path().join("server.log"), &acked).await;

    // Assert
    assert!(
        matches!(&outcome, Outcome::ServedComplete { writes } if writes == "writes ok"),
        "{}",
        outcome.label()
    );
    let check = run_check(&data).await;
    assert!(check.ok(), "eventsd check after the rebuild: {}", check.output);
}

/// Event `i`: half with caller ids, a few large.
fn request(i: usize, large: bool, rng: &mut Prng) -> PublishEventRequest {
    let pad = if large { LARGE_PAD } else { rng.range(0, 600) as usize };
    PublishEventRequest {
        id: if i.is_multiple_of(2) { format!("corrupt_{i}") } else { String::new() },
        r#type: ["charge.create", "refund.create", "payment.captured"][i % 3].into(),
        livemode: rng.chance(50),
        source: "corruption-test".into(),
        data: Some(Struct {
            fields: [
                ("object".to_string(), string("charge")),
                ("index".to_string(), Value { kind: Some(Kind::NumberValue(i as f64)) }),
                ("pad".to_string(), string(&rng.text(pad))),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// Every file of the store, relative to it, sorted.
fn store_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read the store folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("inside the store");
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    files
}

fn describe(dir: &Path, files: &[String]) -> String {
    let sizes: Vec<String> =
        files.iter().map(|f| format!("{f} ({} B)", len(&dir.join(f)))).collect();
    sizes.join(", ")
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The damage cases for this store.
fn cases(store: &Path, files: &[String], rng: &mut Prng) -> Vec<Case> {
    let segments: Vec<&String> = files.iter().filter(|f| f.ends_with(".seg")).collect();
    assert!(segments.len() >= 3, "the premise failed: the log has {} segments", segments.len());
    let last = segments[segments.len() - 1];
    let sealed = &segments[..segments.len() - 1];
    let mut cases = Vec::new();
    let mut add =
        |name: String, damage: Vec<Damage>| cases.push(Case { name, damage, judged: true });
    for i in 0..FLIPS {
        // Half in the last segment (read whole at start), half in sealed ones.
        let file =
            if i % 2 == 0 { last } else { sealed[rng.range(0, sealed.len() as u64 - 1) as usize] };
        let size = len(&store.join(file));
        let offset = rng.range(0, size - 1);
        let mask = rng.range(1, 255) as u8;
        add(format!("{file}: byte {offset} ^ {mask:#04x}"), vec![flip(file, offset, mask)]);
    }
    for file in [last, sealed[sealed.len() / 2]] {
        let size = len(&store.join(file));
        for (what, to) in [("half", size / 2), ("minus 1 byte", size - 1), ("0", 0)] {
            add(format!("{file}: truncated to {what} ({to} B)"), vec![truncate(file, to)]);
        }
    }
    for file in [sealed[0], sealed[sealed.len() / 2], last] {
        add(format!("{file}: deleted"), vec![delete(file)]);
    }
    for file in [sealed[0], last] {
        let idx = file.replace(".seg", ".idx");
        add(format!("{idx}: deleted (rebuilt)"), vec![delete(&idx)]);
    }
    let index: Vec<Damage> =
        files.iter().filter(|f| f.starts_with("index/")).map(|f| delete(f)).collect();
    add("index: every file deleted (rebuilt)".into(), index);
    let db = len(&store.join("index/db"));
    for _ in 0..3 {
        let offset = rng.range(0, db - 1);
        add(format!("index/db: byte {offset} ^ 0xff"), vec![flip("index/db", offset, 0xff)]);
    }
    add("index/db: truncated to half".into(), vec![truncate("index/db", db / 2)]);
    let runs: Vec<&String> = files.iter().filter(|f| f.ends_with(".run")).collect();
    assert!(!runs.is_empty(), "the premise failed: the index entries have no run file");
    for run in &runs {
        let size = len(&store.join(run));
        let offset = rng.range(0, size - 1);
        add(format!("{run}: byte {offset} ^ 0xff"), vec![flip(run, offset, 0xff)]);
        add(format!("{run}: truncated to half"), vec![truncate(run, size / 2)]);
        add(format!("{run}: deleted"), vec![delete(run)]);
    }
    let manifest = "index/entries/manifest";
    add(format!("{manifest}: byte 6 ^ 0xff"), vec![flip(manifest, 6, 0xff)]);
    add(format!("{manifest}: deleted (rebuilt)"), vec![delete(manifest)]);
    add(format!("{ACK}: byte 12 flipped"), vec![flip(ACK, 12, 0x01)]);
    add(format!("{ACK}: truncated to 12 B"), vec![truncate(ACK, 12)]);
    add(format!("{ACK}: zeroed"), vec![Damage::Zero { file: ACK.into(), offset: 0, len: 24 }]);
    cases.push(Case { name: format!("{ACK}: deleted"), damage: vec![delete(ACK)], judged: false });
    cases
}

/// Damages two copies of the store identically; runs `eventsd check` on one and the server on
/// the other.
async fn run_case(
    pristine: &Path,
    work: &Path,
    damage: &[Damage],
    acked: &[Event],
) -> (Outcome, CheckOutcome) {
    let check_copy = copy_of(pristine, &work.join("check"));
    let serve_copy = copy_of(pristine, &work.join("serve"));
    for damage in damage {
        apply(&check_copy, damage);
        apply(&serve_copy, damage);
    }
    let mut check = run_check(&check_copy).await;
    check.output = check.output.replace(&check_copy.display().to_string(), "DIR");
    let outcome = serve(&serve_copy, &work.join("server.log"), acked).await;
    (outcome, check)
}

fn flip(file: &str, offset: u64, mask: u8) -> Damage {
    Damage::Flip { file: file.into(), offset, mask }
}

fn truncate(file: &str, len: u64) -> Damage {
    Damage::Truncate { file: file.into(), len }
}

fn delete(file: &str) -> Damage {
    Damage::Delete { file: file.into() }
}

fn apply(store: &Path, damage: &Damage) {
    let open = |file: &str| {
        OpenOptions::new().read(true).write(true).open(store.join(file)).expect("open a store file")
    };
    match damage {
        Damage::Flip { file, offset, mask } => {
            let f = open(file);
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, *offset).expect("read the byte to flip");
            byte[0] ^= mask;
            f.write_all_at(&byte, *offset).expect("write the flipped byte");
        }
        Damage::Zero { file, offset, len } => {
            open(file).write_all_at(&vec![0u8; *len as usize], *offset).expect("zero a range");
        }
        Damage::Truncate { file, len } => open(file).set_len(*len).expect("truncate"),
        Damage::Delete { file } => std::fs::remove_file(store.join(file)).expect("delete"),
    }
}

fn copy_of(from: &Path, to: &Path) -> PathBuf {
    copy_dir(from, to);
    to.to_path_buf()
}

/// Starts the server on a damaged store and judges what it does.
async fn serve(data: &Path, log: &Path, acked: &[Event]) -> Outcome {
    let mut server = Server::spawn(data, log);
    match server.wait_ready(READY_LIMIT).await {
        Startup::Ready(_) => {}
        Startup::TimedOut => return Outcome::Hung,
        Startup::Exited(status) => {
            let stderr = server.stderr();
            let message = stderr.lines().rev().find(|l| l.starts_with("eventsd: "));
            return match (status.code(), message) {
                (Some(code), Some(message)) if code != 0 => Outcome::Refused {
                    code,
                    message: message.replace(&data.display().to_string(), "DIR"),
                },
                _ => Outcome::Unclear(format!(
                    "exited with {status}; stderr: {}",
                    stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("(empty)")
                )),
            };
        }
    }
    let mut client = server.client().await;
    let outcome = verify(&mut client, acked).await;
    server.kill9();
    outcome
}

/// Reads everything back from a serving store and compares it with what was acknowledged.
async fn verify(client: &mut Client, acked: &[Event]) -> Outcome {
    let (events, _) = match dump(client).await {
        Ok(dumped) => dumped,
        Err(status) => return Outcome::ServedBroken(format!("the stream failed: {status}")),
    };
    let mut missing_or_altered = 0;
    let mut first = None;
    for (i, expected) in acked.iter().enumerate() {
        let found = events.iter().find(|e| e.sequence == expected.sequence);
        if found.map(fingerprint) != Some(fingerprint(expected)) {
            missing_or_altered += 1;
            first.get_or_insert(format!("sequence {} ({})", i + 1, expected.id));
        }
    }
    let extra = events.len().saturating_sub(acked.len() - missing_or_altered);
    if missing_or_altered > 0 || extra > 0 {
        return Outcome::SilentLoss(format!(
            "{} events served; {missing_or_altered} acknowledged missing or altered (first: {}), \
             {extra} unknown",
            events.len(),
            first.unwrap_or_default()
        ));
    }
    // The stream above compared every event; GetEvent (the id index) is checked on every
    // GET_STRIDE-th one, which keeps a served case cheap in a debug build.
    for expected in acked.iter().step_by(GET_STRIDE) {
        let request = GetEventRequest { id: expected.id.clone(), livemode: None };
        match tokio::time::timeout(CALL_LIMIT, client.get_event(request)).await {
            Ok(Ok(got)) if fingerprint(got.get_ref()) == fingerprint(expected) => {}
            Ok(Ok(_)) => return Outcome::SilentLoss(format!("GetEvent {}: altered", expected.id)),
            Ok(Err(status)) if status.code() == Code::NotFound => {
                return Outcome::SilentLoss(format!("GetEvent {}: NOT_FOUND", expected.id))
            }
            Ok(Err(status)) => {
                return Outcome::ServedBroken(format!("GetEvent {}: {status}", expected.id))
            }
            Err(_) => return Outcome::ServedBroken(format!("GetEvent {}: hung", expected.id)),
        }
    }
    match stored_total(client).await {
        Ok(total) if total as usize == acked.len() => {}
        Ok(total) => return Outcome::SilentLoss(format!("ListEvents total {total}")),
        Err(status) => return Outcome::ServedBroken(format!("ListEvents: {status}")),
    }
    // Reads are complete; say whether the store also takes a write (informational).
    let probe = PublishEventRequest {
        r#type: "probe.write".into(),
        data: Some(Struct { fields: [("object".to_string(), string("probe"))].into() }),
        ..Default::default()
    };
    let writes = match tokio::time::timeout(CALL_LIMIT, client.publish_event(probe)).await {
        Ok(Ok(event)) if event.get_ref().sequence == acked.len() as u64 + 1 => "writes ok".into(),
        Ok(Ok(event)) => format!("a write got sequence {}", event.get_ref().sequence),
        Ok(Err(status)) => format!("writes fail: {:?}", status.code()),
        Err(_) => "a write hung".into(),
    };
    Outcome::ServedComplete { writes }
}

fn check_label(check: &CheckOutcome) -> String {
    match check.code {
        Some(0) => "ok".into(),
        Some(code) => format!("exit {code}: {}", check.verdict()),
        None => format!("killed or timed out: {}", check.verdict()),
    }
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}
