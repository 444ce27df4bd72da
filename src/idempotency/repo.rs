//! SQL of the idempotency_keys table.

use std::{collections::HashMap, time::Duration};

use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder};

use crate::db;

/// A committed first outcome. Records are written together with the outcome they store, in
/// the transaction that produced it; a record without one (the columns allow it, for records
/// of an older release) reads as still in progress.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_fingerprint: String,
    pub response_status: Option<i16>,
    pub response_body: Option<String>,
    /// The retention has passed; the key is free again once this row is removed.
    pub expired: bool,
}

/// A key as sent: scoped to its user.
pub type KeyOf<'a> = (i64, &'a str);

#[derive(sqlx::FromRow)]
struct FoundRow {
    user_id: i64,
    /// A binary-collated column: the server sends it as bytes.
    idem_key: Vec<u8>,
    #[sqlx(flatten)]
    stored: StoredResponse,
}

/// The committed records of `keys`. A plain (non-locking) read: under READ COMMITTED it sees
/// exactly what other requests have committed.
pub async fn find_many(
    conn: &mut MySqlConnection,
    keys: &[KeyOf<'_>],
) -> Result<HashMap<(i64, String), StoredResponse>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = QueryBuilder::new(
        "SELECT user_id, idem_key, request_fingerprint, response_status, response_body, \
         (expires_at <= CURRENT_TIMESTAMP(6)) AS expired \
         FROM idempotency_keys WHERE (user_id, idem_key) IN ",
    );
    push_pairs(&mut q, keys);
    let rows: Vec<FoundRow> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = String::from_utf8_lossy(&r.idem_key).into_owned();
            ((r.user_id, key), r.stored)
        })
        .collect())
}

fn push_pairs(q: &mut QueryBuilder<'_, MySql>, keys: &[KeyOf<'_>]) {
    q.push("(");
    for (i, (user_id, key)) in keys.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push("(")
            .push_bind(*user_id)
            .push(", ")
            .push_bind(key.to_string())
            .push(")");
    }
    q.push(")");
}

/// Removes expired records so that their keys can start new requests (in the transaction
/// that stores the new outcome).
pub async fn delete_expired(
    conn: &mut MySqlConnection,
    keys: &[KeyOf<'_>],
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::new("DELETE FROM idempotency_keys WHERE (user_id, idem_key) IN ");
    push_pairs(&mut q, keys);
    q.push(" AND expires_at <= CURRENT_TIMESTAMP(6)");
    q.build().execute(conn).await?;
    Ok(())
}

/// A first outcome to store under its key.
pub struct Outcome<'a> {
    pub user_id: i64,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub status: u16,
    pub body: &'a str,
    pub order_id: Option<i64>,
}

/// Why the records could not be stored: the caller's transaction is to be rolled back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another request committed one of these keys since they were looked up.
    #[error("an idempotency key was committed by another request")]
    Taken,
    /// Another request holds one of these keys and did not finish within the lock wait bound.
    #[error("an idempotency key is held by a request still in flight")]
    InFlight,
    #[error(transparent)]
    Db(sqlx::Error),
}

/// Stores first outcomes, in the transaction that produced them. The records are written in
/// key order, so two transactions storing overlapping keys wait for each other instead of
/// deadlocking; the UNIQUE key (user, key) is what makes a second order for a key impossible.
pub async fn store(
    conn: &mut MySqlConnection,
    outcomes: &mut [Outcome<'_>],
    retention: Duration,
) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    outcomes.sort_by(|a, b| (a.user_id, a.key).cmp(&(b.user_id, b.key)));
    let mut q = QueryBuilder::new(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, response_status, \
         response_body, order_id, expires_at) ",
    );
    let retention = retention.as_secs() as i64;
    q.push_values(outcomes.iter(), |mut row, o| {
        row.push_bind(o.user_id)
            .push_bind(o.key)
            .push_bind(o.fingerprint)
            .push_bind(o.status as i16)
            .push_bind(o.body)
            .push_bind(o.order_id)
            .push_unseparated(", CURRENT_TIMESTAMP(6) + INTERVAL ")
            .push_bind_unseparated(retention)
            .push_unseparated(" SECOND");
    });
    match q.build().execute(conn).await {
        Ok(_) => Ok(()),
        Err(e) if db::is_unique_violation(&e) => Err(StoreError::Taken),
        Err(e) if db::is_lock_wait_timeout(&e) => Err(StoreError::InFlight),
        Err(e) => Err(StoreError::Db(e)),
    }
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
