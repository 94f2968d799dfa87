//! The id table: (mode, id) → sequence for every id that does not name its own sequence
//! (`index::names_itself`), as an open-addressing hash table in one file of its own
//! (`DATA_DIR/ids`), read with positioned reads. It takes page cache, not process memory, and
//! a lookup is one read of 64 bytes however many events the store holds, where a sled tree of
//! 10M ids outgrows its cache and costs a walk of uncached nodes per lookup.
//!
//! Layout: a 4 KiB header (magic, slot count, a random salt, the last sequence made durable
//! in the table), then `slots` slots of 16 bytes: (tag, sequence), little-endian, tag 0 for an
//! empty slot. The tag is the first 8 bytes of SHA-256(salt, mode, id); the salt is chosen
//! when the table is created, so no caller can choose ids that collide in it. A slot's place
//! is its tag modulo the slot count, probing forward.
//!
//! Promises:
//! - **A hint, checked**: a lookup returns every sequence whose tag matches, and the caller
//!   keeps only one whose event has exactly that id and mode (and is still kept). So a
//!   collision, an entry left by retention (entries are never removed one by one) or a torn
//!   slot after a power loss costs a read, never a wrong answer.
//! - **Nothing acknowledged is missed**: the index thread adds a round's ids after the round is
//!   durable in the log and before it drops them from the pending set readers check first.
//!   The header's `synced` sequence moves only after an `fdatasync` of the slots, and at open
//!   the ids of the log's records after it are added again (an id already there is not added
//!   twice), so a crash, even a power loss, leaves no id of the log unfound.
//! - **Bounded probes**: the table doubles once half its slots are used, keeping only the
//!   entries of kept events; the new file replaces the old one by an atomic rename after its
//!   own `fdatasync`, and readers move to it at once.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// The table's file inside the data folder.
pub const FILE: &str = "ids";
/// The file a doubled table is built in before it replaces [`FILE`].
const GROWING: &str = "ids.growing";
const MAGIC: &[u8; 8] = b"EVTDIDS1";
const HEADER: u64 = 4096;
const SLOT: u64 = 16;
/// Slots of a new table (1 MiB).
const INITIAL_SLOTS: u64 = 1 << 16;
/// Slots read per positioned read while probing.
const PROBE_READ: u64 = 4;
/// A new entry this many slots or more past its home slot makes the table double (at half
/// load, linear probing goes a few slots on average, and a run of 256 is vanishingly rare).
const LONG_PROBE: u64 = 256;
/// Slots per read or write when a doubling copies the table (1 MiB).
const WRITE_SLOTS: u64 = 1 << 16;

/// One open table file.
struct Table {
    file: File,
    slots: u64,
    salt: [u8; 16],
}

/// The id table, shared by the index thread (which writes it) and every reader.
pub struct IdTable {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    /// Slots in use (the index thread's count; the table doubles at half).
    used: std::sync::atomic::AtomicU64,
    /// The sequence through which the table is durable.
    synced: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for IdTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTable").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Table {
    fn tag(&self, livemode: bool, id: &str) -> u64 {
        let mut hash = Sha256::new();
        hash.update(self.salt);
        hash.update([u8::from(livemode)]);
        hash.update(id.as_bytes());
        let digest = hash.finalize();
        let tag = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
        tag.max(1)
    }

    /// Reads `n` slots from slot `at` (not past the end).
    fn read_slots(&self, at: u64, n: u64) -> Result<Vec<(u64, u64)>, Error> {
        let n = n.min(self.slots - at);
        let mut buf = vec![0u8; (n * SLOT) as usize];
        self.file.read_exact_at(&mut buf, HEADER + at * SLOT)?;
        Ok(buf
            .chunks_exact(SLOT as usize)
            .map(|s| {
                let tag = u64::from_le_bytes(s[..8].try_into().unwrap_or_default());
                let seq = u64::from_le_bytes(s[8..].try_into().unwrap_or_default());
                (tag, seq)
            })
            .collect())
    }

