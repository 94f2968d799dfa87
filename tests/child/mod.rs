//! The real `eventsd` binary as a child process, shared by the crash, cancel and corruption
//! tests (each is its own test binary and includes this module with `mod child;`).
//!
//! [`Server::start`] spawns the binary on free loopback ports with its stderr in a file and
//! polls gRPC health until the service is SERVING — never a sleep "to let it start";
//! [`Server::start_at`] does the same on given addresses, with a hook that adjusts the command
//! (the partition tests start instances inside network namespaces with it). A
//! [`Server`] can be killed with SIGKILL (what a crash looks like to the store) or stopped with
//! SIGTERM (a clean shutdown), and is killed on drop so a failing test leaves no process
//! behind. [`run_check`] runs `eventsd check`; [`dump`] and [`list_all`] read a whole store
//! back. [`Prng`] is a tiny seeded generator, so every run prints the seed that reproduces its
//! choices (timing aside). Every wait here is bounded.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{Event, ListEventsRequest, SubscribeEventsRequest};
use prost::Message;
use prost_types::Timestamp;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The server binary Cargo built for this test run.
pub const BINARY: &str = env!("CARGO_BIN_EXE_eventsd");

/// The longest a start (or restart) may take before the test fails with the server's stderr.
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// A generous bound on one RPC; never a statement about speed, only a guard against hangs.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// The health service name eventsd reports SERVING for.
const SERVICE: &str = "events.v1.EventService";

/// Pause between two health polls of the external process.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How often a start is retried when another process took one of the free ports first.
const PORT_RETRIES: usize = 3;

/// An EventService client.
pub type Client = EventServiceClient<Channel>;

/// xorshift64*: small, fast and good enough to pick offsets, sizes and delays.
pub struct Prng(u64);

impl Prng {
    /// A generator from a seed (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// An independent generator, for a task of its own.
    pub fn fork(&mut self) -> Prng {
        Prng::new(self.next_u64())
    }

    /// `len` lowercase letters and digits.
    pub fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| ALPHABET[(self.next_u64() % 36) as usize] as char).collect()
    }
}

/// The seed in environment variable `var`, or one from the clock; printed either way so a
/// failing run can be repeated.
pub fn seed(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{var} must be a u64")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    println!("seed: {seed} (repeat with {var}={seed})");
    seed
}

/// A loopback address with a port that was free a moment ago (bound to port 0, then dropped).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

/// A fingerprint of an event's encoded bytes: equal fingerprints mean byte-identical events
/// (up to a 2^-64 chance), at 8 bytes per event of memory.
pub fn fingerprint(event: &Event) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(&event.encode_to_vec());
    hasher.finish()
}

/// How a start ended.
#[derive(Debug)]
pub enum Startup {
    /// Health said SERVING after this long (from spawn).
    Ready(Duration),
    /// The process exited before it was ready.
    Exited(ExitStatus),
    /// Neither within the limit.
    TimedOut,
}

/// A running (or killed) `eventsd serve` child process.
pub struct Server {
    child: Child,
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The HTTP address.
    pub http: SocketAddr,
    /// The store folder.
    pub data_dir: PathBuf,
    /// The file holding the process's stderr.
    pub log: PathBuf,
    spawned: Instant,
}

impl Server {
    /// Spawns the binary on `data_dir` with fresh ports; stderr goes to `log` (appended, so a
    /// store's successive lives share one log). Does not wait for anything.
    pub fn spawn(data_dir: &Path, log: &Path) -> Server {
        Server::spawn_with(data_dir, log, &[])
    }

    /// [`Server::spawn`] with extra `serve` flags (such as `--store nats://…`).
    pub fn spawn_with(data_dir: &Path, log: &Path, extra: &[String]) -> Server {
        Server::spawn_at(data_dir, log, extra, (free_addr(), free_addr()), |_| {})
    }

