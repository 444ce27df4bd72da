//! publish-outbox: NEW outbox rows → Kafka (topic = prefix + event type, key = order id,
//! headers = event id, event type, traceparent) → PUBLISHED.
//!
//! Claim, send, settle: the rows are locked (`FOR UPDATE SKIP LOCKED`) only long enough to
//! claim them (`claimed_until`, a lease longer than a send can last), so two workers (or
//! replicas) never send one row at once, and no database lock is held across the send — a
//! lock held for the delivery timeout made every other writer of those rows (the batcher, a
//! job waiting for its row) fail on the 5 s lock wait. A row is marked PUBLISHED only after
//! Kafka acknowledged it (acks=all). A crash between the acknowledgement and that UPDATE can
//! publish a row twice (after the claim expires); consumers deduplicate on the event id.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::prelude::{AbortError, Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use serde::Serialize;
use sqlx::MySqlPool;
use tracing::{Instrument, Span};
use ulid::Ulid;

use crate::{
    engine::{
        queue::{self, JobAttempt, QueueSettings},
        trace::{Outcome, TraceContext},
    },
    kafka::headers,
    publish_outbox::{
        job::{PublishOutbox, PUBLISH_OUTBOX},
        outbox::{self, Held, OutboxRow},
        producer::EventProducer,
        retry_policy::{self, RetryPolicy},
    },
};

pub struct PublishContext {
    pub pool: MySqlPool,
    pub producer: EventProducer,
    pub topic_prefix: String,
    pub settings: QueueSettings,
    /// NEW rows of other jobs a job may publish along with its own (`PUBLISH_BATCH_SIZE`).
    pub backlog_batch: u32,
    /// How old another job's row must be before a job carries it (`PUBLISH_BACKLOG_AGE_MS`).
    /// A younger row's own job is on its way (lingering, queued, or sending it): carrying it
    /// races that job, which then finds its rows claimed, waits for the carrier's send and
    /// claims again — the extra statements and lock waits grew with every replica (docs/
    /// capacity.md). Zero: any row.
    pub backlog_age: Duration,
    /// How long transient failures are retried (`retry_policy`).
    pub retry: RetryPolicy,
    /// How long a job's claim on the rows it sends lasts: longer than a send can take (the
    /// delivery timeout plus the producer's queue wait), so that it only expires when its
    /// job died mid-send.
    pub claim_lease: Duration,
}

/// The longest a send waits for room in the producer's queue.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PublishReport {
    pub published: usize,
    /// Of the job's own rows: already published, dead, or being published by another worker.
    pub skipped: usize,
    /// Rows of other jobs published along (the backlog batch).
    pub carried: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka delivery failed for {} of {total} events: {cause}", failed.len())]
    Kafka {
        /// The job's own rows Kafka did not take.
        failed: Vec<FailedRow>,
        total: usize,
        cause: String,
    },
    #[error("the job's outbox rows are DEAD; retry the job to publish them")]
    RowsDead,
    #[error("{0} of the job's outbox rows are held by another job that has not published them; trying again")]
    HeldElsewhere(usize),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One of a job's rows that Kafka did not take, and whether retrying could change that.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub id: i64,
    pub permanent: bool,
}

/// Whether `row` is `job`'s own (no job: every listed row is).
fn names(row: &OutboxRow, job: Option<&str>) -> bool {
    job.is_none_or(|job| row.job_id.as_deref() == Some(job))
}

