//! The index: everything derived from the log that reads need (key layout in [`keys`]):
//! - the by-time and by-type-time entries that listings walk, in a structure of eventsd's own
//!   (`DATA_DIR/index/entries/`, [`entries`]: memtables and sorted runs);
//! - in one sled tree (`DATA_DIR/index/`): bucket counts ([`buckets`]), per-stream counts, the
//!   first kept sequence and the last sequence applied;
//! - the id table (`DATA_DIR/index/ids`, [`ids`]): (mode, id) → sequence, except for ids that
//!   name their own sequence ([`names_itself`]).
//!
//! Promises:
//! - The index never leads the log: a round is applied after its records are durable in the
//!   log, in one atomic sled batch that also moves the applied sequence, so after any crash the
//!   sled part is the state after some whole round. The entries of a round go into the
//!   memtable right after that batch.
//! - Nothing is flushed on the acknowledgement path (sled flushes in the background, runs are
//!   written by their own thread); what a crash takes is replayed from the log at open
//!   ([`catch_up`]): the sled part from its applied sequence, the entries from theirs, so a
//!   start costs the tail, not the history.
//! - Per-round work depends on the round's events only (counts are written for the streams a
//!   round touches), never on how many distinct types exist.
//! - Backend-neutral: entries are built from an event's routing fields and a sequence given
//!   by the caller.

pub mod buckets;
pub mod entries;
pub mod ids;
pub mod keys;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;

use prost_types::Timestamp;

use crate::error::Error;
use crate::store::log::LogReader;
use crate::store::Direction;
use entries::Entries;

/// The index's folder inside the data folder.
pub const DIR: &str = "index";

/// Event counts per (livemode, type): the basis of ListEvents' exact totals.
pub type Counts = BTreeMap<(bool, String), u64>;

/// What a listing reads as its view: the durable point, the first kept sequence and the
/// counts of the streams it may walk, all as of the same moment.
#[derive(Debug, Default, Clone)]
pub struct DurableState {
    /// The newest durable sequence.
    pub sequence: u64,
    /// The oldest kept sequence (retention removes events below it).
    pub first: u64,
    /// Counts of durable events per (livemode, type).
    pub counts: Counts,
}

/// The index as one reader sees it: the sled tree (counts) and a snapshot of the entries,
/// whose sequences outside `floor..=ceiling` are skipped.
#[derive(Clone)]
pub struct View {
    /// The sled tree.
    pub tree: sled::Tree,
    /// The entries themselves (for what they keep beside their snapshots).
    pub store: Entries,
    /// The entries of one moment.
    pub entries: entries::Snapshot,
    /// The first kept sequence: entries below it are dead.
    pub floor: u64,
    /// Entries above this are not part of the view.
    pub ceiling: u64,
}

impl View {
    /// The view of a reader: every kept entry (a listing bounds it by its own snapshot).
    pub fn new(tree: sled::Tree, entries: &Entries, floor: u64) -> Self {
        View { tree, store: entries.clone(), entries: entries.snapshot(), floor, ceiling: u64::MAX }
    }

    /// The entries (key then value) whose keys lie within the bounds, in `direction`.
    pub fn range(
        &self,
        bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        direction: Direction,
    ) -> entries::Range {
        self.entries.range(bounds, direction, (self.floor, self.ceiling))
    }
}

/// The fields of a stored `Event` the index needs, decoded alone (same field numbers as
/// `Event`; prost skips the rest, `data` included), so a replay does not decode every
/// event's data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Fields {
    /// `Event.id`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `Event.type`.
    #[prost(string, tag = "2")]
    pub r#type: String,
    /// `Event.created`.
    #[prost(message, optional, tag = "3")]
    pub created: Option<Timestamp>,
    /// `Event.livemode`.
    #[prost(bool, tag = "5")]
    pub livemode: bool,
}

impl Fields {
    /// Decodes the routing fields of the stored event `seq`.
    pub fn decode(seq: u64, bytes: &[u8]) -> Result<Fields, Error> {
        <Fields as prost::Message>::decode(bytes)
            .map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))
    }
}

/// The index's layout version, kept under [`keys::VERSION_KEY`]. Version 2 added bucket
/// counts and the type in by-time entries; version 3 keeps bucket counts of type streams only
/// from `buckets::MIN_EVENTS` events on; version 4 writes no id entry for an id that names its
/// own sequence ([`names_itself`]); version 5 has 16-fold bucket levels and stores a bucket's
/// children only once it holds `buckets::SPLIT` entries; version 6 keeps no id entries (the
/// id table, [`ids`], holds them); version 7 keeps the entries out of sled ([`entries`]). An
/// index of another version is
/// rebuilt from the log at open, so a release that predates version 4 rebuilds, rather than
/// misses, those ids.
pub const VERSION: u64 = 7;

