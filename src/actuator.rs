//! Operations endpoints outside `/api/v1`: health (with liveness and readiness), a metrics
//! index and the Prometheus scrape.

use std::time::Duration;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    db,
    error::{ApiError, ErrorBody},
    state::AppState,
    telemetry::names,
};

const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const DB_GAUGES_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(liveness))
        .routes(routes!(readiness))
        .routes(routes!(metrics_index))
        .routes(routes!(prometheus))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "UP")]
    pub status: &'static str,
}

const UP: Status = Status { status: "UP" };

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthComponents {
    pub db: Status,
    pub redis: Status,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "UP")]
    pub status: &'static str,
    pub components: HealthComponents,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricNames {
    pub names: Vec<String>,
}

async fn database_up(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(DB_CHECK_TIMEOUT, db::ping(&state.db)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn database_down(reason: String) -> Response {
    ApiError::unavailable()
        .with_detail("db", format!("database unreachable: {reason}"))
        .into_response()
}

/// Overall health: the database decides UP/DOWN; Redis is reported but, being only a
/// cache, never makes the service DOWN.
#[utoipa::path(
    get,
    path = "/actuator/health",
    operation_id = "health",
    tag = "operations",
    responses(
        (status = 200, description = "UP; Redis is reported, but only the database decides", body = Health),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database is unreachable", body = ErrorBody),
    )
)]
async fn health(State(state): State<AppState>) -> Response {
    let (db, redis) = tokio::join!(database_up(&state), state.cache.ping());
    let redis = Status {
        status: if redis { "UP" } else { "DOWN" },
    };
    match db {
        Ok(()) => Json(Health {
            status: "UP",
            components: HealthComponents { db: UP, redis },
        })
        .into_response(),
        Err(reason) => database_down(reason),
    }
}

/// The process is alive and serving; dependencies are deliberately not checked, so a
/// database outage does not make the orchestrator restart healthy pods.
#[utoipa::path(
    get,
    path = "/actuator/health/liveness",
    operation_id = "liveness",
    tag = "operations",
    responses((status = 200, description = "The process serves requests", body = Status))
)]
async fn liveness() -> Json<Status> {
    Json(UP)
}

/// Ready for traffic only while the database answers and orders can be committed within
/// their deadline: a replica whose commits stall (a lock it cannot get, a connection that
/// stopped answering) leaves the load balancer until a commit goes through again.
#[utoipa::path(
    get,
    path = "/actuator/health/readiness",
    operation_id = "readiness",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers and orders commit within their deadline", body = Status),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database is unreachable, or orders cannot be committed within their deadline", body = ErrorBody),
    )
)]
async fn readiness(State(state): State<AppState>) -> Response {
    if !state.orders.ready() {
        return ApiError::unavailable()
            .with_detail("orders", "orders cannot be committed within their deadline")
            .into_response();
    }
    match database_up(&state).await {
        Ok(()) => Json(UP).into_response(),
        Err(reason) => database_down(reason),
    }
}

fn record_pool_gauges(state: &AppState) {
    metrics::gauge!(names::ORDER_COMMIT_READY).set(if state.orders.ready() { 1.0 } else { 0.0 });
    metrics::gauge!(names::ORDER_QUEUE_DEPTH).set(state.orders.queued() as f64);
    let size = state.db.size() as f64;
    let idle = state.db.num_idle() as f64;
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "active").set(size - idle);
}

/// The database's state as gauges (outbox, queues: `orderflow_jobs::operators::gauges`), read
/// at each scrape within a bound: a slow database delays the scrape by at most that, and the
/// gauges then keep their last values.
async fn record_database_gauges(state: &AppState) {
    let lease = state.config.events.queue.lease;
    match tokio::time::timeout(
        DB_GAUGES_TIMEOUT,
        orderflow_jobs::operators::gauges::refresh(&state.db, lease),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not read the outbox and queue gauges"),
        Err(_) => tracing::warn!("reading the outbox and queue gauges timed out"),
    }
}

/// Names of the metrics this process exposes (the values are at /actuator/prometheus).
#[utoipa::path(
    get,
    path = "/actuator/metrics",
    operation_id = "metricNames",
    tag = "operations",
    responses((status = 200, description = "Metric names", body = MetricNames))
)]
async fn metrics_index(State(state): State<AppState>) -> Json<MetricNames> {
    record_pool_gauges(&state);
    let text = state.metrics.render();
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.sort_unstable();
    names.dedup();
    Json(MetricNames {
        names: names.into_iter().map(str::to_owned).collect(),
    })
}

/// Every metric in the Prometheus text exposition format.
#[utoipa::path(
    get,
    path = "/actuator/prometheus",
    operation_id = "prometheus",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
async fn prometheus(State(state): State<AppState>) -> Response {
    record_pool_gauges(&state);
    record_database_gauges(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
