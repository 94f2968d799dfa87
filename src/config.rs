//! Command line and environment: every flag has an `EVENTSD_*` variable (clap).
//!
//! `eventsd` alone and `eventsd serve` take the same [`ServeConfig`]; client subcommands
//! (`tail`) take the server address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// eventsd: a durable events service. Publish payment-style events, read them back by id or
/// in filtered pages, and subscribe to them as they are committed, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "eventsd", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without a subcommand eventsd serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The subcommands.
// Parsed once per process, so the size of the Serve variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeConfig),
    /// Subscribe and print events as JSON lines, resuming after a dropped connection.
    #[command(after_help = CLIENT_HELP)]
    Tail(TailArgs),
    /// Publish one event and print it as stored, as one JSON object. `data` comes from
    /// --data, --data-file, or stdin when neither is given.
    #[command(after_help = CLIENT_HELP)]
    Publish(PublishArgs),
    /// Print one event by id, as one JSON object.
    #[command(after_help = CLIENT_HELP)]
    Get(GetArgs),
    /// List events with the ListEvents options: one page as one JSON object, or with --all
    /// every event of the listing as JSON lines.
    #[command(after_help = CLIENT_HELP)]
    List(ListArgs),
    /// Verify a stopped server's store offline: the log's segments and records, sequence
    /// continuity, the index against the log, counters and the ack record. Exits non-zero if
    /// anything is wrong.
    Check(CheckArgs),
    /// Upgrade a data folder written by an earlier eventsd (events inside sled) to the event
    /// log + index. Builds the new store beside the old files and touches them only once it
    /// is durable; safe to rerun after a crash or a full disk.
    Migrate(CheckArgs),
    /// Rebuild a stopped server's index from its event log (the repair for a damaged index).
    Reindex(CheckArgs),
    /// Manage outbound webhook endpoints (WebhookService; needs an admin key). Prints JSON.
    #[command(subcommand, after_help = CLIENT_HELP)]
    Endpoints(EndpointsCommand),
    /// List and retry outbound deliveries (WebhookService; needs an admin key). Prints JSON.
    #[command(subcommand, after_help = CLIENT_HELP)]
    Deliveries(DeliveriesCommand),
}

/// `eventsd endpoints …`.
#[derive(Debug, Clone, Subcommand)]
pub enum EndpointsCommand {
    /// Create an endpoint; prints it with its signing secret (shown only here and by rotate).
    /// A secret of your own (`whsec_…`) is read from EVENTSD_ENDPOINT_SECRET, never a flag.
    Create(EndpointCreateArgs),
    /// Print every endpoint, one JSON line each.
    List(ConnectOnly),
    /// Print one endpoint.
    Get(EndpointIdArgs),
    /// Change the fields given as flags; the others stay as they are.
    Update(EndpointUpdateArgs),
    /// Delete an endpoint: in-flight attempts stop and pending deliveries fail.
    Delete(EndpointIdArgs),
    /// Give the endpoint a new secret (EVENTSD_ENDPOINT_SECRET, or generated); the old one
    /// keeps signing for the rotation overlap.
    Rotate(EndpointRotateArgs),
    /// Deliver again every matching event after a sequence or from a time.
    Replay(EndpointReplayArgs),
}

/// `eventsd deliveries …`.
#[derive(Debug, Clone, Subcommand)]
pub enum DeliveriesCommand {
    /// Print an endpoint's deliveries, one JSON line each (every page).
    List(DeliveriesListArgs),
    /// Attempt a delivery again now; prints it.
    Retry(DeliveryIdArgs),
}

/// Only where to connect.
#[derive(Debug, Clone, Args)]
pub struct ConnectOnly {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// An endpoint's body format, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointFormatArg {
    /// The event JSON (`POST /events`'s answer).
    EventJson,
    /// CloudEvents 1.0 structured JSON.
    CloudeventJson,
    /// The Omise event object.
    Omise,
}

