//! The notification consumer group: the messages already received are handed together to a
//! consume-notification job, and their offsets are committed only after the job is durably
//! in the job table. A redelivered event maps to the same job idempotency key (its event id,
//! or its batch's) and is dropped by the queue itself, or else by `notifications.event_id`;
//! a poison message becomes a job of its own, which parks it as dead.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use apalis::prelude::BoxDynError;
use orderflow_jobs::{
    kafka::{self, headers},
    notify,
    queue::{self, ConsumeNotification, ReceivedEvent},
    sql_error,
    trace::TraceContext,
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{Headers, Message, OwnedMessage},
    Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::Pipeline;

fn header(msg: &impl Message, name: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn to_event(msg: &impl Message, prefix: &str) -> ReceivedEvent {
    ReceivedEvent {
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
/// a full batch would delay the first event). They become one job, so under load the cost
/// of a job is shared by up to this many events.
const BATCH: usize = 64;

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

/// The received event, continuing the producer's trace in a receive span (kept open until
/// the event is stored); the job continues the trace from that span.
fn receive(p: &Pipeline, msg: &impl Message) -> (ReceivedEvent, Span) {
    record_lag(msg);
    let mut event = to_event(msg, &p.topic_prefix);
    let span = receive_span(msg, &p.consumer_group, &event.trace());
    let trace = TraceContext::of_span(&span).unwrap_or_else(|| event.trace());
    (event.traceparent, event.tracestate) = (trace.traceparent, trace.tracestate);
    (event, span)
}

/// The jobs of a batch of received events: one for the well-formed events (each once: a
/// redelivery can arrive beside its original), and one for each poison message, so that an
/// operator finds every refused message as a dead job of its own.
fn jobs_of(events: Vec<ReceivedEvent>) -> Vec<ConsumeNotification> {
    let mut seen = HashSet::new();
    let mut good = Vec::new();
    let mut jobs = Vec::new();
    for event in events {
        if notify::parse(&event).is_err() {
            jobs.push(ConsumeNotification {
                events: vec![event],
            });
        } else if seen.insert(event.event_id.clone()) {
            good.push(event);
        }
    }
    if !good.is_empty() {
        jobs.push(ConsumeNotification { events: good });
    }
    jobs
}

/// Whether a failed push may succeed as it is a moment later (the database unreachable,
/// busy or locked). Anything else — the job refused as it is (too large a packet, a value
/// out of range, a constraint) — will fail the same way however often it is tried.
fn push_may_pass(error: &BoxDynError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = source {
        if let Some(db) = e.downcast_ref::<sqlx::Error>() {
            return sql_error::is_unavailable(db);
        }
        source = e.source();
    }
    // Not a database error we can read: assume it passes, as before.
    true
}

/// Stores a consume-notification job, retrying while the failure may pass; `false` when
/// `stop` came first. A job the database refuses as it is is split in halves, each stored
/// the same way, so that one oversized or malformed batch cannot stall every partition; a
/// single event still refused is stored as a poison job without its payload (dead at once,
/// for an operator to see), and only if even that fails is it retried.
async fn store(p: &Pipeline, job: ConsumeNotification, stop: &CancellationToken) -> bool {
    // (job, whether it is the last form: nothing smaller is left to try)
    let mut pending = vec![(job, false)];
    while let Some((job, last_form)) = pending.pop() {
        match store_one(p, &job, last_form, stop).await {
            Stored::Yes => {}
            Stored::Stopped => return false,
            Stored::Refused if job.events.len() > 1 => {
                metrics::counter!("notification_batch_splits_total").increment(1);
                let mut events = job.events;
                let second = events.split_off(events.len() / 2);
                pending.push((ConsumeNotification { events: second }, false));
                pending.push((ConsumeNotification { events }, false));
            }
            Stored::Refused => {
                let mut event = job.events[0].clone();
                let refused = event.payload.take().map(|p| p.len()).unwrap_or(0);
                event.event_id = None; // poison: no idempotency key, a dead job of its own
                event.payload = Some(format!(
                    "{{\"refused\":\"the job table refused this event ({refused} bytes of payload)\"}}"
                ));
                pending.push((
                    ConsumeNotification {
                        events: vec![event],
                    },
                    true,
                ));
            }
        }
    }
    true
}

enum Stored {
    Yes,
    /// The database refused the job as it is.
    Refused,
    Stopped,
}

async fn store_one(
    p: &Pipeline,
    job: &ConsumeNotification,
    last_form: bool,
    stop: &CancellationToken,
) -> Stored {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match queue::push_notification(&p.pool, &p.settings, job.clone()).await {
            Ok(_) => {
                p.notify_wake.now();
                return Stored::Yes;
            }
            // The last form is retried whatever the error: nothing smaller is left.
            Err(e) if !last_form && !push_may_pass(&e) => {
                tracing::warn!(error = %e, events = job.events.len(),
                    "the job table refused received events as they are; splitting");
                return Stored::Refused;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, events = job.events.len(),
                    "could not enqueue received events; retrying");
                tokio::select! {
                    () = stop.cancelled() => return Stored::Stopped,
                    () = tokio::time::sleep(p.settings.backoff(attempt)) => {}
                }
            }
        }
    }
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

/// How long a stopping consumer may take to close (leave its group, commit) before the
/// process goes on without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type EventConsumer = StreamConsumer<kafka::LagContext>;

/// Owns the consumer and closes it on a thread of its own. librdkafka's close blocks the
/// calling thread until the group is left, which with the broker unreachable may be never:
/// on a runtime thread that stalled the pipeline's shutdown, and a failing test with it.
/// `close` waits for it at most `CLOSE_TIMEOUT`; a drop (the task cancelled) does not wait.
struct Closing(Option<EventConsumer>);

impl Closing {
    fn consumer(&self) -> &EventConsumer {
        self.0.as_ref().expect("the consumer is open until closed")
    }

    async fn close(mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        let (done, closed) = tokio::sync::oneshot::channel();
        close_apart(consumer, Some(done));
        if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "kafka consumer did not close in time; going on without it");
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            close_apart(consumer, None);
        }
    }
}

fn close_apart(consumer: EventConsumer, done: Option<tokio::sync::oneshot::Sender<()>>) {
    let spawned = std::thread::Builder::new()
        .name("kafka-consumer-close".into())
        .spawn(move || {
            drop(consumer);
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to close the kafka consumer on");
    }
}

pub async fn consume_events(p: Pipeline, stop: CancellationToken) {
    let consumer = match kafka::consumer(
        &p.bootstrap,
        &p.consumer_group,
        p.consumer_instance_id.as_deref(),
    ) {
        Ok(c) => Closing(Some(c)),
        Err(e) => {
            tracing::error!(error = %e, "cannot create the kafka consumer; notifications stop");
            return;
        }
    };
    let topics = kafka::topics(&p.topic_prefix);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.consumer().subscribe(&topic_refs) {
        tracing::error!(error = %e, "cannot subscribe to the event topics");
        return;
    }
    'consume: while let Some(first) = next_message(consumer.consumer(), &stop).await {
        // Under load, the messages already received are stored together: one at a time,
        // each waiting for its own job, the consumer fell behind the producer (bench/).
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match tokio::time::timeout(Duration::ZERO, consumer.consumer().recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive failed; librdkafka retries");
                    break;
                }
                Err(_) => break,
            }
        }
        let (events, receive_spans): (Vec<_>, Vec<_>) =
            batch.iter().map(|msg| receive(&p, msg)).unzip();
        // Hold the partitions until every job is stored: committing first could lose events.
        for job in jobs_of(events) {
            if !store(&p, job, &stop).await {
                break 'consume;
            }
        }
        drop(receive_spans);
        commit(consumer.consumer(), &batch);
    }
    consumer.close().await;
    tracing::info!("kafka consumer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_id: Option<&str>, payload: &str) -> ReceivedEvent {
        ReceivedEvent {
            topic: "ORDER_CREATED".into(),
            partition: 0,
            offset: 0,
            event_id: event_id.map(str::to_owned),
            event_type: Some("ORDER_CREATED".into()),
            payload: Some(payload.into()),
            traceparent: None,
            tracestate: None,
        }
    }

    const A: &str = "0192f3a4-5b6c-7d8e-9f00-11223344556a";
    const B: &str = "0192f3a4-5b6c-7d8e-9f00-11223344556b";
    const ORDER: &str = r#"{"orderId":7,"userId":3}"#;

    #[test]
    fn well_formed_events_share_a_job_and_each_poison_message_has_its_own() {
        let jobs = jobs_of(vec![
            event(Some(A), ORDER),
            event(None, ORDER),
            event(Some(B), ORDER),
            event(Some(A), "{not json"),
        ]);
        let sizes: Vec<usize> = jobs.iter().map(|j| j.events.len()).collect();
        assert_eq!(sizes, [1, 1, 2]);
        let ids: Vec<_> = jobs[2].events.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids, [Some(A.to_owned()), Some(B.to_owned())]);
    }

    #[test]
    fn a_redelivery_beside_its_original_is_carried_once() {
        let jobs = jobs_of(vec![event(Some(A), ORDER), event(Some(A), ORDER)]);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].events.len(), 1);
        assert_eq!(jobs[0].idempotency_key().as_deref(), Some(A));
    }

    #[test]
    fn nothing_received_is_no_job() {
        assert!(jobs_of(Vec::new()).is_empty());
    }
}
