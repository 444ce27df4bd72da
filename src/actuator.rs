//! Operations endpoints outside `/api/v1`: health (with liveness and readiness), a metrics
//! index and the Prometheus scrape.

use std::time::Duration;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::json;

use crate::{app::AppState, db, error::ApiError, telemetry::names};

const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/actuator/health", get(health))
        .route("/actuator/health/liveness", get(liveness))
        .route("/actuator/health/readiness", get(readiness))
        .route("/actuator/metrics", get(metrics_index))
        .route("/actuator/prometheus", get(prometheus))
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
async fn health(State(state): State<AppState>) -> Response {
    let (db, redis) = tokio::join!(database_up(&state), state.cache.ping());
    let redis = if redis { "UP" } else { "DOWN" };
    match db {
        Ok(()) => axum::Json(json!({
            "status": "UP",
            "components": { "db": { "status": "UP" }, "redis": { "status": redis } }
        }))
        .into_response(),
        Err(reason) => database_down(reason),
    }
}

/// The process is alive and serving; dependencies are deliberately not checked, so a
/// database outage does not make the orchestrator restart healthy pods.
async fn liveness() -> Response {
    axum::Json(json!({ "status": "UP" })).into_response()
}

/// Ready for traffic only while the database answers.
async fn readiness(State(state): State<AppState>) -> Response {
    match database_up(&state).await {
        Ok(()) => axum::Json(json!({ "status": "UP" })).into_response(),
        Err(reason) => database_down(reason),
    }
}

fn record_pool_gauges(state: &AppState) {
    let size = state.db.size() as f64;
    let idle = state.db.num_idle() as f64;
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "active").set(size - idle);
}

/// Names of the metrics this process exposes (the values are at /actuator/prometheus).
async fn metrics_index(State(state): State<AppState>) -> Response {
    record_pool_gauges(&state);
    let text = state.metrics.render();
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.sort_unstable();
    names.dedup();
    axum::Json(json!({ "names": names })).into_response()
}

async fn prometheus(State(state): State<AppState>) -> Response {
    record_pool_gauges(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
