//! Operators' job endpoints (ADMIN):
//! GET /admin/jobs (filters, counts per state), GET /admin/jobs/{id} (attempts, carried rows),
//! POST /admin/jobs/{id}/retry (202), POST /admin/jobs/{id}/discard,
//! POST /admin/jobs/retry and /admin/jobs/discard (bulk: ids, an order's or an event's rows
//! and events, or every dead job a filter matches — confirmed by its count; a dry run
//! counts). Every action is recorded in the action log, in the transaction that makes it.

use axum::{
    extract::{Query, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use orderflow_jobs::operators::{
    action_log::Via,
    ops::{self, ActionError, Confirm, Op, Outcome, Selection, StatusFilter, LIMIT},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    actor,
    views::{self, FilterInput, JobDetail, JobPage},
};
use crate::{
    auth::AdminUser,
    error::{ApiError, ErrorBody, ErrorCode, FieldError},
    http::{
        extract::{Json, Path},
        paging::{PageParams, PageRequest},
    },
    state::AppState,
};

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
        views::rfc3339(s).ok_or_else(|| FieldError::new(field, "must be an RFC 3339 date-time"))
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
    let (verb, act) = (op.done(), op.verb());
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
        ActionError::ConfirmationRequired { matched } => ApiError::new(
            ErrorCode::ConfirmationRequired,
            format!(
                "this filter matches {matched} dead job(s) and names no order, event or job; \
                 send \"expectedCount\": {matched} to {act} all of them, or \"dryRun\": true \
                 to count them; nothing was {verb}"
            ),
        )
        .with_detail(
            "expectedCount",
            format!("required: {matched} dead job(s) match"),
        ),
        ActionError::CountChanged { expected, matched } => ApiError::new(
            ErrorCode::ConfirmationRequired,
            format!(
                "{matched} dead job(s) match now, not the {expected} expected; nothing was {verb}"
            ),
        )
        .with_detail("expectedCount", format!("{matched} dead job(s) match now")),
        ActionError::TooManyMatching { matched, limit } => ApiError::new(
            ErrorCode::TooManyJobs,
            format!(
                "{matched} dead jobs match and one action changes at most {limit}; narrow the \
                 filter (queue, since, until); nothing was {verb}"
            ),
        ),
        ActionError::TooManySelected { selected, limit } => {
            ApiError::validation(vec![FieldError::new(
                "ids",
                format!("{selected} jobs named; at most {limit}"),
            )])
        }
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

/// The jobs of a bulk action: these ids, or what a filter matches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BulkRequest {
    Ids(ByIds),
    Filter(ByFilter),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ByIds {
    /// Jobs that are not dead (or do not exist) are left alone.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<String>,
    /// When given, the action is refused unless exactly this many of the jobs are dead.
    #[schema(minimum = 0, maximum = 1000)]
    pub expected_count: Option<u64>,
    /// Count the dead jobs, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ByFilter {
    /// With `q` an order or event id: that order's (or event's) outbox rows and events in the
    /// dead jobs carrying them — jobs that also carry other orders' are split, the others'
    /// rows and events left as they were. With `q` a job id: that job. Without `q` (or with
    /// every field blank): every dead job the other fields match, which needs
    /// `expectedCount`.
    pub filter: BulkFilter,
    /// How many dead jobs the operator expects the filter to match (a dry run says). Required
    /// when the filter names no order, event or job; a different count is refused (409).
    #[schema(minimum = 0, maximum = 1000)]
    pub expected_count: Option<u64>,
    /// Count what the filter matches, change nothing.
    #[serde(default)]
    pub dry_run: bool,
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
    fn selection(self) -> Result<(Selection, Confirm), ApiError> {
        match self {
            BulkRequest::Ids(ByIds {
                ids,
                expected_count,
                dry_run,
            }) => {
                if ids.is_empty() || ids.len() > LIMIT {
                    return Err(ApiError::validation(vec![FieldError::new(
                        "ids",
                        format!("must name 1 to {LIMIT} jobs"),
                    )]));
                }
                let confirm = Confirm {
                    expected: expected_count,
                    dry_run,
                };
                Ok((Selection::Ids(ids), confirm))
            }
            BulkRequest::Filter(ByFilter {
                filter: f,
                expected_count,
                dry_run,
            }) => {
                let input = FilterInput {
                    status: StatusFilter::DEAD,
                    queue: f.queue,
                    q: f.q,
                    since: f.since,
                    until: f.until,
                };
                let confirm = Confirm {
                    expected: expected_count,
                    dry_run,
                };
                Ok((Selection::Filter(input.bulk()), confirm))
            }
        }
    }
}

/// What a bulk action matched and changed; a dry run changes nothing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkCounts {
    /// Dead jobs the selection matches now (what `expectedCount` confirms); by an order or
    /// event id, the dead jobs carrying its rows or events.
    pub matched: u64,
    /// Outbox rows made NEW again, or DISCARDED (in a dry run: those selected by order or
    /// event id).
    pub outbox_rows: u64,
    /// Received events acted on by an order or event id (in notification jobs).
    pub events: u64,
    /// Jobs split because they also carried other orders' rows or events: those stay as they
    /// were, under the original job.
    pub split: u64,
    pub dry_run: bool,
    /// The most jobs one action changes.
    #[schema(example = 1000)]
    pub limit: usize,
}

impl From<&Outcome> for BulkCounts {
    fn from(o: &Outcome) -> Self {
        Self {
            matched: o.matched,
            outbox_rows: o.outbox_rows,
            events: o.events,
            split: o.split,
            dry_run: o.dry_run,
            limit: LIMIT,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkRetried {
    /// Dead jobs put back in their queue (a part split off a job counts as one; 0 in a dry
    /// run).
    pub retried: u64,
    #[serde(flatten)]
    pub counts: BulkCounts,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkDiscarded {
    /// Dead jobs set aside for good (archive-run jobs are left alone; 0 in a dry run).
    pub discarded: u64,
    #[serde(flatten)]
    pub counts: BulkCounts,
}

/// Retries dead jobs in bulk (ADMIN): those among the given ids; an order's or an event's
/// outbox rows and events (`q`), splitting them from the other orders' in the same jobs; or
/// every dead job a filter matches, confirmed by `expectedCount`. At most 1000 jobs, in one
/// transaction with its audit entry; `dryRun` counts and changes nothing.
#[utoipa::path(
    post,
    path = "/admin/jobs/retry",
    operation_id = "retryJobs",
    tag = "jobs",
    security(("bearer" = [])),
    request_body = BulkRequest,
    responses(
        (status = 200, description = "What matched, and how many dead jobs are pending again", body = BulkRetried),
        (status = 400, description = "VALIDATION_ERROR: neither ids nor filter, 1–1000 ids, a bad time", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 409, description = "CONFIRMATION_REQUIRED: `expectedCount` missing for a filter that names no order, event or job, or different from the current count (in the message); TOO_MANY_JOBS: more than 1000 match. Nothing changed", body = ErrorBody),
    )
)]
async fn bulk_retry(
    State(state): State<AppState>,
    admin: AdminUser,
    Json(req): Json<BulkRequest>,
) -> Result<axum::Json<BulkRetried>, ApiError> {
    let actor = actor(&state, admin, Via::Api).await?;
    let (selection, confirm) = req.selection()?;
    let outcome = ops::act_on_all(&state.db, Op::Retry, &selection, confirm, &actor)
        .await
        .map_err(|e| refusal(Op::Retry, e))?;
    Ok(axum::Json(BulkRetried {
        retried: outcome.changed,
        counts: BulkCounts::from(&outcome),
    }))
}

/// Discards dead jobs in bulk (ADMIN), selected as for a bulk retry (archive-run jobs are
/// left alone): an order's or an event's rows and events are split from the other orders'
/// in the same jobs, which stay dead. At most 1000 jobs, in one transaction with its audit
/// entry; `dryRun` counts and changes nothing.
#[utoipa::path(
    post,
    path = "/admin/jobs/discard",
    operation_id = "discardJobs",
    tag = "jobs",
    security(("bearer" = [])),
    request_body = BulkRequest,
    responses(
        (status = 200, description = "What matched, and how many dead jobs are discarded", body = BulkDiscarded),
        (status = 400, description = "VALIDATION_ERROR: neither ids nor filter, 1–1000 ids, a bad time", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 409, description = "CONFIRMATION_REQUIRED: `expectedCount` missing for a filter that names no order, event or job, or different from the current count (in the message); TOO_MANY_JOBS: more than 1000 match. Nothing changed", body = ErrorBody),
    )
)]
async fn bulk_discard(
    State(state): State<AppState>,
    admin: AdminUser,
    Json(req): Json<BulkRequest>,
) -> Result<axum::Json<BulkDiscarded>, ApiError> {
    let actor = actor(&state, admin, Via::Api).await?;
    let (selection, confirm) = req.selection()?;
    let outcome = ops::act_on_all(&state.db, Op::Discard, &selection, confirm, &actor)
        .await
        .map_err(|e| refusal(Op::Discard, e))?;
    Ok(axum::Json(BulkDiscarded {
        discarded: outcome.changed,
        counts: BulkCounts::from(&outcome),
    }))
}
