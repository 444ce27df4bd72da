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
    client::{histogram_buckets, order_body},
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
/// when the tasks could not keep the schedule: with 1,000 tasks and the admitted orders
/// answered in up to half a second, they could not (20261207T225636Z-overload: 3,712 offered,
/// 2,474 sent, so no order was refused).
const MAX_TASKS: usize = 4_000;

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
    /// The same refusals timed inside the service, from the first middleware to the answer
    /// (its `http_request_duration_seconds` histogram): what `refused` adds on top is
    /// outside the service's handling — the kernel, the runtime's queue, the client.
    pub refused_in_service: Option<InService>,
    /// A request that does no work (liveness), sent every 20 ms through the same load on
    /// a connection of its own: what any answer waits for on this machine, the control
    /// for `refused`.
    pub no_work: Spread,
    /// Share of the window in which some runnable task of the machine waited for a CPU
    /// (`/proc/pressure/cpu`, "some"): the run queue every answer also waits in.
    pub cpu_pressure: Option<f64>,
    pub cpu: CpuUse,
}

/// Answers of one kind as the service timed them (histogram buckets: bounds, not exact).
#[derive(Debug, Clone, Serialize)]
pub struct InService {
    pub count: u64,
    /// Share answered within 10 ms (a bucket bound).
    pub within_10ms: f64,
    /// The smallest bucket bound that 99 % of them are within, in ms.
    pub p99_at_most_ms: Option<f64>,
}

const REFUSAL_SERIES: [&str; 3] = [
    "method=\"POST\"",
    "route=\"/api/v1/orders\"",
    "status=\"503\"",
];

/// The refusals between two scrapes of the service's request histogram.
fn in_service(before: &str, after: &str) -> Option<InService> {
    let name = "http_request_duration_seconds";
    let earlier = histogram_buckets(before, name, &REFUSAL_SERIES);
    let buckets: Vec<(f64, f64)> = histogram_buckets(after, name, &REFUSAL_SERIES)
        .into_iter()
        .map(|(le, n)| {
            let was = earlier.iter().find(|(b, _)| *b == le).map_or(0.0, |e| e.1);
            (le, n - was)
        })
        .collect();
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let within = |secs: f64| {
        buckets
            .iter()
            .find(|(le, _)| *le >= secs)
            .map_or(0.0, |b| b.1)
    };
    Some(InService {
        count: total as u64,
        within_10ms: round(within(0.010) / total, 4),
        p99_at_most_ms: buckets
            .iter()
            .find(|(_, n)| *n >= 0.99 * total)
            .map(|(le, _)| le * 1000.0)
            .filter(|ms| ms.is_finite()),
    })
}

/// Latencies (µs) of liveness requests sent every 20 ms, one at a time, until `stop`.
async fn no_work_probe(base: String, mut stop: tokio::sync::oneshot::Receiver<()>) -> Vec<i64> {
    let Ok(api) = crate::client::Api::new(&base) else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = &mut stop => return seen,
            _ = every.tick() => {}
        }
        let sent = Instant::now();
        if let Ok(200) = api.liveness().await {
            seen.push(sent.elapsed().as_micros() as i64);
        }
    }
}

/// The kernel's total CPU stall time ("some" tasks waiting), in µs.
fn cpu_stall_micros() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split(' ')
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
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
    let scraped_before = ctx.api.scrape().await.unwrap_or_default();
    let stall_before = cpu_stall_micros();
    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let (probing, stop_probing) = tokio::sync::oneshot::channel::<()>();
    let probe = tokio::spawn(no_work_probe(ctx.api.base().to_owned(), stop_probing));
    let spec = Spec {
        rate: Some(rate),
        ..Spec::closed(clients, duration)
    };
    let (rec, elapsed) = load::run(spec, op).await;
    let cpu = cpu.stop();
    let _ = probing.send(());
    let no_work = Spread::of_micros(probe.await.unwrap_or_default());
    let cpu_pressure = stall_before
        .zip(cpu_stall_micros())
        .map(|(a, b)| round((b - a) as f64 / elapsed.as_micros().max(1) as f64, 3));
    let refused_in_service =
        in_service(&scraped_before, &ctx.api.scrape().await.unwrap_or_default());
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
        refused_in_service,
        no_work,
        cpu_pressure,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(fast: u32, slow: u32) -> String {
        let series = "method=\"POST\",route=\"/api/v1/orders\",status=\"503\"";
        format!(
            "http_request_duration_seconds_bucket{{{series},le=\"0.005\"}} {fast}\n\
             http_request_duration_seconds_bucket{{{series},le=\"0.01\"}} {fast}\n\
             http_request_duration_seconds_bucket{{{series},le=\"0.05\"}} {}\n\
             http_request_duration_seconds_bucket{{{series},le=\"+Inf\"}} {}\n",
            fast + slow,
            fast + slow
        )
    }

    #[test]
    fn refusals_in_the_service_are_the_window_between_two_scrapes() {
        // Before: 10 fast, 90 slow; after: 1,010 fast, 91 slow → the window: 1,000 and 1.
        let seen = in_service(&scrape(10, 90), &scrape(1_010, 91)).unwrap();
        assert_eq!(seen.count, 1_001);
        assert_eq!(seen.within_10ms, round(1_000.0 / 1_001.0, 4));
        assert_eq!(seen.p99_at_most_ms, Some(5.0));
        assert!(in_service(&scrape(10, 90), &scrape(10, 90)).is_none());
    }
}
