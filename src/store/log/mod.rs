//! The event log: the embedded store's source of truth, in segment files of eventsd's own.
//!
//! A log is a folder (`DATA_DIR/log/`) of segments named by their first sequence
//! (`segment.rs`), each an append-only file of framed, checksummed records (`record.rs`)
//! holding the stored event bytes as encoded once, at publish. The log takes each record's
//! sequence from its caller (the embedded writer assigns them; a replica would pass its
//! stream's) and only insists that they follow each other with no gap.
//!
//! Promises:
//! - One `write` per append (plus 4 bytes: the first record's checksum, written last) and,
//!   with [`LogWriter::sync`], one `fdatasync`: after it returns, the records survive a power
//!   loss. A new segment's name is made durable (folder fsync) before any record in it is
//!   acknowledged.
//! - An append is whole or absent after a process crash: until its last byte is written its
//!   first record fails its checksum, so recovery cuts the whole append, never part of it.
//!   (After a power loss before the sync, pages may reach the disk in any order, so an
//!   unacknowledged append can survive in part; an acknowledged one is always whole.)
//! - At open, only the last segment is scanned (a start costs one segment, not the history).
//!   A torn tail is cut back to the last whole record, but never below the acknowledged
//!   sequence the caller passes: a damaged or missing record that was acknowledged makes the
//!   open fail with a message naming the segment, the first unreadable sequence and
//!   `eventsd check`. Earlier segments are checked for presence and continuity at open, and
//!   every read checks its record's checksum.
//! - Retention moves the first kept sequence (a small file of its own, `log/first`) and
//!   deletes a segment only once every record in it lies below that.
//! - Reads are positioned reads through the kernel's page cache: the log holds no memory per
//!   event, only one open segment handle per segment file.

pub mod record;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::error::Error;
use segment::{ReadError, Segment};

/// The log's folder inside the data folder.
pub const DIR: &str = "log";
/// The file holding the first kept sequence.
const FIRST_FILE: &str = "first";
const FIRST_MAGIC: &[u8; 8] = b"EVTDFST1";

/// Segments beyond this size are sealed and a new one begins (the default).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Offsets inside a segment are 32-bit.
const MAX_SEGMENT_BYTES: u64 = 1 << 31;

/// The free space the log leaves on its file system for the index: 64 MiB, or a quarter of
/// a file system smaller than 256 MiB.
pub fn headroom(file_system_bytes: u64) -> u64 {
    (64 << 20).min(file_system_bytes / 4)
}

/// (Bytes free to an unprivileged writer, total bytes) of the file system holding `dir`.
fn free_space(dir: &Path) -> Result<(u64, u64), Error> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Internal(format!("a NUL in the data folder {}", dir.display())))?;
    // SAFETY: statvfs is plain old data, for which all zero bytes are a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    let unit = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * unit, stat.f_blocks as u64 * unit))
}

/// The segments, shared by the writer and every reader.
#[derive(Clone, Debug)]
pub struct LogReader {
    dir: PathBuf,
    segments: Arc<RwLock<BTreeMap<u64, Arc<Segment>>>>,
}

/// The one writer of a log.
#[derive(Debug)]
pub struct LogWriter {
    reader: LogReader,
    active: Arc<Segment>,
    /// Bytes of whole records in the active segment.
    end: u64,
    /// The next sequence to append.
    next: u64,
    segment_bytes: u64,
    frames: Vec<u8>,
    entries: Vec<u8>,
}

/// What an open found.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// The first kept sequence.
    pub first: u64,
    /// The last sequence in the log (`first - 1` when it holds none).
    pub last: u64,
}

fn locked<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn corrupt(dir: &Path, what: String) -> Error {
    let data_dir = dir.parent().unwrap_or(dir);
    Error::Corrupt(format!("{what}; run `eventsd check --data-dir {}`", data_dir.display()))
}