    /// Walks the chain that `tag` is in, from its home slot: `matching(seq)` for each slot
    /// holding `tag` (returning true stops the walk). Returns the first empty slot reached,
    /// or `None` when stopped.
    fn probe(&self, tag: u64, mut matching: impl FnMut(u64) -> bool) -> Result<Option<u64>, Error> {
        let mask = self.slots - 1;
        let mut at = tag & mask;
        let mut seen = 0;
        while seen < self.slots {
            for (slot_tag, seq) in self.read_slots(at, PROBE_READ)? {
                if slot_tag == 0 {
                    return Ok(Some(at));
                }
                if slot_tag == tag && matching(seq) {
                    return Ok(None);
                }
                at = (at + 1) & mask;
                seen += 1;
            }
        }
        Err(Error::Corrupt(
            "the id table has no empty slot; rebuild the index with `eventsd reindex`".into(),
        ))
    }

    /// Writes (tag, seq) into slot `at`.
    fn write_slot(&self, at: u64, tag: u64, seq: u64) -> Result<(), Error> {
        let mut slot = [0u8; SLOT as usize];
        slot[..8].copy_from_slice(&tag.to_le_bytes());
        slot[8..].copy_from_slice(&seq.to_le_bytes());
        self.file.write_all_at(&slot, HEADER + at * SLOT)?;
        Ok(())
    }

    /// Adds (tag, seq) unless the chain holds it already; returns how far from its home slot
    /// it went, or `None` if it was there.
    fn add(&self, tag: u64, seq: u64) -> Result<Option<u64>, Error> {
        match self.probe(tag, |s| s == seq)? {
            Some(empty) => {
                self.write_slot(empty, tag, seq)?;
                Ok(Some(empty.wrapping_sub(tag) & (self.slots - 1)))
            }
            None => Ok(None),
        }
    }

    /// Creates a table file of `slots` empty slots at `path` (replacing any).
    fn create(path: &Path, slots: u64, salt: [u8; 16]) -> Result<Table, Error> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(HEADER + slots * SLOT)?;
        let table = Table { file, slots, salt };
        table.file.write_all_at(&table.header(0, 0), 0)?;
        Ok(table)
    }

    /// Opens the table file at `path`: the table, its `synced` sequence and its slots in use.
    fn open(path: &Path) -> Result<(Table, u64, u64), Error> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut h = [0u8; 48];
        let corrupt = || Error::Corrupt(format!("the id table {} is damaged", path.display()));
        file.read_exact_at(&mut h, 0).map_err(|_| corrupt())?;
        let slots = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        if &h[..8] != MAGIC
            || !slots.is_power_of_two()
            || file.metadata()?.len() != HEADER + slots * SLOT
        {
            return Err(corrupt());
        }
        let salt: [u8; 16] = h[16..32].try_into().unwrap_or_default();
        let synced = u64::from_le_bytes(h[32..40].try_into().unwrap_or_default());
        let used = u64::from_le_bytes(h[40..48].try_into().unwrap_or_default());
        Ok((Table { file, slots, salt }, synced, used))
    }

    /// The header: magic, slot count, salt, the durable sequence and the slots in use (as of
    /// that sequence: entries added after it are not counted, which only delays a doubling).
    fn header(&self, synced: u64, used: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(48);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.slots.to_le_bytes());
        h.extend_from_slice(&self.salt);
        h.extend_from_slice(&synced.to_le_bytes());
        h.extend_from_slice(&used.to_le_bytes());
        h
    }
}

