//! The server: one `run(config, listeners, shutdown)` entry point used by `main` and by every
//! test. It opens the store, serves gRPC (EventService, health, reflection v1 and v1alpha) on
//! the listeners it is given, and on shutdown stops accepting, ends subscription streams with
//! UNAVAILABLE, lets in-flight calls finish, flushes the store and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use crate::api::webhooks::WebhooksApi;
use crate::api::EventsApi;
use crate::auth::layer::AuthLayer;
use crate::auth::KeyRing;
use crate::config::{ServeConfig, StoreKind};
use crate::connections::{self, ConnectionSettings};
use crate::delivery::client::Sender;
use crate::delivery::dispatch::{self, Dispatcher};
use crate::delivery::endpoints::Webhooks;
use crate::delivery::kv_state::KvDeliveries;
use crate::delivery::sharing::Sharing;
use crate::delivery::state::DeliveryStore;
use crate::delivery::target::TargetRules;
use crate::error::Error;
use crate::event::EventLimits;
use crate::fanout::{Fanout, SubscriptionConfig};
use crate::ingest::http::{router, IngestState};
use crate::ingest::sources::WebhookConfig;
use crate::limits::InFlightLimit;
use crate::metrics::{Metrics, MetricsState};
use crate::proto::event_service_server::EventServiceServer;
use crate::proto::webhook_service_server::WebhookServiceServer;
use crate::service::list::PageTokens;
use crate::store::jetstream::{JetStreamConfig, JetStreamStore};
use crate::store::retention::{self, Retention};
use crate::store::{EventStore, SledStore, StoreConfig};
use crate::tls::Tls;
use crate::views::endpoints::EndpointsState;

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
    let grpc_addr = listeners.grpc.local_addr()?;
    let keys = match &config.api_keys {
        Some(path) => KeyRing::load(path)?,
        None => KeyRing::disabled(),
    };
    let tls = Tls::load(&config)?;
    let mutual_tls = tls.is_some() && config.tls_client_ca.is_some();
    let mut exposed_addrs = vec![grpc_addr, http_addr];
    exposed_addrs.extend(config.metrics_listen);
    check_exposure(&config, &keys, mutual_tls, &exposed_addrs)?;
    let webhooks = WebhookConfig::from_config(&config)?;
    let metrics = Metrics::with_max_types(config.metrics_max_types);
    let retention = Retention { max_age: config.retention, max_events: config.max_events };
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn({
        let token = token.clone();
        async move {
            shutdown.await;
            token.cancel();
        }
    });
    // A shutdown while the store opens ends the start: nothing is served yet. A JetStream
    // catch-up (an in-memory index) is dropped at once; an embedded open (a replay into the
    // index) is let finish within the shutdown grace and closed, so its files are released
    // cleanly; past the grace it is left to the process's exit, which the store survives as
    // it survives a crash.
    let opening = open_store(&config, &retention, &metrics);
    tokio::pin!(opening);
    let opened = tokio::select! {
        opened = &mut opening => opened?,
        () = token.cancelled() => {
            tracing::info!("shutdown during start-up; the store was still opening");
            if matches!(config.store, StoreKind::Embedded) {
                match tokio::time::timeout(config.shutdown_grace, &mut opening).await {
                    Ok(Ok((store, ..))) => store.close().await,
                    Ok(Err(err)) => tracing::warn!(error = %err, "the store's open failed during shutdown"),
                    Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "the store was still opening after the shutdown grace; exiting without it"),
                }
            }
            tasks.close();
            tasks.wait().await;
            return Ok(());
        }
    };
    let (store, retention_store, tokens, nats) = opened;
    let outbound = start_webhooks(&config, &store, nats, &metrics, &tasks, &token).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EventServiceServer<EventsApi>>().await;
    if keys.enabled() {
        // The listener is installed here, before serving: a SIGHUP that arrived before the
        // task first ran would otherwise take its default action and end the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tasks.spawn(reload_keys_on_sighup(keys.clone(), hangup, token.clone()));
    }
    tasks.spawn(report_health(store.clone(), health.clone(), token.clone()));
    if let Some(store) = retention_store {
        tracing::info!(max_age = ?retention.max_age, max_events = ?retention.max_events, "retention enabled");
        tasks.spawn(retention::enforce(store, retention, token.clone()));
    }

    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::Startup(format!("cannot listen on --metrics-listen {addr}: {e}"))
        })?),
        None => None,
    };
    let in_flight = InFlightLimit::new(config.max_in_flight, metrics.clone());
    let limits = EventLimits { max_data_bytes: config.max_data_bytes };
    // Before the routers: gRPC SubscribeEvents and the HTTP stream share it.
    let fanout = Fanout::new(
        store.clone(),
        SubscriptionConfig {
            heartbeat: config.heartbeat_interval,
            max_subscribers: config.max_subscribers,
        },
        metrics.clone(),
        keys.clone(),
        token.clone(),
        tasks.clone(),
    );
    let http = router(IngestState {
        store: store.clone(),
        limits,
        webhooks: Arc::new(webhooks),
        max_body_bytes: config.max_body_bytes,
        keys: keys.clone(),
        metrics: metrics.clone(),
    })
    .merge(crate::views::router(crate::views::ViewsState {
        store: store.clone(),
        keys: keys.clone(),
        tokens: tokens.clone(),
        fanout: fanout.clone(),
        messages: Default::default(),
    }))
    .merge(crate::console::router());
    let http = match &outbound {
        Some(webhooks) => http.merge(crate::views::endpoints::router(EndpointsState {
            webhooks: webhooks.clone(),
            keys: keys.clone(),
        })),
        None => http,
    };
    // Every event API request is counted; the router's own answers (no route, wrong method)
    // are classified errors too.
    let http = crate::error::with_http_fallbacks(http)
        .layer(axum::middleware::from_fn_with_state(metrics.clone(), crate::metrics::count_http));
    let scrape = |admin_keys| {
        crate::metrics::router(MetricsState {
            admin_keys,
            metrics: metrics.clone(),
            store: store.clone(),
            data_dir: config.data_dir.clone(),
            limit: in_flight.clone(),
        })
    };
    // With --metrics-listen the series are served there only; otherwise on the HTTP listener,
    // behind an admin key whenever keys are configured.
    let (http, metrics_router) = match &metrics_listener {
        Some(_) => (http, Some(crate::error::with_http_fallbacks(scrape(None)))),
        None => (http.merge(scrape(keys.enabled().then(|| keys.clone()))), None),
    };
    let api = EventsApi::new(store.clone(), limits, fanout, metrics.clone(), tokens);
    let events = EventServiceServer::new(api)
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(usize::MAX);
    let (reflection_v1, reflection_v1alpha) = if config.no_reflection {
        (None, None)
    } else {
        let (v1, v1alpha) = reflection_services()?;
        (Some(v1), Some(v1alpha))
    };

    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls.is_some(),
        store = %store_description(&config),
        durable_sequence = *store.durable().borrow(),
        "eventsd serving"
    );
    let fd_limit = connections::raise_fd_limit();
    let settings = ConnectionSettings {
        max_connections: config.max_connections.map_or_else(
            || {
                connections::default_max_connections(
                    fd_limit,
                    2 + metrics_listener.is_some() as u64,
                )
            },
            |n| usize::try_from(n).unwrap_or(usize::MAX),
        ),
        header_timeout: config.http_header_timeout,
        body_timeout: config.http_body_timeout,
        idle_timeout: config.http_idle_timeout,
    };
    tracing::info!(
        max_connections = settings.max_connections,
        open_file_limit = fd_limit,
        "connection cap per listener"
    );
    let incoming = ReceiverStream::new(connections::accept(
        listeners.grpc,
        "grpc",
        settings,
        token.clone(),
        &tasks,
    ))
    .map(|(conn, _peer)| Ok::<_, std::io::Error>(conn));
    let mut builder = Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.grpc.clone())
            .map_err(|e| Error::Startup(format!("gRPC TLS: {e}")))?;
    }
    let grpc = builder
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .timeout(config.request_timeout)
        // Outermost first: a caller is authenticated before it may take an in-flight permit.
        .layer(AuthLayer { keys: keys.clone(), metrics: metrics.clone() })
        .layer(in_flight)
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(events)
        .add_optional_service(
            outbound.clone().map(|w| WebhookServiceServer::new(WebhooksApi::new(w))),
        )
        .serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned());
    let http_accepted =
        connections::accept(listeners.http, "http", settings, token.clone(), &tasks);
    let http: Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
        Some(tls) => Box::pin(connections::serve_http(
            crate::tls::handshakes(http_accepted, tls.http, token.clone(), &tasks),
            http,
            settings,
            token.clone(),
        )),
        None => Box::pin(connections::serve_http(http_accepted, http, settings, token.clone())),
    };
    let scrapes: Pin<Box<dyn Future<Output = ()> + Send>> = match (metrics_listener, metrics_router)
    {
        (Some(listener), Some(router)) => {
            tracing::info!(metrics = %listener.local_addr()?, "metrics served on their own listener");
            let accepted =
                connections::accept(listener, "metrics", settings, token.clone(), &tasks);
            Box::pin(connections::serve_http(accepted, router, settings, token.clone()))
        }
        _ => Box::pin(std::future::ready(())),
    };
    let served = async { tokio::join!(grpc, http, scrapes) };
    // After the shutdown signal, connections get the grace period to finish; a client that
    // stops reading must not keep the process alive.
    let grace = {
        let token = token.clone();
        async move {
            token.cancelled().await;
            tokio::time::sleep(config.shutdown_grace).await;
        }
    };
    let grpc_served = tokio::select! {
        (grpc, (), ()) = served => grpc,
        () = grace => {
            tracing::warn!(grace = ?config.shutdown_grace, "connections still open after the shutdown grace; closing them");
            Ok(())
        }
    };

    tracing::info!("shutting down: draining subscriptions and flushing the store");
    health.set_not_serving::<EventServiceServer<EventsApi>>().await;
    tasks.close();
    tasks.wait().await;
    if let Some(outbound) = &outbound {
        if let Err(error) = outbound.flush().await {
            tracing::warn!(%error, "flushing the delivery state failed; pending attempts will repeat");
        }
    }
    store.close().await;
    grpc_served.map_err(|e| Error::Startup(format!("gRPC server: {e}")))?;
    tracing::info!("eventsd stopped");
    Ok(())
}

