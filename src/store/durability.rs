//! What an acknowledgement promises, and the acknowledgement record that lets eventsd
//! notice lost events after a crash.
//!
//! In [`Durability::PowerLoss`] mode (the default) every group commit fdatasyncs the log's
//! active segment before any reply, and a new segment's name is made durable by an fsync of
//! the log folder, so an acknowledged event survives a kernel crash or power loss.
//! [`Durability::ProcessCrash`] leaves the sync to the kernel's writeback and promises only
//! that an acknowledged event survives the process (kill -9, panic, OOM).
//!
//! The ack record (`eventsd.ack`, in the data folder) holds the newest acknowledged sequence
//! and a checksum. It is written after each commit is durable (synced once a second), so it is
//! never ahead of the log. At open the log's torn-tail repair never cuts at or below it, and a
//! log that ends below it is refused: acknowledged events are missing. After a process crash
//! the record is exact; after a power loss it may lag by up to a second of acknowledgements,
//! so the check is then that much weaker.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// File name of the ack record inside the data folder.
pub const ACK_FILE: &str = "eventsd.ack";
const ACK_MAGIC: &[u8; 8] = b"EVTDACK1";
/// How often the ack record itself is synced.
const ACK_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Which failures an acknowledged event survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Kernel crash and power loss: an fdatasync of the log in every commit (the default).
    PowerLoss,
    /// Process crash only (kill -9, panic, OOM): the kernel writes the log back in its time.
    ProcessCrash,
}

/// Keeps the ack record.
pub struct AckWriter {
    ack: File,
    ack_synced_at: Instant,
}

impl AckWriter {
    /// Opens (or creates) the ack record in `dir`, making its folder entry durable.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let ack = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(ACK_FILE))?;
        File::open(dir)?.sync_all()?;
        Ok(AckWriter { ack, ack_synced_at: Instant::now() })
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
        let mut syncer = AckWriter::open(dir.path()).unwrap();
        syncer.record_ack(42).unwrap();
        assert_eq!(read_ack(dir.path()).unwrap(), AckRecord::Acked(42));
        let mut bytes = std::fs::read(dir.path().join(ACK_FILE)).unwrap();
        bytes[10] ^= 1;
        std::fs::write(dir.path().join(ACK_FILE), bytes).unwrap();
        assert_eq!(read_ack(dir.path()).unwrap(), AckRecord::Damaged);
    }
}
