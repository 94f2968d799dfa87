//! Event ids: the accepted alphabet, and generation of ids in the Omise shape.
//!
//! Generated ids match `/evnt(_test)?_[0-9a-z]+/`: the commit time in milliseconds, then 50
//! random bits, both in lowercase base36, so ids sort roughly by time and never collide in
//! practice (the committer still checks).

/// Checks a caller-supplied id: 1–128 characters of `[A-Za-z0-9_.:-]`.
pub fn validate(id: &str) -> Result<(), String> {
    crate::event::validate_token(id, &['_', '.', ':', '-'])
}

/// A new id: `evnt_` (live) or `evnt_test_` (test), the time in ms and random bits in base36.
pub fn generate(livemode: bool, unix_millis: u64) -> String {
    let mut bytes = [0u8; 8];
    // getrandom only fails when the OS has no entropy source at all; the time-based
    // prefix still keeps ids unique per millisecond, and the committer re-checks.
    let _ = getrandom::fill(&mut bytes);
    let random = u64::from_le_bytes(bytes) & ((1 << 50) - 1);
    let prefix = if livemode { "evnt_" } else { "evnt_test_" };
    // 50 bits take at most 10 base36 digits; pad so the random part has a fixed width.
    format!("{prefix}{}{:0>10}", base36(unix_millis), base36(random))
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
