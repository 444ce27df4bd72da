//! replicas: the same offered load (an open-loop order rate) on 1, 2, 3 … service processes
//! (`serve`, API and workers) against one database and one Kafka, to see what each replica
//! costs the database. Per run, for the measured window: orders/s, the database's CPU time and
//! statements per order, the services' CPU per order, commit → notification p50/p99, lock
//! waits on the job table and the outbox, and the cost of the replicas while idle.
//!
//! The database figures are per MariaDB account, not server-wide: each run's services connect
//! as an account of their own, and `information_schema.USER_STATISTICS` (the server's
//! `userstat`, switched on for the run and restored after) counts that account's CPU time,
//! statements and commits. The bench's own reads go as root and are not counted, nor is any
//! other work on a shared server: the per-order figures hold on a busy machine. Lock waits are
//! sampled from `INNODB_LOCK_WAITS` every 100 ms (the transactions waiting, by table), so
//! they are estimates; the server-wide `Innodb_row_lock_*` counters are reported beside them.

use std::{
    collections::BTreeMap,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use serde::Serialize;
use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
    MySqlPool,
};

use super::{drain, Drain, User};
use crate::{
    client::{order_body, Api},
    load::{self, Spec},
    machine::{cpu_ticks, TICKS_PER_SEC},
    service::{self, Service},
    stats::{round, Outcome, Spread, Summary},
};

pub struct Plan {
    pub counts: Vec<usize>,
    pub rate: f64,
    pub duration: Duration,
    pub idle: Duration,
    pub concurrency: usize,
    pub products: usize,
    pub users: usize,
}

/// The database work of one account over a window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AccountWork {
    pub cpu_ms: f64,
    pub busy_ms: f64,
    pub selects: i64,
    pub updates: i64,
    pub others: i64,
    pub commits: i64,
    pub rollbacks: i64,
    pub rows_read: i64,
    pub bytes_received: i64,
    pub bytes_sent: i64,
}

impl AccountWork {
    fn statements(&self) -> i64 {
        self.selects + self.updates + self.others
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            cpu_ms: self.cpu_ms - o.cpu_ms,
            busy_ms: self.busy_ms - o.busy_ms,
            selects: self.selects - o.selects,
            updates: self.updates - o.updates,
            others: self.others - o.others,
            commits: self.commits - o.commits,
            rollbacks: self.rollbacks - o.rollbacks,
            rows_read: self.rows_read - o.rows_read,
            bytes_received: self.bytes_received - o.bytes_received,
            bytes_sent: self.bytes_sent - o.bytes_sent,
        }
    }
}

#[derive(sqlx::FromRow)]
struct UserStats {
    cpu: f64,
    busy: f64,
    selects: i64,
    updates: i64,
    others: i64,
    commits: i64,
    rollbacks: i64,
    rows_read: i64,
    bytes_received: i64,
    bytes_sent: i64,
}

async fn account_work(root: &MySqlPool, account: &str) -> anyhow::Result<AccountWork> {
    let row: Option<UserStats> = sqlx::query_as(
        "SELECT CPU_TIME AS cpu, BUSY_TIME AS busy, CAST(SELECT_COMMANDS AS SIGNED) AS selects, \
         CAST(UPDATE_COMMANDS AS SIGNED) AS updates, CAST(OTHER_COMMANDS AS SIGNED) AS others, \
         CAST(COMMIT_TRANSACTIONS AS SIGNED) AS commits, \
         CAST(ROLLBACK_TRANSACTIONS AS SIGNED) AS rollbacks, \
         CAST(ROWS_READ AS SIGNED) AS rows_read, CAST(BYTES_RECEIVED AS SIGNED) AS bytes_received, \
         CAST(BYTES_SENT AS SIGNED) AS bytes_sent \
         FROM information_schema.USER_STATISTICS WHERE USER = ?",
    )
    .bind(account)
    .fetch_optional(root)
    .await?;
    Ok(row
        .map(|r| AccountWork {
            cpu_ms: r.cpu * 1e3,
            busy_ms: r.busy * 1e3,
            selects: r.selects,
            updates: r.updates,
            others: r.others,
            commits: r.commits,
            rollbacks: r.rollbacks,
            rows_read: r.rows_read,
            bytes_received: r.bytes_received,
            bytes_sent: r.bytes_sent,
        })
        .unwrap_or_default())
}

