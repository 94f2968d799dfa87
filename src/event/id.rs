//! Event ids: the accepted alphabet, and generation of ids in the Omise shape.
//!
//! Generated ids match `/evnt(_test)?_[0-9a-z]+/`: the commit time in milliseconds, then 50
//! random bits, both in lowercase base36, so ids sort roughly by time and never collide in
//! practice (the committer still checks).
//!
//! The embedded store's ids also end with the event's sequence ([`generate_at`]): such an id
//! locates its event in the log by itself ([`sequence_of`]), so the index keeps no id entry
//! for it. A reader of the id still checks that the event at that sequence has exactly that
//! id; anything else (a caller's id of the same shape, say) is looked up in the index.

/// Checks a caller-supplied id: 1–128 characters of `[A-Za-z0-9_.:-]`.
pub fn validate(id: &str) -> Result<(), String> {
    crate::event::validate_token(id, &['_', '.', ':', '-'])
}

/// A new id: `evnt_` (live) or `evnt_test_` (test), the time in ms and random bits in base36.
pub fn generate(livemode: bool, unix_millis: u64) -> String {
    let random = random_bits();
    let prefix = if livemode { "evnt_" } else { "evnt_test_" };
    // 50 bits take at most 10 base36 digits; pad so the random part has a fixed width.
    format!("{prefix}{}{:0>10}", base36(unix_millis), base36(random))
}

/// Width of the time part of [`generate_at`] ids: 9 base36 digits hold any millisecond
/// until the year 5138.
const TIME_DIGITS: usize = 9;
/// Width of the random part (50 bits).
const RANDOM_DIGITS: usize = 10;
/// Most base36 digits of a u64.
const MAX_SEQ_DIGITS: usize = 13;

/// A new id for the event committed at `sequence`: `evnt_` (live) or `evnt_test_` (test),
/// then the time in ms (9 digits), 50 random bits (10 digits) and the sequence, in base36.
pub fn generate_at(livemode: bool, unix_millis: u64, sequence: u64) -> String {
    let prefix = if livemode { "evnt_" } else { "evnt_test_" };
    format!(
        "{prefix}{:0>TIME_DIGITS$}{:0>RANDOM_DIGITS$}{}",
        base36(unix_millis),
        base36(random_bits()),
        base36(sequence)
    )
}

/// The sequence an id of the [`generate_at`] shape names, whatever its mode; `None` for any
/// other id. Only a hint: the event at that sequence must still have this id.
pub fn sequence_of(id: &str) -> Option<u64> {
    let rest = id.strip_prefix("evnt_test_").or_else(|| id.strip_prefix("evnt_"))?;
    let digits = rest.get(TIME_DIGITS + RANDOM_DIGITS..)?;
    if digits.is_empty() || digits.len() > MAX_SEQ_DIGITS || digits.starts_with('0') {
        return None;
    }
    digits.bytes().try_fold(0u64, |n, c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        n.checked_mul(36)?.checked_add(u64::from(d))
    })
}

fn random_bits() -> u64 {
    let mut bytes = [0u8; 8];
    // getrandom only fails when the OS has no entropy source at all; the time and the
    // sequence still keep ids unique, and the committer re-checks.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) & ((1 << 50) - 1)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_match_the_omise_pattern_and_validate() {
        for live in [true, false] {
            let id = generate(live, 1_700_000_000_000);
            let rest = id.strip_prefix(if live { "evnt_" } else { "evnt_test_" }).expect("prefix");
            assert!(!rest.is_empty());
            assert!(rest.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
            validate(&id).expect("generated id is valid");
        }
    }

    #[test]
    fn ids_generated_at_a_sequence_name_it_and_nothing_else_does() {
        for live in [true, false] {
            for seq in [1, 35, 36, 1_000_000, u64::MAX] {
                let id = generate_at(live, 1_765_000_000_000, seq);
                validate(&id).expect("generated id is valid");
                assert!(id.starts_with(if live { "evnt_" } else { "evnt_test_" }));
                assert_eq!(sequence_of(&id), Some(seq), "{id}");
            }
        }
        // Ids of `generate` and providers' ids are too short or not base36.
        let old = generate(true, 1_765_000_000_000);
        assert_eq!(sequence_of(&old), None, "{old}");
        let odd = ["evnt_test_5xuy4w91xqz7d1w9u0t", "evt_1NG8Du2eZvKYlo2CUI79vXWy", "evnt_"];
        for id in odd {
            assert_eq!(sequence_of(id), None, "{id}");
        }
        let zero = format!("evnt_{}0", "1".repeat(TIME_DIGITS + RANDOM_DIGITS));
        let upper = format!("evnt_{}A", "1".repeat(TIME_DIGITS + RANDOM_DIGITS));
        let huge = format!("evnt_{}{}", "1".repeat(TIME_DIGITS + RANDOM_DIGITS), "z".repeat(13));
        for id in [zero, upper, huge] {
            assert_eq!(sequence_of(&id), None, "{id}");
        }
    }

    #[test]
    fn provider_ids_are_valid_and_odd_ones_are_not() {
        for ok in ["evt_1NG8Du2eZvKYlo2CUI79vXWy", "4xwf1falwkeagr4mn0gg6n19d", "a", "x:y.z-1_2"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "has space", "slash/", "ünï", long.as_str()] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
