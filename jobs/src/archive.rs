//! archive-run: moves COMPLETED/CANCELLED orders older than the cutoff, with their items, to
//! the archive tables, chunk by chunk, each chunk in its own transaction.
//!
//! * Exactly once: a chunk copies (INSERT … ON DUPLICATE KEY: a replay cannot duplicate),
//!   deletes and advances the run's progress row in one transaction, so a crash loses or
//!   repeats nothing; the run resumes after its last committed chunk with the same cutoff.
//! * One run at a time across replicas: the run holds the MySQL named lock
//!   `orderflow.archive.<database>` on a connection of its own, outside the pool, so the
//!   server releases it whenever that connection goes — a crash, or a run abandoned
//!   in-process (a pooled connection would be returned to the pool still holding it); a
//!   second run finds the lock taken and steps aside.
//! * Gentle on live traffic: bounded chunks in primary-key order, row locks only on the
//!   chunk's own rows, no table locks.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection, MySqlConnection, MySqlPool, QueryBuilder};
use tracing::Instrument;

use crate::{
    queue::ARCHIVE_RUN,
    trace::{self, Outcome, TraceContext},
};

/// Named locks are server-wide: the database name keeps deployments sharing a server apart.
const LOCK_NAME: &str = "CONCAT('orderflow.archive.', DATABASE())";
const CHUNK_RETRIES: u32 = 3;

/// The job's payload (and the CLI's request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRun {
    pub run_key: String,
    pub older_than_days: u32,
    pub chunk_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub run_key: String,
    pub cutoff: Option<DateTime<Utc>>,
    pub orders: i64,
    pub items: i64,
    pub chunks: i32,
    pub duration_ms: u64,
    /// Another run held the lock; this one did nothing.
    pub skipped: bool,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: i64,
    cutoff: DateTime<Utc>,
    status: String,
    last_order_id: i64,
    chunks: i32,
    orders_archived: i64,
    items_archived: i64,
}

async fn start_or_resume(
    conn: &mut MySqlConnection,
    run: &ArchiveRun,
) -> Result<RunRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO archive_runs (run_key, cutoff, chunk_size) \
         VALUES (?, CURRENT_TIMESTAMP(6) - INTERVAL ? DAY, ?) \
         ON DUPLICATE KEY UPDATE chunk_size = VALUES(chunk_size)",
    )
    .bind(&run.run_key)
    .bind(run.older_than_days)
    .bind(run.chunk_size)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "SELECT id, cutoff, status, last_order_id, chunks, orders_archived, items_archived \
         FROM archive_runs WHERE run_key = ?",
    )
    .bind(&run.run_key)
    .fetch_one(conn)
    .await
}

/// Moves one chunk; returns (orders, items), or None when nothing eligible is left.
async fn move_chunk(
    pool: &MySqlPool,
    run: &RunRow,
    after: i64,
    size: u32,
) -> Result<Option<(i64, u64, u64)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE id > ? AND status IN ('COMPLETED', 'CANCELLED') AND updated_at < ? \
         ORDER BY id LIMIT ? FOR UPDATE",
    )
    .bind(after)
    .bind(run.cutoff)
    .bind(size)
    .fetch_all(&mut *tx)
    .await?;
    let Some(&last) = ids.last() else {
        tx.rollback().await?;
        return Ok(None);
    };
    let mut q = QueryBuilder::new(
        "INSERT INTO orders_archive (id, user_id, status, total_amount, created_at, updated_at) \
         SELECT id, user_id, status, total_amount, created_at, updated_at FROM orders WHERE id IN",
    );
    crate::push_id_list(&mut q, &ids);
    q.push(" ON DUPLICATE KEY UPDATE id = orders_archive.id");
    let orders = q.build().execute(&mut *tx).await?.rows_affected();
    let mut q = QueryBuilder::new(
        "INSERT INTO order_items_archive (order_id, product_id, quantity, unit_price) \
         SELECT order_id, product_id, quantity, unit_price FROM order_items WHERE order_id IN",
    );
    crate::push_id_list(&mut q, &ids);
    q.push(" ON DUPLICATE KEY UPDATE order_id = order_items_archive.order_id");
    let items = q.build().execute(&mut *tx).await?.rows_affected();
    let mut q = QueryBuilder::new("DELETE FROM order_items WHERE order_id IN");
    crate::push_id_list(&mut q, &ids);
    q.build().execute(&mut *tx).await?;
    let mut q = QueryBuilder::new("DELETE FROM orders WHERE id IN");
    crate::push_id_list(&mut q, &ids);
    q.build().execute(&mut *tx).await?;
    sqlx::query(
        "UPDATE archive_runs SET last_order_id = ?, chunks = chunks + 1, \
         orders_archived = orders_archived + ?, items_archived = items_archived + ? WHERE id = ?",
    )
    .bind(last)
    .bind(orders as i64)
    .bind(items as i64)
    .bind(run.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((last, orders, items)))
}

fn summary(run: &ArchiveRun, row: &RunRow, started: Instant) -> Summary {
    Summary {
        run_key: run.run_key.clone(),
        cutoff: Some(row.cutoff),
        orders: row.orders_archived,
        items: row.items_archived,
        chunks: row.chunks,
        duration_ms: started.elapsed().as_millis() as u64,
        skipped: false,
    }
}