impl LogReader {
    /// The stored bytes of `sequence`. `Ok(None)` if the log holds no such record (below the
    /// first segment, or beyond the last appended).
    pub fn read(&self, sequence: u64) -> Result<Option<Bytes>, Error> {
        let Some(segment) = self.segment_of(sequence) else { return Ok(None) };
        match segment.read(sequence) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ReadError::Missing) => Ok(None),
            Err(err) => Err(self.read_error(&segment, sequence, err)),
        }
    }

    /// The stored bytes of `sequence`, which the caller knows must be there.
    pub fn expect(&self, sequence: u64) -> Result<Bytes, Error> {
        self.read(sequence)?.ok_or_else(|| self.absent(sequence))
    }

    /// The stored bytes of the records `first..=last`, which the caller knows must be there:
    /// one read per segment the run spans instead of one per record.
    pub fn expect_run(&self, first: u64, last: u64) -> Result<Vec<Bytes>, Error> {
        let mut out = Vec::with_capacity(last.saturating_sub(first) as usize + 1);
        let mut seq = first;
        while seq <= last {
            let segment = self.segment_of(seq).ok_or_else(|| self.absent(seq))?;
            let upto = match locked(&self.segments).range(seq + 1..).next() {
                Some((&next, _)) => last.min(next - 1),
                None => last,
            };
            match segment.read_run(seq, (upto - seq + 1) as usize) {
                Ok(run) => out.extend(run),
                Err(ReadError::Missing) => return Err(self.absent(seq)),
                Err(err) => return Err(self.read_error(&segment, seq, err)),
            }
            seq = upto + 1;
        }
        Ok(out)
    }

    fn segment_of(&self, sequence: u64) -> Option<Arc<Segment>> {
        locked(&self.segments).range(..=sequence).next_back().map(|(_, s)| s.clone())
    }

    fn absent(&self, sequence: u64) -> Error {
        corrupt(&self.dir, format!("the log has no record of sequence {sequence}"))
    }

    fn read_error(&self, segment: &Segment, sequence: u64, err: ReadError) -> Error {
        match err {
            ReadError::Io(e) => Error::Io(e),
            _ => corrupt(
                &self.dir,
                format!(
                    "segment {}: the record of sequence {sequence} is unreadable",
                    segment.path.display()
                ),
            ),
        }
    }

    /// The first sequences of the segments, in order.
    pub fn segment_starts(&self) -> Vec<u64> {
        locked(&self.segments).keys().copied().collect()
    }

    /// Deletes every segment whose records all lie below `first` (never the last segment).
    pub fn delete_below(&self, first: u64) -> Result<usize, Error> {
        let doomed: Vec<Arc<Segment>> = {
            let segments = locked(&self.segments);
            let starts: Vec<u64> = segments.keys().copied().collect();
            starts
                .windows(2)
                .filter(|w| w[1] <= first)
                .filter_map(|w| segments.get(&w[0]).cloned())
                .collect()
        };
        for segment in &doomed {
            self.segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&segment.first);
            let (data, offsets) = segment::paths(&self.dir, segment.first);
            std::fs::remove_file(data)?;
            let _ = std::fs::remove_file(offsets);
        }
        if !doomed.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(doomed.len())
    }

    /// Records `first` as the first kept sequence, durably (before any index or segment
    /// below it is removed).
    pub fn set_first(&self, first: u64) -> Result<(), Error> {
        write_first(&self.dir, first)
    }
}

/// Durably records `first` as the first kept sequence of the log in `dir` (a log folder).
pub fn write_first(dir: &Path, first: u64) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(20);
    buf.extend_from_slice(FIRST_MAGIC);
    buf.extend_from_slice(&first.to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
    let tmp = dir.join("first.tmp");
    std::fs::write(&tmp, &buf)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(FIRST_FILE))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads the first kept sequence (1 when retention never ran).
pub fn read_first(dir: &Path) -> Result<u64, Error> {
    let bytes = match std::fs::read(dir.join(FIRST_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(1),
        Err(e) => return Err(e.into()),
    };
    let valid = bytes.len() == 20
        && &bytes[..8] == FIRST_MAGIC
        && crc32c::crc32c(&bytes[..16]).to_le_bytes() == bytes[16..20];
    if !valid {
        return Err(corrupt(dir, format!("{} is damaged", dir.join(FIRST_FILE).display())));
    }
    Ok(u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()))
}

