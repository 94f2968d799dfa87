//! The embedded backend: an event log of eventsd's own (`store/log/`) beside a sled index
//! (`store/index/`), in one local data folder:
//!
//! ```text
//! DATA_DIR/log/       segments of framed records: the events as stored, the source of truth
//! DATA_DIR/index/     sled: counts; `entries/`: by-time and by-type entries (sorted runs);
//!                     `ids`: (mode, id) → sequence
//! DATA_DIR/eventsd.ack  the newest acknowledged sequence (durability.rs)
//! ```
//!
//! Three threads write, in a pipeline: the group-commit writer (`writer.rs`) stages rounds
//! and writes them to the log; the sync thread (`syncer.rs`) fdatasyncs them, moves the
//! durable point and answers; the index thread (`indexer.rs`) applies durable rounds to the
//! index behind them. Ids the index does not hold yet are *pending*, in memory.
//! - GetEvent looks the id up among the pending ids, then at the sequence it names (generated
//!   ids), then in the id table, and reads the record from the log.
//! - ListEvents waits until the index reaches the durable point it saw, plans the page under
//!   the state lock (`store/list/`) and reads each record of the page from the log.
//! - SubscribeEvents reads the log forward from a sequence (the recent-events cache first).
//!
//! Reads are bounded by the durable point, which the writer moves only after a round is
//! durable in the log, so no reader sees an event a crash could still take away. Opening scans
//! the log's last segment, then replays into the index whatever the log holds beyond the
//! index's applied sequence: a start costs the tail, not the history.

mod indexer;
mod migrate;
mod syncer;
mod writer;

pub use migrate::{migrate, reindex, MigrateReport, STEPS as MIGRATE_STEPS};
pub use writer::{MAX_ROUND_EVENTS, MAX_TRIM};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use prost::Message;
use prost_types::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;
use crate::event::{time, NewEvent};
use crate::metrics::Metrics;
use crate::proto::Event;
use crate::store::durability::{read_ack, AckRecord, AckWriter, Durability, ACK_FILE};
use crate::store::index::entries::{self, Entries};
use crate::store::index::ids::IdTable;
use crate::store::index::{self, DurableState};
use crate::store::log::{self, LogReader};
use crate::store::recent::{self, Recent};
use crate::store::retention::Retention;
use crate::store::{list, Appended, EventStore, ListPage, ListQuery, StoredEvent};
use indexer::{Indexer, Pending};
use syncer::Syncer;
use writer::{Command, Writer};

/// Longest a read waits for the index thread to reach the durable point it saw (it is a
/// round behind at most while it keeps up; only a failed index write holds it longer).
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many commands may wait for the writer before publishers wait to enqueue.
const QUEUE_DEPTH: usize = 8_192;

/// Where and how to open the embedded store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data folder (created if missing).
    pub path: PathBuf,
    /// The index's page cache, in bytes.
    pub cache_bytes: u64,
    /// Which failures an acknowledged event survives.
    pub durability: Durability,
    /// Where commit and publish figures go.
    pub metrics: Metrics,
    /// A log segment is sealed once it holds this many bytes.
    pub segment_bytes: u64,
    /// How long one listing may walk the index before it is stopped (DEADLINE_EXCEEDED).
    pub list_deadline: std::time::Duration,
}

/// What the writer and every reader share.
pub(crate) struct Shared {
    /// The index tree, replaced when the writer reopens it after a storage error.
    pub index: SharedTree,
    /// The index's by-time and by-type entries.
    pub entries: Entries,
    /// The log's segments.
    pub log: LogReader,
    /// What listings read: the index's applied sequence, first kept sequence and per-stream
    /// counts, moved together by the index thread.
    state: RwLock<DurableState>,
    /// The last sequence the index holds: a round behind the durable point at most while the
    /// index thread keeps up, further after an index write failed.
    pub applied: watch::Sender<u64>,
    /// Durable events the index does not hold yet, found by id.
    pub pending: Pending,
    /// (mode, id) → sequence for the ids that do not name their own sequence.
    pub ids: IdTable,
    /// Set by the index thread after a failed write, until it recovers.
    pub index_failed: AtomicBool,
    /// Set by the sync thread after a failed sync; writes stay refused.
    pub log_failed: AtomicBool,
    /// Recently committed events, for live subscribers.
    pub recent: Recent,
    /// Set by the writer after a storage error or on close.
    pub read_only: AtomicBool,
    /// The first kept sequence as the writer last set it (before the index has removed the
    /// events below it): the writer's own record of it, and what reads by id check, with no
    /// lock.
    pub first_kept: AtomicU64,
}

