//! The archive workflow's steps and the SQL they own: finished (COMPLETED/CANCELLED) orders
//! older than a cutoff move, with their items, to the archive tables.
//!
//! A run is a chain of jobs on the `archive-run` queue (composed with apalis-workflow in the
//! workflows crate): **plan** fixes the run's cutoff in its `archive_runs` row; each **chunk**
//! job moves up to `chunk_size` orders in one transaction and queues the next chunk job;
//! the **summary** step closes the row and logs one line.
//!
//! * Exactly once: a chunk locks its run row, copies (INSERT … ON DUPLICATE KEY: a replay
//!   cannot duplicate), deletes and advances the row's progress in one transaction. A crash
//!   loses or repeats nothing; the retried or re-leased job resumes after the last committed
//!   chunk, with the same cutoff. Two chains driving one run (a start queued twice, a step
//!   replayed after a crash between queueing its successor and its acknowledgement) take
//!   turns on the run row and archive each order once; the summary is written once.
//! * One run at a time across replicas: the `active` column's UNIQUE key admits one RUNNING
//!   row; a second run's plan records it as SKIPPED instead.
//! * Gentle on live traffic: bounded chunks in primary-key order, row locks only on the
//!   chunk's own rows, no table locks, and a job boundary between chunks.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use apalis::prelude::BoxDynError;

use crate::engine::{
    queue::{self, JobKind, Pushed, QueueSettings},
    trace::TraceContext,
};

/// The archive workflow: its plan, chunk and summary jobs.
pub const ARCHIVE_RUN: &str = "archive-run";

/// What starts a run: the cron tick's or the CLI's request (the first job of the chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRun {
    pub run_key: String,
    pub older_than_days: u32,
    pub chunk_size: u32,
}

/// The run key is the job's idempotency key, so the schedule's ticks on several replicas
/// queue a run once.
impl JobKind for ArchiveRun {
    const QUEUE: &'static str = ARCHIVE_RUN;

    fn idempotency_key(&self) -> Option<String> {
        Some(self.run_key.clone())
    }
}

/// Starts an archive run (the first job of its workflow: the plan).
pub async fn push_archive(
    pool: &MySqlPool,
    settings: &QueueSettings,
    run: ArchiveRun,
) -> Result<Pushed, BoxDynError> {
    queue::push(pool, settings, run).await
}

/// The plan's output, and the payload of every chunk job and of the summary step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePlan {
    pub run_key: String,
    pub chunk_size: u32,
    /// The plan's trace, which every later step of the run joins.
    #[serde(default)]
    pub trace: TraceContext,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub run_key: String,
    pub status: String,
    pub cutoff: DateTime<Utc>,
    pub orders: i64,
    pub items: i64,
    pub chunks: i32,
    pub duration_ms: Option<i64>,
    /// The run this one stepped aside for (status SKIPPED).
    pub blocked_by: Option<String>,
}

impl Summary {
    pub fn skipped(&self) -> bool {
        self.status == "SKIPPED"
    }

    pub fn finished(&self) -> bool {
        self.status != "RUNNING"
    }
}

const SUMMARY_COLUMNS: &str = "run_key, status, cutoff, orders_archived, items_archived, chunks, \
     duration_ms, blocked_by";

#[derive(sqlx::FromRow)]
struct SummaryRow {
    run_key: String,
    status: String,
    cutoff: DateTime<Utc>,
    orders_archived: i64,
    items_archived: i64,
    chunks: i32,
    duration_ms: Option<i64>,
    blocked_by: Option<String>,
}

impl From<SummaryRow> for Summary {
    fn from(r: SummaryRow) -> Self {
        Summary {
            run_key: r.run_key,
            status: r.status,
            cutoff: r.cutoff,
            orders: r.orders_archived,
            items: r.items_archived,
            chunks: r.chunks,
            duration_ms: r.duration_ms,
            blocked_by: r.blocked_by,
        }
    }
}

