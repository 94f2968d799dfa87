//! ListEvents over an index of (created, sequence) entries: stream selection, the merge in
//! either direction, exact totals and offsets. Shared by both backends: the embedded store's
//! index (entries in runs, bucket counts in sled: [`View`]) and the JetStream backend's
//! in-memory index hold the same keys (`keys.rs`), and
//! each backend turns the sequences of a page into events its own way.
//!
//! A page is read in two steps:
//! - [`plan`], in one consistent view of the index: which streams to read, the total and
//!   where an offset lands. On an index with bucket counts (the embedded store's) the total of
//!   any `from`..`to` range and a deep offset cost a bounded number of reads per stream
//!   ([`span`]); without them (JetStream) a total walks the smaller side of the range and an
//!   offset is skipped entry by entry.
//! - [`walk`]: the k-way merge of the streams ([`merge`], O(log streams) per entry) from the
//!   plan's start, skipping entries above the view's snapshot, and `limit + 1` entries taken
//!   so the page knows whether more follow.
//!
//! Which streams: one per selected mode for every type; one per (type, mode) for a type
//! filter matching at most [`MAX_MERGED_STREAMS`] types; beyond that, each mode's by-time
//! entries walked once and filtered by the type they record, so a wildcard matching 100,000
//! types costs what an unfiltered listing costs, per entry. The index knows no `source`: a
//! listing filtered by source asks the backend about each candidate (`from_source`) and counts
//! its total by walking them all. Every walk has a deadline ([`walk`]), so no listing runs on
//! after its caller has been told it took too long.

mod merge;
mod span;

use std::ops::Bound;
use std::time::Instant;

use prost_types::Timestamp;

use crate::error::Error;
use crate::event::time;
use crate::store::index::entries::Span;
use crate::store::index::{buckets, DurableState, View};
use crate::store::StoredEvent;
use crate::store::{keys, Direction, ListPage, ListQuery};
use bytes::Bytes;
use merge::Merge;
use span::Walked;

/// Index keys of a range, in the requested direction.
pub type Keys<'a, K> = Box<dyn Iterator<Item = Result<K, Error>> + 'a>;

/// An ordered set of index keys (layout in `keys.rs`) that listings walk.
pub trait Index {
    /// A key as the index hands it out.
    type Key: AsRef<[u8]>;

    /// The keys within the bounds, ascending or (reverse chronological) descending.
    fn keys(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        direction: Direction,
    ) -> Keys<'_, Self::Key>;

    /// Whether by-time entries record their type ([`Index::typed_keys`] answers).
    fn keeps_types(&self) -> bool {
        false
    }

    /// The by-time entries within the bounds with the type each records, if the index keeps
    /// it.
    fn typed_keys(
        &self,
        _lo: Bound<Vec<u8>>,
        _hi: Bound<Vec<u8>>,
        _direction: Direction,
    ) -> Option<Keys<'_, (Self::Key, Self::Key)>> {
        None
    }

    /// The `created` keys of the first and last entries of the stream `prefix`, or bounds on
    /// them (at or below the first, at or above the last); `None` if it has none.
    fn span(&self, prefix: &[u8]) -> Result<Option<Span>, Error> {
        read_span(self, prefix)
    }

    /// Whether the index keeps bucket counts ([`Index::buckets`] answers).
    fn keeps_buckets(&self) -> bool {
        false
    }

    /// The non-empty buckets `lo..hi` (exclusive) of one stream at one level, ascending, as
    /// (bucket number, count).
    fn buckets(&self, _level: usize, _prefix: &[u8], _lo: u64, _hi: u64) -> Keys<'_, (u64, u64)> {
        Box::new(std::iter::empty())
    }
}

/// The embedded store's index: entries from the entries structure, bucket counts from sled.
impl Index for View {
    type Key = Bytes;

