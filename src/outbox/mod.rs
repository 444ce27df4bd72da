//! The transactional outbox: an event row written in the same transaction as the change it
//! describes, so an event exists if and only if the change committed. The publish-outbox
//! job takes it from there to Kafka.

use serde::Serialize;
use sqlx::MySqlConnection;
use uuid::Uuid;

pub const AGGREGATE_ORDER: &str = "ORDER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    OrderCreated,
    OrderCancelled,
}

impl EventType {
    /// Also the Kafka topic name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "ORDER_CREATED",
            EventType::OrderCancelled => "ORDER_CANCELLED",
        }
    }
}

/// W3C trace context to carry with the event.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Appends a NEW event; returns its event id.
pub async fn append(
    conn: &mut MySqlConnection,
    event_type: EventType,
    aggregate_id: i64,
    payload: &serde_json::Value,
    trace: &TraceContext,
) -> Result<Uuid, sqlx::Error> {
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_events \
         (event_id, aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event_id.to_string())
    .bind(AGGREGATE_ORDER)
    .bind(aggregate_id)
    .bind(event_type.as_str())
    .bind(payload.to_string())
    .bind(&trace.traceparent)
    .bind(&trace.tracestate)
    .execute(conn)
    .await?;
    Ok(event_id)
}

impl TraceContext {
    /// The incoming W3C `traceparent` (and `tracestate`) if well-formed; anything else is
    /// dropped rather than propagated into Kafka headers.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| is_valid_traceparent(v))
            .map(str::to_owned);
        let tracestate = traceparent.as_ref().and_then(|_| {
            headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 512 && v.bytes().all(|b| (0x20..=0x7e).contains(&b)))
                .map(str::to_owned)
        });
        Self {
            traceparent,
            tracestate,
        }
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero.
pub fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        assert!(is_valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent("garbage"));
    }
}
