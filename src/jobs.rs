//! Operators' job endpoints: GET /admin/jobs?status=dead&queue=…,
//! POST /admin/jobs/{id}/retry (202: the dead job runs again).

use axum::{
    extract::{Query, State},
    http::StatusCode,
    routing::{get, post},
    Router,
};
use orderflow_jobs::ops::{self, JobRow, RetryError, StatusFilter};
use serde::{Deserialize, Serialize};

use crate::{
    app::AppState,
    auth::AdminUser,
    error::{ApiError, ErrorCode, FieldError},
    http::{
        extract::Path,
        paging::{Page, PageRequest},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/jobs", get(list))
        .route("/admin/jobs/{id}/retry", post(retry))
}

#[derive(Debug, Deserialize)]
pub struct JobQuery {
    status: Option<String>,
    queue: Option<String>,
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

async fn list(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryAccepted {
    pub id: String,
    pub status: &'static str,
}

async fn retry(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<RetryAccepted>), ApiError> {
    ops::retry(&state.db, &id).await?;
    tracing::info!(job_id = %id, userId = admin.id, "operator retried a dead job");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RetryAccepted {
            id,
            status: "Pending",
        }),
    ))
}
