//! GET /admin/queues, POST /admin/queues/{queue}/pause and /resume (ADMIN). A paused queue
//! is not fetched from by any replica from its next poll on, until it is resumed; the state
//! is stored, so a restart keeps it.

use axum::extract::State;
use orderflow_jobs::{
    kinds::QUEUES,
    operators::pause,
    operators::{
        action_log::Via,
        queues::{self, QueueOverview},
    },
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::actor;
use crate::{
    auth::AdminUser,
    error::{ApiError, ErrorBody},
    http::extract::Path,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
}

/// The queues' names (documentation of the path parameter).
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
enum QueueName {
    PublishOutbox,
    ConsumeNotification,
    ArchiveRun,
    Retention,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueList {
    pub queues: Vec<QueueOverview>,
}

/// Every queue: jobs per state, the age of the oldest pending job, jobs done and dead in the
/// last 5 and 60 minutes, paused or not, live workers (ADMIN).
#[utoipa::path(
    get,
    path = "/admin/queues",
    operation_id = "listQueues",
    tag = "operators",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every queue of the job engine", body = QueueList),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<axum::Json<QueueList>, ApiError> {
    let lease = state.config.events.queue.lease;
    Ok(axum::Json(QueueList {
        queues: queues::overview(&state.db, lease).await?,
    }))
}

/// Pauses or resumes a queue for every replica, answering its overview.
async fn set_paused(
    state: &AppState,
    admin: AdminUser,
    queue: &str,
    paused: bool,
) -> Result<QueueOverview, ApiError> {
    let Some(queue) = QUEUES.into_iter().find(|q| *q == queue) else {
        return Err(ApiError::not_found("queue"));
    };
    let actor = actor(state, admin, Via::Api).await?;
    pause::set_paused(&state.db, queue, paused, &actor).await?;
    let lease = state.config.events.queue.lease;
    queues::overview(&state.db, lease)
        .await?
        .into_iter()
        .find(|o| o.queue == queue)
        .ok_or_else(ApiError::internal)
}

/// Pauses a queue (ADMIN): every replica stops fetching from it within one poll interval
/// (jobs already fetched finish); the state survives restarts.
#[utoipa::path(
    post,
    path = "/admin/queues/{queue}/pause",
    operation_id = "pauseQueue",
    tag = "operators",
    security(("bearer" = [])),
    params(("queue" = inline(QueueName), Path, description = "Queue name")),
    responses(
        (status = 200, description = "The queue, paused", body = QueueOverview),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such queue", body = ErrorBody),
    )
)]
async fn pause_queue(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(queue): Path<String>,
) -> Result<axum::Json<QueueOverview>, ApiError> {
    Ok(axum::Json(set_paused(&state, admin, &queue, true).await?))
}

/// Resumes a paused queue (ADMIN): every replica fetches from it again within one poll
/// interval.
#[utoipa::path(
    post,
    path = "/admin/queues/{queue}/resume",
    operation_id = "resumeQueue",
    tag = "operators",
    security(("bearer" = [])),
    params(("queue" = inline(QueueName), Path, description = "Queue name")),
    responses(
        (status = 200, description = "The queue, running", body = QueueOverview),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such queue", body = ErrorBody),
    )
)]
async fn resume_queue(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(queue): Path<String>,
) -> Result<axum::Json<QueueOverview>, ApiError> {
    Ok(axum::Json(set_paused(&state, admin, &queue, false).await?))
}
