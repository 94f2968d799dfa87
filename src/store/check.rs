//! `eventsd check`: offline verification of an embedded store, log against index.
//!
//! The log: every segment is read whole; every record must be whole, checksummed, of the next
//! sequence, and decode as an event carrying its own sequence; segments must follow each other
//! with no gap and start at or before the first kept sequence; each offset file must match its
//! segment (the last segment's may lag: it is rebuilt at open); a tail of bytes after the last
//! whole record is reported (the next start cuts it if nothing acknowledged lies there).
//! The index: its applied sequence is within the log; every applied event has its id in the
//! id table, its by-time (naming its type) and by-type entries in the entries' runs, and is
//! counted, in its stream's count and in its time buckets at every level; nothing else is
//! indexed. The ack record must
//! not be ahead of the log. It opens the index itself, so it refuses to run while a server
//! holds it (sled's lock).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Error;
use crate::store::durability::{read_ack, AckRecord};
use crate::store::embedded::decode;
use crate::store::index::entries::Entries;
use crate::store::index::ids::IdTable;
use crate::store::index::{self, buckets, keys, Counts};
use crate::store::log::{self, record, segment};

/// Most problems listed in a report (the count is always exact).
const MAX_LISTED: usize = 50;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Event records kept (from the first kept sequence on).
    pub events: u64,
    /// First kept and last sequence, if any event is kept.
    pub range: Option<(u64, u64)>,
    /// The ack record's sequence, if present and intact.
    pub acked: Option<u64>,
    /// Number of problems found.
    pub problem_count: usize,
    /// The first problems, as sentences.
    pub problems: Vec<String>,
    /// Findings that are not problems (a torn tail the next start cuts, say).
    pub notes: Vec<String>,
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

/// The routing fields of one kept event, as the log has them.
struct Kept {
    livemode: bool,
    id: String,
    event_type: String,
    created: prost_types::Timestamp,
}

/// Verifies the store in `dir`.
pub fn check(dir: &Path) -> Result<Report, Error> {
    let log_dir = dir.join(log::DIR);
    if !log_dir.exists() {
        return Err(Error::Startup(format!(
            "{} holds no eventsd log{}",
            dir.display(),
            if dir.join("db").exists() {
                " (it is a store of an earlier release: run `eventsd migrate`)"
            } else {
                ""
            }
        )));
    }
    let mut report = Report::default();
    let acked = match read_ack(dir)? {
        AckRecord::Acked(acked) => Some(acked),
        AckRecord::Damaged => {
            report.problem("the ack record eventsd.ack is damaged".to_string());
            None
        }
        AckRecord::Absent => None,
    };
    report.acked = acked;
    let first = log::read_first(&log_dir)?;
    let kept = check_log(&log_dir, first, &mut report)?;
    let last = first + kept.len() as u64 - 1;
    report.events = kept.len() as u64;
    report.range = (!kept.is_empty()).then_some((first, last));
    if let Some(acked) = acked {
        if acked > last {
            report.problem(format!(
                "sequence {acked} was acknowledged but the log ends at {last}: events were lost"
            ));
        }
    }
    check_index(dir, first, &kept, &mut report)?;
    Ok(report)
}

