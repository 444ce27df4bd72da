//! Outbox rows as operators see and change them: the rows a publish job carries, an order's
//! rows (its events' journey), and a dead job's rows set aside for good.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use crate::trace::TraceContext;

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

/// A dead publish job set aside for good: its DEAD rows become DISCARDED (never published;
/// kept, and counted, like DEAD ones). Returns how many.
pub async fn discard_for_job(conn: &mut MySqlConnection, job_id: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox_events SET status = 'DISCARDED' WHERE job_id = ? AND status = 'DEAD'",
    )
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