/// `eventsd endpoints create`.
#[derive(Debug, Clone, Args)]
pub struct EndpointCreateArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The endpoint's URL.
    #[arg(long)]
    pub url: String,
    /// An event type to deliver, exact or ending in `*`; repeat or comma-separate. Default:
    /// every type.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only live (`true`) or only test (`false`) events.
    #[arg(long, value_name = "true|false")]
    pub livemode: Option<bool>,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// The body format.
    #[arg(long, value_enum)]
    pub format: Option<EndpointFormatArg>,
    /// Most requests in flight to the endpoint (default 16).
    #[arg(long)]
    pub max_in_flight: Option<u32>,
}

/// An endpoint id.
#[derive(Debug, Clone, Args)]
pub struct EndpointIdArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The endpoint id (`ep_…`).
    pub id: String,
}

/// `eventsd endpoints update`.
#[derive(Debug, Clone, Args)]
pub struct EndpointUpdateArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The endpoint id (`ep_…`).
    pub id: String,
    /// A new URL.
    #[arg(long)]
    pub url: Option<String>,
    /// New event types (replacing the old ones); repeat or comma-separate.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Option<Vec<String>>,
    /// Only live (`true`) or only test (`false`) events.
    #[arg(long, value_name = "true|false")]
    pub livemode: Option<bool>,
    /// A new description.
    #[arg(long)]
    pub description: Option<String>,
    /// Disable (`true`) or enable (`false`) the endpoint.
    #[arg(long, value_name = "true|false")]
    pub disabled: Option<bool>,
    /// A new body format.
    #[arg(long, value_enum)]
    pub format: Option<EndpointFormatArg>,
    /// A new cap on requests in flight.
    #[arg(long)]
    pub max_in_flight: Option<u32>,
}

/// `eventsd endpoints rotate`.
#[derive(Debug, Clone, Args)]
pub struct EndpointRotateArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The endpoint id (`ep_…`).
    pub id: String,
}

/// `eventsd endpoints replay`.
#[derive(Debug, Clone, Args)]
pub struct EndpointReplayArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The endpoint id (`ep_…`).
    pub id: String,
    /// Deliver every matching event with a sequence above this one.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "from_created",
        required_unless_present = "from_created"
    )]
    pub after_sequence: Option<u64>,
    /// Deliver every matching event created at or after this time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub from_created: Option<prost_types::Timestamp>,
}

/// `eventsd deliveries list`.
#[derive(Debug, Clone, Args)]
pub struct DeliveriesListArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The endpoint id (`ep_…`).
    pub endpoint: String,
    /// Only deliveries in this status.
    #[arg(long, value_parser = ["pending", "succeeded", "failed"])]
    pub status: Option<String>,
    /// Only this event's delivery.
    #[arg(long)]
    pub event_id: Option<String>,
}

/// `eventsd deliveries retry`.
#[derive(Debug, Clone, Args)]
pub struct DeliveryIdArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The delivery id (`dlv_…`).
    pub id: String,
}

