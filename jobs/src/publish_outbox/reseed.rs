//! Re-seeding a fresh embedded broker (ADR 0016). The in-process broker keeps its log in
//! memory: a process that dies takes with it the events it published and had not yet handed
//! to a consume-notification job, while their rows say PUBLISHED. So a process that starts
//! its own broker publishes again every PUBLISHED row that has no notification yet.
//!
//! Nothing is written: the rows stay as they are, and the notification's UNIQUE event id
//! turns a re-published event that was in fact already on its way (a job stored before the
//! kill) into no second notification. Reads go in windows of ids, newest first (the lost
//! events are the last ones published), as plain consistent reads that lock nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::FutureRecord;
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::{
    engine::trace::TraceContext,
    publish_outbox::{
        outbox::OutboxRow,
        producer::EventProducer,
        publish::{produce_span, record_headers},
    },
};

/// Outbox ids read per query.
const WINDOW: i64 = 5_000;
/// Sends of a window that failed are tried again this many times, a second apart.
const SEND_ATTEMPTS: u32 = 5;

/// Where a re-seed stops: rows published from now on are this process's own, carried by its
/// own broker. Read before the re-seed, so it does not send them a second time.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    before: DateTime<Utc>,
    min_id: i64,
    max_id: i64,
}

pub async fn mark(pool: &MySqlPool) -> Result<Mark, sqlx::Error> {
    let (before, min_id, max_id): (DateTime<Utc>, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT CURRENT_TIMESTAMP(6), MIN(id), MAX(id) FROM outbox_events")
            .fetch_one(pool)
            .await?;
    Ok(Mark {
        before,
        min_id: min_id.unwrap_or(0),
        max_id: max_id.unwrap_or(0),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReseedError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("kafka refused {failed} re-published events: {cause}")]
    Kafka { failed: usize, cause: String },
}

/// What a re-seed did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reseeded {
    pub scanned_ids: i64,
    pub republished: usize,
}

/// The PUBLISHED rows of ids in `(low, high]` published before the mark and not notified.
async fn unnotified(
    pool: &MySqlPool,
    mark: &Mark,
    low: i64,
    high: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.event_id, e.aggregate_id, e.event_type, e.payload, e.traceparent, \
         e.tracestate, e.created_at, e.job_id FROM outbox_events e \
         WHERE e.id > ? AND e.id <= ? AND e.status = 'PUBLISHED' AND e.published_at < ? \
         AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event_id = e.event_id) \
         ORDER BY e.id",
    )
    .bind(low)
    .bind(high)
    .bind(mark.before)
    .fetch_all(pool)
    .await
}

/// Sends the rows; returns those Kafka did not acknowledge, with the first error.
async fn send(
    producer: &EventProducer,
    topic_prefix: &str,
    rows: Vec<OutboxRow>,
) -> (Vec<OutboxRow>, Option<String>) {
    let topics: Vec<String> = rows
        .iter()
        .map(|r| format!("{topic_prefix}{}", r.event_type))
        .collect();
    let keys: Vec<String> = rows.iter().map(|r| r.aggregate_id.to_string()).collect();
    let producer = producer.lease().await;
    let sends = rows.iter().enumerate().map(|(i, row)| {
        // The row's own trace goes on: its notification joins the order's trace.
        let span = produce_span(row, &topics[i], &TraceContext::default());
        let record = FutureRecord::to(&topics[i])
            .key(&keys[i])
            .payload(&row.payload)
            .headers(record_headers(row, &span));
        producer
            .send(record, Duration::from_secs(5))
            .instrument(span)
    });
    let results = futures_util::future::join_all(sends).await;
    drop(producer);
    let mut failed = Vec::new();
    let mut cause = None;
    for (row, result) in rows.into_iter().zip(results) {
        if let Err((e, _)) = result {
            cause.get_or_insert_with(|| e.to_string());
            failed.push(row);
        }
    }
    (failed, cause)
}

/// Publishes again, newest first, every row PUBLISHED before `mark` that has no
/// notification. Exactly one notification still results per event (its UNIQUE event id).
pub async fn reseed(
    pool: &MySqlPool,
    producer: &EventProducer,
    topic_prefix: &str,
    mark: &Mark,
) -> Result<Reseeded, ReseedError> {
    let mut done = Reseeded::default();
    let mut high = mark.max_id;
    while high >= mark.min_id && high > 0 {
        let low = (high - WINDOW).max(mark.min_id - 1);
        let mut rows = unnotified(pool, mark, low, high).await?;
        let count = rows.len();
        let mut attempt = 0;
        while !rows.is_empty() {
            attempt += 1;
            let (failed, cause) = send(producer, topic_prefix, rows).await;
            if failed.is_empty() {
                break;
            }
            if attempt >= SEND_ATTEMPTS {
                return Err(ReseedError::Kafka {
                    failed: failed.len(),
                    cause: cause.unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            rows = failed;
        }
        metrics::counter!("outbox_reseeded_total").increment(count as u64);
        done.republished += count;
        done.scanned_ids += high - low;
        high = low;
    }
    Ok(done)
}
