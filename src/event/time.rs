//! Timestamps: validation, the clock, and the order-preserving byte form used in index keys.

use prost_types::Timestamp;

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range proto3 JSON allows.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// Width of [`to_key`]'s output.
pub const KEY_LEN: usize = 12;

/// Checks that a timestamp is one proto3 JSON can print: years 0001–9999, nanos in range.
pub fn validate(ts: &Timestamp) -> Result<(), String> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err("must lie within years 0001 to 9999".into());
    }
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err("nanos must be 0 to 999,999,999".into());
    }
    Ok(())
}

/// The current time.
pub fn now() -> Timestamp {
    from_chrono(chrono::Utc::now())
}

/// Converts a chrono time.
pub fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// Converts to chrono; `None` outside chrono's range (validated timestamps never are).
pub fn to_chrono(ts: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// RFC 3339 text with a `Z` suffix, fractional seconds only when there are any.
pub fn to_rfc3339(ts: &Timestamp) -> String {
    to_chrono(ts)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the fraction dropped, as Omise and KOMOJU print times.
pub fn to_rfc3339_seconds(ts: &Timestamp) -> String {
    to_rfc3339(&Timestamp { seconds: ts.seconds, nanos: 0 })
}

/// The latest valid timestamp, 9999-12-31T23:59:59.999999999Z.
pub fn max() -> Timestamp {
    Timestamp { seconds: MAX_SECONDS, nanos: 999_999_999 }
}

/// 1970-01-01T00:00:00Z.
pub fn epoch() -> Timestamp {
    Timestamp { seconds: 0, nanos: 0 }
}

/// Order-preserving bytes: byte-wise comparison of keys equals time comparison.
pub fn to_key(ts: &Timestamp) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..8].copy_from_slice(&((ts.seconds as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&(ts.nanos.max(0) as u32).to_be_bytes());
    key
}

/// The timestamp [`to_key`] encoded, if `key` is such an encoding.
pub fn from_key(key: &[u8]) -> Option<Timestamp> {
    let seconds: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let nanos: [u8; 4] = key.get(8..KEY_LEN)?.try_into().ok()?;
    Some(Timestamp {
        seconds: (u64::from_be_bytes(seconds) ^ (1 << 63)) as i64,
        nanos: u32::from_be_bytes(nanos) as i32,
    })
}

/// Orders two timestamps.
pub fn cmp(a: &Timestamp, b: &Timestamp) -> std::cmp::Ordering {
    (a.seconds, a.nanos).cmp(&(b.seconds, b.nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_times_across_the_epoch() {
        let times = [
            Timestamp { seconds: MIN_SECONDS, nanos: 0 },
            Timestamp { seconds: -1, nanos: 999_999_999 },
            Timestamp { seconds: 0, nanos: 0 },
            Timestamp { seconds: 0, nanos: 1 },
            Timestamp { seconds: 1_700_000_000, nanos: 5 },
            Timestamp { seconds: MAX_SECONDS, nanos: 999_999_999 },
        ];
        for pair in times.windows(2) {
            assert!(to_key(&pair[0]) < to_key(&pair[1]));
        }
    }
}
