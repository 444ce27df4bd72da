//! The ceiling: the database work of POST /orders with nothing else — no HTTP, JSON
//! parsing, authentication or middleware — run through sqlx at the same concurrency, on
//! the same database server, with a pool set up like the service's (same size, READ
//! COMMITTED, the same lock-wait bound). The statements are copied from the service:
//!
//! 1. the fast-path read of the key (`idempotency::find`);
//! 2. one transaction: claim the key (`idempotency::insert`), read prices
//!    (`orders::repo::prices`), take stock in a savepoint (`catalog::stock::take`: optimistic
//!    attempts, then the guarded decrement), insert the order and its items, append the
//!    outbox row, store the response (`idempotency::complete`), commit;
//! 3. hand the committed row to a publish batcher, the service's own
//!    (`orderflow_jobs::publish_batch`, ADR 0011): rows committed within the linger share one
//!    publish-outbox job (an UPDATE of the outbox rows, then apalis' push), so the service's
//!    workers publish these orders as they do the service's own.
//!
//! Keep it in step with src/orders/create.rs when the order transaction changes.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use chrono::{SubsecRound, Utc};
use orderflow_jobs::{
    outbox::Appended,
    publish_batch::{BatchSettings, PublishBatcher},
    queue::{QueueSettings, Wake},
    sql_error,
    trace::TraceContext,
};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sqlx::{mysql::MySqlConnectOptions, Connection, MySqlConnection, MySqlPool, QueryBuilder};

use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse},
    scenarios::{hot, hot::HotResult, Ctx},
    stats::{Outcome, Summary},
};

/// The service's defaults (DATABASE_MAX_CONNECTIONS, STOCK_RETRY_*, IDEMPOTENCY_*,
/// JOB_MAX_ATTEMPTS, PUBLISH_LINGER_MS, PUBLISH_BATCH_SIZE), which the bench does not change.
const POOL_SIZE: u32 = 32;
const LOCK_WAIT_SECS: u64 = 5;
const STOCK_ATTEMPTS: u32 = 4;
const STOCK_BACKOFF_BASE: Duration = Duration::from_millis(2);
const RETENTION_SECS: i64 = 24 * 3600;
const JOB_MAX_ATTEMPTS: u32 = 5;
const PUBLISH_LINGER: Duration = Duration::from_millis(10);
const PUBLISH_BATCH_SIZE: usize = 100;
const DEADLOCK_RETRIES: u32 = 3;

#[derive(Debug, Clone, Default, Serialize)]
pub struct CeilingResult {
    pub spread: Option<CeilingSpread>,
    pub hot: Option<HotResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingSpread {
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
    pub cpu: CpuUse,
}

/// The service's own pool (`orderflow::db::connect_with`: same session isolation level and
/// lock-wait timeout) at the service's default size.
pub async fn pool(opts: MySqlConnectOptions) -> anyhow::Result<MySqlPool> {
    let settings = orderflow::db::PoolSettings {
        max_connections: POOL_SIZE,
        acquire_timeout: Duration::from_secs(10),
        lock_wait_timeout: Duration::from_secs(LOCK_WAIT_SECS),
    };
    Ok(orderflow::db::connect_with(opts, &settings).await?)
}

enum Take {
    Taken,
    Short,
}

/// `catalog::stock::take`, statement for statement.
async fn take(
    conn: &mut MySqlConnection,
    product: i64,
    qty: i64,
    conflicts: &AtomicU64,
) -> sqlx::Result<Take> {
    for attempt in 1..STOCK_ATTEMPTS {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT quantity, version FROM stocks WHERE product_id = ?")
                .bind(product)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((available, version)) = row else {
            return Ok(Take::Short);
        };
        if available < qty {
            return Ok(Take::Short);
        }
        let done = sqlx::query(
            "UPDATE stocks SET quantity = quantity - ?, version = version + 1, \
             updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND version = ?",
        )
        .bind(qty)
        .bind(product)
        .bind(version)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Take::Taken);
        }
        conflicts.fetch_add(1, Ordering::Relaxed);
        let cap = STOCK_BACKOFF_BASE.saturating_mul(1 << attempt.min(10));
        let pause = rand::thread_rng().gen_range(Duration::ZERO..cap);
        tokio::time::sleep(pause).await;
    }
    let done = sqlx::query(
        "UPDATE stocks SET quantity = quantity - ?, version = version + 1, \
         updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND quantity >= ?",
    )
    .bind(qty)
    .bind(product)
    .bind(qty)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Take::Taken);
    }
    let _exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM stocks WHERE product_id = ?")
        .bind(product)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(Take::Short)
}

