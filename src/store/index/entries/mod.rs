//! The index's by-time and by-type-time entries (`keys.rs`: each entry is its key followed by
//! its value), in a structure of eventsd's own beside sled: a memtable in memory and sorted
//! runs on disk (`DATA_DIR/index/entries/`), merged when read.
//!
//! - **Memtable**: the index thread inserts each applied batch into a sorted in-memory set.
//!   At [`Config::freeze_entries`] entries it is frozen (still read) and a new one takes the
//!   writes; the flusher thread (`eventsd-entries`) writes each frozen memtable as a run and
//!   then swaps it for the run in one step, so a reader sees every entry exactly once.
//! - **Runs** (`run.rs`): immutable sorted files read with `pread`. When [`FANOUT`] runs of
//!   the same size class are newest, the merger thread (`eventsd-merge`) merges them into
//!   one, so a store of N entries has O(log N) runs and each entry is rewritten O(log N)
//!   times; it also deletes the runs retention has passed entirely.
//! - **Manifest** (`DATA_DIR/index/entries/manifest`): the runs in use and `through`, the
//!   sequence every entry up to which is in them. Written under a temporary name, synced and
//!   renamed after the run files it names are synced; files it does not name are deleted at
//!   open. A crash takes the memtables, never a run: the open reports `through`, and the
//!   caller inserts the entries of the log's records after it again.
//! - **Retention**: entries below the first kept sequence ([`Entries::set_floor`]) are dead:
//!   readers skip them, and they are dropped whenever a run is written.
//!
//! Readers take a [`Snapshot`] (the memtables and runs of one moment) and read ranges of it,
//! merged in either direction, between a floor and a ceiling of sequences. Memory is the
//! memtables (bounded by `freeze_entries` each) and one fence per 8 KiB block of the runs.

mod run;

use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::store::index::keys;
use crate::store::Direction;
use run::Run;

/// The `created` keys (12 bytes) of a stream's oldest and newest entries, or bounds on them.
pub type Span = (Vec<u8>, Vec<u8>);

/// The entries' folder inside the index folder.
pub const DIR: &str = "entries";
const MANIFEST: &str = "manifest";
const MANIFEST_MAGIC: &[u8; 4] = b"EMF1";
/// Runs of one size class merged at once.
pub const FANOUT: usize = 4;
/// Entries copied out of a memtable per lock taken while reading it: the first chunk is
/// small (many reads want one entry), each next one four times larger, up to the last.
const CHUNKS: [usize; 4] = [4, 16, 64, 256];
/// How often the flusher retries a failed run write, and the merger looks for dead runs.
const RETRY: Duration = Duration::from_secs(1);

/// Sizes of the structure.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A memtable is frozen (and written as a run) at this many entries.
    pub freeze_entries: usize,
    /// Bytes of run blocks kept decoded in memory (the block cache).
    pub cache_bytes: u64,
}

/// The block cache's share of `--cache-bytes` (a quarter).
pub const SHARE_OF_CACHE: u64 = 4;

impl Config {
    /// The sizes for a store whose caches share `cache_bytes` (`--cache-bytes`).
    pub fn with_cache(cache_bytes: u64) -> Self {
        Config { cache_bytes: cache_bytes / SHARE_OF_CACHE, ..Config::default() }
    }
}

impl Default for Config {
    fn default() -> Self {
        // ~60 bytes each in memory: ~8 MiB per memtable.
        Config { freeze_entries: 131_072, cache_bytes: 16 << 20 }
    }
}

/// Decoded run blocks, direct-mapped by (run, block): a hit costs a lock and a hash, a miss
/// a `pread` and a checksum. Newest pages read the same last blocks of every run again and
/// again; the cache keeps them.
struct BlockCache {
    slots: Vec<Mutex<Option<Cached>>>,
}

/// A cached block: its run's number, its index in the run, the block.
type Cached = (u64, usize, Arc<run::Block>);

impl BlockCache {
    fn new(bytes: u64) -> Self {
        let n = (bytes / run::BLOCK_BYTES as u64).max(1) as usize;
        BlockCache { slots: (0..n).map(|_| Mutex::new(None)).collect() }
    }

    /// Block `i` of `run`, from the cache or read.
    fn get(&self, run: &Run, i: usize) -> Result<Arc<run::Block>, Error> {
        let hash =
            run.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xC2B2_AE35);
        let slot = &self.slots[(hash % self.slots.len() as u64) as usize];
        let lock = || slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((id, at, block)) = lock().as_ref() {
            if *id == run.id && *at == i {
                return Ok(block.clone());
            }
        }
        let block = Arc::new(run.block(i)?);
        *lock() = Some((run.id, i, block.clone()));
        Ok(block)
    }
}

/// A sorted in-memory set of entries, and the last sequence inserted into it.
struct Memtable {
    set: RwLock<BTreeSet<Box<[u8]>>>,
    through: AtomicU64,
}

