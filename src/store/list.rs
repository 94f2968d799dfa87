//! ListEvents over an index of (created, sequence) entries: stream selection, the merge in
//! either direction, and exact totals. Shared by both backends: the embedded store's sled tree
//! and the JetStream backend's in-memory index hold the same keys (`keys.rs`), and each
//! backend turns the sequences of a page into events its own way.
//!
//! A listing reads one index stream per selected (mode) or (type, mode). Each stream is a
//! range already sorted by created then sequence; the streams are merged, entries above the
//! view's snapshot are skipped, the offset is skipped, and `limit + 1` entries are taken so
//! the page knows whether more follow. The index knows no `source`: a listing filtered by
//! source asks the backend about each entry the other filters select (`from_source`), and
//! counts its total by walking them all, so its cost is linear in those entries. The merge keeps the streams' heads in a binary heap:
//! O(log streams) per entry, O(streams) to start. A deep offset is linear in the offset.

use std::collections::BinaryHeap;
use std::ops::Bound;

use prost_types::Timestamp;

use crate::error::Error;
use crate::event::time;
use crate::store::index::DurableState;
use crate::store::StoredEvent;
use crate::store::{keys, Direction, ListPage, ListQuery};

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
}

impl Index for sled::Tree {
    type Key = sled::IVec;

    fn keys(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        direction: Direction,
    ) -> Keys<'_, sled::IVec> {
        let range = self.range::<Vec<u8>, _>((lo, hi));
        let range = range.map(|entry| entry.map(|(key, _)| key).map_err(Error::Storage));
        match direction {
            Direction::Chronological => Box::new(range),
            Direction::ReverseChronological => Box::new(range.rev()),
        }
    }
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

/// Answers one page with sequences. `from_source(seq, source)` says whether the event at
/// `seq` has this source; it is asked only when the query filters by source.
pub fn page<I: Index>(
    index: &I,
    state: &DurableState,
    query: &ListQuery,
    mut from_source: impl FnMut(u64, &str) -> Result<bool, Error>,
) -> Result<SequencePage, Error> {
    if let Some(resume) = &query.resume {
        if resume.first < state.first {
            return Err(Error::Expired { position: "page_token", earliest: state.first });
        }
    }
    let snapshot = query.resume.as_ref().map_or(state.sequence, |r| r.snapshot);
    let streams = select_streams(state, query);
    let source = query.filter.source.as_deref();
    let mut keep = |seq: u64| source.map_or(Ok(true), |s| from_source(seq, s));
    let merged = || {
        Merge::new(
            streams.iter().map(|s| entries(index, &s.prefix, query)).collect(),
            query.direction,
            snapshot,
        )
    };
    let total = match &query.resume {
        Some(resume) => resume.total,
        None if source.is_some() => {
            let mut all = merged();
            let mut n = 0u64;
            while let Some(seq) = all.next_seq()? {
                n += u64::from(keep(seq)?);
            }
            n
        }
        None => streams
            .iter()
            .map(|s| count_in_range(index, s, &query.from, &query.to, snapshot))
            .sum::<Result<u64, Error>>()?,
    };

    let mut merge = merged();
    let skip = if query.resume.is_some() { 0 } else { query.offset };
    let mut skipped = 0;
    while skipped < skip {
        match merge.next_seq()? {
            None => break,
            Some(seq) => skipped += usize::from(keep(seq)?),
        }
    }
    let mut sequences = Vec::with_capacity(query.limit.min(128));
    let mut has_more = false;
    while let Some(seq) = merge.next_seq()? {
        if !keep(seq)? {
            continue;
        }
        if sequences.len() == query.limit {
            has_more = true;
            break;
        }
        sequences.push(seq);
    }
    Ok(SequencePage { sequences, total, snapshot, has_more, first: state.first })
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
fn select_streams(state: &DurableState, query: &ListQuery) -> Vec<Stream> {
    let filter = &query.filter;
    let modes = [false, true].into_iter().filter(|m| filter.matches_mode(*m));
    if filter.all_types() {
        return modes
            .map(|mode| Stream {
                prefix: keys::created_prefix(mode),
                total: state.counts.iter().filter(|((m, _), _)| *m == mode).map(|(_, n)| n).sum(),
            })
            .collect();
    }
    state
        .counts
        .iter()
        .filter(|((mode, t), n)| **n > 0 && filter.matches_mode(*mode) && filter.matches_type(t))
        .map(|((mode, t), n)| Stream { prefix: keys::type_prefix(t, *mode), total: *n })
        .collect()
}

/// The query's range of one stream, in its direction, resuming after the last position.
fn entries<'a, I: Index>(index: &'a I, prefix: &[u8], query: &ListQuery) -> Keys<'a, I::Key> {
    let mut lo = Bound::Included(keys::entry_floor(prefix, &query.from));
    let mut hi = Bound::Included(keys::entry_ceiling(prefix, &query.to));
    if let Some(resume) = &query.resume {
        let at = keys::entry(prefix, &resume.after.created, resume.after.sequence);
        match query.direction {
            Direction::Chronological => lo = Bound::Excluded(at),
            Direction::ReverseChronological => hi = Bound::Excluded(at),
        }
    }
    index.keys(lo, hi, query.direction)
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

/// One stream's next entry in the merge: its (created, sequence) suffix and the stream.
/// Ordered so that the heap's greatest head is the next entry in the listing's direction.
#[derive(PartialEq, Eq)]
struct Head {
    suffix: Vec<u8>,
    stream: usize,
    descending: bool,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Suffixes are unique across streams (the sequence is in them); the stream breaks ties
        // only to keep the order total.
        let order = (&self.suffix, self.stream).cmp(&(&other.suffix, other.stream));
        if self.descending {
            order
        } else {
            order.reverse()
        }
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A k-way merge of index streams by their (created, sequence) suffix: a binary heap of the
/// streams' heads, so each entry costs O(log streams).
struct Merge<'a, K> {
    streams: Vec<Keys<'a, K>>,
    heads: BinaryHeap<Head>,
    direction: Direction,
    snapshot: u64,
    started: bool,
}

impl<'a, K: AsRef<[u8]>> Merge<'a, K> {
    fn new(streams: Vec<Keys<'a, K>>, direction: Direction, snapshot: u64) -> Self {
        let heads = BinaryHeap::with_capacity(streams.len());
        Merge { streams, heads, direction, snapshot, started: false }
    }

    /// Pushes stream `i`'s next entry within the snapshot (as the key suffix), if any.
    fn refill(&mut self, i: usize) -> Result<(), Error> {
        for key in self.streams[i].by_ref() {
            let key = key?;
            let key = key.as_ref();
            let Some(suffix) = key.get(key.len().saturating_sub(keys::SUFFIX_LEN)..) else {
                continue;
            };
            if keys::seq_of(suffix).is_some_and(|s| s <= self.snapshot) {
                self.heads.push(Head {
                    suffix: suffix.to_vec(),
                    stream: i,
                    descending: self.direction == Direction::ReverseChronological,
                });
                break;
            }
        }
        Ok(())
    }

    /// The sequence of the next entry in merge order, or `None` when every stream is done.
    fn next_seq(&mut self) -> Result<Option<u64>, Error> {
        if !self.started {
            self.started = true;
            for i in 0..self.streams.len() {
                self.refill(i)?;
            }
        }
        let Some(head) = self.heads.pop() else { return Ok(None) };
        let seq = keys::seq_of(&head.suffix);
        self.refill(head.stream)?;
        Ok(seq)
    }
}
