//! The job queues on apalis' MySQL backend: storages, pushing, and one attempt of a job. The
//! payloads and queue names belong to the job kinds (`JobKind`).
//!
//! Facts about apalis-mysql 1.0.0-rc.8 that shape this module (docs/adr/0004-job-engine.md):
//! a push opens its own transaction (so it cannot join the order's — hence the outbox); it
//! returns no id (we choose the ULID first); a storage's poll schedule is single-use (build
//! one per worker start); and a failed job is fetched again at once, so the backoff between
//! attempts is ours: the handler moves `run_at` forward before it reports the failure.

use std::{sync::Arc, time::Duration};

use apalis::prelude::{
    BoxDynError, IntervalStrategy, StrategyBuilder, TaskBuilder, TaskId, TaskSink,
};
use apalis_codec::json::JsonCodec;
use apalis_mysql::{fetcher::MySqlFetcher, Config, MySqlStorage, TaskBuilderExt};
use futures_util::{stream::BoxStream, StreamExt};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};
use sqlx::MySqlPool;
use tokio::sync::Notify;
use ulid::Ulid;

use super::{attempts::is_last_attempt, trace::TraceContext};

pub type Storage<T> = MySqlStorage<T, JsonCodec<Vec<u8>>, MySqlFetcher>;

#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub poll_interval: Duration,
    /// Worker heartbeat period; a worker silent for `lease` has lost its jobs to the reaper.
    pub keep_alive: Duration,
    pub lease: Duration,
    /// Attempts before a job is dead (`Killed`) and, for publish-outbox, its rows DEAD.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest a worker waits between fetches while its queue stays empty
    /// (`backend::Pace`); at least one poll interval.
    pub idle_poll_max: Duration,
}

impl QueueSettings {
    /// `idle_poll_max` in poll intervals (at least one).
    pub fn idle_poll_intervals(&self) -> u32 {
        let interval = self.poll_interval.as_micros().max(1);
        (self.idle_poll_max.as_micros() / interval).clamp(1, u32::MAX as u128) as u32
    }

    /// Full-jitter exponential backoff after the `attempt`-th failure.
    pub fn backoff(&self, attempt: usize) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.backoff_max);
        if exp.is_zero() {
            return exp;
        }
        // Never less than half: a retry storm right after an outage helps nobody.
        rand::thread_rng().gen_range(exp / 2..=exp)
    }
}

/// Wakes a queue's worker in this process when this process pushes a job to it, so the job
/// does not wait out the poll interval that follows an empty fetch (a worker fetches again
/// at once while it finds jobs). Workers in other processes still find it by polling.
/// A wake that arrives while the worker is busy is kept (one permit), so none is lost.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn now(&self) {
        self.0.notify_one();
    }
}

impl Wake {
    /// A tick at each wake.
    pub fn ticks(&self) -> BoxStream<'static, ()> {
        futures_util::stream::unfold(self.0.clone(), |notify| async move {
            notify.notified().await;
            Some(((), notify))
        })
        .boxed()
    }
}

pub fn config(queue: &str, settings: &QueueSettings) -> Config {
    Config::new(queue)
        .set_buffer_size(16)
        .set_keep_alive(settings.keep_alive)
        .with_poll_interval(
            StrategyBuilder::new()
                .apply(IntervalStrategy::new(settings.poll_interval))
                .build(),
        )
}

/// A storage to push with.
pub fn storage<T>(pool: &MySqlPool, queue: &str, settings: &QueueSettings) -> Storage<T> {
    MySqlStorage::new_with_config(pool, &config(queue, settings))
}

/// A new job id, chosen before the push so that it can be recorded (e.g. on outbox rows).
pub fn new_job_id() -> String {
    Ulid::new().to_string()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// A job with this idempotency key is already in the queue.
    Duplicate,
}

fn is_duplicate(err: &BoxDynError) -> bool {
    let text = err.to_string();
    text.contains("1062") || text.contains("Duplicate entry")
}

/// A kind of job, as the engine knows it: its payload names its queue and, when it has one,
/// the key under which a second push of the same job is a duplicate. Each kind lives in its own
/// module (`publish_outbox`, `consume_notification`, `archive_run`, `retention`, `audit_run`)
/// with its payload, its queue and its push; the engine names none of them.
pub trait JobKind: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The queue (the `job_type` column).
    const QUEUE: &'static str;

    /// The key that makes a second push of this job a duplicate, when it has one.
    fn idempotency_key(&self) -> Option<String>;
}

/// Pushes `job` to its kind's queue with the queue's attempts, under its idempotency key;
/// a duplicate key means it is already queued.
pub async fn push<J: JobKind>(
    pool: &MySqlPool,
    settings: &QueueSettings,
    job: J,
) -> Result<Pushed, BoxDynError> {
    let key = job.idempotency_key();
    let mut builder = TaskBuilder::new(job).max_attempts(settings.max_attempts);
    if let Some(key) = key {
        builder = builder.with_idempotency_key(key);
    }
    push_once(storage(pool, J::QUEUE, settings), builder.build()).await
}

