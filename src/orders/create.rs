//! POST /orders, as the request sees it: its validated order goes to the committer, which
//! decides it with the requests that arrived with it and commits them in one transaction
//! (`committer`, `batch`): the idempotency record with the first outcome, the stock, the order
//! with its items and its ORDER_CREATED outbox row. Either all of it commits or none of it.

use tracing::Instrument;

use super::{
    batch::{BatchError, Decision, Pending},
    committer::OrderCommitter,
    model::Line,
    outcome::CreateError,
};
use crate::{
    auth,
    error::{ApiError, ErrorCode},
    idempotency::{Fingerprint, IdempotencyKey, StoredResponse},
    outbox::TraceContext,
    telemetry::names,
};

/// The response to send: the first outcome, fresh or replayed.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
    pub order_id: Option<i64>,
}

impl From<BatchError> for CreateError {
    fn from(e: BatchError) -> Self {
        match e {
            // Held by another replica's request beyond the wait bound, or committed by it
            // again and again while this one was being decided: it is in flight elsewhere.
            BatchError::KeyInFlight | BatchError::KeyTaken => CreateError::KeyInProgress,
            BatchError::Db(e) => CreateError::Db(e),
            BatchError::InDoubt(_) => CreateError::OutcomeUnknown,
        }
    }
}

/// Seconds a client told "not done" or "outcome unknown" should wait before it retries.
const RETRY_AFTER_SECS: u64 = 1;

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Invalid(details) => ApiError::validation(details),
            CreateError::AccountGone => auth::account_gone(),
            CreateError::KeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body",
            ),
            CreateError::KeyInProgress => ApiError::new(
                ErrorCode::IdempotencyKeyInProgress,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ),
            CreateError::Stopped => ApiError::unavailable().with_retry_after(RETRY_AFTER_SECS),
            CreateError::NotDone(refusal) => {
                ApiError::new(ErrorCode::ServiceUnavailable, refusal.message())
                    .with_retry_after(RETRY_AFTER_SECS)
            }
            CreateError::OutcomeUnknown => ApiError::new(
                ErrorCode::OrderOutcomeUnknown,
                "the order may or may not have been created; send the same request with the \
                 same Idempotency-Key to learn its outcome",
            )
            .with_retry_after(RETRY_AFTER_SECS),
            CreateError::Db(e) => e.into(),
        }
    }
}

/// One POST /orders as the edge parsed it.
pub struct OrderRequest<'a> {
    pub user_id: i64,
    pub key: &'a IdempotencyKey,
    pub fingerprint: &'a Fingerprint,
    pub lines: &'a [Line],
    /// The caller's trace context: stored with the event when no span of ours is recorded.
    pub trace: &'a TraceContext,
}

fn replay(stored: StoredResponse, fingerprint: &Fingerprint) -> Result<Reply, CreateError> {
    if !fingerprint.matches(&stored.request_fingerprint) {
        return Err(CreateError::KeyReused);
    }
    match (stored.response_status, stored.response_body) {
        (Some(status), Some(body)) => {
            metrics::counter!(names::IDEMPOTENT_REPLAYS).increment(1);
            Ok(Reply {
                status: status as u16,
                body,
                replayed: true,
                order_id: None,
            })
        }
        _ => Err(CreateError::KeyInProgress),
    }
}

pub async fn create(
    committer: &OrderCommitter,
    order: OrderRequest<'_>,
) -> Result<Reply, CreateError> {
    let span = transaction_span();
    // The event continues the trace from this order's own transaction span.
    let trace = TraceContext::of_span(&span).unwrap_or_else(|| order.trace.clone());
    let pending = Pending {
        user_id: order.user_id,
        key: order.key.as_str().to_owned(),
        fingerprint: order.fingerprint.clone(),
        lines: order.lines.to_vec(),
        trace,
    };
    let committed = committer.submit(pending).instrument(span.clone()).await?;
    span.record("orderflow.batch.size", committed.batch_size);
    span.record("orderflow.attempt", committed.attempts);
    match committed.decision {
        Decision::Created { order_id, body } => Ok(Reply {
            status: 201,
            body,
            replayed: false,
            order_id: Some(order_id),
        }),
        Decision::OutOfStock { body } => Ok(Reply {
            status: 409,
            body,
            replayed: false,
            order_id: None,
        }),
        Decision::Stored(stored) => replay(stored, order.fingerprint),
        Decision::AccountGone => Err(CreateError::AccountGone),
        Decision::Invalid(details) => Err(CreateError::Invalid(details)),
    }
}

/// The client span of this order's part of the transaction that commits it (one transaction
/// may commit several orders, each with a span of its own in its own trace).
fn transaction_span() -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        otel.name = "TRANSACTION create_order",
        otel.kind = "client",
        "db.system.name" = "mysql",
        "db.operation.name" = "TRANSACTION",
        "db.query.summary" = "create_order",
        "orderflow.attempt" = tracing::field::Empty,
        "orderflow.batch.size" = tracing::field::Empty,
    )
}