/// Per order of the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PerOrder {
    pub db_cpu_ms: f64,
    pub db_busy_ms: f64,
    pub statements: f64,
    pub selects: f64,
    pub updates: f64,
    pub others: f64,
    pub commits: f64,
    pub rollbacks: f64,
    pub rows_read: f64,
    pub bytes_to_db: f64,
    pub bytes_from_db: f64,
    pub service_cpu_ms: f64,
}

/// The replicas with no load: what they cost the database per second on their own.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub statements_per_sec: f64,
    pub commits_per_sec: f64,
    pub db_cpu_ms_per_sec: f64,
}

/// Lock waits during the measured window: from 100 ms samples of INNODB_LOCK_WAITS, the
/// estimated transaction-milliseconds spent waiting per order, by table; and the server-wide
/// counters (shared with anything else on the server).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LockWaits {
    pub samples: u64,
    pub wait_ms_per_order_by_table: BTreeMap<String, f64>,
    pub server_row_lock_waits: i64,
    pub server_row_lock_time_ms: i64,
    pub server_deadlocks: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaRun {
    pub replicas: usize,
    pub offered_rate: f64,
    #[serde(flatten)]
    pub summary: Summary,
    pub orders: i64,
    pub per_order: PerOrder,
    pub idle: Idle,
    pub lock_waits: LockWaits,
    pub commit_to_kafka_ack: Spread,
    pub commit_to_notification: Spread,
    pub drain_after: Drain,
    /// Bytes (data and indexes, as InnoDB reports them after ANALYZE) per order of the
    /// database, by table: rough for small runs (pages are allocated in 16 KiB and larger).
    pub storage_bytes_per_order: BTreeMap<String, f64>,
    /// Rows read and changed per order of the measured window, by table
    /// (`information_schema.TABLE_STATISTICS`): which table a replica's extra work lands on.
    pub rows_per_order_by_table: BTreeMap<String, (f64, f64)>,
    pub notes: Vec<String>,
}

/// Rows read and changed so far, by table of `database` (userstat's TABLE_STATISTICS).
async fn table_rows(
    root: &MySqlPool,
    database: &str,
) -> anyhow::Result<BTreeMap<String, (i64, i64)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT TABLE_NAME, CAST(ROWS_READ AS SIGNED), CAST(ROWS_CHANGED AS SIGNED) \
         FROM information_schema.TABLE_STATISTICS WHERE TABLE_SCHEMA = ?",
    )
    .bind(database)
    .fetch_all(root)
    .await?;
    Ok(rows.into_iter().map(|(t, r, c)| (t, (r, c))).collect())
}

/// Per table, (data + index bytes) ÷ orders in the database.
async fn storage_per_order(
    root: &MySqlPool,
    pool: &MySqlPool,
    database: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
         AND TABLE_TYPE = 'BASE TABLE'",
    )
    .bind(database)
    .fetch_all(root)
    .await?;
    for t in &tables {
        sqlx::query(&format!("ANALYZE TABLE `{database}`.`{t}`"))
            .execute(root)
            .await?;
    }
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(pool)
        .await?;
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT TABLE_NAME, CAST(DATA_LENGTH + INDEX_LENGTH AS SIGNED) \
         FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE'",
    )
    .bind(database)
    .fetch_all(root)
    .await?;
    Ok(sizes
        .into_iter()
        .filter(|(t, _)| !t.starts_with('_'))
        .map(|(t, b)| (t, round(b as f64 / orders.max(1) as f64, 0)))
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicasResult {
    pub rate: f64,
    pub seconds: f64,
    pub runs: Vec<ReplicaRun>,
}

async fn server_counters(root: &MySqlPool) -> anyhow::Result<(i64, i64, i64)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL STATUS WHERE Variable_name IN \
         ('Innodb_row_lock_waits', 'Innodb_row_lock_time', 'Innodb_deadlocks')",
    )
    .fetch_all(root)
    .await?;
    let get = |n: &str| {
        rows.iter()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        get("Innodb_row_lock_waits"),
        get("Innodb_row_lock_time"),
        get("Innodb_deadlocks"),
    ))
}