    /// [`Server::spawn_with`] on the given gRPC and HTTP listen addresses, with `place`
    /// adjusting the command first (such as making it start in a network namespace).
    pub fn spawn_at(
        data_dir: &Path,
        log: &Path,
        extra: &[String],
        (grpc, http): (SocketAddr, SocketAddr),
        place: impl FnOnce(&mut Command),
    ) -> Server {
        let stderr = File::options().create(true).append(true).open(log).expect("open the log");
        let mut command = Command::new(BINARY);
        place(&mut command);
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY}: {e}"));
        Server {
            child,
            grpc,
            http,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            spawned: Instant::now(),
        }
    }

    /// Spawns the binary and waits until it serves. `Err` carries a description of what
    /// happened instead (exit status or time-out) followed by the server's stderr.
    pub async fn start(data_dir: &Path, log: &Path) -> Result<(Server, Duration), String> {
        Server::start_with(data_dir, log, &[]).await
    }

    /// [`Server::start`] with extra `serve` flags.
    pub async fn start_with(
        data_dir: &Path,
        log: &Path,
        extra: &[String],
    ) -> Result<(Server, Duration), String> {
        for _ in 0..PORT_RETRIES {
            let mut server = Server::spawn_with(data_dir, log, extra);
            match server.wait_ready(READY_LIMIT).await {
                Startup::Exited(_) if server.lost_a_port_race() => continue,
                startup => return server.started(startup),
            }
        }
        Err(format!("no free ports after {PORT_RETRIES} attempts"))
    }

    /// [`Server::spawn_at`], then waits until it serves, as [`Server::start`] does (once: the
    /// addresses are the caller's, so a port race is not retried).
    pub async fn start_at(
        data_dir: &Path,
        log: &Path,
        extra: &[String],
        addrs: (SocketAddr, SocketAddr),
        place: impl FnOnce(&mut Command),
    ) -> Result<(Server, Duration), String> {
        let mut server = Server::spawn_at(data_dir, log, extra, addrs, place);
        let startup = server.wait_ready(READY_LIMIT).await;
        server.started(startup)
    }

    /// The server and its start time if `startup` is ready, else why not with its stderr.
    fn started(mut self, startup: Startup) -> Result<(Server, Duration), String> {
        match startup {
            Startup::Ready(took) => Ok((self, took)),
            Startup::Exited(status) => {
                Err(format!("eventsd exited with {status}\n{}", self.stderr_tail()))
            }
            Startup::TimedOut => {
                self.kill9();
                Err(format!("eventsd was not ready within {READY_LIMIT:?}\n{}", self.stderr_tail()))
            }
        }
    }

    /// Polls gRPC health until SERVING, the process exits, or `limit` passes.
    pub async fn wait_ready(&mut self, limit: Duration) -> Startup {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Startup::Exited(status);
            }
            if self.serving().await {
                return Startup::Ready(self.spawned.elapsed());
            }
            if Instant::now() >= deadline {
                return Startup::TimedOut;
            }
            // The server is another process: there is nothing to await but the next poll.
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One health check: true if the service says SERVING.
    async fn serving(&self) -> bool {
        let Ok(endpoint) = Endpoint::from_shared(format!("http://{}", self.grpc)) else {
            return false;
        };
        let endpoint =
            endpoint.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(2));
        let Ok(channel) = endpoint.connect().await else { return false };
        let request = HealthCheckRequest { service: SERVICE.into() };
        match HealthClient::new(channel).check(request).await {
            Ok(reply) => reply.into_inner().status == ServingStatus::Serving as i32,
            Err(_) => false,
        }
    }

    fn lost_a_port_race(&self) -> bool {
        self.stderr().contains("cannot listen on")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since the process was spawned.
    pub fn age(&self) -> Duration {
        self.spawned.elapsed()
    }

    /// Whether the process has exited (and its status).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, then reap: the process is gone when this returns.
    pub fn kill9(&mut self) {
        if self.exited().is_none() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `limit` for the exit; SIGKILL and `Err` if it does not come.
    pub async fn terminate(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map_err(|e| format!("run kill -TERM: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {} failed: {sent}", self.pid()));
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!("no exit within {limit:?} of SIGTERM\n{}", self.stderr_tail()));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Everything the process (and earlier processes sharing its log) wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr(), 40)
    }

    /// A new client connection.
    pub async fn client(&self) -> Client {
        connect(self.grpc).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A new client connection to `addr`.
pub async fn connect(addr: SocketAddr) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to eventsd at {addr}: {e}"));
    EventServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// Publishes `calls` PublishEvents calls of `per_call` small `charge.create` events each
/// (`tag` goes into their data), each call under [`CALL_LIMIT`].
/// Publishes `events` in one PublishEvents call (bounded by [`CALL_LIMIT`]) and returns the
/// ids stored; panics on an error.
pub async fn publish_ids(
    client: &mut Client,
    events: Vec<eventsd::proto::PublishEventRequest>,
) -> Vec<String> {
    let request = eventsd::proto::PublishEventsRequest { events };
    tokio::time::timeout(CALL_LIMIT, client.publish_events(request))
        .await
        .expect("publish hung")
        .expect("publish")
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.id)
        .collect()
}

