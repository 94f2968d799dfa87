//! Metrics: Prometheus text at `GET /metrics`, on the HTTP listener or on its own
//! `--metrics-listen` address.
//!
//! Names follow Prometheus conventions (`eventsd_…_total`, `_seconds`, `_bytes`). Everything
//! is recorded where it happens, through one cheap-to-clone [`Metrics`] handle: publishes and
//! commits in the store's writer, subscriptions in the fan-out, rejections at the ingest
//! boundary. Store size and event count are read at scrape time. No label ever carries a
//! secret or event data. `type` and `source` labels come from published events, so their
//! number is bounded: the first `--metrics-max-types` distinct values of each get a series,
//! and later ones are counted under `other` (a caller publishing many types cannot grow the
//! scrape without bound).
//!
//! Who may scrape: without API keys, anyone who reaches the listener (loopback by default).
//! With keys, the series reveal both modes' types and the durable sequence, so on the HTTP
//! listener `/metrics` needs a key with the `admin` scope; with `--metrics-listen` it is
//! served only there, keyless, for a network that only the scraper reaches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::auth::{KeyRing, Scope};
use crate::error::Error;
use crate::limits::InFlightLimit;
use crate::store::EventStore;

/// Labels of published events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event type.
    pub r#type: String,
    /// The event source (empty if none).
    pub source: String,
}

/// Labels of outbound webhook series: the endpoint's id (never its URL or secret).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint id (`ep_…`).
    pub endpoint: String,
}

/// Labels of finished outbound deliveries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The endpoint id.
    pub endpoint: String,
    /// `succeeded` or `failed`.
    pub status: String,
}

/// Outbound webhook series.
struct WebhookSeries {
    deliveries: Family<DeliveryLabels, Counter>,
    attempt_seconds: Histogram,
    attempts_failed: Family<EndpointLabels, Counter>,
    pending: Family<EndpointLabels, Gauge>,
    oldest_pending_seconds: Family<EndpointLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl WebhookSeries {
    fn register(registry: &mut Registry) -> Self {
        let series = WebhookSeries {
            deliveries: Family::default(),
            attempt_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            attempts_failed: Family::default(),
            pending: Family::default(),
            oldest_pending_seconds: Family::default(),
        };
        registry.register(
            "eventsd_webhook_deliveries",
            "Outbound deliveries finished, by endpoint and status (succeeded, failed)",
            series.deliveries.clone(),
        );
        registry.register(
            "eventsd_webhook_attempt_duration_seconds",
            "Time of one outbound attempt, from connect to the answer's head or failure",
            series.attempt_seconds.clone(),
        );
        registry.register(
            "eventsd_webhook_attempts_failed",
            "Outbound attempts that failed (non-2xx, timeout, connection error), by endpoint",
            series.attempts_failed.clone(),
        );
        registry.register(
            "eventsd_webhook_pending",
            "Recorded deliveries still pending (waiting or in flight), by endpoint",
            series.pending.clone(),
        );
        registry.register(
            "eventsd_webhook_oldest_pending_seconds",
            "How long the most overdue pending delivery has waited past its due time, by endpoint",
            series.oldest_pending_seconds.clone(),
        );
        series
    }
}

/// Labels of rejected ingest requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Where it came in: `grpc`, `http`, or `webhook:<source>`.
    pub route: String,
    /// The error code, such as `invalid_argument` or `unauthenticated`.
    pub reason: String,
}

struct Inner {
    registry: Registry,
    published: Family<EventLabels, Counter>,
    publish_seconds: Histogram,
    commit_batch_events: Histogram,
    commit_sync_seconds: Histogram,
    subscribers: Gauge,
    subscribers_lagging: Gauge,
    deliveries: Counter,
    rejections: Family<RejectLabels, Counter>,
    webhooks: WebhookSeries,
    types: Bounded,
    sources: Bounded,
}

/// The label value every value beyond the bound is counted under.
pub const OTHER: &str = "other";

/// Default of `--metrics-max-types`.
pub const DEFAULT_MAX_TYPES: usize = 1000;