impl Memtable {
    fn new(through: u64) -> Arc<Self> {
        Arc::new(Memtable { set: RwLock::new(BTreeSet::new()), through: AtomicU64::new(through) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<Box<[u8]>>> {
        self.set.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What readers see at one moment: the memtable taking writes, the frozen ones not yet
/// written (oldest first) and the runs (oldest first).
struct Version {
    active: Arc<Memtable>,
    frozen: Vec<Arc<Memtable>>,
    runs: Vec<Arc<Run>>,
}

struct Inner {
    dir: PathBuf,
    config: Config,
    cache: Arc<BlockCache>,
    /// Per stream prefix, bounds on its entries' `created` (12-byte keys): at or below the
    /// oldest and at or above the newest (retention may leave them wider than exact). Filled
    /// on first use, widened by every insert.
    spans: Mutex<HashMap<Vec<u8>, Option<Span>>>,
    version: RwLock<Arc<Version>>,
    /// The first kept sequence: entries below it are dead.
    floor: AtomicU64,
    /// The last sequence inserted (the manifest's `through` right after the open).
    inserted: AtomicU64,
    /// The next run file's number.
    next_run: AtomicU64,
    /// The manifest's `through`: every entry up to it is in the runs.
    durable: AtomicU64,
    /// Held while the runs in use change: the manifest and the version move together.
    manifest: Mutex<()>,
    /// Set by a close: a merge under way gives up.
    stop: AtomicBool,
    /// Held for a whole merge, so two never pick the same runs.
    merging: Mutex<()>,
    /// Held while frozen memtables are written, so none is written twice.
    flushing: Mutex<()>,
}

/// Work for the flusher thread.
enum Work {
    /// A memtable was frozen.
    Flush,
    /// Write every memtable and stop.
    Close(SyncSender<Result<(), Error>>),
}

/// The flusher's channel: dropping the last handle stops it (and with it the merger).
struct Worker(Mutex<Option<SyncSender<Work>>>);

/// The entries of one index: cheap to clone, shared by the index thread and readers.
#[derive(Clone)]
pub struct Entries {
    inner: Arc<Inner>,
    worker: Arc<Worker>,
}

impl Entries {
    /// Opens (or creates) the entries in `index_dir`; returns them and `through`: every entry
    /// of a sequence up to it is held, those after it must be inserted again from the log.
    pub fn open(index_dir: &Path, config: Config, floor: u64) -> Result<(Entries, u64), Error> {
        let dir = index_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let (through, ids) = read_manifest(&dir)?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in &ids {
            let path = run_path(&dir, *id);
            let run = Run::open(&path, *id).map_err(|err| match err {
                Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    Error::Corrupt(format!(
                        "index run {} is missing; rebuild the index with `eventsd reindex`",
                        path.display()
                    ))
                }
                other => other,
            })?;
            runs.push(Arc::new(run));
        }
        // Runs a crash left unnamed (written, or merged, but not yet in the manifest).
        let mut next_run = ids.iter().max().map_or(1, |m| m + 1);
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if let Some(id) = run_id(&entry.path()) {
                next_run = next_run.max(id + 1);
                if ids.contains(&id) {
                    continue;
                }
            } else if entry.file_name() == MANIFEST {
                continue;
            }
            std::fs::remove_file(entry.path())?;
        }
        let version = Version { active: Memtable::new(through), frozen: Vec::new(), runs };
        let inner = Arc::new(Inner {
            dir,
            config,
            cache: Arc::new(BlockCache::new(config.cache_bytes)),
            spans: Mutex::new(HashMap::new()),
            version: RwLock::new(Arc::new(version)),
            floor: AtomicU64::new(floor),
            inserted: AtomicU64::new(through),
            next_run: AtomicU64::new(next_run),
            durable: AtomicU64::new(through),
            manifest: Mutex::new(()),
            stop: AtomicBool::new(false),
            merging: Mutex::new(()),
            flushing: Mutex::new(()),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let worker_inner = inner.clone();
        std::thread::Builder::new()
            .name("eventsd-entries".into())
            .spawn(move || flush(worker_inner, rx))?;
        Ok((Entries { inner, worker: Arc::new(Worker(Mutex::new(Some(tx)))) }, through))
    }

    /// The last sequence whose entries are held (inserted, or in the runs at open).
    pub fn through(&self) -> u64 {
        self.inner.inserted.load(Ordering::Acquire)
    }

    /// Inserts the entries of the records through `through` (each `keys::entry` bytes followed
    /// by its value).
    pub fn insert(&self, batch: Vec<Box<[u8]>>, through: u64) {
        let version = self.inner.current();
        // Under the spans lock, so a span being read meanwhile (`Entries::span`) sees the
        // batch's entries and their widening together.
        let mut spans = self.inner.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in &batch {
            if let Some((prefix, created)) = split_entry(e) {
                widen(&mut spans, prefix, created);
            }
        }
        let len = {
            let mut set =
                version.active.set.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            set.extend(batch);
            set.len()
        };
        drop(spans);
        version.active.through.fetch_max(through, Ordering::AcqRel);
        self.inner.inserted.fetch_max(through, Ordering::AcqRel);
        if len >= self.inner.config.freeze_entries && self.inner.freeze() {
            self.send(Work::Flush);
        }
    }

    /// Moves the first kept sequence: entries below it are skipped from now on.
    pub fn set_floor(&self, first: u64) {
        self.inner.floor.fetch_max(first, Ordering::AcqRel);
    }

    /// What readers read: the memtables and runs of this moment.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.inner.current(), self.inner.cache.clone())
    }

    /// Bounds on the `created` keys of the stream `prefix` (`None`: it has no entries): at or
    /// below its oldest kept entry's and at or above its newest's. `read` finds them the first
    /// time (under the lock, so an insert meanwhile widens what it found); after that they are
    /// kept and widened by inserts, and cost no read.
    pub fn span(
        &self,
        prefix: &[u8],
        read: impl FnOnce() -> Result<Option<Span>, Error>,
    ) -> Result<Option<Span>, Error> {
        let mut spans = self.inner.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(span) = spans.get(prefix) {
            return Ok(span.clone());
        }
        let span = read()?;
        spans.insert(prefix.to_vec(), span.clone());
        Ok(span)
    }

    /// Writes every memtable as a run and stops the worker (the entries stay readable).
    pub fn close(&self) -> Result<(), Error> {
        let tx = self.worker.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(tx) = tx else { return Ok(()) };
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if tx.send(Work::Close(done)).is_err() {
            return Err(Error::Internal("the index entries' worker has stopped".into()));
        }
        wait.recv().unwrap_or_else(|_| {
            Err(Error::Internal("the index entries' worker has stopped".into()))
        })
    }

    fn send(&self, work: Work) {
        let tx = self.worker.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = tx.as_ref() {
            // A full queue already holds a flush for the worker.
            let _ = tx.try_send(work);
        }
    }
}

impl Inner {
    fn current(&self) -> Arc<Version> {
        self.version.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn swap(&self, change: impl FnOnce(&Version) -> Version) {
        let mut slot = self.version.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Arc::new(change(&slot));
    }

    /// Freezes the active memtable if it holds anything; true if it did.
    fn freeze(&self) -> bool {
        let mut froze = false;
        self.swap(|v| {
            let through = v.active.through.load(Ordering::Acquire);
            if v.active.read().is_empty() {
                return Version {
                    active: v.active.clone(),
                    frozen: v.frozen.clone(),
                    runs: v.runs.clone(),
                };
            }
            froze = true;
            let mut frozen = v.frozen.clone();
            frozen.push(v.active.clone());
            Version { active: Memtable::new(through), frozen, runs: v.runs.clone() }
        });
        froze
    }

    /// Writes every frozen memtable as a run, oldest first (the flusher's work: memtables
    /// never wait behind a merge).
    fn write_frozen(&self) -> Result<(), Error> {
        let _flushing = self.flushing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(mem) = self.current().frozen.first().cloned() {
            let through = mem.through.load(Ordering::Acquire);
            let floor = self.floor.load(Ordering::Acquire);
            let run = {
                let set = mem.read();
                let live = set.iter().filter(|e| seq_of(e) >= floor).map(Ok);
                self.new_run(live, through)?
            };
            self.commit(Some((&mem, through)), |runs| runs.extend(run))?;
        }
        Ok(())
    }

    /// Changes the runs in use: `change` edits the current list, which is recorded in the
    /// manifest and then swapped in for readers, with the manifest lock held throughout (the
    /// flusher and the merger each change the list). A flush passes the memtable it wrote and
    /// the sequence it holds entries through: it leaves the frozen list, and the manifest's
    /// `through` moves.
    fn commit(
        &self,
        flushed: Option<(&Arc<Memtable>, u64)>,
        change: impl FnOnce(&mut Vec<Arc<Run>>),
    ) -> Result<(), Error> {
        let _manifest = self.manifest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut runs = self.current().runs.clone();
        change(&mut runs);
        let through = flushed.map_or(self.durable.load(Ordering::Acquire), |(_, t)| t);
        self.write_manifest(&runs, through)?;
        self.swap(|v| Version {
            active: v.active.clone(),
            frozen: match flushed {
                Some((mem, _)) => {
                    v.frozen.iter().filter(|m| !Arc::ptr_eq(m, mem)).cloned().collect()
                }
                None => v.frozen.clone(),
            },
            runs,
        });
        Ok(())
    }

    /// Deletes the runs whose every entry lies below the first kept sequence (retention moved
    /// past them); true if it deleted any.
    fn drop_dead(&self) -> Result<bool, Error> {
        let floor = self.floor.load(Ordering::Acquire);
        let _merging = self.merging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dead: Vec<Arc<Run>> =
            self.current().runs.iter().filter(|r| r.last < floor).cloned().collect();
        if dead.is_empty() {
            return Ok(false);
        }
        self.commit(None, |runs| runs.retain(|r| r.last >= floor))?;
        for run in dead {
            std::fs::remove_file(run.path())?;
        }
        Ok(true)
    }

    /// Merges the newest [`FANOUT`] runs if they are of one size class (the merger's work);
    /// true if it merged. Runs the flusher adds meanwhile stay as they are. Gives up, leaving
    /// the runs as they were, once `stop` is set.
    fn merge_once(&self, stop: &AtomicBool) -> Result<bool, Error> {
        let _merging = self.merging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let runs = self.current().runs.clone();
        let n = runs.len();
        if n < FANOUT || class(&runs[n - FANOUT], self.config) > class(&runs[n - 1], self.config) {
            return Ok(false);
        }
        let inputs = &runs[n - FANOUT..];
        let through = inputs[FANOUT - 1].through;
        let floor = self.floor.load(Ordering::Acquire);
        let snapshot = Snapshot(
            Arc::new(Version {
                active: Memtable::new(0),
                frozen: Vec::new(),
                runs: inputs.to_vec(),
            }),
            // A merge reads every block once: it keeps none.
            Arc::new(BlockCache::new(0)),
        );
        let all = snapshot
            .range(
                (Bound::Unbounded, Bound::Unbounded),
                Direction::Chronological,
                (floor, u64::MAX),
            )
            .take_while(|_| !stop.load(Ordering::Acquire));
        let merged = self.new_run(all, through)?;
        if stop.load(Ordering::Acquire) {
            // Cut short: the runs stay as they were (the open deletes an unnamed run anyway).
            if let Some(merged) = merged {
                std::fs::remove_file(merged.path())?;
            }
            return Ok(false);
        }
        self.commit(None, |runs| {
            // The merged run takes the inputs' place; runs flushed meanwhile follow it.
            let at = runs.iter().position(|r| Arc::ptr_eq(r, &inputs[0]));
            runs.retain(|r| !inputs.iter().any(|i| Arc::ptr_eq(i, r)));
            if let (Some(at), Some(merged)) = (at, merged) {
                runs.insert(at, merged);
            }
        })?;
        for old in inputs {
            std::fs::remove_file(old.path())?;
        }
        Ok(true)
    }

    /// Writes a run of `entries` (ascending) and opens it; `None` if there were none.
    fn new_run<E: AsRef<[u8]>>(
        &self,
        entries: impl Iterator<Item = Result<E, Error>>,
        through: u64,
    ) -> Result<Option<Arc<Run>>, Error> {
        let id = self.next_run.fetch_add(1, Ordering::AcqRel);
        let path = run_path(&self.dir, id);
        let tmp = path.with_extension("tmp");
        let written = run::write(&tmp, entries, through, seq_of);
        let count = match written {
            Ok(count) => count,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        if count == 0 {
            std::fs::remove_file(&tmp)?;
            return Ok(None);
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        Ok(Some(Arc::new(Run::open(&path, id)?)))
    }

    /// Durably records `runs` and `through` as the entries on disk.
    fn write_manifest(&self, runs: &[Arc<Run>], through: u64) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(20 + 8 * runs.len());
        buf.extend_from_slice(MANIFEST_MAGIC);
        buf.extend_from_slice(&through.to_le_bytes());
        buf.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for run in runs {
            buf.extend_from_slice(&run.id.to_le_bytes());
        }
        buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
        let tmp = self.dir.join("manifest.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&buf)?;
        file.sync_data()?;
        std::fs::rename(&tmp, self.dir.join(MANIFEST))?;
        sync_dir(&self.dir)?;
        self.durable.store(through, Ordering::Release);
        Ok(())
    }
}

/// The size class of a run: 0 below `FANOUT` memtables, one more per `FANOUT`-fold.
fn class(run: &Run, config: Config) -> u32 {
    let mut class = 0;
    let mut cap = (config.freeze_entries as u64).max(1) * FANOUT as u64;
    while run.entries >= cap {
        class += 1;
        cap = cap.saturating_mul(FANOUT as u64);
    }
    class
}

/// The flusher: writes frozen memtables as runs until closed, and wakes the merger after
/// each; a close stops the merger first (a merge under way gives up) and waits for it, so no
/// file changes after `close` returns.
fn flush(inner: Arc<Inner>, jobs: Receiver<Work>) {
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    let merger_inner = inner.clone();
    let merger = std::thread::Builder::new()
        .name("eventsd-merge".into())
        .spawn(move || merge(merger_inner, woken));
    let merger = match merger {
        Ok(handle) => Some(handle),
        Err(err) => {
            tracing::error!(error = %err, "cannot start the index runs' merger (runs are not merged)");
            None
        }
    };
    loop {
        let job = jobs.recv_timeout(RETRY);
        let result = match job {
            Ok(Work::Flush) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if inner.current().frozen.is_empty() {
                    continue;
                }
                let written = inner.write_frozen();
                let _ = wake.try_send(());
                written
            }
            Ok(Work::Close(done)) => {
                inner.stop.store(true, Ordering::Release);
                drop(wake);
                if let Some(merger) = merger {
                    let _ = merger.join();
                }
                inner.freeze();
                let _ = done.send(inner.write_frozen());
                return;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                inner.stop.store(true, Ordering::Release);
                return;
            }
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot write the index entries to disk (they stay in memory; retrying)");
        }
    }
}

/// The merger: merges runs whenever the flusher has added one, and deletes runs retention
/// has passed (looked for every [`RETRY`] too), until stopped.
fn merge(inner: Arc<Inner>, woken: Receiver<()>) {
    loop {
        match woken.recv_timeout(RETRY) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if let Err(err) = inner.drop_dead() {
            tracing::error!(error = %err, "cannot delete index runs below the first kept sequence (retrying)");
        }
        loop {
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
            match inner.merge_once(&inner.stop) {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => {
                    tracing::error!(error = %err, "cannot merge the index runs (they stay as they are; retrying)");
                    break;
                }
            }
        }
    }
}

fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.run"))
}

fn run_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    u64::from_str_radix(name.strip_suffix(".run")?, 16).ok()
}

/// Reads the manifest: `through` and the run numbers (none without a manifest).
fn read_manifest(dir: &Path) -> Result<(u64, Vec<u64>), Error> {
    let path = dir.join(MANIFEST);
    let buf = match std::fs::read(&path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(e.into()),
    };
    let damaged = || {
        Error::Corrupt(format!(
            "{} is damaged; rebuild the index with `eventsd reindex`",
            path.display()
        ))
    };
    if buf.len() < 20 || &buf[..4] != MANIFEST_MAGIC {
        return Err(damaged());
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(damaged());
    }
    let through = u64::from_le_bytes(body[4..12].try_into().map_err(|_| damaged())?);
    let n = u32::from_le_bytes(body[12..16].try_into().map_err(|_| damaged())?) as usize;
    if body.len() != 16 + 8 * n {
        return Err(damaged());
    }
    let ids = body[16..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok((through, ids))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Widens the known span of `prefix`'s stream, if it has one, to an entry created at
/// `created`.
fn widen(spans: &mut HashMap<Vec<u8>, Option<Span>>, prefix: &[u8], created: [u8; 12]) {
    let Some(span) = spans.get_mut(prefix) else { return };
    match span {
        Some((lo, hi)) => {
            if created[..] < lo[..] {
                *lo = created.to_vec();
            }
            if created[..] > hi[..] {
                *hi = created.to_vec();
            }
        }
        None => *span = Some((created.to_vec(), created.to_vec())),
    }
}

/// An entry's stream prefix and `created` key.
fn split_entry(entry: &[u8]) -> Option<(&[u8], [u8; 12])> {
    let len = keys::entry_key_len(entry)?;
    let at = len.checked_sub(keys::SUFFIX_LEN)?;
    let created = entry.get(at..at + 12)?.try_into().ok()?;
    Some((&entry[..at], created))
}

/// The sequence of an entry (the last 8 bytes of its key); 0 if it is not an entry.
pub fn seq_of(entry: &[u8]) -> u64 {
    keys::entry_key_len(entry).and_then(|len| entry.get(..len)).and_then(keys::seq_of).unwrap_or(0)
}

/// A lower and an upper bound on keys.
type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The memtables and runs of one moment.
#[derive(Clone)]
pub struct Snapshot(Arc<Version>, Arc<BlockCache>);

/// Entry bounds in byte order. A key bound `k` of a whole entry key (`keys::entry`) covers
/// the entry whose key is `k` whatever its value: no key is a prefix of another, values are
/// UTF-8 (never 0xFF), so `k ++ [0xFF]` lies after every entry with key `k` and before every
/// greater key. Partial keys (a stream prefix) may be given as an inclusive lower bound.
fn byte_bounds(lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let after = |mut k: Vec<u8>| {
        k.push(0xFF);
        k
    };
    let lo = match lo {
        Bound::Excluded(k) => Bound::Excluded(after(k)),
        other => other,
    };
    let hi = match hi {
        Bound::Included(k) => Bound::Excluded(after(k)),
        other => other,
    };
    (lo, hi)
}

fn above_lo(lo: &Bound<Vec<u8>>, e: &[u8]) -> bool {
    match lo {
        Bound::Included(k) => e >= &k[..],
        Bound::Excluded(k) => e > &k[..],
        Bound::Unbounded => true,
    }
}

fn below_hi(hi: &Bound<Vec<u8>>, e: &[u8]) -> bool {
    match hi {
        Bound::Included(k) => e <= &k[..],
        Bound::Excluded(k) => e < &k[..],
        Bound::Unbounded => true,
    }
}

impl Snapshot {
    /// The entries whose keys lie within `bounds` (key bounds, see [`byte_bounds`]) and whose
    /// sequences lie within `seqs` (inclusive), in `direction`.
    pub fn range(
        &self,
        (lo, hi): (Bound<Vec<u8>>, Bound<Vec<u8>>),
        direction: Direction,
        seqs: (u64, u64),
    ) -> Range {
        let (lo, hi) = byte_bounds(lo, hi);
        let bounds = Arc::new((lo, hi));
        let mut sources: Vec<Source> = Vec::new();
        let v = &self.0;
        for mem in std::iter::once(&v.active).chain(v.frozen.iter()) {
            sources.push(Source::Mem(MemCursor::new(mem.clone(), &bounds, direction)));
        }
        for run in &v.runs {
            let cursor = RunCursor::new(run.clone(), self.1.clone(), bounds.clone(), direction);
            sources.push(Source::Run(cursor));
        }
        Range {
            sources,
            heads: BinaryHeap::new(),
            started: false,
            descending: direction == Direction::ReverseChronological,
            seqs,
            failed: false,
        }
    }
}

/// One source's next entry in a merge.
struct Head {
    entry: Bytes,
    source: usize,
    descending: bool,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let order = (&self.entry, self.source).cmp(&(&other.entry, other.source));
        if self.descending {
            order
        } else {
            order.reverse()
        }
    }
}

/// A merged range over a snapshot: entries in order, each once.
pub struct Range {
    sources: Vec<Source>,
    heads: BinaryHeap<Head>,
    started: bool,
    descending: bool,
    seqs: (u64, u64),
    failed: bool,
}

impl Range {
    fn refill(&mut self, i: usize) -> Result<(), Error> {
        while let Some(entry) = self.sources[i].next()? {
            let seq = seq_of(&entry);
            if (self.seqs.0..=self.seqs.1).contains(&seq) {
                self.heads.push(Head { entry, source: i, descending: self.descending });
                break;
            }
        }
        Ok(())
    }
}

impl Iterator for Range {
    type Item = Result<Bytes, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                if let Err(err) = self.refill(i) {
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
        let head = self.heads.pop()?;
        if let Err(err) = self.refill(head.source) {
            self.failed = true;
            return Some(Err(err));
        }
        Some(Ok(head.entry))
    }
}

enum Source {
    Mem(MemCursor),
    Run(RunCursor),
}

impl Source {
    fn next(&mut self) -> Result<Option<Bytes>, Error> {
        match self {
            Source::Mem(m) => Ok(m.next()),
            Source::Run(r) => r.next(),
        }
    }
}

/// Reads a memtable in chunks, a read lock per chunk, resuming after the last entry read.
struct MemCursor {
    mem: Arc<Memtable>,
    /// Where the next chunk starts (lower bound ascending, upper bound descending).
    from: Bound<Vec<u8>>,
    /// Where the range ends, on the other side.
    to: Bound<Vec<u8>>,
    descending: bool,
    buf: VecDeque<Bytes>,
    /// Chunks read so far.
    chunks: usize,
    done: bool,
}

impl MemCursor {
    fn new(mem: Arc<Memtable>, bounds: &KeyBounds, direction: Direction) -> Self {
        let descending = direction == Direction::ReverseChronological;
        let (from, to) =
            if descending { (bounds.1.clone(), bounds.0.clone()) } else { bounds.clone() };
        MemCursor { mem, from, to, descending, buf: VecDeque::new(), chunks: 0, done: false }
    }

    fn next(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() && !self.done {
            self.fill();
        }
        self.buf.pop_front()
    }

    fn fill(&mut self) {
        let set = self.mem.read();
        let from = match &self.from {
            Bound::Included(k) => Bound::Included(&k[..]),
            Bound::Excluded(k) => Bound::Excluded(&k[..]),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range: Box<dyn Iterator<Item = &Box<[u8]>>> = if self.descending {
            Box::new(set.range::<[u8], _>((Bound::Unbounded, from)).rev())
        } else {
            Box::new(set.range::<[u8], _>((from, Bound::Unbounded)))
        };
        let chunk = CHUNKS[self.chunks.min(CHUNKS.len() - 1)];
        self.chunks += 1;
        let mut last = None;
        for e in range.take(chunk) {
            let inside =
                if self.descending { above_lo(&self.to, e) } else { below_hi(&self.to, e) };
            if !inside {
                self.done = true;
                break;
            }
            self.buf.push_back(Bytes::copy_from_slice(e));
            last = Some(e);
        }
        match last {
            Some(e) if !self.done => self.from = Bound::Excluded(e.to_vec()),
            _ => self.done = true,
        }
        if self.buf.len() < chunk {
            self.done = true;
        }
    }
}

/// Reads a run block by block in one direction.
struct RunCursor {
    run: Arc<Run>,
    cache: Arc<BlockCache>,
    bounds: Arc<KeyBounds>,
    descending: bool,
    /// The block being read and the position of the next entry in it.
    block: Option<(usize, Arc<run::Block>, usize)>,
    started: bool,
    done: bool,
}

impl RunCursor {
    fn new(
        run: Arc<Run>,
        cache: Arc<BlockCache>,
        bounds: Arc<KeyBounds>,
        direction: Direction,
    ) -> Self {
        let descending = direction == Direction::ReverseChronological;
        RunCursor { run, cache, bounds, descending, block: None, started: false, done: false }
    }

    fn block(&self, i: usize) -> Result<Arc<run::Block>, Error> {
        self.cache.get(&self.run, i)
    }

    /// Loads the first block to read and positions in it.
    fn start(&mut self) -> Result<(), Error> {
        self.started = true;
        if self.run.blocks() == 0 {
            self.done = true;
            return Ok(());
        }
        let (lo, hi) = &*self.bounds;
        if self.descending {
            let i = match hi {
                Bound::Unbounded => self.run.blocks() - 1,
                Bound::Included(k) | Bound::Excluded(k) => self.run.block_at_or_below(k),
            };
            let block = self.block(i)?;
            let n = (0..block.len()).take_while(|&j| below_hi(hi, block.peek(j))).count();
            // `pos` counts down: the next entry is `pos - 1`.
            self.block = Some((i, block, n));
        } else {
            let i = match lo {
                Bound::Unbounded => 0,
                Bound::Included(k) | Bound::Excluded(k) => self.run.block_at_or_below(k),
            };
            let block = self.block(i)?;
            let n = (0..block.len()).take_while(|&j| !above_lo(lo, block.peek(j))).count();
            self.block = Some((i, block, n));
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Bytes>, Error> {
        if !self.started {
            self.start()?;
        }
        loop {
            if self.done {
                return Ok(None);
            }
            let Some((i, block, pos)) = self.block.as_mut() else { return Ok(None) };
            let (lo, hi) = &*self.bounds;
            if self.descending {
                if *pos == 0 {
                    if *i == 0 {
                        self.done = true;
                        continue;
                    }
                    let prev = *i - 1;
                    let block = self.block(prev)?;
                    let n = block.len();
                    self.block = Some((prev, block, n));
                    continue;
                }
                *pos -= 1;
                let e = block.get(*pos);
                if !above_lo(lo, &e) {
                    self.done = true;
                    continue;
                }
                return Ok(Some(e));
            }
            if *pos >= block.len() {
                if *i + 1 >= self.run.blocks() {
                    self.done = true;
                    continue;
                }
                let next = *i + 1;
                let block = self.block(next)?;
                self.block = Some((next, block, 0));
                continue;
            }
            let e = block.get(*pos);
            *pos += 1;
            if !below_hi(hi, &e) {
                self.done = true;
                continue;
            }
            return Ok(Some(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    use crate::store::Lcg;

    /// Writes every frozen memtable, deletes dead runs and merges until no merge is due, on
    /// this thread.
    fn settle(entries: &Entries) {
        entries.inner.write_frozen().unwrap();
        entries.inner.drop_dead().unwrap();
        while entries.inner.merge_once(&AtomicBool::new(false)).unwrap() {}
    }

    /// Inserts `n` events from `start` in rounds; returns every entry inserted.
    fn fill(entries: &Entries, rng: &mut Lcg, start: u64, n: u64) -> Vec<Box<[u8]>> {
        let mut all = Vec::new();
        let mut seq = start;
        while seq < start + n {
            let mut batch = Vec::new();
            for _ in 0..(1 + rng.next(50)).min(start + n - seq) {
                let created = Timestamp {
                    seconds: 1_765_000_000 + rng.next(100) as i64,
                    nanos: rng.next(1_000) as i32,
                };
                let t = format!("t{}.x", rng.next(4));
                batch.extend(crate::store::index::entries_of((
                    seq,
                    rng.next(2) == 0,
                    &t,
                    &created,
                )));
                seq += 1;
            }
            all.extend(batch.iter().cloned());
            entries.insert(batch, seq - 1);
        }
        all
    }

    /// The entries a model holds within key bounds and sequences, in `direction`.
    fn expected(
        model: &[Box<[u8]>],
        (lo, hi): &(Bound<Vec<u8>>, Bound<Vec<u8>>),
        direction: Direction,
        (floor, ceiling): (u64, u64),
    ) -> Vec<Vec<u8>> {
        let key = |e: &[u8]| e[..keys::entry_key_len(e).unwrap()].to_vec();
        let mut out: Vec<Vec<u8>> = model
            .iter()
            .filter(|e| {
                let k = key(e);
                let above = match lo {
                    Bound::Included(b) => k >= *b,
                    Bound::Excluded(b) => k > *b,
                    Bound::Unbounded => true,
                };
                let below = match hi {
                    Bound::Included(b) => k <= *b,
                    Bound::Excluded(b) => k < *b,
                    Bound::Unbounded => true,
                };
                above && below && (floor..=ceiling).contains(&seq_of(e))
            })
            .map(|e| e.to_vec())
            .collect();
        out.sort();
        if direction == Direction::ReverseChronological {
            out.reverse();
        }
        out
    }

    fn random_bounds(rng: &mut Lcg, model: &[Box<[u8]>]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let pick = |rng: &mut Lcg| {
            let e = &model[rng.next(model.len() as u64) as usize];
            let k = e[..keys::entry_key_len(e).unwrap()].to_vec();
            match rng.next(4) {
                0 => Bound::Included(k),
                1 => Bound::Excluded(k),
                2 => Bound::Unbounded,
                _ => Bound::Included(vec![k[0], k[1]]),
            }
        };
        let (a, b) = (pick(rng), pick(rng));
        // Partial keys only as an inclusive lower bound.
        let b = match b {
            Bound::Included(k) if k.len() == 2 => Bound::Unbounded,
            other => other,
        };
        (a, b)
    }

    fn compare(entries: &Entries, model: &[Box<[u8]>], rng: &mut Lcg, floor: u64, rounds: usize) {
        let snapshot = entries.snapshot();
        for _ in 0..rounds {
            let bounds = random_bounds(rng, model);
            let direction = if rng.next(2) == 0 {
                Direction::Chronological
            } else {
                Direction::ReverseChronological
            };
            let ceiling = if rng.next(3) == 0 { rng.next(5_000) } else { u64::MAX };
            let found: Vec<Vec<u8>> = snapshot
                .range(bounds.clone(), direction, (floor, ceiling))
                .map(|e| e.unwrap().to_vec())
                .collect();
            assert_eq!(
                found,
                expected(model, &bounds, direction, (floor, ceiling)),
                "{bounds:?} {direction:?}"
            );
        }
    }

    #[test]
    fn ranges_over_memtables_and_merged_runs_match_a_model_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { freeze_entries: 200, cache_bytes: 64 << 10 };
        let (entries, through) = Entries::open(dir.path(), config, 1).unwrap();
        assert_eq!(through, 0);
        let mut rng = Lcg(3);
        let model = fill(&entries, &mut rng, 1, 4_000);
        // Some entries are in runs being written, some in memtables.
        compare(&entries, &model, &mut rng, 1, 100);
        settle(&entries);
        assert!(entries.inner.current().frozen.is_empty());
        let runs = entries.inner.current().runs.len();
        assert!((2..25).contains(&runs), "{runs} runs after merges");
        compare(&entries, &model, &mut rng, 1, 200);
        // A clean close writes the memtable; the reopen holds everything.
        entries.close().unwrap();
        drop(entries);
        let (entries, through) = Entries::open(dir.path(), config, 1).unwrap();
        assert_eq!(through, 4_000);
        compare(&entries, &model, &mut rng, 1, 200);
    }

    #[test]
    fn a_crash_keeps_the_runs_and_reports_how_far_they_go() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { freeze_entries: 500, cache_bytes: 64 << 10 };
        let (entries, _) = Entries::open(dir.path(), config, 1).unwrap();
        let mut rng = Lcg(5);
        let mut model = fill(&entries, &mut rng, 1, 3_000);
        settle(&entries);
        // A leftover temporary run and an unnamed run, as a crash leaves them.
        std::fs::write(dir.path().join(DIR).join("00000000000000ff.tmp"), b"torn").unwrap();
        std::fs::write(dir.path().join(DIR).join("00000000000000fe.run"), b"unnamed").unwrap();
        drop(entries);
        let (entries, through) = Entries::open(dir.path(), config, 1).unwrap();
        assert!(through > 0 && through < 3_000, "through {through}");
        model.retain(|e| seq_of(e) <= through);
        let names: Vec<String> = std::fs::read_dir(dir.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp") || n.starts_with("00000000000000fe")));
        compare(&entries, &model, &mut rng, 1, 200);
    }

    #[test]
    fn entries_below_the_floor_are_skipped_and_dropped_when_runs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { freeze_entries: 300, cache_bytes: 64 << 10 };
        let (entries, _) = Entries::open(dir.path(), config, 1).unwrap();
        let mut rng = Lcg(9);
        let model = fill(&entries, &mut rng, 1, 2_000);
        entries.set_floor(1_201);
        compare(&entries, &model, &mut rng, 1_201, 100);
        entries.close().unwrap();
        let on_disk: u64 = entries.inner.current().runs.iter().map(|r| r.entries).sum();
        let kept = model.iter().filter(|e| seq_of(e) >= 1_201).count() as u64;
        // Memtables frozen before the floor moved were written with every entry.
        assert!(on_disk >= kept && on_disk < model.len() as u64, "{on_disk} on disk, {kept} kept");
        compare(&entries, &model, &mut rng, 1_201, 100);
        // Retention passes every entry of the oldest runs: they are deleted, files and all.
        let files = |dir: &Path| std::fs::read_dir(dir.join(DIR)).unwrap().count();
        let (runs, before) = (entries.inner.current().runs.len(), files(dir.path()));
        entries.set_floor(1_801);
        entries.inner.drop_dead().unwrap();
        let left = entries.inner.current().runs.clone();
        assert!(
            left.len() < runs && left.iter().all(|r| r.last >= 1_801),
            "{runs} -> {}",
            left.len()
        );
        assert_eq!(files(dir.path()), before - (runs - left.len()));
        compare(&entries, &model, &mut rng, 1_801, 100);
        drop(entries);
        let (entries, _) = Entries::open(dir.path(), config, 1_801).unwrap();
        compare(&entries, &model, &mut rng, 1_801, 100);
    }

    #[test]
    fn a_damaged_block_is_an_error_naming_reindex() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { freeze_entries: 100_000, cache_bytes: 64 << 10 };
        let (entries, _) = Entries::open(dir.path(), config, 1).unwrap();
        let mut rng = Lcg(1);
        fill(&entries, &mut rng, 1, 2_000);
        entries.close().unwrap();
        let run = entries.inner.current().runs[0].path().to_path_buf();
        drop(entries);
        let mut bytes = std::fs::read(&run).unwrap();
        bytes[100] ^= 0x40;
        std::fs::write(&run, bytes).unwrap();
        let (entries, _) = Entries::open(dir.path(), config, 1).unwrap();
        let all = (Bound::Unbounded, Bound::Unbounded);
        let err = entries
            .snapshot()
            .range(all, Direction::Chronological, (1, u64::MAX))
            .find_map(Result::err)
            .expect("the damaged block is reported");
        assert!(err.to_string().contains("eventsd reindex"), "{err}");
    }
}