pub async fn publish_small(client: &mut Client, tag: usize, calls: usize, per_call: usize) {
    for call in 0..calls {
        let events = (0..per_call)
            .map(|i| eventsd::proto::PublishEventRequest {
                r#type: "charge.create".into(),
                data: Some(
                    eventsd::event::json::object_to_struct(
                        serde_json::json!({"object": "charge", "tag": tag, "call": call, "i": i, "amount": 100_000})
                            .as_object()
                            .expect("an object"),
                    )
                    .expect("representable"),
                ),
                ..Default::default()
            })
            .collect();
        let request = eventsd::proto::PublishEventsRequest { events };
        tokio::time::timeout(CALL_LIMIT, client.publish_events(request))
            .await
            .expect("hang guard: PublishEvents")
            .expect("PublishEvents");
    }
}

/// Opens a SubscribeEvents stream and reads past its `caught_up`.
pub async fn subscribe_caught_up(
    client: &mut Client,
    request: SubscribeEventsRequest,
) -> tonic::Streaming<eventsd::proto::SubscribeEventsResponse> {
    let call = client.subscribe_events(request);
    let mut stream = tokio::time::timeout(CALL_LIMIT, call)
        .await
        .expect("hang guard: subscribe")
        .expect("subscribe")
        .into_inner();
    let first = tokio::time::timeout(CALL_LIMIT, stream.message()).await;
    assert!(
        matches!(first, Ok(Ok(Some(ref m))) if matches!(m.item, Some(Item::CaughtUp(_)))),
        "a stream must start with caught_up"
    );
    stream
}

/// The value of an unlabelled series on the server's `GET /metrics`, if it answers.
pub async fn gauge(http: SocketAddr, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{http}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Samples a process's RSS every 20 ms in the background and keeps the peak.
pub struct PeakRss {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: tokio::task::JoinHandle<()>,
    pid: u32,
}

impl PeakRss {
    /// Starts sampling process `pid`.
    pub fn start(pid: u32) -> PeakRss {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let peak = std::sync::Arc::new(AtomicU64::new(rss_kib(pid)));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (peak, done) = (peak.clone(), done.clone());
            async move {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        PeakRss { peak, done, sampler, pid }
    }

    /// Stops sampling; the peak in KiB (including one last sample).
    pub async fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.done.store(true, Ordering::Relaxed);
        self.sampler.await.expect("RSS sampler");
        self.peak.load(Ordering::Relaxed).max(rss_kib(self.pid))
    }
}

/// Starts `eventsd serve` with `flags` on a data folder and log inside `dir`.
pub async fn start_in(dir: &Path, flags: &[&str]) -> Server {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    Server::start_with(&dir.join("data"), &dir.join("log"), &flags).await.expect("start").0
}

/// The resident memory of process `pid`, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `eventsd check --data-dir DIR` said.
#[derive(Debug)]
pub struct CheckOutcome {
    /// Exit code (None if killed by a signal or timed out).
    pub code: Option<i32>,
    /// stdout then stderr.
    pub output: String,
}

impl CheckOutcome {
    /// True when check exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The line that best sums up the verdict: the first problem, else the error, else the
    /// last line.
    pub fn verdict(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines
            .iter()
            .find(|l| l.starts_with("problem:"))
            .or_else(|| lines.iter().find(|l| l.starts_with("eventsd:")))
            .or_else(|| lines.iter().find(|l| l.contains("panicked")))
            .or(lines.last())
            .map_or_else(String::new, |l| l.to_string())
    }
}

/// Runs `eventsd check --data-dir dir`, killing it if it runs longer than [`READY_LIMIT`].
pub async fn run_check(dir: &Path) -> CheckOutcome {
    let out = dir.with_extension("check.log");
    let file = File::create(&out).expect("create the check log");
    let mut child = Command::new(BINARY)
        .arg("check")
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the check log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BINARY} check: {e}"));
    let deadline = Instant::now() + READY_LIMIT;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    CheckOutcome { code, output }
}

