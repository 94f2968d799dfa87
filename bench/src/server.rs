//! The servers under test: spawning the eventsd binary, knowing when it serves, stopping it
//! (SIGTERM) or killing it (SIGKILL), and reading its memory.
//!
//! A spawned server gets free loopback ports (bound on port 0, read, released) and its own
//! data folder under the bench's work folder; its log goes to a file beside that folder and
//! the last lines are shown if it fails to start. "Serving" means gRPC health
//! (`grpc.health.v1.Health/Check` for `events.v1.EventService`) answers SERVING, polled every
//! 2 ms up to the start-up timeout. A [`Target`] owns its process: dropping it kills the
//! process (SIGKILL) and then removes the data folder, so no server outlives the bench, not
//! even when a scenario fails or the run is interrupted.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::error::{Context, Result};
use crate::load::Around;
use crate::report::Figure;

/// The service whose health says the server is ready.
const SERVICE: &str = "events.v1.EventService";
/// Pause between two health polls.
const POLL: Duration = Duration::from_millis(2);
/// How long a clean stop (SIGTERM) may take before the bench kills the server, at least; a
/// scale with a longer start-up timeout (a 10M store) allows as long for the stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How to spawn eventsd.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The eventsd binary.
    pub bin: PathBuf,
    /// Extra flags for every spawned server (`--server-arg`).
    pub args: Vec<String>,
    /// How long a (re)start may take to serve.
    pub startup_timeout: Duration,
}

impl ServerSpec {
    /// Finds the binary: `--server-bin`, else `eventsd` next to this executable.
    pub fn resolve(
        bin: Option<PathBuf>,
        args: Vec<String>,
        startup_timeout: Duration,
    ) -> Result<Self> {
        let bin = match bin {
            Some(bin) => bin,
            None => std::env::current_exe()
                .context("cannot locate this executable")?
                .with_file_name("eventsd"),
        };
        if !bin.is_file() {
            return Err(format!(
                "no eventsd binary at {}: build it with `cargo build --release --workspace` \
                 (`cargo build -p eventsd` for a debug run) or pass --server-bin",
                bin.display()
            )
            .into());
        }
        Ok(ServerSpec { bin, args, startup_timeout })
    }
}

/// A running eventsd child process. Dropping it kills the process.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server a scenario talks to: one the bench spawned, or one given with `--addr`.
pub struct Target {
    /// The gRPC URL, such as `http://127.0.0.1:41234`. It changes on every restart.
    pub addr: String,
    /// How long the last (re)start took to serve; `None` for an external server.
    pub started_in: Option<Duration>,
    /// The HTTP listener (for `/metrics`) of a spawned server.
    pub http: Option<SocketAddr>,
    // Field order matters: the process is dropped (killed) before its data folder is removed.
    process: Option<ServerProcess>,
    spawned: Option<Spawned>,
    probe_dir: PathBuf,
}

/// What a spawned target needs to restart.
struct Spawned {
    spec: ServerSpec,
    data: TempDir,
    log: PathBuf,
}

/// Over JetStream (`--server-arg=--store=nats://…`), each spawned server gets a stream of its
/// own, named after its data folder: every scenario starts on an empty store, as with sled,
/// and a restart finds its stream again.
fn stream_of(args: &[String], data: &Path) -> Vec<String> {
    if !args.iter().any(|a| a.contains("nats://")) {
        return Vec::new();
    }
    let name: String = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    vec!["--nats-stream".into(), format!("BENCH_{name}")]
}

