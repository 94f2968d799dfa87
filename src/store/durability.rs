//! What makes a commit durable beyond sled's own flush, and the acknowledgement record that
//! lets eventsd notice lost events after a crash.
//!
//! sled's flush on Linux is `pwrite` + `sync_file_range`: it survives a process crash, but it
//! neither persists the metadata of appended data (the file's size) nor empties the drive's
//! write cache, and large items go to files under `blobs/` that sled never syncs. In
//! [`Durability::PowerLoss`] mode (the default) every commit therefore also fdatasyncs sled's
//! `db` file, fsyncs any new blob file and the `blobs/` folder, so an acknowledged event
//! survives a kernel crash or power loss. [`Durability::ProcessCrash`] skips that for speed
//! and promises only what sled's flush gives.
//!
//! The ack record (`eventsd.ack`, beside sled's files) holds the newest acknowledged sequence
//! and a checksum. It is written after each commit is durable (synced once a second), so it is
//! never ahead of the store. sled treats a bad checksum as a torn tail and silently drops what
//! follows; comparing its last sequence with the ack record at start turns that into a refusal
//! to start instead of silent loss. After a process crash the record is exact; after a power
//! loss it may lag by up to a second of acknowledgements, so the check is then that much weaker.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

/// Marker file written the first time the store holds a blob file: from then on every start
/// reads every record, because a missing blob would otherwise go unnoticed (sled's `blobs/`
/// may be emptied by the very damage we must detect).
pub const BLOBS_MARKER: &str = "eventsd.blobs";

/// File name of the ack record inside the data folder.
pub const ACK_FILE: &str = "eventsd.ack";
const ACK_MAGIC: &[u8; 8] = b"EVTDACK1";
/// How often the ack record itself is synced.
const ACK_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Which failures an acknowledged event survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Kernel crash and power loss: fdatasync of sled's files in every commit (the default).
    PowerLoss,
    /// Process crash only (kill -9, panic, OOM): sled's `sync_file_range` flush alone.
    ProcessCrash,
}

/// Syncs sled's files after each flush and keeps the ack record.
pub struct Syncer {
    mode: Durability,
    db: File,
    blobs: PathBuf,
    dir: PathBuf,
    blobs_seen: Option<SystemTime>,
    synced_blobs: BTreeSet<std::ffi::OsString>,
    ack: File,
    ack_synced_at: Instant,
}

impl Syncer {
    /// Opens sled's `db` file and the ack record in `dir` (sled must already have created it).
    pub fn open(dir: &Path, mode: Durability) -> io::Result<Self> {
        let db = File::open(dir.join("db"))?;
        let ack = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(ACK_FILE))?;
        // The folder entries of sled's files and the ack record must survive too.
        File::open(dir)?.sync_all()?;
        let mut syncer = Syncer {
            mode,
            db,
            blobs: dir.join("blobs"),
            dir: dir.to_path_buf(),
            blobs_seen: None,
            synced_blobs: BTreeSet::new(),
            ack,
            ack_synced_at: Instant::now(),
        };
        // Blobs already present were synced by whoever wrote them before a clean stop, or
        // are re-synced here once: cheap, and it makes the first commit's promise hold.
        syncer.sync_new_blobs()?;
        Ok(syncer)
    }

    /// Called after sled's flush: makes the flushed data durable according to the mode.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.mode == Durability::ProcessCrash {
            return Ok(());
        }
        self.db.sync_data()?;
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let modified = match std::fs::metadata(&self.blobs) {
            Ok(meta) => meta.modified()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.blobs_seen == Some(modified) {
            return Ok(());
        }
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(&self.blobs)? {
            let name = entry?.file_name();
            if !self.synced_blobs.contains(&name) {
                File::open(self.blobs.join(&name))?.sync_data()?;
            }
            present.insert(name);
        }
        File::open(&self.blobs)?.sync_all()?;
        if !present.is_empty() && !self.dir.join(BLOBS_MARKER).exists() {
            File::create(self.dir.join(BLOBS_MARKER))?.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        self.blobs_seen = Some(modified);
        Ok(())
    }

    /// Records `sequence` as acknowledged. Written at once, synced at most once a second.
    pub fn record_ack(&mut self, sequence: u64) -> io::Result<()> {
        self.ack.write_all_at(&encode_ack(sequence), 0)?;
        if self.ack_synced_at.elapsed() >= ACK_SYNC_EVERY {
            self.ack.sync_data()?;
            self.ack_synced_at = Instant::now();
        }
        Ok(())
    }

    /// Syncs the ack record (at close).
    pub fn sync_ack(&mut self) -> io::Result<()> {
        self.ack.sync_data()
    }
}

fn checksum(sequence: u64) -> [u8; 8] {
    let digest = Sha256::new_with_prefix(ACK_MAGIC).chain_update(sequence.to_be_bytes()).finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode_ack(sequence: u64) -> [u8; 24] {
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(ACK_MAGIC);
    buf[8..16].copy_from_slice(&sequence.to_be_bytes());
    buf[16..].copy_from_slice(&checksum(sequence));
    buf
}

/// What the ack record in `dir` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRecord {
    /// No record yet (a new store, or one made before the record existed).
    Absent,
    /// The newest acknowledged sequence.
    Acked(u64),
    /// The record exists but does not check out.
    Damaged,
}

/// Reads the ack record of a data folder.
pub fn read_ack(dir: &Path) -> io::Result<AckRecord> {
    let bytes = match std::fs::read(dir.join(ACK_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AckRecord::Absent),
        Err(e) => return Err(e),
    };
    if bytes.is_empty() {
        return Ok(AckRecord::Absent);
    }
    let Some(record) = bytes.get(..24) else { return Ok(AckRecord::Damaged) };
    let sequence = u64::from_be_bytes(record[8..16].try_into().unwrap_or_default());
    if &record[..8] != ACK_MAGIC || record[16..] != checksum(sequence) {
        return Ok(AckRecord::Damaged);
    }
    Ok(AckRecord::Acked(sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_record_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_ack(dir.path()).unwrap(), AckRecord::Absent);
        std::fs::write(dir.path().join("db"), b"").unwrap();
        let mut syncer = Syncer::open(dir.path(), Durability::PowerLoss).unwrap();
        syncer.record_ack(42).unwrap();
        assert_eq!(read_ack(dir.path()).unwrap(), AckRecord::Acked(42));
        let mut bytes = std::fs::read(dir.path().join(ACK_FILE)).unwrap();
        bytes[10] ^= 1;
        std::fs::write(dir.path().join(ACK_FILE), bytes).unwrap();
        assert_eq!(read_ack(dir.path()).unwrap(), AckRecord::Damaged);
    }
}
