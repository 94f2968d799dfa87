//! The server-wide cap on open subscription streams (`--max-subscribers`).
//!
//! One shared handle serves every kind of stream (gRPC SubscribeEvents now, SSE later), so the
//! cap holds across transports. A stream takes a [`StreamPermit`] before its task starts and
//! holds it for its whole life; dropping the permit (the task ends, for whatever reason: the
//! client left, shutdown, an error) frees the slot. A stream beyond the cap is refused at once
//! with RESOURCE_EXHAUSTED naming the flag, and costs nothing further.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The cap; cheap to clone, every clone counts against the same slots.
#[derive(Clone)]
pub struct StreamLimit {
    slots: Arc<Semaphore>,
    max: u32,
}

/// One open stream's slot, freed on drop.
#[derive(Debug)]
pub struct StreamPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl StreamLimit {
    /// A cap of `max` open streams.
    pub fn new(max: u32) -> Self {
        StreamLimit { slots: Arc::new(Semaphore::new(max as usize)), max }
    }

    /// A slot for one more stream, or [`Error::LimitReached`] when all are taken.
    pub fn admit(&self) -> Result<StreamPermit, Error> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map(StreamPermit)
            .map_err(|_| Error::LimitReached { limit: "--max-subscribers", max: self.max.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_beyond_the_cap_are_refused_until_one_ends() {
        let limit = StreamLimit::new(2);
        let first = limit.admit().unwrap();
        let _second = limit.clone().admit().unwrap();
        let refused = limit.admit().unwrap_err();
        assert_eq!(refused.to_string(), "--max-subscribers is reached (2); retry later");
        assert_eq!(tonic::Status::from(refused).code(), tonic::Code::ResourceExhausted);
        drop(first);
        assert!(limit.admit().is_ok());
    }
}
