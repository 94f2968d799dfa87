//! Connections: how every listener accepts, and how the HTTP listener serves, so that hostile
//! clients cannot starve the server of file descriptors, tasks or time.
//!
//! Promises:
//! - **A cap per listener** (`--max-connections`). A connection beyond it is accepted and
//!   closed at once, before any byte is read or any task is spawned for it: refusing costs one
//!   `accept` and one `close`, and the client learns right away instead of hanging in the
//!   kernel's queue. Each listener has its own cap, and the default caps leave file
//!   descriptors for the store and the other listeners, so a flood on HTTP cannot take gRPC
//!   down with it, nor the other way round.
//! - **Accept errors back off.** Out of file descriptors (EMFILE), `accept` fails at once and
//!   would fail again at once: the loop waits 5 ms, doubling up to 1 s, and logs at most one
//!   line a second (with the count of errors it did not log).
//! - **A connection must say something.** A connection that sends no byte within
//!   `--http-header-timeout` of being accepted is closed (gRPC and HTTP, before any TLS or
//!   HTTP/2 state is built).
//! - **HTTP timeouts**: request headers must be complete within `--http-header-timeout` of the
//!   connection waiting for them (HTTP/1, hyper's own timer), a request body within
//!   `--http-body-timeout` of its headers (408), and a connection with no traffic in either
//!   direction for `--http-idle-timeout` is closed gracefully (a request still being answered
//!   finishes first).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// File descriptors kept free for the store, logs and outgoing connections when the default
/// connection caps are derived from the process's limit.
const RESERVED_FDS: u64 = 128;

/// First pause after a failed `accept`; it doubles on every further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after a failed `accept`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What bounds a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Most open connections on one listener.
    pub max_connections: usize,
    /// Time to the first byte of a connection, and (HTTP/1) to complete a request's headers.
    pub header_timeout: Duration,
    /// Time to receive a whole HTTP request body, from its headers.
    pub body_timeout: Duration,
    /// HTTP connections without traffic for this long are closed.
    pub idle_timeout: Duration,
}

/// Raises the soft limit of open files to the hard limit (as Go and nginx do: the soft limit
/// is a default for programs that never expected many connections) and returns the new soft
/// limit, or `None` if it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The default cap of each of `listeners` listeners: an equal share of the file descriptors
/// left after [`RESERVED_FDS`], at least 16.
pub fn default_max_connections(fd_limit: Option<u64>, listeners: u64) -> usize {
    let limit = fd_limit.unwrap_or(1024);
    let share = limit.saturating_sub(RESERVED_FDS) / listeners.max(1);
    share.clamp(16, 1 << 20) as usize
}

/// Milliseconds since the first call, a clock cheap enough to stamp every read and write.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection last moved a byte; shared between its I/O and its serving task.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has moved no byte.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// An accepted TCP connection holding one of its listener's slots until it is dropped.
pub struct Counted {
    io: TcpStream,
    activity: Arc<Activity>,
    /// Closes the connection if no byte has arrived by then; cleared by the first byte.
    first_byte: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Counted {
    /// The connection's activity clock.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                    this.activity.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired =
                    this.first_byte.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    let reason = "no request within the header timeout";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// One log line per second at most for a repeated condition, with the count it held back.
struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled { last: None, held_back: 0 }
    }

    /// Whether to log now; if so, how many occurrences were not logged since the last line.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < Duration::from_secs(1)) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Accepts on `listener` until `shutdown`, under the cap, and hands over counted connections
/// with their peer address. `name` names the listener in logs; the loop runs on `tasks`.
pub fn accept(
    listener: TcpListener,
    name: &'static str,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Receiver<(Counted, SocketAddr)> {
    // A small hand-over queue: the serving side takes connections as fast as they come.
    let (tx, rx) = mpsc::channel(16);
    tasks.spawn(accept_loop(listener, name, settings, tx, shutdown));
    rx
}

async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    settings: ConnectionSettings,
    tx: mpsc::Sender<(Counted, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut backoff = FIRST_BACKOFF;
    let mut errors = Throttled::new();
    let mut refusals = Throttled::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                if let Some(held_back) = errors.due() {
                    tracing::warn!(listener = name, error = %err, held_back, retry_in = ?backoff, "accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Dropping the stream closes it: no read, no task, no buffer.
            drop(tcp);
            if let Some(held_back) = refusals.due() {
                tracing::warn!(
                    listener = name,
                    max_connections = settings.max_connections,
                    held_back,
                    "connection cap reached; refusing new connections (--max-connections)"
                );
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        activity.touch();
        let counted = Counted {
            io: tcp,
            activity,
            first_byte: Some(Box::pin(tokio::time::sleep(settings.header_timeout))),
            _slot: slot,
        };
        if tx.send((counted, peer)).await.is_err() {
            return;
        }
    }
}

/// A connection whose activity the HTTP server can watch: [`Counted`], or TLS over it.
pub trait Tracked {
    /// The activity clock of the TCP connection underneath.
    fn activity(&self) -> Arc<Activity>;
}

impl Tracked for Counted {
    fn activity(&self) -> Arc<Activity> {
        Counted::activity(self)
    }
}

/// Serves the HTTP router on `incoming` connections (plain or TLS) until `shutdown`, then
/// closes them gracefully and returns once every connection has ended.
pub async fn serve_http<IO>(
    mut incoming: mpsc::Receiver<(IO, SocketAddr)>,
    router: Router,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Tracked + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let router =
        router.layer(axum::middleware::map_request(move |request: axum::extract::Request| {
            let timeout = settings.body_timeout;
            async move { request.map(|body| Body::new(TimedBody::new(body, timeout))) }
        }));
    let connections = TaskTracker::new();
    loop {
        let io = tokio::select! {
            next = incoming.recv() => match next {
                Some((io, _peer)) => io,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let activity = io.activity();
        connections.spawn(serve_connection(
            builder.clone(),
            io,
            activity,
            router.clone(),
            settings.idle_timeout,
            shutdown.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection<IO>(
    builder: auto::Builder<TokioExecutor>,
    io: IO,
    activity: Arc<Activity>,
    router: Router,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(connection);
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(100)));
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "HTTP connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = check.tick(), if !closing => {
                if activity.idle_for() >= idle_timeout {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// The error a request body gives when it did not arrive within `--http-body-timeout`;
/// handlers find it in a body rejection's sources and answer 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (--http-body-timeout)")]
pub struct BodyTimedOut(pub Duration);

impl BodyTimedOut {
    /// The timeout among the sources of `err`, if the body failed by timing out.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<BodyTimedOut>() {
                return Some(found);
            }
            current = e.source();
        }
        None
    }
}

/// A request body that fails with [`BodyTimedOut`] if it is not complete by its deadline.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl TimedBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        TimedBody { inner, deadline: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_share_what_the_reserve_leaves() {
        assert_eq!(default_max_connections(Some(1024 + RESERVED_FDS), 2), 512);
        assert_eq!(default_max_connections(Some(100), 2), 16, "never below 16");
        assert_eq!(default_max_connections(None, 4), (1024 - RESERVED_FDS as usize) / 4);
    }

    #[test]
    fn a_repeated_condition_is_logged_once_a_second_with_the_count_held_back() {
        let mut throttled = Throttled::new();
        assert_eq!(throttled.due(), Some(0));
        for _ in 0..1000 {
            assert_eq!(throttled.due(), None);
        }
        throttled.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(throttled.due(), Some(1000));
    }
}
