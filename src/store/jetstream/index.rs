//! The JetStream backend's in-memory index: what each eventsd instance derives from the
//! stream so lists, totals and `from_created` are exact and cheap.
//!
//! It holds the same keys as the embedded store's sled tree (`store/keys.rs`: by-time and
//! by-type-time entries), so listing is the same code ([`crate::store::list`]), plus ids and
//! per-(mode, type) counts, and each event's `source` (interned: one pointer per event that
//! has one) for the `source` filter. It is built by reading the stream in sequence order and
//! holds no event bodies (about 200 bytes per event). It never holds a gap: an event is applied only
//! if its sequence follows the last one applied.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::error::Error;
use crate::store::index::DurableState;
use crate::store::list::{Index, Keys};
use crate::store::{keys, Direction};

/// The fields of an `Event` the index needs, decoded alone (same field numbers as `Event`;
/// prost skips the rest, `data` included), so building the index from a long stream does not
/// pay for decoding every event's data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Indexed {
    /// `Event.id`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `Event.type`.
    #[prost(string, tag = "2")]
    pub r#type: String,
    /// `Event.created`.
    #[prost(message, optional, tag = "3")]
    pub created: Option<prost_types::Timestamp>,
    /// `Event.livemode`.
    #[prost(bool, tag = "5")]
    pub livemode: bool,
    /// `Event.source`.
    #[prost(string, tag = "10")]
    pub source: String,
}

/// The index of every event applied so far, in sequence order.
#[derive(Default)]
pub struct MemIndex {
    entries: BTreeSet<Vec<u8>>,
    /// Sequences by id, test ids first, live ids second: each mode is its own id namespace.
    ids: [HashMap<String, u64>; 2],
    /// The source of every event that has one, by sequence; the names are shared.
    sources: HashMap<u64, Arc<str>>,
    source_names: HashSet<Arc<str>>,
    state: DurableState,
}

impl MemIndex {
    /// An empty index of a stream whose first sequence is `first`.
    pub fn starting_at(first: u64) -> Self {
        MemIndex {
            state: DurableState { sequence: first.saturating_sub(1), first, ..Default::default() },
            ..Default::default()
        }
    }

    /// The last applied sequence.
    pub fn sequence(&self) -> u64 {
        self.state.sequence
    }

    /// Sequence, first kept sequence and counts, as listings read them.
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    /// The sequence of the event with this id in this mode, if applied.
    pub fn sequence_of(&self, livemode: bool, id: &str) -> Option<u64> {
        self.ids[usize::from(livemode)].get(id).copied()
    }

    /// Whether the event at `seq` was produced by `source`.
    pub fn source_is(&self, seq: u64, source: &str) -> bool {
        self.sources.get(&seq).map_or(source.is_empty(), |s| &**s == source)
    }

    /// Adds the event at `seq` (its id, type, mode, `created` and source). Refuses a
    /// sequence that does not follow the last applied one.
    pub fn apply(
        &mut self,
        seq: u64,
        id: &str,
        event_type: &str,
        livemode: bool,
        created: Option<prost_types::Timestamp>,
        source: &str,
    ) -> Result<(), Error> {
        let expected = self.state.sequence + 1;
        if seq != expected {
            return Err(Error::Corrupt(format!(
                "the stream delivered sequence {seq} where {expected} was expected"
            )));
        }
        let created = created.unwrap_or_default();
        self.entries.insert(keys::entry(&keys::created_prefix(livemode), &created, seq));
        self.entries.insert(keys::entry(&keys::type_prefix(event_type, livemode), &created, seq));
        self.ids[usize::from(livemode)].insert(id.to_string(), seq);
        if !source.is_empty() {
            let name = match self.source_names.get(source) {
                Some(name) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(source);
                    self.source_names.insert(name.clone());
                    name
                }
            };
            self.sources.insert(seq, name);
        }
        *self.state.counts.entry((livemode, event_type.to_string())).or_default() += 1;
        self.state.sequence = seq;
        Ok(())
    }
}