/// Every stored event, in sequence order, read with one SubscribeEvents stream from the
/// beginning up to `caught_up`; also returns the `caught_up` sequence.
///
/// This is the cheapest complete read: one call, streamed in sequence order straight from
/// the events-by-sequence family, so a gap shows as a jump between neighbours.
pub async fn dump(client: &mut Client) -> Result<(Vec<Event>, u64), Status> {
    let request =
        SubscribeEventsRequest { start: Some(Start::FromBeginning(true)), ..Default::default() };
    let mut stream = tokio::time::timeout(CALL_LIMIT, client.subscribe_events(request))
        .await
        .map_err(|_| Status::deadline_exceeded("hang guard: subscribe"))??
        .into_inner();
    let mut events = Vec::new();
    loop {
        let message = tokio::time::timeout(CALL_LIMIT, stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("hang guard: next subscription item"))??;
        match message.and_then(|m| m.item) {
            Some(Item::Event(event)) => events.push(event),
            Some(Item::CaughtUp(caught_up)) => return Ok((events, caught_up.sequence)),
            // Heartbeats (and any other kind of item) carry no event of the store.
            Some(_) => {}
            None => return Err(Status::internal("the stream ended before caught_up")),
        }
    }
}

/// A listing covering every valid `created`, so nothing stored is outside it.
pub fn everything() -> ListEventsRequest {
    ListEventsRequest {
        from: Some(Timestamp { seconds: -62_135_596_800, nanos: 0 }),
        to: Some(Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 }),
        ..Default::default()
    }
}

/// The exact number of stored events, from one ListEvents call.
pub async fn stored_total(client: &mut Client) -> Result<i64, Status> {
    let request = ListEventsRequest { limit: 1, ..everything() };
    let page = tokio::time::timeout(CALL_LIMIT, client.list_events(request))
        .await
        .map_err(|_| Status::deadline_exceeded("hang guard: list"))??;
    Ok(page.into_inner().total)
}

/// Every stored event by ListEvents pages of 100, sorted by sequence.
pub async fn list_all(client: &mut Client) -> Result<Vec<Event>, Status> {
    let mut request = ListEventsRequest { limit: 100, ..everything() };
    let mut events = Vec::new();
    loop {
        let page = tokio::time::timeout(CALL_LIMIT, client.list_events(request))
            .await
            .map_err(|_| Status::deadline_exceeded("hang guard: list"))??
            .into_inner();
        events.extend(page.data);
        if page.next_page_token.is_empty() {
            break;
        }
        request = ListEventsRequest {
            page_token: page.next_page_token,
            limit: 100,
            ..Default::default()
        };
    }
    events.sort_by_key(|e| e.sequence);
    Ok(events)
}

/// Copies a folder tree (a store) to `to`, which must not exist yet.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the store folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a store file");
        }
    }
}
