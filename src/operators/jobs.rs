//! Operators' job endpoints (ADMIN):
//! GET /admin/jobs (filters, counts per state), GET /admin/jobs/{id} (attempts, carried rows),
//! POST /admin/jobs/{id}/retry (202), POST /admin/jobs/{id}/discard,
//! POST /admin/jobs/retry and /admin/jobs/discard (bulk: ids, or every dead job a filter
//! matches). Every action is recorded in the audit log.

use axum::{
    extract::{Query, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use orderflow_jobs::engine::{
    audit::Via,
    ops::{self, ActionError, Op, Selection, StatusFilter},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    actor,
    views::{self, FilterInput, JobDetail, JobPage},
};
use crate::{
    app::AppState,
    auth::AdminUser,
    error::{ApiError, ErrorBody, ErrorCode, FieldError},
    http::{
        extract::{Json, Path},
        paging::{PageParams, PageRequest},
    },
};

/// The most ids one bulk request may name.
pub const MAX_BULK_IDS: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_job))
        .routes(routes!(retry))
        .routes(routes!(discard))
        .routes(routes!(bulk_retry))
        .routes(routes!(bulk_discard))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// dead (default), pending, running, done, discarded or all.
    #[param(example = "dead", inline, value_type = Option<JobStatus>)]
    status: Option<String>,
    /// A queue name, e.g. publish-outbox; all queues when absent.
    queue: Option<String>,
    /// A job id, an order id (the jobs carrying its events) or an event id.
    q: Option<String>,
    /// Only jobs queued at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only jobs queued at or before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
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
    Discarded,
    All,
}

/// An RFC 3339 time; present but empty is refused like any other non-time (the document
/// says `date-time`).
fn parse_time(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, FieldError> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| FieldError::new(field, "must be an RFC 3339 date-time"))
    })
    .transpose()
}

