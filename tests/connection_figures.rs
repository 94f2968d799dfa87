//! Figures for RELIABILITY.md (issue #15, findings 5 and 6): the real binary as a child
//! process, attacked over loopback by this test process.
//!
//! - 10,000 connections with unfinished headers held open while gRPC and HTTP keep answering:
//!   prints the time to open them, gRPC and `/healthz` latencies under them, and the server's
//!   RSS; fails if either surface stops answering.
//! - A server whose open-file limit is 64, flooded with connections: accept fails with EMFILE,
//!   and the loop must back off (bounded CPU, at most about one log line a second) and serve
//!   again once the flood is gone.
//!
//! Every wait is bounded; `cargo test --test connection_figures -- --nocapture` prints the
//! figures.

mod child;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use child::{rss_kib, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Connections held open by the first figure.
const HELD: usize = 10_000;

/// Raises this process's open-file soft limit to its hard limit; returns the new limit.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// Opens a connection and sends a request head that never ends.
async fn unfinished(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: eventsd\r\nX-Slow: ").await?;
    Ok(stream)
}

/// Latencies of `n` gRPC health checks on one connection and `n` `/healthz` requests on
/// fresh connections; `Err` names the first failure.
async fn answers(server: &Server, n: usize) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("gRPC connect: {e}"))?;
    let mut health = HealthClient::new(channel);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (mut grpc, mut healthz) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let started = Instant::now();
        let check = health.check(HealthCheckRequest { service: String::new() });
        tokio::time::timeout(Duration::from_secs(5), check)
            .await
            .map_err(|_| "gRPC health timed out".to_string())?
            .map_err(|e| format!("gRPC health: {e}"))?;
        grpc.push(started.elapsed());
        let started = Instant::now();
        let reply = http
            .get(format!("http://{}/healthz", server.http))
            .send()
            .await
            .map_err(|e| format!("/healthz: {e}"))?;
        if reply.status() != 200 {
            return Err(format!("/healthz answered {}", reply.status()));
        }
        healthz.push(started.elapsed());
    }
    Ok((grpc, healthz))
}

fn p50_max(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], *samples.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unfinished_headers_leave_grpc_and_http_answering() {
    let limit = raise_fd_limit();
    if limit < HELD as u64 + 512 {
        println!(
            "skipped: the open-file limit is {limit}, below {} (raise ulimit -Hn)",
            HELD + 512
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = ["--max-connections", "11000", "--http-header-timeout", "120s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (server, _) = Server::start_with(&dir.path().join("data"), &dir.path().join("log"), &extra)
        .await
        .expect("start eventsd");
    let rss_before = rss_kib(server.pid());

    let started = Instant::now();
    let mut held = Vec::with_capacity(HELD);
    while held.len() < HELD {
        let wave: Vec<_> = (0..500.min(HELD - held.len()))
            .map(|_| tokio::spawn(unfinished(server.http)))
            .collect();
        for conn in wave {
            let stream = tokio::time::timeout(Duration::from_secs(30), conn)
                .await
                .expect("a connection within 30 s")
                .expect("task")
                .expect("connect and send");
            held.push(stream);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "opening took over 120 s");
    }
    let opened_in = started.elapsed();

    let (grpc, healthz) = answers(&server, 20).await.expect("answers under 10,000 slow clients");

    let rss_held = rss_kib(server.pid());
    let (grpc_p50, grpc_max) = p50_max(grpc);
    let (http_p50, http_max) = p50_max(healthz);
    println!(
        "figure: {HELD} connections with unfinished headers opened in {opened_in:?}; gRPC health \
         p50 {grpc_p50:?} max {grpc_max:?}; /healthz (new connection each) p50 {http_p50:?} max \
         {http_max:?}; server RSS {rss_before} KiB before, {rss_held} KiB with them held ({} \
         bytes per connection)",
        (rss_held.saturating_sub(rss_before) * 1024) / HELD as u64
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    // A cap far above what 64 descriptors allow, so accept itself fails (EMFILE).
    let extra: Vec<String> = ["--max-connections", "10000"].iter().map(|s| s.to_string()).collect();
    let data = dir.path().join("data");
    let log = dir.path().join("log");
    let mut server = spawn_with_fd_limit(&data, &log, &extra, 64);
    assert!(matches!(server.wait_ready(child::READY_LIMIT).await, child::Startup::Ready(_)));
    let cpu_before = cpu_ticks(server.pid());
    let window = Instant::now();

    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(500), unfinished(server.http)).await
        {
            flood.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the window whose cost is measured
    let cpu = cpu_ticks(server.pid()) - cpu_before;
    let window = window.elapsed();
    let log_text = server.stderr();
    let lines = log_text.lines().filter(|l| l.contains("accept failed")).count();
    drop(flood);
    let recovered = answers(&server, 3).await;

    // Clock ticks are 10 ms: a spinning loop would use about one tick per tick of the window.
    println!(
        "figure: fd limit 64, 200 connections attempted: {lines} accept-failure log lines and {} \
         ms of CPU over the {window:?} flood; serving again after: {}",
        cpu * 10,
        recovered.is_ok()
    );
    assert!(lines >= 1, "EMFILE was logged:\n{}", server.stderr_tail());
    let seconds = window.as_secs() + 2;
    assert!(lines as u64 <= seconds, "{lines} accept-failure lines in {window:?}");
    let ticks = window.as_millis() as u64 / 10;
    assert!(cpu * 4 < ticks, "{} ms of CPU in {window:?}: the accept loop spins", cpu * 10);
    recovered.expect("serves again once the flood is gone");
    server.kill9();
}

/// `Server::spawn_with`, then the child's open-file limit set to `limit`, soft and hard, so
/// eventsd cannot raise it (whether it tries before or after, it ends at `limit`).
fn spawn_with_fd_limit(
    data: &std::path::Path,
    log: &std::path::Path,
    extra: &[String],
    limit: u64,
) -> Server {
    let server = Server::spawn_with(data, log, extra);
    let new = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: prlimit reads `new` and writes nothing (no old-limit pointer).
    let done = unsafe {
        libc::prlimit(server.pid() as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut())
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
    server
}

/// User plus system CPU of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based, whole line).
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}
