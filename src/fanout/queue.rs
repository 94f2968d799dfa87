//! A subscriber's send queue towards the transport, bounded in bytes as well as in items.
//!
//! A count alone bounds nothing when events are large (64 items of 256 KiB are 16 MiB per
//! stalled subscriber). Each queued item holds permits for its encoded size from the
//! subscriber's byte budget, and gives them back when the transport takes it; the sender waits
//! for room. An item larger than the whole budget takes all of it, so it passes alone. Items
//! are the stored bytes' shares (`Bytes` clones), so the budget is an upper bound: what the
//! recent-events cache still holds is not held twice. An event item also carries the
//! [`StoredEvent`] it was made from (one more reference), so a transport that reframes events
//! (SSE's JSON) shares that event's cached JSON of `data` with every other reader of it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::Status;

use crate::proto::wire::SubscribeEventsResponse;
use crate::store::StoredEvent;

/// What a stream yields.
type Item = Result<SubscribeEventsResponse, Status>;

/// One queued entry: the item, the stored event of an event item, and its byte permits.
type Entry = (Item, Option<StoredEvent>, OwnedSemaphorePermit);

/// The sending half, owned by the subscription's task.
pub struct QueueSender {
    tx: mpsc::Sender<Entry>,
    budget: Arc<Semaphore>,
    max_bytes: u32,
}

/// The receiving half, the stream the transport reads: the items alone (gRPC).
pub struct QueueStream(mpsc::Receiver<Entry>);

/// The receiving half yielding each item with the stored event it carries, if any
/// ([`QueueStream::with_events`]).
pub struct EventQueueStream(mpsc::Receiver<Entry>);

/// The client has gone (the stream was dropped).
#[derive(Debug)]
pub struct Closed;

/// A queue of at most `max_items` items and `max_bytes` bytes of encoded items.
pub fn queue(max_items: usize, max_bytes: u32) -> (QueueSender, QueueStream) {
    let (tx, rx) = mpsc::channel(max_items);
    let budget = Arc::new(Semaphore::new(max_bytes as usize));
    (QueueSender { tx, budget, max_bytes }, QueueStream(rx))
}

impl QueueSender {
    /// Queues one item once there is room for its bytes.
    pub async fn send(&self, item: Item) -> Result<(), Closed> {
        self.send_with(item, None).await
    }

    /// Queues one item with the stored event it was made from.
    pub async fn send_with(&self, item: Item, event: Option<StoredEvent>) -> Result<(), Closed> {
        let size = item.as_ref().map_or(0, Message::encoded_len);
        let cost = u32::try_from(size).unwrap_or(u32::MAX).clamp(1, self.max_bytes);
        let permit = self.budget.clone().acquire_many_owned(cost).await.map_err(|_| Closed)?;
        self.tx.send((item, event, permit)).await.map_err(|_| Closed)
    }

    /// Resolves once the client has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl QueueStream {
    /// The same queue, yielding each item with its stored event.
    pub fn with_events(self) -> EventQueueStream {
        EventQueueStream(self.0)
    }
}

impl Stream for QueueStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        // The permit is dropped here: the transport has the item, the bytes are its now.
        self.0.poll_recv(cx).map(|next| next.map(|(item, _event, _permit)| item))
    }
}

impl Stream for EventQueueStream {
    type Item = (Item, Option<StoredEvent>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|next| next.map(|(item, event, _permit)| (item, event)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::subscribe_events_response::Item as Kind;
    use crate::proto::{Event, WireEvent};
    use tokio_stream::StreamExt;

    fn item(size: usize) -> Item {
        let event = Event { id: "x".repeat(size), ..Default::default() };
        let event = WireEvent::from(&crate::store::StoredEvent::from_event(&event));
        Ok(SubscribeEventsResponse { item: Some(Kind::Event(event)) })
    }

    #[tokio::test]
    async fn a_sender_waits_for_bytes_to_drain_and_a_huge_item_passes_alone() {
        let (tx, mut rx) = queue(64, 10_000);
        tx.send(item(6_000)).await.unwrap();
        // A second 6,000-byte item does not fit until the first is taken.
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), tx.send(item(6_000)));
        assert!(blocked.await.is_err(), "the byte budget must hold the second item back");
        assert!(rx.next().await.is_some());
        tx.send(item(6_000)).await.unwrap();
        assert!(rx.next().await.is_some());
        tx.send(item(50_000)).await.unwrap();
        assert!(rx.next().await.is_some());
        drop(rx);
        assert!(tx.send(item(1)).await.is_err());
    }
}
