//! Periodic removal of expired idempotency records (a plain task until the job engine runs
//! it). Deletes go in bounded batches so the purge never holds long locks.

use std::time::Duration;

use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use super::repo;
use crate::telemetry::names;

const BATCH: u32 = 1000;

/// Purges every expired record now; returns how many were removed.
pub async fn purge_all(pool: &MySqlPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = repo::purge_expired(pool, BATCH).await?;
        total += n;
        if n < u64::from(BATCH) {
            return Ok(total);
        }
    }
}

pub async fn purge_loop(pool: MySqlPool, every: Duration, stop: CancellationToken) {
    loop {
        match purge_all(&pool).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(names::IDEMPOTENCY_PURGED).increment(n);
                tracing::info!(purged = n, "expired idempotency keys purged");
            }
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed; will retry"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