/// Pushes a task; a duplicate idempotency key means it is already queued, not a failure.
async fn push_once<T>(
    mut storage: Storage<T>,
    task: apalis::prelude::Task<T, apalis_mysql::MySqlContext, Ulid>,
) -> Result<Pushed, BoxDynError>
where
    T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
{
    match storage.push_task(task).await {
        Ok(()) => Ok(Pushed::Queued),
        Err(e) => {
            let e: BoxDynError = Box::new(e);
            if is_duplicate(&e) {
                Ok(Pushed::Duplicate)
            } else {
                Err(e)
            }
        }
    }
}

/// One attempt of a job, as its handler sees it.
pub struct JobAttempt {
    pub queue: &'static str,
    pub id: String,
    pub attempt: usize,
    pub max_attempts: i32,
}

impl JobAttempt {
    pub fn new(
        queue: &'static str,
        id: &TaskId<Ulid>,
        attempt: &apalis::prelude::Attempt,
        task: &apalis_mysql::MySqlContext,
    ) -> Self {
        JobAttempt {
            queue,
            id: id.to_string(),
            attempt: attempt.current(),
            max_attempts: task.max_attempts(),
        }
    }

    /// Runs `work` as this attempt inside the job's span (continuing `parent`), and records
    /// the outcome `outcome_of` reads from its result: for a handler that settles its own
    /// failures (publish-outbox ends on its retry window and defers its next run itself).
    pub async fn observe<T, E, Fut>(
        self,
        parent: &TraceContext,
        work: impl FnOnce(&tracing::Span) -> Fut,
        outcome_of: impl FnOnce(&Result<T, E>) -> crate::engine::trace::Outcome,
    ) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        use tracing::Instrument;
        let span = crate::engine::trace::job_span(self.queue, &self.id, self.attempt, parent);
        let started = std::time::Instant::now();
        let result = work(&span).instrument(span.clone()).await;
        crate::engine::trace::finish_job(&span, self.queue, started, outcome_of(&result));
        result
    }

    /// Runs `work` as this attempt: inside the job's span (continuing `parent`; `work` gets
    /// the span for spans of its own), its outcome recorded; a failure with attempts left
    /// pushes the next attempt out by the backoff first.
    pub async fn run<T, E, Fut>(
        self,
        pool: &MySqlPool,
        settings: &QueueSettings,
        parent: &TraceContext,
        work: impl FnOnce(&tracing::Span) -> Fut,
    ) -> Result<T, BoxDynError>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
        E: Into<BoxDynError> + std::fmt::Display,
    {
        use tracing::Instrument;
        let span = crate::engine::trace::job_span(self.queue, &self.id, self.attempt, parent);
        let started = std::time::Instant::now();
        let result = work(&span).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => crate::engine::trace::Outcome::Done,
            Err(_) if is_last_attempt(self.attempt, self.max_attempts) => {
                crate::engine::trace::Outcome::Dead
            }
            Err(e) => {
                // In scope, not `parent:`: the JSON log lists the entered spans only.
                span.in_scope(|| {
                    tracing::warn!(queue = self.queue, job_id = %self.id, attempt = self.attempt, error = %e, "job failed; will retry");
                });
                retry_later(pool, settings, &self.id, self.attempt).await?;
                crate::engine::trace::Outcome::Retry
            }
        };
        crate::engine::trace::finish_job(&span, self.queue, started, outcome);
        result.map_err(Into::into)
    }
}

/// After a failed attempt that was not the last: push the next one out by the backoff.
pub async fn retry_later(
    pool: &MySqlPool,
    settings: &QueueSettings,
    job_id: &str,
    attempt: usize,
) -> Result<(), sqlx::Error> {
    defer(pool, job_id, settings.backoff(attempt)).await
}

/// Delays the next attempt of a failing job. The row is `Running` (ours) while the handler
/// runs, and apalis' acknowledgement leaves `run_at` alone, so the next fetch honours it.
pub async fn defer(pool: &MySqlPool, job_id: &str, delay: Duration) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET run_at = CURRENT_TIMESTAMP + INTERVAL ? SECOND WHERE id = ?")
        .bind(delay.as_secs().max(1) as i64)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> QueueSettings {
        QueueSettings {
            poll_interval: Duration::from_millis(100),
            keep_alive: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            idle_poll_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_idle_wait_is_counted_in_poll_intervals_and_is_at_least_one() {
        assert_eq!(settings().idle_poll_intervals(), 10);
        let short = QueueSettings {
            idle_poll_max: Duration::from_millis(30),
            ..settings()
        };
        assert_eq!(short.idle_poll_intervals(), 1);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let s = settings();
        for attempt in 1..=10 {
            let cap = (Duration::from_secs(1) * (1 << (attempt - 1))).min(Duration::from_secs(30));
            let d = s.backoff(attempt);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
    }

    #[test]
    fn job_ids_are_ulids() {
        assert!(new_job_id().parse::<Ulid>().is_ok());
    }
}
