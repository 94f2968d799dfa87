//! One segment of the event log: a data file of records and a dense offset file beside it.
//!
//! `log/<first sequence, 20 digits>.seg` holds records (see `record.rs`) of consecutive
//! sequences starting at the name's; `<same>.idx` holds one 8-byte entry per record (its
//! byte offset and framed length, u32 LE each), so a read by sequence is two `pread`s and
//! needs no key per event anywhere else. The offset file is derived: it is written after the
//! data, never synced on the acknowledgement path, and rebuilt from the data file whenever it
//! does not match (after a crash, or if it is lost).

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::log::record::{self, Frame};

/// Bytes per offset entry.
pub const ENTRY: u64 = 8;

/// An open segment. Reads take `&self` (positioned reads), so one handle serves every thread.
#[derive(Debug)]
pub struct Segment {
    /// The sequence of its first record.
    pub first: u64,
    /// The data file's path (named in errors).
    pub path: PathBuf,
    data: File,
    offsets: File,
}

/// What a scan of a segment's data file found.
#[derive(Debug)]
pub struct Scan {
    /// (offset, framed length) of each whole record, in order.
    pub entries: Vec<(u32, u32)>,
    /// Where the whole records end.
    pub valid_end: u64,
    /// The data file's length.
    pub file_len: u64,
    /// Whether the bytes after `valid_end` are a record that is damaged (as opposed to the
    /// torn start of one, cut short by the end of the file).
    pub damaged: bool,
}

/// The file names of the segment starting at `first`.
pub fn paths(dir: &Path, first: u64) -> (PathBuf, PathBuf) {
    (dir.join(format!("{first:020}.seg")), dir.join(format!("{first:020}.idx")))
}

/// The first sequence a segment file name stands for.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

impl Segment {
    /// Opens (or with `create`, creates) the segment starting at `first` in `dir`.
    pub fn open(dir: &Path, first: u64, create: bool) -> io::Result<Segment> {
        let (data_path, offsets_path) = paths(dir, first);
        let data = OpenOptions::new().read(true).write(true).create(create).open(&data_path)?;
        let offsets = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(offsets_path)?;
        Ok(Segment { first, path: data_path, data, offsets })
    }

    /// The data file's length.
    pub fn data_len(&self) -> io::Result<u64> {
        Ok(self.data.metadata()?.len())
    }

    /// How many entries the offset file holds.
    pub fn offset_entries(&self) -> io::Result<u64> {
        Ok(self.offsets.metadata()?.len() / ENTRY)
    }

    /// Where the record of entry `count - 1` ends by the offset file, if it has that entry.
    pub fn entries_end(&self, count: u64) -> io::Result<Option<u64>> {
        let Some(index) = count.checked_sub(1) else { return Ok(Some(0)) };
        let mut entry = [0u8; ENTRY as usize];
        match self.offsets.read_exact_at(&mut entry, index * ENTRY) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let offset = u32::from_le_bytes(entry[..4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(entry[4..].try_into().unwrap_or_default());
        Ok(Some(u64::from(offset) + u64::from(len)))
    }

    /// The offset file's entries as stored.
    pub fn stored_offsets(&self) -> io::Result<Vec<(u32, u32)>> {
        let mut bytes = Vec::new();
        let mut reader = &self.offsets;
        io::Read::read_to_end(&mut reader, &mut bytes)?;
        io::Seek::seek(&mut reader, io::SeekFrom::Start(0))?;
        Ok(bytes
            .chunks_exact(ENTRY as usize)
            .map(|c| {
                let offset = u32::from_le_bytes(c[..4].try_into().unwrap_or_default());
                (offset, u32::from_le_bytes(c[4..].try_into().unwrap_or_default()))
            })
            .collect())
    }

    /// Reads the whole data file and finds its records, expecting sequences from `first` on.
    /// Stops at the first byte that is not a whole record of the next sequence.
    pub fn scan(&self) -> io::Result<Scan> {
        let file_len = self.data_len()?;
        let mut bytes = Vec::with_capacity(file_len as usize);
        let mut reader = &self.data;
        io::Read::read_to_end(&mut reader, &mut bytes)?;
        // read_to_end reads from the file position; positioned writes never move it, so
        // rewind explicitly for the next scan.
        io::Seek::seek(&mut reader, io::SeekFrom::Start(0))?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        let mut damaged = false;
        while at < bytes.len() {
            match record::parse(&bytes[at..]) {
                Frame::Whole { sequence, len, .. }
                    if sequence == self.first + entries.len() as u64 =>
                {
                    entries.push((at as u32, len as u32));
                    at += len;
                }
                Frame::Short => break,
                Frame::Whole { .. } | Frame::Bad => {
                    damaged = true;
                    break;
                }
            }
        }
        Ok(Scan { entries, valid_end: at as u64, file_len, damaged })
    }

    /// Replaces the offset file with these entries.
    pub fn write_offsets(&self, entries: &[(u32, u32)]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * ENTRY as usize);
        for &(offset, len) in entries {
            push_entry(&mut buf, offset, len);
        }
        self.offsets.set_len(0)?;
        self.offsets.write_all_at(&buf, 0)
    }

    /// Cuts the data file back to `len` bytes and makes that durable.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.data.set_len(len)?;
        self.data.sync_all()
    }

