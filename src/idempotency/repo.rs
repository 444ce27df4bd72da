//! SQL of the idempotency_keys table.

use std::time::Duration;

use sqlx::{MySqlConnection, MySqlPool};

use crate::db;

/// A committed first outcome.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_fingerprint: String,
    pub response_status: Option<i16>,
    pub response_body: Option<String>,
    /// The retention has passed; the key is free again once this row is removed.
    pub expired: bool,
}

/// The committed record for this key, if any. A plain (non-locking) read: under READ
/// COMMITTED it sees exactly what other requests have committed.
pub async fn find(
    pool: &MySqlPool,
    user_id: i64,
    key: &str,
) -> Result<Option<StoredResponse>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_fingerprint, response_status, response_body, \
         (expires_at <= CURRENT_TIMESTAMP(6)) AS expired \
         FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// Removes an expired record so that its key can start a new request.
pub async fn delete_expired(pool: &MySqlPool, user_id: i64, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE user_id = ? AND idem_key = ? \
         AND expires_at <= CURRENT_TIMESTAMP(6)",
    )
    .bind(user_id)
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Outcome of trying to claim a key inside the order transaction.
#[derive(Debug)]
pub enum Claim {
    /// This transaction owns the key (row id).
    Claimed(i64),
    /// Another request holds or has committed the key: the caller rolls back and looks.
    Taken,
}

pub async fn insert(
    conn: &mut MySqlConnection,
    user_id: i64,
    key: &str,
    fingerprint: &str,
    retention: Duration,
) -> Result<Claim, sqlx::Error> {
    let res = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, expires_at) \
         VALUES (?, ?, ?, CURRENT_TIMESTAMP(6) + INTERVAL ? SECOND)",
    )
    .bind(user_id)
    .bind(key)
    .bind(fingerprint)
    .bind(retention.as_secs() as i64)
    .execute(conn)
    .await;
    match res {
        Ok(done) => Ok(Claim::Claimed(done.last_insert_id() as i64)),
        // Duplicate: the first committed. Lock wait timeout or deadlock: the first is still
        // in flight (or lost a deadlock); either way the caller reads what was committed.
        Err(e)
            if db::is_unique_violation(&e)
                || db::is_lock_wait_timeout(&e)
                || db::is_deadlock(&e) =>
        {
            Ok(Claim::Taken)
        }
        Err(e) => Err(e),
    }
}

/// Stores the first outcome with the record, in the transaction that produced it.
pub async fn complete(
    conn: &mut MySqlConnection,
    id: i64,
    status: u16,
    body: &str,
    order_id: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = ?, response_body = ?, order_id = ? WHERE id = ?",
    )
    .bind(status as i16)
    .bind(body)
    .bind(order_id)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes up to `batch` expired records; returns how many went.
pub async fn purge_expired(pool: &MySqlPool, batch: u32) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE expires_at <= CURRENT_TIMESTAMP(6) ORDER BY expires_at LIMIT ?",
    )
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
