//! The server: one `run(config, listeners, shutdown)` entry point used by `main` and by every
//! test. It opens the store, serves gRPC (EventService, health, reflection v1 and v1alpha) on
//! the listeners it is given, and on shutdown stops accepting, ends subscription streams with
//! UNAVAILABLE, lets in-flight calls finish, flushes the store and returns.

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::EventsApi;
use crate::config::ServeConfig;
use crate::error::Error;
use crate::event::EventLimits;
use crate::fanout::SubscriptionConfig;
use crate::ingest::http::{router, IngestState};
use crate::ingest::sources::WebhookConfig;
use crate::limits::InFlightLimit;
use crate::proto::event_service_server::EventServiceServer;
use crate::store::{EventStore, SledStore, StoreConfig};

/// The sockets the server serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// HTTP: webhook ingest, `POST /events`, health.
    pub http: TcpListener,
}

/// Serves until `shutdown` completes, then shuts down cleanly.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let http_addr = listeners.http.local_addr()?;
    let webhooks = WebhookConfig::from_config(&config, http_addr.ip().is_loopback())?;
    let store = SledStore::open(&StoreConfig {
        path: config.data_dir.clone(),
        cache_bytes: config.cache_bytes,
        durability: config.durability,
    })?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown.await;
            token.cancel();
        }
    });

    let limits = EventLimits { max_data_bytes: config.max_data_bytes };
    let http = router(IngestState {
        store: store.clone(),
        limits,
        webhooks: Arc::new(webhooks),
        max_body_bytes: config.max_body_bytes,
    });
    let api = EventsApi::new(
        store.clone(),
        limits,
        SubscriptionConfig { heartbeat: config.heartbeat_interval },
        token.clone(),
        tasks.clone(),
    );
    let events = EventServiceServer::new(api)
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(usize::MAX);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EventServiceServer<EventsApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;

    let grpc_addr = listeners.grpc.local_addr()?;
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        data_dir = %config.data_dir.display(),
        durable_sequence = *store.durable().borrow(),
        "eventsd serving"
    );
    let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let grpc = Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .timeout(config.request_timeout)
        .layer(InFlightLimit::new(config.max_in_flight))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(events)
        .serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned());
    let http = axum::serve(listeners.http, http)
        .with_graceful_shutdown(token.clone().cancelled_owned())
        .into_future();
    let (grpc_served, http_served) = tokio::join!(grpc, http);

    tracing::info!("shutting down: draining subscriptions and flushing the store");
    health.set_not_serving::<EventServiceServer<EventsApi>>().await;
    tasks.close();
    tasks.wait().await;
    store.close().await;
    grpc_served.map_err(|e| Error::Startup(format!("gRPC server: {e}")))?;
    http_served.map_err(|e| Error::Startup(format!("HTTP server: {e}")))?;
    tracing::info!("eventsd stopped");
    Ok(())
}

/// Completes on SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