    /// Appends framed records at byte `at` of the data file, and their offset entries after
    /// the first `index` entries of the offset file.
    pub fn append(&self, at: u64, frames: &[u8], index: u64, entries: &[u8]) -> io::Result<()> {
        self.data.write_all_at(frames, at)?;
        self.offsets.write_all_at(entries, index * ENTRY)
    }

    /// Overwrites `bytes` at `at` in the data file (a record's held-back checksum).
    pub fn patch(&self, at: u64, bytes: &[u8]) -> io::Result<()> {
        self.data.write_all_at(bytes, at)
    }

    /// Undoes a failed append: the data file back to `len` bytes, the offsets to `index`.
    pub fn cut(&self, len: u64, index: u64) -> io::Result<()> {
        self.data.set_len(len)?;
        self.offsets.set_len(index * ENTRY)
    }

    /// fdatasync of the data file (the offset file is derived and rebuilt if torn).
    pub fn sync_data(&self) -> io::Result<()> {
        self.data.sync_data()
    }

    /// Syncs both files (when the segment is sealed and a new one starts).
    pub fn seal(&self) -> io::Result<()> {
        self.data.sync_data()?;
        self.offsets.sync_data()
    }

    /// The stored bytes of `sequence`, checked against their frame.
    pub fn read(&self, sequence: u64) -> Result<Bytes, ReadError> {
        let mut run = self.read_run(sequence, 1)?;
        run.pop().ok_or(ReadError::Missing)
    }

    /// The stored bytes of `count` consecutive records from `first`, each checked against its
    /// frame: one read of their offset entries and one of their frames, which follow each
    /// other in the file.
    pub fn read_run(&self, first: u64, count: usize) -> Result<Vec<Bytes>, ReadError> {
        let index = first.checked_sub(self.first).ok_or(ReadError::Missing)?;
        let mut entries = vec![0u8; count * ENTRY as usize];
        self.offsets.read_exact_at(&mut entries, index * ENTRY).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::Missing,
            _ => ReadError::Io(e),
        })?;
        let spans: Vec<(u64, usize)> = entries
            .chunks_exact(ENTRY as usize)
            .map(|entry| {
                let offset = u32::from_le_bytes(entry[..4].try_into().unwrap_or_default());
                let len = u32::from_le_bytes(entry[4..].try_into().unwrap_or_default());
                (u64::from(offset), len as usize)
            })
            .collect();
        let (Some(&(start, _)), Some(&(last, last_len))) = (spans.first(), spans.last()) else {
            return Ok(Vec::new());
        };
        let contiguous = spans.windows(2).all(|w| w[0].0 + w[0].1 as u64 == w[1].0);
        if !contiguous || spans.iter().any(|&(_, len)| len < record::HEADER) {
            return Err(ReadError::Damaged);
        }
        let mut frames = vec![0u8; (last - start) as usize + last_len];
        self.data.read_exact_at(&mut frames, start).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::Damaged,
            _ => ReadError::Io(e),
        })?;
        let frames = Bytes::from(frames);
        let mut out = Vec::with_capacity(count);
        for (i, &(offset, len)) in spans.iter().enumerate() {
            let at = (offset - start) as usize;
            let frame = frames.slice(at..at + len);
            let whole = matches!(
                record::parse(&frame),
                Frame::Whole { sequence: found, len: framed, .. }
                    if found == first + i as u64 && framed == len
            );
            if !whole {
                return Err(ReadError::Damaged);
            }
            // The payload, sharing the one buffer read.
            out.push(frame.slice(record::HEADER..));
        }
        Ok(out)
    }
}

/// Appends one offset entry to `buf`.
pub fn push_entry(buf: &mut Vec<u8>, offset: u32, len: u32) {
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
}

/// Why a record could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// No record of that sequence in this segment.
    Missing,
    /// The record's bytes do not check out.
    Damaged,
    /// The file could not be read.
    Io(io::Error),
}
