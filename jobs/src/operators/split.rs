//! Splitting a dead job: part of what it carries moves to a new job, a copy of it (queue,
//! state, attempts, last result), so that an operator's action on one order's events can
//! leave the other orders' events where they were. The job kinds say which part moves
//! (`crate::event_selection`); this is the job table's side.

use sqlx::MySqlConnection;

/// Inserts `to`, a copy of the job `from` carrying `payload` instead. The copy has no
/// idempotency key: the key names what the original was queued with, so that a redelivery
/// of it still finds the original.
pub(crate) async fn copy_as(
    conn: &mut MySqlConnection,
    from: &str,
    to: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, run_at, last_result, \
         lock_at, lock_by, done_at, priority, job, metadata, idempotency_key) \
         SELECT ?, job_type, status, attempts, max_attempts, run_at, last_result, NULL, NULL, \
         done_at, priority, ?, metadata, NULL FROM jobs WHERE id = ?",
    )
    .bind(to)
    .bind(payload)
    .bind(from)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a job carries, as stored (its codec's JSON).
pub(crate) async fn payload(conn: &mut MySqlConnection, id: &str) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar("SELECT job FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Replaces what a (dead, locked) job carries.
pub(crate) async fn set_payload(
    conn: &mut MySqlConnection,
    id: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET job = ? WHERE id = ?")
        .bind(payload)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
