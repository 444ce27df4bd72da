//! Kafka clients: the idempotent producer used by publish-outbox, the consumer group of the
//! notification pipeline, and the embedded broker (librdkafka's mock cluster) used when no
//! `KAFKA_BROKERS` is configured.

use std::{sync::mpsc, thread, time::Duration};

use crate::publish_outbox::outbox::EventType;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    consumer::{ConsumerContext, StreamConsumer},
    error::{KafkaError, KafkaResult},
    mocking::MockCluster,
    types::RDKafkaErrorCode,
    ClientConfig, Statistics,
};

pub const PARTITIONS: i32 = 3;

/// The event topics, named after the event types, behind an optional deployment prefix.
pub fn topics(prefix: &str) -> Vec<String> {
    [EventType::OrderCreated, EventType::OrderCancelled]
        .iter()
        .map(|t| format!("{prefix}{}", t.as_str()))
        .collect()
}

/// Header names carried by every event message.
pub mod headers {
    pub const EVENT_ID: &str = "eventId";
    pub const EVENT_TYPE: &str = "eventType";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

enum MockCommand {
    BrokerDown,
    BrokerUp,
}

/// An in-process Kafka (librdkafka's mock cluster, one broker) for `cargo run` and fast tests.
///
/// The mock cluster is not `Send`, so it lives on a thread of its own for as long as this
/// handle does; fault injection reaches it through a channel.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<MockCommand>,
}

impl EmbeddedKafka {
    /// Starts the embedded broker with these topics.
    pub fn start(topics: Vec<String>) -> KafkaResult<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<KafkaResult<String>>();
        let (cmd_tx, cmd_rx) = mpsc::channel::<MockCommand>();
        thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, PARTITIONS, 1) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Runs until the handle is dropped (the sender disconnects).
                while let Ok(cmd) = cmd_rx.recv() {
                    let result = match cmd {
                        MockCommand::BrokerDown => cluster.broker_down(1),
                        MockCommand::BrokerUp => cluster.broker_up(1),
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "embedded kafka command failed");
                    }
                }
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaError::ClientCreation("embedded kafka thread died".into()))??;
        Ok(Self {
            bootstrap,
            commands: cmd_tx,
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Makes the broker unreachable (fault injection for tests).
    pub fn broker_down(&self) {
        let _ = self.commands.send(MockCommand::BrokerDown);
    }

    pub fn broker_up(&self) {
        let _ = self.commands.send(MockCommand::BrokerUp);
    }
}

/// Creates the topics on a real broker if they do not exist yet (partitions: `PARTITIONS`,
/// replication 1 — production clusters are expected to have them provisioned already).
pub async fn ensure_topics(bootstrap: &str, topics: &[String]) -> KafkaResult<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "could not create topic");
                })
            }
        }
    }
    Ok(())
}

/// The configuration of the publish-outbox producer: idempotent (no duplicates from
/// librdkafka's own retries), acks from all in-sync replicas, and a bounded delivery time so
/// a dead broker turns into an error the job can retry instead of a hang. Its instances are
/// built, and rebuilt after a fatal error, by `producer::EventProducer`.
pub fn producer_config(bootstrap: &str, delivery_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        );
    config
}

/// The consumer's context: librdkafka's periodic statistics become the `kafka_consumer_lag`
/// gauge (messages behind the partition's high watermark), without a broker round trip.
#[derive(Default)]
pub struct LagContext {
    gauges: std::sync::Mutex<LagGauges>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let lags = statistics.topics.iter().flat_map(|(topic, t)| {
            t.partitions
                .iter()
                .map(move |(partition, p)| ((topic.clone(), *partition), p.consumer_lag))
        });
        let changes = self.gauges.lock().expect("lag gauges").update(lags);
        for ((topic, partition), lag) in changes {
            metrics::gauge!("kafka_consumer_lag", "topic" => topic, "partition" => partition.to_string())
                .set(lag as f64);
        }
    }
}

/// The partitions whose lag this consumer reports. A partition it stopped consuming (taken
/// by another member in a rebalance) is reported once more, as 0: left at its last value,
/// the gauge said for ever that this process lagged on a partition it no longer reads (seen
/// in `bench replicas`: 17 and 9 on two partitions another replica had taken), and a lag
/// left from an outage would keep the consumer lag alert firing.
#[derive(Default)]
pub struct LagGauges {
    reporting: std::collections::HashSet<(String, i32)>,
}

