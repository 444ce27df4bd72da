//! consume-notification: turns each ORDER_* event of a job into one notification, the whole
//! job in one transaction. A malformed message is refused for good (`AbortError`: the job is
//! dead at once, the partition moves on; the consumer gives each one a job of its own); a
//! database failure is retried with backoff; a redelivered event finds its notification
//! already there and changes nothing.

use std::{sync::Arc, time::Instant};

use apalis::prelude::{AbortError, Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use tracing::{Instrument, Span};
use ulid::Ulid;

use crate::{
    consume_notification::{
        job::{ConsumeNotification, ReceivedEvent, CONSUME_NOTIFICATION},
        notifications::{self, NewNotification},
    },
    engine::{
        attempts,
        queue::{self, QueueSettings},
        trace::{self, Outcome},
    },
    publish_outbox::outbox::EventType,
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

/// What a job did (its `last_result`).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Notified {
    pub created: usize,
    /// Redelivered events, whose notification was already there.
    pub already_notified: usize,
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

/// The refusal of a job's poison messages (the job's `last_result` when it is dead).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl Refused {
    fn of(poison: &[&Poison]) -> Self {
        let reasons: Vec<String> = poison.iter().map(ToString::to_string).collect();
        Refused(reasons.join("; "))
    }
}

pub struct Parsed {
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub event_id: String,
    pub kind: EventType,
    pub user_id: i64,
    pub order_id: i64,
    pub message: String,
}

pub fn parse(event: &ReceivedEvent) -> Result<Parsed, Poison> {
    let event_id = event.valid_event_id().ok_or(Poison::NoEventId)?;
    let kind = event
        .event_type
        .as_deref()
        .and_then(EventType::parse)
        .ok_or_else(|| Poison::UnknownType(event.event_type.clone()))?;
    let order: OrderEvent = serde_json::from_str(event.payload.as_deref().unwrap_or(""))
        .map_err(|e| Poison::BadPayload(e.to_string()))?;
    let message = match kind {
        EventType::OrderCreated => format!(
            "Your order {} was placed (total {}).",
            order.order_id,
            order.total_amount.unwrap_or_default()
        ),
        EventType::OrderCancelled => format!("Your order {} was cancelled.", order.order_id),
    };
    Ok(Parsed {
        occurred_at: order.occurred_at,
        event_id: event_id.to_owned(),
        kind,
        user_id: order.user_id,
        order_id: order.order_id,
        message,
    })
}

/// One event of a job run, with the span that continues its own trace: a batch does not
/// merge the traces of the orders it serves, each still runs down to its notification.
struct Event<'a> {
    received: &'a ReceivedEvent,
    parsed: Result<Parsed, Poison>,
    span: Span,
}

