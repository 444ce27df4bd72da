//! Retention on the job engine: each tick of the retention schedule queues one `retention`
//! job (keyed by the tick, so that replicas ticking together queue it once), which purges
//! every kind of expired row in bounded batches, so no purge holds long locks.
//!
//! The kinds are supplied by their owners (idempotency records live in the service crate),
//! which keeps the SQL with the module that owns the table.

use std::{sync::Arc, time::Duration};

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use ulid::Ulid;

use crate::{
    engine::{
        queue::{self, JobAttempt, JobKind, Pushed, QueueSettings},
        trace::TraceContext,
    },
    publish_outbox::outbox,
};

pub const RETENTION: &str = "retention";

const BATCH: u32 = 1000;

/// One kind of row that expires.
pub trait Expiring: Send + Sync {
    /// The `kind` label of `retention_purged_rows_total` and of the log line.
    fn kind(&self) -> &'static str;
    /// Deletes up to `limit` expired rows; returns how many it deleted.
    fn purge_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}

/// A kind of expiring rows that one statement deletes, a batch at a time: the kinds whose
/// purge is nothing but that statement.
pub struct ExpiredRows {
    /// The kind's label (`Expiring::kind`).
    pub kind: &'static str,
    /// A `DELETE … LIMIT ?`: with a retention, its first `?` is the retention in seconds;
    /// the last is the batch's limit.
    pub delete: &'static str,
    pub retention: Option<Duration>,
}

impl Expiring for ExpiredRows {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn purge_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let mut delete = sqlx::query(self.delete);
            if let Some(retention) = self.retention {
                delete = delete.bind(retention.as_secs() as i64);
            }
            Ok(delete.bind(limit).execute(pool).await?.rows_affected())
        })
    }
}

/// PUBLISHED outbox rows older than the retention.
pub struct PublishedOutboxRows(pub Duration);

impl Expiring for PublishedOutboxRows {
    fn kind(&self) -> &'static str {
        "outbox_published"
    }
    fn purge_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(outbox::purge_published(pool, self.0, limit))
    }
}

/// Finished (`Done`) jobs older than the retention.
pub struct FinishedJobs(pub Duration);

impl Expiring for FinishedJobs {
    fn kind(&self) -> &'static str {
        "jobs_done"
    }
    fn purge_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(purge_done(pool, self.0, limit))
    }
}

/// Deletes up to `limit` jobs that finished (`Done`) more than `older_than` ago,
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

/// The payload of a retention job: the tick that queued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    pub tick: String,
}

/// One job per tick (the tick is its idempotency key), however many replicas tick.
impl JobKind for Purge {
    const QUEUE: &'static str = RETENTION;

    fn idempotency_key(&self) -> Option<String> {
        Some(self.key())
    }
}

/// Queues the retention purge of one schedule tick.
pub async fn push_retention(
    pool: &MySqlPool,
    settings: &QueueSettings,
    purge: Purge,
) -> Result<Pushed, BoxDynError> {
    queue::push(pool, settings, purge).await
}

impl Purge {
    /// The job's idempotency key: one job per tick, however many replicas tick.
    pub fn key(&self) -> String {
        format!("retention-{}", self.tick)
    }
}

pub struct RetentionContext {
    pub pool: MySqlPool,
    pub settings: QueueSettings,
    pub kinds: Vec<Arc<dyn Expiring>>,
}

/// Purges every kind to the end; returns the rows deleted per kind.
pub async fn purge_all(
    pool: &MySqlPool,
    kinds: &[Arc<dyn Expiring>],
) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let mut purged = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let mut total = 0;
        loop {
            let n = kind.purge_batch(pool, BATCH).await?;
            total += n;
            metrics::counter!("retention_purged_rows_total", "kind" => kind.kind()).increment(n);
            if n < u64::from(BATCH) {
                break;
            }
        }
        purged.push((kind.kind(), total));
    }
    Ok(purged)
}

/// The handler of the `retention` queue.
pub async fn handle(
    job: Purge,
    ctx: Data<Arc<RetentionContext>>,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<u64, BoxDynError> {
    let run = JobAttempt::new(RETENTION, &id, &attempt, &task);
    let purged = run
        .run(&ctx.pool, &ctx.settings, &TraceContext::default(), |_| {
            purge_all(&ctx.pool, &ctx.kinds)
        })
        .await?;
    if purged.iter().any(|(_, n)| *n > 0) {
        let purged = purged
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(tick = %job.tick, %purged, "retention purge done");
    }
    Ok(purged.iter().map(|(_, n)| n).sum())
}
