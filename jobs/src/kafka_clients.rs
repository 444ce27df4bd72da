//! Rebuilds of the pipeline's Kafka clients, as operators see them. A client librdkafka
//! declared dead (a fatal error) is replaced by a new one (`producer`, and the notification
//! consumer); each replacement, by any replica, is a row here, and the queue overview shows
//! them on the queue the client works for: the producer on publish-outbox, the consumer on
//! consume-notification. One rebuild after an outage is the pipeline healing itself; rebuilds
//! that keep coming (the broker fencing every new instance, another process under the same
//! static group member id) are for a person, with the error that caused the last one.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::{
    consume_notification::job::CONSUME_NOTIFICATION, publish_outbox::job::PUBLISH_OUTBOX,
    retention::ExpiredRows,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaClient {
    Producer,
    Consumer,
}

impl KafkaClient {
    pub const ALL: [Self; 2] = [Self::Producer, Self::Consumer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }

    /// The queue whose work the client does.
    pub fn queue(self) -> &'static str {
        match self {
            Self::Producer => PUBLISH_OUTBOX,
            Self::Consumer => CONSUME_NOTIFICATION,
        }
    }
}

/// The `error` column's size.
const ERROR_CHARS: usize = 1024;

/// Records one rebuild of `client`, replacing an instance that failed with `error`.
pub async fn record(pool: &MySqlPool, client: KafkaClient, error: &str) -> Result<(), sqlx::Error> {
    let error: String = error.chars().take(ERROR_CHARS).collect();
    sqlx::query("INSERT INTO kafka_client_rebuilds (client, error) VALUES (?, ?)")
        .bind(client.as_str())
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records a rebuild without waiting for it; a failure only costs the record (logged).
pub fn record_later(pool: &MySqlPool, client: KafkaClient, error: String) {
    let pool = pool.clone();
    tokio::spawn(async move {
        if let Err(e) = record(&pool, client, &error).await {
            tracing::warn!(error = %e, client = client.as_str(), "could not record a kafka client rebuild");
        }
    });
}

/// A client's rebuilds, on its queue's line of the overview.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClientRebuilds {
    /// `producer` (publish-outbox) or `consumer` (consume-notification).
    pub client: String,
    pub rebuilds_last_60m: i64,
    /// Since the retention job last purged them.
    pub rebuilds_total: i64,
    pub last_rebuilt_at: Option<DateTime<Utc>>,
    /// The fatal error of the instance the last rebuild replaced.
    pub last_error: Option<String>,
}

/// Per queue that has a Kafka client, its rebuilds.
pub async fn by_queue(pool: &MySqlPool) -> Result<HashMap<String, ClientRebuilds>, sqlx::Error> {
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT client, COUNT(*), \
         CAST(SUM(rebuilt_at >= CURRENT_TIMESTAMP(6) - INTERVAL 60 MINUTE) AS SIGNED) \
         FROM kafka_client_rebuilds GROUP BY client",
    )
    .fetch_all(pool)
    .await?;
    let mut out = HashMap::new();
    for client in KafkaClient::ALL {
        let mut line = ClientRebuilds {
            client: client.as_str().to_owned(),
            ..ClientRebuilds::default()
        };
        if let Some((_, total, last_60m)) = counts.iter().find(|(c, ..)| c == client.as_str()) {
            (line.rebuilds_total, line.rebuilds_last_60m) = (*total, *last_60m);
            let last: Option<(DateTime<Utc>, String)> = sqlx::query_as(
                "SELECT rebuilt_at, error FROM kafka_client_rebuilds WHERE client = ? \
                 ORDER BY rebuilt_at DESC, id DESC LIMIT 1",
            )
            .bind(client.as_str())
            .fetch_optional(pool)
            .await?;
            (line.last_rebuilt_at, line.last_error) = last.unzip();
        }
        out.insert(client.queue().to_owned(), line);
    }
    Ok(out)
}

/// Rebuild records older than the retention (`RETENTION_DAYS`).
pub fn old_rebuilds(retention: Duration) -> ExpiredRows {
    ExpiredRows {
        kind: "kafka_client_rebuilds",
        delete: "DELETE FROM kafka_client_rebuilds \
                 WHERE rebuilt_at < CURRENT_TIMESTAMP(6) - INTERVAL ? SECOND LIMIT ?",
        retention: Some(retention),
    }
}
