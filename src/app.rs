//! The composition root: shared state, the router with its middleware stack, background
//! tasks, and start-up (database, migrations, admin bootstrap).

use std::{future::Future, sync::Arc};

use axum::{
    extract::{DefaultBodyLimit, FromRef, MatchedPath},
    http::{Request, Response, StatusCode},
    middleware::from_fn,
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    actuator, auth,
    auth::JwtKeys,
    catalog::{self, Cache},
    config::Config,
    console, db,
    events::{self, Events},
    http::{self, error_body, metrics as http_metrics, openapi, request_id},
    idempotency, notifications, operators, orders, outbox, telemetry,
};
use orderflow_jobs::{
    kafka_clients::{self, KafkaClient},
    publish_batch::{BatchSettings, PublishBatcher},
    trace,
};

#[derive(Clone)]
pub struct AppState {
    pub db: MySqlPool,
    pub cache: Cache,
    pub jwt: Arc<JwtKeys>,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    pub events: Arc<Events>,
    pub login_throttle: auth::LoginThrottle,
    /// Committed outbox rows on their way to a shared publish-outbox job.
    pub publisher: PublishBatcher,
    /// POST /orders, committed in batches.
    pub orders: orders::OrderCommitter,
}

impl FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

impl FromRef<AppState> for MySqlPool {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

/// What a process serves: `all` is the API and the background workers together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Role {
    #[default]
    All,
    Api,
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// Connects to everything and prepares the database. Redis is not required to start.
pub async fn init(config: Config) -> anyhow::Result<AppState> {
    // Also for configurations made in code: no known or short secret ever signs a token.
    if let Some(reason) = crate::config::jwt_secret_refusal(&config.jwt.secret) {
        anyhow::bail!("JWT_SECRET {reason}");
    }
    if config.jwt.random_secret {
        tracing::warn!(
            "JWT_SECRET is not set: tokens are signed with a random secret made at this start. \
             They do not survive a restart and are not accepted by other replicas. Set \
             JWT_SECRET (at least 32 random bytes) for more than one process or across restarts."
        );
    }
    db::create_database_if_missing(&config.database_url).await?;
    let pool = db::connect(
        &config.database_url,
        &db::PoolSettings::from_config(&config),
    )
    .await?;
    if config.run_migrations {
        db::migrate(&pool).await?;
    }
    if let Some((email, password)) = &config.admin_bootstrap {
        bootstrap_admin(&pool, email, password).await?;
    }
    let events = events::connect(&config.events).await?;
    // Each replacement of a producer librdkafka declared dead shows in the queue overview.
    events.producer.on_rebuild(Box::new({
        let pool = pool.clone();
        move |rebuild| {
            kafka_clients::record_later(&pool, KafkaClient::Producer, rebuild.error.clone())
        }
    }));
    let publisher = PublishBatcher::start(
        pool.clone(),
        config.events.queue,
        events.publish_wake.clone(),
        BatchSettings {
            linger: config.events.publish_linger,
            max_rows: config.events.publish_batch as usize,
        },
    );
    let cache = Cache::new(
        &config.redis_url,
        &config.cache_key_prefix,
        config.redis_timeout,
        config.cache_ttl,
    );
    let orders = orders::OrderCommitter::start(
        &config.database_url,
        publisher.clone(),
        cache.clone(),
        orders::CommitSettings {
            lanes: config.order_batches.lanes,
            max_batch: config.order_batches.max_batch,
            linger: config.order_batches.linger,
            retention: config.idempotency.retention,
            in_flight_wait: config.idempotency.in_flight_wait,
            deadline: config.order_batches.deadline,
            queue_max: config.order_batches.queue_max,
            queue_max_wait: config.order_batches.queue_max_wait,
        },
    )?;
    Ok(AppState {
        publisher,
        orders,
        events: Arc::new(events),
        cache,
        login_throttle: auth::LoginThrottle::new(
            &config.redis_url,
            &config.cache_key_prefix,
            config.login_throttle.clone(),
        ),
        jwt: Arc::new(JwtKeys::new(&config.jwt)),
        metrics: telemetry::metrics_handle(),
        db: pool,
        config: Arc::new(config),
    })
}

/// ADMIN_EMAIL / ADMIN_PASSWORD (docs/adr/0020-admin-bootstrap.md). A refusal does not stop
/// the start — anyone could then keep the service down by registering the address — it is
/// logged as an error for the operator to look into.
async fn bootstrap_admin(pool: &MySqlPool, email: &str, password: &str) -> anyhow::Result<()> {
    match auth::ensure_admin(pool, email, password).await? {
        auth::Bootstrap::Created => {
            tracing::info!(email, "administrator account created from ADMIN_EMAIL");
        }
        auth::Bootstrap::AlreadyAdmin => {
            tracing::info!(email, "ADMIN_EMAIL is an administrator already");
        }
        auth::Bootstrap::Promoted => tracing::warn!(
            email,
            "ADMIN_EMAIL's existing account promoted to ADMIN: its password is ADMIN_PASSWORD"
        ),
        auth::Bootstrap::Refused { found } => tracing::error!(
            email,
            found,
            "ADMIN_EMAIL NOT applied: the account registered under this address (or a look-alike \
             differing only in case or accents) does not have ADMIN_PASSWORD as its password, \
             so someone else may have registered it. It stays as it is. Find out who owns it; \
             if it is yours, promote it with `orderflow users promote <its exact email>`, \
             otherwise set ADMIN_EMAIL to an address nobody has registered"
        ),
    }
    Ok(())
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::router())
        .merge(catalog::router())
        .merge(orders::router())
        .merge(notifications::router())
        .merge(operators::router())
}

