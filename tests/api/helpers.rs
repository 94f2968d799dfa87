//! The one way tests start eventsd: the real server through `eventsd::run`, on 127.0.0.1:0,
//! with a fresh data folder. No sleeps: the listener is bound before `run` starts, so the
//! first call simply waits in the accept queue until the server is up.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), eventsd::Error>>>,
}

/// Starts a server with default settings on a new data folder.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server on a new data folder after `adjust` has changed its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = ServeConfig::with_data_dir(dir.path().join("data"));
    adjust(&mut config);
    start(config, dir).await
}

async fn start(config: ServeConfig, dir: Arc<TempDir>) -> TestApp {
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
    let client = connect(addr).await;
    TestApp { addr, http, client, config, dir, stop: Some(stop), server: Some(server) }
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
    pub async fn new_client(&self) -> EventServiceClient<Channel> {
        connect(self.addr).await
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Shuts the server down as SIGTERM would and waits until `run` returns.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server run");
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