/// Server settings.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// gRPC listen address.
    #[arg(long, env = "EVENTSD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// HTTP listen address: webhook receivers, `POST /events`, `GET /healthz`.
    #[arg(long, env = "EVENTSD_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// Serve `GET /metrics` only on this address, without a key (for a network only the
    /// scraper reaches). Without it `/metrics` is on the HTTP listener and, with API keys,
    /// needs a key with the `admin` scope.
    #[arg(long, env = "EVENTSD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Distinct event types (and sources) that get metrics series of their own; later ones
    /// are counted under `other`.
    #[arg(long, env = "EVENTSD_METRICS_MAX_TYPES", default_value_t = crate::metrics::DEFAULT_MAX_TYPES)]
    pub metrics_max_types: usize,

    /// TOML file of API keys (name, key or sha256, scopes, mode). Without it every caller is
    /// unrestricted and eventsd listens on loopback only. SIGHUP reloads the file.
    #[arg(long, env = "EVENTSD_API_KEYS", value_name = "FILE")]
    pub api_keys: Option<PathBuf>,

    /// Serve on a non-loopback address without API keys or client certificates.
    #[arg(long, env = "EVENTSD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// PEM certificate chain: serve gRPC and HTTP over TLS (with --tls-key).
    #[arg(long, env = "EVENTSD_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "EVENTSD_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "EVENTSD_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Do not serve gRPC reflection.
    #[arg(long, env = "EVENTSD_NO_REFLECTION")]
    pub no_reflection: bool,

    /// Where events live: `sled`, the embedded store in --data-dir (the default), or
    /// `nats://h1:4222,h2:4222,h3:4222`, a NATS JetStream cluster (2.12 or newer) that several
    /// stateless eventsd instances share. Entries after the first may be bare HOST:PORT and
    /// then take the first URL's scheme (`nats://`, or `tls://` to require TLS) and
    /// credentials (`nats://user:password@h1:4222,h2:4222`).
    // The value may carry NATS credentials: hidden in --help, never echoed when invalid.
    #[arg(long, env = "EVENTSD_STORE", default_value = "sled", value_parser = StoreParser,
          hide_env_values = true)]
    pub store: StoreKind,

    /// JetStream only: the stream holding the events (created if missing, verified if not);
    /// its subjects are `<NAME>.>`.
    #[arg(long, env = "EVENTSD_NATS_STREAM", default_value = "EVENTSD", value_parser = parse_stream_name)]
    pub nats_stream: String,

    /// JetStream only: connect to NATS over TLS, trusting this CA (PEM). A user and password
    /// go in the URLs, `nats://user:password@host:4222`; prefer EVENTSD_STORE to keep them out
    /// of process listings (they are never logged). See also --nats-creds.
    #[arg(long, env = "EVENTSD_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,

    /// JetStream only: present this client certificate (PEM chain) to NATS, for servers that
    /// verify clients (mutual TLS); with --nats-tls-key. Requires TLS.
    #[arg(
        long,
        env = "EVENTSD_NATS_TLS_CERT",
        value_name = "FILE",
        requires = "nats_tls_key",
        hide_env_values = true
    )]
    pub nats_tls_cert: Option<PathBuf>,

    /// JetStream only: the private key (PEM) of --nats-tls-cert.
    #[arg(
        long,
        env = "EVENTSD_NATS_TLS_KEY",
        value_name = "FILE",
        requires = "nats_tls_cert",
        hide_env_values = true
    )]
    pub nats_tls_key: Option<PathBuf>,

    /// JetStream only: a NATS credentials file (user JWT and NKey seed, as `nsc` writes them)
    /// to authenticate with, instead of credentials in the URLs.
    #[arg(long, env = "EVENTSD_NATS_CREDS", value_name = "FILE", hide_env_values = true)]
    pub nats_creds: Option<PathBuf>,

    /// JetStream only: replicas of the stream when eventsd creates it (1, 3 or 5).
    #[arg(long, env = "EVENTSD_NATS_REPLICAS", default_value_t = 3, value_parser = parse_replicas)]
    pub nats_replicas: usize,

    /// Folder holding the embedded event store (created if missing).
    #[arg(long, env = "EVENTSD_DATA_DIR", default_value = "eventsd-data")]
    pub data_dir: PathBuf,

    /// Largest accepted `data` object, encoded, in bytes.
    #[arg(long, env = "EVENTSD_MAX_DATA_BYTES", default_value_t = 256 * 1024)]
    pub max_data_bytes: usize,

    /// Largest accepted gRPC request message, in bytes (a PublishEvents batch must fit).
    #[arg(long, env = "EVENTSD_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Which failures an acknowledged event survives: power-loss adds an fdatasync of the
    /// store's files to every group commit; process-crash relies on sled's flush alone.
    #[arg(long, env = "EVENTSD_DURABILITY", value_enum, default_value = "power-loss")]
    pub durability: crate::store::Durability,

    /// Most unary calls in flight across all connections; beyond it calls are refused at once
    /// with RESOURCE_EXHAUSTED (load shedding) rather than queued.
    #[arg(long, env = "EVENTSD_MAX_IN_FLIGHT", default_value_t = 2048)]
    pub max_in_flight: usize,

    /// Most open connections per listener (gRPC, HTTP, metrics); beyond it new connections
    /// are closed at once. Default: an equal share of the open-file limit after a reserve of
    /// 128 (eventsd raises its soft limit to the hard limit at start).
    #[arg(long, env = "EVENTSD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// A connection must send its first byte, and an HTTP/1 request its complete headers,
    /// within this time, or it is closed.
    #[arg(long, env = "EVENTSD_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// An HTTP request body must arrive completely within this time of its headers (else 408).
    #[arg(long, env = "EVENTSD_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// An HTTP connection that moves no byte for this long is closed (after the request it
    /// may be answering).
    #[arg(long, env = "EVENTSD_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Most concurrent HTTP/2 streams (calls and subscriptions) per gRPC connection.
    #[arg(long, env = "EVENTSD_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Time limit of a unary call, such as `30s`; a call over it ends with CANCELLED.
    #[arg(long, env = "EVENTSD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long one ListEvents page (or HTTP view page) may walk the index before it is
    /// stopped with DEADLINE_EXCEEDED (HTTP 503): bounds listings that must read many entries,
    /// such as a rare source or type far from the range's edge, or a deep offset without a
    /// bucketed index.
    #[arg(long, env = "EVENTSD_LIST_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub list_deadline: Duration,

    /// On SIGTERM, how long in-flight calls and streams get to finish before connections are
    /// closed; the store is flushed either way.
    #[arg(long, env = "EVENTSD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Interval of HTTP/2 keepalive pings on gRPC connections; a peer that does not answer
    /// within --keepalive-timeout is disconnected.
    #[arg(long, env = "EVENTSD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long to wait for a keepalive ping's answer.
    #[arg(long, env = "EVENTSD_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Remove events committed longer ago than this (on `received`), such as `30d` or `12h`.
    /// Removal runs in the background, oldest first, without stalling publishes.
    #[arg(long, env = "EVENTSD_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,

    /// Keep at most this many events; the oldest are removed first.
    #[arg(long, env = "EVENTSD_MAX_EVENTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: Option<u64>,

    /// Memory for the caches together, in bytes: a quarter goes to the recent-events cache
    /// that live subscribers read from (bounded by the events' stored bytes, whatever their
    /// size), the rest to the embedded store's page cache.
    #[arg(long, env = "EVENTSD_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_bytes: u64,

    /// Size at which a log segment is sealed and a new one begins (tests use small ones to
    /// exercise many segments).
    #[arg(long, env = "EVENTSD_SEGMENT_BYTES", hide = true,
          default_value_t = crate::store::log::DEFAULT_SEGMENT_BYTES)]
    pub segment_bytes: u64,

    /// A webhook signing secret as SOURCE=SECRET (omise, komoju, stripe, or a Standard
    /// Webhooks source name). Repeat it to give one source two secrets during a rotation.
    /// Prefer the environment variable (comma-separated) or --webhook-secrets-file, which keep
    /// secrets out of process listings.
    #[arg(long = "webhook-secret", env = "EVENTSD_WEBHOOK_SECRET", value_delimiter = ',',
          value_name = "SOURCE=SECRET", value_parser = parse_webhook_secret, hide_env_values = true)]
    pub webhook_secrets: Vec<WebhookSecret>,

    /// A file of SOURCE=SECRET lines (blank lines and # comments ignored), read at start.
    #[arg(long, env = "EVENTSD_WEBHOOK_SECRETS_FILE", value_name = "FILE")]
    pub webhook_secrets_file: Option<PathBuf>,

    /// Declare a Standard Webhooks source without a secret (it refuses every delivery unless
    /// named in --webhook-unsigned). Sources with a secret need no declaration.
    #[arg(
        long = "webhook-source",
        env = "EVENTSD_WEBHOOK_SOURCE",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub webhook_sources: Vec<String>,

    /// Let the route `/webhooks/SOURCE`, which has no secret, accept UNSIGNED deliveries:
    /// anyone who can reach the HTTP listener can then store events through it. Repeatable or
    /// comma-separated; every other route without a secret refuses deliveries (401).
    #[arg(
        long = "webhook-unsigned",
        env = "EVENTSD_WEBHOOK_UNSIGNED",
        value_delimiter = ',',
        value_name = "SOURCE"
    )]
    pub webhook_unsigned: Vec<String>,

    /// How far a signed webhook timestamp may be from the server's clock.
    #[arg(long, env = "EVENTSD_WEBHOOK_TOLERANCE", default_value = "300s", value_parser = parse_duration)]
    pub webhook_tolerance: Duration,

    /// KOMOJU deliveries carry no livemode: store them as live (true) or test (false).
    #[arg(long, env = "EVENTSD_KOMOJU_LIVEMODE", default_value_t = false)]
    pub komoju_livemode: bool,

    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, env = "EVENTSD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most subscription streams open at once (SubscribeEvents); beyond it a new one is
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "EVENTSD_MAX_SUBSCRIBERS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscribers: u32,

    /// Interval between SubscribeEvents heartbeats, such as `15s` or `500ms`.
    #[arg(long, env = "EVENTSD_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Outbound webhooks.
    #[command(flatten)]
    pub delivery: DeliveryConfig,
}