/// The run's row as it stands (None: no plan has run for this key yet).
pub async fn summary(pool: &MySqlPool, run_key: &str) -> Result<Option<Summary>, sqlx::Error> {
    let row: Option<SummaryRow> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM archive_runs WHERE run_key = ?"
    ))
    .bind(run_key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Summary::from))
}

/// Jobs of the run that died (attempts exhausted): the run waits for an operator's retry.
pub async fn dead_steps(pool: &MySqlPool, run_key: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE job_type = ? AND status = 'Killed' \
         AND JSON_UNQUOTE(JSON_EXTRACT(CONVERT(job USING utf8mb4), '$.run_key')) = ?",
    )
    .bind(crate::archive_run::archive::ARCHIVE_RUN)
    .bind(run_key)
    .fetch_one(pool)
    .await
}

/// Step 1: fixes the run's cutoff (now − `older_than_days`) in its row, or finds the row a
/// previous attempt (or a twin chain) made. If another run is RUNNING, this one is recorded
/// as SKIPPED and its chain goes straight to the summary.
pub async fn plan(
    pool: &MySqlPool,
    run: &ArchiveRun,
    trace: TraceContext,
) -> Result<ArchivePlan, sqlx::Error> {
    let plan = ArchivePlan {
        run_key: run.run_key.clone(),
        chunk_size: run.chunk_size.max(1),
        trace,
    };
    // Each unique-key conflict means another plan got in between; the next pass sees it.
    for _ in 0..3 {
        if summary(pool, &run.run_key).await?.is_some() {
            return Ok(plan);
        }
        let inserted = sqlx::query(
            "INSERT INTO archive_runs (run_key, cutoff, chunk_size, status, active) \
             VALUES (?, CURRENT_TIMESTAMP(6) - INTERVAL ? DAY, ?, 'RUNNING', 1)",
        )
        .bind(&run.run_key)
        .bind(run.older_than_days)
        .bind(plan.chunk_size)
        .execute(pool)
        .await;
        match inserted {
            Ok(_) => {
                tracing::info!(run_key = %run.run_key, older_than_days = run.older_than_days, "archive run planned");
                return Ok(plan);
            }
            Err(e) if crate::is_unique_violation(&e) => {}
            Err(e) => return Err(e),
        }
        let active: Option<String> =
            sqlx::query_scalar("SELECT run_key FROM archive_runs WHERE active = 1")
                .fetch_optional(pool)
                .await?;
        let Some(active) = active else { continue };
        let skipped = sqlx::query(
            "INSERT INTO archive_runs (run_key, cutoff, chunk_size, status, blocked_by, finished_at) \
             VALUES (?, CURRENT_TIMESTAMP(6) - INTERVAL ? DAY, ?, 'SKIPPED', ?, CURRENT_TIMESTAMP(6))",
        )
        .bind(&run.run_key)
        .bind(run.older_than_days)
        .bind(plan.chunk_size)
        .bind(&active)
        .execute(pool)
        .await;
        match skipped {
            Ok(_) => {
                tracing::warn!(run_key = %run.run_key, blocked_by = %active, "another archive run is in progress; this one steps aside");
                return Ok(plan);
            }
            Err(e) if crate::is_unique_violation(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "archive run {}: could not record its plan after three conflicting attempts",
        run.run_key
    )))
}

/// What one chunk job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Moved {
        /// Orders the chunk took (a replayed one may find some already archived).
        selected: usize,
        orders: u64,
        items: u64,
        last_order_id: i64,
    },
    /// Nothing eligible is left (or the run is no longer RUNNING): on to the summary.
    Finished,
}

#[derive(sqlx::FromRow)]
struct Progress {
    id: i64,
    cutoff: DateTime<Utc>,
    last_order_id: i64,
}

