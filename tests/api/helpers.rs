//! The one way tests start eventsd: the real server through `eventsd::run`, on 127.0.0.1:0,
//! with a fresh data folder. No sleeps: the listener is bound before `run` starts, so the
//! first call simply waits in the accept queue until the server is up.
//!
//! With `EVENTSD_TEST_STORE=nats://…` every app runs on that JetStream cluster instead, each
//! on a stream of its own (kept across `restart`), so the same tests check both backends. An
//! app is then two eventsd instances over its stream: `client` and `http` reach the first,
//! and every `new_client()` the second, so whatever a test does over two connections (publish
//! here, subscribe or read there) crosses instances.
//! Tests of what only the embedded store has (its data folder, retention) return early there,
//! saying so.

use std::net::SocketAddr;
use std::sync::Arc;

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::{Listeners, ServeConfig};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The HTTP address (webhooks, `POST /events`, health), as `http://127.0.0.1:PORT`.
    pub http: String,
    /// A connected client.
    pub client: EventServiceClient<Channel>,
    /// The configuration the server runs with.
    pub config: ServeConfig,
    /// The data folder; kept alive across restarts.
    pub dir: Arc<TempDir>,
    /// The instance `addr`, `http` and `client` reach.
    first: Instance,
    /// On JetStream, the second instance over the same stream.
    peer: Option<Instance>,
}

/// One running `eventsd::run`.
struct Instance {
    addr: SocketAddr,
    http: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), eventsd::Error>>>,
}

impl Instance {
    async fn start(config: &ServeConfig) -> Instance {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let addr = grpc.local_addr().expect("gRPC address");
        let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let http = format!("http://{}", http_listener.local_addr().expect("HTTP address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(eventsd::run(
            config.clone(),
            Listeners { grpc, http: http_listener },
            async {
                let _ = stopped.await;
            },
        ));
        Instance { addr, http, stop: Some(stop), server: Some(server) }
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server run");
        }
    }
}

/// Starts a server with default settings on a new data folder.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server on a new data folder after `adjust` has changed its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = ServeConfig::with_data_dir(dir.path().join("data"));
    if let Some(urls) = jetstream_urls() {
        config.store = eventsd::config::StoreKind::JetStream(urls);
        config.nats_stream = format!("T{:016x}", rand_u64());
        if let Ok(replicas) = std::env::var("EVENTSD_TEST_NATS_REPLICAS") {
            config.nats_replicas = replicas.parse().expect("EVENTSD_TEST_NATS_REPLICAS");
        }
    }
    adjust(&mut config);
    start(config, dir).await
}

/// Starts a server with this API key file (TOML text); the returned folder holds the file,
/// keep it while the app runs.
pub async fn spawn_app_with_keys(keys: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys).expect("write the key file");
    (spawn_app_with(|c| c.api_keys = Some(path)).await, dir)
}

async fn start(config: ServeConfig, dir: Arc<TempDir>) -> TestApp {
    let first = Instance::start(&config).await;
    let (addr, http) = (first.addr, first.http.clone());
    let client = connect(addr).await;
    // The first instance has created the stream by the time it answers; the second joins it.
    let peer = match &config.store {
        eventsd::config::StoreKind::JetStream(_) => {
            let _ = client.clone().list_events(eventsd::proto::ListEventsRequest::default()).await;
            Some(Instance::start(&config).await)
        }
        eventsd::config::StoreKind::Embedded => None,
    };
    TestApp { addr, http, client, config, dir, first, peer }
}

/// The JetStream cluster the tests run on, if `EVENTSD_TEST_STORE` names one.
pub fn jetstream_urls() -> Option<String> {
    std::env::var("EVENTSD_TEST_STORE").ok().filter(|s| s.starts_with("nats://"))
}

/// True (after printing why) when the tests run on JetStream: for tests of what only the
/// embedded store has.
pub fn embedded_only(test: &str) -> bool {
    let skip = jetstream_urls().is_some();
    if skip {
        eprintln!("{test}: checks the embedded store only; skipped on JetStream");
    }
    skip
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::time::SystemTime::now().elapsed().map_or(0, |d| d.as_nanos() as u64));
    hasher.finish()
}

/// A new client connection to `addr`.
pub async fn connect(addr: SocketAddr) -> EventServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to eventsd");
    EventServiceClient::new(channel)
}

impl TestApp {
    /// A new, separate client connection.
    /// On JetStream it reaches the second instance.
    pub async fn new_client(&self) -> EventServiceClient<Channel> {
        connect(self.peer.as_ref().map_or(self.addr, |p| p.addr)).await
    }

    /// On JetStream, the second instance's gRPC address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().map(|p| p.addr)
    }

    /// Every instance's HTTP address (one on the embedded store, two on JetStream).
    pub fn all_http(&self) -> Vec<String> {
        let mut all = vec![self.http.clone()];
        all.extend(self.peer.as_ref().map(|p| p.http.clone()));
        all
    }

    /// On JetStream, shuts down the first instance only (as SIGTERM would); the second goes
    /// on serving at [`peer_addr`](Self::peer_addr).
    pub async fn stop_first(&mut self) {
        self.first.stop().await;
    }

    /// Shuts the server (both instances on JetStream) down as SIGTERM would and waits until
    /// `run` returns.
    pub async fn stop(&mut self) {
        match &mut self.peer {
            Some(peer) => {
                tokio::join!(self.first.stop(), peer.stop());
            }
            None => self.first.stop().await,
        }
    }

    /// Stops the server and starts a new one on the same data folder and settings.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        start(self.config.clone(), self.dir.clone()).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let peer = self.peer.as_mut().and_then(|p| p.stop.take());
        for stop in [self.first.stop.take(), peer].into_iter().flatten() {
            let _ = stop.send(());
        }
    }
}