/// Starts outbound webhooks, one worker per endpoint on the task tracker. On the embedded
/// store their state is in `<data-dir>/deliveries`. On JetStream it is in the KV bucket
/// `<stream>_DELIVERIES`, shared by every instance over the stream; each endpoint's worker
/// runs in one instance at a time, the one holding its lease (`delivery::sharing`), and
/// requests reach it from any instance.
async fn start_webhooks(
    config: &ServeConfig,
    store: &Arc<dyn EventStore>,
    nats: Option<async_nats::Client>,
    metrics: &Metrics,
    tasks: &TaskTracker,
    token: &CancellationToken,
) -> Result<Option<Webhooks>, Error> {
    let delivery = &config.delivery;
    let (state, sharing) = match nats {
        None => (DeliveryStore::open(&config.data_dir)?, None),
        Some(client) => {
            let kv = KvDeliveries::open(&client, &config.nats_stream, config.nats_replicas).await?;
            let sharing = Sharing::new(kv.clone(), &config.nats_stream, delivery.lease)?;
            (DeliveryStore::Kv(kv), Some(sharing))
        }
    };
    let rules =
        TargetRules { allow_private: delivery.allow_private, allow_http: delivery.allow_http };
    let settings = dispatch::Settings {
        store: store.clone(),
        state,
        sender: Sender::new(rules, delivery.timeout, delivery.ca.as_deref())?,
        schedule: delivery.retry_schedule.clone(),
        disable_after: delivery.disable_after,
        metrics: metrics.clone(),
        sharing,
    };
    let dispatcher = Dispatcher::start(settings, tasks.clone(), token.clone()).await?;
    Ok(Some(Webhooks::new(dispatcher, delivery.rotation_overlap)))
}

