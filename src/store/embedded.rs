//! The embedded backend: one sled database in a local folder.
//!
//! Everything lives in one tree, `events` (layout in `keys.rs`), so a commit is one atomic
//! `apply_batch` followed by one flush:
//! - GetEvent reads `i{id}` then `e{seq}`: two point reads.
//! - ListEvents walks the by-time index `c{mode}` (no type filter) or one by-type-time index
//!   `t{type}\0{mode}` per matching type, merging the streams by (created, sequence), forward
//!   or backward; only the entries of the page (plus the offset) are visited.
//! - `total` is exact without a scan of the matching range: per-(mode, type) counters `n…`
//!   are written in the same batch as the events, so a stream's total is known, and the count
//!   of a range is whichever is cheaper of counting inside it or counting what lies outside
//!   it and subtracting (both walks run in lockstep and the first to finish answers). The
//!   default range (from 1970 to now) has nothing outside it, so its total costs nothing.
//! - SubscribeEvents reads `e{seq}` forward from a sequence.
//!
//! Reads are bounded by the durable point published by the committer after each flush, so
//! they never see an event a crash could still take away.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use prost::Message;
use prost_types::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;
use crate::event::{time, NewEvent};
use crate::metrics::Metrics;
use crate::proto::Event;
use crate::store::commit::{Command, Committer, Counts, DurableState};
use crate::store::durability::{read_ack, AckRecord, Durability, Syncer, ACK_FILE, BLOBS_MARKER};
use crate::store::recent::Recent;
use crate::store::retention::Retention;
use crate::store::{keys, list, Appended, EventStore, ListPage, ListQuery, StoredEvent};

/// How many commands may wait for the writer before publishers wait to enqueue.
const QUEUE_DEPTH: usize = 8_192;

/// Where and how to open the embedded store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data folder (created if missing).
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Which failures an acknowledged event survives.
    pub durability: Durability,
    /// Where commit and publish figures go.
    pub metrics: Metrics,
}

/// A cheap-to-clone handle on the embedded store.
#[derive(Clone)]
pub struct SledStore {
    /// The tree, replaced when the writer reopens the store after a storage error.
    tree: SharedTree,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<Arc<DurableState>>,
    durable: watch::Receiver<u64>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Set by the writer after a storage error or on close.
    read_only: Arc<AtomicBool>,
    metrics: Metrics,
    /// Recently committed events, for live subscribers.
    recent: Arc<Recent>,
}

impl SledStore {
    /// Removes events through `through` in bounded steps; returns the new first kept sequence.
    pub async fn trim(&self, through: u64) -> Result<u64, Error> {
        loop {
            let (done, answer) = oneshot::channel();
            self.commands
                .send(Command::Trim { through, done })
                .await
                .map_err(|_| Error::ShuttingDown)?;
            let first = answer.await.map_err(|_| Error::ShuttingDown)??;
            if first > through || first > *self.durable.borrow() {
                return Ok(first);
            }
        }
    }

