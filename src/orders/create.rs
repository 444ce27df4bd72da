//! POST /orders: one transaction holds the idempotency record, the stock decrements, the
//! order with its items, the ORDER_CREATED outbox row and the stored response. Either all
//! of it commits or none of it does.

use chrono::{SubsecRound, Utc};
use orderflow_jobs::{publish_batch::PublishBatcher, queue};
use serde_json::json;
use sqlx::{Connection, MySqlPool};
use thiserror::Error;
use tracing::Instrument;

use super::{
    model::{Line, Order, OrderItem, OrderStatus},
    repo,
};
use crate::{
    catalog::stock::{self, Take},
    config::{IdempotencyConfig, StockRetry},
    db,
    error::{ApiError, ErrorCode, FieldError},
    idempotency::{self, Claim, StoredResponse},
    outbox::{self, Appended, EventType, TraceContext},
    telemetry::names,
};

pub const PATH: &str = "/api/v1/orders";
const DEADLOCK_RETRIES: u32 = 3;

/// The response to send: the first outcome, fresh or replayed.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
    pub order_id: Option<i64>,
    /// The outbox row this request committed, to hand to publish-outbox.
    pub event: Option<Appended>,
}

#[derive(Debug, Error)]
pub enum CreateError {
    #[error("invalid order")]
    Invalid(Vec<FieldError>),
    #[error("idempotency key reused with another request")]
    KeyReused,
    #[error("a request with this idempotency key is in flight")]
    KeyInProgress,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Invalid(details) => ApiError::validation(details),
            CreateError::KeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body",
            ),
            CreateError::KeyInProgress => ApiError::new(
                ErrorCode::IdempotencyKeyInProgress,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ),
            CreateError::Db(e) => e.into(),
        }
    }
}

pub struct NewOrder<'a> {
    pub user_id: i64,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub lines: &'a [Line],
    /// The caller's trace context: stored with the event when no span of ours is recorded.
    pub trace: &'a TraceContext,
}

pub struct Settings {
    pub idempotency: IdempotencyConfig,
    pub stock_retry: StockRetry,
    pub publisher: PublishBatcher,
}

fn replay(stored: StoredResponse, fingerprint: &str) -> Result<Reply, CreateError> {
    if stored.request_fingerprint != fingerprint {
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
                event: None,
            })
        }
        _ => Err(CreateError::KeyInProgress),
    }
}