/// Opens the configured backend with its page-token secret; the embedded store also comes
/// back for retention, and JetStream's connection for the outbound webhooks' shared state.
async fn open_store(
    config: &ServeConfig,
    retention: &Retention,
    metrics: &Metrics,
) -> Result<(Arc<dyn EventStore>, Option<SledStore>, PageTokens, Option<async_nats::Client>), Error>
{
    match &config.store {
        StoreKind::Embedded => {
            let store_config = StoreConfig {
                path: config.data_dir.clone(),
                cache_bytes: config.cache_bytes,
                durability: config.durability,
                metrics: metrics.clone(),
                segment_bytes: config.segment_bytes,
                list_deadline: config.list_deadline,
            };
            // On a blocking thread, so a shutdown during a long open need not wait for it.
            let store = tokio::task::spawn_blocking(move || SledStore::open(&store_config))
                .await
                .map_err(|e| Error::Startup(format!("the store's open stopped: {e}")))??;
            let retained = retention.is_enabled().then(|| store.clone());
            let tokens = PageTokens::in_dir(&config.data_dir)?;
            Ok((Arc::new(store), retained, tokens, None))
        }
        StoreKind::JetStream(urls) => {
            if retention.is_enabled() {
                return Err(Error::Startup(
                    "--retention and --max-events apply to the embedded store only: the \
                     JetStream stream keeps every event, so sequences stay gapless"
                        .into(),
                ));
            }
            let store = JetStreamStore::open(&JetStreamConfig {
                urls: urls.clone(),
                stream: config.nats_stream.clone(),
                replicas: config.nats_replicas,
                tls_ca: config.nats_tls_ca.clone(),
                tls_cert: config.nats_tls_cert.clone(),
                tls_key: config.nats_tls_key.clone(),
                creds: config.nats_creds.clone(),
                request_timeout: config.request_timeout,
                cache_bytes: config.cache_bytes,
                metrics: metrics.clone(),
            })
            .await?;
            let tokens = PageTokens::new(store.page_token_key());
            let client = store.client();
            Ok((Arc::new(store), None, tokens, Some(client)))
        }
    }
}

