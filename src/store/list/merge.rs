//! The k-way merge of index streams by their (created, sequence) suffix: a binary heap of the
//! streams' heads, so each entry costs O(log streams) and starting costs O(streams). Entries
//! above the listing's snapshot are skipped as they are met.

use std::collections::BinaryHeap;

use crate::error::Error;
use crate::store::list::Keys;
use crate::store::{keys, Direction};

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

/// A merge of index streams in one direction, bounded by a snapshot.
pub struct Merge<'a, K> {
    streams: Vec<Keys<'a, K>>,
    heads: BinaryHeap<Head>,
    direction: Direction,
    snapshot: u64,
    started: bool,
}

impl<'a, K: AsRef<[u8]>> Merge<'a, K> {
    /// Merges `streams`, each already sorted in `direction`.
    pub fn new(streams: Vec<Keys<'a, K>>, direction: Direction, snapshot: u64) -> Self {
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

    /// The (created, sequence) suffix of the next entry in merge order, or `None` when every
    /// stream is done.
    pub fn next_suffix(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if !self.started {
            self.started = true;
            for i in 0..self.streams.len() {
                self.refill(i)?;
            }
        }
        let Some(head) = self.heads.pop() else { return Ok(None) };
        self.refill(head.stream)?;
        Ok(Some(head.suffix))
    }

    /// The sequence of the next entry in merge order, or `None` when every stream is done.
    pub fn next_seq(&mut self) -> Result<Option<u64>, Error> {
        Ok(self.next_suffix()?.and_then(|suffix| keys::seq_of(&suffix)))
    }
}
