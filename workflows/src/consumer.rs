//! The notification consumer group: the messages already received are handed together to a
//! consume-notification job, and their offsets are committed only after the job is durably
//! in the job table. A redelivered event maps to the same job idempotency key (its event id,
//! or its batch's) and is dropped by the queue itself, or else by `notifications.event_id`;
//! a poison message becomes a job of its own, which parks it as dead.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use apalis::prelude::BoxDynError;
use orderflow_jobs::{
    consume_notification::{
        job::{ConsumeNotification, ReceivedEvent},
        notify,
    },
    engine::{sql_error, trace::TraceContext},
    kafka::{self, headers},
    kafka_clients::{self, KafkaClient},
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{Headers, Message, OwnedMessage},
    types::RDKafkaRespErr,
    Offset, TopicPartitionList,
};
use tokio::sync::Notify;
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

/// What waiting for the next message ended with.
enum Next {
    Message(OwnedMessage),
    Stopped,
    /// librdkafka declared this consumer dead (a fatal error): it will never deliver again.
    Fatal(String),
}

/// How often a quiet consumer is checked for a fatal error.
const FATAL_CHECK: Duration = Duration::from_secs(5);

/// The fatal error of `consumer`, if librdkafka raised one.
fn fatal_error(consumer: &EventConsumer) -> Option<String> {
    consumer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// Raises a fatal error on the running consumer when asked, as librdkafka raises one when
/// a static member is fenced by another process under its `group.instance.id` (librdkafka's
/// own test hook): for tests of the consumer's replacement, which no broker of the test
/// suite brings about by itself.
#[derive(Clone, Default)]
pub struct ConsumerFatalForTest(Arc<Notify>);

impl ConsumerFatalForTest {
    pub fn raise(&self) {
        self.0.notify_one();
    }
}

fn raise_fatal_error(consumer: &EventConsumer) {
    let reason = c"raised by a test: fenced by another member with the same group.instance.id";
    // SAFETY: the consumer is alive for the call; librdkafka copies the reason.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            consumer.client().native_ptr(),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID,
            reason.as_ptr(),
        );
    }
}