impl Target {
    /// Spawns a server with a fresh data folder under `root`, and waits until it serves.
    pub async fn spawn(spec: &ServerSpec, root: &Path, label: &str) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix(&format!("{label}-data-"))
            .tempdir_in(root)
            .context(format!("cannot create a data folder in {}", root.display()))?;
        let log = root.join(format!("{label}.log"));
        let mut target = Target {
            addr: String::new(),
            started_in: None,
            http: None,
            process: None,
            spawned: Some(Spawned { spec: spec.clone(), data, log }),
            probe_dir: root.to_path_buf(),
        };
        target.start().await?;
        Ok(target)
    }

    /// A server the bench did not start; the fsync probe then runs in the system temp folder.
    pub fn external(addr: &str) -> Self {
        Target {
            addr: addr.to_string(),
            started_in: None,
            http: None,
            process: None,
            spawned: None,
            probe_dir: std::env::temp_dir(),
        }
    }

    /// Whether the bench spawned this server (and so can stop, restart and measure it).
    pub fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    /// The folder for fsync probes: the data folder's parent, on the same filesystem.
    pub fn probe_dir(&self) -> &Path {
        &self.probe_dir
    }

    /// (Re)starts the server on its data folder with new ports, and waits until it serves.
    /// Returns the time from spawn to SERVING.
    pub async fn start(&mut self) -> Result<Duration> {
        let Some(spawned) = &self.spawned else {
            return Err("an external server cannot be started by the bench".into());
        };
        if self.process.is_some() {
            return Err("the server is already running".into());
        }
        let grpc = free_port()?;
        let http = free_port()?;
        let addr = format!("http://127.0.0.1:{grpc}");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spawned.log)
            .context(format!("cannot open {}", spawned.log.display()))?;
        let mut command = Command::new(&spawned.spec.bin);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--data-dir")
            .arg(spawned.data.path())
            .args(&spawned.spec.args)
            .args(stream_of(&spawned.spec.args, spawned.data.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The server reads EVENTSD_* settings; the bench's own flags must be the only ones.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EVENTSD_") {
                command.env_remove(key);
            }
        }
        let started = Instant::now();
        let child =
            command.spawn().context(format!("cannot run {}", spawned.spec.bin.display()))?;
        let mut process = ServerProcess { child };
        wait_serving(&mut process, &addr, spawned.spec.startup_timeout, &spawned.log).await?;
        let took = started.elapsed();
        self.addr = addr;
        self.http = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, http)));
        self.process = Some(process);
        self.started_in = Some(took);
        Ok(took)
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit. Returns how long the stop
    /// took and whether the exit status was success.
    pub async fn stop(&mut self) -> Result<(Duration, bool)> {
        let mut process = self.take_process()?;
        let started = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(process.pid().to_string())
            .status()
            .context("cannot run kill -TERM")?;
        if !status.success() {
            return Err(format!("kill -TERM {} failed: {status}", process.pid()).into());
        }
        let timeout = self
            .spawned
            .as_ref()
            .map_or(STOP_TIMEOUT, |s| s.spec.startup_timeout.max(STOP_TIMEOUT));
        let exit = wait_exit(&mut process.child, timeout).await?;
        Ok((started.elapsed(), exit.success()))
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) -> Result<Duration> {
        let mut process = self.take_process()?;
        let started = Instant::now();
        process.child.kill().context("cannot kill the server")?;
        wait_exit(&mut process.child, STOP_TIMEOUT).await?;
        Ok(started.elapsed())
    }

    /// The server's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.status_number("VmRSS:")
    }

    /// The server's resident memory with its parts: VmRSS counts mapped files (a store's
    /// segments, sled's file) as well as the heap.
    pub fn rss(&self) -> Result<Rss> {
        Ok(Rss {
            total_kib: self.status_number("VmRSS:")?,
            anon_kib: self.status_number("RssAnon:").ok(),
            file_kib: self.status_number("RssFile:").ok(),
        })
    }

    /// `du -sb` of the data folder (apparent bytes, folders included), when the bench owns it.
    pub fn disk_usage(&self) -> Result<u64> {
        let spawned = self.spawned.as_ref().ok_or("not a server the bench spawned")?;
        let output = Command::new("du")
            .arg("-sb")
            .arg(spawned.data.path())
            .output()
            .context("cannot run du -sb")?;
        if !output.status.success() {
            return Err(
                format!("du -sb failed: {}", String::from_utf8_lossy(&output.stderr)).into()
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .and_then(|bytes| bytes.parse().ok())
            .ok_or_else(|| "du -sb printed no byte count".into())
    }

    /// The server's thread count (a sign of a growing blocking pool).
    pub fn threads(&self) -> Result<u64> {
        self.status_number("Threads:")
    }

    /// A number field of `/proc/PID/status`, such as `VmRSS:  1234 kB`.
    fn status_number(&self, field: &str) -> Result<u64> {
        let process = self.process.as_ref().ok_or("the server is not running")?;
        let path = format!("/proc/{}/status", process.pid());
        let status = std::fs::read_to_string(&path).context(format!("cannot read {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {field} line in {path}").into())
    }

    /// What to measure around a load run on this server: its CPU and commit metrics, and
    /// for a `durable` figure the fsync probes.
    pub fn around(&self, durable: bool) -> Around<'_> {
        Around {
            probe_dir: durable.then_some(self.probe_dir()),
            server_pid: self.pid(),
            http: self.http,
        }
    }

    /// CPU seconds (user + system) the server process has used since it started.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(&self.pid()?.to_string())
    }

    /// The server's process id, while the bench runs it.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// Bytes in the data folder, when the bench owns it.
    pub fn data_bytes(&self) -> Option<u64> {
        self.spawned.as_ref().map(|s| folder_bytes(s.data.path()))
    }

    fn take_process(&mut self) -> Result<ServerProcess> {
        self.process
            .take()
            .ok_or_else(|| "the server is not running (or was not spawned by the bench)".into())
    }
}

