//! The server's own account of a durable figure, from its Prometheus `GET /metrics` on the
//! HTTP listener: how many events each group commit carried and how long its flush and fsync
//! took, averaged over the figure (the difference of the histograms' sums and counts).
//!
//! These explain a publish figure: with N publishers a commit can carry at most N events, and
//! throughput is about events-per-commit / commit time. A server without these series (or a
//! scrape that fails) simply leaves them out of the figure.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::report::Figure;

/// New events per group commit.
const BATCH: &str = "eventsd_commit_batch_events";
/// Seconds of one commit's flush and fsync.
const SYNC: &str = "eventsd_commit_sync_duration_seconds";
/// Time cap of one scrape.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response read.
const MAX_BYTES: u64 = 4 << 20;

/// The commit histograms' sums and counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Commits {
    events: f64,
    commits: f64,
    sync_seconds: f64,
    syncs: f64,
}

impl Commits {
    /// Scrapes the server's `/metrics`; `None` if it cannot be read or lacks the series.
    pub async fn scrape(http: SocketAddr) -> Option<Self> {
        let body = tokio::time::timeout(TIMEOUT, get_metrics(http)).await.ok()??;
        Self::parse(&body)
    }

    fn parse(text: &str) -> Option<Self> {
        let value = |name: &str| find(text, name);
        Some(Commits {
            events: value(&format!("{BATCH}_sum"))?,
            commits: value(&format!("{BATCH}_count"))?,
            sync_seconds: value(&format!("{SYNC}_sum"))?,
            syncs: value(&format!("{SYNC}_count"))?,
        })
    }

    /// Adds `events_per_commit` and `commit_ms` over the time since `self` to a figure.
    pub fn apply_since(&self, later: &Commits, figure: &mut Figure) {
        let commits = later.commits - self.commits;
        if commits > 0.0 {
            let per_commit = (later.events - self.events) / commits;
            figure.set("events_per_commit", (per_commit * 10.0).round() / 10.0);
        }
        let syncs = later.syncs - self.syncs;
        if syncs > 0.0 {
            let ms = (later.sync_seconds - self.sync_seconds) / syncs * 1_000.0;
            figure.set("commit_ms", (ms * 1_000.0).round() / 1_000.0);
        }
    }
}

/// The value of a gauge or counter without labels, such as `eventsd_subscribers`.
pub async fn value(http: Option<SocketAddr>, name: &str) -> Option<f64> {
    let body = tokio::time::timeout(TIMEOUT, get_metrics(http?)).await.ok()??;
    find(&body, name)
}

/// The first sample of series `name` (exact name, no labels) in a scrape.
fn find(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    })
}

/// A plain HTTP/1.1 GET of `/metrics`; returns the body.
async fn get_metrics(http: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(http).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.take(MAX_BYTES).read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_series_are_read_and_averaged() {
        let text = "# TYPE eventsd_commit_batch_events histogram\n\
                    eventsd_commit_batch_events_sum 300.0\n\
                    eventsd_commit_batch_events_count 10\n\
                    eventsd_commit_batch_events_bucket{le=\"1.0\"} 2\n\
                    eventsd_commit_sync_duration_seconds_sum 0.05\n\
                    eventsd_commit_sync_duration_seconds_count 10\n";
        let later = Commits::parse(text).unwrap();
        let mut figure = Figure::new("test", "commits");
        Commits::default().apply_since(&later, &mut figure);
        assert_eq!(figure.extra["events_per_commit"], 30.0);
        assert_eq!(figure.extra["commit_ms"], 5.0);
        assert!(Commits::parse("nothing here").is_none());
    }
}
