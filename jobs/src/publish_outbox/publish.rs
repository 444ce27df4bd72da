//! publish-outbox: NEW outbox rows → Kafka (topic = prefix + event type, key = order id,
//! headers = event id, event type, traceparent) → PUBLISHED.
//!
//! The rows are locked with `FOR UPDATE SKIP LOCKED` for the duration of the publish, so two
//! workers (or replicas) never publish one row at once, and a row is marked PUBLISHED only
//! after Kafka acknowledged it (acks=all). A crash between the acknowledgement and the commit
//! can publish a row twice; consumers deduplicate on the event id.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use serde::Serialize;
use sqlx::MySqlPool;
use tracing::{Instrument, Span};
use ulid::Ulid;

use crate::{
    kafka::headers,
    outbox::{self, Held, OutboxRow},
    queue::{self, PublishOutbox, QueueSettings, PUBLISH_OUTBOX},
    trace::{self, Outcome, TraceContext},
};

pub struct PublishContext {
    pub pool: MySqlPool,
    pub producer: FutureProducer,
    pub topic_prefix: String,
    pub settings: QueueSettings,
    /// NEW rows of other jobs a job may publish along with its own (`PUBLISH_BATCH_SIZE`).
    pub backlog_batch: u32,
}

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
    #[error("kafka delivery failed for {failed} of {total} events: {cause}")]
    Kafka {
        failed: usize,
        total: usize,
        cause: String,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
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
pub async fn publish_rows(
    ctx: &PublishContext,
    ids: &[i64],
    job_trace: &TraceContext,
) -> Result<PublishReport, PublishError> {
    let first = publish_claimed(ctx, ids, job_trace, Held::Skip).await?;
    if first.skipped == 0 {
        return Ok(first);
    }
    // Some of our rows were held by another job. Usually it was publishing them, but a
    // locking scan can also hold a row it does not return (the backlog claim's LIMIT), and a
    // carried row it failed to deliver stays NEW: wait for that job, holding nothing else
    // (so the wait cannot deadlock), and publish what it left, instead of leaving the row
    // to the sweeper's grace period (seen in bench/: pipeline, a row 48 s late).
    let second = publish_claimed(ctx, ids, job_trace, Held::Wait).await?;
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
) -> Result<PublishReport, PublishError> {
    let mut tx = ctx.pool.begin().await?;
    let mut rows = outbox::claim(&mut tx, ids, held).await?;
    let own = rows.len();
    if held == Held::Skip {
        rows.extend(outbox::claim_backlog(&mut tx, ids, ctx.backlog_batch).await?);
    }
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
        ctx.producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .instrument(spans[i].clone())
    });
    let results = futures_util::future::join_all(sends).await;

    let mut delivered = Vec::new();
    // Only the job's own rows decide its outcome; carried rows that fail stay NEW for theirs.
    let mut failures = Vec::new();
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
            Err((e, _)) if i < own => failures.push(e.to_string()),
            Err((e, _)) => {
                tracing::debug!(outbox_id = row.id, error = %e, "a carried row was not published; its own job will retry it")
            }
        }
    }
    outbox::mark_published(&mut tx, &delivered).await?;
    tx.commit().await?;
    metrics::counter!("outbox_published_total").increment(delivered.len() as u64);
    if let Some(cause) = failures.first() {
        return Err(PublishError::Kafka {
            failed: failures.len(),
            total: own,
            cause: cause.clone(),
        });
    }
    let carried = delivered.iter().filter(|id| !ids.contains(id)).count();
    Ok(PublishReport {
        published: delivered.len() - carried,
        skipped: ids.len() - own,
        carried,
    })
}

/// The apalis handler. On failure it records the attempt on the rows and pushes the job's
/// next run out by the backoff; after the last attempt the rows become DEAD and the job
/// (returning an error with attempts exhausted) is `Killed` — dead in the job table.
pub async fn handle(
    job: PublishOutbox,
    ctx: Data<Arc<PublishContext>>,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<PublishReport, BoxDynError> {
    let attempt = attempt.current();
    let last = queue::is_last_attempt(attempt, task.max_attempts());
    let span = trace::job_span(PUBLISH_OUTBOX, &id.to_string(), attempt, &job.trace);
    let started = Instant::now();
    let result = run(&ctx, &job, &id, attempt, last)
        .instrument(span.clone())
        .await;
    let outcome = match (&result, last) {
        (Ok(_), _) => Outcome::Done,
        (Err(_), false) => Outcome::Retry,
        (Err(_), true) => Outcome::Dead,
    };
    trace::finish_job(&span, PUBLISH_OUTBOX, started, outcome);
    result
}

async fn run(
    ctx: &PublishContext,
    job: &PublishOutbox,
    id: &TaskId<Ulid>,
    attempt: usize,
    last: bool,
) -> Result<PublishReport, BoxDynError> {
    let ids = if job.outbox_ids.is_empty() {
        outbox::rows_of_job(&ctx.pool, &id.to_string()).await?
    } else {
        job.outbox_ids.clone()
    };
    match publish_rows(ctx, &ids, &job.trace).await {
        Ok(report) => Ok(report),
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(job_id = %id, attempt, last, error = %message, "publish-outbox attempt failed");
            outbox::record_failure(&ctx.pool, &ids, &message, last).await?;
            if !last {
                queue::retry_later(&ctx.pool, &ctx.settings, &id.to_string(), attempt).await?;
            }
            Err(e.into())
        }
    }
}