    fn keys(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        direction: Direction,
    ) -> Keys<'_, Bytes> {
        Box::new(self.range((lo, hi), direction).map(|entry| Ok(key_and_value(entry?)?.0)))
    }

    fn keeps_types(&self) -> bool {
        true
    }

    fn typed_keys(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        direction: Direction,
    ) -> Option<Keys<'_, (Bytes, Bytes)>> {
        Some(Box::new(self.range((lo, hi), direction).map(|entry| key_and_value(entry?))))
    }

    fn span(&self, prefix: &[u8]) -> Result<Option<Span>, Error> {
        self.store.span(prefix, || read_span(self, prefix))
    }

    fn keeps_buckets(&self) -> bool {
        true
    }

    fn buckets(&self, level: usize, prefix: &[u8], lo: u64, hi: u64) -> Keys<'_, (u64, u64)> {
        if lo >= hi {
            return Box::new(std::iter::empty());
        }
        let from = buckets::key(level, prefix, lo);
        let to = buckets::key(level, prefix, hi);
        Box::new(self.tree.range(from..to).map(|entry| {
            let (key, value) = entry.map_err(Error::Storage)?;
            let parsed = buckets::parse(&key).map(|(_, _, number)| number);
            match (parsed, keys::u64_value(&value)) {
                (Some(number), Some(count)) => Ok((number, count)),
                _ => Err(Error::Corrupt(format!("bucket count {key:?}"))),
            }
        }))
    }
}

/// A stored entry split into its key and its value, sharing its bytes.
fn key_and_value(entry: Bytes) -> Result<(Bytes, Bytes), Error> {
    let len = keys::entry_key_len(&entry)
        .ok_or_else(|| Error::Corrupt(format!("index entry {entry:?}")))?;
    Ok((entry.slice(..len), entry.slice(len..)))
}

/// The sequences of one page; the backend reads the events.
#[derive(Debug, Clone)]
pub struct SequencePage {
    /// The page's sequences, in order.
    pub sequences: Vec<u64>,
    /// Exact count of matching events in the view.
    pub total: u64,
    /// The durable sequence that bounds the view.
    pub snapshot: u64,
    /// Whether matching events follow this page.
    pub has_more: bool,
    /// The oldest kept sequence the page was served with.
    pub first: u64,
}

impl SequencePage {
    /// The page with its events read.
    pub fn with_events(self, events: Vec<StoredEvent>) -> ListPage {
        let SequencePage { total, snapshot, has_more, first, .. } = self;
        ListPage { events, total, snapshot, has_more, first }
    }
}

/// One index stream of a listing and its event count at the snapshot.
struct Stream {
    prefix: Vec<u8>,
    total: u64,
}

/// Most type streams a listing merges. A filter that matches more types walks each mode's
/// by-time entries once and keeps the matching types (on an index that records the type in
/// them), so no step costs more as the number of types grows.
pub const MAX_MERGED_STREAMS: usize = 16;

/// How often (in entries) a walk looks at its deadline.
const DEADLINE_EVERY: u32 = 256;

/// How a listing reads the index.
enum Walk {
    /// Merge these streams: one per mode, or one per (type, mode).
    Merge(Vec<Stream>),
    /// Walk these by-time streams (one per mode) and keep the entries whose type matches.
    ByTime(Vec<Stream>),
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// At the start of the view (or after the page token's position), skipping this many
    /// matching entries one by one.
    Skip(usize),
    /// At this (created, sequence) suffix, found through the bucket counts.
    At(Vec<u8>),
    /// The offset is beyond the view: the page is empty.
    Past,
}

/// What a page reads, decided in one consistent view of the index: the streams, the total
/// when bucket counts or stream counts give it, and where an offset lands.
pub struct Plan {
    walk: Walk,
    snapshot: u64,
    first: u64,
    total: Option<u64>,
    start: Start,
}

