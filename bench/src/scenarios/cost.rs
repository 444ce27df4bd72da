//! cost: what one order costs the database and the service, per stage of the pipeline, next
//! to what the raw one-order transaction (the ceiling's spread) costs the database in the
//! same run (issue 33).
//!
//! CPU is read from /proc/<pid>/stat (utime + stime) of `mariadbd` and of the service, so
//! the database's figure includes its background threads (log writer, purge, flushing), as
//! an operator's `top` would; statements and commits are the server's `Questions` and
//! `Com_commit`. Both are server-wide: anything else on the server counts too, which is why
//! the run first measures a few seconds with no load of its own (`idle`).
//!
//! The stages are measured apart by pausing the service's job queues (the operators'
//! pause, ADR 0019), so that each window does one stage's work for the same orders:
//! 1. **order commit**: spread traffic with both queues paused — the HTTP requests, the
//!    batches' transactions, and the publish jobs' pushes (they wait in the paused queue);
//! 2. **publish**: `publish-outbox` resumed until no outbox row is NEW — the jobs' fetch,
//!    claim, Kafka send and settle, plus the Kafka consumer's pushes of notification jobs
//!    (it runs all along; its jobs wait in the still paused `consume-notification`);
//! 3. **consume/notify**: `consume-notification` resumed until every published event has
//!    its notification.
//!
//! Each load window is measured until 3 s after its last request (`TAIL`), so that the
//! server's background work for its commits counts where it belongs; the idle row gives
//! what those seconds cost anyway. The raw transaction runs first, also with the queues paused, so that nothing of the
//! service's runs beside it; its outbox rows are published (not measured) before stage 1.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::MySqlPool;

use super::{drain, Ctx, Pick};
use crate::{
    ceiling::Ceiling,
    load::{self, Spec},
    machine::{cpu_ticks, database_pid, TICKS_PER_SEC},
    stats::round,
};

const PUBLISH: &str = "publish-outbox";
const NOTIFY: &str = "consume-notification";

/// How long a pause or resume takes to reach every worker: the service reads the queues'
/// state every poll interval (1 s at most by default), and a job already fetched still runs.
const SETTLE: Duration = Duration::from_millis(1500);

/// How long a load window is still measured after its last request, queues still paused:
/// the server's background work for the window's commits (purge of their undo logs, page
/// flushing) lands there instead of in the next stage's window.
const TAIL: Duration = Duration::from_secs(3);

/// One window's counters.
struct Reading {
    at: Instant,
    db_ticks: Option<u64>,
    service_ticks: Option<u64>,
    questions: Option<u64>,
    commits: Option<u64>,
}

async fn read(pool: &MySqlPool, service_pid: u32) -> Reading {
    let counters: Vec<(String, String)> =
        sqlx::query_as("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_commit')")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let get = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    Reading {
        at: Instant::now(),
        db_ticks: database_pid().and_then(cpu_ticks),
        service_ticks: cpu_ticks(service_pid),
        questions: get("Questions"),
        commits: get("Com_commit"),
    }
}

/// What one stage cost, per order of the window's orders.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageCost {
    pub stage: String,
    pub seconds: f64,
    pub orders: u64,
    /// `mariadbd`'s CPU time per order (ms).
    pub db_cpu_ms: Option<f64>,
    /// The service's CPU time per order (ms); none for the raw transaction.
    pub service_cpu_ms: Option<f64>,
    pub statements: Option<f64>,
    pub commits: Option<f64>,
    /// The same CPU as a share of the window (cores).
    pub db_cores: Option<f64>,
    pub service_cores: Option<f64>,
}

fn stage(name: &str, a: &Reading, b: &Reading, orders: u64, service: bool) -> StageCost {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let diff = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
    let per = |n: Option<u64>, scale: f64| {
        n.filter(|_| orders > 0)
            .map(|n| round(n as f64 * scale / orders as f64, 3))
    };
    let cpu_ms = |n: Option<u64>| per(n, 1000.0 / TICKS_PER_SEC);
    let cores = |n: Option<u64>| n.map(|n| round(n as f64 / TICKS_PER_SEC / secs, 2));
    let db = diff(a.db_ticks, b.db_ticks);
    let svc = diff(a.service_ticks, b.service_ticks).filter(|_| service);
    StageCost {
        stage: name.to_owned(),
        seconds: round(secs, 1),
        orders,
        db_cpu_ms: cpu_ms(db),
        service_cpu_ms: cpu_ms(svc),
        statements: per(diff(a.questions, b.questions), 1.0),
        commits: per(diff(a.commits, b.commits), 1.0),
        db_cores: cores(db),
        service_cores: cores(svc),
    }
}