pub async fn create(
    pool: &MySqlPool,
    order: NewOrder<'_>,
    settings: &Settings,
) -> Result<Reply, CreateError> {
    // Fast path for retries of a settled key: no transaction, no locks.
    if let Some(stored) = idempotency::find(pool, order.user_id, order.key).await? {
        if !stored.expired {
            return replay(stored, order.fingerprint);
        }
        idempotency::delete_expired(pool, order.user_id, order.key).await?;
    }
    let mut attempt = 1;
    loop {
        match try_create(pool, &order, settings)
            .instrument(transaction_span(attempt))
            .await
        {
            Ok(Some(reply)) => {
                if let Some(event) = &reply.event {
                    settings.publisher.enqueue(event.clone());
                }
                return Ok(reply);
            }
            // Another request holds or committed the key: show what it committed.
            Ok(None) => {
                return match idempotency::find(pool, order.user_id, order.key).await? {
                    Some(stored) => replay(stored, order.fingerprint),
                    None => Err(CreateError::KeyInProgress),
                };
            }
            // InnoDB rolled the whole transaction back; nothing was written, so run it again.
            Err(CreateError::Db(e)) if db::is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, "order transaction deadlocked; retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The client span of the order transaction; the event stored in it continues from here.
fn transaction_span(attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        otel.name = "TRANSACTION create_order",
        otel.kind = "client",
        "db.system.name" = "mysql",
        "db.operation.name" = "TRANSACTION",
        "db.query.summary" = "create_order",
        "orderflow.attempt" = attempt,
    )
}

fn refusal(code: ErrorCode, message: String, details: Vec<FieldError>) -> (u16, String) {
    let mut err = ApiError::new(code, message);
    err.details = details;
    let body = serde_json::to_string(&err.body(PATH)).expect("error body serializes");
    (err.status().as_u16(), body)
}

/// One attempt. `Ok(None)`: the key is taken by another request.
async fn try_create(
    pool: &MySqlPool,
    order: &NewOrder<'_>,
    settings: &Settings,
) -> Result<Option<Reply>, CreateError> {
    let mut tx = pool.begin().await?;
    let claim = idempotency::insert(
        &mut tx,
        order.user_id,
        order.key,
        order.fingerprint,
        settings.idempotency.retention,
    )
    .await?;
    let Claim::Claimed(record_id) = claim else {
        tx.rollback().await?;
        return Ok(None);
    };

    let product_ids: Vec<i64> = order.lines.iter().map(|l| l.product_id).collect();
    let prices = repo::prices(&mut tx, &product_ids).await?;
    let price_of = |id: i64| {
        prices
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, price)| *price)
    };
    let missing: Vec<FieldError> = order
        .lines
        .iter()
        .filter(|l| price_of(l.product_id).is_none())
        .map(|l| FieldError::new(format!("items[{}].productId", l.index), "no such product"))
        .collect();
    if !missing.is_empty() {
        // Refused before anything was taken: nothing is stored, the key stays free.
        tx.rollback().await?;
        return Err(CreateError::Invalid(missing));
    }

    let mut items = Vec::with_capacity(order.lines.len());
    let mut total: i64 = 0;
    for line in order.lines {
        let unit_price = price_of(line.product_id).unwrap_or_default();
        total = unit_price
            .checked_mul(line.quantity)
            .and_then(|t| t.checked_add(total))
            .ok_or_else(|| {
                CreateError::Invalid(vec![FieldError::new("items", "order total is too large")])
            })?;
        items.push(OrderItem {
            product_id: line.product_id,
            quantity: line.quantity,
            unit_price,
        });
    }

    // Stock is taken inside a savepoint so that a shortfall on any line undoes the lines
    // already taken while the idempotency record stays, to store the refusal.
    let mut taking = tx.begin().await?;
    for line in order.lines {
        match stock::take(
            &mut taking,
            line.product_id,
            line.quantity,
            settings.stock_retry,
        )
        .await?
        {
            Take::Taken => {}
            Take::OutOfStock | Take::NoSuchProduct => {
                taking.rollback().await?;
                let (status, body) = refusal(
                    ErrorCode::OutOfStock,
                    format!("not enough stock for product {}", line.product_id),
                    vec![FieldError::new(
                        format!("items[{}].quantity", line.index),
                        "exceeds the available stock",
                    )],
                );
                idempotency::complete(&mut tx, record_id, status, &body, None).await?;
                tx.commit().await?;
                metrics::counter!(names::ORDERS_REJECTED, "reason" => "OUT_OF_STOCK").increment(1);
                return Ok(Some(Reply {
                    status,
                    body,
                    replayed: false,
                    order_id: None,
                    event: None,
                }));
            }
        }
    }
    taking.commit().await?;

    let now = Utc::now().trunc_subsecs(6);
    let order_id = repo::insert(&mut tx, order.user_id, total, now).await?;
    repo::insert_items(&mut tx, order_id, &items).await?;
    let created = Order {
        id: order_id,
        status: OrderStatus::Created,
        items,
        total_amount: total,
        created_at: now,
        updated_at: now,
    };
    let event = outbox::append(
        &mut tx,
        EventType::OrderCreated,
        order_id,
        &event_payload(EventType::OrderCreated, order.user_id, &created),
        &TraceContext::current_or(order.trace),
        &queue::new_job_id(),
    )
    .await?;
    let body = serde_json::to_string(&created).expect("order serializes");
    idempotency::complete(&mut tx, record_id, 201, &body, Some(order_id)).await?;
    tx.commit().await?;
    metrics::counter!(names::ORDERS_CREATED).increment(1);
    Ok(Some(Reply {
        status: 201,
        body,
        replayed: false,
        order_id: Some(order_id),
        event: Some(event),
    }))
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