impl IdTable {
    /// Opens the table in `dir` (creating an empty one if there is none, or if the one there
    /// is damaged: it is derived from the log, and a `synced` of 0 makes the caller add every
    /// kept id again). Returns it with the sequence through which it is durable.
    pub fn open(dir: &Path) -> Result<(IdTable, u64), Error> {
        let path = dir.join(FILE);
        let _ = std::fs::remove_file(dir.join(GROWING));
        let (table, synced, used) = match Table::open(&path) {
            Ok(opened) => opened,
            Err(err) => {
                if path.exists() {
                    tracing::warn!(error = %err, "the id table cannot be read; rebuilding it from the log");
                }
                (Table::create(&path, INITIAL_SLOTS, salt()?)?, 0, 0)
            }
        };
        let ids = IdTable {
            path,
            table: RwLock::new(Arc::new(table)),
            used: std::sync::atomic::AtomicU64::new(used),
            synced: std::sync::atomic::AtomicU64::new(synced),
        };
        Ok((ids, synced))
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The sequences the table holds for this id in this mode: candidates, each to be checked
    /// against its event (see the module's promises).
    pub fn candidates(&self, livemode: bool, id: &str) -> Result<Vec<u64>, Error> {
        let table = self.current();
        let mut found = Vec::new();
        table.probe(table.tag(livemode, id), |seq| {
            found.push(seq);
            false
        })?;
        Ok(found)
    }

    /// Adds ids (index thread only). Doubles the table first if the new ids would fill more
    /// than half of it, keeping the entries at or after `first_kept`.
    pub fn add<'a>(
        &self,
        ids: impl ExactSizeIterator<Item = (bool, &'a str, u64)>,
        first_kept: u64,
    ) -> Result<(), Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut table = self.current();
        let wanted = self.used.load(Relaxed) + ids.len() as u64;
        if wanted * 2 > table.slots {
            self.grow(&table, wanted, first_kept)?;
            table = self.current();
        }
        let (mut added, mut longest) = (0, 0);
        for (livemode, id, seq) in ids {
            if let Some(distance) = table.add(table.tag(livemode, id), seq)? {
                added += 1;
                longest = longest.max(distance);
            }
        }
        let used = self.used.fetch_add(added, Relaxed) + added;
        // The count goes to the header with every batch (page cache; durable with the next
        // sync), so a restart after a kill does not undercount and put off the doubling.
        table.file.write_all_at(&table.header(self.synced(), used), 0)?;
        // A chain this long means the count fell behind the slots (after a power loss, say):
        // double now rather than let lookups slow down.
        if longest > LONG_PROBE {
            self.grow(&table, used, first_kept)?;
        }
        Ok(())
    }

