//! Counts per time bucket: how many entries each index stream holds in each span of `created`
//! time, at a few widths, so the total of any `from`..`to` range and a deep offset cost a
//! bounded number of reads instead of a walk over the range (`store/list/span.rs` reads them).
//!
//! Time is counted in nanoseconds since 0001-01-01T00:00:00Z (the earliest valid `created`),
//! so every valid timestamp is a non-negative integer. A bucket of level `l` covers
//! `[b << LEVELS[l], (b + 1) << LEVELS[l])`: the widths grow 16-fold from about a millisecond
//! (2^20 ns) to about 36 years (2^60 ns).
//!
//! Which buckets are stored: every non-empty bucket of the top level, and below it only the
//! children of a bucket that holds at least [`SPLIT`] entries. The count of entries created
//! before a time is then one walk down from the top, reading at most 15 buckets per level,
//! that stops at the first bucket holding fewer than [`SPLIT`] and reads its entries
//! (`store/list/span.rs`). Events that are sparse in time cost no bucket key at the fine
//! levels; dense ones share each key among many events.
//!
//! Key: `b` level(1) stream-prefix bucket(8, big-endian) → count(8). Stream prefixes
//! (`keys::created_prefix`, `keys::type_prefix`) are self-delimiting, so one stream's buckets
//! of one level are one contiguous key range in bucket order.
//!
//! Which streams keep them: both by-time streams, and each type stream from [`MIN_EVENTS`]
//! events on, so a type seen a few times costs no bucket keys (a listing reads its few
//! entries instead). [`kept`] says which, from a stream's count.
//!
//! Promises: the index thread changes bucket counts in the same sled batch as the entries
//! they count ([`Deltas`] aggregates a batch's changes, so events created in the same
//! millisecond write one key per level per stream), so the buckets of every stream that keeps
//! them always agree with the entries of the applied rounds.

use std::collections::{BTreeMap, HashMap};

use prost_types::Timestamp;

use crate::error::Error;
use crate::store::index::{keys, View};
use crate::store::Direction;

/// Shift (log2 of the width in nanoseconds) of each level's buckets, finest first: each level
/// is 16 times as wide as the one below it.
pub const LEVELS: [u32; 11] = [20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60];

/// The widest level; its buckets are always stored.
pub const TOP: usize = LEVELS.len() - 1;

/// A bucket's 16 buckets one level finer are stored only once it holds this many entries; a
/// reader meets fewer than this many entries in a bucket whose children are not stored, and
/// reads them instead. So a stream of sparse events (one per second, say) keeps no bucket at
/// the millisecond levels, and a dense one keeps them where it is dense.
pub const SPLIT: u64 = 32;

/// First byte of every bucket key.
pub const BUCKET: u8 = b'b';

/// Seconds from 0001-01-01T00:00:00Z to the Unix epoch.
const EPOCH_OFFSET: i128 = 62_135_596_800;
const NANOS: u128 = 1_000_000_000;

/// Nanoseconds since 0001-01-01T00:00:00Z; anything earlier counts as 0.
pub fn ns(t: &Timestamp) -> u128 {
    let seconds = (i128::from(t.seconds) + EPOCH_OFFSET).max(0) as u128;
    seconds * NANOS + t.nanos.clamp(0, 999_999_999) as u128
}

/// The timestamp `ns` nanoseconds after 0001-01-01T00:00:00Z.
pub fn timestamp(ns: u128) -> Timestamp {
    let seconds = (ns / NANOS) as i128 - EPOCH_OFFSET;
    Timestamp {
        seconds: seconds.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
        nanos: (ns % NANOS) as i32,
    }
}

/// The bucket key of `prefix`'s stream at `level` for bucket number `bucket`.
pub fn key(level: usize, prefix: &[u8], bucket: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + prefix.len() + 8);
    k.push(BUCKET);
    k.push(level as u8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

/// The bucket number of time `ns` at `level`.
pub fn bucket_of(level: usize, ns: u128) -> u64 {
    (ns >> LEVELS[level]) as u64
}

/// Parses a bucket key into (level, stream prefix, bucket number).
pub fn parse(key: &[u8]) -> Option<(usize, &[u8], u64)> {
    let [BUCKET, level, rest @ ..] = key else { return None };
    let split = rest.len().checked_sub(8)?;
    let (prefix, bucket) = rest.split_at(split);
    let level = usize::from(*level);
    (level < LEVELS.len()).then_some((level, prefix, u64::from_be_bytes(bucket.try_into().ok()?)))
}

/// A type stream keeps bucket counts once it holds this many events; below it, a listing reads
/// its entries themselves (fewer than this many), so a rare type costs no bucket keys. The
/// by-time streams (one per mode) always keep them.
pub const MIN_EVENTS: u64 = 256;

/// Whether the stream with this prefix keeps bucket counts when it holds `count` events.
pub fn kept(prefix: &[u8], count: u64) -> bool {
    prefix.first() == Some(&keys::CREATED) || count >= MIN_EVENTS
}

/// A batch's changes to bucket counts, per stream: one delta per (level, bucket).
#[derive(Default)]
pub struct Deltas(BTreeMap<Vec<u8>, Levels>);

/// One stream's counts (or count changes) per (level, bucket number).
type Levels = BTreeMap<(usize, u64), i64>;

/// The bucket one level up that holds bucket `bucket` of `level`.
fn parent(level: usize, bucket: u64) -> u64 {
    bucket >> (LEVELS[level + 1] - LEVELS[level])
}

/// Bucket numbers at `level` of the `[lo, hi)` span of bucket `bucket` of level `above`.
fn children(above: usize, bucket: u64, level: usize) -> (u64, u64) {
    let shift = LEVELS[above] - LEVELS[level];
    (bucket << shift, (bucket + 1) << shift)
}

/// The buckets a stream stores, from its exact counts at every level: every non-empty bucket
/// of the top level, and every non-empty bucket whose parent holds at least [`SPLIT`].
fn stored(counts: &Levels) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
    counts.iter().filter_map(|(&(level, bucket), &n)| {
        let split = level == TOP
            || counts.get(&(level + 1, parent(level, bucket))).is_some_and(|&p| p >= SPLIT as i64);
        (n > 0 && split).then_some((level, bucket, n as u64))
    })
}

