//! The fsync probe: how fast the disk under the server's data folder makes 1 KiB durable.
//!
//! This machine's disk swings between ~0.2 ms and ~4 ms per fsync on its own, and every
//! durable figure (publish, fill, fan-out, Redis) is bounded by it. So the probe runs
//! immediately before and after each such figure, and both results are printed beside it: a
//! figure whose probes disagree was taken while the disk changed speed.
//!
//! The probe appends 1 KiB and calls `sync_data` (fdatasync) 200 times, or for 2 s at most,
//! in an unnamed temporary file in the given folder (the data folder's parent, so the same
//! filesystem), which disappears when the probe ends.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Context, Result};

/// Writes per probe.
const WRITES: usize = 200;
/// Time cap of one probe.
const CAP: Duration = Duration::from_secs(2);
/// Bytes per write.
const BLOCK: [u8; 1024] = [0x5a; 1024];

/// One probe's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fsync {
    /// Median write + fdatasync, in ms.
    pub p50_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// How many writes the probe made.
    pub samples: usize,
}

/// The probes taken around one figure; `None` where a probe failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FsyncPair {
    /// Just before the figure.
    pub before: Option<Fsync>,
    /// Just after it.
    pub after: Option<Fsync>,
}

/// Probes the disk under `dir`.
pub async fn measure(dir: &Path) -> Result<Fsync> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || measure_blocking(&dir))
        .await
        .context("the fsync probe task failed")?
}

/// Runs `work` between two probes of `dir`. A failed probe is reported on stderr and left out;
/// it never fails the figure.
pub async fn around<T>(dir: &Path, work: impl Future<Output = T>) -> (FsyncPair, T) {
    let before = measure_or_warn(dir).await;
    let result = work.await;
    let after = measure_or_warn(dir).await;
    (FsyncPair { before, after }, result)
}

async fn measure_or_warn(dir: &Path) -> Option<Fsync> {
    match measure(dir).await {
        Ok(probe) => Some(probe),
        Err(err) => {
            eprintln!("warning: fsync probe in {} failed: {err}", dir.display());
            None
        }
    }
}

fn measure_blocking(dir: &PathBuf) -> Result<Fsync> {
    let mut file = tempfile::tempfile_in(dir)
        .context(format!("cannot create a probe file in {}", dir.display()))?;
    let deadline = Instant::now() + CAP;
    let mut samples = Vec::with_capacity(WRITES);
    while samples.len() < WRITES && Instant::now() < deadline {
        let start = Instant::now();
        file.write_all(&BLOCK).context("probe write failed")?;
        file.sync_data().context("probe fdatasync failed")?;
        samples.push(start.elapsed().as_secs_f64() * 1_000.0);
    }
    summarize(samples).ok_or_else(|| "the probe made no write within its time cap".into())
}

/// Percentiles of the samples (nearest rank).
fn summarize(mut samples: Vec<f64>) -> Option<Fsync> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let i = (q * samples.len() as f64).ceil() as usize;
        samples[i.clamp(1, samples.len()) - 1]
    };
    Some(Fsync { p50_ms: rank(0.50), p99_ms: rank(0.99), samples: samples.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let probe = summarize((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((probe.p50_ms, probe.p99_ms, probe.samples), (50.0, 99.0, 100));
        assert!(summarize(Vec::new()).is_none());
    }

    #[tokio::test]
    async fn the_probe_measures_a_real_folder() {
        let dir = tempfile::tempdir().unwrap();
        let probe = measure(dir.path()).await.unwrap();
        assert!(probe.samples > 0 && probe.p50_ms > 0.0);
    }
}