fn sum(name: &str, parts: &[StageCost]) -> StageCost {
    let add = |f: fn(&StageCost) -> Option<f64>| -> Option<f64> {
        parts
            .iter()
            .map(f)
            .sum::<Option<f64>>()
            .map(|v| round(v, 3))
    };
    StageCost {
        stage: name.to_owned(),
        seconds: round(parts.iter().map(|p| p.seconds).sum(), 1),
        orders: parts.first().map_or(0, |p| p.orders),
        db_cpu_ms: add(|p| p.db_cpu_ms),
        service_cpu_ms: add(|p| p.service_cpu_ms),
        statements: add(|p| p.statements),
        commits: add(|p| p.commits),
        db_cores: None,
        service_cores: None,
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CostResult {
    /// The server and the service with no load from the bench (other work on the server,
    /// the service's pollers): what every window below also contains, per second.
    pub idle: StageCost,
    /// The ceiling's spread (one order per transaction, raw SQL), queues paused.
    pub raw: StageCost,
    /// order commit, publish, consume/notify.
    pub stages: Vec<StageCost>,
    /// The three stages together: the whole pipeline per order.
    pub pipeline: StageCost,
    /// Pipeline database CPU per order ÷ the raw transaction's (issue 33 target ≤ 0.5).
    pub db_vs_raw: Option<f64>,
    /// Order-commit stage's database CPU per order ÷ the raw transaction's.
    pub order_commit_db_vs_raw: Option<f64>,
    /// Pipeline service CPU per order ÷ the raw transaction's database CPU (target ≤ 0.66).
    pub service_vs_raw_db: Option<f64>,
    /// Orders per second of the order-commit window (queues paused), and of the raw one.
    pub orders_per_sec: f64,
    pub raw_orders_per_sec: f64,
    /// The slow-log digest (`digest`), measured at the end of the run.
    pub digest: Option<super::digest::Digest>,
}

async fn pause(ctx: &Ctx, queues: &[&str], paused: bool) -> anyhow::Result<()> {
    for q in queues {
        ctx.api.set_queue_paused(&ctx.admin, q, paused).await?;
    }
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

/// Polls until `done` says so, or `bound` passes (then an error: a stage that never ends
/// has no cost to report).
async fn until(pool: &MySqlPool, bound: Duration, what: &str, sql: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        if left <= 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < bound,
            "{what}: {left} left after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const NEW_ROWS: &str = "SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW'";
const UNNOTIFIED: &str = "SELECT (SELECT COUNT(*) FROM outbox_events WHERE status = 'PUBLISHED') \
                          - (SELECT COUNT(*) FROM notifications)";
const STAGE_BOUND: Duration = Duration::from_secs(300);

/// Runs the cost measurement; the queues are resumed whatever happens.
pub async fn run(
    ctx: &Ctx,
    ceiling: &Ceiling,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<CostResult> {
    let outcome = measure(ctx, ceiling, concurrency, duration).await;
    let resumed = pause(ctx, &[PUBLISH, NOTIFY], false).await;
    let result = outcome?;
    resumed?;
    Ok(result)
}

async fn measure(
    ctx: &Ctx,
    ceiling: &Ceiling,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<CostResult> {
    let pid = ctx.service_pid;
    let pool = &ctx.pool;

    let a = read(pool, pid).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = read(pool, pid).await;
    // Per second rather than per order: `orders` = 1 and the window's length divides.
    let mut idle = stage("idle (per second)", &a, &b, 1, true);
    let secs = b.at.duration_since(a.at).as_secs_f64();
    for v in [&mut idle.db_cpu_ms, &mut idle.service_cpu_ms] {
        *v = v.map(|x| round(x / secs, 2));
    }
    idle.statements = idle.statements.map(|x| round(x / secs, 1));
    idle.commits = idle.commits.map(|x| round(x / secs, 1));

    pause(ctx, &[PUBLISH, NOTIFY], true).await?;
    let a = read(pool, pid).await;
    let raw_run = ceiling.spread(ctx, concurrency, duration).await?;
    tokio::time::sleep(TAIL).await;
    let b = read(pool, pid).await;
    let raw = stage(
        "raw one-order transaction",
        &a,
        &b,
        raw_run.summary.ok,
        false,
    );
    anyhow::ensure!(
        raw_run.summary.errors == 0,
        "the raw transaction had {} errors",
        raw_run.summary.errors
    );
    // Its rows are published by the service's sweeper and workers: not measured.
    pause(ctx, &[PUBLISH, NOTIFY], false).await?;
    drain(pool, STAGE_BOUND).await?;
    pause(ctx, &[PUBLISH, NOTIFY], true).await?;

    let a = read(pool, pid).await;
    let (rec, elapsed) = load::run(
        Spec::closed(concurrency, duration),
        ctx.order_op(Pick::Spread, None),
    )
    .await;
    tokio::time::sleep(TAIL).await;
    let b = read(pool, pid).await;
    let summary = rec.summary(elapsed, &[]);
    anyhow::ensure!(
        summary.errors == 0,
        "the order-commit window had {} errors: {:?}",
        summary.errors,
        summary.error_samples
    );
    let orders = summary.ok;

    ctx.api.set_queue_paused(&ctx.admin, PUBLISH, false).await?;
    until(pool, STAGE_BOUND, "publish", NEW_ROWS).await?;
    let c = read(pool, pid).await;
    ctx.api.set_queue_paused(&ctx.admin, NOTIFY, false).await?;
    until(pool, STAGE_BOUND, "consume/notify", UNNOTIFIED).await?;
    let d = read(pool, pid).await;

    let stages = vec![
        stage("order commit", &a, &b, orders, true),
        stage("publish", &b, &c, orders, true),
        stage("consume/notify", &c, &d, orders, true),
    ];
    let pipeline = sum("whole pipeline", &stages);
    let vs = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(round(x / y, 2)),
        _ => None,
    };
    Ok(CostResult {
        db_vs_raw: vs(pipeline.db_cpu_ms, raw.db_cpu_ms),
        order_commit_db_vs_raw: vs(stages[0].db_cpu_ms, raw.db_cpu_ms),
        service_vs_raw_db: vs(pipeline.service_cpu_ms, raw.db_cpu_ms),
        orders_per_sec: summary.ok_per_sec,
        raw_orders_per_sec: raw_run.summary.ok_per_sec,
        idle,
        raw,
        stages,
        pipeline,
        digest: None,
    })
}
