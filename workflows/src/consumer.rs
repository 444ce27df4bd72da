//! The notification consumer group: each Kafka message is handed to a consume-notification
//! job, and its offset is committed only after the job is durably in the job table (messages
//! already received are stored as a batch, then their offsets committed together). A
//! redelivered message maps to the same job idempotency key (its event id) and is dropped
//! by the queue itself; a poison message still becomes a job, which parks it as dead.

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;

use orderflow_jobs::{
    kafka::{self, headers},
    queue::{self, ConsumeNotification},
    trace::TraceContext,
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{Headers, Message, OwnedMessage},
    Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::Pipeline;

fn header(msg: &impl Message, name: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn to_job(msg: &impl Message, prefix: &str) -> ConsumeNotification {
    ConsumeNotification {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        event_id: header(msg, headers::EVENT_ID),
        event_type: header(msg, headers::EVENT_TYPE)
            .or_else(|| msg.topic().strip_prefix(prefix).map(str::to_owned)),
        payload: msg
            .payload()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        traceparent: header(msg, headers::TRACEPARENT),
        tracestate: header(msg, headers::TRACESTATE),
    }
}

/// The consumer span of one message, continuing the producer's trace from its headers.
fn receive_span(msg: &impl Message, group: &str, parent: &TraceContext) -> Span {
    let span = tracing::info_span!(
        "kafka.receive",
        otel.name = format!("receive {}", msg.topic()),
        otel.kind = "consumer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "receive",
        "messaging.destination.name" = msg.topic(),
        "messaging.destination.partition.id" = msg.partition(),
        "messaging.kafka.offset" = msg.offset(),
        "messaging.consumer.group.name" = group,
    );
    parent.adopt(&span);
    span
}

/// Time from the broker's timestamp of a message to its receipt here (the lag in messages is
/// the `kafka_consumer_lag` gauge, from librdkafka's statistics).
fn record_lag(msg: &impl Message) {
    if let Some(ms) = msg.timestamp().to_millis() {
        let lag = chrono::Utc::now().timestamp_millis() - ms;
        metrics::histogram!("kafka_consumer_lag_seconds").record(lag.max(0) as f64 / 1e3);
    }
}

/// Messages taken from the consumer's queue at once (only those already there: waiting for
/// a full batch would delay the first event).
const BATCH: usize = 64;
/// Jobs stored at once; each holds a pooled connection while it is written.
const STORE_CONCURRENCY: usize = 8;

/// The next message, or `None` once `stop` is cancelled.
async fn next_message(
    consumer: &StreamConsumer<kafka::LagContext>,
    stop: &CancellationToken,
) -> Option<OwnedMessage> {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return None,
            msg = consumer.recv() => msg,
        };
        match msg {
            Ok(m) => return Some(m.detach()),
            // librdkafka reports brokers it cannot reach as error events, paced by its own
            // reconnect backoff, and recovers by itself. They queue up during an outage, so a
            // pause after each one drained that backlog at one event a second once the broker
            // was back, with the messages behind it (a 30 s outage delayed notifications by
            // over a minute: tests/faults.rs). Only a fatal error is worth a pause.
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(error = %e, "kafka consumer failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => tracing::warn!(error = %e, "kafka receive failed; librdkafka retries"),
        }
    }
}

/// Stores one message as a consume-notification job, retrying until it is stored; `false`
/// when `stop` came first.
async fn store(p: &Pipeline, msg: &OwnedMessage, stop: &CancellationToken) -> bool {
    record_lag(msg);
    let mut job = to_job(msg, &p.topic_prefix);
    let span = receive_span(msg, &p.consumer_group, &job.trace());
    // The job continues the trace from this span.
    let trace = TraceContext::of_span(&span).unwrap_or_else(|| job.trace());
    (job.traceparent, job.tracestate) = (trace.traceparent, trace.tracestate);
    async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match queue::push_notification(&p.pool, &p.settings, job.clone()).await {
                Ok(_) => {
                    p.notify_wake.now();
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "could not enqueue a received event; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(p.settings.backoff(attempt)) => {}
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Commits, per partition, the offset after the last message of the batch.
fn commit(consumer: &StreamConsumer<kafka::LagContext>, batch: &[OwnedMessage]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for msg in batch {
        let offset = next.entry((msg.topic(), msg.partition())).or_default();
        *offset = (*offset).max(msg.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(error = %e, topic, partition, "cannot commit this offset");
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::warn!(error = %e, "offset commit failed; the events may be redelivered (harmless)");
    }
}

pub async fn consume_events(p: Pipeline, stop: CancellationToken) {
    let consumer = match kafka::consumer(
        &p.bootstrap,
        &p.consumer_group,
        p.consumer_instance_id.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the kafka consumer; notifications stop");
            return;
        }
    };
    let topics = kafka::topics(&p.topic_prefix);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topic_refs) {
        tracing::error!(error = %e, "cannot subscribe to the event topics");
        return;
    }
    while let Some(first) = next_message(&consumer, &stop).await {
        // Under load, the messages already received are stored together: one at a time,
        // each waiting for its INSERT, the consumer fell behind the producer (bench/).
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive failed; librdkafka retries");
                    break;
                }
                Err(_) => break,
            }
        }
        // Hold the partitions until every job is stored: committing first could lose events.
        let stores: Vec<_> = batch.iter().map(|msg| store(&p, msg, &stop)).collect();
        let stored: Vec<bool> = futures_util::stream::iter(stores)
            .buffered(STORE_CONCURRENCY)
            .collect()
            .await;
        if stored.contains(&false) {
            break;
        }
        commit(&consumer, &batch);
    }
    tracing::info!("kafka consumer stopped");
}
