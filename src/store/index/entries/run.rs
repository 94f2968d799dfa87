//! One sorted run: an immutable file of index entries in byte order, written once (by a flush
//! of a memtable or a merge of runs) and read with `pread`, never mapped, so the page cache
//! holds it rather than the process.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! block*   crc32c(4) count(2) then count × (len(2) entry)     at most BLOCK_BYTES each
//! fences   per block: offset(8) len(4) first-entry-len(2) first-entry
//! footer   fences-offset(8) fences-len(8) entries(8) through(8) last(8) fences-crc32c(4)
//!          MAGIC(4)
//! ```
//!
//! Promises: a run is complete or absent (it is written under a temporary name, synced, then
//! renamed by its owner); every block and the fence table are checksummed, and a damaged one
//! is an error naming the file and `eventsd reindex`, never a wrong answer. In memory a run is
//! its fence table: one entry per block (~200 entries), so ~0.5% of the file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::Error;

/// Target size of a block: a seek reads one.
pub const BLOCK_BYTES: usize = 8 * 1024;
const MAGIC: &[u8; 4] = b"ERN2";
const FOOTER: usize = 48;
const BLOCK_HEADER: usize = 6;

/// Where a block is and the first entry it holds.
struct Fence {
    offset: u64,
    len: u32,
    first: Box<[u8]>,
}

/// An open run.
pub struct Run {
    /// The run's number (its file name).
    pub id: u64,
    path: PathBuf,
    file: File,
    fences: Vec<Fence>,
    /// Entries in the run.
    pub entries: u64,
    /// Every entry of a sequence at or below this was in the memtables the run was made from.
    pub through: u64,
    /// The highest sequence of an entry in the run: once the first kept sequence passes it,
    /// every entry in the run is dead.
    pub last: u64,
}

/// The entries of one block, sharing its bytes.
pub struct Block {
    bytes: Bytes,
    /// (start, len) of each entry in `bytes`.
    at: Vec<(u32, u16)>,
}

impl Block {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Entry `i`, sharing the block's bytes.
    pub fn get(&self, i: usize) -> Bytes {
        let (start, len) = self.at[i];
        self.bytes.slice(start as usize..start as usize + len as usize)
    }

    /// Entry `i` as a slice.
    pub fn peek(&self, i: usize) -> &[u8] {
        let (start, len) = self.at[i];
        &self.bytes[start as usize..start as usize + len as usize]
    }
}

/// Writes sorted entries into a new run file at `path` (synced before it returns). Entries
/// must be given in ascending byte order, none longer than `u16::MAX` bytes.
/// `seq_of` gives an entry's sequence.
pub fn write<E: AsRef<[u8]>>(
    path: &Path,
    entries: impl Iterator<Item = Result<E, Error>>,
    through: u64,
    seq_of: fn(&[u8]) -> u64,
) -> Result<u64, Error> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut fences: Vec<u8> = Vec::new();
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK_BYTES);
    let mut first: Vec<u8> = Vec::new();
    let mut count = 0u16;
    let mut offset = 0u64;
    let mut total = 0u64;
    let mut last = 0u64;
    let mut end_block = |block: &mut Vec<u8>,
                         count: &mut u16,
                         first: &[u8],
                         out: &mut BufWriter<File>|
     -> Result<(), Error> {
        if *count == 0 {
            return Ok(());
        }
        let mut header = [0u8; BLOCK_HEADER];
        header[4..6].copy_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[4..6]), block);
        header[..4].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&header)?;
        out.write_all(block)?;
        let len = (BLOCK_HEADER + block.len()) as u32;
        fences.extend_from_slice(&offset.to_le_bytes());
        fences.extend_from_slice(&len.to_le_bytes());
        fences.extend_from_slice(&(first.len() as u16).to_le_bytes());
        fences.extend_from_slice(first);
        offset += u64::from(len);
        block.clear();
        *count = 0;
        Ok(())
    };
    for entry in entries {
        let entry = entry?;
        let entry = entry.as_ref();
        last = last.max(seq_of(entry));
        let len = u16::try_from(entry.len())
            .map_err(|_| Error::Corrupt(format!("an index entry of {} bytes", entry.len())))?;
        if count > 0 && (block.len() + 2 + entry.len() > BLOCK_BYTES || count == u16::MAX) {
            end_block(&mut block, &mut count, &first, &mut out)?;
        }
        if count == 0 {
            first.clear();
            first.extend_from_slice(entry);
        }
        block.extend_from_slice(&len.to_le_bytes());
        block.extend_from_slice(entry);
        count += 1;
        total += 1;
    }
    end_block(&mut block, &mut count, &first, &mut out)?;
    let mut footer = [0u8; FOOTER];
    footer[0..8].copy_from_slice(&offset.to_le_bytes());
    footer[8..16].copy_from_slice(&(fences.len() as u64).to_le_bytes());
    footer[16..24].copy_from_slice(&total.to_le_bytes());
    footer[24..32].copy_from_slice(&through.to_le_bytes());
    footer[32..40].copy_from_slice(&last.to_le_bytes());
    footer[40..44].copy_from_slice(&crc32c::crc32c(&fences).to_le_bytes());
    footer[44..48].copy_from_slice(MAGIC);
    out.write_all(&fences)?;
    out.write_all(&footer)?;
    let file = out.into_inner().map_err(|e| Error::from(e.into_error()))?;
    file.sync_data()?;
    Ok(total)
}