impl JobQuery {
    fn parse(&self) -> Result<FilterInput, ApiError> {
        let status = match self.status.as_deref() {
            None => Ok(StatusFilter::DEAD),
            Some(s) => StatusFilter::parse(s).ok_or_else(|| {
                FieldError::new(
                    "status",
                    "must be one of dead, pending, running, done, discarded, all",
                )
            }),
        };
        let since = parse_time("since", self.since.as_deref());
        let until = parse_time("until", self.until.as_deref());
        match (status, since, until) {
            (Ok(status), Ok(since), Ok(until)) => Ok(FilterInput {
                status,
                queue: self.queue.clone(),
                q: self.q.clone(),
                since,
                until,
            }),
            (status, since, until) => Err(ApiError::validation(
                [status.err(), since.err(), until.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            )),
        }
    }
}

fn refusal(op: Op, e: ActionError) -> ApiError {
    let verb = match op {
        Op::Retry => "retried",
        Op::Discard => "discarded",
    };
    match e {
        ActionError::NotFound(_) => ApiError::not_found("job"),
        ActionError::NotDead { status, .. } => ApiError::new(
            ErrorCode::InvalidState,
            format!("only dead jobs can be {verb}; this one is {status}"),
        ),
        ActionError::NotDiscardable { reason, .. } => ApiError::new(
            ErrorCode::InvalidState,
            format!("this job cannot be discarded: {reason}"),
        ),
        ActionError::Db(e) => e.into(),
    }
}

/// Jobs from the job table, dead ones by default, with the count of each state under the
/// same filters (ADMIN).
#[utoipa::path(
    get,
    path = "/admin/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    security(("bearer" = [])),
    params(JobQuery, PageParams),
    responses(
        (status = 200, description = "A page of jobs, newest run first, and the count of each state", body = JobPage),
        (status = 400, description = "VALIDATION_ERROR: unknown status, bad time or paging", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    page: PageRequest,
    Query(q): Query<JobQuery>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let filter = q.parse()?.resolve(&state.db).await?;
    Ok(axum::Json(views::job_page(&state.db, &filter, page).await?))
}

/// One job: its payload and state, its failed attempts (newest first) with their errors and
/// trace links, and for a publish job the outbox rows it carries (ADMIN).
#[utoipa::path(
    get,
    path = "/admin/jobs/{id}",
    operation_id = "getJob",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
async fn get_job(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<axum::Json<JobDetail>, ApiError> {
    views::job_detail(&state.db, state.config.trace_ui.as_ref(), &id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("job"))
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
    let actor = actor(&state, admin, Via::Api).await?;
    ops::act(&state.db, Op::Retry, &id, &actor)
        .await
        .map_err(|e| refusal(Op::Retry, e))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RetryAccepted {
            id,
            status: "Pending",
        }),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Discarded {
    pub id: String,
    #[schema(example = "Discarded")]
    pub status: &'static str,
    /// The job's DEAD outbox rows now DISCARDED (publish jobs; 0 for other queues).
    pub outbox_rows_discarded: u64,
}

/// Sets a dead job aside for good (ADMIN): it is never run again and stays visible; a
/// publish job's DEAD outbox rows become DISCARDED (never published, still counted). An
/// archive-run job cannot be discarded (its run would block every later one): retry it.
#[utoipa::path(
    post,
    path = "/admin/jobs/{id}/discard",
    operation_id = "discardJob",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job is discarded", body = Discarded),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "INVALID_STATE: the job is not dead, or is an archive-run job", body = ErrorBody),
    )
)]
async fn discard(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<axum::Json<Discarded>, ApiError> {
    let actor = actor(&state, admin, Via::Api).await?;
    let rows = ops::act(&state.db, Op::Discard, &id, &actor)
        .await
        .map_err(|e| refusal(Op::Discard, e))?;
    Ok(axum::Json(Discarded {
        id,
        status: "Discarded",
        outbox_rows_discarded: rows,
    }))
}

/// The jobs of a bulk action: these ids, or every dead job the filter matches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BulkRequest {
    Ids(ByIds),
    Filter(ByFilter),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ByIds {
    /// Jobs that are not dead (or do not exist) are left alone.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ByFilter {
    /// Every dead job matching all of these (an empty filter: every dead job).
    pub filter: BulkFilter,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    pub queue: Option<String>,
    /// A job id, an order id or an event id.
    pub q: Option<String>,
    /// Queued at or after.
    pub since: Option<DateTime<Utc>>,
    /// Queued at or before.
    pub until: Option<DateTime<Utc>>,
}

impl BulkRequest {
    async fn selection(self, state: &AppState) -> Result<Selection, ApiError> {
        match self {
            BulkRequest::Ids(ByIds { ids }) => {
                if ids.is_empty() || ids.len() > MAX_BULK_IDS {
                    return Err(ApiError::validation(vec![FieldError::new(
                        "ids",
                        format!("must name 1 to {MAX_BULK_IDS} jobs"),
                    )]));
                }
                Ok(Selection::Ids(ids))
            }
            BulkRequest::Filter(ByFilter { filter: f }) => {
                let input = FilterInput {
                    status: StatusFilter::DEAD,
                    queue: f.queue,
                    q: f.q,
                    since: f.since,
                    until: f.until,
                };
                Ok(Selection::Matching(input.resolve(&state.db).await?))
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkRetried {
    /// Dead jobs put back in their queue.
    pub retried: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkDiscarded {
    /// Dead jobs set aside for good.
    pub discarded: u64,
}

/// Retries the dead jobs among the given ids, or every dead job matching a filter (ADMIN);
/// answers how many.
#[utoipa::path(
    post,
    path = "/admin/jobs/retry",
    operation_id = "retryJobs",
    tag = "jobs",
    security(("bearer" = [])),
    request_body = BulkRequest,
    responses(
        (status = 200, description = "How many dead jobs are pending again", body = BulkRetried),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
    )
)]
async fn bulk_retry(
    State(state): State<AppState>,
    admin: AdminUser,
    Json(req): Json<BulkRequest>,
) -> Result<axum::Json<BulkRetried>, ApiError> {
    let actor = actor(&state, admin, Via::Api).await?;
    let selection = req.selection(&state).await?;
    let retried = ops::act_on_all(&state.db, Op::Retry, &selection, &actor)
        .await
        .map_err(|e| refusal(Op::Retry, e))?;
    Ok(axum::Json(BulkRetried { retried }))
}

/// Discards the dead jobs among the given ids, or every dead job matching a filter
/// (ADMIN; archive-run jobs are left alone); answers how many.
#[utoipa::path(
    post,
    path = "/admin/jobs/discard",
    operation_id = "discardJobs",
    tag = "jobs",
    security(("bearer" = [])),
    request_body = BulkRequest,
    responses(
        (status = 200, description = "How many dead jobs are discarded", body = BulkDiscarded),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
    )
)]
async fn bulk_discard(
    State(state): State<AppState>,
    admin: AdminUser,
    Json(req): Json<BulkRequest>,
) -> Result<axum::Json<BulkDiscarded>, ApiError> {
    let actor = actor(&state, admin, Via::Api).await?;
    let selection = req.selection(&state).await?;
    let discarded = ops::act_on_all(&state.db, Op::Discard, &selection, &actor)
        .await
        .map_err(|e| refusal(Op::Discard, e))?;
    Ok(axum::Json(BulkDiscarded { discarded }))
}