/// Runs (or resumes) the archive run `run.run_key`.
pub async fn run(pool: &MySqlPool, run: &ArchiveRun) -> Result<Summary, sqlx::Error> {
    let started = Instant::now();
    let mut lock_conn = pool.connect_options().connect().await?;
    let got: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({LOCK_NAME}, 0)"))
        .fetch_one(&mut lock_conn)
        .await?;
    if got != Some(1) {
        tracing::info!(run_key = %run.run_key, "another archive run is in progress; skipping");
        return Ok(Summary {
            run_key: run.run_key.clone(),
            cutoff: None,
            orders: 0,
            items: 0,
            chunks: 0,
            duration_ms: 0,
            skipped: true,
        });
    }
    let result = run_locked(pool, &mut lock_conn, run, started).await;
    let _ = sqlx::query(&format!("SELECT RELEASE_LOCK({LOCK_NAME})"))
        .execute(&mut lock_conn)
        .await;
    let _ = lock_conn.close().await;
    result
}

async fn run_locked(
    pool: &MySqlPool,
    conn: &mut MySqlConnection,
    run: &ArchiveRun,
    started: Instant,
) -> Result<Summary, sqlx::Error> {
    let mut row = start_or_resume(conn, run).await?;
    if row.status == "DONE" {
        return Ok(summary(run, &row, started));
    }
    let mut after = row.last_order_id;
    loop {
        let chunk_started = Instant::now();
        let mut attempt = 0;
        let moved = loop {
            attempt += 1;
            let span = tracing::info_span!(
                "archive.chunk",
                otel.name = "archive chunk",
                "archive.run_key" = %run.run_key,
                "archive.after_order_id" = after,
                "archive.attempt" = attempt,
                "archive.orders" = tracing::field::Empty,
            );
            let moved = move_chunk(pool, &row, after, run.chunk_size.max(1))
                .instrument(span.clone())
                .await;
            if let Ok(Some((_, orders, _))) = &moved {
                span.record("archive.orders", orders);
            }
            match moved {
                Ok(m) => break m,
                Err(e) if attempt < CHUNK_RETRIES => {
                    tracing::warn!(error = %e, attempt, "archive chunk failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        };
        let Some((last, orders, items)) = moved else {
            break;
        };
        after = last;
        metrics::counter!("archive_orders_total").increment(orders);
        metrics::counter!("archive_chunks_total").increment(1);
        metrics::histogram!("archive_chunk_duration_seconds")
            .record(chunk_started.elapsed().as_secs_f64());
        tracing::debug!(run_key = %run.run_key, orders, items, last_order_id = last, "archive chunk committed");
    }
    sqlx::query(
        "UPDATE archive_runs SET status = 'DONE', finished_at = CURRENT_TIMESTAMP(6) WHERE id = ?",
    )
    .bind(row.id)
    .execute(&mut *conn)
    .await?;
    row = start_or_resume(conn, run).await?;
    let s = summary(run, &row, started);
    metrics::histogram!("archive_run_duration_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(
        run_key = %s.run_key,
        cutoff = %row.cutoff,
        orders_archived = s.orders,
        items_archived = s.items,
        chunks = s.chunks,
        duration_ms = s.duration_ms,
        "archive run finished"
    );
    Ok(s)
}

/// Retention for what the pipeline leaves behind: PUBLISHED outbox rows and finished jobs
/// older than `older_than`, deleted in bounded batches. Dead jobs and DEAD rows stay for the
/// operators.
pub async fn purge_finished(
    pool: &MySqlPool,
    older_than: Duration,
) -> Result<(u64, u64), sqlx::Error> {
    let secs = older_than.as_secs() as i64;
    let mut outbox = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM outbox_events WHERE status = 'PUBLISHED' \
             AND published_at < CURRENT_TIMESTAMP(6) - INTERVAL ? SECOND LIMIT 1000",
        )
        .bind(secs)
        .execute(pool)
        .await?
        .rows_affected();
        outbox += n;
        if n < 1000 {
            break;
        }
    }
    let mut jobs = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM jobs WHERE status = 'Done' AND done_at < CURRENT_TIMESTAMP - INTERVAL ? SECOND LIMIT 1000",
        )
        .bind(secs)
        .execute(pool)
        .await?
        .rows_affected();
        jobs += n;
        if n < 1000 {
            break;
        }
    }
    Ok((outbox, jobs))
}

pub struct ArchiveContext {
    pub pool: MySqlPool,
    /// Retention of PUBLISHED outbox rows and finished jobs, purged after each run.
    pub retention: Duration,
}

/// The apalis handler of the archive-run queue: the run, then the retention purge.
pub async fn handle(
    job: ArchiveRun,
    ctx: apalis::prelude::Data<std::sync::Arc<ArchiveContext>>,
    id: apalis::prelude::TaskId<ulid::Ulid>,
    attempt: apalis::prelude::Attempt,
    task: apalis_mysql::MySqlContext,
) -> Result<Summary, apalis::prelude::BoxDynError> {
    let attempt = attempt.current();
    // A scheduled run starts a trace of its own.
    let span = trace::job_span(
        ARCHIVE_RUN,
        &id.to_string(),
        attempt,
        &TraceContext::default(),
    );
    let started = Instant::now();
    let result = async {
        let summary = run(&ctx.pool, &job).await?;
        let (outbox, jobs) = purge_finished(&ctx.pool, ctx.retention).await?;
        if outbox + jobs > 0 {
            tracing::info!(outbox_rows = outbox, jobs, "retention purge done");
        }
        Ok::<_, sqlx::Error>(summary)
    }
    .instrument(span.clone())
    .await;
    let outcome = match &result {
        Ok(_) => Outcome::Done,
        Err(_) if crate::queue::is_last_attempt(attempt, task.max_attempts()) => Outcome::Dead,
        Err(_) => Outcome::Retry,
    };
    trace::finish_job(&span, ARCHIVE_RUN, started, outcome);
    Ok(result?)
}
