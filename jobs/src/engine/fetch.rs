//! Taking the next jobs of a queue for a worker: the statements of apalis-mysql rc.8's
//! `fetch_next` (lock the next runnable jobs with `FOR UPDATE SKIP LOCKED`, mark them
//! `Queued` under the worker, commit), owned here for what a failed fetch leaves behind.
//!
//! A fetch that fails before its COMMIT is sent took nothing: the server rolls the
//! transaction back when the connection or the statement fails. A COMMIT whose answer is lost
//! (the connection dropped after the server committed) is different: its jobs are `Queued`
//! under a worker that is alive and heartbeating, so the lease never reclaims them, yet the
//! worker never received them, so they never run, and the outbox sweeper leaves a live job's
//! rows alone. apalis' fetch returns only the error; this one also names the jobs that are
//! in doubt, and [`release_in_doubt`] gives back those still `Queued` under the worker.
//! `backend::fetch_loop` does that before the worker fetches again, which is what makes it
//! exact: until then no other fetch of this worker can have queued one of those ids.

use apalis_mysql::{CompactType, MySqlTask};
use apalis_sql::{DateTime, TaskRow};
use sqlx::{MySqlPool, QueryBuilder};

/// The same selection as apalis-mysql's `queries/backend/fetch_next.sql`, columns named
/// (`lock_by` is left out: a fetched job's is the fetching worker).
const NEXT: &str = "SELECT id, job_type, status, attempts, max_attempts, run_at, last_result, \
     lock_at, done_at, priority, job, metadata, idempotency_key FROM jobs \
     WHERE job_type = ? AND ((status = 'Pending' AND lock_by IS NULL) \
     OR (status = 'Failed' AND attempts < max_attempts)) \
     AND (run_at IS NULL OR run_at <= ?) \
     ORDER BY priority DESC, run_at ASC, id ASC LIMIT ? FOR UPDATE SKIP LOCKED";

/// Whether `queue` has a runnable job, as a plain read (no transaction, no lock): an empty
/// queue's poll costs this one statement. Every replica polls every queue each poll interval
/// while it is empty, so a locking transaction there (BEGIN, the SELECT … FOR UPDATE, COMMIT)
/// was three statements per replica per queue ten times a second, orders or not
/// (bench/: replicas). A job committed just after this read is found at the next poll, as it
/// was when the locking read missed it.
const ANY_DUE: &str = "SELECT 1 FROM jobs \
     WHERE job_type = ? AND ((status = 'Pending' AND lock_by IS NULL) \
     OR (status = 'Failed' AND attempts < max_attempts)) \
     AND (run_at IS NULL OR run_at <= ?) LIMIT 1";

/// Jobs a failed fetch may have taken: `Queued` under `worker`, if its COMMIT took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    pub worker: String,
    pub ids: Vec<String>,
}

/// Why a fetch failed, and what it may have taken all the same.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FetchFailed {
    #[source]
    pub error: sqlx::Error,
    pub in_doubt: Option<InDoubt>,
}

impl From<sqlx::Error> for FetchFailed {
    fn from(error: sqlx::Error) -> Self {
        FetchFailed {
            error,
            in_doubt: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    job_type: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    run_at: Option<DateTime>,
    last_result: Option<Vec<u8>>,
    lock_at: Option<DateTime>,
    done_at: Option<DateTime>,
    priority: i32,
    job: Vec<u8>,
    /// JSON, which MariaDB sends as a binary string.
    metadata: Option<Vec<u8>>,
    idempotency_key: Option<String>,
}

impl JobRow {
    /// The task apalis hands the worker, as apalis-mysql builds it from the same row.
    fn into_task(self, worker: &str) -> Result<MySqlTask<CompactType>, sqlx::Error> {
        let parse = |text: Option<Vec<u8>>| {
            text.map(|t| serde_json::from_slice(&t).unwrap_or(serde_json::Value::Null))
        };
        TaskRow {
            job: self.job,
            id: self.id,
            job_type: self.job_type,
            status: self.status,
            attempts: self.attempts.max(0) as usize,
            max_attempts: Some(self.max_attempts.max(0) as usize),
            run_at: self.run_at,
            last_result: parse(self.last_result),
            lock_at: self.lock_at,
            lock_by: Some(worker.to_owned()),
            done_at: self.done_at,
            priority: Some(self.priority.max(0) as usize),
            // apalis reads the metadata as an object; anything else is no metadata.
            metadata: parse(self.metadata).filter(serde_json::Value::is_object),
            idempotency_key: self.idempotency_key,
        }
        .try_into_task_compact()
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))
    }
}

/// Takes up to `buffer` runnable jobs of `queue` for `worker`.
pub async fn fetch(
    pool: &MySqlPool,
    queue: &str,
    buffer: usize,
    worker: &str,
) -> Result<Vec<MySqlTask<CompactType>>, FetchFailed> {
    let lock_at = chrono::Utc::now();
    let due: Option<i32> = sqlx::query_scalar(ANY_DUE)
        .bind(queue)
        .bind(lock_at)
        .fetch_optional(pool)
        .await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let rows: Vec<JobRow> = sqlx::query_as(NEXT)
        .bind(queue)
        .bind(lock_at)
        .bind(buffer as i64)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    // A row that cannot become a task fails the fetch before anything is marked.
    let tasks = rows
        .into_iter()
        .map(|row| row.into_task(worker))
        .collect::<Result<Vec<_>, _>>()?;
    let mut mark = QueryBuilder::new("UPDATE jobs SET status = 'Queued', lock_by = ");
    mark.push_bind(worker)
        .push(", lock_at = ")
        .push_bind(lock_at)
        .push(" WHERE id IN (");
    let mut list = mark.separated(", ");
    for id in &ids {
        list.push_bind(id);
    }
    mark.push(")");
    // From here on a failure may come after the server committed.
    let in_doubt = |error: sqlx::Error| FetchFailed {
        error,
        in_doubt: Some(InDoubt {
            worker: worker.to_owned(),
            ids: ids.clone(),
        }),
    };
    mark.build().execute(&mut *tx).await.map_err(in_doubt)?;
    tx.commit().await.map_err(in_doubt)?;
    Ok(tasks)
}

/// Gives back the jobs of a failed fetch that are `Queued` under its worker (its COMMIT took
/// effect): `Pending` again, no attempt counted, for any worker to fetch. Returns how many.
pub async fn release_in_doubt(pool: &MySqlPool, doubt: &InDoubt) -> Result<u64, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "UPDATE jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
         WHERE status = 'Queued' AND lock_by = ",
    );
    q.push_bind(&doubt.worker).push(" AND id IN (");
    let mut list = q.separated(", ");
    for id in &doubt.ids {
        list.push_bind(id);
    }
    q.push(")");
    Ok(q.build().execute(pool).await?.rows_affected())
}
