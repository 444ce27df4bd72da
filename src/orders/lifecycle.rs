//! Cancel (owner) and complete (admin). The order row is locked for the change, so a cancel
//! sent twice or concurrently restores stock once: the second sees CANCELLED and changes
//! nothing. Repeating a transition that already happened answers with the order as it is.

use chrono::{SubsecRound, Utc};
use orderflow_jobs::queue::{self, QueueSettings};
use sqlx::MySqlPool;
use thiserror::Error;

use super::{
    create::{enqueue_publish, event_payload},
    model::{Order, OrderStatus},
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

pub async fn cancel(
    pool: &MySqlPool,
    queue_settings: &QueueSettings,
    owner: i64,
    order_id: i64,
    trace: &TraceContext,
) -> Result<Transitioned, TransitionError> {
    let mut tx = pool.begin().await?;
    let (user_id, mut order) = repo::lock(&mut tx, order_id, Some(owner))
        .await?
        .ok_or(TransitionError::NotFound)?;
    match order.status {
        OrderStatus::Cancelled => {
            return Ok(Transitioned {
                order,
                restocked: vec![],
            })
        }
        OrderStatus::Completed => {
            return Err(TransitionError::InvalidState {
                from: OrderStatus::Completed,
                to: OrderStatus::Cancelled,
            })
        }
        OrderStatus::Created => {}
    }
    let now = Utc::now().trunc_subsecs(6);
    repo::transition(
        &mut tx,
        order_id,
        OrderStatus::Created,
        OrderStatus::Cancelled,
        now,
    )
    .await?;
    let mut items = order.items.clone();
    items.sort_by_key(|it| it.product_id);
    for it in &items {
        stock::restore(&mut tx, it.product_id, it.quantity).await?;
    }
    order.status = OrderStatus::Cancelled;
    order.updated_at = now;
    let event = outbox::append(
        &mut tx,
        EventType::OrderCancelled,
        order_id,
        &event_payload(EventType::OrderCancelled, user_id, &order),
        trace,
        &queue::new_job_id(),
    )
    .await?;
    tx.commit().await?;
    enqueue_publish(pool, queue_settings, &event, trace).await;
    Ok(Transitioned {
        restocked: items.iter().map(|it| it.product_id).collect(),
        order,
    })
}

pub async fn complete(pool: &MySqlPool, order_id: i64) -> Result<Order, TransitionError> {
    let mut tx = pool.begin().await?;
    let (_, mut order) = repo::lock(&mut tx, order_id, None)
        .await?
        .ok_or(TransitionError::NotFound)?;
    match order.status {
        OrderStatus::Completed => return Ok(order),
        OrderStatus::Cancelled => {
            return Err(TransitionError::InvalidState {
                from: OrderStatus::Cancelled,
                to: OrderStatus::Completed,
            })
        }
        OrderStatus::Created => {}
    }
    let now = Utc::now().trunc_subsecs(6);
    repo::transition(
        &mut tx,
        order_id,
        OrderStatus::Created,
        OrderStatus::Completed,
        now,
    )
    .await?;
    tx.commit().await?;
    order.status = OrderStatus::Completed;
    order.updated_at = now;
    Ok(order)
}
