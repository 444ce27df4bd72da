//! The service's Kafka: the embedded broker when `KAFKA_BROKERS` is unset (with a warning),
//! the topics, and the producer shared by the publish-outbox workers.

use std::time::Duration;

use orderflow_jobs::{
    kafka::{self, EmbeddedKafka},
    queue::Wake,
};
use rdkafka::producer::FutureProducer;

use crate::config::EventsConfig;

pub struct Events {
    pub bootstrap: String,
    pub producer: FutureProducer,
    /// Kept alive for the life of the service when in use.
    pub embedded: Option<EmbeddedKafka>,
    /// Wakes this process's publish-outbox worker after an order commits.
    pub publish_wake: Wake,
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
                 Events live in memory and are lost on exit; set KAFKA_BROKERS in production."
            );
            (embedded.bootstrap_servers().to_owned(), Some(embedded))
        }
    };
    let producer = kafka::producer(&bootstrap, cfg.delivery_timeout)?;
    Ok(Events {
        bootstrap,
        producer,
        embedded,
        publish_wake: Wake::default(),
    })
}