/// One order of `qty` units of `product` for `user`, as the service's `create` runs it.
async fn order(
    pool: &MySqlPool,
    publisher: &PublishBatcher,
    user: i64,
    product: i64,
    qty: i64,
    conflicts: &AtomicU64,
) -> sqlx::Result<Outcome> {
    let key = uuid::Uuid::new_v4().to_string();
    // The service hashes the canonical body; any 64 hex characters store the same bytes.
    let fingerprint = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let stored: Option<(String, Option<i16>, Option<String>, bool)> = sqlx::query_as(
        "SELECT request_fingerprint, response_status, response_body, \
         (expires_at <= CURRENT_TIMESTAMP(6)) AS expired \
         FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
    )
    .bind(user)
    .bind(&key)
    .fetch_optional(pool)
    .await?;
    if stored.is_some() {
        return Ok(Outcome::Wrong("a fresh key was already stored".into()));
    }
    let mut attempt = 1;
    loop {
        match transaction(pool, user, &key, &fingerprint, product, qty, conflicts).await {
            // As the service does after the commit: the row goes to its shared job.
            Ok((outcome, Some(row))) => {
                publisher.enqueue(row);
                return Ok(outcome);
            }
            Ok((outcome, None)) => return Ok(outcome),
            // InnoDB rolled the whole transaction back; the service runs it again, so do we.
            Err(e) if sql_error::is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn transaction(
    pool: &MySqlPool,
    user: i64,
    key: &str,
    fingerprint: &str,
    product: i64,
    qty: i64,
    conflicts: &AtomicU64,
) -> sqlx::Result<(Outcome, Option<Appended>)> {
    let mut tx = pool.begin().await?;
    let record = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, expires_at) \
         VALUES (?, ?, ?, CURRENT_TIMESTAMP(6) + INTERVAL ? SECOND)",
    )
    .bind(user)
    .bind(key)
    .bind(fingerprint)
    .bind(RETENTION_SECS)
    .execute(&mut *tx)
    .await?
    .last_insert_id() as i64;

    let mut q = QueryBuilder::new("SELECT id, price FROM products WHERE id IN (");
    q.separated(", ").push_bind(product);
    q.push(")");
    let prices: Vec<(i64, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
    let Some(&(_, price)) = prices.first() else {
        tx.rollback().await?;
        return Ok((Outcome::Refused("VALIDATION_ERROR".into()), None));
    };

    let mut taking = tx.begin().await?;
    if let Take::Short = take(&mut taking, product, qty, conflicts).await? {
        taking.rollback().await?;
        let body = json!({"code": "OUT_OF_STOCK", "message": format!("not enough stock for product {product}")});
        complete(&mut tx, record, 409, &body.to_string(), None).await?;
        tx.commit().await?;
        return Ok((Outcome::Refused("OUT_OF_STOCK".into()), None));
    }
    taking.commit().await?;

    let now = Utc::now().trunc_subsecs(6);
    let total = price * qty;
    let order_id = sqlx::query(
        "INSERT INTO orders (user_id, status, total_amount, created_at, updated_at) VALUES (?, 'CREATED', ?, ?, ?)",
    )
    .bind(user)
    .bind(total)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .last_insert_id() as i64;
    let mut q =
        QueryBuilder::new("INSERT INTO order_items (order_id, product_id, quantity, unit_price) ");
    q.push_values([(product, qty, price)], |mut row, (p, n, u)| {
        row.push_bind(order_id)
            .push_bind(p)
            .push_bind(n)
            .push_bind(u);
    });
    q.build().execute(&mut *tx).await?;

    // The order as the service answers it, and its event as `event_payload` builds it.
    let items = json!([{"productId": product, "quantity": qty, "unitPrice": price}]);
    let order = json!({"id": order_id, "status": "CREATED", "items": items, "totalAmount": total,
        "createdAt": now, "updatedAt": now});
    let payload = json!({"eventType": "ORDER_CREATED", "orderId": order_id, "userId": user,
        "status": "CREATED", "items": items, "totalAmount": total, "createdAt": now, "occurredAt": now});
    let job_id = ulid::Ulid::new().to_string();
    let event_id = uuid::Uuid::now_v7();
    let outbox_id = sqlx::query(
        "INSERT INTO outbox_events \
         (event_id, aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate, job_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event_id.to_string())
    .bind("ORDER")
    .bind(order_id)
    .bind("ORDER_CREATED")
    .bind(payload.to_string())
    .bind(None::<String>)
    .bind(None::<String>)
    .bind(&job_id)
    .execute(&mut *tx)
    .await?
    .last_insert_id() as i64;
    complete(&mut tx, record, 201, &order.to_string(), Some(order_id)).await?;
    tx.commit().await?;

    let row = Appended {
        id: outbox_id,
        event_id,
        job_id,
        trace: TraceContext::default(),
    };
    Ok((Outcome::Ok, Some(row)))
}

async fn complete(
    conn: &mut MySqlConnection,
    id: i64,
    status: i16,
    body: &str,
    order_id: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = ?, response_body = ?, order_id = ? WHERE id = ?",
    )
    .bind(status)
    .bind(body)
    .bind(order_id)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

fn op(
    pool: MySqlPool,
    publisher: PublishBatcher,
    ctx: &Ctx,
    hot_product: Option<i64>,
    conflicts: Arc<AtomicU64>,
) -> impl Fn(load::Slot) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
       + Send
       + Sync
       + 'static {
    let users: Arc<Vec<i64>> = Arc::new(ctx.users.iter().map(|u| u.id).collect());
    let products = ctx.products.clone();
    move |slot| {
        let product = hot_product
            .unwrap_or_else(|| products[rand::thread_rng().gen_range(0..products.len())]);
        let user = users[slot.worker % users.len()];
        let (pool, publisher) = (pool.clone(), publisher.clone());
        let conflicts = conflicts.clone();
        Box::pin(async move {
            match order(&pool, &publisher, user, product, 1, &conflicts).await {
                Ok(outcome) => outcome,
                Err(e) => Outcome::ServerError(format!("database: {e}")),
            }
        })
    }
}

/// The ceiling's connections; each of its runs follows the service's run of the same
/// scenario, so that both see the same tables and the same machine.
pub struct Ceiling {
    pool: MySqlPool,
    publisher: PublishBatcher,
}

impl Ceiling {
    pub async fn connect(opts: MySqlConnectOptions) -> anyhow::Result<Self> {
        let pool = pool(opts).await?;
        // Only `max_attempts` matters for a push; the rest is the workers' business.
        let queue = QueueSettings {
            poll_interval: Duration::from_millis(100),
            keep_alive: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            max_attempts: JOB_MAX_ATTEMPTS,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        };
        let publisher = PublishBatcher::start(
            pool.clone(),
            queue,
            // The service's workers are in another process: they find the jobs by polling.
            Wake::default(),
            BatchSettings {
                linger: PUBLISH_LINGER,
                max_rows: PUBLISH_BATCH_SIZE,
            },
        );
        Ok(Self { pool, publisher })
    }

    /// spread as raw SQL: a random product of the catalogue per order.
    pub async fn spread(&self, ctx: &Ctx, concurrency: usize, duration: Duration) -> CeilingSpread {
        let cpu = CpuMeter::start(Some(ctx.service_pid));
        let (rec, elapsed) = load::run(
            Spec::closed(concurrency, duration),
            op(
                self.pool.clone(),
                self.publisher.clone(),
                ctx,
                None,
                Arc::default(),
            ),
        )
        .await;
        CeilingSpread {
            concurrency,
            summary: rec.summary(elapsed, &[]),
            cpu: cpu.stop(),
        }
    }

    /// hot as raw SQL: everyone on the hot product, with the same stock bookkeeping check.
    pub async fn hot(
        &self,
        ctx: &Ctx,
        concurrency: usize,
        duration: Duration,
    ) -> anyhow::Result<HotResult> {
        let before = ctx.stock(ctx.hot_product).await?;
        let conflicts = Arc::new(AtomicU64::new(0));
        let cpu = CpuMeter::start(Some(ctx.service_pid));
        let (rec, elapsed) = load::run(
            Spec::closed(concurrency, duration),
            op(
                self.pool.clone(),
                self.publisher.clone(),
                ctx,
                Some(ctx.hot_product),
                conflicts.clone(),
            ),
        )
        .await;
        let cpu = cpu.stop();
        let after = ctx.stock(ctx.hot_product).await?;
        Ok(hot::finish(
            concurrency,
            &rec,
            elapsed,
            before,
            after,
            Some(conflicts.load(Ordering::Relaxed)),
            cpu,
        ))
    }

    pub async fn close(self) {
        self.publisher.close().await;
        self.pool.close().await;
    }
}
