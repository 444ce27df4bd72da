//! Cancel (owner) and complete (admin). The order row is locked for the change, so a cancel
//! sent twice or concurrently restores stock once: the second sees CANCELLED and changes
//! nothing. Repeating a transition that already happened answers with the order as it is.

use chrono::{SubsecRound, Utc};
use orderflow_jobs::{engine::queue, publish_outbox::publish_batch::PublishBatcher};
use sqlx::MySqlPool;
use thiserror::Error;

use super::{
    ids::{OrderId, OwnerId},
    model::{Order, OrderStatus},
    outcome::event_payload,
    repo,
};
use crate::{
    catalog::stock,
    error::{ApiError, ErrorCode},
    outbox::{self, EventType, TraceContext},
};

#[derive(Debug, Error)]
pub enum TransitionError {
    #[error("order not found")]
    NotFound,
    #[error("a {from:?} order cannot become {to:?}")]
    InvalidState { from: OrderStatus, to: OrderStatus },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::NotFound => ApiError::not_found("order"),
            TransitionError::InvalidState { from, to } => ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "an order in status {} cannot become {}",
                    from.as_str(),
                    to.as_str()
                ),
            ),
            TransitionError::Db(e) => e.into(),
        }
    }
}

/// Result of a transition: the order after it, and the products whose stock changed.
pub struct Transitioned {
    pub order: Order,
    pub restocked: Vec<i64>,
}

/// The first half of every transition, under the order's row lock: `Already` if the order is
/// in the target state (repeating a transition changes nothing), `Moved` once CREATED has
/// become `to`, and INVALID_STATE for anything else.
enum Step {
    Already(Order),
    Moved { user_id: i64, order: Order },
}

async fn begin_transition(
    tx: &mut sqlx::MySqlConnection,
    order_id: OrderId,
    owner: Option<OwnerId>,
    to: OrderStatus,
) -> Result<Step, TransitionError> {
    let (user_id, mut order) = repo::lock(tx, order_id, owner)
        .await?
        .ok_or(TransitionError::NotFound)?;
    if order.status == to {
        return Ok(Step::Already(order));
    }
    if order.status != OrderStatus::Created {
        return Err(TransitionError::InvalidState {
            from: order.status,
            to,
        });
    }
    let now = Utc::now().trunc_subsecs(6);
    repo::transition(tx, order_id, OrderStatus::Created, to, now).await?;
    order.status = to;
    order.updated_at = now;
    Ok(Step::Moved { user_id, order })
}

pub async fn cancel(
    pool: &MySqlPool,
    publisher: &PublishBatcher,
    owner: OwnerId,
    order_id: OrderId,
    trace: &TraceContext,
) -> Result<Transitioned, TransitionError> {
    let mut tx = pool.begin().await?;
    let (user_id, order) =
        match begin_transition(&mut tx, order_id, Some(owner), OrderStatus::Cancelled).await? {
            Step::Already(order) => {
                return Ok(Transitioned {
                    order,
                    restocked: vec![],
                })
            }
            Step::Moved { user_id, order } => (user_id, order),
        };
    let mut items = order.items.clone();
    items.sort_by_key(|it| it.product_id);
    for it in &items {
        stock::restore(&mut tx, it.product_id, it.quantity).await?;
    }
    let event = outbox::append(
        &mut tx,
        EventType::OrderCancelled,
        order_id.0,
        &event_payload(EventType::OrderCancelled, user_id, &order),
        &TraceContext::current_or(trace),
        &queue::new_job_id(),
    )
    .await?;
    tx.commit().await?;
    publisher.enqueue(event);
    Ok(Transitioned {
        restocked: items.iter().map(|it| it.product_id).collect(),
        order,
    })
}

pub async fn complete(pool: &MySqlPool, order_id: OrderId) -> Result<Order, TransitionError> {
    let mut tx = pool.begin().await?;
    match begin_transition(&mut tx, order_id, None, OrderStatus::Completed).await? {
        Step::Already(order) => Ok(order),
        Step::Moved { order, .. } => {
            tx.commit().await?;
            Ok(order)
        }
    }
}
