//! Counting and seeking over bucket counts (`store/index/buckets.rs`): the exact number of
//! entries a set of streams holds in a span of `created` time, or the entry that comes after
//! skipping a given number of them, in a bounded number of reads whatever the span holds.
//!
//! Both rest on ranks, the number of entries created before a time:
//! - [`below`] walks one stream down from the top level: at each level it adds the buckets
//!   before the time inside the bucket it is in (at most 15), and goes down into the bucket
//!   that holds the time, until that bucket holds fewer than `buckets::SPLIT` entries (its
//!   children are not stored) or is a finest one; then it counts that bucket's entries before
//!   the time. A span's count is the rank of its end minus the rank of its start.
//! - [`select`] finds the entry of a given rank among several streams the same way: at each
//!   level it sums the streams' buckets inside the bucket it is in and goes down into the one
//!   that holds the rank, reading the entries of each stream whose bucket there holds fewer
//!   than `buckets::SPLIT`.
//!
//! Streams that keep no bucket counts (fewer than `buckets::MIN_EVENTS` entries) are read
//! whole, once. Bucket counts include every applied entry, so the caller holds the view in
//! which the applied sequence is the snapshot (the embedded store's state lock); entries read
//! one by one are still checked against the snapshot.

use std::ops::Bound;

use crate::error::Error;
use crate::event::time;
use crate::store::index::buckets::{self, LEVELS, SPLIT};
use crate::store::list::Index;
use crate::store::{keys, Direction};

/// What a walk over a span found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    /// The span holds this many entries (fewer than the skip, when skipping).
    Counted(u64),
    /// The (created, sequence) suffix of the first entry after the skipped ones.
    At(Vec<u8>),
}

/// An entry read one by one: its `created` (nanoseconds) and its (created, sequence) suffix.
type Entry = (u128, Vec<u8>);

/// One stream of a walk.
pub struct Counted {
    /// The stream's key prefix.
    pub prefix: Vec<u8>,
    /// Whether it keeps bucket counts.
    pub bucketed: bool,
    /// Its entries in the snapshot.
    pub total: u64,
}

/// Counts the entries of `streams` created in `[lo, hi)` (nanoseconds, see `buckets::ns`)
/// (`skip` = `None`), or finds the entry after the first `skip` of them in `direction`.
/// `None` when the index keeps no bucket counts.
pub fn walk<I: Index>(
    index: &I,
    streams: &[Counted],
    (lo, hi): (u128, u128),
    direction: Direction,
    snapshot: u64,
    skip: Option<u64>,
) -> Result<Option<Walked>, Error> {
    if !index.keeps_buckets() {
        return Ok(None);
    }
    let bucketed: Vec<&Counted> = streams.iter().filter(|s| s.bucketed).collect();
    let mut loose = Vec::new();
    for stream in streams.iter().filter(|s| !s.bucketed) {
        loose.extend(entries(index, &stream.prefix, (0, u128::MAX), snapshot)?);
    }
    loose.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    let rank = |t: u128| -> Result<u64, Error> {
        let mut n = loose.partition_point(|(created, _)| *created < t) as u64;
        for stream in &bucketed {
            n += rank_of(index, stream, t, snapshot)?;
        }
        Ok(n)
    };
    let bucketed: Vec<&[u8]> = bucketed.iter().map(|s| s.prefix.as_slice()).collect();
    let (start, end) = (rank(lo)?, rank(hi.max(lo))?);
    let n = end.saturating_sub(start);
    let Some(k) = skip.filter(|k| *k < n) else { return Ok(Some(Walked::Counted(n))) };
    let wanted = match direction {
        Direction::Chronological => start + k,
        Direction::ReverseChronological => end - 1 - k,
    };
    select(index, &bucketed, loose, wanted, snapshot).map(|suffix| Some(Walked::At(suffix)))
}

/// The number of a bucketed stream's entries created before `t`: none when `t` is at or
/// before its oldest entry, all of them when past its newest (the stream's known span says,
/// with no read), else [`below`].
fn rank_of<I: Index>(index: &I, stream: &Counted, t: u128, snapshot: u64) -> Result<u64, Error> {
    if let Some((first, last)) = index.span(&stream.prefix)? {
        let key = time::to_key(&buckets::timestamp(t.min(u128::MAX >> 1)));
        if key[..] > last[..] {
            return Ok(stream.total);
        }
        if key[..] <= first[..] {
            return Ok(0);
        }
    }
    below(index, &stream.prefix, t, snapshot)
}

