//! What deciding an order comes to, below everything that decides it (`create` → `committer`
//! → `batch`): why a request got no decision (`CreateError`), a refusal as it is stored under
//! its key and replayed, and the event an order's change publishes.

use serde_json::json;
use thiserror::Error;

use super::{admission::Refusal, model::Order};
use crate::{
    error::{ApiError, ErrorCode, FieldError},
    outbox::EventType,
};

/// The path whose standard error body a stored refusal is.
pub const PATH: &str = "/api/v1/orders";

#[derive(Debug, Error)]
pub enum CreateError {
    #[error("invalid order")]
    Invalid(Vec<FieldError>),
    #[error("the token's account no longer exists")]
    AccountGone,
    #[error("idempotency key reused with another request")]
    KeyReused,
    #[error("a request with this idempotency key is in flight")]
    KeyInProgress,
    #[error("the order committer has stopped")]
    Stopped,
    /// Not done, and never done later: nothing was stored and the key is free.
    #[error("the order was not done ({})", .0.label())]
    NotDone(Refusal),
    /// The request's batch was committing when its deadline came: it may have committed.
    #[error("the order's outcome was not known by its deadline")]
    OutcomeUnknown,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A refusal as it is stored under the key and replayed: the status and the standard error
/// body, made here once so that what the transaction stores is what the edge would send.
pub fn refusal(code: ErrorCode, message: String, details: Vec<FieldError>) -> (u16, String) {
    let mut err = ApiError::new(code, message);
    err.details = details;
    let body = serde_json::to_string(&err.body(PATH)).expect("error body serializes");
    (err.status().as_u16(), body)
}

/// What a consumer needs to act on the event without calling back.
pub fn event_payload(kind: EventType, user_id: i64, order: &Order) -> serde_json::Value {
    json!({
        "eventType": kind,
        "orderId": order.id,
        "userId": user_id,
        "status": order.status,
        "items": order.items,
        "totalAmount": order.total_amount,
        "createdAt": order.created_at,
        "occurredAt": order.updated_at,
    })
}
