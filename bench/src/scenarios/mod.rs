//! The scenarios, and what they share: the prepared users and products, the POST /orders
//! operation the load tasks run, and waiting for the event pipeline to drain between
//! scenarios so that one scenario's backlog does not slow the next one down.

pub mod archive;
pub mod cost;
pub mod digest;
pub mod hot;
pub mod overload;
pub mod pipeline;
pub mod replay;
pub mod replicas;
pub mod spread;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use serde::Serialize;
use sqlx::MySqlPool;

use crate::{
    client::{order_body, Api},
    load::Slot,
    stats::{round, Outcome},
};

/// Units of stock each product starts with: the service's upper bound for one adjustment,
/// so that no benchmark runs out by accident.
pub const LARGE_STOCK: i64 = 1_000_000_000;

pub struct User {
    pub id: i64,
    pub token: String,
}

/// A key whose first request committed: the replay scenario sends it again.
#[derive(Clone)]
pub struct Settled {
    pub user: usize,
    pub key: String,
    pub body: String,
    pub response: String,
}

/// What the scenarios work with.
pub struct Ctx {
    pub api: Api,
    /// The bench's own connections to the service's database, for set-up and checks.
    pub pool: MySqlPool,
    pub users: Arc<Vec<User>>,
    pub products: Arc<Vec<i64>>,
    pub hot_product: i64,
    pub service_pid: u32,
    /// The admin's token (pausing queues).
    pub admin: String,
}

/// Users, their tokens and products, all made over HTTP as a client would.
pub async fn prepare(
    api: &Api,
    pool: MySqlPool,
    service_pid: u32,
    admin_password: &str,
    users: usize,
    products: usize,
    hot_stock: i64,
) -> anyhow::Result<Ctx> {
    let admin = api
        .login(crate::service::ADMIN_EMAIL, admin_password)
        .await
        .context("admin login")?;
    // A few at a time: registering hashes a password (Argon2), which is slow by design.
    const SETUP_CONCURRENCY: usize = 4;
    let password = "bench-password-1";
    let made = in_parallel(users, SETUP_CONCURRENCY, |i| {
        let api = api.clone();
        async move {
            let email = format!("user{i}@orderflow.bench");
            let id = api.register(&email, password).await?;
            let token = api.login(&email, password).await?;
            Ok(User { id, token })
        }
    })
    .await?;
    let mut ids = in_parallel(products, 8, |i| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            api.create_product(&admin, &format!("SKU-{i:05}"), 100 + i as i64, LARGE_STOCK)
                .await
        }
    })
    .await?;
    ids.sort_unstable();
    let hot_product = api
        .create_product(&admin, "SKU-HOT", 999, hot_stock)
        .await?;
    Ok(Ctx {
        api: api.clone(),
        pool,
        users: Arc::new(made),
        products: Arc::new(ids),
        hot_product,
        service_pid,
        admin,
    })
}

/// Runs `f(0..n)` with at most `width` in flight; results in index order.
async fn in_parallel<T, F, Fut>(n: usize, width: usize, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + width).min(n);
        let batch: Vec<_> = (start..end).map(|i| tokio::spawn(f(i))).collect();
        for h in batch {
            out.push(h.await??);
        }
        start = end;
    }
    Ok(out)
}

impl Ctx {
    /// The load operation of the order scenarios: one unit of a product, as the slot's
    /// user, with a fresh Idempotency-Key. `pick` chooses the product; committed keys are
    /// kept in `keep` (up to its capacity) for the replay scenario.
    pub fn order_op(
        &self,
        pick: Pick,
        keep: Option<Arc<Keep>>,
    ) -> impl Fn(Slot) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync + 'static
    {
        let api = self.api.clone();
        let users = self.users.clone();
        let products = self.products.clone();
        let hot = self.hot_product;
        move |slot| {
            let product = match pick {
                Pick::Spread => products[rand::thread_rng().gen_range(0..products.len())],
                Pick::Hot => hot,
            };
            let api = api.clone();
            let users = users.clone();
            let keep = keep.clone();
            Box::pin(async move {
                let user = slot.worker % users.len();
                let key = uuid::Uuid::new_v4().to_string();
                let body = order_body(product, 1);
                match api.create_order(&users[user].token, &key, &body).await {
                    Ok(answer) => {
                        let outcome = answer.outcome();
                        if let (Outcome::Ok, Some(keep)) = (&outcome, &keep) {
                            keep.push(Settled {
                                user,
                                key,
                                body,
                                response: answer.body,
                            });
                        }
                        outcome
                    }
                    Err(e) => Outcome::Transport(e.to_string()),
                }
            })
        }
    }