/// The number of `prefix`'s entries created before `t` (a stream that keeps bucket counts).
fn below<I: Index>(index: &I, prefix: &[u8], t: u128, snapshot: u64) -> Result<u64, Error> {
    let mut n = 0;
    // The start of the bucket the walk is in (everything, at the top).
    let mut start = 0u128;
    for level in (0..LEVELS.len()).rev() {
        let shift = LEVELS[level];
        let at = number(t >> shift);
        let mut holding = 0;
        for bucket in index.buckets(level, prefix, number(start >> shift), at.saturating_add(1)) {
            let (b, count) = bucket?;
            if b < at {
                n += count;
            } else {
                holding = count;
            }
        }
        let bucket_start = u128::from(at) << shift;
        if holding == 0 || bucket_start == t {
            return Ok(n);
        }
        if level == 0 || holding < SPLIT {
            let inside = entries(index, prefix, (bucket_start, t), snapshot)?;
            return Ok(n + inside.len() as u64);
        }
        start = bucket_start;
    }
    Ok(n)
}

/// The suffix of the entry of rank `wanted` (0 is the oldest) among the bucketed streams and
/// the `loose` entries (sorted).
fn select<I: Index>(
    index: &I,
    bucketed: &[&[u8]],
    mut loose: Vec<Entry>,
    mut wanted: u64,
    snapshot: u64,
) -> Result<Vec<u8>, Error> {
    let mut active: Vec<&[u8]> = bucketed.to_vec();
    // The span the walk is in, as [lo, hi) nanoseconds.
    let (mut lo, mut hi) = (0u128, u128::MAX);
    for level in (0..LEVELS.len()).rev() {
        if active.is_empty() {
            break;
        }
        let shift = LEVELS[level];
        let (first, last) = (number(lo >> shift), number((hi - 1) >> shift).saturating_add(1));
        let mut sums = std::collections::BTreeMap::<u64, u64>::new();
        let mut per_stream = Vec::with_capacity(active.len());
        for prefix in &active {
            let mut counts = Vec::new();
            for bucket in index.buckets(level, prefix, first, last) {
                let (b, count) = bucket?;
                *sums.entry(b).or_default() += count;
                counts.push((b, count));
            }
            per_stream.push(counts);
        }
        for (created, _) in &loose {
            *sums.entry(number(created >> shift)).or_default() += 1;
        }
        let mut chosen = None;
        for (b, count) in sums {
            if wanted < count {
                chosen = Some(b);
                break;
            }
            wanted -= count;
        }
        let chosen = chosen.ok_or_else(|| {
            Error::Corrupt("bucket counts disagree with the index entries".into())
        })?;
        (lo, hi) = (u128::from(chosen) << shift, u128::from(chosen + 1) << shift);
        loose.retain(|(created, _)| (lo..hi).contains(created));
        let mut still = Vec::with_capacity(active.len());
        for (prefix, counts) in active.iter().zip(per_stream) {
            match counts.iter().find(|(b, _)| *b == chosen).map(|(_, n)| *n) {
                None => {}
                Some(n) if level > 0 && n >= SPLIT => still.push(*prefix),
                Some(_) => loose.extend(entries(index, prefix, (lo, hi), snapshot)?),
            }
        }
        active = still;
    }
    loose.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    loose
        .into_iter()
        .nth(wanted as usize)
        .map(|(_, suffix)| suffix)
        .ok_or_else(|| Error::Corrupt("bucket counts disagree with the index entries".into()))
}

/// A bucket number from a shifted time, saturating past the last one.
fn number(shifted: u128) -> u64 {
    u64::try_from(shifted).unwrap_or(u64::MAX)
}

/// `prefix`'s entries created in `[lo, hi)` within the snapshot, ascending.
fn entries<I: Index>(
    index: &I,
    prefix: &[u8],
    (lo, hi): (u128, u128),
    snapshot: u64,
) -> Result<Vec<Entry>, Error> {
    let floor = |t: u128| keys::entry_floor(prefix, &buckets::timestamp(t.min(u128::MAX >> 1)));
    let (from, to) = (Bound::Included(floor(lo)), Bound::Excluded(floor(hi)));
    let mut out = Vec::new();
    for key in index.keys(from, to, Direction::Chronological) {
        let key = key?;
        let key = key.as_ref();
        if keys::seq_of(key).is_none_or(|s| s > snapshot) {
            continue;
        }
        let (Some(created), Some(suffix)) =
            (keys::created_of(key), key.get(key.len().saturating_sub(keys::SUFFIX_LEN)..))
        else {
            return Err(Error::Corrupt(format!("index entry {key:?}")));
        };
        out.push((buckets::ns(&created), suffix.to_vec()));
    }
    Ok(out)
}
