//! The service's Kafka: the embedded broker when `KAFKA_BROKERS` is unset (with a warning),
//! the topics, and the producer shared by the publish-outbox workers.

use std::time::Duration;

use orderflow_jobs::{
    engine::queue::Wake,
    kafka::{self, EmbeddedKafka},
    publish_outbox::{
        producer::{EventProducer, ProducerSettings},
        reseed,
    },
};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::config::EventsConfig;

pub struct Events {
    pub bootstrap: String,
    /// Rebuilt after a fatal error (ADR 0015).
    pub producer: EventProducer,
    /// Kept alive for the life of the service when in use.
    pub embedded: Option<EmbeddedKafka>,
    /// Wakes this process's publish-outbox worker after an order commits.
    pub publish_wake: Wake,
    /// Raises a fatal error on this process's notification consumer (tests of its
    /// replacement).
    pub consumer_fatal_for_test: orderflow_workflows::ConsumerFatalForTest,
}

pub async fn connect(cfg: &EventsConfig) -> anyhow::Result<Events> {
    let topics = kafka::topics(&cfg.topic_prefix);
    let (bootstrap, embedded) = match &cfg.kafka_brokers {
        Some(brokers) => {
            // A broker that is down at start must not keep the API down: publishing retries.
            match tokio::time::timeout(
                Duration::from_secs(15),
                kafka::ensure_topics(brokers, &topics),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not ensure the kafka topics"),
                Err(_) => tracing::warn!("kafka did not answer while ensuring topics; continuing"),
            }
            (brokers.clone(), None)
        }
        None => {
            let embedded = EmbeddedKafka::start(topics)?;
            tracing::warn!(
                bootstrap = embedded.bootstrap_servers(),
                "KAFKA_BROKERS is not set: using an in-process Kafka (librdkafka mock cluster). \
                 Its log lives in memory: at start the outbox publishes again what the last \
                 process's broker may have lost. For one process; set KAFKA_BROKERS in production."
            );
            (embedded.bootstrap_servers().to_owned(), Some(embedded))
        }
    };
    let producer = EventProducer::start(ProducerSettings {
        bootstrap: bootstrap.clone(),
        delivery_timeout: cfg.delivery_timeout,
    })?;
    Ok(Events {
        bootstrap,
        producer,
        embedded,
        publish_wake: Wake::default(),
        consumer_fatal_for_test: Default::default(),
    })
}

/// With the embedded broker, a process starts with an empty log: the events the previous
/// process published and had not handed to a job yet are gone. Publishes again every
/// PUBLISHED row without a notification (ADR 0016); retried until done or `stop`.
pub async fn reseed_embedded(
    pool: MySqlPool,
    producer: EventProducer,
    topic_prefix: String,
    stop: CancellationToken,
) {
    let mut mark = None;
    let mut pause = Duration::from_secs(1);
    loop {
        let attempt = async {
            let m = match mark {
                Some(m) => m,
                None => *mark.insert(reseed::mark(&pool).await?),
            };
            reseed::reseed(&pool, &producer, &topic_prefix, &m).await
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = attempt => result,
        };
        match result {
            Ok(done) => {
                tracing::info!(
                    republished = done.republished,
                    scanned_ids = done.scanned_ids,
                    "embedded kafka re-seeded with the published events not notified yet"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "re-seeding the embedded kafka failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