impl Index for MemIndex {
    type Key = Vec<u8>;

    fn keys(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        direction: Direction,
    ) -> Keys<'_, Vec<u8>> {
        // An empty or inverted range would make BTreeSet::range panic.
        let inverted = match (&lo, &hi) {
            (Bound::Included(l), Bound::Included(h)) => l > h,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
            | (Bound::Excluded(l), Bound::Included(h)) => l >= h,
            _ => false,
        };
        if inverted {
            return Box::new(std::iter::empty());
        }
        let range = self.entries.range((lo, hi)).map(|k| Ok(k.clone()));
        match direction {
            Direction::Chronological => Box::new(range),
            Direction::ReverseChronological => Box::new(range.rev()),
        }
    }
}

/// The index shared between the instance's stream follower (the only writer) and readers.
pub type SharedIndex = Arc<std::sync::RwLock<MemIndex>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Filter;
    use crate::proto::Event;
    use crate::store::{list, ListQuery};
    use prost_types::Timestamp;

    fn event(seq: u64, id: &str, t: &str, created: i64) -> Event {
        Event {
            sequence: seq,
            id: id.into(),
            r#type: t.into(),
            livemode: true,
            created: Some(Timestamp { seconds: created, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn lists_merge_by_created_and_count_exactly() {
        let mut index = MemIndex::starting_at(1);
        let mut apply =
            |e: Event| index.apply(e.sequence, &e.id, &e.r#type, e.livemode, e.created, &e.source);
        apply(event(1, "a", "charge.create", 30)).unwrap();
        apply(event(2, "b", "refund.create", 10)).unwrap();
        apply(event(3, "c", "charge.create", 20)).unwrap();
        assert!(apply(event(5, "e", "x", 1)).is_err(), "a gap is refused");
        let query = ListQuery {
            from: Timestamp { seconds: 0, nanos: 0 },
            to: Timestamp { seconds: 100, nanos: 0 },
            direction: Direction::ReverseChronological,
            filter: Filter::new(&["charge.*".into()], Some(true)).unwrap(),
            offset: 0,
            limit: 10,
            resume: None,
        };
        let page = list::page(&index, index.state(), &query, |seq, s| Ok(index.source_is(seq, s)))
            .unwrap();
        assert_eq!(page.sequences, vec![1, 3]);
        assert_eq!(page.total, 2);
        assert_eq!(index.sequence_of(true, "b"), Some(2));
        assert_eq!(index.sequence_of(false, "b"), None);
        let from = Timestamp { seconds: 15, nanos: 0 };
        assert_eq!(list::first_created_from(&index, &from, 3).unwrap(), Some(1));
    }

    #[test]
    fn merge_of_many_streams_is_in_order_both_ways() {
        let mut index = MemIndex::starting_at(1);
        let mut expected = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for seq in 1..=600u64 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let t = format!("t{}.x", (state >> 33) % 40);
            let created = ((state >> 13) % 50) as i64;
            let e = event(seq, &format!("e{seq}"), &t, created);
            index.apply(seq, &e.id, &e.r#type, e.livemode, e.created, &e.source).unwrap();
            expected.push((created, seq));
        }
        expected.sort();
        for direction in [Direction::Chronological, Direction::ReverseChronological] {
            let query = ListQuery {
                from: Timestamp { seconds: 0, nanos: 0 },
                to: Timestamp { seconds: 100, nanos: 0 },
                direction,
                filter: Filter::new(&["t*".into()], Some(true)).unwrap(),
                offset: 7,
                limit: 1_000,
                resume: None,
            };
            let page =
                list::page(&index, index.state(), &query, |seq, s| Ok(index.source_is(seq, s)))
                    .unwrap();
            let mut want: Vec<u64> = expected.iter().map(|&(_, s)| s).collect();
            if direction == Direction::ReverseChronological {
                want.reverse();
            }
            assert_eq!(page.sequences, want[7..].to_vec(), "{direction:?}");
            assert_eq!(page.total, 600);
        }
    }
}
