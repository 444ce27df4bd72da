//! Operators' actions on the job table: retry a dead job or discard it, recorded in the
//! action log in the same transaction; `bulk` does the same for many at once, with this
//! module's change of whole jobs. apalis-board only views and pushes; these are ours.
//!
//! An action on a publish-outbox job also changes the outbox rows it carries, in the same
//! transaction: a retry makes its DEAD rows NEW again, a discard makes them DISCARDED. That
//! is the one place the engine knows a job kind's rows.

use serde_json::json;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use super::{
    action_log::{self, Action, Actor},
    job_query::{DEAD, DISCARDED},
};
use crate::{
    archive_run::archive::ARCHIVE_RUN,
    publish_outbox::{carried, job::PUBLISH_OUTBOX},
};

pub use super::{
    bulk::{act_on_all, BulkFilter, Confirm, Outcome, Selection, LIMIT},
    job_query::{JobRow, JobState, StatusFilter},
};

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
    /// A filter that names no order, event or job acts on every dead job it matches only
    /// when told how many the operator expects.
    #[error("{matched} dead job(s) match; acting on all of them needs that count confirmed")]
    ConfirmationRequired { matched: u64 },
    #[error("{matched} dead job(s) match now, not the {expected} expected")]
    CountChanged { expected: u64, matched: u64 },
    #[error("{matched} dead jobs match; one action changes at most {limit}")]
    TooManyMatching { matched: u64, limit: usize },
    #[error("{selected} jobs selected; one action changes at most {limit}")]
    TooManySelected { selected: usize, limit: usize },
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
    /// The action as an operator asks for it: "retry", "discard".
    pub fn verb(self) -> &'static str {
        match self {
            Op::Retry => "retry",
            Op::Discard => "discard",
        }
    }

    /// What a job is once it is done: "retried", "discarded".
    pub fn done(self) -> &'static str {
        match self {
            Op::Retry => "retried",
            Op::Discard => "discarded",
        }
    }

    pub(crate) fn one(self) -> Action {
        match self {
            Op::Retry => Action::Retry,
            Op::Discard => Action::Discard,
        }
    }

    pub(crate) fn bulk(self) -> Action {
        match self {
            Op::Retry => Action::BulkRetry,
            Op::Discard => Action::BulkDiscard,
        }
    }
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

/// What an action on whole dead jobs changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changed {
    pub jobs: Vec<String>,
    pub outbox_rows: u64,
}

/// Retries or discards the dead `jobs` (id, queue), locked by the caller's transaction.
///
/// A retry puts each back in its queue with fresh attempts; a publish job's DEAD outbox rows
/// become NEW again, so its retry publishes them (once: the rows are claimed with SKIP
/// LOCKED and marked PUBLISHED). A discard sets each aside for good (status `Discarded`:
/// never fetched, never purged); a publish job's DEAD rows become DISCARDED. Archive-run
/// jobs are never discarded: the run would hold the one-run slot for ever (ADR 0007).
pub(crate) async fn change_whole(
    conn: &mut MySqlConnection,
    op: Op,
    jobs: &[(String, String)],
) -> Result<Changed, ActionError> {
    let ids: Vec<String> = jobs
        .iter()
        .filter(|(_, queue)| !(op == Op::Discard && queue == ARCHIVE_RUN))
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(Changed::default());
    }
    let mut q = QueryBuilder::new("UPDATE jobs SET ");
    match op {
        Op::Retry => q.push(
            "status = 'Pending', attempts = 0, lock_by = NULL, lock_at = NULL, done_at = NULL, \
             last_result = NULL, run_at = CURRENT_TIMESTAMP",
        ),
        Op::Discard => q
            .push("status = ")
            .push_bind(DISCARDED)
            .push(", lock_by = NULL, lock_at = NULL, done_at = CURRENT_TIMESTAMP"),
    };
    q.push(format!(" WHERE {DEAD} AND id IN ("));
    let mut sep = q.separated(", ");
    for id in &ids {
        sep.push_bind(id.as_str());
    }
    q.push(")");
    let changed = q.build().execute(&mut *conn).await?.rows_affected();
    debug_assert_eq!(changed, ids.len() as u64, "the caller locked dead jobs");
    let publish: Vec<String> = jobs
        .iter()
        .filter(|(id, queue)| queue == PUBLISH_OUTBOX && ids.contains(id))
        .map(|(id, _)| id.clone())
        .collect();
    let outbox_rows = match op {
        Op::Retry => carried::revive_for_jobs(conn, &publish).await?,
        Op::Discard => carried::discard_for_jobs(conn, &publish).await?,
    };
    Ok(Changed {
        jobs: ids,
        outbox_rows,
    })
}

/// Retries or discards one dead job, recorded in the action log in the same transaction;
/// returns how many of its outbox rows changed (revived, or discarded). An archive-run job
/// is refused a discard: retry it instead.
pub async fn act(pool: &MySqlPool, op: Op, id: &str, actor: &Actor) -> Result<u64, ActionError> {
    let mut tx = pool.begin().await?;
    let queue = lock_dead(&mut tx, id).await?;
    if op == Op::Discard && queue == ARCHIVE_RUN {
        return Err(ActionError::NotDiscardable {
            id: id.to_owned(),
            queue,
            reason: "its archive run would stay RUNNING and block every later run; retry it",
        });
    }
    let changed = change_whole(&mut tx, op, &[(id.to_owned(), queue.clone())]).await?;
    action_log::record(&mut tx, actor, op.one(), &json!({ "ids": [id] }), 1).await?;
    tx.commit().await?;
    tracing::info!(job_id = id, queue = %queue, outbox_rows = changed.outbox_rows, action = op.one().as_str(), "dead job changed by an operator");
    Ok(changed.outbox_rows)
}

/// Dead jobs per queue (for the `jobs_dead` gauge).
pub async fn dead_counts(pool: &MySqlPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT job_type, COUNT(*) FROM jobs WHERE {DEAD} GROUP BY job_type"
    ))
    .fetch_all(pool)
    .await
}
