//! Fan-out: subscription streams, catch-up then live, for every streaming transport (gRPC
//! SubscribeEvents, and `GET /stream/events` over SSE in [`crate::views::stream`], which reads
//! the same stream and only changes its framing).
//!
//! Each subscription is one task that walks the store by sequence from its start position up
//! to the durable point, sends the matching events, sends `caught_up` once, then sleeps until
//! the durable point moves and walks on. There is no per-subscriber queue fed by publishers:
//!
//! - **Exactly once, in order, no gap**: the cursor is a sequence; every durable event above it
//!   is read from the store in sequence order, so history and live are the same code path and
//!   the switch between them cannot skip or repeat anything.
//! - **Never before durable**: the store's reads stop at the durable point.
//! - **Slow subscribers**: publishers never wait for a subscriber. A subscriber that reads
//!   slowly simply stays behind the durable point and reads on from the store; its memory on
//!   the server is one read batch (about 1 MiB of stored bytes) plus a send queue bounded in
//!   items and in bytes (`queue`), whatever its lag and whatever the events' size.
//! - **Shared bytes**: an event goes to every subscriber as the same stored `Bytes` (a
//!   reference count), never encoded per subscriber.
//! - **A cap on streams**: `--max-subscribers` open streams at most, across transports
//!   (`limit`); one more is RESOURCE_EXHAUSTED naming the flag.
//! - **Disconnect**: the task watches its stream's receiver and ends as soon as the client is
//!   gone, releasing everything.
//! - **Shutdown**: the task ends the stream with UNAVAILABLE naming the last sequence
//!   delivered, so the client can resume with `after_sequence`.
//! - **Key reloads**: every stream belongs to its caller's key. A reload that removes the
//!   key, takes away its `subscribe` scope or changes its mode ends the stream at once (the
//!   task watches the ring's reload signal, and checks between read steps while catching up)
//!   with UNAUTHENTICATED or PERMISSION_DENIED; a reload that keeps the key changes nothing.

pub mod limit;
pub mod queue;
pub mod subscription;

pub use subscription::{Fanout, Start, SubscribeEventsStream, SubscriptionConfig};