/// Adds one entry created at `t` (nanoseconds) to a stream's counts at every level.
fn count_at(levels: &mut Levels, t: u128, delta: i64) {
    for level in 0..LEVELS.len() {
        *levels.entry((level, bucket_of(level, t))).or_default() += delta;
    }
}

/// A stored bucket count, 0 when the key is absent.
fn read(tree: &sled::Tree, key: &[u8]) -> Result<u64, Error> {
    match tree.get(key)? {
        Some(v) => {
            keys::u64_value(&v).ok_or_else(|| Error::Corrupt(format!("bucket count {key:?}")))
        }
        None => Ok(0),
    }
}

/// Stages the removal of every bucket key of `prefix`'s stream at the levels below `above`
/// inside its bucket `bucket` (all of them, for `above` = `LEVELS.len()`).
fn remove_below(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    prefix: &[u8],
    (above, bucket): (usize, u64),
) -> Result<(), Error> {
    for level in 0..above {
        let range = if above == LEVELS.len() {
            key(level, prefix, 0)..=key(level, prefix, u64::MAX)
        } else {
            let (lo, hi) = children(above, bucket, level);
            key(level, prefix, lo)..=key(level, prefix, hi - 1)
        };
        for entry in tree.range(range) {
            batch.remove(entry?.0);
        }
    }
    Ok(())
}

/// The `created` times (nanoseconds) of `prefix`'s entries in the index in `[lo, hi)`.
fn entry_times(view: &View, prefix: &[u8], (lo, hi): (u128, u128)) -> Result<Vec<u128>, Error> {
    use std::ops::Bound;
    let from = Bound::Included(keys::entry_floor(prefix, &timestamp(lo)));
    let to = Bound::Excluded(keys::entry_floor(prefix, &timestamp(hi)));
    let mut times = Vec::new();
    for entry in view.range((from, to), Direction::Chronological) {
        let entry = entry?;
        let key = keys::entry_key_len(&entry).and_then(|len| entry.get(..len));
        let created = key
            .and_then(keys::created_of)
            .ok_or_else(|| Error::Corrupt(format!("index entry {entry:?}")))?;
        times.push(ns(&created));
    }
    Ok(times)
}

impl Deltas {
    /// Counts one entry of `prefix`'s stream created at `created` (`delta` +1 or -1).
    pub fn add(&mut self, prefix: &[u8], created: &Timestamp, delta: i64) {
        let stream = self.0.entry(prefix.to_vec()).or_default();
        count_at(stream, ns(created), delta);
    }