    /// The last sequence that retention would remove now, if any: beyond `max_events`, or
    /// committed before `max_age` ago (looking at no more than `scan` events per call).
    pub fn expired_through(&self, policy: &Retention, scan: usize) -> Result<Option<u64>, Error> {
        let state = self.state.borrow().clone();
        let mut through = None;
        if let Some(max) = policy.max_events {
            let kept = (state.sequence + 1).saturating_sub(state.first);
            if kept > max {
                through = Some(state.sequence - max);
            }
        }
        if let Some(age) = policy.max_age {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
            let cutoff = time::from_chrono(cutoff);
            let range = keys::event(state.first)..=keys::event(state.sequence);
            for entry in self.tree.get()?.range(range).take(scan) {
                let (key, value) = entry?;
                let seq = keys::seq_of(&key).unwrap_or_default();
                let event = decode(seq, &value)?;
                let received = event.received.unwrap_or_default();
                if time::cmp(&received, &cutoff).is_ge() {
                    break;
                }
                through = Some(through.map_or(seq, |t: u64| t.max(seq)));
            }
        }
        Ok(through)
    }

    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(config: &StoreConfig) -> Result<Self, Error> {
        let tree = open_tree(config)?;
        let Loaded { first_seq, last_seq, counts } = load(&tree, &config.path)?;
        let syncer = Syncer::open(&config.path, config.durability)?;
        let (state_tx, state) = watch::channel(Arc::new(DurableState {
            sequence: last_seq,
            first: first_seq,
            counts: counts.clone(),
        }));
        let (durable_tx, durable) = watch::channel(last_seq);
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let read_only = Arc::new(AtomicBool::new(false));
        let tree = SharedTree::new(tree);
        let recent = Arc::new(Recent::default());
        let committer = Committer::new(
            tree.clone(),
            config.clone(),
            (first_seq, last_seq),
            counts,
            state_tx,
            durable_tx,
            read_only.clone(),
            syncer,
            config.metrics.clone(),
            recent.clone(),
        )?;
        let writer = std::thread::Builder::new()
            .name("eventsd-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| Error::Storage(sled::Error::Io(e)))?;
        Ok(SledStore {
            tree,
            commands,
            state,
            durable,
            writer: Arc::new(Mutex::new(Some(writer))),
            read_only,
            metrics: config.metrics.clone(),
            recent,
        })
    }

    fn event_at(&self, seq: u64) -> Result<Option<StoredEvent>, Error> {
        let Some(bytes) = self.tree.get()?.get(keys::event(seq))? else {
            return Ok(None);
        };
        stored(seq, bytes).map(Some)
    }
}

/// Opens the store's tree. sled may panic on some damaged files instead of returning an
/// error; either way the store must not be served.
pub(crate) fn open_tree(config: &StoreConfig) -> Result<sled::Tree, Error> {
    let sled_config = sled_config(&config.path, config.cache_bytes);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        sled_config.open().and_then(|db| db.open_tree("events"))
    }));
    let check = format!("run `eventsd check --data-dir {}`", config.path.display());
    match opened {
        Ok(Ok(tree)) => Ok(tree),
        Ok(Err(err @ (sled::Error::Corruption { .. } | sled::Error::Unsupported(_)))) => {
            Err(Error::Corrupt(format!(
                "cannot open the store in {}: {err}; {check}",
                config.path.display()
            )))
        }
        Ok(Err(err)) => Err(Error::Storage(err)),
        Err(_) => Err(Error::Corrupt(format!(
            "sled could not read the store in {} (it panicked); run `eventsd check --data-dir {}`",
            config.path.display(),
            config.path.display()
        ))),
    }
}

/// What a store holds, read at open.
pub(crate) struct Loaded {
    pub first_seq: u64,
    pub last_seq: u64,
    pub counts: Counts,
}

/// Reads the sequence range and counters, and refuses a store that lost acknowledged events.
pub(crate) fn load(tree: &sled::Tree, dir: &std::path::Path) -> Result<Loaded, Error> {
    let last_seq = match tree.scan_prefix([keys::EVENT]).next_back() {
        Some(entry) => {
            let (key, _) = entry?;
            keys::seq_of(&key).ok_or_else(|| Error::Corrupt("last event key".into()))?
        }
        None => 0,
    };
    let mut counts = Counts::new();
    for entry in tree.scan_prefix([keys::COUNT]) {
        let (key, value) = entry?;
        let stream = keys::parse_count(&key).ok_or_else(|| Error::Corrupt("count key".into()))?;
        let n = keys::u64_value(&value).ok_or_else(|| Error::Corrupt("count value".into()))?;
        counts.insert(stream, n);
    }
    let first_seq = match tree.get(keys::FIRST_KEY)? {
        Some(v) => {
            keys::u64_value(&v).ok_or_else(|| Error::Corrupt("first kept sequence".into()))?
        }
        None => 1,
    };
    // Retention may have removed every event; sequences still go on after the last one.
    let last_seq = last_seq.max(first_seq - 1);
    verify_against_ack(dir, (first_seq, last_seq), &counts)?;
    verify_blobs(tree, dir)?;
    Ok(Loaded { first_seq, last_seq, counts })
}

