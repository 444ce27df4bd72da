//! The job queues on apalis' MySQL backend: payloads, storages and pushing.
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
use apalis_core::backend::poll_strategy::{PollContext, PollStrategy};
use apalis_mysql::{fetcher::MySqlFetcher, Config, MySqlStorage, TaskBuilderExt};
use futures_util::{stream::BoxStream, StreamExt};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use tokio::sync::Notify;
use ulid::Ulid;

use super::pause::QueueGate;
use crate::{backend::WorkerStorage, trace::TraceContext};

pub const PUBLISH_OUTBOX: &str = "publish-outbox";
pub const CONSUME_NOTIFICATION: &str = "consume-notification";
/// The archive workflow: its plan, chunk and summary jobs.
pub const ARCHIVE_RUN: &str = "archive-run";
pub const RETENTION: &str = "retention";
/// The scheduled invariant audit (`AUDIT_CRON`).
pub const AUDIT: &str = "audit";
pub const QUEUES: [&str; 5] = [
    PUBLISH_OUTBOX,
    CONSUME_NOTIFICATION,
    ARCHIVE_RUN,
    RETENTION,
    AUDIT,
];

pub type Storage<T> = MySqlStorage<T, JsonCodec<Vec<u8>>, MySqlFetcher>;

/// Publish outbox rows: those listed (the sweeper's batches), or, with an empty list, the NEW
/// rows that name this job (what the order path commits: `publish_batch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOutbox {
    #[serde(default)]
    pub outbox_ids: Vec<i64>,
    /// The trace of the order that queued it (empty for the sweeper's batches).
    #[serde(default)]
    pub trace: TraceContext,
}

/// One Kafka message for the notification pipeline, as received (validated by the handler,
/// so that a poison message becomes a dead job instead of blocking its partition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedEvent {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub payload: Option<String>,
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
}

impl ReceivedEvent {
    pub fn trace(&self) -> TraceContext {
        TraceContext {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }

    /// The event id, when it is one (a UUID): what deduplicates a redelivered event.
    pub fn valid_event_id(&self) -> Option<&str> {
        self.event_id
            .as_deref()
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
    }
}

/// A consume-notification job: the well-formed events the consumer received together, or
/// one poison message (each is a dead job of its own, for an operator to look at). Carrying
/// the batch makes one job — one push, fetch, transaction and acknowledgement — serve many
/// events: one job per event cost five commits per event and fell behind the orders
/// (docs/adr/0010-notification-batches.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ConsumeNotificationWire")]
pub struct ConsumeNotification {
    pub events: Vec<ReceivedEvent>,
}

/// Jobs queued before batches carried one message as the whole payload.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConsumeNotificationWire {
    Batch { events: Vec<ReceivedEvent> },
    One(ReceivedEvent),
}

impl From<ConsumeNotificationWire> for ConsumeNotification {
    fn from(wire: ConsumeNotificationWire) -> Self {
        match wire {
            ConsumeNotificationWire::Batch { events } => Self { events },
            ConsumeNotificationWire::One(event) => Self {
                events: vec![event],
            },
        }
    }
}

impl ConsumeNotification {
    /// The job's idempotency key, so that a redelivered batch does not even make a second
    /// job: the event id of a single event, a name-based UUID of a batch's sorted event ids.
    /// None when an event has no valid id (poison: nothing to deduplicate it by).
    pub fn idempotency_key(&self) -> Option<String> {
        let ids: Option<Vec<&str>> = self.events.iter().map(|e| e.valid_event_id()).collect();
        match ids?.as_mut_slice() {
            [] => None,
            [one] => Some((*one).to_owned()),
            many => {
                many.sort_unstable();
                let name = many.join(",");
                Some(uuid::Uuid::new_v5(&BATCH_KEY_NAMESPACE, name.as_bytes()).to_string())
            }
        }
    }
}

/// The namespace of batch idempotency keys (any fixed UUID; event ids are v7, never v5).
const BATCH_KEY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_7700_6e6f_7469_6679);

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
}

impl QueueSettings {
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

impl PollStrategy for Wake {
    type Stream = BoxStream<'static, ()>;