/// Older versions whose entries are all valid in [`VERSION`]: marked as it at open, with no
/// rebuild. None today: version 5 laid bucket counts out anew, version 6 moved the id
/// entries out of sled, and version 7 the by-time and by-type entries.
const UPGRADED_IN_PLACE: &[u64] = &[];

/// The index state read at open.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The last applied sequence (0 for an empty index).
    pub applied: u64,
    /// The first kept sequence the index reflects (1 if retention never ran on it).
    pub first: u64,
    /// Per-stream counts.
    pub counts: Counts,
}

/// sled's share of `--cache-bytes` (a sixteenth).
const SLED_SHARE_OF_CACHE: u64 = 16;

/// Opens the index tree in `data_dir/index`. sled may panic on some damaged files instead of
/// returning an error; either way the index must not be used (rebuild it: `eventsd reindex`).
pub fn open_tree(data_dir: &Path, cache_bytes: u64) -> Result<sled::Tree, Error> {
    let path = data_dir.join(DIR);
    // `--cache-bytes` bounds the caches together: the recent-events cache and the entries'
    // block cache take a quarter each, sled (counts and bucket counts) a sixteenth. sled's
    // cache counts its pages at their on-disk size and holds several times that in memory:
    // after a 4M-event fill it held ~230 MB with a 32 MiB cache (BENCHMARKS.md).
    let sled_cache = cache_bytes / SLED_SHARE_OF_CACHE;
    let config = sled::Config::new().path(&path).cache_capacity(sled_cache);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        config.open().and_then(|db| db.open_tree("index"))
    }));
    let repair = format!(
        "the index is derived from the log: rebuild it with `eventsd reindex --data-dir {}`",
        data_dir.display()
    );
    match opened {
        Ok(Ok(tree)) => Ok(tree),
        Ok(Err(err @ (sled::Error::Corruption { .. } | sled::Error::Unsupported(_)))) => Err(
            Error::Corrupt(format!("cannot open the index in {}: {err}; {repair}", path.display())),
        ),
        Ok(Err(err)) => Err(Error::Storage(err)),
        Err(_) => Err(Error::Corrupt(format!(
            "sled could not read the index in {} (it panicked); {repair}",
            path.display()
        ))),
    }
}

/// Reads the applied sequence, first kept sequence and counts. An index of an older layout
/// (or none) is emptied first and comes back as empty, so the log is replayed into it whole.
pub fn load(tree: &sled::Tree) -> Result<Loaded, Error> {
    let mut version = tree.get(keys::VERSION_KEY)?.and_then(|v| keys::u64_value(&v));
    if version.is_some_and(|v| UPGRADED_IN_PLACE.contains(&v)) {
        tree.insert(keys::VERSION_KEY, &VERSION.to_be_bytes())?;
        version = Some(VERSION);
    }
    if version != Some(VERSION) {
        if !tree.is_empty() {
            tracing::warn!(
                found = ?version,
                expected = VERSION,
                "the index has an older layout; rebuilding it from the log"
            );
            tree.clear()?;
        }
        tree.insert(keys::VERSION_KEY, &VERSION.to_be_bytes())?;
    }
    let value = |key: &[u8], default: u64| -> Result<u64, Error> {
        match tree.get(key)? {
            Some(v) => {
                keys::u64_value(&v).ok_or_else(|| Error::Corrupt(format!("index key {key:?}")))
            }
            None => Ok(default),
        }
    };
    let applied = value(&keys::APPLIED_KEY, 0)?;
    let first = value(&keys::FIRST_KEY, 1)?;
    let mut counts = Counts::new();
    for entry in tree.scan_prefix([keys::COUNT]) {
        let (key, value) = entry?;
        let stream = keys::parse_count(&key).ok_or_else(|| Error::Corrupt("count key".into()))?;
        let n = keys::u64_value(&value).ok_or_else(|| Error::Corrupt("count value".into()))?;
        counts.insert(stream, n);
    }
    Ok(Loaded { applied, first, counts })
}

/// Whether the id names the event's own sequence (`id::generate_at`): such an event is found
/// by its id without an id entry, which is then never written.
pub fn names_itself(id: &str, seq: u64) -> bool {
    crate::event::id::sequence_of(id) == Some(seq)
}