/// Reads every segment; returns the kept events' fields in sequence order.
fn check_log(log_dir: &Path, first: u64, report: &mut Report) -> Result<Vec<Kept>, Error> {
    let mut starts: Vec<u64> = std::fs::read_dir(log_dir)?
        .filter_map(|e| e.ok()?.file_name().to_str().and_then(segment::parse_name))
        .collect();
    starts.sort_unstable();
    let mut kept = Vec::new();
    let Some(&start) = starts.first() else {
        report.problem(format!("the log in {} holds no segment", log_dir.display()));
        return Ok(kept);
    };
    if start > first {
        report.problem(format!(
            "sequences {first} to {} are missing: no segment holds them",
            start - 1
        ));
    }
    let mut next = start;
    for (i, &start) in starts.iter().enumerate() {
        let segment = segment::Segment::open(log_dir, start, false)?;
        let name = segment.path.display().to_string();
        if start != next {
            report.problem(format!(
                "{name}: starts at sequence {start}, but the log before it ends at {}",
                next - 1
            ));
        }
        let scan = segment.scan()?;
        if scan.valid_end < scan.file_len {
            let at = start + scan.entries.len() as u64;
            let text = format!(
                "{name}: {} bytes after the last whole record ({}) at byte {}: the record of sequence {at} is {}",
                scan.file_len - scan.valid_end,
                at - 1,
                scan.valid_end,
                if scan.damaged { "damaged" } else { "cut short" }
            );
            let last_segment = i + 1 == starts.len();
            match report.acked {
                // A round cut by a crash ends in a short record, or in a first record whose
                // checksum was not written yet: past the acknowledged sequence, either is cut
                // at the next start.
                Some(acked) if last_segment && at > acked => report.notes.push(format!(
                    "{text}; nothing acknowledged lies there, the next start cuts it"
                )),
                _ => report.problem(text),
            }
        }
        let offsets = segment.stored_offsets()?;
        if offsets.is_empty() && !scan.entries.is_empty() {
            report.notes.push(format!("{name}: no offset file; the next start rebuilds it"));
        } else if i + 1 != starts.len() && offsets != scan.entries {
            report.problem(format!(
                "{name}: its offset file does not match its {} records (delete the .idx file: \
                 the next start rebuilds it)",
                scan.entries.len()
            ));
        }
        let data = std::fs::read(&segment.path)?;
        for (k, &(offset, len)) in scan.entries.iter().enumerate() {
            let seq = start + k as u64;
            let frame = &data[offset as usize..(offset + len) as usize];
            let record::Frame::Whole { payload, .. } = record::parse(frame) else { continue };
            if seq < first {
                continue;
            }
            match decode(seq, payload) {
                Ok(event) if event.sequence == seq => kept.push(Kept {
                    livemode: event.livemode,
                    id: event.id,
                    event_type: event.r#type,
                    created: event.created.unwrap_or_default(),
                }),
                Ok(event) => report.problem(format!(
                    "{name}: record {seq} holds event sequence {}",
                    event.sequence
                )),
                Err(e) => report.problem(format!("{name}: record {seq} does not decode: {e}")),
            }
        }
        next = start + scan.entries.len() as u64;
    }
    Ok(kept)
}

/// Compares the index with the kept events.
fn check_index(dir: &Path, first: u64, kept: &[Kept], report: &mut Report) -> Result<(), Error> {
    if !dir.join(index::DIR).exists() {
        report.notes.push("there is no index; the next start builds it from the log".into());
        return Ok(());
    }
    let tree = index::open_tree(dir, 64 * 1024 * 1024)?;
    let loaded = index::load(&tree)?;
    let last = first + kept.len() as u64 - 1;
    if loaded.applied > last {
        report.problem(format!(
            "the index has applied sequence {} but the log ends at {last}: rebuild it with `eventsd reindex`",
            loaded.applied
        ));
        return Ok(());
    }
    if loaded.applied < last {
        report.notes.push(format!(
            "the index lags the log ({} of {last}); the next start replays the rest",
            loaded.applied
        ));
    }
    let applied: Vec<(u64, &Kept)> = kept
        .iter()
        .enumerate()
        .map(|(i, k)| (first + i as u64, k))
        .filter(|(seq, _)| *seq <= loaded.applied && *seq >= loaded.first)
        .collect();
    check_ids(dir, first, kept, report)?;
    let mut tallies = Counts::new();
    for &(_, k) in &applied {
        *tallies.entry((k.livemode, k.event_type.clone())).or_default() += 1;
    }
    check_entries(dir, first, kept, report)?;
    if tree.scan_prefix([keys::ID]).next().is_some() {
        report.problem(
            "the index holds id entries (an older layout); rebuild it with `eventsd reindex`"
                .into(),
        );
    }
    if tree.scan_prefix([keys::CREATED]).next().is_some() {
        report.problem(
            "the sled index holds entries (an older layout); rebuild it with `eventsd reindex`"
                .into(),
        );
    }
    check_buckets(&tree, &applied, report)?;
    let counters: Counts = loaded.counts.into_iter().filter(|(_, n)| *n > 0).collect();
    if counters != tallies {
        report.problem(format!("counters {counters:?} disagree with the events {tallies:?}"));
    }
    Ok(())
}

