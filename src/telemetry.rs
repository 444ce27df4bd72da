//! Logs and metrics.
//!
//! Logs are JSON lines by default (`LOG_FORMAT=pretty` for humans); the fields of the
//! enclosing spans (requestId, userId, orderId) are flattened into every line so a grep for
//! one request id finds all of its lines. Metrics go to one process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use crate::config::LogFormat;

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().pretty()).try_init(),
    };
    // A second init (tests start many apps in one process) keeps the first subscriber.
    let _ = result;
}

/// Latency buckets in seconds, from sub-millisecond cache hits to the request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder; installed on first use so that several apps in one test
/// process share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static bucket list is non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process")
        })
        .clone()
}

pub mod names {
    pub const HTTP_REQUESTS: &str = "http_requests_total";
    pub const HTTP_DURATION: &str = "http_request_duration_seconds";
    pub const CACHE_REQUESTS: &str = "cache_requests_total";
    pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
    pub const ORDERS_CREATED: &str = "orders_created_total";
    pub const ORDERS_REJECTED: &str = "orders_rejected_total";
    pub const IDEMPOTENT_REPLAYS: &str = "idempotent_replays_total";
    pub const STOCK_LOCK_RETRIES: &str = "stock_lock_retries_total";
    pub const STOCK_LOCK_CONFLICTS: &str = "stock_lock_conflicts_total";
    pub const IDEMPOTENCY_PURGED: &str = "idempotency_keys_purged_total";
}
