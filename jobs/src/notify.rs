//! consume-notification: turns one ORDER_* event into one notification. A malformed message
//! is refused for good (`AbortError`: the job is dead at once, the partition moves on); a
//! database failure is retried with backoff; a redelivered event finds its notification
//! already there and changes nothing.

use std::{sync::Arc, time::Instant};

use apalis::prelude::{AbortError, Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use tracing::Instrument;
use ulid::Ulid;

use crate::{
    notifications::{self, NewNotification},
    outbox::EventType,
    queue::{self, ConsumeNotification, QueueSettings, CONSUME_NOTIFICATION},
    trace::{self, Outcome},
};

pub struct NotifyContext {
    pub pool: MySqlPool,
    pub settings: QueueSettings,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderEvent {
    order_id: i64,
    user_id: i64,
    total_amount: Option<i64>,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub enum NotifyOutcome {
    Created,
    AlreadyNotified,
}

/// Why a message can never become a notification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Poison {
    #[error("message has no valid eventId header")]
    NoEventId,
    #[error("unknown event type {0:?}")]
    UnknownType(Option<String>),
    #[error("payload is not an order event: {0}")]
    BadPayload(String),
}

pub struct Parsed {
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub event_id: String,
    pub kind: EventType,
    pub user_id: i64,
    pub order_id: i64,
    pub message: String,
}

pub fn parse(job: &ConsumeNotification) -> Result<Parsed, Poison> {
    let event_id = job
        .event_id
        .as_deref()
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        .ok_or(Poison::NoEventId)?;
    let kind = job
        .event_type
        .as_deref()
        .and_then(EventType::parse)
        .ok_or_else(|| Poison::UnknownType(job.event_type.clone()))?;
    let event: OrderEvent = serde_json::from_str(job.payload.as_deref().unwrap_or(""))
        .map_err(|e| Poison::BadPayload(e.to_string()))?;
    let message = match kind {
        EventType::OrderCreated => format!(
            "Your order {} was placed (total {}).",
            event.order_id,
            event.total_amount.unwrap_or_default()
        ),
        EventType::OrderCancelled => format!("Your order {} was cancelled.", event.order_id),
    };
    Ok(Parsed {
        occurred_at: event.occurred_at,
        event_id: event_id.to_owned(),
        kind,
        user_id: event.user_id,
        order_id: event.order_id,
        message,
    })
}

pub async fn handle(
    job: ConsumeNotification,
    ctx: Data<Arc<NotifyContext>>,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<NotifyOutcome, BoxDynError> {
    let attempt = attempt.current();
    let last = queue::is_last_attempt(attempt, task.max_attempts());
    let span = trace::job_span(CONSUME_NOTIFICATION, &id.to_string(), attempt, &job.trace());
    let started = Instant::now();
    let result = run(&ctx, &job, &id, attempt, last)
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok(_) => Outcome::Done,
        Err(Failure::Poison(_)) => Outcome::Dead,
        Err(Failure::Db(_)) if last => Outcome::Dead,
        Err(Failure::Db(_)) => Outcome::Retry,
    };
    trace::finish_job(&span, CONSUME_NOTIFICATION, started, outcome);
    result.map_err(|f| match f {
        Failure::Poison(poison) => AbortError::new(poison).into(),
        Failure::Db(e) => e,
    })
}

enum Failure {
    /// Never retried: the job is dead at once.
    Poison(Poison),
    Db(BoxDynError),
}

/// The INSERT of the notification, as a client span of the database.
fn insert_span() -> tracing::Span {
    tracing::info_span!(
        "db.query",
        otel.name = "INSERT notifications",
        otel.kind = "client",
        "db.system.name" = "mysql",
        "db.operation.name" = "INSERT",
        "db.collection.name" = "notifications",
    )
}

async fn run(
    ctx: &NotifyContext,
    job: &ConsumeNotification,
    id: &TaskId<Ulid>,
    attempt: usize,
    last: bool,
) -> Result<NotifyOutcome, Failure> {
    let parsed = match parse(job) {
        Ok(p) => p,
        Err(poison) => {
            tracing::warn!(job_id = %id, topic = %job.topic, partition = job.partition, offset = job.offset,
                error = %poison, "poison message parked as a dead job");
            return Err(Failure::Poison(poison));
        }
    };
    tracing::Span::current().record("orderId", parsed.order_id);
    let new = NewNotification {
        event_id: &parsed.event_id,
        user_id: parsed.user_id,
        order_id: parsed.order_id,
        kind: parsed.kind.as_str(),
        message: &parsed.message,
    };
    match notifications::insert(&ctx.pool, &new)
        .instrument(insert_span())
        .await
    {
        Ok(true) => {
            if let Some(at) = parsed.occurred_at {
                let lag = (chrono::Utc::now() - at).num_milliseconds().max(0);
                metrics::histogram!("notification_lag_seconds").record(lag as f64 / 1e3);
            }
            tracing::info!(orderId = parsed.order_id, userId = parsed.user_id, eventId = %parsed.event_id, "notification created");
            Ok(NotifyOutcome::Created)
        }
        Ok(false) => Ok(NotifyOutcome::AlreadyNotified),
        Err(e) => {
            if !last {
                queue::retry_later(&ctx.pool, &ctx.settings, &id.to_string(), attempt)
                    .await
                    .map_err(|e| Failure::Db(e.into()))?;
            }
            Err(Failure::Db(e.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        event_id: Option<&str>,
        event_type: Option<&str>,
        payload: Option<&str>,
    ) -> ConsumeNotification {
        ConsumeNotification {
            topic: "ORDER_CREATED".into(),
            partition: 0,
            offset: 1,
            event_id: event_id.map(str::to_owned),
            event_type: event_type.map(str::to_owned),
            payload: payload.map(str::to_owned),
            traceparent: None,
            tracestate: None,
        }
    }

    const ID: &str = "0192f3a4-5b6c-7d8e-9f00-112233445566";

    #[test]
    fn a_well_formed_event_parses() {
        let p = parse(&job(
            Some(ID),
            Some("ORDER_CREATED"),
            Some(r#"{"orderId":7,"userId":3,"totalAmount":1299}"#),
        ))
        .unwrap();
        assert_eq!(
            (p.order_id, p.user_id, p.kind),
            (7, 3, EventType::OrderCreated)
        );
        assert!(p.message.contains('7') && p.message.contains("1299"));
    }

    #[test]
    fn poison_is_recognised() {
        assert_eq!(
            parse(&job(None, Some("ORDER_CREATED"), Some("{}"))).err(),
            Some(Poison::NoEventId)
        );
        assert_eq!(
            parse(&job(Some("not-a-uuid"), Some("ORDER_CREATED"), Some("{}"))).err(),
            Some(Poison::NoEventId)
        );
        assert!(matches!(
            parse(&job(Some(ID), Some("ORDER_SHIPPED"), Some("{}"))),
            Err(Poison::UnknownType(_))
        ));
        assert!(matches!(
            parse(&job(Some(ID), Some("ORDER_CREATED"), Some("not json"))),
            Err(Poison::BadPayload(_))
        ));
        assert!(matches!(
            parse(&job(Some(ID), Some("ORDER_CREATED"), None)),
            Err(Poison::BadPayload(_))
        ));
    }
}
