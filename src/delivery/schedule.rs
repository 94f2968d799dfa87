//! The retry schedule of `--delivery-retry-schedule`.
//!
//! Owns the format (comma-separated humantime durations such as `0s,5s,5m`; entry *n* is the
//! delay before attempt *n*, so the first entry delays the first attempt and the length is the
//! most attempts a delivery gets) and the ±20% jitter of each delay. It promises that a parsed
//! schedule is non-empty, that a jittered delay stays within ±20% of its entry, and that an
//! attempt past the end of the schedule has no delay: the delivery is failed.

use std::time::Duration;

use crate::error::Error;

/// The default schedule: at most 8 attempts.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

/// The jitter applied to every delay, as a fraction of it.
pub const JITTER: f64 = 0.2;

/// A parsed retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// Parses the flag's value; `flag` names it in the error.
    pub fn parse(flag: &str, raw: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidArgument { field: flag.to_owned(), reason };
        let delays = raw
            .split(',')
            .enumerate()
            .map(|(index, part)| {
                let part = part.trim();
                if part.is_empty() {
                    return Err(bad(format!("entry {} is empty", index + 1)));
                }
                humantime::parse_duration(part)
                    .map_err(|error| bad(format!("entry {} ({part:?}): {error}", index + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { delays })
    }

    /// The most attempts a delivery gets.
    pub fn max_attempts(&self) -> usize {
        self.delays.len()
    }

    /// The delay before attempt `attempt` (1-based), jittered by `unit`, a number in [0, 1)
    /// (the caller's randomness; 0.5 is no jitter). `None` when the schedule is exhausted.
    pub fn delay(&self, attempt: usize, unit: f64) -> Option<Duration> {
        let base = *self.delays.get(attempt.checked_sub(1)?)?;
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.5 };
        let factor = 1.0 + JITTER * (2.0 * unit - 1.0);
        Some(base.mul_f64(factor))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse("--delivery-retry-schedule", DEFAULT_SCHEDULE)
            .unwrap_or_else(|_| Self { delays: vec![Duration::ZERO] })
    }
}

/// A fresh jitter unit in [0, 1) from the operating system's randomness (0.5 if it fails).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_has_eight_attempts() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(schedule.delay(1, 0.5), Some(Duration::ZERO));
        assert_eq!(schedule.delay(2, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(schedule.delay(8, 0.5), Some(Duration::from_secs(36_000)));
        assert_eq!(schedule.delay(9, 0.5), None);
        assert_eq!(schedule.delay(0, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let schedule = RetrySchedule::parse("f", "100s").unwrap();
        assert_eq!(schedule.delay(1, 0.0), Some(Duration::from_secs(80)));
        assert_eq!(schedule.delay(1, 1.0), Some(Duration::from_secs(120)));
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
            let delay = schedule.delay(1, unit).unwrap();
            assert!(
                delay >= Duration::from_secs(80) && delay <= Duration::from_secs(120),
                "{delay:?}"
            );
        }
        assert_eq!(schedule.delay(1, f64::NAN), Some(Duration::from_secs(100)));
    }

    #[test]
    fn bad_schedules_name_the_flag() {
        for raw in ["", "5s,,5m", "5 parsecs", "1s,x"] {
            match RetrySchedule::parse("--delivery-retry-schedule", raw) {
                Err(Error::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "--delivery-retry-schedule")
                }
                other => panic!("{raw:?}: {other:?}"),
            }
        }
        let short = RetrySchedule::parse("f", "10ms, 20ms").unwrap();
        assert_eq!(short.max_attempts(), 2);
        assert_eq!(short.delay(2, 0.5), Some(Duration::from_millis(20)));
    }
}