/// Samples the transactions waiting for a row lock in `database`, by table, every 100 ms
/// until `stop`; returns (samples, waiting transactions summed over the samples by table).
async fn sample_lock_waits(
    root: MySqlPool,
    database: String,
    stop: Arc<AtomicBool>,
) -> (u64, BTreeMap<String, u64>) {
    let prefix = format!("`{database}`.");
    let mut samples = 0;
    let mut waiting = BTreeMap::<String, u64>::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
            "SELECT l.lock_table, COUNT(DISTINCT w.requesting_trx_id) \
             FROM information_schema.INNODB_LOCK_WAITS w \
             JOIN information_schema.INNODB_LOCKS l ON l.lock_id = w.requested_lock_id \
             GROUP BY l.lock_table",
        )
        .fetch_all(&root)
        .await;
        let Ok(rows) = rows else { continue };
        samples += 1;
        for (table, n) in rows {
            if let Some(name) = table.strip_prefix(&prefix) {
                *waiting
                    .entry(name.trim_matches('`').to_owned())
                    .or_default() += n as u64;
            }
        }
    }
    (samples, waiting)
}

/// The bench's server URL with `account` as its user.
fn as_account(server_url: &str, account: &str) -> anyhow::Result<String> {
    let (scheme, rest) = server_url
        .split_once("://")
        .context("--database-url has no scheme")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Ok(format!("{scheme}://{account}@{host}"))
}

async fn create_account(root: &MySqlPool, database: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("CREATE DATABASE `{database}`"))
        .execute(root)
        .await?;
    for host in ["%", "localhost", "127.0.0.1"] {
        sqlx::query(&format!("CREATE USER '{database}'@'{host}'"))
            .execute(root)
            .await?;
        sqlx::query(&format!(
            "GRANT ALL PRIVILEGES ON `{database}`.* TO '{database}'@'{host}'"
        ))
        .execute(root)
        .await?;
        // The service connects to `mysql` to create its database if missing (it exists):
        // a privilege on one harmless table there lets it in.
        sqlx::query(&format!(
            "GRANT SELECT ON mysql.help_keyword TO '{database}'@'{host}'"
        ))
        .execute(root)
        .await?;
    }
    Ok(())
}

async fn drop_account(root: &MySqlPool, database: &str) {
    for host in ["%", "localhost", "127.0.0.1"] {
        let _ = sqlx::query(&format!("DROP USER IF EXISTS '{database}'@'{host}'"))
            .execute(root)
            .await;
    }
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute(root)
        .await;
}

/// Sums the services' CPU ticks.
fn ticks(services: &[Service]) -> u64 {
    services.iter().filter_map(|s| cpu_ticks(s.pid)).sum()
}

/// Every replica count of the plan, one after the other, each on a fresh database.
pub async fn run(
    plan: &Plan,
    bin: &std::path::Path,
    server_url: &str,
    redis_url: &str,
) -> anyhow::Result<ReplicasResult> {
    anyhow::ensure!(
        std::env::var("KAFKA_BROKERS").is_ok_and(|b| !b.is_empty()),
        "replicas needs one Kafka for every process: set KAFKA_BROKERS (e.g. tansu on \
         127.0.0.1:9092); each process's embedded broker would be a broker of its own"
    );
    let root = MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(MySqlConnectOptions::from_str(server_url)?)
        .await?;
    let userstat: i64 = sqlx::query_scalar("SELECT CAST(@@GLOBAL.userstat AS SIGNED)")
        .fetch_one(&root)
        .await?;
    sqlx::query("SET GLOBAL userstat = 1")
        .execute(&root)
        .await?;
    let mut runs = Vec::new();
    let mut failure = None;
    for &n in &plan.counts {
        eprintln!("bench: replicas: {n} process(es) at {} orders/s", plan.rate);
        let database = service::fresh_database_name();
        let outcome = async {
            create_account(&root, &database).await?;
            one(plan, n, bin, server_url, redis_url, &root, &database).await
        }
        .await;
        drop_account(&root, &database).await;
        match outcome {
            Ok(r) => runs.push(r),
            Err(e) => {
                failure = Some(e.context(format!("{n} replica(s)")));
                break;
            }
        }
    }
    let _ = sqlx::query(&format!("SET GLOBAL userstat = {}", userstat.clamp(0, 1)))
        .execute(&root)
        .await;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(ReplicasResult {
        rate: plan.rate,
        seconds: plan.duration.as_secs_f64(),
        runs,
    })
}

