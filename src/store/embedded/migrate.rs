//! `eventsd migrate` and `eventsd reindex`: building a log + index store from what is already
//! on disk.
//!
//! Migrate upgrades a data folder written by the sled-only release (events inside sled's
//! `db`). It works in two phases, each safe to interrupt and rerun:
//! 1. Build: sled's old files are copied to `DATA_DIR/migrating/old/` and read from there
//!    (opening sled writes to its files, and the originals must stay as they are); the new
//!    store is written in `DATA_DIR/migrating/` (log, then index, every file synced), with the
//!    old store's sequences, first kept sequence and event bytes unchanged; the copy is
//!    deleted and `migrating/complete` marks the new store durable. A rerun before that mark
//!    starts this phase over. It needs room for a copy of the old store and the new one.
//! 2. Switch: only now are the old files touched: `log/` and `index/` are renamed into the data
//!    folder, sled's old files are deleted, and `migrating/` goes last. A rerun finishes
//!    whatever of this is left. A server refuses the folder until both phases are done.
//!
//! The old ack record (`eventsd.ack`) keeps its meaning (the newest acknowledged sequence) and
//! stays. An old store cannot hold one id in both modes (ids were global), so the per-mode id
//! keys of the new index need no conflict handling.
//!
//! Reindex deletes the index and rebuilds it from the log (the only repair of a damaged index).

use std::fs::File;
use std::path::Path;

use crate::error::Error;
use crate::store::embedded::{acked, open_parts, refuse_old_layout};
use crate::store::index::entries::Entries;
use crate::store::index::{self, Fields};
use crate::store::log;

/// The folder phase 1 builds in.
pub(crate) const WORK_DIR: &str = "migrating";
/// The mark that phase 1 is complete and durable.
const COMPLETE: &str = "complete";
/// sled's own files in a data folder of the sled-only release.
const OLD_FILES: [&str; 3] = ["db", "conf", "eventsd.blobs"];
/// Old event records copied per log append.
const COPY_BATCH: usize = 4_096;

/// The steps between which a migration can be cut short, in order. With
/// `EVENTSD_MIGRATE_ABORT_AT` set to one of them the process aborts there, as a kill -9 would
/// (the crash harness uses it to cut a migration at every step, independent of timing).
pub const STEPS: [&str; 7] =
    ["copied", "log-written", "index-built", "complete", "renamed", "old-deleted", "finished"];

/// Aborts the process at `step` if the crash harness asked for it.
fn step(name: &str) {
    if std::env::var("EVENTSD_MIGRATE_ABORT_AT").is_ok_and(|at| at == name) {
        std::process::abort();
    }
}

/// What a migrate or reindex did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Events in the store.
    pub events: u64,
    /// First kept and last sequence.
    pub range: (u64, u64),
    /// True when there was nothing to do (already migrated).
    pub already: bool,
}

/// Upgrades the store in `dir` (see the module header).
pub fn migrate(dir: &Path, cache_bytes: u64, segment_bytes: u64) -> Result<MigrateReport, Error> {
    let work = dir.join(WORK_DIR);
    let report = if work.join(COMPLETE).exists() {
        None
    } else {
        if !dir.join("db").exists() {
            if dir.join(log::DIR).exists() {
                let opened = open_parts(dir, cache_bytes, segment_bytes)?;
                let events = opened.last + 1 - opened.first;
                return Ok(MigrateReport {
                    events,
                    range: (opened.first, opened.last),
                    already: true,
                });
            }
            return Err(Error::Startup(format!(
                "{} holds no eventsd store to migrate",
                dir.display()
            )));
        }
        Some(build(dir, &work, cache_bytes, segment_bytes)?)
    };
    switch(dir, &work)?;
    let opened = open_parts(dir, cache_bytes, segment_bytes)?;
    let events = opened.last + 1 - opened.first;
    let range = (opened.first, opened.last);
    if let Some(built) = report {
        if built.range != range {
            return Err(Error::Corrupt(format!(
                "the migrated store holds {range:?} but {:?} were copied",
                built.range
            )));
        }
    }
    Ok(MigrateReport { events, range, already: false })
}

