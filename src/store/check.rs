//! `eventsd check`: offline verification of an embedded store.
//!
//! Verifies that every event record decodes and sits under its own sequence, that sequences
//! run from the first to the last with no gap, that the id, by-time and by-type indexes and
//! the per-stream counters agree with the events in both directions, and that the ack record
//! is not ahead of the store. It opens the store itself, so it refuses to run while a server
//! holds it (sled's lock).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Error;
use crate::proto::Event;
use crate::store::durability::{read_ack, AckRecord};
use crate::store::embedded::{decode, sled_config};
use crate::store::keys;

/// Most problems listed in a report (the count is always exact).
const MAX_LISTED: usize = 50;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Event records.
    pub events: u64,
    /// Lowest and highest sequence, if any.
    pub range: Option<(u64, u64)>,
    /// The ack record's sequence, if present and intact.
    pub acked: Option<u64>,
    /// Number of problems found.
    pub problem_count: usize,
    /// The first problems, as sentences.
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        }
    }

    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }
}

/// Verifies the store in `dir`.
pub fn check(dir: &Path) -> Result<Report, Error> {
    if !dir.join("db").exists() {
        return Err(Error::Startup(format!("{} holds no eventsd store", dir.display())));
    }
    let db = sled_config(dir, 64 * 1024 * 1024).open()?;
    let tree = db.open_tree("events")?;
    let mut report = Report::default();
    let mut by_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut tallies: BTreeMap<(bool, String), u64> = BTreeMap::new();
    let mut events: BTreeMap<u64, (bool, String, prost_types::Timestamp)> = BTreeMap::new();
    let first_kept = match tree.get(keys::FIRST_KEY)? {
        Some(v) => keys::u64_value(&v).unwrap_or(1),
        None => 1,
    };
    let mut expected_next: Option<u64> = Some(first_kept);

    for entry in tree.scan_prefix([keys::EVENT]) {
        let (key, value) = entry?;
        let Some(seq) = keys::seq_of(&key).filter(|_| key.len() == 9) else {
            report.problem(format!("malformed event key {key:?}"));
            continue;
        };
        let event: Event = match decode(seq, &value) {
            Ok(event) => event,
            Err(e) => {
                report.problem(format!("event {seq} does not decode: {e}"));
                continue;
            }
        };
        if event.sequence != seq {
            report.problem(format!("event under sequence {seq} says sequence {}", event.sequence));
        }
        if let Some(next) = expected_next {
            if seq != next {
                report.problem(format!(
                    "sequence gap: {next} to {} are missing",
                    seq.saturating_sub(1)
                ));
            }
        }
        expected_next = Some(seq + 1);
        report.events += 1;
        report.range = Some((report.range.map_or(seq, |r| r.0), seq));
        if by_id.insert(event.id.clone(), seq).is_some() {
            report.problem(format!("id {:?} is stored twice", event.id));
        }
        *tallies.entry((event.livemode, event.r#type.clone())).or_default() += 1;
        let created = event.created.unwrap_or_default();
        events.insert(seq, (event.livemode, event.r#type, created));
    }

    for entry in tree.scan_prefix([keys::ID]) {
        let (key, value) = entry?;
        let id = String::from_utf8_lossy(&key[1..]).into_owned();
        let seq = keys::u64_value(&value);
        match (seq, by_id.get(&id)) {
            (Some(seq), Some(stored)) if seq == *stored => {}
            (seq, stored) => report.problem(format!(
                "id index of {id:?} points to {seq:?} but the event is at {stored:?}"
            )),
        }
    }
    for id in by_id.keys() {
        if !tree.contains_key(keys::id(id))? {
            report.problem(format!("event {id:?} has no id index entry"));
        }
    }

    for (seq, (livemode, event_type, created)) in &events {
        for prefix in [keys::created_prefix(*livemode), keys::type_prefix(event_type, *livemode)] {
            if !tree.contains_key(keys::entry(&prefix, created, *seq))? {
                report.problem(format!(
                    "event {seq} is missing from an index ({:?})",
                    prefix[0] as char
                ));
            }
        }
    }
    let mut indexed = 0u64;
    for family in [b'c', b't'] {
        for entry in tree.scan_prefix([family]) {
            let (key, _) = entry?;
            indexed += 1;
            let seq = keys::seq_of(&key).unwrap_or(0);
            if !events.contains_key(&seq) {
                report.problem(format!("index entry points to missing event {seq}"));
            }
        }
    }
    if indexed != 2 * report.events {
        report.problem(format!("indexes hold {indexed} entries for {} events", report.events));
    }

    let mut counters: BTreeMap<(bool, String), u64> = BTreeMap::new();
    for entry in tree.scan_prefix([keys::COUNT]) {
        let (key, value) = entry?;
        match (keys::parse_count(&key), keys::u64_value(&value)) {
            (Some(stream), Some(n)) => {
                counters.insert(stream, n);
            }
            _ => report.problem("malformed counter".to_string()),
        }
    }
    if counters != tallies {
        report.problem(format!("counters {counters:?} disagree with the events {tallies:?}"));
    }

    match read_ack(dir)? {
        AckRecord::Acked(acked) => {
            report.acked = Some(acked);
            let last = report.range.map_or(0, |r| r.1);
            if acked > last {
                report.problem(format!(
                    "sequence {acked} was acknowledged but the store ends at {last}: events were lost"
                ));
            }
        }
        AckRecord::Damaged => report.problem("the ack record eventsd.ack is damaged".to_string()),
        AckRecord::Absent => {}
    }
    Ok(report)
}