/// The server span of a request, named and attributed per the OpenTelemetry HTTP semantic
/// conventions; it continues the caller's `traceparent` when one is sent.
fn http_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    let path = req.uri().path();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        "http.request.method" = %req.method(),
        "http.route" = route,
        "url.path" = path,
        "http.response.status_code" = tracing::field::Empty,
        requestId = %request_id,
        userId = tracing::field::Empty,
        orderId = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let caller = outbox::trace_context(req.headers());
    caller.adopt(&span);
    // The caller's trace id, when nothing of ours is recorded; else our span's ids.
    if let Some(id) = caller.trace_id() {
        span.record("trace_id", id);
    }
    trace::record_ids(&span);
    span
}

fn record_status<B>(res: &Response<B>, _latency: std::time::Duration, span: &tracing::Span) {
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The routes a process of `role` serves, and the OpenAPI document describing exactly those.
pub fn routes(role: Role) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut routes =
        OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).merge(actuator::router());
    if role.serves_api() {
        routes = routes.nest("/api/v1", api_routes());
    }
    let (router, doc) = routes.split_for_parts();
    (router, openapi::complete(doc))
}

/// The routes of `role` (documented), Swagger UI and the web console (every role serves
/// HTTP, so every role serves the console), inside the middleware stack.
pub fn router(state: AppState, role: Role) -> Router {
    let (routes, doc) = routes(role);
    let console = console::router(&state);
    with_middleware(
        routes.merge(openapi::docs_router(doc)).merge(console),
        state,
    )
}

/// Wraps routes in the service's middleware stack (request ids, tracing, the standard error
/// body, panic catching, timeout, body limit, metrics). Public so that tests can check the
/// stack's behaviour on routes of their own, such as one that panics.
pub fn with_middleware(routes: Router<AppState>, state: AppState) -> Router {
    let config = state.config.clone();
    // Router::layer wraps every route, so the layers run after routing (the metrics see the
    // route template); the last layer added is the outermost.
    routes
        .fallback(error_body::not_found)
        .layer(from_fn(http_metrics::record))
        .layer(DefaultBodyLimit::max(config.http_body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.http_request_timeout,
        ))
        .layer(CatchPanicLayer::custom(error_body::panic_response))
        .layer(from_fn(error_body::render_errors))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(http_span)
                .on_response(record_status),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(from_fn(request_id::drop_insane_request_id))
        .with_state(state)
}

