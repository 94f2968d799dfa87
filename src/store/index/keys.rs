//! Key layout of the index. The entries (`c`, `t`) live in the entries structure
//! (`entries/`), each stored as its key followed by its value; the rest lives in one sled
//! tree, which keeps every write of a round in one atomic `apply_batch`, so it is always the
//! state after some whole round. Integers are big-endian so byte order is numeric order;
//! times use [`crate::event::time::to_key`] (12 bytes, order-preserving).
//!
//! | prefix | key                                         | value                      |
//! |--------|---------------------------------------------|----------------------------|
//! | `c`    | `c` mode(1) created(12) seq(8)              | type: by-time entries      |
//! | `t`    | `t` type 0x00 mode(1) created(12) seq(8)    | empty: by-type-time entries|
//! | `n`    | `n` mode(1) type                            | count(8) of that stream    |
//! | `f`    | `f`                                         | first kept seq(8)          |
//! | `a`    | `a`                                         | last applied seq(8)        |
//! | `v`    | `v`                                         | layout version(8)          |
//! | `b`    | `b` level(1) stream-prefix bucket(8)        | count(8): see `buckets.rs` |
//!
//! Ids are not in this tree: the id table (`ids.rs`) holds them, one namespace per mode.
//!
//! Types never contain 0x00 (validated), so one type's prefix never covers another's.

use prost_types::Timestamp;

use crate::event::time;

/// First byte of the id entries of index layouts before 6 (the id table holds ids now).
pub const ID: u8 = b'i';
pub const COUNT: u8 = b'n';
/// The single key holding the first kept sequence (absent: 1).
pub const FIRST_KEY: [u8; 1] = [b'f'];
/// The single key holding the last sequence applied to the index (absent: none).
pub const APPLIED_KEY: [u8; 1] = [b'a'];
/// The single key holding the index's layout version.
pub const VERSION_KEY: [u8; 1] = [b'v'];
/// First byte of the by-time entries.
pub const CREATED: u8 = b'c';
const TYPE: u8 = b't';

/// Bytes after an index prefix: created(12) seq(8).
pub const SUFFIX_LEN: usize = time::KEY_LEN + 8;

pub fn created_prefix(livemode: bool) -> Vec<u8> {
    vec![CREATED, livemode as u8]
}

pub fn type_prefix(event_type: &str, livemode: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + event_type.len());
    k.push(TYPE);
    k.extend_from_slice(event_type.as_bytes());
    k.push(0);
    k.push(livemode as u8);
    k
}

pub fn count(livemode: bool, event_type: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + event_type.len());
    k.push(COUNT);
    k.push(livemode as u8);
    k.extend_from_slice(event_type.as_bytes());
    k
}

/// Parses a count key back into (livemode, type).
pub fn parse_count(key: &[u8]) -> Option<(bool, String)> {
    let [COUNT, mode, rest @ ..] = key else {
        return None;
    };
    Some((*mode == 1, String::from_utf8(rest.to_vec()).ok()?))
}

/// An index entry key: prefix, then created, then sequence.
pub fn entry(prefix: &[u8], created: &Timestamp, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + SUFFIX_LEN);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&time::to_key(created));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An entry as the entries structure stores it: its key, then its value.
pub fn entry_with_value(prefix: &[u8], created: &Timestamp, seq: u64, value: &[u8]) -> Box<[u8]> {
    let mut k = entry(prefix, created, seq);
    k.extend_from_slice(value);
    k.into_boxed_slice()
}

/// The length of the key at the start of a stored entry (key then value): by-time keys have
/// a fixed length, by-type keys end 22 bytes after the 0x00 that closes their type.
pub fn entry_key_len(entry: &[u8]) -> Option<usize> {
    let len = match *entry.first()? {
        CREATED => 2 + SUFFIX_LEN,
        TYPE => 1 + entry.get(1..)?.iter().position(|b| *b == 0)? + 2 + SUFFIX_LEN,
        _ => return None,
    };
    (len <= entry.len()).then_some(len)
}

/// The lowest possible entry key of `prefix` at time `t`.
pub fn entry_floor(prefix: &[u8], t: &Timestamp) -> Vec<u8> {
    entry(prefix, t, 0)
}

/// The highest possible entry key of `prefix` at time `t`.
pub fn entry_ceiling(prefix: &[u8], t: &Timestamp) -> Vec<u8> {
    entry(prefix, t, u64::MAX)
}

/// The `created` of an index entry key (the 12 bytes before its sequence).
pub fn created_of(key: &[u8]) -> Option<Timestamp> {
    let end = key.len().checked_sub(8)?;
    let at = end.checked_sub(time::KEY_LEN)?;
    time::from_key(key.get(at..end)?)
}

/// The last 8 bytes of an index entry key, as a sequence.
pub fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Decodes a stored big-endian u64 value.
pub fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}