/// The next message, unless `stop` is cancelled or the consumer is dead.
async fn next_message(
    consumer: &EventConsumer,
    stop: &CancellationToken,
    fatal_for_test: &ConsumerFatalForTest,
) -> Next {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return Next::Stopped,
            msg = consumer.recv() => msg,
            () = fatal_for_test.0.notified() => {
                raise_fatal_error(consumer);
                continue;
            }
            // The fatal error event is delivered once; if a batch's read took it, the
            // consumer just goes quiet. Look at its state now and then as well.
            () = tokio::time::sleep(FATAL_CHECK) => match fatal_error(consumer) {
                Some(fatal) => return Next::Fatal(fatal),
                None => continue,
            },
        };
        match msg {
            Ok(m) => return Next::Message(m.detach()),
            // librdkafka reports brokers it cannot reach as error events, paced by its own
            // reconnect backoff, and recovers by itself (a session lost during an outage
            // too: the member rejoins when the broker answers). They queue up during an
            // outage, so a pause after each one drained that backlog at one event a second
            // once the broker was back, with the messages behind it (a 30 s outage delayed
            // notifications by over a minute: tests/faults.rs). Only a fatal error ends
            // this consumer.
            Err(e) => {
                if let Some(fatal) = fatal_error(consumer) {
                    return Next::Fatal(fatal);
                }
                if let KafkaError::MessageConsumptionFatal(code) = e {
                    return Next::Fatal(format!("{code:?}"));
                }
                tracing::warn!(error = %e, "kafka receive failed; librdkafka retries");
            }
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
        match orderflow_jobs::consume_notification::job::push_notification(
            &p.pool,
            &p.settings,
            job.clone(),
        )
        .await
        {
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
fn commit(consumer: &EventConsumer, batch: &[OwnedMessage]) {
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

/// Rebuilds of a consumer that keeps failing are spaced out, doubling up to the maximum: two
/// processes under one static member id fence each other in turn, and a broker that keeps
/// fencing must not become a busy loop.
const REBUILD_SPACING: Duration = Duration::from_secs(1);
const REBUILD_SPACING_MAX: Duration = Duration::from_secs(60);
/// A rebuild this long after the previous one starts again from the shortest spacing.
const REBUILD_CALM: Duration = Duration::from_secs(300);

/// A consumer in the group, subscribed to the event topics.
fn open(p: &Pipeline) -> Result<Closing, KafkaError> {
    let consumer = Closing(Some(kafka::consumer(
        &p.bootstrap,
        &p.consumer_group,
        p.consumer_instance_id.as_deref(),
    )?));
    let topics = kafka::topics(&p.topic_prefix);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.consumer().subscribe(&topic_refs)?;
    Ok(consumer)
}

/// Consumes until `stop`. A consumer librdkafka declares dead (static membership fenced by
/// another process under the same `group.instance.id`, or any other fatal error) is replaced
/// by a new one, which joins the group and resumes from the committed offsets: what the dead
/// one received and did not commit comes again, and is a job already (its idempotency key)
/// or a notification already (its event id). Each replacement is logged, counted
/// (`kafka_client_rebuilds_total{client="consumer"}`) and shown on the consume-notification
/// queue of the operators' overview; replacements that keep coming are for an operator.
pub async fn consume_events(p: Pipeline, stop: CancellationToken) {
    let mut spacing = REBUILD_SPACING;
    let mut last_rebuild: Option<std::time::Instant> = None;
    loop {
        let consumer = match open(&p) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the kafka consumer; notifications stop");
                return;
            }
        };
        let fatal = match consume(&p, consumer.consumer(), &stop).await {
            None => {
                consumer.close().await;
                tracing::info!("kafka consumer stopped");
                return;
            }
            Some(fatal) => fatal,
        };
        // A dead consumer cannot leave its group or commit: closing it only frees it.
        drop(consumer);
        metrics::counter!("kafka_client_rebuilds_total", "client" => "consumer").increment(1);
        tracing::error!(fatal_error = %fatal,
            "the kafka consumer failed for good (librdkafka fatal error); replacing it with a new \
             one, which resumes from the committed offsets");
        kafka_clients::record_later(&p.pool, KafkaClient::Consumer, fatal);
        let wait = match last_rebuild {
            Some(at) if at.elapsed() < REBUILD_CALM => {
                let wait = spacing.saturating_sub(at.elapsed());
                spacing = (spacing * 2).min(REBUILD_SPACING_MAX);
                wait
            }
            _ => {
                spacing = REBUILD_SPACING;
                Duration::ZERO
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        last_rebuild = Some(std::time::Instant::now());
    }
}

/// Hands what `consumer` receives to consume-notification jobs until `stop` (`None`) or
/// until the consumer is dead (its fatal error).
async fn consume(
    p: &Pipeline,
    consumer: &EventConsumer,
    stop: &CancellationToken,
) -> Option<String> {
    loop {
        let first = match next_message(consumer, stop, &p.consumer_fatal_for_test).await {
            Next::Message(m) => m,
            Next::Stopped => return None,
            Next::Fatal(fatal) => return Some(fatal),
        };
        // Under load, the messages already received are stored together: one at a time,
        // each waiting for its own job, the consumer fell behind the producer (bench/).
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
        let (events, receive_spans): (Vec<_>, Vec<_>) =
            batch.iter().map(|msg| receive(p, msg)).unzip();
        // Hold the partitions until every job is stored: committing first could lose events.
        for job in jobs_of(events) {
            if !store(p, job, stop).await {
                return None;
            }
        }
        drop(receive_spans);
        commit(consumer, &batch);
        if let Some(fatal) = fatal_error(consumer) {
            return Some(fatal);
        }
    }
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