impl Shared {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, DurableState> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, DurableState> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The event with this id in this mode, among the sequences up to `upto`: a pending id
    /// (written, not yet indexed), an id that names its own sequence (`id::generate_at`; the
    /// event there must have exactly this id and mode), or one the id table names (the event
    /// there, kept, must have exactly this id and mode). Ids are one namespace per mode, so
    /// only that mode's events are ever found.
    fn locate(&self, livemode: bool, id: &str, upto: u64) -> Result<Option<StoredEvent>, Error> {
        if let Some(seq) = self.pending.get(livemode, id) {
            return if seq <= upto { self.event(seq) } else { Ok(None) };
        }
        if let Some(seq) = crate::event::id::sequence_of(id).filter(|&s| s <= upto) {
            // Only a hint: an unreadable record there is reported by whoever reads it as its
            // own event; this id may be a caller's that the index holds elsewhere.
            match self.event(seq) {
                Ok(Some(event)) if event.id() == id && event.livemode() == livemode => {
                    return Ok(Some(event));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(seq, error = %err, "the sequence an id names is unreadable; asking the index")
                }
            }
        }
        for seq in self.ids.candidates(livemode, id)? {
            if seq > upto {
                continue;
            }
            match self.event(seq)? {
                Some(event) if event.id() == id && event.livemode() == livemode => {
                    return Ok(Some(event));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// The event at `seq`, from memory if recent; `None` below the first kept sequence
    /// (retention may not have cut it from the cache or the log yet).
    fn event(&self, seq: u64) -> Result<Option<StoredEvent>, Error> {
        if seq < self.first_kept.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(event) = self.recent.get(seq) {
            return Ok(Some(event));
        }
        match self.log.read(seq)? {
            Some(bytes) => stored(seq, bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// A cheap-to-clone handle on the embedded store.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    durable: watch::Receiver<u64>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Wakes the index thread when a reader waits for it.
    nudge: std::sync::mpsc::SyncSender<indexer::Job>,
    metrics: Metrics,
    list_deadline: std::time::Duration,
}

/// Refuses a data folder this release cannot serve as it is: one written by the sled-only
/// release (upgrade it with `eventsd migrate`), or one whose migration did not finish.
pub(crate) fn refuse_old_layout(dir: &Path) -> Result<(), Error> {
    if dir.join(migrate::WORK_DIR).exists() {
        return Err(Error::Startup(format!(
            "{} holds an unfinished migration; run `eventsd migrate --data-dir {}` again to finish it",
            dir.display(),
            dir.display()
        )));
    }
    if dir.join("db").exists() {
        return Err(Error::Startup(format!(
            "{} holds a store written by an earlier eventsd (events inside sled); upgrade it with \
             `eventsd migrate --data-dir {}` (the old files are kept until the new store is durable)",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// The newest acknowledged sequence by the ack record (0 without one).
pub(crate) fn acked(dir: &Path) -> Result<u64, Error> {
    match read_ack(dir)? {
        AckRecord::Acked(acked) => Ok(acked),
        AckRecord::Absent => Ok(0),
        AckRecord::Damaged => Err(Error::Corrupt(format!(
            "the ack record {ACK_FILE} is damaged, so lost events cannot be ruled out; run \
             `eventsd check --data-dir {}`, and if it reports the store complete, delete {ACK_FILE} to accept it",
            dir.display()
        ))),
    }
}

/// A log and an index brought level, as at open.
pub(crate) struct Opened {
    pub log: log::LogWriter,
    pub tree: sled::Tree,
    pub entries: Entries,
    pub ids: IdTable,
    pub first: u64,
    pub last: u64,
    pub counts: index::Counts,
}

/// Opens the log (recovering its tail), opens the index and replays the log's tail into it;
/// refuses a store whose counts disagree with the log's range.
pub(crate) fn open_parts(
    dir: &Path,
    cache_bytes: u64,
    segment_bytes: u64,
) -> Result<Opened, Error> {
    std::fs::create_dir_all(dir)?;
    let acked = acked(dir)?;
    let (log, range) = log::open(dir, acked, segment_bytes)?;
    let open_index = || -> Result<_, Error> {
        let tree = index::open_tree(dir, cache_bytes)?;
        let loaded = index::load(&tree)?;
        let index_dir = dir.join(index::DIR);
        if loaded.applied == 0 && loaded.counts.is_empty() {
            // A new or emptied (older layout) sled part: the entries start over with it.
            let stale = index_dir.join(entries::DIR);
            if stale.exists() {
                std::fs::remove_dir_all(stale)?;
            }
        }
        let config = entries::Config::with_cache(cache_bytes);
        let (entries, _) = Entries::open(&index_dir, config, range.first)?;
        Ok((tree, entries, loaded))
    };
    let (tree, entries, loaded) = match open_index() {
        Ok(opened) => opened,
        // sled's files can be left unreadable by a crash (a torn snapshot was seen after
        // kill -9), and a run or the entries' manifest can be damaged. The index is derived
        // from the log, so it is rebuilt rather than refused.
        Err(Error::Corrupt(why)) => {
            tracing::warn!(%why, "the index cannot be opened; rebuilding it from the log");
            std::fs::remove_dir_all(dir.join(index::DIR))?;
            open_index()?
        }
        Err(other) => return Err(other),
    };
    let counts =
        index::catch_up((&tree, &entries), &log.reader(), loaded, (range.first, range.last))?;
    let (ids, synced) = IdTable::open(&dir.join(index::DIR))?;
    index::add_ids(&ids, &log.reader(), synced, (range.first, range.last))?;
    let counted: u64 = counts.values().sum();
    let kept = range.last + 1 - range.first;
    if counted != kept {
        return Err(Error::Corrupt(format!(
            "the index counts {counted} events but the log keeps sequences {}..={} ({kept}); rebuild \
             the index with `eventsd reindex --data-dir {}`",
            range.first,
            range.last,
            dir.display()
        )));
    }
    Ok(Opened { log, tree, entries, ids, first: range.first, last: range.last, counts })
}

impl SledStore {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(config: &StoreConfig) -> Result<Self, Error> {
        refuse_old_layout(&config.path)?;
        let Opened { log, tree, entries, ids, first, last, counts } =
            open_parts(&config.path, config.cache_bytes, config.segment_bytes)?;
        let acks = AckWriter::open(&config.path)?;
        let shared = Arc::new(Shared {
            index: SharedTree::new(tree.clone()),
            entries,
            log: log.reader(),
            state: RwLock::new(DurableState { sequence: last, first, counts: counts.clone() }),
            applied: watch::channel(last).0,
            pending: Pending::default(),
            ids,
            index_failed: AtomicBool::new(false),
            log_failed: AtomicBool::new(false),
            recent: Recent::new(recent::capacity_from(config.cache_bytes)),
            read_only: AtomicBool::new(false),
            first_kept: AtomicU64::new(first),
        });
        let (durable_tx, durable) = watch::channel(last);
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let (jobs, queued) = std::sync::mpsc::sync_channel(indexer::QUEUE_ROUNDS);
        let (to_sync, written) = std::sync::mpsc::sync_channel(syncer::QUEUE_ROUNDS);
        let indexer = Indexer::new(shared.clone(), tree, counts, config.clone());
        let nudge = jobs.clone();
        let syncer = Syncer {
            shared: shared.clone(),
            index: jobs,
            durability: config.durability,
            acks,
            durable: durable_tx,
            metrics: config.metrics.clone(),
            failed: false,
        };
        let writer = Writer::new(shared.clone(), log, to_sync)?;
        // The three threads outside any tracker: the group-commit writer (it owns the log
        // file), the sync thread (fdatasync, durable point, answers) and the index thread
        // behind them are blocking OS threads, ended by `close`'s Close command (each closes
        // the next) and joined there.
        let indexer = std::thread::Builder::new()
            .name("eventsd-index".into())
            .spawn(move || indexer.run(queued))?;
        let syncer = std::thread::Builder::new()
            .name("eventsd-sync".into())
            .spawn(move || syncer.run(written))?;
        let writer = std::thread::Builder::new()
            .name("eventsd-commit".into())
            .spawn(move || writer.run(rx))?;
        Ok(SledStore {
            shared,
            commands,
            durable,
            threads: Arc::new(Mutex::new(vec![writer, syncer, indexer])),
            nudge,
            metrics: config.metrics.clone(),
            list_deadline: config.list_deadline,
        })
    }

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
        let (first, sequence) = {
            let state = self.shared.state();
            (state.first, state.sequence)
        };
        let mut through = None;
        if let Some(max) = policy.max_events {
            let kept = (sequence + 1).saturating_sub(first);
            if kept > max {
                through = Some(sequence - max);
            }
        }
        if let Some(age) = policy.max_age {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
            let cutoff = time::from_chrono(cutoff);
            for seq in (first..=sequence).take(scan) {
                let received = stored(seq, self.shared.log.expect(seq)?)?.received();
                if time::cmp(&received, &cutoff).is_ge() {
                    break;
                }
                through = Some(through.map_or(seq, |t: u64| t.max(seq)));
            }
        }
        Ok(through)
    }

    /// Waits until the index holds every event durable now (a round at most while the index
    /// thread keeps up), so a listing includes every publish acknowledged before it began.
    async fn caught_up(&self) -> Result<(), Error> {
        let target = *self.durable.borrow();
        if *self.shared.applied.borrow() >= target {
            return Ok(());
        }
        // A full queue means the index thread is busy applying already.
        let _ = self.nudge.try_send(indexer::Job::Nudge);
        let mut applied = self.shared.applied.subscribe();
        let waited = tokio::time::timeout(INDEX_WAIT, async {
            applied.wait_for(|a| *a >= target).await.map(drop)
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Unavailable(
                "the index is behind the log (recovering from a storage error?); try again".into(),
            )),
        }
    }
}

/// A page's events: recent ones from memory, older ones from the log, where each run of
/// consecutive sequences (a page in time order is mostly one) is one read.
fn page_events(shared: &Shared, sequences: &[u64]) -> Result<Vec<StoredEvent>, Error> {
    let mut events = Vec::with_capacity(sequences.len());
    let mut at = 0;
    while at < sequences.len() {
        let seq = sequences[at];
        if let Some(event) = shared.recent.get(seq) {
            events.push(event);
            at += 1;
            continue;
        }
        // The run of consecutive sequences from here, ascending or descending.
        let step: i64 = match sequences.get(at + 1) {
            Some(&next) if next == seq + 1 => 1,
            Some(&next) if next + 1 == seq => -1,
            _ => 0,
        };
        let mut len = 1;
        while step != 0
            && sequences.get(at + len).is_some_and(|&s| s as i64 == seq as i64 + step * len as i64)
        {
            len += 1;
        }
        let (first, last) = match step {
            -1 => (seq + 1 - len as u64, seq),
            _ => (seq, seq + len as u64 - 1),
        };
        let mut run = shared.log.expect_run(first, last)?;
        if step == -1 {
            run.reverse();
        }
        for (i, bytes) in run.into_iter().enumerate() {
            let s = if step == -1 { last - i as u64 } else { first + i as u64 };
            events.push(stored(s, bytes)?);
        }
        at += len;
    }
    Ok(events)
}

/// Decodes a stored event record.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<Event, Error> {
    Event::decode(bytes).map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))
}

/// A stored event record as served (its routing fields decoded, `data` left encoded).
pub(crate) fn stored(seq: u64, bytes: bytes::Bytes) -> Result<StoredEvent, Error> {
    StoredEvent::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))
}

/// The index tree behind a lock, so the writer can swap in a reopened one. Readers take a
/// clone (an `Arc` inside sled) and release the lock at once. While the writer reopens it
/// there is no tree and reads answer UNAVAILABLE rather than anything untrue.
#[derive(Clone)]
pub struct SharedTree(Arc<RwLock<Option<sled::Tree>>>);

impl SharedTree {
    fn new(tree: sled::Tree) -> Self {
        SharedTree(Arc::new(RwLock::new(Some(tree))))
    }

    fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<sled::Tree>> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current tree.
    pub fn get(&self) -> Result<sled::Tree, Error> {
        let guard = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone().ok_or(Error::Reopening)
    }

    /// Releases every handle on the old index (`current` is the writer's own) and opens it
    /// again, retrying while readers still hold the old one (sled's file lock).
    pub fn reopen(&self, current: &mut sled::Tree, config: &StoreConfig) -> Result<(), Error> {
        *self.slot() = None;
        *current = sled::Config::new().temporary(true).open()?.open_tree("index")?;
        let mut attempts = 0;
        loop {
            match index::open_tree(&config.path, config.cache_bytes) {
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

/// Runs blocking store work off the async threads. Not a background task: the caller awaits
/// it in place, so it never outlives the call that needs it.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("{what} task: {e}")))?
}

#[async_trait]
impl EventStore for SledStore {
    fn writable(&self) -> bool {
        !self.shared.read_only.load(Ordering::Relaxed)
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

    /// One lookup in the mode's namespace, among durable events (see `Shared::locate`).
    async fn get(&self, livemode: bool, id: &str) -> Result<Option<StoredEvent>, Error> {
        let durable = *self.durable.borrow();
        self.shared.locate(livemode, id, durable)
    }

    /// The plan (streams, total, where an offset lands) is made under the state lock, where
    /// the index's bucket counts are exactly those of the snapshot; the walk runs after it,
    /// bounded by the snapshot and by `--list-deadline`.
    async fn list(&self, query: ListQuery) -> Result<ListPage, Error> {
        self.caught_up().await?;
        let tree = self.shared.index.get()?;
        let shared = self.shared.clone();
        let deadline = std::time::Instant::now() + self.list_deadline;
        blocking("list", move || {
            let (view, plan) = {
                let state = shared.state();
                let view = index::View::new(tree, &shared.entries, state.first);
                let plan = list::plan(&view, &state, &query)?;
                (view, plan)
            };
            // The index has no by-source entries: a source filter reads each candidate.
            let log = &shared.log;
            let from_source =
                |seq: u64, source: &str| Ok(stored(seq, log.expect(seq)?)?.source() == source);
            let page = list::walk(&view, plan, &query, from_source, Some(deadline))?;
            let events = page_events(&shared, &page.sequences)?;
            Ok(page.with_events(events))
        })
        .await
    }

    async fn read_from(&self, after: u64, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let first = self.first_sequence();
        if after.saturating_add(1) < first {
            return Err(Error::Expired { position: "after_sequence", earliest: first });
        }
        let durable = *self.durable.borrow();
        if after >= durable || max == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.shared.recent.read(after, max, durable) {
            return Ok(events);
        }
        let log = self.shared.log.clone();
        let upto = durable.min(after.saturating_add(max as u64));
        blocking("read", move || {
            (after + 1..=upto).map(|seq| stored(seq, log.expect(seq)?)).collect()
        })
        .await
    }

    async fn first_sequence_created_from(&self, created: Timestamp) -> Result<Option<u64>, Error> {
        self.caught_up().await?;
        let view =
            index::View::new(self.shared.index.get()?, &self.shared.entries, self.first_sequence());
        let durable = *self.durable.borrow();
        blocking("scan", move || list::first_created_from(&view, &created, durable)).await
    }

    fn first_sequence(&self) -> u64 {
        self.shared.state().first
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
        let handles = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        if !handles.is_empty() {
            // Awaited in place: joining the threads blocks.
            let _ = tokio::task::spawn_blocking(move || {
                for handle in handles {
                    let _ = handle.join();
                }
            })
            .await;
        }
    }
}