/// When sled holds blob files (only stores with very large events), reads every event record
/// once: a missing or damaged blob must stop the start, not surface later as failed reads.
/// Costs a full read of the store, and only for such stores.
fn verify_blobs(tree: &sled::Tree, dir: &std::path::Path) -> Result<(), Error> {
    let has_blobs = dir.join(BLOBS_MARKER).exists()
        || std::fs::read_dir(dir.join("blobs")).is_ok_and(|mut d| d.next().is_some());
    if !has_blobs {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut records = 0u64;
    for entry in tree.scan_prefix([keys::EVENT]) {
        let (key, value) = entry.map_err(|e| {
            Error::Corrupt(format!(
                "an event record of the store in {} cannot be read ({e}); run `eventsd check --data-dir {}`",
                dir.display(),
                dir.display()
            ))
        })?;
        decode(keys::seq_of(&key).unwrap_or_default(), &value)?;
        records += 1;
    }
    tracing::info!(records, took = ?started.elapsed(), "verified every event record (the store holds blob files)");
    Ok(())
}

/// sled's segment size, the largest sled accepts. Items larger than a quarter of it go to blob
/// files; a leaf holds at most 17 entries, so events with up to about 230 KiB of data always
/// stay in the log. Larger events can end up in blobs, which the committer syncs and
/// [`verify_blobs`] checks at start.
const SEGMENT_SIZE: usize = 16 * 1024 * 1024;

/// The sled settings of an eventsd store: every opener must use the same segment size.
pub(crate) fn sled_config(path: &std::path::Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new().path(path).cache_capacity(cache_bytes).segment_size(SEGMENT_SIZE)
}

/// Refuses a store that lost acknowledged events or whose counters disagree with its events.
fn verify_against_ack(
    dir: &std::path::Path,
    (first_seq, last_seq): (u64, u64),
    counts: &Counts,
) -> Result<(), Error> {
    let check = format!("run `eventsd check --data-dir {}`", dir.display());
    match read_ack(dir)? {
        AckRecord::Acked(acked) if acked > last_seq => {
            return Err(Error::Corrupt(format!(
                "the store ends at sequence {last_seq} but sequence {acked} was acknowledged: \
                 acknowledged events are missing (sled dropped a damaged tail); {check} and \
                 restore from a backup"
            )));
        }
        AckRecord::Damaged => {
            return Err(Error::Corrupt(format!(
                "the ack record {ACK_FILE} is damaged, so lost events cannot be ruled out; {check}, \
                 and if it reports the store complete, delete {ACK_FILE} to accept it"
            )));
        }
        _ => {}
    }
    let counted: u64 = counts.values().sum();
    let kept = last_seq + 1 - first_seq;
    if counted != kept {
        return Err(Error::Corrupt(format!(
            "the store's counters hold {counted} events but sequences {first_seq}..={last_seq} are kept; {check}"
        )));
    }
    Ok(())
}

/// The store's tree behind a lock, so the writer can swap in a reopened one. Readers take a
/// clone (an `Arc` inside sled) and release the lock at once. While the writer reopens the
/// store, there is no tree and reads answer UNAVAILABLE rather than anything untrue.
#[derive(Clone)]
pub struct SharedTree(Arc<std::sync::RwLock<Option<sled::Tree>>>);

impl SharedTree {
    fn new(tree: sled::Tree) -> Self {
        SharedTree(Arc::new(std::sync::RwLock::new(Some(tree))))
    }

    fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<sled::Tree>> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current tree.
    pub fn get(&self) -> Result<sled::Tree, Error> {
        let guard = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone().ok_or(Error::Reopening)
    }

    /// Releases every handle on the old database (`current` is the writer's own) and opens
    /// it again, retrying while readers still hold the old one (sled's file lock).
    pub fn reopen(&self, current: &mut sled::Tree, config: &StoreConfig) -> Result<(), Error> {
        *self.slot() = None;
        *current = sled::Config::new().temporary(true).open()?.open_tree("events")?;
        let mut attempts = 0;
        loop {
            match open_tree(config) {
                Ok(tree) => {
                    *self.slot() = Some(tree.clone());
                    *current = tree;
                    return Ok(());
                }
                Err(err) if attempts >= 50 => return Err(err),
                Err(_) => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

/// Decodes a stored event record.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<Event, Error> {
    Event::decode(bytes).map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))
}

/// A stored event record as served (its routing fields decoded, `data` left encoded).
pub(crate) fn stored(seq: u64, bytes: sled::IVec) -> Result<StoredEvent, Error> {
    StoredEvent::from_bytes(bytes::Bytes::from(bytes.to_vec()))
        .map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))
}