/// A process's resident memory from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rss {
    /// VmRSS: everything resident, mapped files included.
    pub total_kib: u64,
    /// RssAnon: heap and other anonymous memory.
    pub anon_kib: Option<u64>,
    /// RssFile: resident pages of mapped files.
    pub file_kib: Option<u64>,
}

impl Rss {
    /// Adds `rss_mib` (VmRSS), `rss_anon_mib` and `rss_file_mib` to a figure.
    pub fn apply(&self, figure: &mut Figure) {
        let mib = |kib: u64| (kib as f64 / 102.4).round() / 10.0;
        figure.set("rss_mib", mib(self.total_kib));
        if let Some(anon) = self.anon_kib {
            figure.set("rss_anon_mib", mib(anon));
        }
        if let Some(file) = self.file_kib {
            figure.set("rss_file_mib", mib(file));
        }
    }
}

/// CPU used by the server under test and by the bench itself over one figure: utime + stime
/// of `/proc/PID/stat` (every thread of the process) before and after the measured window.
/// On a 2-core machine the loader competes with the server, so every load figure says how
/// much CPU each side spent per operation, and how many cores each used on average
/// (`server_cpu`, `bench_cpu`: CPU seconds / wall seconds).
pub struct CpuMeter {
    server: Option<(u32, f64)>,
    bench: Option<f64>,
    started: Instant,
}

impl CpuMeter {
    /// Starts measuring the process `server` (if known) and this process.
    pub fn start(server: Option<u32>) -> Self {
        CpuMeter {
            server: server.and_then(|pid| Some((pid, cpu_seconds(&pid.to_string())?))),
            bench: cpu_seconds("self"),
            started: Instant::now(),
        }
    }

    /// Stops measuring: the CPU each side used since the start.
    pub fn stop(self) -> CpuUsage {
        CpuUsage {
            server_seconds: self
                .server
                .and_then(|(pid, before)| Some(cpu_seconds(&pid.to_string())? - before)),
            bench_seconds: self.bench.and_then(|before| Some(cpu_seconds("self")? - before)),
            wall_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// CPU used over a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUsage {
    /// CPU seconds of the server (when the bench knows its process).
    pub server_seconds: Option<f64>,
    /// CPU seconds of the bench.
    pub bench_seconds: Option<f64>,
    /// Wall time of the measurement.
    pub wall_seconds: f64,
}

impl CpuUsage {
    /// Attaches the usage to a figure (per operation in its table row and JSON line), and
    /// adds the cores each side used as `server_cpu` and `bench_cpu`.
    pub fn apply(&self, figure: &mut Figure) {
        let cores = |used: f64| (used / self.wall_seconds.max(1e-9) * 100.0).round() / 100.0;
        if let Some(server) = self.server_seconds {
            figure.set("server_cpu", cores(server));
        }
        if let Some(bench) = self.bench_seconds {
            figure.set("bench_cpu", cores(bench));
        }
        figure.cpu = Some(*self);
    }
}

/// User + system CPU seconds of `/proc/{pid}/stat` (`pid` may be `self`), assuming Linux's
/// USER_HZ of 100 ticks per second.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a free port")?;
    Ok(listener.local_addr().context("cannot read a bound port")?.port())
}

/// Polls health until SERVING, the process exits, or the timeout passes.
async fn wait_serving(
    process: &mut ServerProcess,
    addr: &str,
    timeout: Duration,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.child.try_wait().context("cannot check the server process")? {
            return Err(format!(
                "eventsd exited ({status}) before serving; the end of {}:\n{}",
                log.display(),
                log_tail(log, 20)
            )
            .into());
        }
        if serving(addr).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "eventsd did not serve within {timeout:?}; the end of {}:\n{}",
                log.display(),
                log_tail(log, 20)
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the server at `addr` answers health SERVING for the events service.
pub async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(addr.to_string()) else {
        return false;
    };
    let endpoint = endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2));
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let request = HealthCheckRequest { service: SERVICE.into() };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => response.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// Waits for a child to exit, polling every millisecond so stop times are precise.
async fn wait_exit(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the server")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the server did not exit within {timeout:?}; killed it").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The last `lines` lines of a log file (or why it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read the log: {err})"),
    }
}

/// Total size of the files under `path`.
fn folder_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_time() {
        let spent = cpu_seconds("self").unwrap();
        assert!(spent >= 0.0);
        let mut figure = Figure::new("test", "cpu");
        CpuMeter::start(Some(std::process::id())).stop().apply(&mut figure);
        assert!(figure.extra.contains_key("server_cpu") && figure.extra.contains_key("bench_cpu"));
    }
}
