//! ListEvents over the embedded store's indexes: stream selection, the (created, sequence)
//! merge in either direction, and exact totals.
//!
//! A listing reads one index stream per selected (mode) or (type, mode). Each stream is a
//! sled range already sorted by created then sequence; the streams are merged, entries above
//! the view's snapshot are skipped, the offset is skipped, and `limit + 1` entries are taken so
//! the page knows whether more follow. Cost: O(streams × (offset + limit)) index entries plus
//! `limit` point reads; a deep offset is linear in the offset.

use std::ops::Bound;

use prost_types::Timestamp;

use crate::error::Error;
use crate::store::commit::DurableState;
use crate::store::embedded::decode;
use crate::store::{keys, Direction, ListPage, ListQuery};

type Entries = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>>;

/// One index stream of a listing and its event count at the snapshot.
struct Stream {
    prefix: Vec<u8>,
    total: u64,
}

/// Answers one page.
pub fn page(tree: &sled::Tree, state: &DurableState, query: &ListQuery) -> Result<ListPage, Error> {
    if let Some(resume) = &query.resume {
        if resume.first < state.first {
            return Err(Error::Expired { position: "page_token", earliest: state.first });
        }
    }
    let snapshot = query.resume.as_ref().map_or(state.sequence, |r| r.snapshot);
    let streams = select_streams(state, query);
    let total = match &query.resume {
        Some(resume) => resume.total,
        None => streams
            .iter()
            .map(|s| count_in_range(tree, s, &query.from, &query.to, snapshot))
            .sum::<Result<u64, Error>>()?,
    };

    let mut merge = Merge::new(
        streams.iter().map(|s| entries(tree, &s.prefix, query)).collect(),
        query.direction,
        snapshot,
    );
    let skip = if query.resume.is_some() { 0 } else { query.offset };
    for _ in 0..skip {
        if merge.next_seq()?.is_none() {
            break;
        }
    }
    let mut events = Vec::with_capacity(query.limit.min(128));
    let mut has_more = false;
    while let Some(seq) = merge.next_seq()? {
        if events.len() == query.limit {
            has_more = true;
            break;
        }
        let bytes = tree
            .get(keys::event(seq))?
            .ok_or_else(|| Error::Corrupt(format!("index points to missing event {seq}")))?;
        events.push(decode(seq, &bytes)?);
    }
    Ok(ListPage { events, total, snapshot, has_more, first: state.first })
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
fn entries(tree: &sled::Tree, prefix: &[u8], query: &ListQuery) -> Entries {
    let mut lo = Bound::Included(keys::entry_floor(prefix, &query.from));
    let mut hi = Bound::Included(keys::entry_ceiling(prefix, &query.to));
    if let Some(resume) = &query.resume {
        let at = keys::entry(prefix, &resume.after.created, resume.after.sequence);
        match query.direction {
            Direction::Chronological => lo = Bound::Excluded(at),
            Direction::ReverseChronological => hi = Bound::Excluded(at),
        }
    }
    let range = tree.range::<Vec<u8>, _>((lo, hi));
    match query.direction {
        Direction::Chronological => Box::new(range),
        Direction::ReverseChronological => Box::new(range.rev()),
    }
}

/// Counts a stream's entries with `from <= created <= to` and sequence within the snapshot.
///
/// Walks inside the range and outside it in lockstep; the first walk to end answers (inside
/// directly, outside as `total - outside`), so the cost is twice the smaller side.
fn count_in_range(
    tree: &sled::Tree,
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
    let mut inside = tree.range(lo.clone()..=hi.clone());
    let mut outside = tree
        .range(start..lo)
        .chain(tree.range::<Vec<u8>, _>((Bound::Excluded(hi), Bound::Included(end))));
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
fn step(
    iter: &mut impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    snapshot: u64,
) -> Result<Option<u64>, Error> {
    match iter.next() {
        None => Ok(None),
        Some(entry) => {
            let (key, _) = entry?;
            Ok(Some(u64::from(keys::seq_of(&key).is_some_and(|s| s <= snapshot))))
        }
    }
}

/// A k-way merge of index streams by their (created, sequence) suffix.
struct Merge {
    streams: Vec<Entries>,
    heads: Vec<Option<Vec<u8>>>,
    direction: Direction,
    snapshot: u64,
    started: bool,
}

impl Merge {
    fn new(streams: Vec<Entries>, direction: Direction, snapshot: u64) -> Self {
        let heads = vec![None; streams.len()];
        Merge { streams, heads, direction, snapshot, started: false }
    }

    /// Fills stream `i`'s head with its next entry within the snapshot (as the key suffix).
    fn refill(&mut self, i: usize) -> Result<(), Error> {
        self.heads[i] = None;
        for entry in self.streams[i].by_ref() {
            let (key, _) = entry?;
            let Some(suffix) = key.get(key.len().saturating_sub(keys::SUFFIX_LEN)..) else {
                continue;
            };
            if keys::seq_of(suffix).is_some_and(|s| s <= self.snapshot) {
                self.heads[i] = Some(suffix.to_vec());
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
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some(head) = head else { continue };
            let better = match best.and_then(|b| self.heads[b].as_ref()) {
                None => true,
                Some(current) => match self.direction {
                    Direction::Chronological => head < current,
                    Direction::ReverseChronological => head > current,
                },
            };
            if better {
                best = Some(i);
            }
        }
        let Some(i) = best else { return Ok(None) };
        let seq = self.heads[i].as_deref().and_then(keys::seq_of);
        self.refill(i)?;
        Ok(seq)
    }
}