/// A label whose distinct values are capped: the first `max` seen keep their own series.
struct Bounded {
    max: usize,
    seen: RwLock<HashSet<String>>,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Bounded { max, seen: RwLock::new(HashSet::new()) }
    }

    /// The label to record `value` under: itself if it has (or may get) a series, else
    /// [`OTHER`]. The read lock is the common path: values already seen.
    fn label(&self, value: &str) -> String {
        if self.seen.read().is_ok_and(|seen| seen.contains(value)) {
            return value.to_string();
        }
        let Ok(mut seen) = self.seen.write() else { return OTHER.to_string() };
        if seen.len() < self.max && value != OTHER {
            seen.insert(value.to_string());
            return value.to_string();
        }
        if seen.contains(value) {
            value.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

/// The metrics handle; clones share the same series.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of series with the default label bound.
    pub fn new() -> Self {
        Self::with_max_types(DEFAULT_MAX_TYPES)
    }

    /// A fresh set of series; at most `max_types` distinct types and as many sources get a
    /// series of their own.
    pub fn with_max_types(max_types: usize) -> Self {
        let mut registry = Registry::default();
        let published = Family::<EventLabels, Counter>::default();
        registry.register(
            "eventsd_events_published",
            "Events stored, by type and source",
            published.clone(),
        );
        let publish_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "eventsd_publish_duration_seconds",
            "Time from a publish reaching the store to its durable acknowledgement",
            publish_seconds.clone(),
        );
        let commit_batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "eventsd_commit_batch_events",
            "New events per group commit (one flush each)",
            commit_batch_events.clone(),
        );
        let commit_sync_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "eventsd_commit_sync_duration_seconds",
            "Time of one group commit's flush and fsync",
            commit_sync_seconds.clone(),
        );
        let subscribers = Gauge::default();
        registry.register(
            "eventsd_subscribers",
            "Open SubscribeEvents streams",
            subscribers.clone(),
        );
        let subscribers_lagging = Gauge::default();
        registry.register(
            "eventsd_subscribers_lagging",
            "Subscriptions more than one read batch behind the durable sequence",
            subscribers_lagging.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "eventsd_deliveries",
            "Events delivered to subscribers",
            deliveries.clone(),
        );
        let rejections = Family::<RejectLabels, Counter>::default();
        registry.register(
            "eventsd_ingest_rejections",
            "Publishes and webhook deliveries refused, by route and reason",
            rejections.clone(),
        );
        let webhooks = WebhookSeries::register(&mut registry);
        Metrics(Arc::new(Inner {
            registry,
            published,
            publish_seconds,
            commit_batch_events,
            commit_sync_seconds,
            subscribers,
            subscribers_lagging,
            deliveries,
            rejections,
            webhooks,
            types: Bounded::new(max_types),
            sources: Bounded::new(max_types),
        }))
    }

    /// `n` events of this type and source stored.
    pub fn published(&self, event_type: &str, source: &str, n: u64) {
        self.0
            .published
            .get_or_create(&EventLabels {
                r#type: self.0.types.label(event_type),
                source: self.0.sources.label(source),
            })
            .inc_by(n);
    }

    /// One publish acknowledged after `elapsed`.
    pub fn publish_latency(&self, elapsed: Duration) {
        self.0.publish_seconds.observe(elapsed.as_secs_f64());
    }

    /// One group commit of `events` new events whose flush and sync took `elapsed`.
    pub fn commit(&self, events: usize, elapsed: Duration) {
        self.0.commit_batch_events.observe(events as f64);
        self.0.commit_sync_seconds.observe(elapsed.as_secs_f64());
    }

    /// A subscription opened; the returned guard closes it when dropped.
    pub fn subscriber(&self) -> SubscriberGuard {
        self.0.subscribers.inc();
        SubscriberGuard { metrics: self.clone(), lagging: false }
    }

    /// One event delivered.
    pub fn delivered(&self) {
        self.0.deliveries.inc();
    }

    /// One outbound attempt finished.
    pub fn webhook_attempt(&self, endpoint: &str, succeeded: bool, elapsed: Duration) {
        self.0.webhooks.attempt_seconds.observe(elapsed.as_secs_f64());
        if !succeeded {
            let labels = EndpointLabels { endpoint: endpoint.to_string() };
            self.0.webhooks.attempts_failed.get_or_create(&labels).inc();
        }
    }

    /// One outbound delivery finished as `status` (`succeeded` or `failed`).
    pub fn webhook_delivery(&self, endpoint: &str, status: &str) {
        let labels = DeliveryLabels { endpoint: endpoint.to_string(), status: status.to_string() };
        self.0.webhooks.deliveries.get_or_create(&labels).inc();
    }

    /// An endpoint's pending deliveries and how overdue the most overdue one is.
    pub fn webhook_pending(&self, endpoint: &str, pending: usize, overdue_seconds: f64) {
        let labels = EndpointLabels { endpoint: endpoint.to_string() };
        self.0.webhooks.pending.get_or_create(&labels).set(pending as i64);
        self.0.webhooks.oldest_pending_seconds.get_or_create(&labels).set(overdue_seconds);
    }

    /// One ingest request refused.
    pub fn rejected(&self, route: &str, reason: &str) {
        self.0
            .rejections
            .get_or_create(&RejectLabels { route: route.to_string(), reason: reason.to_string() })
            .inc();
    }
}