impl Run {
    /// Opens a run file and reads its fence table.
    pub fn open(path: &Path, id: u64) -> Result<Run, Error> {
        let damaged = |what: &str| {
            Error::Corrupt(format!(
                "index run {}: {what}; rebuild the index with `eventsd reindex`",
                path.display()
            ))
        };
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        if size < FOOTER as u64 {
            return Err(damaged("shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, size - FOOTER as u64)?;
        let word = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().unwrap_or([0; 8]));
        if &footer[44..48] != MAGIC {
            return Err(damaged("no footer"));
        }
        let (fences_at, fences_len, entries) = (word(0), word(8), word(16));
        let (through, last) = (word(24), word(32));
        if fences_at.checked_add(fences_len) != Some(size - FOOTER as u64) {
            return Err(damaged("its footer does not match its size"));
        }
        let mut table = vec![0u8; fences_len as usize];
        file.read_exact_at(&mut table, fences_at)?;
        let crc = u32::from_le_bytes(footer[40..44].try_into().unwrap_or([0; 4]));
        if crc32c::crc32c(&table) != crc {
            return Err(damaged("its fence table fails its checksum"));
        }
        let mut fences = Vec::new();
        let mut at = 0usize;
        while at < table.len() {
            let fixed = table.get(at..at + 14).ok_or_else(|| damaged("a cut fence"))?;
            let offset = u64::from_le_bytes(fixed[0..8].try_into().unwrap_or([0; 8]));
            let len = u32::from_le_bytes(fixed[8..12].try_into().unwrap_or([0; 4]));
            let first_len = u16::from_le_bytes(fixed[12..14].try_into().unwrap_or([0; 2]));
            let first = table
                .get(at + 14..at + 14 + first_len as usize)
                .ok_or_else(|| damaged("a cut fence"))?;
            if offset.saturating_add(u64::from(len)) > fences_at {
                return Err(damaged("a fence points past the blocks"));
            }
            fences.push(Fence { offset, len, first: first.into() });
            at += 14 + first_len as usize;
        }
        Ok(Run { id, path: path.to_path_buf(), file, fences, entries, through, last })
    }

    /// The run's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.fences.len()
    }

    /// The block that holds the last entry at or below `bytes` (or would): the last block
    /// whose first entry is at or below it, or 0.
    pub fn block_at_or_below(&self, bytes: &[u8]) -> usize {
        self.fences.partition_point(|f| &*f.first <= bytes).saturating_sub(1)
    }

    /// Reads and checks block `i`.
    pub fn block(&self, i: usize) -> Result<Block, Error> {
        let fence = &self.fences[i];
        let damaged = |what: &str| {
            Error::Corrupt(format!(
                "index run {}: block {i} {what}; rebuild the index with `eventsd reindex`",
                self.path.display()
            ))
        };
        let mut buf = vec![0u8; fence.len as usize];
        self.file.read_exact_at(&mut buf, fence.offset)?;
        if buf.len() < BLOCK_HEADER {
            return Err(damaged("is cut short"));
        }
        let crc = u32::from_le_bytes(buf[0..4].try_into().unwrap_or([0; 4]));
        if crc32c::crc32c(&buf[4..]) != crc {
            return Err(damaged("fails its checksum"));
        }
        let count = u16::from_le_bytes(buf[4..6].try_into().unwrap_or([0; 2])) as usize;
        let mut at = Vec::with_capacity(count);
        let mut p = BLOCK_HEADER;
        for _ in 0..count {
            let len = buf
                .get(p..p + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| damaged("is cut short"))?;
            if p + 2 + len as usize > buf.len() {
                return Err(damaged("is cut short"));
            }
            at.push(((p + 2) as u32, len));
            p += 2 + len as usize;
        }
        Ok(Block { bytes: Bytes::from(buf), at })
    }
}