/// Decides how to read one page: the part of a listing that needs the index and the counts as
/// of the same moment (the embedded store calls it under its state lock). Bounded: bucket
/// counts make totals and offsets cost a bounded number of reads per stream; what would take a
/// walk is left to [`walk`].
pub fn plan<I: Index>(index: &I, state: &DurableState, query: &ListQuery) -> Result<Plan, Error> {
    if let Some(resume) = &query.resume {
        if resume.first < state.first {
            return Err(Error::Expired { position: "page_token", earliest: state.first });
        }
    }
    let snapshot = query.resume.as_ref().map_or(state.sequence, |r| r.snapshot);
    let walk = select_streams(index, state, query);
    let by_source = query.filter.source.is_some();
    let span = (buckets::ns(&query.from), buckets::ns(&query.to) + 1);
    let total = match (&query.resume, &walk) {
        (Some(resume), _) => Some(resume.total),
        (None, _) if by_source => None,
        (None, Walk::Merge(streams)) if covers(index, streams, query)? => {
            // The range holds every entry of these streams (the newest page's usual case):
            // their counts are the total, with no bucket to read.
            Some(streams.iter().map(|s| s.total).sum())
        }
        (None, Walk::Merge(streams)) => {
            let forward = Direction::Chronological;
            match span::walk(index, &with_buckets(streams), span, forward, snapshot, None)? {
                Some(Walked::Counted(n)) => Some(n),
                _ => Some(
                    streams
                        .iter()
                        .map(|s| count_in_range(index, s, &query.from, &query.to, snapshot))
                        .sum::<Result<u64, Error>>()?,
                ),
            }
        }
        (None, Walk::ByTime(streams)) => {
            covers(index, streams, query)?.then(|| streams.iter().map(|s| s.total).sum())
        }
    };
    let start = match (&query.resume, &walk) {
        (None, Walk::Merge(streams)) if query.offset > 0 && !by_source => {
            let skip = Some(query.offset as u64);
            let streams = with_buckets(streams);
            match span::walk(index, &streams, span, query.direction, snapshot, skip)? {
                Some(Walked::At(suffix)) => Start::At(suffix),
                Some(Walked::Counted(_)) => Start::Past,
                None => Start::Skip(query.offset),
            }
        }
        (None, _) => Start::Skip(query.offset),
        (Some(_), _) => Start::Skip(0),
    };
    Ok(Plan { walk, snapshot, first: state.first, total, start })
}

/// Reads the page a [`plan`] decided: merges its streams from its start, keeps the entries of
/// the wanted source (`from_source(seq, source)`, asked only when the query filters by
/// source), counts the total by walking where the plan could not, and gives up with
/// DEADLINE_EXCEEDED once `deadline` passes.
pub fn walk<I: Index>(
    index: &I,
    plan: Plan,
    query: &ListQuery,
    mut from_source: impl FnMut(u64, &str) -> Result<bool, Error>,
    deadline: Option<Instant>,
) -> Result<SequencePage, Error> {
    let Plan { walk, snapshot, first, total, start } = plan;
    let source = query.filter.source.as_deref();
    let mut keep = |seq: u64| source.map_or(Ok(true), |s| from_source(seq, s));
    let mut clock = Clock { deadline, steps: 0 };
    let at = match &start {
        Start::At(suffix) => Some(suffix.as_slice()),
        _ => None,
    };
    let merged = |at: Option<&[u8]>| -> Merge<'_, I::Key> {
        let streams = match &walk {
            Walk::Merge(streams) => {
                streams.iter().map(|s| entries(index, &s.prefix, query, at)).collect()
            }
            Walk::ByTime(streams) => {
                streams.iter().map(|s| typed_entries(index, &s.prefix, query, at)).collect()
            }
        };
        Merge::new(streams, query.direction, snapshot)
    };
    let total = match total {
        Some(total) => total,
        None => {
            let mut all = merged(None);
            let mut n = 0u64;
            while let Some(seq) = all.next_seq()? {
                clock.tick()?;
                n += u64::from(keep(seq)?);
            }
            n
        }
    };
    if start == Start::Past {
        return Ok(SequencePage { sequences: Vec::new(), total, snapshot, has_more: false, first });
    }
    let mut merge = merged(at);
    let skip = match start {
        Start::Skip(n) => n,
        _ => 0,
    };
    let mut skipped = 0;
    while skipped < skip {
        clock.tick()?;
        match merge.next_seq()? {
            None => break,
            Some(seq) => skipped += usize::from(keep(seq)?),
        }
    }
    let mut sequences = Vec::with_capacity(query.limit.min(128));
    let mut has_more = false;
    while let Some(seq) = merge.next_seq()? {
        clock.tick()?;
        if !keep(seq)? {
            continue;
        }
        if sequences.len() == query.limit {
            has_more = true;
            break;
        }
        sequences.push(seq);
    }
    Ok(SequencePage { sequences, total, snapshot, has_more, first })
}