/// Outbound webhook settings (`--delivery-*`; the inbound receiver's are `--webhook-*`).
#[derive(Debug, Clone, Args)]
pub struct DeliveryConfig {
    /// Longest an attempt may take, from connect to the answer's head.
    #[arg(long = "delivery-timeout", env = "EVENTSD_DELIVERY_TIMEOUT", default_value = "15s",
          value_parser = parse_duration)]
    pub timeout: Duration,

    /// Delay before each attempt, comma-separated; the first entry is the first attempt and
    /// the length is the most attempts (each delay jittered by ±20%).
    #[arg(long = "delivery-retry-schedule", env = "EVENTSD_DELIVERY_RETRY_SCHEDULE",
          default_value = crate::delivery::schedule::DEFAULT_SCHEDULE, value_parser = parse_schedule)]
    pub retry_schedule: crate::delivery::schedule::RetrySchedule,

    /// An endpoint that has failed every attempt for this long is disabled.
    #[arg(long = "delivery-disable-after", env = "EVENTSD_DELIVERY_DISABLE_AFTER",
          default_value = "5days", value_parser = parse_duration)]
    pub disable_after: Duration,

    /// How long a rotated-out secret keeps signing beside the new one.
    #[arg(long = "delivery-rotation-overlap", env = "EVENTSD_DELIVERY_ROTATION_OVERLAP",
          default_value = "24h", value_parser = parse_duration)]
    pub rotation_overlap: Duration,

    /// On the JetStream store: how long an instance's hold on an endpoint lasts without
    /// renewal. The holder renews every quarter of it and stops delivering half of it after
    /// its last renewal; another instance takes the endpoint over after a whole one.
    #[arg(long = "delivery-lease", env = "EVENTSD_DELIVERY_LEASE", default_value = "10s",
          value_parser = parse_lease)]
    pub lease: Duration,

    /// Accept endpoints on loopback, private, link-local and other non-public addresses.
    #[arg(long = "delivery-allow-private", env = "EVENTSD_DELIVERY_ALLOW_PRIVATE")]
    pub allow_private: bool,

    /// Accept plain `http` endpoint URLs.
    #[arg(long = "delivery-allow-http", env = "EVENTSD_DELIVERY_ALLOW_HTTP")]
    pub allow_http: bool,

    /// Extra CA certificates (PEM) to trust for `https` endpoints, beside the system roots.
    #[arg(long = "delivery-ca", env = "EVENTSD_DELIVERY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if lease < Duration::from_millis(200) || lease > Duration::from_secs(3600) {
        return Err("must be 200ms to 1h".into());
    }
    Ok(lease)
}

