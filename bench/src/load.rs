//! Bounded closed-loop load: N workers, each its own task, each calling its [`Op`] again as
//! soon as the previous call returns, until a shared count or a time cap runs out.
//!
//! Latency is per call, in microseconds, in an HDR histogram per worker (merged at the end);
//! throughput is completed units (acked events, pages…) over the wall time of the whole run.
//! A worker stops at its first error (counted and reported, never hidden), so a broken server
//! ends a run quickly instead of being hammered.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::{Context, Result};
use crate::metrics::Commits;
use crate::probe;
use crate::report::{Figure, Latency};
use crate::server::CpuMeter;

/// Largest latency a histogram holds exactly; slower calls are recorded as this.
const MAX_MICROS: u64 = 600_000_000;

/// One kind of call a worker repeats.
pub trait Op: Send + 'static {
    /// Makes one call; returns the units it completed (events acked, pages read…).
    fn call(&mut self) -> impl Future<Output = Result<u64, String>> + Send;
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Most calls, across all workers.
    pub calls: u64,
    /// Time cap, from the start of the run.
    pub time: Duration,
}

/// What a run did.
pub struct Outcome<O> {
    /// The workers, handed back with whatever they collected.
    pub workers: Vec<O>,
    /// Units completed.
    pub units: u64,
    /// Calls that succeeded.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
    /// Per-call latency of the successful calls, in µs.
    pub latency: Histogram<u64>,
    /// Wall time from start until the last worker stopped.
    pub elapsed: Duration,
}

impl<O> Outcome<O> {
    /// The run as a figure: units over wall time, call latency, and any errors.
    pub fn figure(&self, scenario: &'static str, case: impl Into<String>) -> Figure {
        let mut figure = Figure::new(scenario, case);
        figure.ops = self.units;
        figure.seconds = self.elapsed.as_secs_f64();
        figure.latency = Latency::from_micros(&self.latency);
        if self.errors > 0 {
            figure.set("errors", self.errors);
        }
        if let Some(err) = &self.first_error {
            figure.set("first_error", err.as_str());
        }
        figure
    }
}

/// What to measure around a run besides the calls themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Around<'a> {
    /// Probe fsync in this folder just before and after (durable figures only).
    pub probe_dir: Option<&'a Path>,
    /// Measure this server process's CPU (the bench's own is always measured).
    pub server_pid: Option<u32>,
    /// Read the server's commit metrics from this HTTP listener before and after.
    pub http: Option<SocketAddr>,
}

/// Runs the workers as [`run`] does and makes the figure, with the fsync probes and CPU use
/// asked for. The probes are outside the measured time.
pub async fn run_figure<O: Op>(
    workers: Vec<O>,
    limit: Limit,
    around: Around<'_>,
    scenario: &'static str,
    case: impl Into<String>,
) -> Result<(Figure, Outcome<O>)> {
    let work = async {
        let commits_before = scrape(around.http).await;
        let meter = CpuMeter::start(around.server_pid);
        let outcome = run(workers, limit).await;
        let cpu = meter.stop();
        let commits_after = scrape(around.http).await;
        let commits = commits_before.zip(commits_after);
        (cpu, commits, outcome)
    };
    let (fsync, (cpu, commits, outcome)) = match around.probe_dir {
        Some(dir) => {
            let (fsync, result) = probe::around(dir, work).await;
            (Some(fsync), result)
        }
        None => (None, work.await),
    };
    let outcome = outcome?;
    let mut figure = outcome.figure(scenario, case);
    figure.fsync = fsync;
    cpu.apply(&mut figure);
    if let Some((before, after)) = commits {
        before.apply_since(&after, &mut figure);
    }
    Ok((figure, outcome))
}

/// The server's commit metrics, if it has an HTTP listener the bench knows.
pub async fn scrape(http: Option<SocketAddr>) -> Option<Commits> {
    Commits::scrape(http?).await
}

/// "1 publisher", "32 publishers".
pub fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// An empty histogram of microseconds (1 µs to 10 min, 3 significant digits).
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// Records a duration in µs, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// Shared budget of calls and time.
struct Budget {
    claimed: AtomicU64,
    limit: u64,
    deadline: Instant,
}

impl Budget {
    fn claim(&self) -> bool {
        Instant::now() < self.deadline && self.claimed.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// Per-worker tallies.
struct Tally {
    units: u64,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

/// Runs every worker until the budget is spent (or it fails), and merges what they measured.
pub async fn run<O: Op>(workers: Vec<O>, limit: Limit) -> Result<Outcome<O>> {
    let started = Instant::now();
    let budget = Arc::new(Budget {
        claimed: AtomicU64::new(0),
        limit: limit.calls,
        deadline: started + limit.time,
    });
    let handles: Vec<_> =
        workers.into_iter().map(|op| tokio::spawn(work(op, budget.clone()))).collect();
    let mut outcome = Outcome {
        workers: Vec::with_capacity(handles.len()),
        units: 0,
        calls: 0,
        errors: 0,
        first_error: None,
        latency: micros_histogram(),
        elapsed: Duration::ZERO,
    };
    for handle in handles {
        let (op, tally) = handle.await.context("a load worker panicked")?;
        outcome.workers.push(op);
        outcome.units += tally.units;
        outcome.calls += tally.calls;
        outcome.errors += tally.errors;
        outcome.first_error = outcome.first_error.or(tally.first_error);
        outcome.latency.add(&tally.latency).context("cannot merge latency histograms")?;
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

async fn work<O: Op>(mut op: O, budget: Arc<Budget>) -> (O, Tally) {
    let mut tally =
        Tally { units: 0, calls: 0, errors: 0, first_error: None, latency: micros_histogram() };
    while budget.claim() {
        let start = Instant::now();
        match op.call().await {
            Ok(units) => {
                record(&mut tally.latency, start.elapsed());
                tally.units += units;
                tally.calls += 1;
            }
            Err(err) => {
                tally.errors += 1;
                tally.first_error = Some(err);
                break;
            }
        }
    }
    (op, tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        fail_at: Option<u64>,
        seen: u64,
    }

    impl Op for Counter {
        async fn call(&mut self) -> Result<u64, String> {
            self.seen += 1;
            if Some(self.seen) == self.fail_at {
                return Err("boom".into());
            }
            Ok(2)
        }
    }

    #[tokio::test]
    async fn a_run_stops_at_its_call_budget() {
        let workers = (0..4).map(|_| Counter { fail_at: None, seen: 0 }).collect();
        let limit = Limit { calls: 100, time: Duration::from_secs(60) };
        let outcome = run(workers, limit).await.unwrap();
        assert_eq!((outcome.calls, outcome.units, outcome.errors), (100, 200, 0));
        assert_eq!(outcome.latency.len(), 100);
    }

    #[tokio::test]
    async fn a_failing_worker_stops_and_reports_its_error() {
        let workers = vec![Counter { fail_at: Some(3), seen: 0 }];
        let limit = Limit { calls: 100, time: Duration::from_secs(60) };
        let outcome = run(workers, limit).await.unwrap();
        assert_eq!((outcome.calls, outcome.errors), (2, 1));
        assert_eq!(outcome.first_error.as_deref(), Some("boom"));
    }
}