fn store_description(config: &ServeConfig) -> String {
    match &config.store {
        StoreKind::Embedded => format!("log + sled index in {}", config.data_dir.display()),
        StoreKind::JetStream(urls) => format!(
            "JetStream stream {} at {}",
            config.nats_stream,
            crate::store::jetstream::setup::redacted(urls)
        ),
    }
}

/// Keeps the gRPC health status in step with the store: NOT_SERVING while it cannot take
/// writes (a storage error; for JetStream, no connection or no stream leader).
async fn report_health(
    store: Arc<dyn EventStore>,
    health: tonic_health::server::HealthReporter,
    token: CancellationToken,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        let now = store.writable();
        if now != serving {
            serving = now;
            if now {
                health.set_serving::<EventServiceServer<EventsApi>>().await;
            } else {
                health.set_not_serving::<EventServiceServer<EventsApi>>().await;
            }
        }
    }
}

/// The reflection services (v1, and v1alpha for grpcurl 1.8, evans and Postman), describing
/// events.v1 and grpc.health.v1.
fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let v1alpha =
        builder().build_v1alpha().map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    Ok((v1, v1alpha))
}

/// The safe default: without API keys or client certificates, eventsd listens on loopback
/// only, unless the operator says otherwise with --allow-unauthenticated.
fn check_exposure(
    config: &ServeConfig,
    keys: &KeyRing,
    mutual_tls: bool,
    addrs: &[std::net::SocketAddr],
) -> Result<(), Error> {
    if keys.enabled() || mutual_tls {
        return Ok(());
    }
    let exposed: Vec<String> =
        addrs.iter().filter(|a| !a.ip().is_loopback()).map(|a| a.to_string()).collect();
    if exposed.is_empty() {
        tracing::warn!("no API keys configured (--api-keys): every caller is unrestricted, so eventsd serves on loopback only");
        return Ok(());
    }
    if config.allow_unauthenticated {
        tracing::warn!(addresses = %exposed.join(", "), "serving without authentication on non-loopback addresses (--allow-unauthenticated)");
        return Ok(());
    }
    Err(Error::Startup(format!(
        "refusing to listen on {} without authentication: configure --api-keys or --tls-client-ca, \
         or pass --allow-unauthenticated",
        exposed.join(", ")
    )))
}

/// Reloads the API keys on every SIGHUP until shutdown.
async fn reload_keys_on_sighup(
    keys: KeyRing,
    mut hangup: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = hangup.recv() => keys.reload(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Completes on SIGINT (ctrl-c) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives while the store opens (a
/// replay, a JetStream catch-up) is caught and ends the start cleanly instead of killing the
/// process by the signal's default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &'static str| {
        let installed = signal(kind);
        async move {
            match installed {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = interrupt => {}
            () = terminate => {}
        }
        tracing::info!("shutdown signal received");
    }
}
