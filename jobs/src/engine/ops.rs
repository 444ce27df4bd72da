//! Operators' actions on the job table: list jobs by status and queue, and retry dead ones.
//! (apalis-board only views and pushes; retrying is ours.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::{outbox, queue::PUBLISH_OUTBOX};

/// `dead` = `Killed` (attempts exhausted or refused for good), plus `Failed` rows with no
/// attempts left, which apalis also treats as final.
const DEAD: &str = "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Dead,
    Pending,
    Running,
    Done,
    All,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "dead" => Some(Self::Dead),
            "pending" => Some(Self::Pending),
            "running" => Some(Self::Running),
            "done" => Some(Self::Done),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Self::Dead => DEAD,
            Self::Pending => "(status IN ('Pending', 'Queued') OR (status = 'Failed' AND attempts < max_attempts))",
            Self::Running => "status = 'Running'",
            Self::Done => "status = 'Done'",
            Self::All => "TRUE",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    pub id: String,
    pub queue: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_result: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
    pub payload: Option<String>,
}

pub async fn list(
    pool: &MySqlPool,
    status: StatusFilter,
    queue: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<JobRow>, i64), sqlx::Error> {
    let filter = format!("{} AND (? IS NULL OR job_type = ?)", status.sql());
    let rows = sqlx::query_as(&format!(
        "SELECT id, job_type AS queue, status, attempts, max_attempts, last_result, run_at, done_at, \
         CAST(job AS CHAR) AS payload FROM jobs WHERE {filter} ORDER BY run_at DESC, id DESC LIMIT ? OFFSET ?"
    ))
    .bind(queue)
    .bind(queue)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM jobs WHERE {filter}"))
        .bind(queue)
        .bind(queue)
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no job with id {0}")]
    NotFound(String),
    #[error("job {id} is {status}, not dead")]
    NotDead { id: String, status: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Puts a dead job back in its queue with fresh attempts; a publish job's DEAD outbox rows
/// become NEW again in the same transaction, so its retry publishes them (once: the rows
/// are claimed with SKIP LOCKED and marked PUBLISHED).
pub async fn retry(pool: &MySqlPool, id: &str) -> Result<(), RetryError> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, String, bool)> = sqlx::query_as(&format!(
        "SELECT job_type, status, {DEAD} AS dead FROM jobs WHERE id = ? FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (queue, status, dead) = row.ok_or_else(|| RetryError::NotFound(id.to_owned()))?;
    if !dead {
        return Err(RetryError::NotDead {
            id: id.to_owned(),
            status,
        });
    }
    sqlx::query(
        "UPDATE jobs SET status = 'Pending', attempts = 0, lock_by = NULL, lock_at = NULL, \
         done_at = NULL, last_result = NULL, run_at = CURRENT_TIMESTAMP WHERE id = ?",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if queue == PUBLISH_OUTBOX {
        outbox::revive_for_job(&mut tx, id).await?;
    }
    tx.commit().await?;
    tracing::info!(job_id = id, queue = %queue, "dead job re-queued by an operator");
    Ok(())
}

/// Retries every dead job (of one queue, if given); returns how many.
pub async fn retry_all_dead(pool: &MySqlPool, queue: Option<&str>) -> Result<usize, RetryError> {
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM jobs WHERE {DEAD} AND (? IS NULL OR job_type = ?) ORDER BY id"
    ))
    .bind(queue)
    .bind(queue)
    .fetch_all(pool)
    .await?;
    for id in &ids {
        match retry(pool, id).await {
            Ok(()) | Err(RetryError::NotDead { .. }) | Err(RetryError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ids.len())
}

/// Dead jobs per queue (for the `jobs_dead` gauge).
/// Retention: deletes up to `limit` jobs that finished (`Done`) more than `older_than` ago.
/// Dead jobs stay for the operators.
pub async fn purge_done(
    pool: &MySqlPool,
    older_than: std::time::Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM jobs WHERE status = 'Done' \
         AND done_at < CURRENT_TIMESTAMP - INTERVAL ? SECOND LIMIT ?",
    )
    .bind(older_than.as_secs() as i64)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

pub async fn dead_counts(pool: &MySqlPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT job_type, COUNT(*) FROM jobs WHERE {DEAD} GROUP BY job_type"
    ))
    .fetch_all(pool)
    .await
}