impl LagGauges {
    /// What to set from one statistics report: each assigned partition's lag, and 0 for each
    /// one reported before that is no longer assigned. librdkafka lists partition -1 (its
    /// internal unassigned partition) and a lag of -1 for a partition it does not consume.
    pub fn update(
        &mut self,
        lags: impl IntoIterator<Item = ((String, i32), i64)>,
    ) -> Vec<((String, i32), i64)> {
        let mut set: Vec<((String, i32), i64)> = lags
            .into_iter()
            .filter(|((_, partition), lag)| *partition >= 0 && *lag >= 0)
            .collect();
        let now: std::collections::HashSet<(String, i32)> =
            set.iter().map(|(key, _)| key.clone()).collect();
        let mut gone: Vec<(String, i32)> = self.reporting.difference(&now).cloned().collect();
        gone.sort();
        set.extend(gone.into_iter().map(|key| (key, 0)));
        self.reporting = now;
        set
    }
}

impl ConsumerContext for LagContext {}

/// A consumer in `group` that commits offsets only when told to. With `instance_id` it is a
/// static member (KIP-345): a process restarted under the same id takes its partitions back
/// at once instead of waiting for the broker to expire the dead member.
pub fn consumer(
    bootstrap: &str,
    group: &str,
    instance_id: Option<&str>,
) -> KafkaResult<StreamConsumer<LagContext>> {
    let mut config = ClientConfig::new();
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // Also the rebalance timeout a joining member waits for the others. Kafka evicts a
        // dead member after the session timeout; some brokers (tansu) only after this, so a
        // replacement for a crashed process would otherwise wait the default 5 minutes. Our
        // loop polls continuously (a message only costs one INSERT before the next poll).
        .set("max.poll.interval.ms", "20000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("statistics.interval.ms", "5000")
        // librdkafka prefetches up to 64 MiB per partition by default; a consumer that falls
        // behind (bench/: pipeline) then holds hundreds of MB. The loop hands each message
        // to the job table at once, so a small read-ahead costs no throughput.
        .set("queued.max.messages.kbytes", "2048")
        // How long a fetch with nothing to return waits at the broker. Kafka answers early
        // when data arrives; librdkafka's mock cluster (the embedded broker) does not and
        // holds every empty fetch the full time, so the default 500 ms became up to 500 ms of
        // notification lag (bench/: pipeline). 100 ms bounds it, for ≤ 10 empty fetches a
        // second per broker when idle.
        .set("fetch.wait.max.ms", "100")
        .create_with_context(LagContext::default())
}

#[cfg(test)]
mod tests {
    use super::LagGauges;

    fn at(partition: i32, lag: i64) -> ((String, i32), i64) {
        (("ORDER_CREATED".to_owned(), partition), lag)
    }

    #[test]
    fn a_partition_taken_by_another_member_is_reported_once_as_no_lag() {
        let mut gauges = LagGauges::default();
        assert_eq!(
            gauges.update([at(0, 3), at(1, 17), at(2, 9)]),
            [at(0, 3), at(1, 17), at(2, 9)]
        );
        // A rebalance leaves this member partition 0: librdkafka says -1 for the others.
        assert_eq!(
            gauges.update([at(0, 0), at(1, -1), at(2, -1)]),
            [at(0, 0), at(1, 0), at(2, 0)]
        );
        assert_eq!(gauges.update([at(0, 5), at(1, -1)]), [at(0, 5)]);
    }

    #[test]
    fn librdkafkas_internal_partition_and_unknown_lags_are_not_reported() {
        let mut gauges = LagGauges::default();
        assert_eq!(gauges.update([at(-1, 4), at(0, -1), at(1, 2)]), [at(1, 2)]);
    }

    #[test]
    fn a_partition_that_leaves_the_report_altogether_is_set_to_no_lag() {
        let mut gauges = LagGauges::default();
        gauges.update([at(0, 8), at(1, 8)]);
        assert_eq!(gauges.update([at(1, 2)]), [at(1, 2), at(0, 0)]);
    }
}
