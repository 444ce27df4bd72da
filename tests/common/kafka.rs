//! Reading and writing the event topics directly, as an independent Kafka client would.

use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    ClientConfig, Offset, TopicPartitionList,
};

#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub traceparent: Option<String>,
    pub key: Option<String>,
    pub payload: String,
}

/// Every message on `topic` from the beginning, read by a consumer group of its own; stops
/// after `idle` without a new message once at least `at_least` were seen (or after 60 s).
pub async fn read_all(bootstrap: &str, topic: &str, at_least: usize, idle: Duration) -> Vec<Event> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    loop {
        let wait = if events.len() >= at_least {
            idle
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(msg)) => {
                let header = |name: &str| {
                    msg.headers().and_then(|h| {
                        h.iter()
                            .find(|x| x.key == name)
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                events.push(Event {
                    event_id: header("eventId"),
                    event_type: header("eventType"),
                    traceparent: header("traceparent"),
                    key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: msg
                        .payload()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default(),
                });
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) if events.len() >= at_least => return events,
            Err(_) => {}
        }
        if tokio::time::Instant::now() > deadline {
            return events;
        }
    }
}

/// Produces one raw message (for redelivery and poison-message tests).
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    key: &str,
    payload: &str,
    headers: &[(&str, &str)],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("test producer");
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload).headers(h),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("test message delivered");
}

/// Waits until the consumer group `group` has committed, on every partition of each of
/// `topics`, an offset at the partition's end: everything on them was consumed. Reads the
/// group's offsets without joining it (the service's consumer is not rebalanced). `false`
/// when `timeout` passed first.
pub async fn wait_until_group_consumed(
    bootstrap: &str,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> bool {
    let (bootstrap, group, topics) = (bootstrap.to_owned(), group.to_owned(), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if group_is_at_end(&consumer, &topics) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("offset reader thread")
}

fn group_is_at_end(consumer: &BaseConsumer, topics: &[String]) -> bool {
    let wait = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), wait) else {
            return false;
        };
        for t in metadata.topics() {
            for p in t.partitions() {
                let Ok((_, high)) = consumer.fetch_watermarks(topic, p.id(), wait) else {
                    return false;
                };
                tpl.add_partition(topic, p.id());
                ends.push(((topic.clone(), p.id()), high));
            }
        }
    }
    let Ok(committed) = consumer.committed_offsets(tpl, wait) else {
        return false;
    };
    ends.iter().all(|((topic, partition), high)| {
        let at = match committed
            .find_partition(topic, *partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(n)) => n,
            _ => 0,
        };
        at >= *high
    })
}