fn parse_schedule(text: &str) -> Result<crate::delivery::schedule::RetrySchedule, String> {
    crate::delivery::schedule::RetrySchedule::parse("--delivery-retry-schedule", text)
        .map_err(|e| e.to_string())
}

impl ServeConfig {
    /// Default settings with the given data folder (what tests and embedders start from).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Cli::parse_from(["eventsd"]).serve;
        config.data_dir = data_dir.into();
        config
    }
}

/// `eventsd check`, `migrate` and `reindex` settings.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Folder holding the event store.
    #[arg(long, env = "EVENTSD_DATA_DIR", default_value = "eventsd-data")]
    pub data_dir: PathBuf,
    /// Size at which a log segment is sealed (as the server's hidden flag).
    #[arg(long, env = "EVENTSD_SEGMENT_BYTES", hide = true,
          default_value_t = crate::store::log::DEFAULT_SEGMENT_BYTES)]
    pub segment_bytes: u64,
}

/// `eventsd tail` settings.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Server address.
    #[arg(long, env = "EVENTSD_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Only these types (exact, or a trailing wildcard such as `charge.*`); repeatable or
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only live (`true`) or only test (`false`) events.
    #[arg(long)]
    pub livemode: Option<bool>,
    /// Replay every stored event first.
    #[arg(long, conflicts_with = "after")]
    pub from_beginning: bool,
    /// Resume after this sequence.
    #[arg(long)]
    pub after: Option<u64>,
    /// Print events as CloudEvents 1.0 JSON (received in the CloudEvents protobuf format).
    #[arg(long)]
    pub cloudevents: bool,
}

