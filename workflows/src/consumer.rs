//! The notification consumer group: each Kafka message is handed to a consume-notification
//! job, and its offset is committed only after the job is durably in the job table. A
//! redelivered message maps to the same job idempotency key (its event id) and is dropped
//! by the queue itself; a poison message still becomes a job, which parks it as dead.

use std::time::Duration;

use orderflow_jobs::{
    kafka::{self, headers},
    queue::{self, ConsumeNotification},
    trace::TraceContext,
};
use rdkafka::{
    consumer::{CommitMode, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers, Message},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::Pipeline;

fn header(msg: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn to_job(msg: &BorrowedMessage<'_>, prefix: &str) -> ConsumeNotification {
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
fn receive_span(msg: &BorrowedMessage<'_>, group: &str, parent: &TraceContext) -> Span {
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
fn record_lag(msg: &BorrowedMessage<'_>) {
    if let Some(ms) = msg.timestamp().to_millis() {
        let lag = chrono::Utc::now().timestamp_millis() - ms;
        metrics::histogram!("kafka_consumer_lag_seconds").record(lag.max(0) as f64 / 1e3);
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
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            // librdkafka reports brokers it cannot reach as error events, paced by its own
            // reconnect backoff, and recovers by itself. They queue up during an outage, so a
            // pause after each one drained that backlog at one event a second once the broker
            // was back, with the messages behind it (a 30 s outage delayed notifications by
            // over a minute: tests/faults.rs). Only a fatal error is worth a pause.
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(error = %e, "kafka consumer failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "kafka receive failed; librdkafka retries");
                continue;
            }
        };
        record_lag(&msg);
        let mut job = to_job(&msg, &p.topic_prefix);
        let span = receive_span(&msg, &p.consumer_group, &job.trace());
        // The job continues the trace from this span.
        let trace = TraceContext::of_span(&span).unwrap_or_else(|| job.trace());
        (job.traceparent, job.tracestate) = (trace.traceparent, trace.tracestate);
        // Hold the partition until the job is stored: committing first could lose the event.
        let stored = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match queue::push_notification(&p.pool, &p.settings, job.clone()).await {
                    Ok(_) => return true,
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
        .await;
        if !stored {
            return;
        }
        if let Err(e) = consumer.commit_message(&msg, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the event may be redelivered (harmless)");
        }
    }
    tracing::info!("kafka consumer stopped");
}
