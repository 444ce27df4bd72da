//! The consume-notification jobs that carry given events, for operators' searches.
//!
//! Nothing records which job carried an event (that would be a write per event on the happy
//! path). A job of one event has the event id as its idempotency key (an index lookup); a
//! batch job is found by the event id in its payload, scanning only the jobs queued since
//! the event was made: an event id is a UUIDv7, whose first 48 bits are its time, and a job's
//! ULID starts with the time it was queued.
//!
//! An operator's action on some of a batch's events splits them from the others (`part`).

use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

use super::job::{ConsumeNotification, CONSUME_NOTIFICATION};

/// Clocks of the replica that wrote the event and of the one that queued its job may differ.
const CLOCK_SKEW_MS: u64 = 60_000;

/// The millisecond a UUIDv7 was made (None for other versions).
fn made_at_ms(id: &Uuid) -> Option<u64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos / 1_000_000))
}

/// The consume-notification jobs (at most `limit`) carrying any of `events`.
pub async fn carrying<'c>(
    db: impl MySqlExecutor<'c>,
    events: &[Uuid],
    limit: usize,
) -> Result<Vec<String>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::new("SELECT id FROM jobs WHERE job_type = ");
    q.push_bind(CONSUME_NOTIFICATION)
        .push(" AND (idempotency_key IN (");
    let mut sep = q.separated(", ");
    for e in events {
        sep.push_bind(e.to_string());
    }
    q.push(")");
    let earliest = events.iter().filter_map(made_at_ms).min();
    if let Some(ms) = earliest {
        let floor = ulid::Ulid::from_parts(ms.saturating_sub(CLOCK_SKEW_MS), 0).to_string();
        q.push(" OR (id >= ").push_bind(floor).push(" AND (");
        let mut sep = q.separated(" OR ");
        for e in events {
            sep.push("LOCATE(")
                .push_bind_unseparated(e.to_string())
                .push_unseparated(", job) > 0");
        }
        q.push("))");
    }
    q.push(") ORDER BY id LIMIT ").push_bind(limit as i64);
    q.build_query_scalar().fetch_all(db).await
}

/// A notification job's events in two: those an operator selected, and the others.
#[derive(Debug, PartialEq, Eq)]
pub struct Parted {
    pub selected: ConsumeNotification,
    pub others: ConsumeNotification,
}

/// Parts a job's payload by event id (`None`: not a notification job's payload). A message
/// without a valid event id is never selected.
pub fn part(payload: &[u8], selected: &[String]) -> Option<Parted> {
    let job: ConsumeNotification = serde_json::from_slice(payload).ok()?;
    let (taken, kept) = job.events.into_iter().partition(|e| {
        e.valid_event_id()
            .is_some_and(|id| selected.iter().any(|s| s == id))
    });
    Some(Parted {
        selected: ConsumeNotification { events: taken },
        others: ConsumeNotification { events: kept },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_of_a_v7_event_id_is_read_and_other_versions_have_none() {
        let id = Uuid::now_v7();
        let now = chrono::Utc::now().timestamp_millis() as u64;
        let at = made_at_ms(&id).unwrap();
        assert!(at <= now && now - at < 60_000);
        assert_eq!(made_at_ms(&Uuid::new_v4()), None);
    }

    fn event(id: Option<&str>) -> crate::consume_notification::job::ReceivedEvent {
        crate::consume_notification::job::ReceivedEvent {
            topic: "ORDER_CREATED".into(),
            partition: 0,
            offset: 1,
            event_id: id.map(str::to_owned),
            event_type: Some("ORDER_CREATED".into()),
            payload: Some("{}".into()),
            traceparent: None,
            tracestate: None,
        }
    }

    #[test]
    fn a_batch_is_parted_by_event_id_and_a_message_without_one_stays() {
        let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        let job = ConsumeNotification {
            events: vec![event(Some(&a)), event(None), event(Some(&b))],
        };
        let parted = part(&serde_json::to_vec(&job).unwrap(), std::slice::from_ref(&b)).unwrap();
        assert_eq!(parted.selected.events, [event(Some(&b))]);
        assert_eq!(parted.others.events, [event(Some(&a)), event(None)]);
        assert_eq!(part(b"not json", &[a]), None);
    }
}
