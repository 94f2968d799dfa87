//! Ingest over HTTP, on its own listener: provider webhooks (`POST /webhooks/{source}`),
//! `POST /events` for callers that cannot speak gRPC, and `GET /healthz`.
//!
//! Every path ends in the same store append as a gRPC publish, so the same validation,
//! idempotency and durability rules hold: a 2xx is sent only once the event is durable, and
//! a delivery becomes visible to GetEvent, ListEvents and SubscribeEvents at once.

pub(crate) mod http;
pub(crate) mod sources;
pub mod webhook;
