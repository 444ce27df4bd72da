//! Taking and restoring stock inside an order's transaction.
//!
//! Taking uses the `version` column as an optimistic lock with a bounded, jittered retry;
//! the last attempt is a guarded decrement (`WHERE quantity >= ?`) that cannot lose a race,
//! only find the stock short. So under any contention a request is refused only with
//! OUT_OF_STOCK when the stock really is short, never because its retries ran out
//! (docs/adr/0005-stock-concurrency.md has the reasoning and the measurements).

use std::time::Duration;

use rand::Rng;
use sqlx::MySqlConnection;

use crate::{config::StockRetry, telemetry::names};

#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Taken,
    OutOfStock,
    NoSuchProduct,
}

async fn compare_and_set(
    conn: &mut MySqlConnection,
    product_id: i64,
    quantity: i64,
    version: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE stocks SET quantity = quantity - ?, version = version + 1, \
         updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND version = ?",
    )
    .bind(quantity)
    .bind(product_id)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn guarded_decrement(
    conn: &mut MySqlConnection,
    product_id: i64,
    quantity: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE stocks SET quantity = quantity - ?, version = version + 1, \
         updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND quantity >= ?",
    )
    .bind(quantity)
    .bind(product_id)
    .bind(quantity)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Full jitter: a random pause in [0, base * 2^attempt), so colliding buyers spread out.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let cap = base.saturating_mul(1 << attempt.min(10));
    if cap.is_zero() {
        return cap;
    }
    rand::thread_rng().gen_range(Duration::ZERO..cap)
}

pub async fn take(
    conn: &mut MySqlConnection,
    product_id: i64,
    quantity: i64,
    retry: StockRetry,
) -> Result<Take, sqlx::Error> {
    for attempt in 1..retry.attempts {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT quantity, version FROM stocks WHERE product_id = ?")
                .bind(product_id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((available, version)) = row else {
            return Ok(Take::NoSuchProduct);
        };
        if available < quantity {
            return Ok(Take::OutOfStock);
        }
        if compare_and_set(conn, product_id, quantity, version).await? {
            return Ok(Take::Taken);
        }
        metrics::counter!(names::STOCK_LOCK_CONFLICTS).increment(1);
        metrics::counter!(names::STOCK_LOCK_RETRIES).increment(1);
        tokio::time::sleep(backoff(retry.backoff_base, attempt)).await;
    }
    if guarded_decrement(conn, product_id, quantity).await? {
        Ok(Take::Taken)
    } else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM stocks WHERE product_id = ?")
            .bind(product_id)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(if exists.is_some() {
            Take::OutOfStock
        } else {
            Take::NoSuchProduct
        })
    }
}

/// Gives back what a cancelled order took. An increment cannot conflict with anything the
/// stock invariant cares about, so it is a single atomic statement.
pub async fn restore(
    conn: &mut MySqlConnection,
    product_id: i64,
    quantity: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stocks SET quantity = quantity + ?, version = version + 1, \
         updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ?",
    )
    .bind(quantity)
    .bind(product_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(2);
        for attempt in 1..6 {
            let d = backoff(base, attempt);
            assert!(d < base * (1 << attempt), "{d:?} at attempt {attempt}");
        }
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
    }
}
