//! The command line, and the sizes and time caps each `--scale` implies.
//!
//! Every load loop of the bench is bounded twice: by a count taken from [`Settings`] and by a
//! time cap (`--duration` per run). `tiny` proves the tool works in seconds (CI); `full` gives
//! the figures worth reading, on a quiet machine; `huge` is `full` with a store of 10M events
//! (filled with PublishEvents; ~15 GB of disk; never in CI).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use eventsd::config::parse_duration;
use tonic::codegen::http::Uri;

/// Load generator for eventsd: publish, fan-out, get, list, memory, start-up, and a Redis
/// comparison. Spawns the eventsd binary on loopback with a fresh data folder unless --addr
/// is given.
#[derive(Debug, Parser)]
#[command(
    name = "eventsd-bench",
    version,
    after_help = "Build the server first: `cargo build --release --workspace` \
                  (cargo run -p eventsd-bench does not build the eventsd binary).\n\
                  Example: cargo run --release -p eventsd-bench -- --scale tiny --json bench.jsonl publish get"
)]
pub struct Cli {
    /// Scenarios to run; none means all. They always run in this order:
    /// publish, fanout, get, list, memory, startup, outbound, redis.
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// `tiny` runs in seconds (CI); `full` gives the real figures; `huge` fills the store of
    /// get, list, memory and startup with 10M events (~15 GB of disk, a long fill).
    #[arg(long, value_enum, default_value_t = Scale::Full)]
    pub scale: Scale,

    /// Events in the store of get, list, memory and startup, instead of the scale's (2,000
    /// tiny, 1M full, 10M huge).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub store_events: Option<u64>,

    /// Time cap of each load run, such as `10s` (default: 10s full, 2s tiny).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Use the eventsd already serving at this loopback URL (http://HOST:PORT) instead of
    /// spawning one; memory and startup are then skipped.
    #[arg(long, value_name = "URL", value_parser = parse_loopback_url)]
    pub addr: Option<String>,

    /// The eventsd binary to spawn (default: `eventsd` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,

    /// An extra flag for every spawned server, such as `--server-arg=--cache-bytes=268435456`.
    /// Repeatable.
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,

    /// Append one JSON object per figure to this file (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Folder for the servers' data folders and the fsync probe (default: the system's temp
    /// folder). Put it on the disk you mean to measure.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// How big the runs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// Seconds in all: proves every scenario works.
    Tiny,
    /// The real figures.
    Full,
    /// `full` with 10M events in the store (fill progress printed; ~15 GB of disk).
    Huge,
}

/// A scenario group, named as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Unary PublishEvent at 1, 32 and 128 publishers, then PublishEvents batches of 100.
    Publish,
    /// Publish-to-receive latency and deliveries/s with 1 to 1,000 subscribers.
    Fanout,
    /// Fill a store, then random GetEvent.
    Get,
    /// ListEvents pages: newest, type filter, time range, random start, deep offset.
    List,
    /// Server RSS: idle, right after the fill, with idle subscribers, after closing them.
    Memory,
    /// Disk per event when cleanly stopped; restart to serving after SIGTERM, kill -9 idle,
    /// and kill -9 under load.
    Startup,
    /// Outbound webhooks: deliveries/s to 10 and 1,000 endpoints, commit → 200 latency, RSS
    /// with 1,000 endpoints and 100,000 pending deliveries.
    Outbound,
    /// redis-server with appendfsync always: XADD, XREAD BLOCK fan-out, XREVRANGE and
    /// XRANGE pages, beside eventsd's figures, and the table of issue #13's targets.
    Redis,
}

impl Scenario {
    /// The name used on the command line and in the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Publish => "publish",
            Scenario::Fanout => "fanout",
            Scenario::Get => "get",
            Scenario::List => "list",
            Scenario::Memory => "memory",
            Scenario::Startup => "startup",
            Scenario::Outbound => "outbound",
            Scenario::Redis => "redis",
        }
    }

    /// The scenarios to run: those given, deduplicated and in canonical order, or all.
    pub fn selection(given: &[Scenario]) -> Vec<Scenario> {
        let mut chosen: Vec<Scenario> =
            if given.is_empty() { Scenario::value_variants().to_vec() } else { given.to_vec() };
        chosen.sort();
        chosen.dedup();
        chosen
    }
}

