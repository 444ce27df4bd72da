//! The transactional outbox, as the HTTP side sees it: the table and its SQL live in
//! `orderflow_jobs::publish_outbox::outbox` (shared with the publish-outbox job); this module adds what
//! belongs to the request: reading the W3C trace context from its headers.

pub use orderflow_jobs::publish_outbox::outbox::{
    append, push_append, Appended, EventType, NewEvent, TraceContext,
};

/// The incoming W3C `traceparent` (and `tracestate`) if well-formed; anything else is
/// dropped rather than propagated into Kafka headers.
pub fn trace_context(headers: &axum::http::HeaderMap) -> TraceContext {
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
    TraceContext {
        traceparent,
        tracestate,
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
