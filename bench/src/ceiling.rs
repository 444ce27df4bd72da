//! The ceiling: the least database work that keeps the guarantees of one POST /orders, as
//! plain SQL through the driver — none of the service's code, no HTTP, no JSON parsing, no
//! authentication — at the same concurrency, on the same database, products and users:
//!
//! ```sql
//! BEGIN;
//! UPDATE stocks SET quantity = quantity - ?, version = version + 1
//!   WHERE product_id = ? AND quantity >= ?;          -- the guarded write: never below zero
//! INSERT INTO orders …;  INSERT INTO order_items …;   -- the order (skipped when short)
//! INSERT INTO outbox_events …;                       -- its event, in the same transaction
//! INSERT INTO idempotency_keys … response …;          -- the key with the first outcome
//! COMMIT;
//! ```
//!
//! One connection per client, one transaction per order, no retries, no savepoints, no job
//! push: the service's outbox sweeper publishes these rows. The payloads are the service's
//! sizes (an order body, an event), so the bytes written match.
//!
//! `hot_cas` runs the hot product with the other optimistic scheme instead of the guarded
//! write: read quantity and version, `UPDATE … WHERE version = ?`, and on a lost race a
//! full-jitter pause and another try, four tries in all (what the service did before), so
//! that ADR 0005 compares the two on the same run.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use chrono::{SubsecRound, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sqlx::{mysql::MySqlConnectOptions, Connection, Executor, MySqlConnection};
use tokio::sync::Mutex;

use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse, DbMeter, DbWork},
    scenarios::{hot, hot::HotResult, Ctx},
    stats::{Outcome, Summary},
};

/// The service's key retention (IDEMPOTENCY_RETENTION_HOURS), so the rows are alike.
const RETENTION_SECS: i64 = 24 * 3600;
/// The compare-and-set variant's tries and the base of its full-jitter pause.
const CAS_TRIES: u32 = 4;
const CAS_PAUSE_BASE: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Default, Serialize)]
pub struct CeilingResult {
    pub spread: Option<CeilingSpread>,
    pub hot: Option<HotResult>,
    /// The hot product with compare-and-set and retries instead of the guarded write.
    pub hot_cas: Option<HotResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingSpread {
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
    pub cpu: CpuUse,
    pub db: DbWork,
}

/// How the stock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    Guarded,
    CompareAndSet,
}

/// One connection per client.
struct Clients {
    connections: Vec<Mutex<MySqlConnection>>,
}

impl Clients {
    async fn open(opts: &MySqlConnectOptions, n: usize) -> anyhow::Result<Arc<Self>> {
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            let mut conn = MySqlConnection::connect_with(opts).await?;
            // The service's isolation level (a setting, not code of ours).
            conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await?;
            connections.push(Mutex::new(conn));
        }
        Ok(Arc::new(Self { connections }))
    }

    async fn close(self: Arc<Self>) {
        if let Ok(clients) = Arc::try_unwrap(self) {
            for conn in clients.connections {
                let _ = conn.into_inner().close().await;
            }
        }
    }
}