/// Answers one page with sequences: [`plan`] then [`walk`], with no deadline (for an index
/// whose reader holds it still for the whole call, such as the JetStream backend's).
pub fn page<I: Index>(
    index: &I,
    state: &DurableState,
    query: &ListQuery,
    from_source: impl FnMut(u64, &str) -> Result<bool, Error>,
) -> Result<SequencePage, Error> {
    let plan = plan(index, state, query)?;
    walk(index, plan, query, from_source, None)
}

/// Each stream's prefix, whether it keeps bucket counts at its count, and that count.
fn with_buckets(streams: &[Stream]) -> Vec<span::Counted> {
    streams
        .iter()
        .map(|s| span::Counted {
            prefix: s.prefix.clone(),
            bucketed: buckets::kept(&s.prefix, s.total),
            total: s.total,
        })
        .collect()
}

/// Counts a walk's steps and ends it once its deadline has passed.
struct Clock {
    deadline: Option<Instant>,
    steps: u32,
}

impl Clock {
    fn tick(&mut self) -> Result<(), Error> {
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(DEADLINE_EVERY)
            && self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return Err(Error::ListDeadline);
        }
        Ok(())
    }
}

/// The lowest sequence at or below `durable` among events created at or after `created`.
/// Walks the by-time entries from `created` on: linear in the events created after it.
pub fn first_created_from<I: Index>(
    index: &I,
    created: &Timestamp,
    durable: u64,
) -> Result<Option<u64>, Error> {
    let mut first: Option<u64> = None;
    for mode in [false, true] {
        let prefix = keys::created_prefix(mode);
        let lo = Bound::Included(keys::entry_floor(&prefix, created));
        let hi = Bound::Included(keys::entry_ceiling(&prefix, &time::max()));
        for key in index.keys(lo, hi, Direction::Chronological) {
            let seq = keys::seq_of(key?.as_ref()).unwrap_or(u64::MAX);
            if seq <= durable && first.is_none_or(|f| seq < f) {
                first = Some(seq);
            }
        }
    }
    Ok(first)
}

/// The index streams a query reads, with each stream's count at the snapshot.
fn select_streams<I: Index>(index: &I, state: &DurableState, query: &ListQuery) -> Walk {
    let filter = &query.filter;
    let modes: Vec<bool> = [false, true].into_iter().filter(|m| filter.matches_mode(*m)).collect();
    let mode_total = |mode: bool, all: bool| -> u64 {
        state
            .counts
            .iter()
            .filter(|((m, t), _)| *m == mode && (all || filter.matches_type(t)))
            .map(|(_, n)| n)
            .sum()
    };
    if filter.all_types() {
        return Walk::Merge(
            modes
                .into_iter()
                .map(|mode| Stream {
                    prefix: keys::created_prefix(mode),
                    total: mode_total(mode, true),
                })
                .collect(),
        );
    }
    let matching: Vec<Stream> = state
        .counts
        .iter()
        .filter(|((mode, t), n)| **n > 0 && filter.matches_mode(*mode) && filter.matches_type(t))
        .map(|((mode, t), n)| Stream { prefix: keys::type_prefix(t, *mode), total: *n })
        .collect();
    if matching.len() > MAX_MERGED_STREAMS && index.keeps_types() {
        return Walk::ByTime(
            modes
                .into_iter()
                .map(|mode| Stream {
                    prefix: keys::created_prefix(mode),
                    total: mode_total(mode, false),
                })
                .collect(),
        );
    }
    Walk::Merge(matching)
}