pub async fn handle(
    job: ConsumeNotification,
    ctx: Data<Arc<NotifyContext>>,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<Notified, BoxDynError> {
    let attempt = attempt.current();
    let last = attempts::is_last_attempt(attempt, task.max_attempts());
    let job_id = id.to_string();
    let started = Instant::now();
    let events: Vec<Event> = job
        .events
        .iter()
        .map(|received| Event {
            received,
            parsed: parse(received),
            span: trace::job_span(CONSUME_NOTIFICATION, &job_id, attempt, &received.trace()),
        })
        .collect();
    let result = run(&ctx, &events, &job_id, attempt, last).await;
    let db_outcome = match &result {
        Err(Failure::Db(_)) if last => Outcome::Dead,
        Err(Failure::Db(_)) => Outcome::Retry,
        _ => Outcome::Done,
    };
    for event in &events {
        let outcome = if event.parsed.is_err() {
            Outcome::Dead
        } else {
            db_outcome
        };
        trace::record_outcome(&event.span, outcome);
    }
    let outcome = match &result {
        Ok(_) => Outcome::Done,
        Err(Failure::Poison(_)) => Outcome::Dead,
        Err(Failure::Db(_)) => db_outcome,
    };
    trace::count_job(CONSUME_NOTIFICATION, started, outcome);
    result.map_err(|f| match f {
        Failure::Poison(refused) => AbortError::new(refused).into(),
        Failure::Db(e) => e,
    })
}

enum Failure {
    /// Never retried: the job is dead at once (after its well-formed events are stored).
    Poison(Refused),
    Db(BoxDynError),
}

/// The INSERT of one event's notification, as a client span of the database.
fn insert_span(event: &Span) -> Span {
    tracing::info_span!(
        parent: event,
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
    events: &[Event<'_>],
    job_id: &str,
    attempt: usize,
    last: bool,
) -> Result<Notified, Failure> {
    let mut good = Vec::with_capacity(events.len());
    let mut poison = Vec::new();
    for event in events {
        match &event.parsed {
            Ok(parsed) => {
                event.span.record("orderId", parsed.order_id);
                good.push((event, parsed));
            }
            Err(refused) => {
                let r = event.received;
                // In scope, not `parent:`: the JSON log lists the entered spans only.
                event.span.in_scope(|| {
                    tracing::warn!(job_id, topic = %r.topic, partition = r.partition,
                        offset = r.offset, error = %refused, "poison message parked as a dead job");
                });
                poison.push(refused);
            }
        }
    }
    // In one order, so that two runs holding the same events (a retried job fetched twice)
    // wait for each other's row locks instead of deadlocking.
    good.sort_by(|a, b| a.1.event_id.cmp(&b.1.event_id));
    let created = match insert_all(&ctx.pool, &good).await {
        Ok(created) => created,
        Err(e) => {
            if !last {
                queue::retry_later(&ctx.pool, &ctx.settings, job_id, attempt)
                    .await
                    .map_err(|e| Failure::Db(e.into()))?;
            }
            return Err(Failure::Db(e.into()));
        }
    };
    let mut notified = Notified::default();
    for ((event, parsed), new) in good.iter().zip(created) {
        if !new {
            notified.already_notified += 1;
            continue;
        }
        notified.created += 1;
        if let Some(at) = parsed.occurred_at {
            let lag = (chrono::Utc::now() - at).num_milliseconds().max(0);
            metrics::histogram!("notification_lag_seconds").record(lag as f64 / 1e3);
        }
        event.span.in_scope(|| {
            tracing::info!(orderId = parsed.order_id, userId = parsed.user_id,
                eventId = %parsed.event_id, "notification created");
        });
    }
    if poison.is_empty() {
        Ok(notified)
    } else {
        Err(Failure::Poison(Refused::of(&poison)))
    }
}

/// Inserts the events' notifications in one transaction; for each, whether it is new.
async fn insert_all(
    pool: &MySqlPool,
    events: &[(&Event<'_>, &Parsed)],
) -> Result<Vec<bool>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<NewNotification> = events
        .iter()
        .map(|(_, parsed)| NewNotification {
            event_id: &parsed.event_id,
            user_id: parsed.user_id,
            order_id: parsed.order_id,
            kind: parsed.kind.as_str(),
            message: &parsed.message,
        })
        .collect();
    // Each event keeps its own INSERT span, open while the statement that writes its row runs.
    let spans: Vec<Span> = events
        .iter()
        .map(|(event, _)| insert_span(&event.span))
        .collect();
    let mut tx = pool.begin().await?;
    // One statement for the job's events; if one of them already has its notification (a
    // redelivery), that statement is undone and each is inserted on its own, which tells
    // the new ones from the others.
    let created = match notifications::insert_many(&mut tx, &rows)
        .instrument(spans[0].clone())
        .await
    {
        Ok(()) => vec![true; rows.len()],
        Err(e) if crate::is_unique_violation(&e) => {
            let mut created = Vec::with_capacity(rows.len());
            for (new, span) in rows.iter().zip(&spans) {
                let insert = notifications::insert(&mut *tx, new).instrument(span.clone());
                created.push(insert.await?);
            }
            created
        }
        Err(e) => return Err(e),
    };
    drop(spans);
    tx.commit().await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        event_id: Option<&str>,
        event_type: Option<&str>,
        payload: Option<&str>,
    ) -> ReceivedEvent {
        ReceivedEvent {
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
