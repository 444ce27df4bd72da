//! SQL of the idempotency_keys table.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder};

use crate::db::{self, Part, Script};

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
    /// `account`: the user exists; `key`: a record of one of the keys.
    kind: String,
    user_id: i64,
    /// A binary column: the server sends it as bytes.
    idem_key: Option<Vec<u8>>,
    request_fingerprint: Option<String>,
    response_status: Option<i16>,
    response_body: Option<String>,
    expired: Option<bool>,
}

/// Which of `users` still have an account, and the committed records of `keys`: what every
/// request of a batch needs first, in one read (a plain one: under READ COMMITTED it sees
/// exactly what other requests have committed). The accounts ride along with the keys
/// because a request with a valid token is checked against its account here, once per batch,
/// instead of once per request.
pub async fn accounts_and_records(
    conn: &mut MySqlConnection,
    users: &[i64],
    keys: &[KeyOf<'_>],
) -> Result<(HashSet<i64>, HashMap<(i64, String), StoredResponse>), sqlx::Error> {
    let mut accounts = HashSet::new();
    let mut records = HashMap::new();
    if users.is_empty() {
        return Ok((accounts, records));
    }
    let mut q = QueryBuilder::new(
        "SELECT 'account' AS kind, id AS user_id, NULL AS idem_key, NULL AS request_fingerprint, \
         NULL AS response_status, NULL AS response_body, NULL AS expired \
         FROM users WHERE id IN (",
    );
    let mut list = q.separated(", ");
    for id in users {
        list.push_bind(*id);
    }
    q.push(")");
    if !keys.is_empty() {
        q.push(
            " UNION ALL SELECT 'key', user_id, idem_key, request_fingerprint, response_status, \
             response_body, (expires_at <= CURRENT_TIMESTAMP(6)) \
             FROM idempotency_keys WHERE (user_id, idem_key) IN ",
        );
        push_pairs(&mut q, keys);
    }
    let rows: Vec<FoundRow> = q.build_query_as().fetch_all(conn).await?;
    for r in rows {
        match (r.kind.as_str(), r.idem_key, r.request_fingerprint) {
            ("account", _, _) => {
                accounts.insert(r.user_id);
            }
            (_, Some(key), Some(request_fingerprint)) => {
                let key = String::from_utf8_lossy(&key).into_owned();
                records.insert(
                    (r.user_id, key),
                    StoredResponse {
                        request_fingerprint,
                        response_status: r.response_status,
                        response_body: r.response_body,
                        expired: r.expired.unwrap_or(false),
                    },
                );
            }
            _ => {}
        }
    }
    Ok((accounts, records))
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

/// Adds to `script` the removal of expired records, so that their keys can start new requests
/// (in the transaction that stores the new outcomes); nothing when there are none.
pub fn push_delete_expired(script: &mut Script, keys: &[KeyOf<'_>]) {
    if keys.is_empty() {
        return;
    }
    let mut parts = vec![Part::Sql(
        "DELETE FROM idempotency_keys WHERE expires_at <= CURRENT_TIMESTAMP(6) AND (user_id, idem_key) IN (",
    )];
    for (i, (user_id, key)) in keys.iter().enumerate() {
        parts.extend([
            Part::Sql(if i == 0 { "(" } else { ", (" }),
            Part::Int(*user_id),
            Part::Sql(", "),
            Part::Text(key),
            Part::Sql(")"),
        ]);
    }
    parts.push(Part::Sql(")"));
    script.statement(&parts);
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

impl StoreError {
    /// What the failure of the statement `push_store` added means.
    pub fn of(e: sqlx::Error) -> Self {
        if db::is_unique_violation(&e) {
            StoreError::Taken
        } else if db::is_lock_wait_timeout(&e) {
            StoreError::InFlight
        } else {
            StoreError::Db(e)
        }
    }
}

/// Adds to `script` one INSERT storing first outcomes, in the transaction that produced them.
/// The records are written in key order, so two transactions storing overlapping keys wait
/// for each other instead of deadlocking; the UNIQUE key (user, key) is what makes a second
/// order for a key impossible (its failure reads through `StoreError::of`).
pub fn push_store(script: &mut Script, outcomes: &mut [Outcome<'_>], retention: Duration) {
    if outcomes.is_empty() {
        return;
    }
    outcomes.sort_by(|a, b| (a.user_id, a.key).cmp(&(b.user_id, b.key)));
    let retention = retention.as_secs() as i64;
    let mut parts = vec![Part::Sql(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, response_status, \
         response_body, order_id, expires_at) VALUES ",
    )];
    for (i, o) in outcomes.iter().enumerate() {
        parts.extend([
            Part::Sql(if i == 0 { "(" } else { ", (" }),
            Part::Int(o.user_id),
            Part::Sql(", "),
            Part::Text(o.key),
            Part::Sql(", "),
            Part::Text(o.fingerprint),
            Part::Sql(", "),
            Part::Int(i64::from(o.status)),
            Part::Sql(", "),
            Part::Text(o.body),
            Part::Sql(", "),
            Part::OptInt(o.order_id),
            Part::Sql(", CURRENT_TIMESTAMP(6) + INTERVAL "),
            Part::Int(retention),
            Part::Sql(" SECOND)"),
        ]);
    }
    script.statement(&parts);
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
