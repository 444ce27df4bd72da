//! GET /admin/orders/{id}/timeline: "where is my order's event?" in one call — the order's
//! journey, each step with its time: committed, each event's outbox row, the publish job
//! that carries it (id, state, attempts), published, the notification stored; and the trace
//! of the request that placed the order.

use axum::extract::State;
use chrono::{DateTime, Utc};
use orderflow_jobs::{
    consume_notification::notifications, operators::job_query, publish_outbox::carried,
};
use serde::Serialize;
use sqlx::MySqlPool;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::trace_link::TraceLink;
use crate::{
    auth::AdminUser,
    config::TraceUiUrl,
    error::{ApiError, ErrorBody},
    http::extract::Path,
    orders,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_timeline))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// The order's transaction committed (with its first event's outbox row).
    Committed,
    /// An event's outbox row: NEW, PUBLISHED, DEAD or DISCARDED, written at `at`.
    OutboxRow,
    /// The publish-outbox job that carries the row (its last run at `at`).
    PublishJob,
    /// Kafka acknowledged the event.
    Published,
    /// The event's notification was stored.
    NotificationStored,
    /// The order moved to the archive.
    Archived,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineStep {
    pub step: Step,
    /// When it happened (None: not yet, or not known).
    pub at: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The order's, the row's, or the job's state at this step.
    pub status: Option<String>,
    pub job_id: Option<String>,
    pub attempts: Option<i32>,
    /// The last error of a row or a job, or a note on the step.
    pub detail: Option<String>,
}

impl TimelineStep {
    fn new(step: Step, at: Option<DateTime<Utc>>) -> Self {
        Self {
            step,
            at,
            event_id: None,
            event_type: None,
            status: None,
            job_id: None,
            attempts: None,
            detail: None,
        }
    }

    fn of_event(step: Step, at: Option<DateTime<Utc>>, row: &carried::OutboxRecord) -> Self {
        Self {
            event_id: Some(row.event_id.clone()),
            event_type: Some(row.event_type.clone()),
            ..Self::new(step, at)
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderTimeline {
    pub order_id: i64,
    pub user_id: i64,
    /// CREATED, CANCELLED or COMPLETED.
    pub status: String,
    pub total_amount: i64,
    pub archived: bool,
    /// The trace of the request that placed the order.
    #[serde(flatten)]
    pub trace: TraceLink,
    /// In causal order: the commit, then each event's row, job, publication and
    /// notification (events in the order they were written); a step that has not happened
    /// yet has no time. (Not sorted by time: the order's time is the service's clock, the
    /// rows' the database's.)
    pub steps: Vec<TimelineStep>,
}

/// The journey of order `id`, live or archived (None: no such order).
pub async fn build(
    pool: &MySqlPool,
    ui: Option<&TraceUiUrl>,
    id: i64,
) -> Result<Option<OrderTimeline>, sqlx::Error> {
    let Some(order) = orders::find_any(pool, id).await? else {
        return Ok(None);
    };
    let rows = carried::of_order(pool, id).await?;
    let event_ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    let notified = notifications::for_events(pool, &event_ids).await?;
    let mut committed = TimelineStep::new(Step::Committed, Some(order.created_at));
    committed.status = Some(order.status.clone());
    let mut steps = vec![committed];
    for row in &rows {
        let mut outbox = TimelineStep::of_event(Step::OutboxRow, Some(row.created_at), row);
        outbox.status = Some(row.status.clone());
        outbox.attempts = Some(row.attempts);
        outbox.detail = row.last_error.clone();
        steps.push(outbox);
        let job = match &row.job_id {
            Some(job_id) => job_query::find(pool, job_id).await?,
            None => None,
        };
        let mut publish = TimelineStep::of_event(
            Step::PublishJob,
            job.as_ref().and_then(|j| j.row.done_at.or(j.row.run_at)),
            row,
        );
        publish.job_id = row.job_id.clone();
        match &job {
            Some(job) => {
                publish.status = Some(job.row.state.as_str().to_owned());
                publish.attempts = Some(job.row.attempts);
            }
            None => publish.detail = Some("no such job (not pushed yet, or purged)".into()),
        }
        steps.push(publish);
        steps.push(TimelineStep::of_event(
            Step::Published,
            row.published_at,
            row,
        ));
        let notification = notified.iter().find(|n| n.event_id == row.event_id);
        steps.push(TimelineStep::of_event(
            Step::NotificationStored,
            notification.map(|n| n.created_at),
            row,
        ));
    }
    if order.archived_at.is_some() {
        steps.push(TimelineStep::new(Step::Archived, order.archived_at));
    }
    let trace_id = rows.first().and_then(carried::OutboxRecord::trace_id);
    Ok(Some(OrderTimeline {
        order_id: order.id,
        user_id: order.user_id,
        status: order.status,
        total_amount: order.total_amount,
        archived: order.archived_at.is_some(),
        trace: TraceLink::new(ui, trace_id),
        steps,
    }))
}

/// An order's journey from its commit to its notification (ADMIN).
#[utoipa::path(
    get,
    path = "/admin/orders/{id}/timeline",
    operation_id = "orderTimeline",
    tag = "operators",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order's steps with their times, and its trace", body = OrderTimeline),
        (status = 400, description = "VALIDATION_ERROR: the id is not a number", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such order, live or archived", body = ErrorBody),
    )
)]
async fn get_timeline(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<OrderTimeline>, ApiError> {
    build(&state.db, state.config.trace_ui.as_ref(), id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("order"))
}
