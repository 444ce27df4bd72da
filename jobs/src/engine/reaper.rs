//! The job lease. apalis-mysql rc.8's own re-enqueue of orphaned jobs compares a TIMESTAMP
//! with a Unix time and never matches, so a job held by a worker that died (SIGKILL, crash)
//! would stay `Running` or `Queued` forever. This puts such jobs back in their queue once
//! their worker has missed its heartbeats for `lease`; an interrupted attempt counts, and is
//! recorded in the attempt history like any failed one.

use std::time::Duration;

use sqlx::MySqlPool;

/// Puts a job back in its queue if `lock_by` still holds it (an interrupted attempt counts).
const RELEASE: &str = "UPDATE jobs SET attempts = attempts + IF(status = 'Running', 1, 0), \
     status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL \
     WHERE lock_by = ? AND status IN ('Queued', 'Running')";

/// The interrupted attempt of a job `lock_by` was running, in the attempt history (the
/// history layer never saw it end).
const RECORD_INTERRUPTED: &str = "INSERT INTO job_attempts \
     (job_id, queue, attempt, started_at, finished_at, outcome, error, worker) \
     SELECT id, job_type, attempts + 1, LEAST(COALESCE(lock_at, run_at, CURRENT_TIMESTAMP(6)), \
     CURRENT_TIMESTAMP(6)), CURRENT_TIMESTAMP(6), 'retry', ?, lock_by \
     FROM jobs WHERE lock_by = ? AND status = 'Running'";

/// Releases what `worker` holds (one job, or all), recording its interrupted attempts.
async fn release(
    pool: &MySqlPool,
    worker: &str,
    job: Option<&str>,
    why: &str,
) -> Result<u64, sqlx::Error> {
    let by_id = if job.is_some() { " AND id = ?" } else { "" };
    let (record, release) = (
        format!("{RECORD_INTERRUPTED}{by_id}"),
        format!("{RELEASE}{by_id}"),
    );
    let mut record = sqlx::query(&record).bind(why).bind(worker);
    let mut release = sqlx::query(&release).bind(worker);
    if let Some(id) = job {
        record = record.bind(id);
        release = release.bind(id);
    }
    let mut tx = pool.begin().await?;
    record.execute(&mut *tx).await?;
    let released = release.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(released)
}

pub async fn reap_orphans(pool: &MySqlPool, lease: Duration) -> Result<u64, sqlx::Error> {
    // Find them with a plain read, then release each by primary key: one UPDATE joining the
    // workers took locks across the jobs table and deadlocked with fetches under load.
    let orphaned: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.id, j.lock_by FROM jobs j LEFT JOIN workers w ON j.lock_by = w.id \
         WHERE j.status IN ('Queued', 'Running') AND j.lock_by IS NOT NULL \
         AND (w.id IS NULL OR w.last_seen < CURRENT_TIMESTAMP - INTERVAL ? SECOND) \
         AND COALESCE(j.lock_at, j.run_at) < CURRENT_TIMESTAMP - INTERVAL ? SECOND \
         LIMIT 1000",
    )
    .bind(lease.as_secs().max(1) as i64)
    .bind(lease.as_secs().max(1) as i64)
    .fetch_all(pool)
    .await?;
    let mut released = 0;
    for (id, worker) in orphaned {
        let why = format!("interrupted: worker {worker} stopped heartbeating (lease expired)");
        released += release(pool, &worker, Some(&id), &why).await?;
    }
    Ok(released)
}

/// Puts one job `worker` holds back in its queue, recording its interrupted attempt.
pub async fn release_job(
    pool: &MySqlPool,
    worker: &str,
    job: &str,
    why: &str,
) -> Result<u64, sqlx::Error> {
    release(pool, worker, Some(job), why).await
}

/// Puts every job a worker of this process held back in its queue, once that worker has
/// ended (apalis ends a worker whose heartbeat query fails, e.g. on a deadlock): its jobs
/// are nobody's, and waiting out the lease would delay them all by `JOB_LEASE_SECS`.
pub async fn release_worker(pool: &MySqlPool, worker: &str) -> Result<u64, sqlx::Error> {
    let why = format!("interrupted: worker {worker} ended");
    release(pool, worker, None, &why).await
}

pub async fn reap_loop(
    pool: MySqlPool,
    lease: Duration,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        match reap_orphans(&pool, lease).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "re-queued jobs whose worker stopped heartbeating"),
            Err(e) => tracing::warn!(error = %e, "job reaper failed; will retry"),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
