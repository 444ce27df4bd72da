//! overload: an open-loop arrival rate at twice what spread committed in the same run (the
//! service's measured capacity), each request with a fresh key on a random product, as
//! independent clients send: a request is sent when it is due, whatever the others wait for.
//! What it shows (ADR 0018): the goodput (orders committed per second) stays near the
//! capacity instead of collapsing; the orders let in are answered within their deadline; the
//! rest are refused at once (503 with `Retry-After`), and none of the refused keys has an
//! order afterwards — checked in the database.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use serde::Serialize;
use sqlx::MySqlPool;

use super::Ctx;
use crate::{
    client::order_body,
    load::{self, Spec},
    machine::{CpuMeter, CpuUse},
    stats::{round, Outcome, Spread, Summary},
};

/// The refusals the overload is expected to produce: not done, and (rarely) unknown.
pub const EXPECTED: [&str; 2] = ["SERVICE_UNAVAILABLE", "ORDER_OUTCOME_UNKNOWN"];

/// Client tasks per offered order a second: enough that a task is free when each request is
/// due, while the admitted ones wait up to `ORDER_QUEUE_MAX_WAIT_MS` (1 s by default).
const TASKS_PER_RATE: f64 = 1.5;
/// Each task keeps a connection; the bench's service runs with `HTTP_MAX_CONNECTIONS` 4,096
/// (`service.rs`), so the connection cap never answers in admission's place. `sent_rate` says
/// when the tasks could not keep the schedule.
const MAX_TASKS: usize = 1_000;

#[derive(Debug, Clone, Serialize)]
pub struct OverloadResult {
    /// spread's committed orders/s in this run.
    pub capacity: f64,
    pub offered_rate: f64,
    /// What the clients managed to send (below offered if the tasks fell behind).
    pub sent_rate: f64,
    pub clients: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// Orders committed per second (201 answers).
    pub goodput: f64,
    /// goodput ÷ capacity.
    pub goodput_ratio: f64,
    /// Latency of the orders let in and committed (201).
    pub admitted: Spread,
    /// Latency of the refusals (503, not done).
    pub refused: Spread,
    pub refused_count: u64,
    pub unknown_count: u64,
    /// Refused keys that have an order (or a stored outcome) afterwards: must be 0.
    pub refused_keys_stored: i64,
    pub cpu: CpuUse,
}

/// One answer: (user id, key, status, latency in µs).
type Seen = (i64, String, u16, i64);

pub async fn run(ctx: &Ctx, capacity: f64, duration: Duration) -> anyhow::Result<OverloadResult> {
    anyhow::ensure!(capacity > 0.0, "overload needs spread's rate");
    let rate = 2.0 * capacity;
    let clients = ((rate * TASKS_PER_RATE) as usize).clamp(64, MAX_TASKS);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let op = {
        let (api, users, products, seen) = (
            ctx.api.clone(),
            ctx.users.clone(),
            ctx.products.clone(),
            seen.clone(),
        );
        move |slot: load::Slot| {
            let (api, users, products, seen) =
                (api.clone(), users.clone(), products.clone(), seen.clone());
            async move {
                let user = &users[slot.worker % users.len()];
                let product = products[rand::thread_rng().gen_range(0..products.len())];
                let key = uuid::Uuid::new_v4().to_string();
                let sent = Instant::now();
                match api
                    .create_order(&user.token, &key, &order_body(product, 1))
                    .await
                {
                    Ok(answer) => {
                        let micros = sent.elapsed().as_micros() as i64;
                        seen.lock()
                            .expect("seen lock")
                            .push((user.id, key, answer.status, micros));
                        match answer.status {
                            503 | 504 => Outcome::Refused(
                                answer
                                    .error_code()
                                    .unwrap_or_else(|| format!("HTTP_{}", answer.status)),
                            ),
                            _ => answer.outcome(),
                        }
                    }
                    Err(e) => Outcome::Transport(e.to_string()),
                }
            }
        }
    };
    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let spec = Spec {
        rate: Some(rate),
        ..Spec::closed(clients, duration)
    };
    let (rec, elapsed) = load::run(spec, op).await;
    let cpu = cpu.stop();
    let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
    let secs = elapsed.as_secs_f64().max(1e-9);
    let latencies = |status: u16| {
        Spread::of_micros(
            seen.iter()
                .filter(|s| s.2 == status)
                .map(|s| s.3)
                .collect::<Vec<_>>(),
        )
    };
    let refused: Vec<(i64, &str)> = seen
        .iter()
        .filter(|s| s.2 == 503)
        .map(|s| (s.0, s.1.as_str()))
        .collect();
    let refused_keys_stored = stored(&ctx.pool, &refused).await?;
    let summary = rec.summary(elapsed, &EXPECTED);
    Ok(OverloadResult {
        capacity: round(capacity, 1),
        offered_rate: round(rate, 1),
        sent_rate: round(summary.requests as f64 / secs, 1),
        clients,
        goodput: summary.ok_per_sec,
        goodput_ratio: round(summary.ok_per_sec / capacity, 2),
        admitted: latencies(201),
        refused: latencies(503),
        refused_count: refused.len() as u64,
        unknown_count: seen.iter().filter(|s| s.2 == 504).count() as u64,
        refused_keys_stored,
        summary,
        cpu,
    })
}

/// How many of `keys` have a stored outcome (every order has one, in its transaction).
async fn stored(pool: &MySqlPool, keys: &[(i64, &str)]) -> anyhow::Result<i64> {
    let mut found = 0;
    for chunk in keys.chunks(500) {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT COUNT(*) FROM idempotency_keys WHERE (user_id, idem_key) IN (",
        );
        let mut list = q.separated(", ");
        for (user, key) in chunk {
            list.push("(")
                .push_bind_unseparated(*user)
                .push_unseparated(", ")
                .push_bind_unseparated(key.to_string())
                .push_unseparated(")");
        }
        q.push(")");
        let n: i64 = q.build_query_scalar().fetch_one(pool).await?;
        found += n;
    }
    Ok(found)
}
