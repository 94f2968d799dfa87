//! eventsd: a durable events service over gRPC, on an embedded store (an event log of its own
//! beside a sled index) or, for several instances, a replicated NATS JetStream stream.
//!
//! The public API is [`run`] (with [`Listeners`] and [`ServeConfig`]), [`config`], [`proto`]
//! and [`client`]; the modules marked hidden are public only for this crate's tests and load
//! generator, and everything else is crate-private.
//!
//! Map of the crate, from the outside in:
//! - [`config`]: command line and environment (`eventsd`, `eventsd serve`, `eventsd tail`).
//! - [`server`]: `run(config, listeners, shutdown)`, the one entry point of `main` and tests.
//! - [`auth`]: API keys, scopes and test/live modes.
//! - [`api`]: the gRPC surface, `events.v1.EventService`, an adapter over [`service`].
//! - [`service`]: what each call does for a caller on every transport (reads so far): scope,
//!   validation, mode, paging.
//! - [`ingest`]: HTTP ingest: provider webhooks, `POST /events`, `GET /healthz`.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`limits`]: overload protection: one in-flight limit across all connections.
//! - [`connections`]: accepting connections: a cap per listener, accept backoff, HTTP timeouts.
//! - [`delivery`]: outbound webhooks: endpoints, durable delivery state (sled, or a KV bucket
//!   on JetStream), per-endpoint workers (shared across instances by leases), the HTTP sender,
//!   retry schedule and signing.
//! - [`fanout`]: SubscribeEvents streams, catch-up then live, by sequence; byte-bounded
//!   queues and the `--max-subscribers` cap.
//! - [`event`]: the domain: what a valid event is, ids, filters, JSON and time conversions.
//! - [`store`]: the storage interface; the embedded backend (`store::log`, the event log;
//!   `store::index`, the index derived from it: entries in sorted runs of our own, sled
//!   counts and time-bucket counts, and the id table;
//!   `store::embedded`, the writer, sync and index threads); `store::list`, listing over
//!   either backend's index; and the JetStream backend (`store::jetstream`).
//! - [`tls`]: TLS and mutual TLS for both listeners.
//! - [`client`]: client subcommands for the terminal (`publish`, `get`, `list`, `tail`).
//! - [`views`]: read-only HTTP views in the Omise and KOMOJU Events API shapes, the SSE
//!   stream `GET /stream/events` and `GET /whoami`.
//! - [`console`]: the web console at `/console`, its assets compiled into the binary.
//! - [`error`]: the one error type and its one classification (gRPC code, HTTP status, stable
//!   name) that every transport answers through.
//! - [`proto`]: the generated `events.v1` code (a plain set, and the server's wire set that
//!   sends stored event bytes as they are) and the descriptor set.

// The public API: `run`, its configuration and listeners, the generated `proto` code and
// the command-line client.
pub mod client;
pub mod config;
pub mod proto;

pub use config::ServeConfig;
pub use error::Error;
pub use server::{run, shutdown_signal, Listeners};

// Public only for this crate's integration tests, property tests and load generator, which
// drive the store, keys, validation and webhook signing directly; not an API.
#[doc(hidden)]
pub mod auth;
#[doc(hidden)]
pub mod event;
#[doc(hidden)]
pub mod ingest;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod service;
#[doc(hidden)]
pub mod store;

// Outbound webhooks; public because the configuration's delivery settings carry its types.
#[doc(hidden)]
pub mod delivery;

pub(crate) mod api;
pub(crate) mod connections;
pub(crate) mod console;
pub(crate) mod error;
pub(crate) mod fanout;
pub(crate) mod limits;
pub(crate) mod server;
pub(crate) mod tls;
pub(crate) mod views;