/// The producer span of one event. It continues the row's own trace (a sweeper batch carries
/// rows of many orders), nested under the job's span when the job belongs to that trace.
pub(crate) fn produce_span(row: &OutboxRow, topic: &str, job_trace: &TraceContext) -> Span {
    let span = tracing::info_span!(
        "kafka.produce",
        otel.name = format!("publish {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        "messaging.system" = "kafka",
        "messaging.operation.type" = "send",
        "messaging.operation.name" = "publish",
        "messaging.destination.name" = topic,
        "messaging.kafka.message.key" = row.aggregate_id,
        "messaging.message.id" = %row.event_id,
    );
    let row_trace = row.trace();
    if row_trace.traceparent.is_some() && row_trace.traceparent != job_trace.traceparent {
        row_trace.adopt(&span);
    }
    span
}

/// Headers of the Kafka record; the trace context is the producer span's, so the consumer
/// continues from it (or the row's, when nothing is recorded in this process).
pub(crate) fn record_headers(row: &OutboxRow, span: &Span) -> OwnedHeaders {
    let trace = TraceContext::of_span(span).unwrap_or_else(|| row.trace());
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_ID,
            value: Some(row.event_id.as_bytes()),
        })
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some(row.event_type.as_bytes()),
        });
    if let Some(tp) = &trace.traceparent {
        h = h.insert(Header {
            key: headers::TRACEPARENT,
            value: Some(tp.as_bytes()),
        });
    }
    if let Some(ts) = &trace.tracestate {
        h = h.insert(Header {
            key: headers::TRACESTATE,
            value: Some(ts.as_bytes()),
        });
    }
    h
}

/// Publishes the rows of `ids` that are still NEW; commits the ones Kafka acknowledged.
/// With `job`, only the rows that name that job are its own (their failures fail it); a
/// listed row that names another job is carried, like the backlog, and left to that job.
pub async fn publish_rows(
    ctx: &PublishContext,
    ids: &[i64],
    job_trace: &TraceContext,
    job: Option<&str>,
) -> Result<PublishReport, PublishError> {
    let first = publish_claimed(ctx, ids, job_trace, Held::Skip, job).await?;
    if first.skipped == 0 {
        return Ok(first);
    }
    // Some of our rows were held by another job. Usually it was sending them, but a locking
    // scan can also hold a row it does not return (the backlog claim's LIMIT), and a carried
    // row it failed to deliver stays NEW: wait for that job's send to end (its claim released,
    // or expired), holding nothing, then for any claiming transaction (milliseconds), and
    // publish what it left, instead of leaving the row to the sweeper's grace period (seen in
    // bench/: pipeline, a row 48 s late).
    let until = Instant::now() + ctx.claim_lease;
    while outbox::claimed(&ctx.pool, ids).await? > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = publish_claimed(ctx, ids, job_trace, Held::Wait, job).await?;
    Ok(PublishReport {
        published: first.published + second.published,
        skipped: second.skipped,
        carried: first.carried,
    })
}