/// Counts and caps of one invocation, from `--scale` and `--duration`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scale these settings came from.
    pub scale: Scale,
    /// Time cap of each load run.
    pub duration: Duration,
    /// Events per unary publish run (count cap).
    pub publish_events: u64,
    /// Events per PublishEvents run (count cap).
    pub batch_events: u64,
    /// Events per fan-out run (count cap).
    pub fanout_events: u64,
    /// Subscriber counts of the fan-out runs.
    pub fanout_subscribers: Vec<usize>,
    /// Events in the store that get, list, memory and startup use.
    pub store_events: u64,
    /// Time cap of the fill.
    pub fill_cap: Duration,
    /// Calls per get or list run (count cap).
    pub read_calls: u64,
    /// Idle subscribers of the memory scenario.
    pub idle_subscribers: usize,
    /// How long publishers run before the kill -9 of the startup scenario.
    pub kill_after: Duration,
    /// How long a server may take to serve after a (re)start.
    pub startup_timeout: Duration,
    /// Time left to the server before its RSS is read (after start, or after subscribers
    /// open or close).
    pub settle: Duration,
}

impl Settings {
    /// The settings of a scale, with `--duration` and `--store-events` if given.
    pub fn new(scale: Scale, duration: Option<Duration>, store_events: Option<u64>) -> Self {
        let mut settings = Self::of(scale, duration);
        if let Some(events) = store_events {
            settings.store_events = events;
        }
        settings
    }

    fn of(scale: Scale, duration: Option<Duration>) -> Self {
        match scale {
            Scale::Tiny => Settings {
                scale,
                duration: duration.unwrap_or(Duration::from_secs(2)),
                publish_events: 200,
                batch_events: 2_000,
                fanout_events: 200,
                fanout_subscribers: vec![1, 10, 100, 1_000],
                store_events: 2_000,
                fill_cap: Duration::from_secs(30),
                read_calls: 2_000,
                idle_subscribers: 100,
                kill_after: Duration::from_millis(300),
                startup_timeout: Duration::from_secs(30),
                settle: Duration::from_millis(200),
            },
            Scale::Full => Settings {
                scale,
                duration: duration.unwrap_or(Duration::from_secs(10)),
                publish_events: 1_000_000,
                batch_events: 2_000_000,
                fanout_events: 20_000,
                fanout_subscribers: vec![1, 10, 100, 1_000],
                store_events: 1_000_000,
                fill_cap: Duration::from_secs(600),
                read_calls: 10_000_000,
                idle_subscribers: 10_000,
                kill_after: Duration::from_secs(2),
                startup_timeout: Duration::from_secs(300),
                settle: Duration::from_secs(1),
            },
            Scale::Huge => Settings {
                scale,
                store_events: 10_000_000,
                // Today's store fills at ~7,000 events/s: 10M take ~25 minutes.
                fill_cap: Duration::from_secs(4 * 3_600),
                startup_timeout: Duration::from_secs(900),
                ..Self::of(Scale::Full, duration)
            },
        }
    }

    /// The scale's name, as given on the command line.
    pub fn scale_name(&self) -> &'static str {
        match self.scale {
            Scale::Tiny => "tiny",
            Scale::Full => "full",
            Scale::Huge => "huge",
        }
    }
}

/// Accepts only `http://` URLs whose host is a loopback address: the bench sends load to
/// this machine only.
fn parse_loopback_url(text: &str) -> Result<String, String> {
    let uri: Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("use an http:// URL (the bench speaks plaintext gRPC)".into());
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "{host:?} is not a loopback address; the bench only loads this machine"
        ));
    }
    if uri.port_u16().is_none() {
        return Err("give the port, as in http://127.0.0.1:50051".into());
    }
    Ok(text.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_with_a_port_are_accepted() {
        assert!(parse_loopback_url("http://127.0.0.1:50051").is_ok());
        assert!(parse_loopback_url("http://localhost:50051/").is_ok());
        assert!(parse_loopback_url("http://[::1]:50051").is_ok());
        assert!(parse_loopback_url("http://10.0.0.1:50051").is_err());
        assert!(parse_loopback_url("https://127.0.0.1:50051").is_err());
        assert!(parse_loopback_url("http://127.0.0.1").is_err());
    }

    #[test]
    fn scenarios_run_once_each_in_canonical_order() {
        let chosen = Scenario::selection(&[Scenario::Redis, Scenario::Publish, Scenario::Redis]);
        assert_eq!(chosen, vec![Scenario::Publish, Scenario::Redis]);
        assert_eq!(Scenario::selection(&[]).len(), 8);
    }
}