/// The query's bounds on one stream: its time range, after the page token's position, or
/// from the entry an offset landed on (`at`, included).
fn bounds(prefix: &[u8], query: &ListQuery, at: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut lo = Bound::Included(keys::entry_floor(prefix, &query.from));
    let mut hi = Bound::Included(keys::entry_ceiling(prefix, &query.to));
    if let Some(resume) = &query.resume {
        let after = keys::entry(prefix, &resume.after.created, resume.after.sequence);
        match query.direction {
            Direction::Chronological => lo = Bound::Excluded(after),
            Direction::ReverseChronological => hi = Bound::Excluded(after),
        }
    }
    if let Some(suffix) = at {
        let at = [prefix, suffix].concat();
        match query.direction {
            Direction::Chronological => lo = Bound::Included(at),
            Direction::ReverseChronological => hi = Bound::Included(at),
        }
    }
    (lo, hi)
}

/// The query's range of one stream, in its direction.
fn entries<'a, I: Index>(
    index: &'a I,
    prefix: &[u8],
    query: &ListQuery,
    at: Option<&[u8]>,
) -> Keys<'a, I::Key> {
    let (lo, hi) = bounds(prefix, query, at);
    index.keys(lo, hi, query.direction)
}

/// The query's range of one by-time stream, keeping the entries whose type matches.
fn typed_entries<'a, I: Index>(
    index: &'a I,
    prefix: &[u8],
    query: &'a ListQuery,
    at: Option<&[u8]>,
) -> Keys<'a, I::Key> {
    let (lo, hi) = bounds(prefix, query, at);
    let Some(typed) = index.typed_keys(lo, hi, query.direction) else {
        return Box::new(std::iter::empty());
    };
    Box::new(typed.filter_map(|entry| {
        match entry {
            Ok((key, event_type)) => std::str::from_utf8(event_type.as_ref())
                .is_ok_and(|t| query.filter.matches_type(t))
                .then_some(Ok(key)),
            Err(err) => Some(Err(err)),
        }
    }))
}