/// One order of one unit of `product` for `user`.
async fn order(
    conn: &mut MySqlConnection,
    take: Take,
    user: i64,
    product: i64,
    price: i64,
    lost_races: &AtomicU64,
) -> sqlx::Result<Outcome> {
    let qty = 1i64;
    let key = uuid::Uuid::new_v4().to_string();
    let fingerprint = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut tx = conn.begin().await?;
    let taken = match take {
        Take::Guarded => {
            sqlx::query(
                "UPDATE stocks SET quantity = quantity - ?, version = version + 1, \
                 updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND quantity >= ?",
            )
            .bind(qty)
            .bind(product)
            .bind(qty)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        }
        Take::CompareAndSet => match compare_and_set(&mut tx, product, qty, lost_races).await? {
            Some(taken) => taken,
            None => {
                tx.rollback().await?;
                return Ok(Outcome::Refused("RETRIES_EXHAUSTED".into()));
            }
        },
    };
    if !taken {
        let body = json!({"timestamp": Utc::now(), "path": "/api/v1/orders", "code": "OUT_OF_STOCK",
            "message": format!("not enough stock for product {product}"),
            "details": [{"field": "items[0].quantity", "message": "exceeds the available stock"}]});
        store_key(
            &mut tx,
            user,
            &key,
            &fingerprint,
            409,
            &body.to_string(),
            None,
        )
        .await?;
        tx.commit().await?;
        return Ok(Outcome::Refused("OUT_OF_STOCK".into()));
    }
    let now = Utc::now().trunc_subsecs(6);
    let total = price * qty;
    let order_id = sqlx::query(
        "INSERT INTO orders (user_id, status, total_amount, created_at, updated_at) \
         VALUES (?, 'CREATED', ?, ?, ?)",
    )
    .bind(user)
    .bind(total)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .last_insert_id() as i64;
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (?, ?, ?, ?)",
    )
    .bind(order_id)
    .bind(product)
    .bind(qty)
    .bind(price)
    .execute(&mut *tx)
    .await?;
    let items = json!([{"productId": product, "quantity": qty, "unitPrice": price}]);
    let payload = json!({"eventType": "ORDER_CREATED", "orderId": order_id, "userId": user,
        "status": "CREATED", "items": items, "totalAmount": total, "createdAt": now, "occurredAt": now});
    sqlx::query(
        "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload) \
         VALUES (?, 'ORDER', ?, 'ORDER_CREATED', ?)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(order_id)
    .bind(payload.to_string())
    .execute(&mut *tx)
    .await?;
    let body = json!({"id": order_id, "status": "CREATED", "items": items, "totalAmount": total,
        "createdAt": now, "updatedAt": now});
    store_key(
        &mut tx,
        user,
        &key,
        &fingerprint,
        201,
        &body.to_string(),
        Some(order_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Ok)
}

/// Read, compare-and-set, and on a lost race pause and try again. `None`: the tries ran out.
async fn compare_and_set(
    conn: &mut MySqlConnection,
    product: i64,
    qty: i64,
    lost_races: &AtomicU64,
) -> sqlx::Result<Option<bool>> {
    for attempt in 1..=CAS_TRIES {
        let (quantity, version): (i64, i64) =
            sqlx::query_as("SELECT quantity, version FROM stocks WHERE product_id = ?")
                .bind(product)
                .fetch_one(&mut *conn)
                .await?;
        if quantity < qty {
            return Ok(Some(false));
        }
        let won = sqlx::query(
            "UPDATE stocks SET quantity = quantity - ?, version = version + 1, \
             updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND version = ?",
        )
        .bind(qty)
        .bind(product)
        .bind(version)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if won {
            return Ok(Some(true));
        }
        lost_races.fetch_add(1, Ordering::Relaxed);
        if attempt < CAS_TRIES {
            let cap = CAS_PAUSE_BASE.saturating_mul(1 << attempt);
            let pause = rand::thread_rng().gen_range(Duration::ZERO..cap);
            tokio::time::sleep(pause).await;
        }
    }
    Ok(None)
}

async fn store_key(
    conn: &mut MySqlConnection,
    user: i64,
    key: &str,
    fingerprint: &str,
    status: i16,
    body: &str,
    order_id: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, response_status, \
         response_body, order_id, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP(6) + INTERVAL ? SECOND)",
    )
    .bind(user)
    .bind(key)
    .bind(fingerprint)
    .bind(status)
    .bind(body)
    .bind(order_id)
    .bind(RETENTION_SECS)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ceiling's runs; each follows the service's run of the same scenario, so that both
/// see the same tables and the same machine.
pub struct Ceiling {
    opts: MySqlConnectOptions,
}

