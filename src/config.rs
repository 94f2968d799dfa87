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
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeConfig),
    /// Subscribe and print events as JSON lines, resuming after a dropped connection.
    Tail(TailArgs),
}

/// Server settings.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// gRPC listen address.
    #[arg(long, env = "EVENTSD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Folder holding the event store (created if missing).
    #[arg(long, env = "EVENTSD_DATA_DIR", default_value = "eventsd-data")]
    pub data_dir: PathBuf,

    /// Largest accepted `data` object, encoded, in bytes.
    #[arg(long, env = "EVENTSD_MAX_DATA_BYTES", default_value_t = 256 * 1024)]
    pub max_data_bytes: usize,

    /// Largest accepted gRPC request message, in bytes (a PublishEvents batch must fit).
    #[arg(long, env = "EVENTSD_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Page cache of the embedded store, in bytes.
    #[arg(long, env = "EVENTSD_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_bytes: u64,

    /// Interval between SubscribeEvents heartbeats, such as `15s` or `500ms`.
    #[arg(long, env = "EVENTSD_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
}

impl ServeConfig {
    /// Default settings with the given data folder (what tests and embedders start from).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Cli::parse_from(["eventsd"]).serve;
        config.data_dir = data_dir.into();
        config
    }
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
}

/// Parses `15s`, `500ms`, `2m`, `1h`, `30d` (and combinations such as `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 15s, 500ms, 2m)"))
}
