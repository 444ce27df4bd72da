//! Logs, traces and metrics.
//!
//! Logs are JSON lines by default (`LOG_FORMAT=pretty` for humans); the fields of the
//! enclosing spans (requestId, userId, orderId, trace_id, span_id) are listed in every line
//! so a grep for one request id finds all of its lines, and a trace id leads to Jaeger.
//! Traces go to an OTLP endpoint when one is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`);
//! without one no OpenTelemetry layer is installed at all. Metrics go to one process-wide
//! Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanExporter},
    Resource,
};
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::config::{LogFormat, TracingConfig};

const SERVICE_NAME: &str = "orderflow";

/// Keeps the tracer provider alive; dropping it flushes the spans not yet exported.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("orderflow: flushing traces at exit failed: {e}");
            }
        }
    }
}

/// Logs, and traces when an OTLP endpoint is configured.
pub fn init(format: LogFormat, tracing: &TracingConfig) -> TelemetryGuard {
    let provider = tracing.otlp_endpoint.as_ref().and_then(|endpoint| {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => Some(tracer_provider(exporter)),
            Err(e) => {
                eprintln!("orderflow: no trace export to {endpoint}: {e}");
                None
            }
        }
    });
    install(Some(format), provider.clone());
    TelemetryGuard { provider }
}

/// Logs only (tests that want to see the service's logs).
pub fn init_logging(format: LogFormat) {
    install(Some(format), None);
}

/// A batch-exporting tracer provider for `exporter`, named after the service unless
/// `OTEL_SERVICE_NAME` names it.
pub fn tracer_provider(exporter: impl SpanExporter + 'static) -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build()
}

/// Installs the process-wide subscriber: the log layer (`None`: no logs) and, with a
/// provider, the OpenTelemetry layer. The W3C propagator is installed either way, so the
/// trace context that comes in is carried on. A second call (tests start many apps in one
/// process) keeps the first subscriber.
pub fn install(format: Option<LogFormat>, provider: Option<SdkTracerProvider>) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let logs = format.map(|format| match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_target(true)
            .boxed(),
        LogFormat::Pretty => fmt::layer().pretty().boxed(),
    });
    let traces = provider.map(|provider| {
        let tracer = provider.tracer(SERVICE_NAME);
        global::set_tracer_provider(provider);
        tracing_opentelemetry::layer().with_tracer(tracer)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
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
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static bucket list is non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            record_build_info();
            handle
        })
        .clone()
}

/// `orderflow_build_info{version, profile} 1`, the Prometheus convention for what is running:
/// a dashboard (or bench/) can tell a debug build from a release one without guessing.
fn record_build_info() {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    metrics::gauge!(
        names::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "profile" => profile
    )
    .set(1.0);
}

pub mod names {
    pub const BUILD_INFO: &str = "orderflow_build_info";
    pub const HTTP_REQUESTS: &str = "http_requests_total";
    pub const HTTP_DURATION: &str = "http_request_duration_seconds";
    pub const CACHE_REQUESTS: &str = "cache_requests_total";
    pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
    pub const ORDERS_CREATED: &str = "orders_created_total";
    pub const ORDERS_REJECTED: &str = "orders_rejected_total";
    pub const IDEMPOTENT_REPLAYS: &str = "idempotent_replays_total";
    /// Orders decided per batch (`orders::committer`).
    pub const ORDER_BATCH_SIZE: &str = "order_batch_size";
    /// Batches rolled back and run again, by reason (deadlock, lock_wait, key_taken).
    pub const ORDER_BATCH_RETRIES: &str = "order_batch_retries_total";
    /// Batches that could not be committed whole and were committed one order at a time.
    pub const ORDER_BATCH_SPLITS: &str = "order_batch_splits_total";
    /// Batches that committed nothing for want of the database, by reason (connection,
    /// timeout, lock_wait, in_doubt, ...): their orders were answered not done (or unknown).
    pub const ORDER_BATCH_FAILURES: &str = "order_batch_failures_total";
    /// Order requests answered 503 "not done" before a lane took them, by reason
    /// (queue_full, too_long_wait, deadline, client_gone): docs/adr/0018-order-admission.md.
    pub const ORDER_ADMISSION_REFUSED: &str = "order_admission_refused_total";
    /// Order requests answered ORDER_OUTCOME_UNKNOWN: inside a batch when their deadline came.
    pub const ORDER_OUTCOME_UNKNOWN: &str = "order_outcome_unknown_total";
    /// 1 while this replica's lanes can commit within the deadline (its readiness), else 0.
    pub const ORDER_COMMIT_READY: &str = "order_commit_ready";
    /// Order requests waiting for a lane.
    pub const ORDER_QUEUE_DEPTH: &str = "order_queue_depth";
    /// How long an order request waited for a lane to take it.
    pub const ORDER_QUEUE_WAIT: &str = "order_queue_wait_seconds";
    pub const STOCK_LOCK_RETRIES: &str = "stock_lock_retries_total";
    pub const STOCK_LOCK_CONFLICTS: &str = "stock_lock_conflicts_total";
    pub const IDEMPOTENCY_PURGED: &str = "idempotency_keys_purged_total";
    /// HTTP connections open (`http::server`).
    pub const HTTP_CONNECTIONS_OPEN: &str = "http_connections_open";
    /// HTTP connections closed by the server, by reason: a deadline passed
    /// (`header_timeout`, `request_timeout`, `idle_timeout`), over `HTTP_MAX_CONNECTIONS`
    /// (`over_capacity`: probes answered, the rest 503) or beyond its overflow (`refused`).
    pub const HTTP_CONNECTIONS_CLOSED: &str = "http_connections_closed_total";
}