/// A webhook secret for one source. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    /// The source name, lowercase: `omise`, `komoju`, `stripe` or a Standard Webhooks source.
    pub source: String,
    /// The secret as given.
    pub secret: String,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret({}=<redacted>)", self.source)
    }
}

/// Parses `SOURCE=SECRET`; the error never repeats the secret.
pub fn parse_webhook_secret(text: &str) -> Result<WebhookSecret, String> {
    let Some((source, secret)) = text.split_once('=') else {
        return Err("expected SOURCE=SECRET".into());
    };
    let source = source.trim().to_ascii_lowercase();
    validate_source_name(&source)?;
    if secret.is_empty() {
        return Err(format!("the secret for {source} is empty"));
    }
    Ok(WebhookSecret { source, secret: secret.to_string() })
}

/// Source names: 1–64 characters of `[a-z0-9_-]`, as they appear in `/webhooks/{source}`.
pub fn validate_source_name(source: &str) -> Result<(), String> {
    let ok = !source.is_empty()
        && source.len() <= 64
        && source
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("source name {source:?} must be 1 to 64 characters of a-z 0-9 _ -"))
    }
}

/// Which backend stores the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded sled store in `--data-dir`.
    Embedded,
    /// A NATS JetStream cluster at these comma-separated URLs, each in full form
    /// (`nats://[user:password@]host:port`; bare entries given on the command line have taken
    /// the first URL's scheme and credentials).
    JetStream(String),
}

/// Parses `--store` like [`parse_store`], but its error never repeats the value (clap's own
/// "invalid value '…'" would print NATS credentials to the terminal and to logs): it names
/// only the entry at fault, with any credentials shown as `***`.
#[derive(Clone)]
struct StoreParser;

impl clap::builder::TypedValueParser for StoreParser {
    type Value = StoreKind;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreKind, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, "--store: not valid UTF-8\n")
        })?;
        // Only the entry at fault, redacted (`normalize` never shows a password).
        parse_store(text).map_err(|reason| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value for --store: {reason}\n"),
            )
        })
    }
}

fn parse_store(text: &str) -> Result<StoreKind, String> {
    if text == "sled" {
        return Ok(StoreKind::Embedded);
    }
    crate::store::jetstream::urls::normalize(text).map(StoreKind::JetStream)
}

fn parse_stream_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(text.to_string())
    } else {
        Err("1-64 characters of [A-Za-z0-9_-]".into())
    }
}

fn parse_replicas(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err("1, 3 or 5".into()),
    }
}

/// Parses `15s`, `500ms`, `2m`, `1h`, `30d` (and combinations such as `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 15s, 500ms, 2m)"))
}

/// The part of every client subcommand's help that is about the connection.
const CLIENT_HELP: &str = "The API key, if any, is read from EVENTSD_API_KEY and sent as \
`authorization: Bearer <key>`. On failure eventsd prints `eventsd: CODE: message` (the gRPC \
status) or `eventsd: --flag: reason` on stderr and exits with 1 (2 for a usage error).";

/// Where client subcommands connect.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Server address (gRPC), such as http://127.0.0.1:50051.
    #[arg(long, env = "EVENTSD_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
}

