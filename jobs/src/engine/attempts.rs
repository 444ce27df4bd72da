//! The history of failed attempts, for every queue alike (`job_attempts`).
//!
//! [`AttemptHistoryLayer`] wraps every worker's job service, so no handler records anything
//! itself: when an attempt ends in an error it writes one row — the job, its queue, the
//! attempt number, when it started and finished, whether the job will be retried or is dead,
//! the error (bounded), the worker, and the trace id of the attempt's span. A successful
//! attempt writes nothing. apalis reaches the layer with the attempt already counted and the
//! job's outcome decided by the same rule apalis-mysql acknowledges with (attempts exhausted
//! or an `AbortError`: dead), so the row and the job's status agree.
//!
//! The trace id is known only inside the handler, where the attempt's span is made
//! ([`crate::engine::trace::job_span`]); the span reports it through a task-local slot that the layer
//! puts around the attempt ([`note_trace_id`]).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use apalis::prelude::{AbortError, BoxDynError, Task, TaskId};
use apalis_core::{
    layers::{Layer, Service},
    worker::context::WorkerContext,
};
use apalis_mysql::MySqlContext;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;
use ulid::Ulid;

use super::lost_acks::LostAcks;

/// The longest error kept per attempt (`job_attempts.error`).
pub const MAX_ERROR_CHARS: usize = 2000;

/// How a failed attempt left its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FailedOutcome {
    /// Another attempt follows (after the backoff).
    Retry,
    /// Attempts exhausted, or refused for good: the job is dead.
    Dead,
}

impl FailedOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "dead" {
            Self::Dead
        } else {
            Self::Retry
        }
    }

    /// apalis-mysql's own rule for the status it acknowledges a failure with.
    pub fn of(error: &BoxDynError, attempt: usize, max_attempts: i32) -> Self {
        if is_last_attempt(attempt, max_attempts) || error.downcast_ref::<AbortError>().is_some() {
            Self::Dead
        } else {
            Self::Retry
        }
    }
}

/// One failed attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    pub job_id: String,
    pub queue: String,
    pub attempt: usize,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: FailedOutcome,
    pub error: String,
    pub worker: Option<String>,
    pub trace_id: Option<String>,
}

/// A row of the history, newest first when listed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: FailedOutcome,
    pub error: String,
    pub worker: Option<String>,
    pub trace_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i32,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    outcome: String,
    error: String,
    worker: Option<String>,
    trace_id: Option<String>,
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub async fn record(pool: &MySqlPool, a: &FailedAttempt) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_attempts \
         (job_id, queue, attempt, started_at, finished_at, outcome, error, worker, trace_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&a.job_id)
    .bind(&a.queue)
    .bind(a.attempt.max(1) as i64)
    .bind(a.started_at)
    .bind(a.finished_at.max(a.started_at))
    .bind(a.outcome.as_str())
    .bind(truncate(&a.error, MAX_ERROR_CHARS))
    .bind(a.worker.as_deref().map(|w| truncate(w, 36)))
    .bind(a.trace_id.as_deref().filter(|t| is_trace_id(t)))
    .execute(pool)
    .await?;
    Ok(())
}

/// The history of a job, newest first (at most `limit` attempts).
pub async fn of_job(
    pool: &MySqlPool,
    job_id: &str,
    limit: u32,
) -> Result<Vec<AttemptRecord>, sqlx::Error> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT attempt, started_at, finished_at, outcome, error, worker, trace_id \
         FROM job_attempts WHERE job_id = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(job_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| AttemptRecord {
            attempt: r.attempt,
            started_at: r.started_at,
            finished_at: r.finished_at,
            outcome: FailedOutcome::parse(&r.outcome),
            error: r.error,
            worker: r.worker,
            trace_id: r.trace_id,
        })
        .collect())
}

/// 32 lowercase hex digits, not all zero (W3C trace-context's trace-id).
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

type TraceSlot = Arc<Mutex<Option<String>>>;

tokio::task_local! {
    static ATTEMPT_TRACE: TraceSlot;
}

/// Called where an attempt's span is made: the first trace id of the attempt is the one its
/// history row gets (a consume-notification job makes one span per event, each in its own
/// trace). Outside an attempt (no layer around it) this does nothing.
pub fn note_trace_id(trace_id: Option<&str>) {
    let Some(trace_id) = trace_id else { return };
    let _ = ATTEMPT_TRACE.try_with(|slot| {
        if let Ok(mut slot) = slot.lock() {
            slot.get_or_insert_with(|| trace_id.to_owned());
        }
    });
}