/// Step 2, once per chunk job: moves the next chunk of the run in one transaction.
pub async fn move_chunk(pool: &MySqlPool, plan: &ArchivePlan) -> Result<Chunk, sqlx::Error> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    // The run row's lock makes chunks of one run take turns, whichever chain queued them.
    let progress: Option<Progress> = sqlx::query_as(
        "SELECT id, cutoff, last_order_id FROM archive_runs \
         WHERE run_key = ? AND status = 'RUNNING' FOR UPDATE",
    )
    .bind(&plan.run_key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(progress) = progress else {
        tx.rollback().await?;
        return Ok(Chunk::Finished);
    };
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE id > ? AND status IN ('COMPLETED', 'CANCELLED') AND updated_at < ? \
         ORDER BY id LIMIT ? FOR UPDATE",
    )
    .bind(progress.last_order_id)
    .bind(progress.cutoff)
    .bind(plan.chunk_size.max(1))
    .fetch_all(&mut *tx)
    .await?;
    let Some(&last) = ids.last() else {
        tx.rollback().await?;
        return Ok(Chunk::Finished);
    };
    // The chunk is the eligible orders in (after, last], all locked above: the statements
    // below select them by that range and predicate (a range scan; an IN list of the ids was
    // a point lookup per order, and a statement as long as the chunk).
    macro_rules! chunk {
        ($sql:literal $(,)?) => {
            sqlx::query(concat!(
                $sql,
                " o.id > ? AND o.id <= ? AND o.status IN ('COMPLETED', 'CANCELLED') AND o.updated_at < ?"
            ))
        };
    }
    let bind = |q: sqlx::query::Query<'static, sqlx::MySql, sqlx::mysql::MySqlArguments>| {
        q.bind(progress.last_order_id)
            .bind(last)
            .bind(progress.cutoff)
    };
    let orders = bind(chunk!(
        "INSERT INTO orders_archive (id, user_id, status, total_amount, created_at, updated_at) \
         SELECT o.id, o.user_id, o.status, o.total_amount, o.created_at, o.updated_at FROM orders o WHERE",
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let items = bind(chunk!(
        "INSERT INTO order_items_archive (order_id, product_id, quantity, unit_price) \
         SELECT i.order_id, i.product_id, i.quantity, i.unit_price \
         FROM orders o JOIN order_items i ON i.order_id = o.id WHERE",
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    bind(chunk!(
        "DELETE i FROM orders o JOIN order_items i ON i.order_id = o.id WHERE",
    ))
    .execute(&mut *tx)
    .await?;
    bind(chunk!("DELETE o FROM orders o WHERE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE archive_runs SET last_order_id = ?, chunks = chunks + 1, \
         orders_archived = orders_archived + ?, items_archived = items_archived + ? WHERE id = ?",
    )
    .bind(last)
    .bind(orders as i64)
    .bind(items as i64)
    .bind(progress.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("archive_orders_total").increment(orders);
    metrics::counter!("archive_chunks_total").increment(1);
    metrics::histogram!("archive_chunk_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(Chunk::Moved {
        selected: ids.len(),
        orders,
        items,
        last_order_id: last,
    })
}

/// Step 3: closes a RUNNING run (DONE, its duration recorded) and returns its summary. Only
/// the call that closes it logs the summary line and records the run's duration metric, so
/// a replayed or twin summary step is harmless.
pub async fn finish(pool: &MySqlPool, plan: &ArchivePlan) -> Result<Summary, sqlx::Error> {
    let closed = sqlx::query(
        "UPDATE archive_runs SET status = 'DONE', active = NULL, finished_at = CURRENT_TIMESTAMP(6), \
         duration_ms = TIMESTAMPDIFF(MICROSECOND, started_at, CURRENT_TIMESTAMP(6)) DIV 1000 \
         WHERE run_key = ? AND status = 'RUNNING'",
    )
    .bind(&plan.run_key)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    let s = summary(pool, &plan.run_key)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    if closed {
        if let Some(ms) = s.duration_ms {
            metrics::histogram!("archive_run_duration_seconds").record(ms as f64 / 1e3);
        }
        tracing::info!(
            run_key = %s.run_key,
            cutoff = %s.cutoff,
            orders_archived = s.orders,
            items_archived = s.items,
            chunks = s.chunks,
            duration_ms = s.duration_ms,
            "archive run finished"
        );
    }
    Ok(s)
}