/// Keeps the subscriber gauges right for one subscription, whatever way it ends.
pub struct SubscriberGuard {
    metrics: Metrics,
    lagging: bool,
}

impl SubscriberGuard {
    /// Marks the subscription as lagging or not.
    pub fn set_lagging(&mut self, lagging: bool) {
        if lagging != self.lagging {
            self.lagging = lagging;
            if lagging {
                self.metrics.0.subscribers_lagging.inc();
            } else {
                self.metrics.0.subscribers_lagging.dec();
            }
        }
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.set_lagging(false);
        self.metrics.0.subscribers.dec();
    }
}

/// What `GET /metrics` reads besides the registry.
#[derive(Clone)]
pub struct MetricsState {
    /// With `Some`, a scrape needs a key of this ring with the `admin` scope.
    pub admin_keys: Option<KeyRing>,
    /// The series.
    pub metrics: Metrics,
    /// For the event count and durable sequence.
    pub store: Arc<dyn EventStore>,
    /// For the size on disk.
    pub data_dir: PathBuf,
    /// For the load-shedding count.
    pub limit: InFlightLimit,
}

/// The `GET /metrics` route.
pub fn router(state: MetricsState) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(state)
}

async fn scrape(
    State(state): State<MetricsState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, Error> {
    if let Some(keys) = &state.admin_keys {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        keys.authenticate(authorization)?.require(Scope::Admin)?;
    }
    let mut text = String::new();
    if let Err(err) =
        prometheus_client::encoding::text::encode_registry(&mut text, &state.metrics.0.registry)
    {
        tracing::error!(error = %err, "cannot encode metrics");
    }
    // The registry's text ends with `# EOF`; the scrape-time series go before it.
    if let Some(stripped) = text.strip_suffix("# EOF\n") {
        text.truncate(stripped.len());
    }
    let durable = *state.store.durable().borrow();
    let kept = (durable + 1).saturating_sub(state.store.first_sequence());
    let dir = state.data_dir.clone();
    let size = tokio::task::spawn_blocking(move || dir_size(&dir)).await.unwrap_or(0);
    let gauges = [
        ("eventsd_store_events", "Events kept in the store", kept),
        ("eventsd_durable_sequence", "Newest durable sequence", durable),
        ("eventsd_store_size_bytes", "Size of the data folder on disk", size),
    ];
    for (name, help, value) in gauges {
        text.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} gauge\n{name} {value}\n"));
    }
    let shed = state.limit.shed_total();
    text.push_str(&format!(
        "# HELP eventsd_load_shed Unary calls refused at the in-flight limit.\n# TYPE eventsd_load_shed counter\neventsd_load_shed_total {shed}\n"
    ));
    text.push_str("# EOF\n");
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        text,
    ))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_the_bound_are_counted_as_other() {
        let bounded = Bounded::new(2);
        assert_eq!(bounded.label("a"), "a");
        assert_eq!(bounded.label("b"), "b");
        assert_eq!(bounded.label("c"), OTHER);
        assert_eq!(bounded.label("a"), "a", "values seen keep their series");
        assert_eq!(Bounded::new(5).label(OTHER), OTHER);
    }
}
