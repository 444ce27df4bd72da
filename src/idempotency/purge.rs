//! Expired idempotency records, one of the kinds the retention job purges (on the job
//! engine's schedule, `RETENTION_CRON`), in bounded batches so the purge never holds long
//! locks.

use futures_util::future::BoxFuture;
use orderflow_jobs::retention::Expiring;
use sqlx::MySqlPool;

use super::repo;
use crate::telemetry::names;

const BATCH: u32 = 1000;

/// Purges every expired record now; returns how many were removed.
pub async fn purge_all(pool: &MySqlPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = ExpiredIdempotencyKeys.purge_batch(pool, BATCH).await?;
        total += n;
        if n < u64::from(BATCH) {
            return Ok(total);
        }
    }
}

pub struct ExpiredIdempotencyKeys;

impl Expiring for ExpiredIdempotencyKeys {
    fn kind(&self) -> &'static str {
        "idempotency_keys"
    }

    fn purge_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let n = repo::purge_expired(pool, limit).await?;
            metrics::counter!(names::IDEMPOTENCY_PURGED).increment(n);
            Ok(n)
        })
    }
}