/// Opens the log in `data_dir/log`, recovering its tail; `acked` is the newest sequence the
/// ack record says was acknowledged (the tail is never cut below it).
pub fn open(data_dir: &Path, acked: u64, segment_bytes: u64) -> Result<(LogWriter, Opened), Error> {
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let first_kept = read_first(&dir)?;
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name();
        if let Some(first) = name.to_str().and_then(segment::parse_name) {
            starts.push(first);
        }
    }
    starts.sort_unstable();
    let mut segments = BTreeMap::new();
    if starts.is_empty() {
        if acked >= first_kept {
            return Err(corrupt(
                &dir,
                format!(
                    "the log in {} holds no segment but sequence {acked} was acknowledged",
                    dir.display()
                ),
            ));
        }
        let segment = Segment::open(&dir, first_kept, true)?;
        File::open(&dir)?.sync_all()?;
        segments.insert(first_kept, Arc::new(segment));
    } else {
        if starts[0] > first_kept {
            return Err(corrupt(
                &dir,
                format!(
                    "segment {}: sequences {first_kept} to {} are missing (a segment file is gone)",
                    segment::paths(&dir, starts[0]).0.display(),
                    starts[0] - 1
                ),
            ));
        }
        for (i, &first) in starts.iter().enumerate() {
            let segment = Segment::open(&dir, first, false)?;
            if let Some(&next) = starts.get(i + 1) {
                check_sealed(&dir, &segment, next)?;
            }
            segments.insert(first, Arc::new(segment));
        }
    }
    let active = segments
        .values()
        .next_back()
        .cloned()
        .ok_or_else(|| Error::Corrupt("no segment".into()))?;
    let (end, last) = recover_tail(&dir, &active, acked)?;
    if acked > last {
        return Err(corrupt(
            &dir,
            format!(
                "segment {}: the log ends at sequence {last} but sequence {acked} was acknowledged; \
                 the first unreadable sequence is {}",
                active.path.display(),
                last + 1
            ),
        ));
    }
    let reader = LogReader { dir, segments: Arc::new(RwLock::new(segments)) };
    let writer = LogWriter {
        reader,
        active,
        end,
        next: last + 1,
        segment_bytes: segment_bytes.clamp(4096, MAX_SEGMENT_BYTES),
        frames: Vec::new(),
        entries: Vec::new(),
    };
    let first = first_kept.max(writer.reader.segment_starts()[0]);
    Ok((writer, Opened { first, last }))
}

/// A sealed segment must hold exactly the sequences up to the next segment's first, with an
/// offset file to match; a missing offset file is rebuilt from the data.
fn check_sealed(dir: &Path, segment: &Segment, next: u64) -> Result<(), Error> {
    let expected = next.saturating_sub(segment.first);
    // Cheap at open: the offset file has one entry per record and its last entry ends where
    // the data file ends (a cut or grown data file shows here without reading it).
    if segment.offset_entries()? == expected
        && expected > 0
        && segment.entries_end(expected)? == Some(segment.data_len()?)
    {
        return Ok(());
    }
    let scan = segment.scan()?;
    let found = scan.entries.len() as u64;
    if found != expected || scan.valid_end != scan.file_len {
        return Err(corrupt(
            dir,
            format!(
                "segment {}: the first unreadable sequence is {} (it holds {found} whole records of {expected})",
                segment.path.display(),
                segment.first + found
            ),
        ));
    }
    segment.write_offsets(&scan.entries)?;
    tracing::warn!(segment = %segment.path.display(), "rebuilt a segment's offset file from its records");
    Ok(())
}

/// Scans the last segment: rebuilds its offsets and cuts a torn tail that holds nothing
/// acknowledged. Returns the end of its whole records and its last sequence.
fn recover_tail(dir: &Path, active: &Segment, acked: u64) -> Result<(u64, u64), Error> {
    let scan = active.scan()?;
    let last = active.first + scan.entries.len() as u64 - 1;
    if scan.valid_end < scan.file_len {
        let unreadable = last + 1;
        if unreadable <= acked {
            let what = if scan.damaged { "is damaged" } else { "is cut short" };
            return Err(corrupt(
                dir,
                format!(
                    "segment {}: the record of acknowledged sequence {unreadable} {what} (at byte {})",
                    active.path.display(),
                    scan.valid_end
                ),
            ));
        }
        tracing::warn!(
            segment = %active.path.display(),
            cut = scan.file_len - scan.valid_end,
            last_sequence = last,
            "cut a torn tail of unacknowledged bytes from the log"
        );
        active.truncate(scan.valid_end)?;
    }
    active.write_offsets(&scan.entries)?;
    Ok((scan.valid_end, last))
}