async fn publish_claimed(
    ctx: &PublishContext,
    ids: &[i64],
    job_trace: &TraceContext,
    held: Held,
    job: Option<&str>,
) -> Result<PublishReport, PublishError> {
    // Taken before the claim: while a fatal producer is being replaced (the swap waits for
    // the old one's sends), this waits here, not with rows claimed whose lease runs.
    let producer = ctx.producer.lease().await;
    let mut tx = ctx.pool.begin().await?;
    let mut rows = outbox::claim(&mut tx, ids, held).await?;
    let own = rows.len();
    if held == Held::Skip {
        rows.extend(outbox::claim_backlog(&mut tx, ids, ctx.backlog_batch, ctx.backlog_age).await?);
    }
    let claimed: Vec<i64> = rows.iter().map(|r| r.id).collect();
    outbox::hold(&mut tx, &claimed, ctx.claim_lease).await?;
    tx.commit().await?;
    let keys: Vec<String> = rows.iter().map(|r| r.aggregate_id.to_string()).collect();
    let topics: Vec<String> = rows
        .iter()
        .map(|r| format!("{}{}", ctx.topic_prefix, r.event_type))
        .collect();
    let spans: Vec<Span> = rows
        .iter()
        .zip(&topics)
        .map(|(row, topic)| produce_span(row, topic, job_trace))
        .collect();
    let sends = rows.iter().enumerate().map(|(i, row)| {
        let record = FutureRecord::to(&topics[i])
            .key(&keys[i])
            .payload(&row.payload)
            .headers(record_headers(row, &spans[i]));
        producer
            .send(record, QUEUE_WAIT)
            .instrument(spans[i].clone())
    });
    let results = futures_util::future::join_all(sends).await;
    // Every delivery is reported: a replacement of the producer may go ahead.
    drop(producer);

    let mut delivered = Vec::new();
    // Only the job's own rows decide its outcome; carried rows that fail stay NEW for theirs.
    let mut failures: Vec<(FailedRow, String)> = Vec::new();
    for (i, ((row, result), span)) in rows.iter().zip(results).zip(&spans).enumerate() {
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        match result {
            Ok(_) => {
                let lag = (chrono::Utc::now() - row.created_at)
                    .num_microseconds()
                    .unwrap_or(0);
                metrics::histogram!("outbox_publish_lag_seconds").record(lag as f64 / 1e6);
                delivered.push(row.id);
            }
            Err((e, _)) if i < own && names(row, job) => failures.push((
                FailedRow {
                    id: row.id,
                    permanent: retry_policy::is_permanent(&e),
                },
                e.to_string(),
            )),
            Err((e, _)) => {
                tracing::debug!(outbox_id = row.id, error = %e, "a carried row was not published; its own job will retry it")
            }
        }
    }
    outbox::mark_published(&ctx.pool, &delivered).await?;
    let undelivered: Vec<i64> = claimed
        .iter()
        .copied()
        .filter(|id| !delivered.contains(id))
        .collect();
    outbox::release(&ctx.pool, &undelivered).await?;
    metrics::counter!("outbox_published_total").increment(delivered.len() as u64);
    if let Some((_, cause)) = failures.first() {
        // A permanent cause first: it is the one that decides the job's fate.
        let cause = failures
            .iter()
            .find(|(f, _)| f.permanent)
            .map_or(cause, |(_, c)| c)
            .clone();
        return Err(PublishError::Kafka {
            failed: failures.into_iter().map(|(f, _)| f).collect(),
            total: own,
            cause,
        });
    }
    let carried = delivered.iter().filter(|id| !ids.contains(id)).count();
    Ok(PublishReport {
        published: delivered.len() - carried,
        skipped: ids.len() - own,
        carried,
    })
}

/// The apalis handler. A failure is settled on the rows first (`settle`): a transient one
/// keeps them NEW and pushes the job's next run out by the backoff; a permanent one, or the
/// end of the retry window, makes them DEAD and the job dead (`AbortError`: `Killed`), so an
/// operator's retry of this job revives exactly them. apalis' attempt count decides nothing
/// (`retry_policy::PUBLISH_MAX_ATTEMPTS`).
pub async fn handle(
    job: PublishOutbox,
    ctx: Data<Arc<PublishContext>>,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<PublishReport, BoxDynError> {
    let this = JobAttempt::new(PUBLISH_OUTBOX, &id, &attempt, &task);
    let (id, attempt) = (this.id.clone(), this.attempt);
    this.observe(
        &job.trace,
        |_| run(&ctx, &job, &id, attempt),
        |result| match result {
            Ok(_) => Outcome::Done,
            Err(e) if e.downcast_ref::<AbortError>().is_some() => Outcome::Dead,
            Err(_) => Outcome::Retry,
        },
    )
    .await
}

/// What a failed attempt left its rows and its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The rows stay NEW; the job runs again after the backoff.
    Retry,
    /// Rows are DEAD under this job, which must die with them.
    Dead,
}

