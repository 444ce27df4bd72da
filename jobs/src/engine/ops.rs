//! Operators' actions on the job table: retry dead jobs (one, several, or every one a filter
//! matches) and discard them, each recorded in the audit log. apalis-board only views and
//! pushes; these are ours.
//!
//! An action on a publish-outbox job also changes the outbox rows it carries, in the same
//! transaction: a retry makes its DEAD rows NEW again, a discard makes them DISCARDED. That
//! is the one place the engine knows a job kind's rows.

use serde_json::json;
use sqlx::{MySqlConnection, MySqlPool};

use super::{
    audit::{self, Action, Actor},
    job_query::{self, JobFilter, DEAD, DISCARDED},
};
use crate::{
    outbox,
    publish_outbox::carried,
    queue::{ARCHIVE_RUN, PUBLISH_OUTBOX},
};

pub use super::job_query::{JobRow, JobState, StatusFilter};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no job with id {0}")]
    NotFound(String),
    #[error("job {id} is {status}, not dead")]
    NotDead { id: String, status: String },
    #[error("job {id} of {queue} cannot be discarded: {reason}")]
    NotDiscardable {
        id: String,
        queue: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What to do with a dead job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Back in its queue with fresh attempts.
    Retry,
    /// Set aside for good.
    Discard,
}

impl Op {
    fn one(self) -> Action {
        match self {
            Op::Retry => Action::Retry,
            Op::Discard => Action::Discard,
        }
    }

    fn bulk(self) -> Action {
        match self {
            Op::Retry => Action::BulkRetry,
            Op::Discard => Action::BulkDiscard,
        }
    }
}

/// The jobs of a bulk action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These jobs; those that are not dead are left alone.
    Ids(Vec<String>),
    /// Every dead job the filter matches (its status is ignored).
    Matching(JobFilter),
}

/// Locks the job and checks that it is dead; returns its queue.
async fn lock_dead(conn: &mut MySqlConnection, id: &str) -> Result<String, ActionError> {
    let row: Option<(String, String, bool)> = sqlx::query_as(&format!(
        "SELECT job_type, status, {DEAD} AS dead FROM jobs WHERE id = ? FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let (queue, status, dead) = row.ok_or_else(|| ActionError::NotFound(id.to_owned()))?;
    if !dead {
        return Err(ActionError::NotDead {
            id: id.to_owned(),
            status,
        });
    }
    Ok(queue)
}

/// Puts a dead job back in its queue with fresh attempts; a publish job's DEAD outbox rows
/// become NEW again, so its retry publishes them (once: the rows are claimed with SKIP
/// LOCKED and marked PUBLISHED). Returns the outbox rows revived.
async fn retry_in(conn: &mut MySqlConnection, id: &str) -> Result<u64, ActionError> {
    let queue = lock_dead(conn, id).await?;
    sqlx::query(
        "UPDATE jobs SET status = 'Pending', attempts = 0, lock_by = NULL, lock_at = NULL, \
         done_at = NULL, last_result = NULL, run_at = CURRENT_TIMESTAMP WHERE id = ?",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let rows = if queue == PUBLISH_OUTBOX {
        outbox::revive_for_job(conn, id).await?
    } else {
        0
    };
    tracing::info!(job_id = id, queue = %queue, "dead job re-queued by an operator");
    Ok(rows)
}

/// Sets a dead job aside for good (status `Discarded`: never fetched, never purged); a
/// publish job's DEAD rows become DISCARDED. An archive-run job is refused: its run would
/// hold the one-run slot for ever (ADR 0007); retry it instead.
async fn discard_in(conn: &mut MySqlConnection, id: &str) -> Result<u64, ActionError> {
    let queue = lock_dead(conn, id).await?;
    if queue == ARCHIVE_RUN {
        return Err(ActionError::NotDiscardable {
            id: id.to_owned(),
            queue,
            reason: "its archive run would stay RUNNING and block every later run; retry it",
        });
    }
    sqlx::query(
        "UPDATE jobs SET status = ?, lock_by = NULL, lock_at = NULL, done_at = CURRENT_TIMESTAMP \
         WHERE id = ?",
    )
    .bind(DISCARDED)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let rows = if queue == PUBLISH_OUTBOX {
        carried::discard_for_job(conn, id).await?
    } else {
        0
    };
    tracing::info!(job_id = id, queue = %queue, outbox_rows = rows, "dead job discarded by an operator");
    Ok(rows)
}

async fn apply(conn: &mut MySqlConnection, op: Op, id: &str) -> Result<u64, ActionError> {
    match op {
        Op::Retry => retry_in(conn, id).await,
        Op::Discard => discard_in(conn, id).await,
    }
}

/// Retries or discards one dead job, recorded in the audit log in the same transaction;
/// returns how many of its outbox rows changed (revived, or discarded).
pub async fn act(pool: &MySqlPool, op: Op, id: &str, actor: &Actor) -> Result<u64, ActionError> {
    let mut tx = pool.begin().await?;
    let rows = apply(&mut tx, op, id).await?;
    audit::record(&mut tx, actor, op.one(), &json!({ "ids": [id] }), 1).await?;
    tx.commit().await?;
    Ok(rows)
}

/// The audit log's record of a selection.
fn target(selection: &Selection) -> serde_json::Value {
    match selection {
        Selection::Ids(ids) => json!({ "ids": ids }),
        Selection::Matching(f) => json!({ "filter": {
            "queue": f.queue,
            "ids": f.ids,
            "since": f.since,
            "until": f.until,
        }}),
    }
}

/// Retries or discards every dead job of `selection`, each in a transaction of its own (no
/// long lock on the job table); jobs that are not dead, no longer exist or cannot be
/// discarded are left alone. One audit entry records the selection and how many changed,
/// also when a database error stops the action part way. Returns how many changed.
pub async fn act_on_all(
    pool: &MySqlPool,
    op: Op,
    selection: &Selection,
    actor: &Actor,
) -> Result<u64, ActionError> {
    let ids = match selection {
        Selection::Ids(ids) => ids.clone(),
        Selection::Matching(filter) => job_query::dead_ids(pool, filter).await?,
    };
    let mut changed = 0;
    let mut failure = None;
    for id in &ids {
        let mut tx = pool.begin().await?;
        match apply(&mut tx, op, id).await {
            Ok(_) => {
                tx.commit().await?;
                changed += 1;
            }
            Err(ActionError::Db(e)) => {
                failure = Some(e);
                break;
            }
            Err(_) => {}
        }
    }
    let mut tx = pool.begin().await?;
    audit::record(&mut tx, actor, op.bulk(), &target(selection), changed).await?;
    tx.commit().await?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(changed),
    }
}

/// Retention: deletes up to `limit` jobs that finished (`Done`) more than `older_than` ago,
/// and their attempt history with them. Dead and discarded jobs stay for the operators.
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

/// Dead jobs per queue (for the `jobs_dead` gauge).
pub async fn dead_counts(pool: &MySqlPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT job_type, COUNT(*) FROM jobs WHERE {DEAD} GROUP BY job_type"
    ))
    .fetch_all(pool)
    .await
}
