//! What a failed publish means for its rows (docs/adr/0015-publish-retry-policy.md).
//!
//! A failure Kafka may get over by itself (broker unreachable, delivery timed out, a leader
//! moving, a full local queue) is *transient*: the rows stay NEW and the job is tried again
//! with the capped backoff, for as long as `window` since the rows' first failure, however
//! many attempts that takes. A failure no retry can fix (the message is too large, the
//! producer is not authorized, the broker refuses the record) is *permanent*: the rows it
//! concerns become DEAD at once, under the job that is then dead, so an operator's retry of
//! that job revives exactly them. So do the rows still failing at the end of the window.

use std::time::Duration;

use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

/// Attempts a publish job is pushed with. The window, not a count, ends a job's retries;
/// this only keeps apalis (which kills a job at `max_attempts`) out of the decision.
pub const PUBLISH_MAX_ATTEMPTS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long a row keeps being retried after its first failed attempt
    /// (`PUBLISH_RETRY_WINDOW_SECS`).
    pub window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(24 * 3600),
        }
    }
}

/// Whether retrying cannot deliver this record: the broker (or librdkafka, before sending)
/// refused the record itself, or the client is not allowed to write. Everything else —
/// timeouts, transport failures, no leader, a full queue, an unknown topic that may yet be
/// created — passes with time.
pub fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    match error {
        KafkaError::MessageProduction(code) => matches!(
            code,
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::BadMessage
                | C::InvalidRecord
                | C::InvalidTopic
                | C::InvalidRequiredAcks
                | C::UnsupportedForMessageFormat
                | C::PolicyViolation
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::InvalidArgument
        ),
        // A record that could not even be built (e.g. an interior NUL in a header).
        KafkaError::Nul(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_transient_and_a_refused_record_is_permanent() {
        use RDKafkaErrorCode as C;
        for transient in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::RequestTimedOut,
            C::QueueFull,
            C::NotEnoughReplicas,
            C::UnknownTopic,
        ] {
            assert!(
                !is_permanent(&KafkaError::MessageProduction(transient)),
                "{transient:?}"
            );
        }
        for permanent in [
            C::MessageSizeTooLarge,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::InvalidRecord,
        ] {
            assert!(
                is_permanent(&KafkaError::MessageProduction(permanent)),
                "{permanent:?}"
            );
        }
        assert!(!is_permanent(&KafkaError::Canceled));
        // A record that cannot be built (a NUL inside a header) is refused however often.
        let nul = std::ffi::CString::new("a\0b").unwrap_err();
        assert!(is_permanent(&KafkaError::Nul(nul)));
    }
}