/// One atomic change of the index, staged entry by entry.
#[derive(Default)]
pub struct Change {
    batch: sled::Batch,
    /// The new entries (key then value).
    entries: Vec<Box<[u8]>>,
    /// The lowest sequence inserted.
    lowest: Option<u64>,
    /// Each stream's count change in this batch.
    touched: BTreeMap<(bool, String), i64>,
    buckets: buckets::Deltas,
}

/// The two entries of an event: by time (naming its type) and by type and time.
pub fn entries_of(
    (seq, livemode, event_type, created): (u64, bool, &str, &Timestamp),
) -> [Box<[u8]>; 2] {
    // The by-time entry names its type, so a listing that matches many types can walk time
    // order once and filter, instead of merging a stream per type.
    let by_time = keys::created_prefix(livemode);
    let by_type = keys::type_prefix(event_type, livemode);
    [
        keys::entry_with_value(&by_time, created, seq, event_type.as_bytes()),
        keys::entry_with_value(&by_type, created, seq, &[]),
    ]
}

impl Change {
    /// Indexes a new event.
    pub fn insert(
        &mut self,
        counts: &mut Counts,
        (seq, livemode, event_type, created): (u64, bool, &str, &Timestamp),
    ) {
        let by_time = keys::created_prefix(livemode);
        let by_type = keys::type_prefix(event_type, livemode);
        self.entries.extend(entries_of((seq, livemode, event_type, created)));
        self.lowest = Some(self.lowest.map_or(seq, |l| l.min(seq)));
        self.buckets.add(&by_time, created, 1);
        self.buckets.add(&by_type, created, 1);
        self.count(counts, livemode, event_type, 1);
    }

