//! The job lease. apalis-mysql rc.8's own re-enqueue of orphaned jobs compares a TIMESTAMP
//! with a Unix time and never matches, so a job held by a worker that died (SIGKILL, crash)
//! would stay `Running` or `Queued` forever. This puts such jobs back in their queue once
//! their worker has missed its heartbeats for `lease`; an interrupted attempt counts.

use std::time::Duration;

use sqlx::MySqlPool;

pub async fn reap_orphans(pool: &MySqlPool, lease: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs j LEFT JOIN workers w ON j.lock_by = w.id \
         SET j.attempts = j.attempts + IF(j.status = 'Running', 1, 0), j.status = 'Pending', \
             j.lock_by = NULL, j.lock_at = NULL, j.done_at = NULL \
         WHERE j.status IN ('Queued', 'Running') \
         AND (w.id IS NULL OR w.last_seen < CURRENT_TIMESTAMP - INTERVAL ? SECOND) \
         AND COALESCE(j.lock_at, j.run_at) < CURRENT_TIMESTAMP - INTERVAL ? SECOND",
    )
    .bind(lease.as_secs().max(1) as i64)
    .bind(lease.as_secs().max(1) as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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