struct Run {
    take: Take,
    /// Everyone on this product, or a random one of the catalogue.
    product: Option<i64>,
    concurrency: usize,
    duration: Duration,
}

impl Ceiling {
    pub fn new(opts: MySqlConnectOptions) -> Self {
        Self { opts }
    }

    async fn run(
        &self,
        ctx: &Ctx,
        run: Run,
    ) -> anyhow::Result<(crate::stats::Recorder, Duration, CpuUse, u64, DbWork)> {
        let clients = Clients::open(&self.opts, run.concurrency).await?;
        let prices: Arc<std::collections::HashMap<i64, i64>> = Arc::new(
            sqlx::query_as("SELECT id, price FROM products")
                .fetch_all(&ctx.pool)
                .await?
                .into_iter()
                .collect(),
        );
        let users: Arc<Vec<i64>> = Arc::new(ctx.users.iter().map(|u| u.id).collect());
        let products = ctx.products.clone();
        let lost_races = Arc::new(AtomicU64::new(0));
        let db = DbMeter::start(&ctx.pool).await;
        let cpu = CpuMeter::start(Some(ctx.service_pid));
        let (rec, elapsed) = load::run(Spec::closed(run.concurrency, run.duration), {
            let (clients, lost_races) = (clients.clone(), lost_races.clone());
            move |slot| {
                let product = run
                    .product
                    .unwrap_or_else(|| products[rand::thread_rng().gen_range(0..products.len())]);
                let price = prices.get(&product).copied().unwrap_or_default();
                let user = users[slot.worker % users.len()];
                let (clients, lost_races) = (clients.clone(), lost_races.clone());
                async move {
                    let mut conn = clients.connections[slot.worker].lock().await;
                    match order(&mut conn, run.take, user, product, price, &lost_races).await {
                        Ok(outcome) => outcome,
                        Err(e) => Outcome::ServerError(format!("database: {e}")),
                    }
                }
            }
        })
        .await;
        let cpu = cpu.stop();
        let db = db.stop(&ctx.pool, rec.ok).await;
        clients.close().await;
        Ok((rec, elapsed, cpu, lost_races.load(Ordering::Relaxed), db))
    }

    /// spread as raw SQL: a random product of the catalogue per order.
    pub async fn spread(
        &self,
        ctx: &Ctx,
        concurrency: usize,
        duration: Duration,
    ) -> anyhow::Result<CeilingSpread> {
        let (rec, elapsed, cpu, _, db) = self
            .run(
                ctx,
                Run {
                    take: Take::Guarded,
                    product: None,
                    concurrency,
                    duration,
                },
            )
            .await?;
        Ok(CeilingSpread {
            concurrency,
            summary: rec.summary(elapsed, &[]),
            cpu,
            db,
        })
    }

    /// hot as raw SQL: everyone on the hot product, with the same stock bookkeeping check.
    pub async fn hot(
        &self,
        ctx: &Ctx,
        concurrency: usize,
        duration: Duration,
        compare_and_set: bool,
    ) -> anyhow::Result<HotResult> {
        let before = ctx.stock(ctx.hot_product).await?;
        let take = if compare_and_set {
            Take::CompareAndSet
        } else {
            Take::Guarded
        };
        let (rec, elapsed, cpu, lost, _) = self
            .run(
                ctx,
                Run {
                    take,
                    product: Some(ctx.hot_product),
                    concurrency,
                    duration,
                },
            )
            .await?;
        let after = ctx.stock(ctx.hot_product).await?;
        let allowed: &[&str] = if compare_and_set {
            &["OUT_OF_STOCK", "RETRIES_EXHAUSTED"]
        } else {
            hot::ALLOWED_REFUSALS
        };
        Ok(hot::finish(
            concurrency,
            &rec,
            elapsed,
            (before, after),
            compare_and_set.then_some(lost),
            cpu,
            allowed,
        ))
    }
}