async fn one(
    plan: &Plan,
    n: usize,
    bin: &std::path::Path,
    server_url: &str,
    redis_url: &str,
    root: &MySqlPool,
    database: &str,
) -> anyhow::Result<ReplicaRun> {
    let account_url = as_account(server_url, database)?;
    let mut services = vec![Service::start(bin, &account_url, redis_url, database).await?];
    for _ in 1..n {
        let replica = services[0].replica().await?;
        services.push(replica);
    }
    let bench_pool = MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(MySqlConnectOptions::from_str(server_url)?.database(database))
        .await?;
    let apis: Vec<Api> = services
        .iter()
        .map(|s| Api::new(&s.base))
        .collect::<Result<_, _>>()?;
    let ctx = super::prepare(
        &apis[0],
        bench_pool.clone(),
        services[0].pid,
        &services[0].admin_password,
        plan.users,
        plan.products,
        super::LARGE_STOCK,
    )
    .await
    .context("preparing users and products")?;
    let op = {
        let (apis, users, products) = (Arc::new(apis), ctx.users.clone(), ctx.products.clone());
        move |slot: load::Slot| {
            let api = apis[slot.seq as usize % apis.len()].clone();
            let users: Arc<Vec<User>> = users.clone();
            let product = products[rand::thread_rng().gen_range(0..products.len())];
            Box::pin(async move {
                let user = &users[slot.worker % users.len()];
                let key = uuid::Uuid::new_v4().to_string();
                match api
                    .create_order(&user.token, &key, &order_body(product, 1))
                    .await
                {
                    Ok(answer) => answer.outcome(),
                    Err(e) => Outcome::Transport(e.to_string()),
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
        }
    };
    let op = Arc::new(op);
    let spec = |duration| Spec {
        rate: Some(plan.rate),
        ..Spec::closed(plan.concurrency, duration)
    };

    // Warm up (connections, consumer group assignments), then let the pipeline catch up.
    let o = op.clone();
    load::run(spec(Duration::from_secs(5)), move |s| o(s)).await;
    drain(&bench_pool, Duration::from_secs(120)).await?;

    // Idle: the replicas alone.
    let before = account_work(root, database).await?;
    let started = Instant::now();
    tokio::time::sleep(plan.idle).await;
    let idle_work = account_work(root, database).await?.minus(&before);
    let secs = started.elapsed().as_secs_f64();
    let idle = Idle {
        seconds: round(secs, 1),
        statements_per_sec: round(idle_work.statements() as f64 / secs, 1),
        commits_per_sec: round(idle_work.commits as f64 / secs, 1),
        db_cpu_ms_per_sec: round(idle_work.cpu_ms / secs, 2),
    };

    // The measured window.
    let first_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM orders")
        .fetch_one(&bench_pool)
        .await?;
    let server_before = server_counters(root).await?;
    let before = account_work(root, database).await?;
    let tables_before = table_rows(root, database).await?;
    let ticks_before = ticks(&services);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_lock_waits(
        root.clone(),
        database.to_owned(),
        stop.clone(),
    ));
    let o = op.clone();
    let (rec, elapsed) = load::run(spec(plan.duration), move |s| o(s)).await;
    let last_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM orders")
        .fetch_one(&bench_pool)
        .await?;
    // The window's orders are counted once their events are notified: the pipeline's work
    // for them belongs to them.
    let drain_after = drain(&bench_pool, Duration::from_secs(300)).await?;
    stop.store(true, Ordering::Relaxed);
    let (samples, waiting) = sampler.await?;
    let work = account_work(root, database).await?.minus(&before);
    let tables_after = table_rows(root, database).await?;
    let service_ms = (ticks(&services) - ticks_before) as f64 / TICKS_PER_SEC * 1e3;
    let server_after = server_counters(root).await?;
    // The window runs to the end of the drain: what the replicas cost while waiting (their
    // polling) is in the per-order figures, as it is in production; `idle` shows it alone.
    let window_secs = elapsed.as_secs_f64() + drain_after.seconds;
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE id > ? AND id <= ?")
        .bind(first_id)
        .bind(last_id)
        .fetch_one(&bench_pool)
        .await?;
    let per = |v: f64| round(if orders > 0 { v / orders as f64 } else { 0.0 }, 3);
    let per_order = PerOrder {
        db_cpu_ms: per(work.cpu_ms),
        db_busy_ms: per(work.busy_ms),
        statements: per(work.statements() as f64),
        selects: per(work.selects as f64),
        updates: per(work.updates as f64),
        others: per(work.others as f64),
        commits: per(work.commits as f64),
        rollbacks: per(work.rollbacks as f64),
        rows_read: per(work.rows_read as f64),
        bytes_to_db: per(work.bytes_received as f64),
        bytes_from_db: per(work.bytes_sent as f64),
        service_cpu_ms: per(service_ms),
    };
    let lock_waits = LockWaits {
        samples,
        wait_ms_per_order_by_table: waiting
            .into_iter()
            .map(|(t, n)| (t, per(n as f64 * 100.0)))
            .collect(),
        server_row_lock_waits: server_after.0 - server_before.0,
        server_row_lock_time_ms: server_after.1 - server_before.1,
        server_deadlocks: server_after.2 - server_before.2,
    };
    let kafka: Vec<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, published_at) FROM outbox_events \
         WHERE event_type = 'ORDER_CREATED' AND aggregate_id > ? AND aggregate_id <= ? \
         AND published_at IS NOT NULL",
    )
    .bind(first_id)
    .bind(last_id)
    .fetch_all(&bench_pool)
    .await?;
    let notified: Vec<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, o.created_at, n.created_at) \
         FROM notifications n JOIN orders o ON o.id = n.order_id \
         WHERE n.type = 'ORDER_CREATED' AND n.order_id > ? AND n.order_id <= ?",
    )
    .bind(first_id)
    .bind(last_id)
    .fetch_all(&bench_pool)
    .await?;
    let storage_bytes_per_order = storage_per_order(root, &bench_pool, database).await?;
    let rows_per_order_by_table = tables_after
        .iter()
        .map(|(t, (r, c))| {
            let (r0, c0) = tables_before.get(t).copied().unwrap_or((0, 0));
            (t.clone(), (per((r - r0) as f64), per((c - c0) as f64)))
        })
        .collect();
    let mut summary = rec.summary(elapsed, &[]);
    let mut notes = vec![format!(
        "window {window_secs:.1} s (load {:.1} s + drain {:.1} s)",
        elapsed.as_secs_f64(),
        drain_after.seconds
    )];
    if drain_after.drained && (kafka.len() as i64 != orders || notified.len() as i64 != orders) {
        summary.errors += 1;
        summary.error_samples.push(format!(
            "{orders} orders, {} published, {} notified after the drain",
            kafka.len(),
            notified.len()
        ));
    }
    if !drain_after.drained {
        // Its per-order figures include the wait (the replicas' polling while nothing moved).
        summary.errors += 1;
        summary.error_samples.push(format!(
            "the pipeline did not catch up ({} s after the load): {}",
            drain_after.seconds,
            drain_after.left()
        ));
    }
    for s in &mut services {
        if let Err(e) = s.check_alive() {
            summary.errors += 1;
            notes.push(format!("{e:#}"));
        }
    }
    for s in &mut services {
        let _ = s.stop().await;
        if summary.errors == 0 {
            let _ = std::fs::remove_file(&s.log_path);
        }
    }
    bench_pool.close().await;
    Ok(ReplicaRun {
        replicas: n,
        offered_rate: plan.rate,
        summary,
        orders,
        per_order,
        idle,
        lock_waits,
        commit_to_kafka_ack: Spread::of_micros(kafka),
        commit_to_notification: Spread::of_micros(notified),
        drain_after,
        storage_bytes_per_order,
        rows_per_order_by_table,
        notes,
    })
}

