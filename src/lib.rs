//! eventsd: a durable events service over gRPC, on an embedded store (an event log of its own
//! beside a sled index) or, for several instances, a replicated NATS JetStream stream.
//!
//! Map of the crate, from the outside in:
//! - [`config`]: command line and environment (`eventsd`, `eventsd serve`, `eventsd tail`).
//! - [`server`]: `run(config, listeners, shutdown)`, the one entry point of `main` and tests.
//! - [`auth`]: API keys, scopes and test/live modes.
//! - [`api`]: the gRPC surface, `events.v1.EventService`; request validation at the boundary.
//! - [`ingest`]: HTTP ingest: provider webhooks, `POST /events`, `GET /healthz`.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`limits`]: overload protection: one in-flight limit across all connections.
//! - [`connections`]: accepting connections: a cap per listener, accept backoff, HTTP timeouts.
//! - [`delivery`]: outbound webhooks: endpoint URL and address rules, retry schedule, signing.
//! - [`fanout`]: SubscribeEvents streams, catch-up then live, by sequence; byte-bounded
//!   queues and the `--max-subscribers` cap.
//! - [`event`]: the domain: what a valid event is, ids, filters, JSON and time conversions.
//! - [`store`]: the storage interface; the embedded backend (`store::log`, the event log;
//!   `store::index`, the sled index derived from it; `store::embedded`, the group-commit
//!   writer) and the JetStream backend (`store::jetstream`).
//! - [`tls`]: TLS and mutual TLS for both listeners.
//! - [`client`]: client subcommands for the terminal (`publish`, `get`, `list`, `tail`).
//! - [`views`]: read-only HTTP views in the Omise and KOMOJU Events API shapes, the SSE
//!   stream `GET /stream/events` and `GET /whoami`.
//! - [`console`]: the web console at `/console`, its assets compiled into the binary.
//! - [`error`]: the one error type and its mapping to gRPC status codes.
//! - [`proto`]: the generated `events.v1` code (a plain set, and the server's wire set that
//!   sends stored event bytes as they are) and the descriptor set.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod connections;
pub mod console;
pub mod delivery;
pub mod error;
pub mod event;
pub mod fanout;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod store;
pub mod tls;
pub mod views;

pub use config::ServeConfig;
pub use error::Error;
pub use server::{run, Listeners};
