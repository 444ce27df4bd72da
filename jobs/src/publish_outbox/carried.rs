//! Outbox rows as operators see and change them: the rows a publish job carries, an order's
//! rows (its events' journey), a dead job's rows set aside for good or revived, and an
//! order's (or an event's) DEAD rows moved to a job of their own.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use crate::engine::trace::TraceContext;

/// An outbox row with the publish job meant to carry it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OutboxRecord {
    pub outbox_id: i64,
    pub order_id: i64,
    pub event_id: String,
    pub event_type: String,
    /// NEW, PUBLISHED, DEAD or DISCARDED.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl OutboxRecord {
    /// The trace of the request that wrote the row.
    pub fn trace_id(&self) -> Option<String> {
        TraceContext {
            traceparent: self.traceparent.clone(),
            tracestate: None,
        }
        .trace_id()
        .map(str::to_owned)
    }
}

const COLUMNS: &str = "id AS outbox_id, aggregate_id AS order_id, event_id, event_type, status, \
     attempts, last_error, job_id, created_at, published_at, traceparent";

/// The rows a publish job carries (at most `limit`, in the order they were written).
pub async fn of_job(
    pool: &MySqlPool,
    job_id: &str,
    limit: u32,
) -> Result<Vec<OutboxRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox_events WHERE job_id = ? ORDER BY id LIMIT ?"
    ))
    .bind(job_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The events of an order, in the order they were written.
pub async fn of_order(pool: &MySqlPool, order_id: i64) -> Result<Vec<OutboxRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox_events WHERE aggregate_type = ? AND aggregate_id = ? \
         ORDER BY id"
    ))
    .bind(super::outbox::AGGREGATE_ORDER)
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// The row of one event, if it is still in the outbox.
pub async fn by_event(
    pool: &MySqlPool,
    event_id: &str,
) -> Result<Option<OutboxRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox_events WHERE event_id = ?"
    ))
    .bind(event_id)
    .fetch_optional(pool)
    .await
}

/// DEAD rows of dead publish jobs set aside for good: they become DISCARDED (never
/// published; kept, and counted, like DEAD ones). Returns how many.
pub async fn discard_for_jobs(
    conn: &mut MySqlConnection,
    job_ids: &[String],
) -> Result<u64, sqlx::Error> {
    change_dead_rows(
        conn,
        "UPDATE outbox_events SET status = 'DISCARDED'",
        job_ids,
    )
    .await
}

/// DEAD rows of dead publish jobs an operator retries: NEW again, with a fresh retry window.
/// Returns how many.
pub async fn revive_for_jobs(
    conn: &mut MySqlConnection,
    job_ids: &[String],
) -> Result<u64, sqlx::Error> {
    change_dead_rows(
        conn,
        "UPDATE outbox_events SET status = 'NEW', last_error = NULL, first_failed_at = NULL",
        job_ids,
    )
    .await
}

async fn change_dead_rows(
    conn: &mut MySqlConnection,
    update: &str,
    job_ids: &[String],
) -> Result<u64, sqlx::Error> {
    if job_ids.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::new(update);
    q.push(" WHERE status = 'DEAD' AND job_id IN (");
    let mut sep = q.separated(", ");
    for id in job_ids {
        sep.push_bind(id.as_str());
    }
    q.push(")");
    Ok(q.build().execute(conn).await?.rows_affected())
}

/// The DEAD rows of an order, or of one event, with the job each names (oldest first).
pub async fn dead_rows_of(
    conn: &mut MySqlConnection,
    order_id: Option<i64>,
    event_id: Option<&str>,
) -> Result<Vec<(i64, Option<String>)>, sqlx::Error> {
    let mut q = QueryBuilder::new("SELECT id, job_id FROM outbox_events WHERE status = 'DEAD'");
    if let Some(order) = order_id {
        q.push(" AND aggregate_type = ")
            .push_bind(super::outbox::AGGREGATE_ORDER)
            .push(" AND aggregate_id = ")
            .push_bind(order);
    }
    if let Some(event) = event_id {
        q.push(" AND event_id = ").push_bind(event);
    }
    q.push(" ORDER BY id");
    q.build_query_as().fetch_all(conn).await
}

/// The rows a publish job still answers for, with their status: DEAD (its retry revives
/// them) or NEW (it, or the sweeper after it, publishes them). The others are settled.
pub async fn open_rows_of_job(
    conn: &mut MySqlConnection,
    job_id: &str,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status FROM outbox_events WHERE job_id = ? AND status IN ('DEAD', 'NEW') ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(conn)
    .await
}

/// Hands DEAD rows to another job (a part split off their dead job).
pub async fn move_dead_rows(
    conn: &mut MySqlConnection,
    ids: &[i64],
    job_id: &str,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::new("UPDATE outbox_events SET job_id = ");
    q.push_bind(job_id).push(" WHERE status = 'DEAD' AND id IN");
    crate::push_id_list(&mut q, ids);
    Ok(q.build().execute(conn).await?.rows_affected())
}

/// The event ids of an order, whatever their rows' status (what its notifications carry).
pub async fn event_ids_of_order(
    conn: &mut MySqlConnection,
    order_id: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT event_id FROM outbox_events WHERE aggregate_type = ? AND aggregate_id = ? \
         ORDER BY id",
    )
    .bind(super::outbox::AGGREGATE_ORDER)
    .bind(order_id)
    .fetch_all(conn)
    .await
}