    /// Units left of a product.
    pub async fn stock(&self, product: i64) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT quantity FROM stocks WHERE product_id = ?")
                .bind(product)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// A uniformly random product of the prepared set.
    Spread,
    /// Always the one hot product.
    Hot,
}

/// A bounded collection of committed keys.
pub struct Keep {
    cap: usize,
    items: Mutex<Vec<Settled>>,
}

impl Keep {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            items: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, s: Settled) {
        let mut items = self.items.lock().expect("keep lock");
        if items.len() < self.cap {
            items.push(s);
        }
    }

    pub fn take(&self) -> Vec<Settled> {
        std::mem::take(&mut *self.items.lock().expect("keep lock"))
    }
}

/// The service's batches (`order_batch_size`): reading it before and after a run gives the
/// requests decided per batch (one transaction for the orders among them) during the run.
pub struct Batches {
    sum: Option<f64>,
    count: Option<f64>,
}

impl Batches {
    pub async fn read(api: &Api) -> Self {
        Self {
            sum: api.counter("order_batch_size_sum").await,
            count: api.counter("order_batch_size_count").await,
        }
    }

    /// Requests per batch between `self` and `later`.
    pub fn per_batch(&self, later: &Batches) -> Option<f64> {
        let sum = later.sum? - self.sum.unwrap_or(0.0);
        let count = later.count? - self.count.unwrap_or(0.0);
        (count > 0.0).then(|| round(sum / count, 1))
    }
}

/// How long the event pipeline took to catch up after a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub seconds: f64,
    /// False if the bound passed first, or the pipeline stopped moving (the backlog was then
    /// still there).
    pub drained: bool,
    /// Outbox rows still NEW, and published events without their notification, at the end.
    #[serde(default)]
    pub unpublished: i64,
    #[serde(default)]
    pub unnotified: i64,
}

impl Drain {
    /// What the pipeline had not done when the wait ended.
    pub fn left(&self) -> String {
        format!(
            "{} rows NEW, {} published events without a notification",
            self.unpublished, self.unnotified
        )
    }
}

/// A pipeline that has neither published nor notified anything for this long is stuck (a
/// broker that lost events: docs/capacity.md); waiting out the whole bound shows nothing more.
const NO_PROGRESS: Duration = Duration::from_secs(30);

/// Waits until every outbox row is published and every published event has its
/// notification, or `bound` passes, or nothing moves for `NO_PROGRESS`.
pub async fn drain(pool: &MySqlPool, bound: Duration) -> anyhow::Result<Drain> {
    let started = Instant::now();
    let mut last: Option<((i64, i64), Instant)> = None;
    loop {
        let (unpublished, events, notified): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW'), \
                    (SELECT COUNT(*) FROM outbox_events WHERE status = 'PUBLISHED'), \
                    (SELECT COUNT(*) FROM notifications)",
        )
        .fetch_one(pool)
        .await?;
        let drained = unpublished == 0 && notified >= events;
        let state = (unpublished, notified);
        let still = match last {
            Some((before, since)) if before == state => since.elapsed(),
            _ => {
                last = Some((state, Instant::now()));
                Duration::ZERO
            }
        };
        if drained || started.elapsed() >= bound || still >= NO_PROGRESS {
            return Ok(Drain {
                seconds: round(started.elapsed().as_secs_f64(), 1),
                drained,
                unpublished,
                unnotified: (events - notified).max(0),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
