//! Counts per time bucket: how many entries each index stream holds in each span of `created`
//! time, at a few widths, so the total of any `from`..`to` range and a deep offset cost a
//! bounded number of reads instead of a walk over the range (`store/list/span.rs` reads them).
//!
//! Time is counted in nanoseconds since 0001-01-01T00:00:00Z (the earliest valid `created`),
//! so every valid timestamp is a non-negative integer. A bucket of level `l` covers
//! `[b << LEVELS[l], (b + 1) << LEVELS[l])`: the widths grow 256-fold from about a millisecond
//! (2^20 ns) to about 36 years (2^60 ns). A range is then the sum of at most 255 buckets per
//! level on each side, plus the entries of at most one partial millisecond on each side.
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

use std::collections::BTreeMap;

use prost_types::Timestamp;

use crate::error::Error;
use crate::store::index::keys;

/// Shift (log2 of the width in nanoseconds) of each level's buckets, finest first.
pub const LEVELS: [u32; 6] = [20, 28, 36, 44, 52, 60];

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
pub struct Deltas(BTreeMap<Vec<u8>, BTreeMap<(usize, u64), i64>>);

impl Deltas {
    /// Counts one entry of `prefix`'s stream created at `created` (`delta` +1 or -1).
    pub fn add(&mut self, prefix: &[u8], created: &Timestamp, delta: i64) {
        let t = ns(created);
        let stream = self.0.entry(prefix.to_vec()).or_default();
        for level in 0..LEVELS.len() {
            *stream.entry((level, bucket_of(level, t))).or_default() += delta;
        }
    }

    /// Stages the new counts into `batch`, reading the current ones from `tree`.
    /// `counts(prefix)` gives a stream's event count before and after the batch: a stream
    /// below [`MIN_EVENTS`] after it keeps no buckets (its keys go if it had them); one that
    /// reaches it gets buckets for every entry it holds (`tree` still holds the entries as
    /// they were before the batch, and the batch's own are in its deltas).
    pub fn stage(
        mut self,
        tree: &sled::Tree,
        batch: &mut sled::Batch,
        counts: impl Fn(&[u8]) -> (u64, u64),
    ) -> Result<(), Error> {
        let prefixes: Vec<Vec<u8>> = self.0.keys().cloned().collect();
        for prefix in prefixes {
            let (before, after) = counts(&prefix);
            match (kept(&prefix, before), kept(&prefix, after)) {
                (true, true) => {}
                (false, false) => {
                    self.0.remove(&prefix);
                }
                (true, false) => {
                    self.0.remove(&prefix);
                    for level in 0..LEVELS.len() {
                        let range = key(level, &prefix, 0)..=key(level, &prefix, u64::MAX);
                        for entry in tree.range(range) {
                            batch.remove(entry?.0);
                        }
                    }
                }
                (false, true) => {
                    let end = keys::entry_ceiling(&prefix, &timestamp(u128::MAX >> 1));
                    for entry in tree.range(prefix.clone()..end) {
                        let (k, _) = entry?;
                        let created = keys::created_of(&k)
                            .ok_or_else(|| Error::Corrupt(format!("index entry {k:?}")))?;
                        self.add(&prefix, &created, 1);
                    }
                }
            }
        }
        for (prefix, buckets) in self.0 {
            for ((level, bucket), delta) in buckets {
                if delta == 0 {
                    continue;
                }
                let key = key(level, &prefix, bucket);
                let current = match tree.get(&key)? {
                    Some(v) => keys::u64_value(&v)
                        .ok_or_else(|| Error::Corrupt(format!("bucket count {key:?}")))?,
                    None => 0,
                };
                match current.saturating_add_signed(delta) {
                    0 => batch.remove(key),
                    n => batch.insert(key, &n.to_be_bytes()),
                }
            }
        }
        Ok(())
    }

    /// The expected counts (for `eventsd check`) of the streams that keep buckets, given
    /// each stream's event count: every bucket key with its total.
    pub fn into_counts(self, count: impl Fn(&[u8]) -> u64) -> BTreeMap<Vec<u8>, u64> {
        let mut out = BTreeMap::new();
        for (prefix, buckets) in self.0 {
            if !kept(&prefix, count(&prefix)) {
                continue;
            }
            for ((level, bucket), n) in buckets {
                if n > 0 {
                    out.insert(key(level, &prefix, bucket), n as u64);
                }
            }
        }
        out
    }
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