async fn run(
    ctx: &PublishContext,
    job: &PublishOutbox,
    id: &str,
    attempt: usize,
) -> Result<PublishReport, BoxDynError> {
    let (ids, error) = match rows_and_publish(ctx, job, id).await {
        // A job that published none of its rows may be one whose rows are already DEAD: its
        // last attempt marked them, then its acknowledgement was lost and it ran again. It
        // must end dead again, or no retry of it could revive them.
        Ok(report) if report.published == 0 && outbox::dead_of_job(&ctx.pool, id).await? > 0 => {
            return Err(AbortError::new(PublishError::RowsDead).into());
        }
        // Rows it skipped were held by other jobs (carrying them from the backlog) past its
        // wait. Published by them, fine; still NEW, this job is still theirs to publish: it
        // must not end Done and leave them to the sweeper and to another job.
        Ok(report) if report.skipped > 0 => {
            let left = outbox::rows_of_job(&ctx.pool, id).await?.len();
            if left == 0 {
                return Ok(report);
            }
            queue::retry_later(&ctx.pool, &ctx.settings, id, attempt).await?;
            return Err(PublishError::HeldElsewhere(left).into());
        }
        Ok(report) => return Ok(report),
        Err(e) => e,
    };
    let message = error.to_string();
    let settled = settle(ctx, id, &ids, &error, &message).await;
    tracing::warn!(job_id = %id, attempt, error = %message, settled = ?settled, "publish-outbox attempt failed");
    match settled {
        Ok(Settled::Dead) => Err(AbortError::new(error).into()),
        Ok(Settled::Retry) => {
            queue::retry_later(&ctx.pool, &ctx.settings, id, attempt).await?;
            Err(error.into())
        }
        Err(db) => {
            // The rows could not be told (the database is failing too). They are still NEW
            // and this job still carries them: retry it after the backoff like any transient
            // failure, instead of at once.
            tracing::warn!(job_id = %id, error = %db, "could not record the failed publish on its rows");
            queue::retry_later(&ctx.pool, &ctx.settings, id, attempt).await?;
            Err(error.into())
        }
    }
}

/// The job's rows (its id list, or the NEW rows that name it), then the publish of them.
async fn rows_and_publish(
    ctx: &PublishContext,
    job: &PublishOutbox,
    id: &str,
) -> Result<PublishReport, (Vec<i64>, PublishError)> {
    let ids = if job.outbox_ids.is_empty() {
        outbox::rows_of_job(&ctx.pool, id)
            .await
            .map_err(|e| (Vec::new(), e.into()))?
    } else {
        job.outbox_ids.clone()
    };
    publish_rows(ctx, &ids, &job.trace, Some(id))
        .await
        .map_err(|e| (ids, e))
}

/// Records a failed attempt on the job's rows still NEW: the ones Kafka refused for good
/// become DEAD; the others keep retrying until the window since their first failure ends,
/// and then all of them become DEAD. A database error counts as transient.
async fn settle(
    ctx: &PublishContext,
    job_id: &str,
    ids: &[i64],
    error: &PublishError,
    message: &str,
) -> Result<Settled, sqlx::Error> {
    let permanent: Vec<i64> = match error {
        PublishError::Kafka { failed, .. } => failed
            .iter()
            .filter(|f| f.permanent)
            .map(|f| f.id)
            .collect(),
        PublishError::Db(_) | PublishError::RowsDead | PublishError::HeldElsewhere(_) => Vec::new(),
    };
    let dead = outbox::record_failure(&ctx.pool, job_id, &permanent, message, true).await?;
    let retrying: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !permanent.contains(id))
        .collect();
    let expired =
        outbox::record_retry(&ctx.pool, job_id, &retrying, message, ctx.retry.window).await?;
    if expired > 0 {
        tracing::warn!(job_id, rows = retrying.len(), window = ?ctx.retry.window, "publish retry window ended; the job's rows are DEAD");
        outbox::mark_dead(&ctx.pool, job_id, &retrying).await?;
        return Ok(Settled::Dead);
    }
    Ok(if dead > 0 {
        Settled::Dead
    } else {
        Settled::Retry
    })
}