/// Whether `[from, to]` holds every entry of every stream.
fn covers<I: Index>(index: &I, streams: &[Stream], query: &ListQuery) -> Result<bool, Error> {
    for stream in streams {
        if !covers_stream(index, &stream.prefix, query)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `[from, to]` holds every entry of a stream (so its count is the range's total).
fn covers_stream<I: Index>(index: &I, prefix: &[u8], query: &ListQuery) -> Result<bool, Error> {
    Ok(match index.span(prefix)? {
        Some((first, last)) => {
            time::to_key(&query.from)[..] <= first[..] && last[..] <= time::to_key(&query.to)[..]
        }
        None => true,
    })
}

/// The `created` keys of the first and last entries of the stream `prefix`, read from the
/// index.
fn read_span<I: Index + ?Sized>(index: &I, prefix: &[u8]) -> Result<Option<Span>, Error> {
    let whole = || {
        let lo = Bound::Included(prefix.to_vec());
        let hi = Bound::Included(keys::entry_ceiling(
            prefix,
            &Timestamp { seconds: i64::MAX, nanos: i32::MAX },
        ));
        (lo, hi)
    };
    let created = |key: Option<Result<I::Key, Error>>| -> Result<Option<Vec<u8>>, Error> {
        Ok(key.transpose()?.map(|k| {
            let k = k.as_ref();
            k[k.len() - keys::SUFFIX_LEN..k.len() - 8].to_vec()
        }))
    };
    let (lo, hi) = whole();
    let first = created(index.keys(lo, hi, Direction::Chronological).next())?;
    let (lo, hi) = whole();
    let last = created(index.keys(lo, hi, Direction::ReverseChronological).next())?;
    Ok(first.zip(last))
}

/// Counts a stream's entries with `from <= created <= to` and sequence within the snapshot.
///
/// Walks inside the range and outside it in lockstep; the first walk to end answers (inside
/// directly, outside as `total - outside`), so the cost is twice the smaller side.
fn count_in_range<I: Index>(
    index: &I,
    stream: &Stream,
    from: &Timestamp,
    to: &Timestamp,
    snapshot: u64,
) -> Result<u64, Error> {
    let lo = keys::entry_floor(&stream.prefix, from);
    let hi = keys::entry_ceiling(&stream.prefix, to);
    let start = keys::entry(&stream.prefix, &Timestamp { seconds: i64::MIN, nanos: 0 }, 0);
    let end =
        keys::entry(&stream.prefix, &Timestamp { seconds: i64::MAX, nanos: i32::MAX }, u64::MAX);
    let forward = Direction::Chronological;
    let mut inside = index.keys(Bound::Included(lo.clone()), Bound::Included(hi.clone()), forward);
    let mut outside = index
        .keys(Bound::Included(start), Bound::Excluded(lo), forward)
        .chain(index.keys(Bound::Excluded(hi), Bound::Included(end), forward));
    let (mut n_in, mut n_out) = (0u64, 0u64);
    loop {
        match step(&mut inside, snapshot)? {
            None => return Ok(n_in),
            Some(counted) => n_in += counted,
        }
        match step(&mut outside, snapshot)? {
            None => return Ok(stream.total.saturating_sub(n_out)),
            Some(counted) => n_out += counted,
        }
    }
}

/// Advances one entry: `None` at the end, else 1 if it is within the snapshot, 0 if not.
fn step<K: AsRef<[u8]>>(
    iter: &mut impl Iterator<Item = Result<K, Error>>,
    snapshot: u64,
) -> Result<Option<u64>, Error> {
    match iter.next() {
        None => Ok(None),
        Some(key) => {
            Ok(Some(u64::from(keys::seq_of(key?.as_ref()).is_some_and(|s| s <= snapshot))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Filter;
    use crate::store::index::{Change, Counts, Fields};

    use crate::store::Lcg;

    struct Fixture {
        tree: sled::Tree,
        entries: crate::store::index::entries::Entries,
        _dir: tempfile::TempDir,
        state: DurableState,
        /// (seq, livemode, type, created)
        events: Vec<(u64, bool, String, Timestamp)>,
    }

    /// Events spread over a few hours, clustered so that many share a millisecond, with
    /// `types` distinct types; applied in rounds as the writer does.
    fn fixture(seed: u64, n: u64, types: u64) -> Fixture {
        let tree = sled::Config::new().temporary(true).open().unwrap().open_tree("index").unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Small memtables, so the entries are spread over memtables and runs, merged or not.
        let config =
            crate::store::index::entries::Config { freeze_entries: 300, cache_bytes: 64 << 10 };
        let (entries, _) =
            crate::store::index::entries::Entries::open(dir.path(), config, 1).unwrap();
        let mut rng = Lcg(seed);
        let mut counts = Counts::new();
        let mut events = Vec::new();
        let base = 1_765_000_000i64;
        let mut seq = 0;
        while seq < n {
            let mut change = Change::default();
            for _ in 0..(1 + rng.next(40)).min(n - seq) {
                seq += 1;
                let created = match rng.next(4) {
                    0 => Timestamp { seconds: base, nanos: rng.next(5_000_000) as i32 },
                    1 => Timestamp {
                        seconds: base + rng.next(3) as i64,
                        nanos: rng.next(1_000_000_000) as i32,
                    },
                    _ => Timestamp {
                        seconds: base + rng.next(20_000) as i64,
                        nanos: rng.next(1_000_000_000) as i32,
                    },
                };
                let livemode = rng.next(3) == 0;
                // Half the events are of one type, so some streams keep bucket counts and
                // others (fewer than buckets::MIN_EVENTS) do not.
                let t = if rng.next(2) == 0 { 0 } else { rng.next(types) };
                let event_type = format!("t{t}.x");
                change.insert(&mut counts, (seq, livemode, &event_type, &created));
                events.push((seq, livemode, event_type, created));
            }
            change.apply((&tree, &entries), &counts, seq, 1).1.unwrap();
        }
        let state = DurableState { sequence: seq, first: 1, counts };
        Fixture { tree, entries, _dir: dir, state, events }
    }

    impl Fixture {
        fn view(&self) -> View {
            View::new(self.tree.clone(), &self.entries, self.state.first)
        }
    }

    fn query(f: &Fixture, rng: &mut Lcg, types: &[String], livemode: Option<bool>) -> ListQuery {
        let pick = |rng: &mut Lcg| {
            let e = &f.events[rng.next(f.events.len() as u64) as usize].3;
            match rng.next(3) {
                0 => *e,
                1 => Timestamp { seconds: e.seconds, nanos: (e.nanos + 1).min(999_999_999) },
                _ => Timestamp { seconds: e.seconds - rng.next(100) as i64, nanos: 0 },
            }
        };
        let (a, b) = (pick(rng), pick(rng));
        let (from, to) = if time::cmp(&a, &b).is_le() { (a, b) } else { (b, a) };
        let (from, to) = match rng.next(5) {
            0 => (time::epoch(), time::max()),
            _ => (from, to),
        };
        ListQuery {
            from,
            to,
            direction: if rng.next(2) == 0 {
                Direction::Chronological
            } else {
                Direction::ReverseChronological
            },
            filter: Filter::new(types, livemode).unwrap(),
            offset: match rng.next(3) {
                0 => 0,
                1 => rng.next(30) as usize,
                _ => rng.next(f.events.len() as u64 + 10) as usize,
            },
            limit: 1 + rng.next(20) as usize,
            resume: None,
        }
    }

    /// A first page of 10 over all time, earliest first.
    fn everything(filter: Filter) -> ListQuery {
        ListQuery {
            from: time::epoch(),
            to: time::max(),
            direction: Direction::Chronological,
            filter,
            offset: 0,
            limit: 10,
            resume: None,
        }
    }

    /// The page a brute-force scan gives.
    fn expected(f: &Fixture, q: &ListQuery) -> (u64, Vec<u64>, bool) {
        let mut matching: Vec<&(u64, bool, String, Timestamp)> = f
            .events
            .iter()
            .filter(|(_, live, t, created)| {
                q.filter.matches_mode(*live)
                    && q.filter.matches_type(t)
                    && time::cmp(created, &q.from).is_ge()
                    && time::cmp(created, &q.to).is_le()
            })
            .collect();
        matching.sort_by(|a, b| time::cmp(&a.3, &b.3).then(a.0.cmp(&b.0)));
        if q.direction == Direction::ReverseChronological {
            matching.reverse();
        }
        let total = matching.len() as u64;
        let rest: Vec<u64> = matching.iter().skip(q.offset).map(|e| e.0).collect();
        let has_more = rest.len() > q.limit;
        (total, rest.into_iter().take(q.limit).collect(), has_more)
    }

    /// The bucket keys the index holds are exactly those a count of its entries gives.
    fn assert_buckets_match_the_entries(f: &Fixture) {
        let mut expected = buckets::Deltas::default();
        let mut per_stream = std::collections::BTreeMap::<Vec<u8>, u64>::new();
        for (_, livemode, event_type, created) in &f.events {
            expected.add(&keys::created_prefix(*livemode), created, 1);
            let by_type = keys::type_prefix(event_type, *livemode);
            expected.add(&by_type, created, 1);
            *per_stream.entry(by_type).or_default() += 1;
        }
        let expected = expected.into_counts(|p| per_stream.get(p).copied().unwrap_or(0));
        let found: std::collections::BTreeMap<Vec<u8>, u64> = f
            .tree
            .scan_prefix([buckets::BUCKET])
            .map(|e| e.unwrap())
            .map(|(k, v)| (k.to_vec(), keys::u64_value(&v).unwrap()))
            .collect();
        assert!(expected.keys().any(|k| k[1] == 0), "some finest buckets are stored");
        assert_eq!(found, expected);
    }

    fn check(f: &Fixture, q: &ListQuery) {
        let page = page(&f.view(), &f.state, q, |_, _| Ok(true)).unwrap();
        let (total, sequences, has_more) = expected(f, q);
        assert_eq!(
            (page.total, &page.sequences, page.has_more),
            (total, &sequences, has_more),
            "query {q:?}"
        );
    }

    #[test]
    fn totals_and_offsets_from_buckets_match_a_scan() {
        let f = fixture(7, 3_000, 5);
        let mut rng = Lcg(11);
        for _ in 0..400 {
            let types = match rng.next(3) {
                0 => vec![],
                1 => vec![format!("t{}.x", rng.next(5))],
                _ => vec![format!("t{}.x", rng.next(5)), format!("t{}.*", rng.next(5))],
            };
            let livemode = [None, Some(false), Some(true)][rng.next(3) as usize];
            let q = query(&f, &mut rng, &types, livemode);
            check(&f, &q);
        }
    }

    #[test]
    fn streams_with_and_without_buckets_and_a_trim_below_the_threshold_match_a_scan() {
        let mut f = fixture(21, 3_000, 30);
        let rare = f.state.counts.values().filter(|n| **n < buckets::MIN_EVENTS).count();
        assert!(rare > 10 && f.state.counts.values().any(|n| *n >= buckets::MIN_EVENTS));
        let mut rng = Lcg(8);
        let types = |rng: &mut Lcg| match rng.next(3) {
            0 => vec!["t0.x".to_string(), format!("t{}.x", rng.next(30))],
            1 => vec![format!("t{}.*", rng.next(30)), "t0.x".to_string()],
            _ => vec![format!("t{}.x", rng.next(30))],
        };
        assert_buckets_match_the_entries(&f);
        for _ in 0..200 {
            let wanted = types(&mut rng);
            let q = query(&f, &mut rng, &wanted, None);
            check(&f, &q);
        }
        // Retention takes the oldest 2,000: the big stream drops below the threshold, and
        // its bucket keys go.
        let mut change = Change::default();
        for (seq, livemode, event_type, created) in f.events.drain(..2_000) {
            let fields = Fields {
                id: format!("evt_{seq}"),
                r#type: event_type,
                created: Some(created),
                livemode,
            };
            change.remove(&mut f.state.counts, seq, &fields);
        }
        change.apply((&f.tree, &f.entries), &f.state.counts, f.state.sequence, 2_001).1.unwrap();
        f.state.first = 2_001;
        assert_buckets_match_the_entries(&f);
        for (&(livemode, ref t), &n) in &f.state.counts {
            let prefix = keys::type_prefix(t, livemode);
            let top = buckets::key(buckets::TOP, &prefix, 0);
            let kept = f.tree.scan_prefix(&top[..2 + prefix.len()]).count();
            assert_eq!(kept > 0, n >= buckets::MIN_EVENTS, "{t}: {n} events, {kept} top buckets");
        }
        for _ in 0..200 {
            let wanted = types(&mut rng);
            let q = query(&f, &mut rng, &wanted, None);
            check(&f, &q);
        }
    }

    #[test]
    fn a_wildcard_over_many_types_walks_time_order_and_still_matches_a_scan() {
        let f = fixture(3, 2_000, 200);
        assert!(f.state.counts.len() > MAX_MERGED_STREAMS);
        let mut rng = Lcg(5);
        for _ in 0..100 {
            let types = vec!["t1*".to_string()];
            let livemode = [None, Some(false), Some(true)][rng.next(3) as usize];
            let q = query(&f, &mut rng, &types, livemode);
            assert!(matches!(select_streams(&f.view(), &f.state, &q), Walk::ByTime(_)));
            check(&f, &q);
        }
    }

    #[test]
    fn a_deep_offset_reads_few_entries() {
        // 20,000 events in one millisecond-dense burst: an offset of 15,000 lands through the
        // buckets, so the walk reads at most a partial millisecond one entry at a time.
        let f = fixture(9, 20_000, 1);
        let q = ListQuery { offset: 15_000, ..everything(Filter::new(&[], None).unwrap()) };
        let plan = plan(&f.view(), &f.state, &q).unwrap();
        assert!(matches!(plan.start, Start::At(_)), "the offset is found through the buckets");
        check(&f, &q);
    }

    #[test]
    fn a_walk_past_its_deadline_stops() {
        let f = fixture(1, 2_000, 1);
        let q = everything(Filter::new(&[], None).unwrap().with_source("nobody").unwrap());
        let view = f.view();
        let plan = plan(&view, &f.state, &q).unwrap();
        let past = Some(Instant::now());
        let walked = walk(&view, plan, &q, |_, _| Ok(false), past);
        assert!(matches!(walked, Err(Error::ListDeadline)));
    }
}
