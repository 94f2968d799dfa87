//! Counting and seeking over bucket counts (`store/index/buckets.rs`): the exact number of
//! entries a set of streams holds in a span of `created` time, or the entry that comes after
//! skipping a given number of them, in a bounded number of reads whatever the span holds.
//!
//! The walk starts at one edge of the span (the `from` side going forward, the `to` side going
//! backward) and moves it towards the other:
//! - while the edge is not on a finest-bucket boundary it reads the entries up to the next one
//!   (less than a millisecond of events);
//! - otherwise it adds up whole buckets of the widest level the edge is aligned to that still
//!   fits in the span, up to the next boundary of the level above;
//! - when skipping, a bucket that holds the entry sought becomes the span, and the walk goes on
//!   inside it one level finer.
//!
//! So a count reads at most 255 buckets per level per side and the entries of two partial
//! milliseconds; a seek reads about twice that. Bucket counts include every applied entry, so
//! the caller holds the view in which the applied sequence is the snapshot (the embedded
//! store's state lock); entries met one by one are still checked against the snapshot.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::Error;
use crate::store::index::buckets::{self, LEVELS};
use crate::store::list::merge::Merge;
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

fn width(level: usize) -> u128 {
    1u128 << LEVELS[level]
}

/// Walks the entries of `streams` created in `[lo, hi)` (nanoseconds, see `buckets::ns`) in
/// `direction`: counts them all (`skip` = `None`) or finds the entry after the first `skip`.
/// Each stream is (prefix, whether it keeps bucket counts); the entries of one that does not
/// (fewer than `buckets::MIN_EVENTS`) are read once and counted in memory. `None` when the
/// index keeps no bucket counts.
pub fn walk<I: Index>(
    index: &I,
    streams: &[(Vec<u8>, bool)],
    (mut lo, mut hi): (u128, u128),
    direction: Direction,
    snapshot: u64,
    skip: Option<u64>,
) -> Result<Option<Walked>, Error> {
    if !index.keeps_buckets() {
        return Ok(None);
    }
    let forward = direction == Direction::Chronological;
    let prefixes: Vec<&[u8]> = streams.iter().map(|(p, _)| p.as_slice()).collect();
    let bucketed: Vec<&[u8]> =
        streams.iter().filter(|(_, kept)| *kept).map(|(p, _)| p.as_slice()).collect();
    let loose = loose_entries(index, streams, (lo, hi), snapshot)?;
    let mut cap = LEVELS.len();
    let mut n = 0u64;
    while lo < hi {
        let edge = if forward { lo } else { hi };
        let level = (0..cap).rev().find(|&l| edge % width(l) == 0 && hi - lo >= width(l));
        let Some(level) = level else {
            // Less than a finest bucket to the next boundary: read the entries themselves.
            let w = width(0);
            let (a, b) = if forward {
                (lo, hi.min((lo / w + 1) * w))
            } else {
                (lo.max((hi - 1) / w * w), hi)
            };
            let merged = prefixes
                .iter()
                .map(|p| {
                    let from = Bound::Included(keys::entry_floor(p, &buckets::timestamp(a)));
                    let to = Bound::Excluded(keys::entry_floor(p, &buckets::timestamp(b)));
                    index.keys(from, to, direction)
                })
                .collect();
            let mut merge = Merge::new(merged, direction, snapshot);
            while let Some(suffix) = merge.next_suffix()? {
                if skip == Some(n) {
                    return Ok(Some(Walked::At(suffix)));
                }
                n += 1;
            }
            if forward {
                lo = b;
            } else {
                hi = a;
            }
            continue;
        };
        // Whole buckets of this level, up to where the level above takes over or the span ends.
        let w = width(level);
        let above = (level + 1 < cap).then(|| width(level + 1));
        let (a, b) = if forward {
            let end = hi / w * w;
            (lo, above.map_or(end, |up| end.min((lo / up + 1) * up)))
        } else {
            let start = lo.div_ceil(w) * w;
            (above.map_or(start, |up| start.max((hi - 1) / up * up)), hi)
        };
        let shift = LEVELS[level];
        let mut sums: BTreeMap<u64, u64> = BTreeMap::new();
        for prefix in &bucketed {
            let range = index.buckets(level, prefix, (a >> shift) as u64, (b >> shift) as u64);
            for bucket in range {
                let (number, count) = bucket?;
                *sums.entry(number).or_default() += count;
            }
        }
        let (from, to) = (loose.partition_point(|t| *t < a), loose.partition_point(|t| *t < b));
        for t in &loose[from..to] {
            *sums.entry((t >> shift) as u64).or_default() += 1;
        }
        let ordered: Box<dyn Iterator<Item = (u64, u64)>> =
            if forward { Box::new(sums.into_iter()) } else { Box::new(sums.into_iter().rev()) };
        let mut inside = None;
        for (number, count) in ordered {
            if skip.is_some_and(|k| n + count > k) {
                inside = Some(number);
                break;
            }
            n += count;
        }
        match inside {
            Some(number) => {
                // The entry sought is in this bucket: walk inside it, one level finer.
                lo = u128::from(number) << shift;
                hi = lo + w;
                cap = level;
            }
            None if forward => lo = b,
            None => hi = a,
        }
    }
    Ok(Some(Walked::Counted(n)))
}

/// The `created` times (nanoseconds, ascending) of the entries in `[lo, hi)` within the
/// snapshot of the streams that keep no bucket counts.
fn loose_entries<I: Index>(
    index: &I,
    streams: &[(Vec<u8>, bool)],
    (lo, hi): (u128, u128),
    snapshot: u64,
) -> Result<Vec<u128>, Error> {
    let mut loose = Vec::new();
    for (prefix, _) in streams.iter().filter(|(_, kept)| !kept) {
        let from = Bound::Included(keys::entry_floor(prefix, &buckets::timestamp(lo)));
        let to = Bound::Excluded(keys::entry_floor(prefix, &buckets::timestamp(hi)));
        for key in index.keys(from, to, Direction::Chronological) {
            let key = key?;
            let key = key.as_ref();
            if keys::seq_of(key).is_some_and(|s| s <= snapshot) {
                if let Some(created) = keys::created_of(key) {
                    loose.push(buckets::ns(&created));
                }
            }
        }
    }
    loose.sort_unstable();
    Ok(loose)
}