    /// Stages the new counts into `batch`, reading the current ones from the view's tree.
    /// `counts(prefix)` gives a stream's event count before and after the batch: a stream
    /// below [`MIN_EVENTS`] after it keeps no buckets (its keys go if it had them); one that
    /// reaches it gets buckets for every entry it holds (the view holds the entries as they
    /// were before the batch, and the batch's own are in its deltas).
    pub fn stage(
        self,
        view: &View,
        batch: &mut sled::Batch,
        counts: impl Fn(&[u8]) -> (u64, u64),
    ) -> Result<(), Error> {
        for (prefix, mut deltas) in self.0 {
            let (before, after) = counts(&prefix);
            match (kept(&prefix, before), kept(&prefix, after)) {
                (true, true) => stage_stream(view, batch, &prefix, &deltas)?,
                (false, false) => {}
                (true, false) => remove_below(&view.tree, batch, &prefix, (LEVELS.len(), 0))?,
                (false, true) => {
                    for t in entry_times(view, &prefix, (0, u128::MAX >> 1))? {
                        count_at(&mut deltas, t, 1);
                    }
                    for (level, bucket, n) in stored(&deltas) {
                        batch.insert(key(level, &prefix, bucket), &n.to_be_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    /// The expected counts (for `eventsd check`) of the streams that keep buckets, given
    /// each stream's event count: every bucket key with its total.
    pub fn into_counts(self, count: impl Fn(&[u8]) -> u64) -> BTreeMap<Vec<u8>, u64> {
        let mut out = BTreeMap::new();
        for (prefix, levels) in self.0 {
            if !kept(&prefix, count(&prefix)) {
                continue;
            }
            for (level, bucket, n) in stored(&levels) {
                out.insert(key(level, &prefix, bucket), n);
            }
        }
        out
    }
}

/// What a batch does to one bucket of a stream that keeps buckets.
#[derive(Clone, Copy)]
enum Staged {
    /// Stored before and after: its count before and after the batch.
    Counted(u64, u64),
    /// Not stored after the batch, or written whole with its parent's subtree.
    Settled,
}

/// Stages one stream's deltas, level by level from the top: a bucket whose parent holds at
/// least [`SPLIT`] before and after takes its delta; a parent that reaches [`SPLIT`] gets
/// its whole subtree written from its entries; one that drops below it loses its subtree.
fn stage_stream(
    view: &View,
    batch: &mut sled::Batch,
    prefix: &[u8],
    deltas: &Levels,
) -> Result<(), Error> {
    let split = SPLIT;
    let mut staged: HashMap<(usize, u64), Staged> = HashMap::new();
    for level in (0..LEVELS.len()).rev() {
        let range = (level, 0)..=(level, u64::MAX);
        for (&(_, bucket), &delta) in deltas.range(range) {
            let state = if level == TOP {
                None
            } else {
                Some(
                    staged
                        .get(&(level + 1, parent(level, bucket)))
                        .copied()
                        .unwrap_or(Staged::Settled),
                )
            };
            let counted = match state {
                None => true,
                Some(Staged::Settled) => false,
                Some(Staged::Counted(before, after)) => match (before >= split, after >= split) {
                    (true, true) => true,
                    (false, false) => false,
                    (false, true) => {
                        let up = (level + 1, parent(level, bucket));
                        write_subtree(view, batch, prefix, deltas, up)?;
                        staged.insert(up, Staged::Settled);
                        false
                    }
                    (true, false) => {
                        let up = (level + 1, parent(level, bucket));
                        remove_below(&view.tree, batch, prefix, up)?;
                        staged.insert(up, Staged::Settled);
                        false
                    }
                },
            };
            if !counted {
                staged.insert((level, bucket), Staged::Settled);
                continue;
            }
            let key = key(level, prefix, bucket);
            let before = read(&view.tree, &key)?;
            let after = before.saturating_add_signed(delta);
            if delta != 0 {
                match after {
                    0 => batch.remove(key),
                    n => batch.insert(key, &n.to_be_bytes()),
                }
            }
            staged.insert((level, bucket), Staged::Counted(before, after));
        }
    }
    Ok(())
}

/// Writes every bucket below bucket `bucket` of level `above` (which has just reached
/// [`SPLIT`]) from its entries: those the view holds (fewer than [`SPLIT`]) and the batch's
/// own.
fn write_subtree(
    view: &View,
    batch: &mut sled::Batch,
    prefix: &[u8],
    deltas: &Levels,
    (above, bucket): (usize, u64),
) -> Result<(), Error> {
    let shift = LEVELS[above];
    let span = (u128::from(bucket) << shift, u128::from(bucket + 1) << shift);
    let mut levels = Levels::new();
    for t in entry_times(view, prefix, span)? {
        count_at(&mut levels, t, 1);
    }
    let (lo, hi) = children(above, bucket, 0);
    for (&(_, ms), &delta) in deltas.range((0, lo)..(0, hi)) {
        let t = u128::from(ms) << LEVELS[0];
        count_at(&mut levels, t, delta);
    }
    for (level, b, n) in stored(&levels) {
        if level < above {
            batch.insert(key(level, prefix, b), &n.to_be_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_round_trip_over_the_valid_range() {
        for t in [
            Timestamp { seconds: -62_135_596_800, nanos: 0 },
            Timestamp { seconds: 0, nanos: 1 },
            Timestamp { seconds: 1_765_000_000, nanos: 999_999_999 },
            Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 },
        ] {
            assert_eq!(timestamp(ns(&t)), t);
        }
        assert_eq!(ns(&Timestamp { seconds: -62_135_596_800, nanos: 0 }), 0);
    }

    #[test]
    fn the_top_level_bucket_number_fits_and_keys_parse_back() {
        let last = ns(&Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 });
        for level in 0..LEVELS.len() {
            let b = bucket_of(level, last);
            let prefix = keys::type_prefix("charge.create", true);
            let k = key(level, &prefix, b);
            assert_eq!(parse(&k), Some((level, &prefix[..], b)));
        }
    }

    #[test]
    fn a_round_in_one_millisecond_touches_one_key_per_level() {
        let mut deltas = Deltas::default();
        let prefix = keys::created_prefix(false);
        for nanos in 0..100 {
            deltas.add(&prefix, &Timestamp { seconds: 1_765_000_000, nanos }, 1);
        }
        let counts = deltas.into_counts(|_| 100);
        assert_eq!(counts.len(), LEVELS.len());
        assert!(counts.values().all(|n| *n == 100));
    }
}