    /// Removes an event (retention) from the counts. Its entries stay where they are, dead
    /// below the first kept sequence, until the entries' worker next rewrites them; its id
    /// entry stays in the id table, where a lookup finds it below the first kept sequence and
    /// passes over it, until the table next grows.
    pub fn remove(&mut self, counts: &mut Counts, _seq: u64, fields: &Fields) {
        let created = fields.created.unwrap_or_default();
        let by_time = keys::created_prefix(fields.livemode);
        let by_type = keys::type_prefix(&fields.r#type, fields.livemode);
        self.buckets.add(&by_time, &created, -1);
        self.buckets.add(&by_type, &created, -1);
        self.count(counts, fields.livemode, &fields.r#type, -1);
    }

    fn count(&mut self, counts: &mut Counts, livemode: bool, event_type: &str, delta: i64) {
        let stream = (livemode, event_type.to_string());
        let n = counts.entry(stream.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        *self.touched.entry(stream).or_default() += delta;
    }

    /// Keeps only the new entries of sequences after `through` (the entries already hold the
    /// others: a replay after a crash that took the sled part further back than them).
    pub fn keep_entries_after(&mut self, through: u64) {
        self.entries.retain(|e| entries::seq_of(e) > through);
    }

    /// Applies the change with the new applied and first kept sequences: the sled part
    /// atomically (writing the count of each stream it touched), then the new entries.
    /// Returns those streams whatever the outcome (the writer publishes their counts once the
    /// log has the round, index or not).
    pub fn apply(
        mut self,
        (tree, entries): (&sled::Tree, &Entries),
        counts: &Counts,
        applied: u64,
        first: u64,
    ) -> (BTreeSet<(bool, String)>, Result<(), Error>) {
        // Each type stream's count before and after, which decide whether it keeps buckets.
        let before_after: HashMap<Vec<u8>, (u64, u64)> = self
            .touched
            .iter()
            .map(|((livemode, t), delta)| {
                let after = counts.get(&(*livemode, t.clone())).copied().unwrap_or(0);
                (keys::type_prefix(t, *livemode), (after.saturating_add_signed(-delta), after))
            })
            .collect();
        let touched: BTreeSet<(bool, String)> = self.touched.into_keys().collect();
        let deltas = std::mem::take(&mut self.buckets);
        let counts_of = |prefix: &[u8]| before_after.get(prefix).copied().unwrap_or((0, 0));
        // The entries as they were before the batch: a replay may find the batch's own there
        // already (written as a run before a crash took the sled part back).
        let before = self.lowest.map_or(applied, |l| l - 1);
        let view = View { ceiling: before, ..View::new(tree.clone(), entries, first) };
        if let Err(err) = deltas.stage(&view, &mut self.batch, counts_of) {
            return (touched, Err(err));
        }
        for stream in &touched {
            let n = counts.get(stream).copied().unwrap_or(0);
            self.batch.insert(keys::count(stream.0, &stream.1), &n.to_be_bytes());
        }
        self.batch.insert(&keys::APPLIED_KEY, &applied.to_be_bytes());
        self.batch.insert(&keys::FIRST_KEY, &first.to_be_bytes());
        if let Err(err) = tree.apply_batch(self.batch) {
            return (touched, Err(err.into()));
        }
        entries.set_floor(first);
        if !self.entries.is_empty() {
            entries.insert(self.entries, applied);
        }
        (touched, Ok(()))
    }
}

/// Records replayed per sled batch.
const REPLAY_BATCH: u64 = 4_096;

/// Brings the index up to the log: removes from the counts the events below the log's first
/// kept sequence that retention had not yet removed from them, then applies the records after
/// the sled part's applied sequence through `last`, and inserts the entries of the records
/// after the entries' own `through`. Returns the counts after it.
pub fn catch_up(
    (tree, entries): (&sled::Tree, &Entries),
    log: &LogReader,
    loaded: Loaded,
    (first, last): (u64, u64),
) -> Result<Counts, Error> {
    let Loaded { applied, first: indexed_first, mut counts } = loaded;
    let through = entries.through();
    if applied > last || through > last {
        return Err(Error::Corrupt(format!(
            "the index has applied sequence {} but the log ends at {last}; rebuild it with `eventsd reindex`",
            applied.max(through)
        )));
    }
    let started = std::time::Instant::now();
    // Retention's removals the index missed (the first kept sequence is moved in the log
    // before the index).
    let mut seq = indexed_first;
    while seq < first.min(applied + 1) {
        let upto = (seq + REPLAY_BATCH - 1).min(first - 1).min(applied);
        let mut change = Change::default();
        for s in seq..=upto {
            let fields = Fields::decode(s, &log.expect(s)?)?;
            change.remove(&mut counts, s, &fields);
        }
        change.apply((tree, entries), &counts, applied, upto + 1).1?;
        seq = upto + 1;
    }
    entries.set_floor(first);
    // Entries a crash took while the sled part kept them (written as a run less recently).
    let mut seq = (through + 1).max(first);
    while seq <= applied {
        let upto = (seq + REPLAY_BATCH - 1).min(applied);
        let mut batch = Vec::new();
        for s in seq..=upto {
            let fields = Fields::decode(s, &log.expect(s)?)?;
            let created = fields.created.unwrap_or_default();
            batch.extend(entries_of((s, fields.livemode, &fields.r#type, &created)));
        }
        entries.insert(batch, upto);
        seq = upto + 1;
    }
    let mut seq = (applied + 1).max(first);
    let replayed = last.saturating_sub(seq - 1);
    while seq <= last {
        let upto = (seq + REPLAY_BATCH - 1).min(last);
        let mut change = Change::default();
        for s in seq..=upto {
            let fields = Fields::decode(s, &log.expect(s)?)?;
            let created = fields.created.unwrap_or_default();
            change.insert(&mut counts, (s, fields.livemode, &fields.r#type, &created));
        }
        change.keep_entries_after(through);
        change.apply((tree, entries), &counts, upto, first).1?;
        seq = upto + 1;
    }
    if replayed > 0 {
        tracing::info!(replayed, took = ?started.elapsed(), "index caught up with the log");
    }
    Ok(counts)
}

/// Adds to the id table the ids of the log's records after `synced` (the table's durable
/// point) through `last`, then makes the table durable through `last`: at open this is the
/// tail a crash may have taken from the table (an id already there is not added twice).
pub fn add_ids(
    ids: &ids::IdTable,
    log: &LogReader,
    synced: u64,
    (first, last): (u64, u64),
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let mut seq = (synced + 1).max(first);
    let replayed = last.saturating_sub(seq - 1);
    while seq <= last {
        let upto = (seq + REPLAY_BATCH - 1).min(last);
        let mut batch = Vec::new();
        for s in seq..=upto {
            let fields = Fields::decode(s, &log.expect(s)?)?;
            if !names_itself(&fields.id, s) {
                batch.push((fields.livemode, fields.id, s));
            }
        }
        ids.add(batch.iter().map(|(mode, id, s)| (*mode, id.as_str(), *s)), first)?;
        seq = upto + 1;
    }
    if replayed > 0 {
        ids.sync(last)?;
        tracing::info!(replayed, took = ?started.elapsed(), "id table caught up with the log");
    }
    Ok(())
}
