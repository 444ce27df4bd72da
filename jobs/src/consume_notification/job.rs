//! The consume-notification job: its queue, its payload (the events the consumer received)
//! and its push.

use apalis::prelude::BoxDynError;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::engine::{
    queue::{self, JobKind, Pushed, QueueSettings},
    trace::TraceContext,
};

pub const CONSUME_NOTIFICATION: &str = "consume-notification";

/// One Kafka message for the notification pipeline, as received (validated by the handler,
/// so that a poison message becomes a dead job instead of blocking its partition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedEvent {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub payload: Option<String>,
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
}

impl ReceivedEvent {
    pub fn trace(&self) -> TraceContext {
        TraceContext {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }

    /// The event id, when it is one (a UUID): what deduplicates a redelivered event.
    pub fn valid_event_id(&self) -> Option<&str> {
        self.event_id
            .as_deref()
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
    }
}

/// A consume-notification job: the well-formed events the consumer received together, or
/// one poison message (each is a dead job of its own, for an operator to look at). Carrying
/// the batch makes one job — one push, fetch, transaction and acknowledgement — serve many
/// events: one job per event cost five commits per event and fell behind the orders
/// (docs/adr/0010-notification-batches.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ConsumeNotificationWire")]
pub struct ConsumeNotification {
    pub events: Vec<ReceivedEvent>,
}

/// Jobs queued before batches carried one message as the whole payload.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConsumeNotificationWire {
    Batch { events: Vec<ReceivedEvent> },
    One(ReceivedEvent),
}

impl From<ConsumeNotificationWire> for ConsumeNotification {
    fn from(wire: ConsumeNotificationWire) -> Self {
        match wire {
            ConsumeNotificationWire::Batch { events } => Self { events },
            ConsumeNotificationWire::One(event) => Self {
                events: vec![event],
            },
        }
    }
}

impl ConsumeNotification {
    /// The job's idempotency key, so that a redelivered batch does not even make a second
    /// job: the event id of a single event, a name-based UUID of a batch's sorted event ids.
    /// None when an event has no valid id (poison: nothing to deduplicate it by).
    pub fn idempotency_key(&self) -> Option<String> {
        let ids: Option<Vec<&str>> = self.events.iter().map(|e| e.valid_event_id()).collect();
        match ids?.as_mut_slice() {
            [] => None,
            [one] => Some((*one).to_owned()),
            many => {
                many.sort_unstable();
                let name = many.join(",");
                Some(uuid::Uuid::new_v5(&BATCH_KEY_NAMESPACE, name.as_bytes()).to_string())
            }
        }
    }
}

/// The namespace of batch idempotency keys (any fixed UUID; event ids are v7, never v5).
const BATCH_KEY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_7700_6e6f_7469_6679);

impl JobKind for ConsumeNotification {
    const QUEUE: &'static str = CONSUME_NOTIFICATION;

    fn idempotency_key(&self) -> Option<String> {
        ConsumeNotification::idempotency_key(self)
    }
}

/// Pushes received events as one job, under its idempotency key.
pub async fn push_notification(
    pool: &MySqlPool,
    settings: &QueueSettings,
    job: ConsumeNotification,
) -> Result<Pushed, BoxDynError> {
    queue::push(pool, settings, job).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_id: Option<&str>) -> ReceivedEvent {
        ReceivedEvent {
            topic: "ORDER_CREATED".into(),
            partition: 0,
            offset: 3,
            event_id: event_id.map(str::to_owned),
            event_type: Some("ORDER_CREATED".into()),
            payload: Some("{}".into()),
            traceparent: None,
            tracestate: None,
        }
    }

    const A: &str = "0192f3a4-5b6c-7d8e-9f00-11223344556a";
    const B: &str = "0192f3a4-5b6c-7d8e-9f00-11223344556b";

    #[test]
    fn a_job_queued_with_one_message_as_its_payload_still_reads() {
        let one = serde_json::to_string(&event(Some(A))).unwrap();
        let job: ConsumeNotification = serde_json::from_str(&one).unwrap();
        assert_eq!(job.events, [event(Some(A))]);
        let batch = serde_json::to_string(&ConsumeNotification {
            events: vec![event(Some(A)), event(Some(B))],
        })
        .unwrap();
        let job: ConsumeNotification = serde_json::from_str(&batch).unwrap();
        assert_eq!(job.events.len(), 2);
    }

    #[test]
    fn a_batch_key_is_the_same_for_the_same_events_in_any_order() {
        let job = |ids: &[&str]| ConsumeNotification {
            events: ids.iter().map(|id| event(Some(id))).collect(),
        };
        assert_eq!(job(&[A]).idempotency_key().as_deref(), Some(A));
        let ab = job(&[A, B]).idempotency_key().unwrap();
        assert_eq!(job(&[B, A]).idempotency_key().unwrap(), ab);
        assert_ne!(ab, A);
        assert_ne!(ab, B);
        assert!(ab.len() <= 36, "fits jobs.idempotency_key");
        let poison = ConsumeNotification {
            events: vec![event(None)],
        };
        assert_eq!(poison.idempotency_key(), None);
    }
}