/// The event pipeline of this process, as configured.
pub fn pipeline(state: &AppState) -> orderflow_workflows::Pipeline {
    let cfg = &state.config.events;
    orderflow_workflows::Pipeline {
        pool: state.db.clone(),
        producer: state.events.producer.clone(),
        bootstrap: state.events.bootstrap.clone(),
        topic_prefix: cfg.topic_prefix.clone(),
        consumer_group: cfg.consumer_group.clone(),
        consumer_instance_id: cfg.consumer_instance_id.clone(),
        settings: cfg.queue,
        concurrency: cfg.worker_concurrency,
        publish_batch: cfg.publish_batch,
        sweep_interval: cfg.sweep_interval,
        sweep_grace: cfg.sweep_grace,
        shutdown_timeout: cfg.shutdown_timeout,
        publish_retry: orderflow_jobs::retry_policy::RetryPolicy {
            window: cfg.publish_retry_window,
        },
        // A send lasts at most the delivery timeout after the queue wait; the margin covers
        // the UPDATE that settles it.
        publish_claim_lease: cfg.delivery_timeout
            + orderflow_jobs::publish::QUEUE_WAIT
            + std::time::Duration::from_secs(5),
        archive: state.config.archive.clone(),
        retention: retention_schedule(&state.config),
        audit: orderflow_workflows::AuditSchedule {
            cron: state.config.audit.cron.clone(),
            auditor: crate::audit::scheduled(&state.config),
        },
        publish_wake: state.events.publish_wake.clone(),
        notify_wake: Default::default(),
        pauses: Default::default(),
        consumer_fatal_for_test: state.events.consumer_fatal_for_test.clone(),
    }
}

/// What the retention job purges, each kind with its own retention.
fn retention_schedule(config: &Config) -> orderflow_workflows::RetentionSchedule {
    use orderflow_jobs::{
        kafka_clients::OldKafkaClientRebuilds,
        retention::{FinishedJobs, PublishedOutboxRows},
    };
    let finished_after = config.retention.finished_after;
    orderflow_workflows::RetentionSchedule {
        cron: config.retention.cron.clone(),
        kinds: vec![
            Arc::new(idempotency::ExpiredIdempotencyKeys),
            Arc::new(console::session::ExpiredConsoleSessions),
            Arc::new(PublishedOutboxRows(finished_after)),
            Arc::new(FinishedJobs(finished_after)),
            Arc::new(OldKafkaClientRebuilds(finished_after)),
        ],
    }
}

/// Starts the background work of the worker role; it stops when `shutdown` is cancelled.
pub fn spawn_workers(
    state: &AppState,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if state.events.embedded.is_some() {
        tasks.push(tokio::spawn(events::reseed_embedded(
            state.db.clone(),
            state.events.producer.clone(),
            state.config.events.topic_prefix.clone(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(orderflow_workflows::run(
        pipeline(state),
        shutdown,
    )));
    tasks
}

/// Serves until `signal` resolves, then drains in-flight requests and stops the workers.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    role: Role,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = CancellationToken::new();
    let workers = if role.runs_workers() {
        spawn_workers(&state, shutdown.clone())
    } else {
        Vec::new()
    };
    let publisher = state.publisher.clone();
    let limits = state.config.http_connections;
    let app = router(state, role);
    let stop = shutdown.clone();
    let result = http::server::serve(listener, app, limits, async move {
        tokio::select! {
            () = signal => {}
            () = stop.cancelled() => {}
        }
    })
    .await;
    // The last requests are answered: their rows get their publish jobs before we stop.
    publisher.close().await;
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    result
}