/// Phase 1: the new store in `work`, from the old sled tree in `dir`.
fn build(
    dir: &Path,
    work: &Path,
    cache_bytes: u64,
    segment_bytes: u64,
) -> Result<MigrateReport, Error> {
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work.join(log::DIR))?;
    sync_dir(dir)?;
    let copy = work.join("old");
    copy_old(dir, &copy)?;
    step("copied");
    let old = open_old(&copy, cache_bytes)?;
    let first = match old.get([b'f'])? {
        Some(v) => u64::from_be_bytes(
            v.as_ref().try_into().map_err(|_| Error::Corrupt("old first kept sequence".into()))?,
        ),
        None => 1,
    };
    let acked = acked(dir)?;
    log::write_first(&work.join(log::DIR), first)?;
    let (mut writer, _) = log::open(work, 0, segment_bytes)?;
    let mut batch: Vec<(u64, sled::IVec)> = Vec::with_capacity(COPY_BATCH);
    let mut next = first;
    for entry in old.scan_prefix([b'e']) {
        let (key, value) = entry?;
        let seq = match <[u8; 8]>::try_from(&key[1..]) {
            Ok(bytes) => u64::from_be_bytes(bytes),
            Err(_) => return Err(Error::Corrupt(format!("old event key {key:?}"))),
        };
        if seq != next {
            return Err(Error::Corrupt(format!(
                "the old store is missing sequences {next} to {}; run `eventsd check --data-dir {}` with the previous release",
                seq.saturating_sub(1),
                dir.display()
            )));
        }
        Fields::decode(seq, &value)?;
        batch.push((seq, value));
        next += 1;
        if batch.len() == COPY_BATCH {
            writer.append(batch.iter().map(|(s, v)| (*s, v.as_ref())))?;
            batch.clear();
        }
    }
    writer.append(batch.iter().map(|(s, v)| (*s, v.as_ref())))?;
    writer.sync()?;
    let last = next - 1;
    if acked > last {
        return Err(Error::Corrupt(format!(
            "the old store ends at sequence {last} but {acked} was acknowledged; run `eventsd check --data-dir {}` with the previous release",
            dir.display()
        )));
    }
    drop(writer);
    drop(old);
    step("log-written");
    std::fs::remove_dir_all(&copy)?;
    let tree = index::open_tree(work, cache_bytes)?;
    let loaded = index::load(&tree)?;
    let (entries, _) = Entries::open(&work.join(index::DIR), Default::default(), first)?;
    index::catch_up(
        (&tree, &entries),
        &log::open(work, last, segment_bytes)?.0.reader(),
        loaded,
        (first, last),
    )?;
    entries.close()?;
    tree.flush()?;
    drop(tree);
    sync_tree(work)?;
    step("index-built");
    File::create(work.join(COMPLETE))?.sync_all()?;
    sync_dir(work)?;
    step("complete");
    Ok(MigrateReport { events: last + 1 - first, range: (first, last), already: false })
}

/// Phase 2: the new store into place, then the old files out.
fn switch(dir: &Path, work: &Path) -> Result<(), Error> {
    for name in [log::DIR, index::DIR] {
        if work.join(name).exists() {
            if dir.join(name).exists() {
                std::fs::remove_dir_all(dir.join(name))?;
            }
            std::fs::rename(work.join(name), dir.join(name))?;
            step("renamed");
        }
    }
    sync_dir(dir)?;
    for name in OLD_FILES {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") {
            std::fs::remove_file(entry.path())?;
        } else if name == "blobs" {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    sync_dir(dir)?;
    step("old-deleted");
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    sync_dir(dir)?;
    step("finished");
    Ok(())
}

/// Rebuilds the index of the store in `dir` from its log.
pub fn reindex(dir: &Path, cache_bytes: u64, segment_bytes: u64) -> Result<MigrateReport, Error> {
    refuse_old_layout(dir)?;
    if !dir.join(log::DIR).exists() {
        return Err(Error::Startup(format!("{} holds no eventsd log", dir.display())));
    }
    let index_dir = dir.join(index::DIR);
    if index_dir.exists() {
        std::fs::remove_dir_all(&index_dir)?;
        sync_dir(dir)?;
    }
    let opened = open_parts(dir, cache_bytes, segment_bytes)?;
    opened.entries.close()?;
    opened.tree.flush()?;
    Ok(MigrateReport {
        events: opened.last + 1 - opened.first,
        range: (opened.first, opened.last),
        already: false,
    })
}

/// Opens the sled-only release's tree (same segment size as that release used).
fn open_old(dir: &Path, cache_bytes: u64) -> Result<sled::Tree, Error> {
    let config =
        sled::Config::new().path(dir).cache_capacity(cache_bytes).segment_size(16 * 1024 * 1024);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        config.open().and_then(|db| db.open_tree("events"))
    }));
    match opened {
        Ok(Ok(tree)) => Ok(tree),
        Ok(Err(err)) => {
            Err(Error::Corrupt(format!("cannot open the old store in {}: {err}", dir.display())))
        }
        Err(_) => Err(Error::Corrupt(format!(
            "sled could not read the old store in {} (it panicked)",
            dir.display()
        ))),
    }
}

/// Copies sled's files of the old store (never modifying them) into `to`.
fn copy_old(dir: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to.join("blobs"))?;
    for name in ["db", "conf"] {
        if dir.join(name).exists() {
            std::fs::copy(dir.join(name), to.join(name))?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    if let Ok(blobs) = std::fs::read_dir(dir.join("blobs")) {
        for entry in blobs {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join("blobs").join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// fsyncs every file under `dir` and the folders themselves (sled's flush does not fsync).
fn sync_tree(dir: &Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}