/// `eventsd publish` settings.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The event type, such as `charge.create`.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The event's data: a JSON object, such as '{"object":"charge","amount":100000}'.
    #[arg(long, value_name = "JSON", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read the data (a JSON object) from this file; `-` means stdin.
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// The event id; eventsd generates one when it is not given. With an id the publish is
    /// idempotent: repeating it returns the stored event.
    #[arg(long)]
    pub id: Option<String>,
    /// When the event happened, in RFC 3339 (such as 2017-02-03T13:52:54Z); defaults to the
    /// time the server receives it.
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub created: Option<prost_types::Timestamp>,
    /// Mark the event live; without it the event is a test event.
    #[arg(long)]
    pub livemode: bool,
    /// The schema version of the data, such as `2024-06-20`.
    #[arg(long, value_name = "V")]
    pub api_version: Option<String>,
    /// Who produced the event, such as `payments`.
    #[arg(long, value_name = "S")]
    pub source: Option<String>,
}

/// `eventsd get` settings.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The event id.
    pub id: String,
    /// Which mode's event: live (`true`) or test (`false`). Default: the key's mode; for a
    /// key of both modes, the live event if there is one, else the test one.
    #[arg(long, value_name = "true|false")]
    pub livemode: Option<bool>,
}

/// `eventsd list` settings: the fields of ListEventsRequest.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Where to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Earliest `created` to include, inclusive, in RFC 3339 (default 1970-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub from: Option<prost_types::Timestamp>,
    /// Latest `created` to include, inclusive, in RFC 3339 (default now).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub to: Option<prost_types::Timestamp>,
    /// How many matching events to skip before the first page (default 0).
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub offset: Option<i32>,
    /// Page size: default 20, at most 100 (larger values are reduced to 100). With --all, the
    /// size of each page fetched.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub limit: Option<i32>,
    /// Sort order, by (created, sequence) [default: chronological].
    #[arg(long, value_enum)]
    pub order: Option<ListOrder>,
    /// Only these types (exact, or a trailing wildcard such as `charge.*`); repeatable or
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only live (`true`) or only test (`false`) events; both when not given.
    #[arg(long, value_name = "true|false")]
    pub livemode: Option<bool>,
    /// Only events from this producer (`source`, exactly), such as `omise`.
    #[arg(long)]
    pub source: Option<String>,
    /// Continue a listing: the `next_page_token` of a previous page (other options must then
    /// be left out or equal the first page's; only --limit may change).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Follow `next_page_token` to the end and print every event as one JSON line, instead of
    /// printing one page as one JSON object.
    #[arg(long)]
    pub all: bool,
}

/// A listing's order, as `eventsd list --order` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOrder {
    /// Earliest first.
    Chronological,
    /// Latest first.
    #[value(alias = "reverse_chronological")]
    ReverseChronological,
}

/// Parses an RFC 3339 time, such as `2017-02-03T13:52:54Z` or `2017-02-03T20:52:54+07:00`.
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{e} (expected RFC 3339, such as 2017-02-03T13:52:54Z)"))?;
    Ok(crate::event::time::from_chrono(t.to_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn nats_client_certificate_flags_go_together_and_hide_their_env_values() {
        for (given, missing) in
            [("--nats-tls-cert", "--nats-tls-key"), ("--nats-tls-key", "--nats-tls-cert")]
        {
            let err = Cli::try_parse_from(["eventsd", given, "f.pem"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
            assert!(err.to_string().contains(missing), "{err}");
        }
        let command = Cli::command();
        for id in ["store", "nats_tls_cert", "nats_tls_key", "nats_creds"] {
            let arg = command.get_arguments().find(|a| a.get_id() == id).expect(id);
            assert!(arg.is_hide_env_values_set(), "{id} shows its env value in --help");
        }
    }

    #[test]
    fn a_store_value_keeps_its_entries_in_full_form() {
        assert_eq!(parse_store("sled"), Ok(StoreKind::Embedded));
        assert_eq!(
            parse_store("nats://u:p@h1:4222,h2:4222"),
            Ok(StoreKind::JetStream("nats://u:p@h1:4222,nats://u:p@h2:4222".into()))
        );
        let err = parse_store("nats://u:hunter2@h1:4222,,h2:4222").unwrap_err();
        assert!(err.contains("entry 2 is empty") && !err.contains("hunter2"), "{err}");
    }
}
