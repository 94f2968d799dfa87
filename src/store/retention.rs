//! Retention: removes the oldest events in the background, in sequence order, by age
//! (`--retention`, on `received`, the commit time) and/or count (`--max-events`).
//!
//! Each step is a bounded trim round in the writer (see `embedded/writer.rs`), so publishes
//! never wait behind a large deletion. A trim moves the log's first kept sequence, removes the
//! index entries below it, and deletes a segment file once every record in it lies below the
//! first kept sequence. After removal, a page token or a subscription position before the
//! oldest kept event is OUT_OF_RANGE naming the earliest available sequence; a removed id may
//! be published again and then names a new event with a new sequence.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::SledStore;

/// How often retention looks for expired events.
const EVERY: Duration = Duration::from_secs(1);
/// Most events examined for age per look.
const SCAN: usize = 10_000;

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Remove events committed longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many events.
    pub max_events: Option<u64>,
}

impl Retention {
    /// Whether anything is ever removed.
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.max_events.is_some()
    }
}

/// Enforces `policy` until `shutdown`.
pub async fn enforce(store: SledStore, policy: Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let through = match store.expired_through(&policy, SCAN) {
            Ok(Some(through)) => through,
            Ok(None) => continue,
            Err(err) => {
                tracing::error!(error = %err, "retention could not look for expired events");
                continue;
            }
        };
        match store.trim(through).await {
            Ok(first) => tracing::debug!(first_kept = first, "retention removed expired events"),
            Err(err) => tracing::error!(error = %err, "retention could not remove expired events"),
        }
    }
}