/// The entries on disk must be exactly the two of each kept event up to their `through`
/// (the next start inserts those after it), the by-time one naming its type.
fn check_entries(dir: &Path, first: u64, kept: &[Kept], report: &mut Report) -> Result<(), Error> {
    let (entries, through) = Entries::open(&dir.join(index::DIR), Default::default(), first)?;
    let last = first + kept.len() as u64 - 1;
    if through > last {
        report.problem(format!(
            "the index entries are on disk through {through} but the log ends at {last}: rebuild the index with `eventsd reindex`"
        ));
    }
    if through < last {
        report.notes.push(format!(
            "the index entries are on disk through {through} of {last}; the next start adds the rest"
        ));
    }
    let mut expected: Vec<Box<[u8]>> = (first..)
        .zip(kept)
        .take_while(|(seq, _)| *seq <= through)
        .flat_map(|(seq, k)| index::entries_of((seq, k.livemode, &k.event_type, &k.created)))
        .collect();
    expected.sort_unstable();
    let view = entries.snapshot();
    let all = view.range(
        (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        crate::store::Direction::Chronological,
        (first, through),
    );
    let mut expected = expected.into_iter().peekable();
    let (mut missing, mut extra) = (0u64, 0u64);
    for found in all {
        let found = match found {
            Ok(found) => found,
            Err(err) => {
                report.problem(err.to_string());
                break;
            }
        };
        loop {
            match expected.peek() {
                Some(e) if e[..] < found[..] => {
                    missing += 1;
                    expected.next();
                }
                Some(e) if e[..] == found[..] => {
                    expected.next();
                    break;
                }
                _ => {
                    extra += 1;
                    break;
                }
            }
        }
    }
    missing += expected.count() as u64;
    if missing > 0 || extra > 0 {
        report.problem(format!(
            "the index entries miss {missing} and hold {extra} not matching a kept event (an entry names its event's mode, type, created and sequence): rebuild the index with `eventsd reindex`"
        ));
    }
    entries.close()
}

/// Every kept event whose id does not name its sequence must be found in the id table, up to
/// the table's durable point (the next start adds the ids after it).
fn check_ids(dir: &Path, first: u64, kept: &[Kept], report: &mut Report) -> Result<(), Error> {
    let (ids, synced) = IdTable::open(&dir.join(index::DIR))?;
    let last = first + kept.len() as u64 - 1;
    if synced < last {
        report.notes.push(format!(
            "the id table is durable through {synced} of {last}; the next start adds the rest"
        ));
    }
    for (i, k) in kept.iter().enumerate() {
        let seq = first + i as u64;
        if seq > synced {
            break;
        }
        if !index::names_itself(&k.id, seq) && !ids.candidates(k.livemode, &k.id)?.contains(&seq) {
            report.problem(format!("event {seq} ({:?}) is missing from the id table", k.id));
        }
    }
    Ok(())
}

/// Every bucket count must equal the number of indexed events in its bucket, and no other
/// bucket may exist.
fn check_buckets(
    tree: &sled::Tree,
    applied: &[(u64, &Kept)],
    report: &mut Report,
) -> Result<(), Error> {
    let mut expected = buckets::Deltas::default();
    for (_, k) in applied {
        expected.add(&keys::created_prefix(k.livemode), &k.created, 1);
        expected.add(&keys::type_prefix(&k.event_type, k.livemode), &k.created, 1);
    }
    let mut per_stream: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for (_, k) in applied {
        *per_stream.entry(keys::type_prefix(&k.event_type, k.livemode)).or_default() += 1;
    }
    let expected = expected.into_counts(|prefix| per_stream.get(prefix).copied().unwrap_or(0));
    let mut found = BTreeMap::new();
    for entry in tree.scan_prefix([buckets::BUCKET]) {
        let (key, value) = entry?;
        found.insert(key.to_vec(), keys::u64_value(&value).unwrap_or(u64::MAX));
    }
    if found != expected {
        let wrong = expected.iter().filter(|(k, n)| found.get(*k) != Some(n)).count()
            + found.keys().filter(|k| !expected.contains_key(*k)).count();
        report.problem(format!(
            "{wrong} bucket counts disagree with the indexed events: rebuild the index with `eventsd reindex`"
        ));
    }
    Ok(())
}