#[async_trait]
impl EventStore for SledStore {
    fn writable(&self) -> bool {
        !self.read_only.load(Ordering::Relaxed)
    }

    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, Error> {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append { events, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let appended = answer.await.map_err(|_| Error::ShuttingDown)??;
        self.metrics.publish_latency(started.elapsed());
        Ok(appended)
    }

    /// Ids are still global in this store (one id is stored once, in one mode): the event with
    /// this id, if its mode is the one asked for.
    async fn get(&self, livemode: bool, id: &str) -> Result<Option<StoredEvent>, Error> {
        let Some(seq) = self.tree.get()?.get(keys::id(id))? else {
            return Ok(None);
        };
        let seq =
            keys::u64_value(&seq).ok_or_else(|| Error::Corrupt(format!("id index of {id:?}")))?;
        if seq > *self.durable.borrow() {
            return Ok(None);
        }
        Ok(self.event_at(seq)?.filter(|e| e.livemode() == livemode))
    }

    async fn list(&self, query: ListQuery) -> Result<ListPage, Error> {
        let tree = self.tree.get()?;
        let state = self.state.borrow().clone();
        tokio::task::spawn_blocking(move || {
            let page = list::page(&tree, &state, &query)?;
            let events = page
                .sequences
                .iter()
                .map(|&seq| {
                    let bytes = tree.get(keys::event(seq))?.ok_or_else(|| {
                        Error::Corrupt(format!("index points to missing event {seq}"))
                    })?;
                    stored(seq, bytes)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(page.with_events(events))
        })
        .await
        .map_err(|e| Error::Internal(format!("list task: {e}")))?
    }

    async fn read_from(&self, after: u64, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let first = self.state.borrow().first;
        if after.saturating_add(1) < first {
            return Err(Error::Expired { position: "after_sequence", earliest: first });
        }
        let durable = *self.durable.borrow();
        if after >= durable || max == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.recent.read(after, max, durable) {
            return Ok(events);
        }
        let tree = self.tree.get()?;
        tokio::task::spawn_blocking(move || {
            tree.range(keys::event(after + 1)..=keys::event(durable))
                .take(max)
                .map(|entry| {
                    let (key, value) = entry?;
                    stored(keys::seq_of(&key).unwrap_or_default(), value)
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("read task: {e}")))?
    }

    async fn first_sequence_created_from(&self, created: Timestamp) -> Result<Option<u64>, Error> {
        let tree = self.tree.get()?;
        let durable = *self.durable.borrow();
        tokio::task::spawn_blocking(move || list::first_created_from(&tree, &created, durable))
            .await
            .map_err(|e| Error::Internal(format!("scan task: {e}")))?
    }

    fn first_sequence(&self) -> u64 {
        self.state.borrow().first
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