/// The run as a Markdown table, one column per replica count, and the change from the first.
pub fn markdown(r: &ReplicasResult) -> String {
    let mut out = format!(
        "## replicas: {:.0} orders/s offered for {:.0} s, per replica count\n\n| figure |",
        r.rate, r.seconds
    );
    for run in &r.runs {
        out.push_str(&format!(" {} |", run.replicas));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(r.runs.len()));
    out.push('\n');
    let mut line = |name: &str, f: &dyn Fn(&ReplicaRun) -> String| {
        out.push_str(&format!("| {name} |"));
        for run in &r.runs {
            out.push_str(&format!(" {} |", f(run)));
        }
        out.push('\n');
    };
    line("orders/s achieved", &|x| {
        format!("{:.1}", x.summary.ok_per_sec)
    });
    line("p99 (ms)", &|x| format!("{:.1}", x.summary.p99_ms));
    line("database CPU per order (ms)", &|x| {
        format!("{:.3}", x.per_order.db_cpu_ms)
    });
    line("statements per order", &|x| {
        format!("{:.2}", x.per_order.statements)
    });
    line("  of which SELECT / write / other", &|x| {
        format!(
            "{:.2} / {:.2} / {:.2}",
            x.per_order.selects, x.per_order.updates, x.per_order.others
        )
    });
    line("commits per order", &|x| {
        format!("{:.3}", x.per_order.commits)
    });
    line("rows read per order", &|x| {
        format!("{:.1}", x.per_order.rows_read)
    });
    line("bytes to / from the database per order", &|x| {
        format!(
            "{:.0} / {:.0}",
            x.per_order.bytes_to_db, x.per_order.bytes_from_db
        )
    });
    line("service CPU per order (ms, all replicas)", &|x| {
        format!("{:.3}", x.per_order.service_cpu_ms)
    });
    line("idle: statements/s, database CPU ms/s", &|x| {
        format!(
            "{:.1}, {:.2}",
            x.idle.statements_per_sec, x.idle.db_cpu_ms_per_sec
        )
    });
    line("commit → Kafka ack p99 (ms)", &|x| {
        format!("{:.1}", x.commit_to_kafka_ack.p99_ms)
    });
    line("commit → notification p50 / p99 (ms)", &|x| {
        format!(
            "{:.1} / {:.1}",
            x.commit_to_notification.p50_ms, x.commit_to_notification.p99_ms
        )
    });
    line("lock wait per order, jobs / outbox (ms, sampled)", &|x| {
        let w = &x.lock_waits.wait_ms_per_order_by_table;
        format!(
            "{:.3} / {:.3}",
            w.get("jobs").copied().unwrap_or(0.0),
            w.get("outbox_events").copied().unwrap_or(0.0)
        )
    });
    line("server row-lock waits / deadlocks (server-wide)", &|x| {
        format!(
            "{} / {}",
            x.lock_waits.server_row_lock_waits, x.lock_waits.server_deadlocks
        )
    });
    for table in [
        "jobs",
        "outbox_events",
        "notifications",
        "job_queues",
        "workers",
    ] {
        line(&format!("rows read / changed per order: {table}"), &|x| {
            let (r, c) = x
                .rows_per_order_by_table
                .get(table)
                .copied()
                .unwrap_or_default();
            format!("{r:.1} / {c:.2}")
        });
    }
    line("event pipeline caught up after the load (s)", &|x| {
        if x.drain_after.drained {
            format!("{:.1}", x.drain_after.seconds)
        } else {
            format!("**no**: {}", x.drain_after.left())
        }
    });
    line("errors", &|x| x.summary.errors.to_string());
    if let Some(first) = r.runs.first() {
        line("database CPU per order vs 1st column", &|x| {
            format!(
                "{:+.1} %",
                change(first.per_order.db_cpu_ms, x.per_order.db_cpu_ms)
            )
        });
        line("statements per order vs 1st column", &|x| {
            format!(
                "{:+.1} %",
                change(first.per_order.statements, x.per_order.statements)
            )
        });
    }
    let errors: Vec<String> = r
        .runs
        .iter()
        .flat_map(|x| {
            x.summary
                .error_samples
                .iter()
                .map(move |e| format!("- {} replica(s): {e}\n", x.replicas))
        })
        .collect();
    if !errors.is_empty() {
        out.push('\n');
        out.push_str(&errors.concat());
    }
    out
}

fn change(base: f64, v: f64) -> f64 {
    if base > 0.0 {
        (v / base - 1.0) * 100.0
    } else {
        0.0
    }
}