/// Records the failed attempts of the worker it wraps (`WorkerBuilder::layer`), and notes
/// every attempt's start and end for [`LostAcks`] when given one.
#[derive(Debug, Clone)]
pub struct AttemptHistoryLayer {
    pool: MySqlPool,
    queue: &'static str,
    acks: Option<LostAcks>,
}

impl AttemptHistoryLayer {
    pub fn new(pool: &MySqlPool, queue: &'static str) -> Self {
        Self {
            pool: pool.clone(),
            queue,
            acks: None,
        }
    }

    /// Also notes each attempt in `acks`, so that a lost acknowledgement is noticed.
    pub fn noting(mut self, acks: &LostAcks) -> Self {
        self.acks = Some(acks.clone());
        self
    }
}

impl<S> Layer<S> for AttemptHistoryLayer {
    type Service = AttemptHistory<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptHistory {
            inner,
            pool: self.pool.clone(),
            queue: self.queue,
            acks: self.acks.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttemptHistory<S> {
    inner: S,
    pool: MySqlPool,
    queue: &'static str,
    acks: Option<LostAcks>,
}

impl<S, Args> Service<Task<Args, MySqlContext, Ulid>> for AttemptHistory<S>
where
    S: Service<Task<Args, MySqlContext, Ulid>>,
    S::Response: Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args, MySqlContext, Ulid>) -> Self::Future {
        let parts = &task.parts;
        let job_id = parts.task_id.as_ref().map(TaskId::to_string);
        let queue = self.queue;
        let max_attempts = parts.ctx.max_attempts();
        // Shared with the task: read after the run, once apalis has counted this attempt.
        let attempt = parts.attempt.clone();
        let worker = parts
            .data
            .get::<WorkerContext>()
            .map(|w| w.name().to_owned());
        let started_at = Utc::now();
        let slot = TraceSlot::default();
        let run = ATTEMPT_TRACE.scope(slot.clone(), self.inner.call(task));
        let pool = self.pool.clone();
        let acks = self.acks.clone();
        if let (Some(acks), Some(id)) = (&acks, &job_id) {
            acks.started(id);
        }
        Box::pin(async move {
            let result = run.await.map_err(Into::into);
            if let (Some(acks), Some(id)) = (&acks, &job_id) {
                acks.ended(id, worker.as_deref());
            }
            let (Err(error), Some(job_id)) = (&result, job_id) else {
                return result;
            };
            let attempt = attempt.current();
            let failed = FailedAttempt {
                job_id,
                queue: queue.to_owned(),
                attempt,
                started_at,
                finished_at: Utc::now(),
                outcome: FailedOutcome::of(error, attempt, max_attempts),
                error: error.to_string(),
                worker,
                trace_id: slot.lock().ok().and_then(|mut s| s.take()),
            };
            // The history is the operators' view; the attempt's outcome stands without it.
            if let Err(e) = record(&pool, &failed).await {
                tracing::warn!(job_id = %failed.job_id, attempt, error = %e, "could not record a failed attempt");
            }
            result
        })
    }
}

/// Whether the attempt that just failed was the job's last (apalis then marks it Killed).
pub fn is_last_attempt(attempt: usize, max_attempts: i32) -> bool {
    attempt >= max_attempts.max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempt_is_the_one_that_reaches_max_attempts() {
        assert!(!is_last_attempt(1, 3));
        assert!(is_last_attempt(3, 3));
        assert!(
            is_last_attempt(1, 0),
            "a job without attempts left is done at once"
        );
    }

    #[test]
    fn the_outcome_follows_apalis_rule() {
        let plain: BoxDynError = "kafka down".into();
        assert_eq!(FailedOutcome::of(&plain, 1, 3), FailedOutcome::Retry);
        assert_eq!(FailedOutcome::of(&plain, 3, 3), FailedOutcome::Dead);
        let abort: BoxDynError = AbortError::new(std::io::Error::other("poison")).into();
        assert_eq!(FailedOutcome::of(&abort, 1, 5), FailedOutcome::Dead);
    }

    #[test]
    fn trace_ids_are_32_hex_digits_not_all_zero() {
        assert!(is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!is_trace_id("00000000000000000000000000000000"));
        assert!(!is_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736"));
        assert!(!is_trace_id("4bf92f35"));
    }

    #[tokio::test]
    async fn the_first_trace_id_noted_inside_an_attempt_is_kept() {
        note_trace_id(Some("ignored outside an attempt"));
        let slot = TraceSlot::default();
        ATTEMPT_TRACE
            .scope(slot.clone(), async {
                note_trace_id(None);
                note_trace_id(Some("4bf92f3577b34da6a3ce929d0e0e4736"));
                note_trace_id(Some("00f067aa0ba902b700f067aa0ba902b7"));
            })
            .await;
        assert_eq!(
            slot.lock().unwrap().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
