//! One record of the event log: a frame of its own around one stored event.
//!
//! ```text
//! | len u32 LE | crc32c u32 LE | sequence u64 LE | payload (len bytes) |
//! ```
//! The checksum (CRC32C, Castagnoli) covers the sequence and the payload, so a record that
//! was torn, overwritten or read from the wrong place never passes as another. The payload is
//! the event exactly as it was encoded once, at publish; the log never looks inside it.

/// Bytes before the payload.
pub const HEADER: usize = 16;

/// The largest payload a record may claim: anything larger is damage, not an event (requests
/// are limited to a few MiB).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Appends the frame of `payload` under `sequence` to `buf`.
pub fn encode_into(buf: &mut Vec<u8>, sequence: u64, payload: &[u8]) {
    let seq = sequence.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq), payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq);
    buf.extend_from_slice(payload);
}

/// The framed length of a payload of `len` bytes.
pub fn framed_len(len: usize) -> usize {
    HEADER + len
}

/// What the bytes at a record's start hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record: its sequence, payload and framed length.
    Whole {
        /// The record's sequence.
        sequence: u64,
        /// The stored event bytes.
        payload: &'a [u8],
        /// Header plus payload.
        len: usize,
    },
    /// The bytes end before the record does (a torn tail, or a short read).
    Short,
    /// The frame is malformed or its checksum fails.
    Bad,
}

/// Parses the record at the start of `buf`.
pub fn parse(buf: &[u8]) -> Frame<'_> {
    let Some(header) = buf.get(..HEADER) else { return Frame::Short };
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
    let seq_bytes: [u8; 8] = header[8..16].try_into().unwrap_or_default();
    if len > MAX_PAYLOAD {
        return Frame::Bad;
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else { return Frame::Short };
    if crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload) != crc {
        return Frame::Bad;
    }
    Frame::Whole { sequence: u64::from_le_bytes(seq_bytes), payload, len: HEADER + len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 42, b"an event");
        assert_eq!(
            parse(&buf),
            Frame::Whole { sequence: 42, payload: b"an event", len: buf.len() }
        );
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse(&damaged), Frame::Whole { sequence: 42, payload: b"an event", .. }),
                "bit {bit} went unnoticed"
            );
        }
        assert_eq!(parse(&buf[..buf.len() - 1]), Frame::Short);
        assert_eq!(parse(&buf[..3]), Frame::Short);
    }
}
