//! Operators' job endpoints: GET /admin/jobs?status=dead&queue=…,
//! POST /admin/jobs/{id}/retry (202: the dead job runs again).

use axum::{
    extract::{Query, State},
    http::StatusCode,
};
use orderflow_jobs::ops::{self, JobRow, RetryError, StatusFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    app::AppState,
    auth::AdminUser,
    error::{ApiError, ErrorBody, ErrorCode, FieldError},
    http::{
        extract::Path,
        paging::{Page, PageParams, PageRequest},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(retry))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// dead (default), pending, running, done or all.
    #[param(example = "dead", inline, value_type = Option<JobStatus>)]
    status: Option<String>,
    /// A queue name, e.g. orderflow::publish-outbox; all queues when absent.
    queue: Option<String>,
}

/// The `status` filter's values (documentation only: the handler parses the string so that
/// a wrong value gets the standard validation error).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum JobStatus {
    Dead,
    Pending,
    Running,
    Done,
    All,
}

impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::NotFound(_) => ApiError::not_found("job"),
            RetryError::NotDead { status, .. } => ApiError::new(
                ErrorCode::InvalidState,
                format!("only dead jobs can be retried; this one is {status}"),
            ),
            RetryError::Db(e) => e.into(),
        }
    }
}

/// Jobs from the job table, dead ones by default (ADMIN).
#[utoipa::path(
    get,
    path = "/admin/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    security(("bearer" = [])),
    params(JobQuery, PageParams),
    responses(
        (status = 200, description = "A page of jobs, newest run first", body = Page<JobRow>),
        (status = 400, description = "VALIDATION_ERROR: unknown status or bad paging", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    page: PageRequest,
    Query(q): Query<JobQuery>,
) -> Result<axum::Json<Page<JobRow>>, ApiError> {
    let status = match q.status.as_deref() {
        None => StatusFilter::Dead,
        Some(s) => StatusFilter::parse(s).ok_or_else(|| {
            ApiError::validation(vec![FieldError::new(
                "status",
                "must be one of dead, pending, running, done, all",
            )])
        })?,
    };
    let queue = q.queue.as_deref().filter(|q| !q.is_empty());
    let (items, total) = ops::list(&state.db, status, queue, page.limit(), page.offset()).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryAccepted {
    pub id: String,
    #[schema(example = "Pending")]
    pub status: &'static str,
}

/// Puts a dead job back in its queue (ADMIN); a publish job's DEAD outbox rows become NEW.
#[utoipa::path(
    post,
    path = "/admin/jobs/{id}/retry",
    operation_id = "retryJob",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 202, description = "The job is pending again", body = RetryAccepted),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "INVALID_STATE: the job is not dead", body = ErrorBody),
    )
)]
async fn retry(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<RetryAccepted>), ApiError> {
    ops::retry(&state.db, &id).await?;
    tracing::info!(job_id = %id, userId = admin.0.id, "operator retried a dead job");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RetryAccepted {
            id,
            status: "Pending",
        }),
    ))
}