    /// Makes every id added so far durable, then records `applied` as the sequence through
    /// which the table is complete (durable itself with the next sync).
    pub fn sync(&self, applied: u64) -> Result<(), Error> {
        let table = self.current();
        table.file.sync_data()?;
        let used = self.used.load(std::sync::atomic::Ordering::Relaxed);
        table.file.write_all_at(&table.header(applied, used), 0)?;
        self.synced.store(applied, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The sequence through which the table is durable (as far as this process knows).
    pub fn synced(&self) -> u64 {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces the table with one of twice the slots needed for `wanted` entries at half
    /// load, holding the old table's entries at or after `first_kept`. The kept entries are
    /// sorted by their new home slot and written front to back in large writes (an entry
    /// lands on the first free slot at or after its home, as a probe expects), so a doubling
    /// costs two sequential passes, not a write per entry; for that while it runs it holds the
    /// entries in memory (16 bytes each).
    fn grow(&self, old: &Table, wanted: u64, first_kept: u64) -> Result<(), Error> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let slots = (wanted * 2).next_power_of_two().max(old.slots * 2);
        let mask = slots - 1;
        let started = std::time::Instant::now();
        let mut entries = Vec::new();
        let mut at = 0;
        while at < old.slots {
            let chunk = old.read_slots(at, WRITE_SLOTS)?;
            at += chunk.len() as u64;
            entries.extend(chunk.into_iter().filter(|(tag, seq)| *tag != 0 && *seq >= first_kept));
        }
        entries.sort_unstable_by_key(|(tag, _)| tag & mask);
        let growing = dir.join(GROWING);
        let new = Table::create(&growing, slots, old.salt)?;
        let mut run: Vec<u8> = Vec::with_capacity((WRITE_SLOTS * SLOT) as usize);
        let mut run_start = 0;
        let mut next_free = 0;
        let mut wrapped = Vec::new();
        for &(tag, seq) in &entries {
            let at = (tag & mask).max(next_free);
            if at >= slots {
                wrapped.push((tag, seq));
                continue;
            }
            // One write per run of up to WRITE_SLOTS slots; the empty slots between entries
            // are written as the zeros they are.
            if !run.is_empty() && at - run_start >= WRITE_SLOTS {
                new.file.write_all_at(&run, HEADER + run_start * SLOT)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = at;
            }
            run.resize(((at - run_start) * SLOT) as usize, 0);
            run.extend_from_slice(&tag.to_le_bytes());
            run.extend_from_slice(&seq.to_le_bytes());
            next_free = at + 1;
        }
        if !run.is_empty() {
            new.file.write_all_at(&run, HEADER + run_start * SLOT)?;
        }
        for (tag, seq) in wrapped {
            new.add(tag, seq)?;
        }
        let kept = entries.len() as u64;
        drop(entries);
        // The old table's synced point holds for the new one: it has every entry the old one
        // had that is still kept.
        let synced = self.synced();
        new.file.write_all_at(&new.header(synced, kept), 0)?;
        new.file.sync_all()?;
        std::fs::rename(&growing, &self.path)?;
        File::open(dir)?.sync_all()?;
        *self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        self.used.store(kept, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(slots, kept, took = ?started.elapsed(), "id table doubled");
        Ok(())
    }
}

/// A new table's salt.
fn salt() -> Result<[u8; 16], Error> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| Error::Internal(format!("no randomness for the id table: {e}")))?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_after_growth_and_reopen_and_expired_entries_are_dropped_on_growth() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, synced) = IdTable::open(dir.path()).unwrap();
        assert_eq!(synced, 0);
        let names: Vec<String> = (0..100_000).map(|i| format!("evt_{i}")).collect();
        // Added in rounds, so the table doubles (1 MiB at first: 65,536 slots) along the way.
        for (round, chunk) in names.chunks(1_000).enumerate() {
            let base = round * 1_000;
            let batch = chunk.iter().enumerate().map(|(i, n)| {
                let i = base + i;
                (i % 3 == 0, n.as_str(), i as u64 + 1)
            });
            ids.add(batch, 1).unwrap();
        }
        for (i, n) in names.iter().enumerate() {
            let found = ids.candidates(i % 3 == 0, n).unwrap();
            assert!(found.contains(&(i as u64 + 1)), "{n}: {found:?}");
            assert!(ids.candidates(i % 3 != 0, n).unwrap().iter().all(|s| *s != i as u64 + 1));
        }
        // Adding the same id at the same sequence again changes nothing.
        ids.add([(true, names[0].as_str(), 1)].into_iter(), 1).unwrap();
        assert_eq!(ids.candidates(true, &names[0]).unwrap().iter().filter(|s| **s == 1).count(), 1);
        ids.sync(100_000).unwrap();
        drop(ids);

        let (ids, synced) = IdTable::open(dir.path()).unwrap();
        assert_eq!(synced, 100_000);
        assert!(ids.candidates(true, &names[99_999]).unwrap().contains(&100_000));
        // Growth keeps only the entries at or after the first kept sequence.
        let more: Vec<String> = (0..150_000).map(|i| format!("more_{i}")).collect();
        let batch = more.iter().enumerate().map(|(i, n)| (false, n.as_str(), 100_001 + i as u64));
        ids.add(batch, 50_001).unwrap();
        assert!(ids.candidates(false, &names[1]).unwrap().is_empty());
        assert!(ids.candidates(true, &names[60_000]).unwrap().contains(&60_001));
        assert!(ids.candidates(false, &more[149_999]).unwrap().contains(&250_000));
        let (_, synced) = IdTable::open(dir.path()).unwrap();
        assert_eq!(synced, 100_000, "the synced point survives growth");
    }

    #[test]
    fn a_damaged_table_is_replaced_by_an_empty_one_to_refill_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, _) = IdTable::open(dir.path()).unwrap();
        ids.add([(false, "a", 1)].into_iter(), 1).unwrap();
        ids.sync(1).unwrap();
        drop(ids);
        std::fs::write(dir.path().join(FILE), b"garbage").unwrap();
        let (ids, synced) = IdTable::open(dir.path()).unwrap();
        assert_eq!(synced, 0);
        assert!(ids.candidates(false, "a").unwrap().is_empty());
    }
}