    fn poll_strategy(self: Box<Self>, _: &PollContext) -> Self::Stream {
        futures_util::stream::unfold(self.0, |notify| async move {
            notify.notified().await;
            Some(((), notify))
        })
        .boxed()
    }
}

pub fn config(queue: &str, settings: &QueueSettings, wake: Option<&Wake>) -> Config {
    let mut poll = StrategyBuilder::new().apply(IntervalStrategy::new(settings.poll_interval));
    if let Some(wake) = wake {
        poll = poll.apply(wake.clone());
    }
    Config::new(queue)
        .set_buffer_size(16)
        .set_keep_alive(settings.keep_alive)
        .with_poll_interval(poll.build())
}

/// A storage to push with.
pub fn storage<T>(pool: &MySqlPool, queue: &str, settings: &QueueSettings) -> Storage<T> {
    MySqlStorage::new_with_config(pool, &config(queue, settings, None))
}

/// A worker's storage: it polls every `poll_interval` after an empty fetch, or when woken,
/// never while `gate` is closed (the queue is paused), and its heartbeat only keeps the
/// worker alive (`backend`).
pub fn worker_storage<T>(
    pool: &MySqlPool,
    queue: &str,
    settings: &QueueSettings,
    wake: Option<&Wake>,
    gate: QueueGate,
) -> WorkerStorage<T> {
    WorkerStorage(
        MySqlStorage::new_with_config(pool, &config(queue, settings, wake)),
        gate,
    )
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

pub async fn push_publish(
    pool: &MySqlPool,
    settings: &QueueSettings,
    job_id: &str,
    outbox_ids: Vec<i64>,
    trace: TraceContext,
) -> Result<(), BoxDynError> {
    let id: Ulid = job_id.parse()?;
    // Its retries end with the retry window, not a count (`retry_policy`).
    let task = TaskBuilder::new(PublishOutbox { outbox_ids, trace })
        .with_task_id(TaskId::new(id))
        .max_attempts(crate::retry_policy::PUBLISH_MAX_ATTEMPTS)
        .build();
    storage::<PublishOutbox>(pool, PUBLISH_OUTBOX, settings)
        .push_task(task)
        .await
        .map_err(|e| Box::new(e) as BoxDynError)
}

/// Pushes received events as one job, under its idempotency key.
pub async fn push_notification(
    pool: &MySqlPool,
    settings: &QueueSettings,
    job: ConsumeNotification,
) -> Result<Pushed, BoxDynError> {
    let key = job.idempotency_key();
    let mut builder = TaskBuilder::new(job).max_attempts(settings.max_attempts);
    if let Some(key) = key {
        builder = builder.with_idempotency_key(key);
    }
    push_once(
        storage(pool, CONSUME_NOTIFICATION, settings),
        builder.build(),
    )
    .await
}

/// Pushes a task; a duplicate idempotency key means it is already queued, not a failure.
async fn push_once<T>(
    mut storage: Storage<T>,
    task: apalis::prelude::Task<T, apalis_mysql::MySqlContext, Ulid>,
) -> Result<Pushed, BoxDynError>
where
    T: Serialize + serde::de::DeserializeOwned + Send + Sync + Unpin + 'static,
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

/// Starts an archive run (the first job of its workflow: the plan); the run key is the job's
/// idempotency key, so the schedule's ticks on several replicas queue it once.
pub async fn push_archive(
    pool: &MySqlPool,
    settings: &QueueSettings,
    run: crate::archive::ArchiveRun,
) -> Result<Pushed, BoxDynError> {
    let key = run.run_key.clone();
    let task = TaskBuilder::new(run)
        .max_attempts(settings.max_attempts)
        .with_idempotency_key(key)
        .build();
    push_once(storage(pool, ARCHIVE_RUN, settings), task).await
}

/// Queues the retention purge of one schedule tick (once, however many replicas tick).
pub async fn push_retention(
    pool: &MySqlPool,
    settings: &QueueSettings,
    purge: crate::retention::Purge,
) -> Result<Pushed, BoxDynError> {
    let key = purge.key();
    let task = TaskBuilder::new(purge)
        .max_attempts(settings.max_attempts)
        .with_idempotency_key(key)
        .build();
    push_once(storage(pool, RETENTION, settings), task).await
}

/// Queues the audit of one schedule tick (once, however many replicas tick).
pub async fn push_audit(
    pool: &MySqlPool,
    settings: &QueueSettings,
    tick: crate::audit_run::AuditTick,
) -> Result<Pushed, BoxDynError> {
    let key = tick.key();
    let task = TaskBuilder::new(tick)
        .max_attempts(settings.max_attempts)
        .with_idempotency_key(key)
        .build();
    push_once(storage(pool, AUDIT, settings), task).await
}

/// Whether the attempt that just failed was the job's last (apalis then marks it Killed).
pub fn is_last_attempt(attempt: usize, max_attempts: i32) -> bool {
    attempt >= max_attempts.max(1) as usize
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
        outcome_of: impl FnOnce(&Result<T, E>) -> crate::trace::Outcome,
    ) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        use tracing::Instrument;
        let span = crate::trace::job_span(self.queue, &self.id, self.attempt, parent);
        let started = std::time::Instant::now();
        let result = work(&span).instrument(span.clone()).await;
        crate::trace::finish_job(&span, self.queue, started, outcome_of(&result));
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
        let span = crate::trace::job_span(self.queue, &self.id, self.attempt, parent);
        let started = std::time::Instant::now();
        let result = work(&span).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => crate::trace::Outcome::Done,
            Err(_) if is_last_attempt(self.attempt, self.max_attempts) => {
                crate::trace::Outcome::Dead
            }
            Err(e) => {
                // In scope, not `parent:`: the JSON log lists the entered spans only.
                span.in_scope(|| {
                    tracing::warn!(queue = self.queue, job_id = %self.id, attempt = self.attempt, error = %e, "job failed; will retry");
                });
                retry_later(pool, settings, &self.id, self.attempt).await?;
                crate::trace::Outcome::Retry
            }
        };
        crate::trace::finish_job(&span, self.queue, started, outcome);
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
        }
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
    fn the_last_attempt_is_the_one_that_reaches_max_attempts() {
        assert!(!is_last_attempt(1, 3));
        assert!(is_last_attempt(3, 3));
        assert!(
            is_last_attempt(1, 0),
            "a job without attempts left is done at once"
        );
    }

    fn event(event_id: Option<&str>) -> ReceivedEvent {
        ReceivedEvent {
            topic: "ORDER_CREATED".into(),
            partition: 0,
            offset: 3,
            event_id: event_id.map(str::to_owned),
            event_type: Some("ORDER_CREATED".into()),
            payload: Some("{}".into()),
            traceparent: None,
            tracestate: None,
        }
    }

    const A: &str = "0192f3a4-5b6c-7d8e-9f00-11223344556a";
    const B: &str = "0192f3a4-5b6c-7d8e-9f00-11223344556b";

    #[test]
    fn a_job_queued_with_one_message_as_its_payload_still_reads() {
        let one = serde_json::to_string(&event(Some(A))).unwrap();
        let job: ConsumeNotification = serde_json::from_str(&one).unwrap();
        assert_eq!(job.events, [event(Some(A))]);
        let batch = serde_json::to_string(&ConsumeNotification {
            events: vec![event(Some(A)), event(Some(B))],
        })
        .unwrap();
        let job: ConsumeNotification = serde_json::from_str(&batch).unwrap();
        assert_eq!(job.events.len(), 2);
    }

    #[test]
    fn a_batch_key_is_the_same_for_the_same_events_in_any_order() {
        let job = |ids: &[&str]| ConsumeNotification {
            events: ids.iter().map(|id| event(Some(id))).collect(),
        };
        assert_eq!(job(&[A]).idempotency_key().as_deref(), Some(A));
        let ab = job(&[A, B]).idempotency_key().unwrap();
        assert_eq!(job(&[B, A]).idempotency_key().unwrap(), ab);
        assert_ne!(ab, A);
        assert_ne!(ab, B);
        assert!(ab.len() <= 36, "fits jobs.idempotency_key");
        let poison = ConsumeNotification {
            events: vec![event(None)],
        };
        assert_eq!(poison.idempotency_key(), None);
    }

    #[test]
    fn job_ids_are_ulids() {
        assert!(new_job_id().parse::<Ulid>().is_ok());
    }
}