/// Syncs one segment's data file; taken from [`LogWriter::sync_handle`].
#[derive(Clone)]
pub struct SegmentSync(Arc<Segment>);

impl SegmentSync {
    /// fdatasync of the segment: everything appended to it so far survives a power loss.
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.0.sync_data()?)
    }

    /// Whether both handles sync the same segment.
    pub fn same(&self, other: &SegmentSync) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl LogWriter {
    /// A handle for readers.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// The next sequence the log expects.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Refuses (with [`Error::DiskFull`]) an append of about `bytes` that would leave the
    /// log's file system less free space than [`headroom`] keeps for what is derived from the
    /// log (the index, which is written after the log and must not meet a full disk the log
    /// made). Nothing is written either way.
    pub fn room_for(&self, bytes: u64) -> Result<(), Error> {
        let (free, size) = free_space(&self.reader.dir)?;
        if free < bytes.saturating_add(headroom(size)) {
            return Err(Error::DiskFull);
        }
        Ok(())
    }

    /// Appends records of consecutive sequences starting at [`LogWriter::next`], in one write.
    /// On failure nothing of them stays in the log.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), Error> {
        self.frames.clear();
        self.entries.clear();
        let mut seq = self.next;
        for (sequence, payload) in records {
            if sequence != seq {
                return Err(Error::Corrupt(format!(
                    "log append of sequence {sequence}, expected {seq}"
                )));
            }
            let offset = self.end + self.frames.len() as u64;
            record::encode_into(&mut self.frames, sequence, payload);
            segment::push_entry(
                &mut self.entries,
                offset as u32,
                record::framed_len(payload.len()) as u32,
            );
            seq += 1;
        }
        if seq == self.next {
            return Ok(());
        }
        if self.end > 0 && self.end + self.frames.len() as u64 > self.segment_bytes {
            self.roll()?;
            // Offsets were computed for the old segment; recompute for the new one.
            self.entries.clear();
            let mut at = 0usize;
            while at < self.frames.len() {
                let record::Frame::Whole { len, .. } = record::parse(&self.frames[at..]) else {
                    return Err(Error::Corrupt("a frame just encoded does not parse".into()));
                };
                segment::push_entry(&mut self.entries, at as u32, len as u32);
                at += len;
            }
        }
        let index = self.next - self.active.first;
        // The first record's checksum is written last, on its own: until the whole round is in
        // the file, its first record does not check out, so a kill in the middle of the round's
        // write (the kernel may stop a write between pages) leaves no whole record of it, and
        // recovery cuts the round entirely instead of keeping part of a batch.
        let checksum: [u8; 4] = self.frames[4..8].try_into().unwrap_or_default();
        self.frames[4..8].copy_from_slice(&(!u32::from_le_bytes(checksum)).to_le_bytes());
        let written = self
            .active
            .append(self.end, &self.frames, index, &self.entries)
            .and_then(|()| self.active.patch(self.end + 4, &checksum));
        if let Err(err) = written {
            if let Err(cut) = self.active.cut(self.end, index) {
                tracing::error!(error = %cut, "cannot cut a failed append back out of the log");
            }
            return Err(err.into());
        }
        self.end += self.frames.len() as u64;
        self.next = seq;
        Ok(())
    }

    /// After a failed append: scans the active segment's tail again (cutting whatever a
    /// failed write left behind, never at or below `acked`) and continues after its last
    /// whole record.
    pub fn recover(&mut self, acked: u64) -> Result<(), Error> {
        let (end, last) = recover_tail(&self.reader.dir, &self.active, acked)?;
        self.end = end;
        self.next = last + 1;
        Ok(())
    }

    /// fdatasync of the active segment: everything appended so far survives a power loss.
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.active.sync_data()?)
    }

    /// A handle that syncs the active segment later, from another thread (a segment sealed
    /// in between was synced when it was sealed).
    pub fn sync_handle(&self) -> SegmentSync {
        SegmentSync(self.active.clone())
    }

    /// Seals the active segment and starts a new one at the next sequence.
    fn roll(&mut self) -> Result<(), Error> {
        self.active.seal()?;
        let segment = Arc::new(Segment::open(&self.reader.dir, self.next, true)?);
        File::open(&self.reader.dir)?.sync_all()?;
        self.reader
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.next, segment.clone());
        self.active = segment;
        self.end = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn append(writer: &mut LogWriter, seqs: std::ops::RangeInclusive<u64>) {
        let payloads: Vec<(u64, Vec<u8>)> =
            seqs.map(|s| (s, format!("event {s}").into_bytes())).collect();
        writer.append(payloads.iter().map(|(s, p)| (*s, p.as_slice()))).unwrap();
        writer.sync().unwrap();
    }

    #[test]
    fn records_read_back_across_segments_and_reopen_continues_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, opened) = open(dir.path(), 0, 4096).unwrap();
        assert_eq!((opened.first, opened.last), (1, 0));
        for round in 0..50u64 {
            append(&mut writer, round * 10 + 1..=round * 10 + 10);
        }
        let reader = writer.reader();
        assert!(reader.segment_starts().len() > 1, "small segments roll");
        for s in 1..=500 {
            assert_eq!(reader.read(s).unwrap().unwrap(), format!("event {s}").into_bytes());
        }
        assert_eq!(reader.read(501).unwrap(), None);
        // Runs read in one go per segment, across segment boundaries too.
        for (first, last) in [(1, 500), (7, 7), (95, 321), (499, 500)] {
            let run = reader.expect_run(first, last).unwrap();
            let expected: Vec<Vec<u8>> =
                (first..=last).map(|s| format!("event {s}").into_bytes()).collect();
            assert_eq!(run.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), expected);
        }
        assert!(reader.expect_run(499, 501).is_err(), "501 was never written");
        drop(writer);
        let (writer, opened) = open(dir.path(), 500, 4096).unwrap();
        assert_eq!((opened.first, opened.last, writer.next()), (1, 500, 501));
    }

    #[test]
    fn a_torn_tail_is_cut_unless_it_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = open(dir.path(), 0, DEFAULT_SEGMENT_BYTES).unwrap();
        append(&mut writer, 1..=3);
        let path = writer.active.path.clone();
        drop(writer);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 2).unwrap();
        let refused = open(dir.path(), 3, DEFAULT_SEGMENT_BYTES).unwrap_err().to_string();
        assert!(
            refused.contains("acknowledged sequence 3") && refused.contains("eventsd check"),
            "{refused}"
        );
        let (writer, opened) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!((opened.last, writer.next()), (2, 3));
    }

    #[test]
    fn an_append_cut_before_its_checksum_is_written_is_cut_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = open(dir.path(), 0, DEFAULT_SEGMENT_BYTES).unwrap();
        append(&mut writer, 1..=3);
        let at = writer.end;
        append(&mut writer, 4..=8);
        let path = writer.active.path.clone();
        drop(writer);
        // As a kill between the round's write and its first checksum leaves it: records 5–8
        // whole, record 4's checksum not yet written.
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut crc = [0u8; 4];
        file.read_exact_at(&mut crc, at + 4).unwrap();
        file.write_all_at(&(!u32::from_le_bytes(crc)).to_le_bytes(), at + 4).unwrap();
        let (writer, opened) = open(dir.path(), 3, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!((opened.last, writer.next()), (3, 4), "the whole round is cut, not 5–8 kept");
        let reader = writer.reader();
        assert_eq!(reader.read(4).unwrap(), None);
        assert_eq!(reader.read(3).unwrap().unwrap(), b"event 3".to_vec());
    }

    #[test]
    fn retention_deletes_only_segments_wholly_below_the_first_kept_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = open(dir.path(), 0, 4096).unwrap();
        for round in 0..60u64 {
            append(&mut writer, round * 10 + 1..=round * 10 + 10);
        }
        let reader = writer.reader();
        let starts = reader.segment_starts();
        let first = starts[2] + 1;
        reader.set_first(first).unwrap();
        assert_eq!(reader.delete_below(first).unwrap(), 2);
        assert_eq!(reader.segment_starts()[0], starts[2]);
        drop(writer);
        let (_, opened) = open(dir.path(), 600, 4096).unwrap();
        assert_eq!((opened.first, opened.last), (first, 600));
    }
}
