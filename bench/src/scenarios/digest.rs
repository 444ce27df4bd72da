//! digest: the statements that take the database's time, per order of the whole pipeline.
//!
//! MariaDB 10.11 starts with `performance_schema` off, and turning it on needs a server
//! restart, which a bench on a shared server must not do. What can be switched on at run
//! time is the slow log with `long_query_time = 0` written to a table (`mysql.slow_log`):
//! every statement with its time, rows examined and database. A session takes its
//! `long_query_time` and slow-log switch when it connects, so the digest runs on a service
//! process started while the log is on (the run's own service has stopped by then): a few
//! seconds of spread traffic, until their events are published and notified. Logging every
//! statement slows the server down, so this window gives shares and statements per order,
//! not CPU (the `cost` windows measure that with the log off). The server's settings are
//! restored afterwards, and the log table is emptied if it was empty before.
//!
//! `query_time` is the statement's wall time in the server: its CPU, its waits for locks
//! and I/O, and the commit's flush for a COMMIT.

use std::{collections::HashMap, time::Duration};

use serde::Serialize;
use sqlx::{MySqlPool, Row};

use super::{drain, Ctx, Pick};
use crate::{
    client::Api,
    load::{self, Spec},
    service::Service,
    stats::round,
};

/// One statement shape.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub statement: String,
    pub calls_per_order: f64,
    pub ms_per_order: f64,
    /// Share of the logged time of the window.
    pub share: f64,
    pub rows_examined_per_call: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Digest {
    pub seconds: f64,
    pub orders: u64,
    pub statements_per_order: f64,
    pub ms_per_order: f64,
    /// Time of the new process's broker re-seed (ADR 0016: a process that starts its own
    /// broker reads every PUBLISHED row without a notification), left out of the figures
    /// above: a cost of starting the digest's process, not of its orders (ms, whole window).
    pub reseed_ms_left_out: f64,
    /// The shapes by total time, most first (the first 12).
    pub top: Vec<Shape>,
}

struct Saved {
    slow_query_log: i64,
    long_query_time: f64,
    log_output: String,
    table_was_empty: bool,
}

async fn save(root: &MySqlPool) -> anyhow::Result<Saved> {
    let row = sqlx::query(
        "SELECT CAST(@@GLOBAL.slow_query_log AS SIGNED), CAST(@@GLOBAL.long_query_time AS DOUBLE), \
         @@GLOBAL.log_output, (SELECT COUNT(*) FROM mysql.slow_log)",
    )
    .fetch_one(root)
    .await?;
    Ok(Saved {
        slow_query_log: row.try_get(0)?,
        long_query_time: row.try_get(1)?,
        log_output: row.try_get(2)?,
        table_was_empty: row.try_get::<i64, _>(3)? == 0,
    })
}

async fn restore(root: &MySqlPool, s: &Saved) {
    let _ = sqlx::query(&format!(
        "SET GLOBAL slow_query_log = {}",
        s.slow_query_log.clamp(0, 1)
    ))
    .execute(root)
    .await;
    let _ = sqlx::query(&format!(
        "SET GLOBAL long_query_time = {}",
        s.long_query_time
    ))
    .execute(root)
    .await;
    let _ = sqlx::query("SET GLOBAL log_output = ?")
        .bind(&s.log_output)
        .execute(root)
        .await;
    if s.table_was_empty {
        let _ = sqlx::query("TRUNCATE TABLE mysql.slow_log")
            .execute(root)
            .await;
    }
}

/// Runs the digest on a new process of `service` (stopped, or about to be: two processes
/// would share the work and only one would be logged). `ctx` gives users and products.
pub async fn run(
    service: &Service,
    ctx: &Ctx,
    root: &MySqlPool,
    database: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Digest> {
    let saved = save(root).await?;
    let outcome = async {
        sqlx::query("SET GLOBAL log_output = 'TABLE'")
            .execute(root)
            .await?;
        sqlx::query("SET GLOBAL long_query_time = 0")
            .execute(root)
            .await?;
        sqlx::query("SET GLOBAL slow_query_log = 1")
            .execute(root)
            .await?;
        let mut logged = service.replica().await?;
        let result = window(&logged, ctx, root, database, concurrency, duration).await;
        let _ = logged.stop().await;
        result
    }
    .await;
    restore(root, &saved).await;
    outcome
}

async fn window(
    logged: &Service,
    ctx: &Ctx,
    root: &MySqlPool,
    database: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Digest> {
    let on = Ctx {
        api: Api::new(&logged.base)?,
        pool: ctx.pool.clone(),
        users: ctx.users.clone(),
        products: ctx.products.clone(),
        hot_product: ctx.hot_product,
        service_pid: logged.pid,
        admin: ctx.admin.clone(),
    };
    let since: String = sqlx::query_scalar("SELECT CAST(NOW(6) AS CHAR)")
        .fetch_one(root)
        .await?;
    let started = std::time::Instant::now();
    let (rec, elapsed) = load::run(
        Spec::closed(concurrency, duration),
        on.order_op(Pick::Spread, None),
    )
    .await;
    let summary = rec.summary(elapsed, &[]);
    anyhow::ensure!(
        summary.errors == 0,
        "the digest window had {} errors: {:?}",
        summary.errors,
        summary.error_samples
    );
    let d = drain(&ctx.pool, Duration::from_secs(300)).await?;
    anyhow::ensure!(d.drained, "the digest window's events were not notified");
    let seconds = started.elapsed().as_secs_f64();

    let rows = sqlx::query(
        "SELECT CONVERT(sql_text USING utf8mb4) AS sql_text, \
         CAST(TIME_TO_SEC(query_time) * 1000 AS DOUBLE) AS ms, \
         CAST(rows_examined AS SIGNED) AS examined \
         FROM mysql.slow_log WHERE db = ? AND start_time >= ?",
    )
    .bind(database)
    .bind(since)
    .fetch_all(root)
    .await?;
    let orders = summary.ok.max(1) as f64;
    let mut by: HashMap<String, (u64, f64, i64)> = HashMap::new();
    let mut total = 0.0;
    let mut reseed = 0.0;
    let mut statements = 0usize;
    for r in &rows {
        let sql: String = r.try_get("sql_text")?;
        let ms: f64 = r.try_get("ms")?;
        let examined: i64 = r.try_get("examined")?;
        if sql.contains(RESEED_SCAN) {
            reseed += ms;
            continue;
        }
        statements += 1;
        let e = by.entry(shape(&sql)).or_default();
        e.0 += 1;
        e.1 += ms;
        e.2 += examined;
        total += ms;
    }
    let mut top: Vec<Shape> = by
        .into_iter()
        .map(|(statement, (calls, ms, examined))| Shape {
            statement,
            calls_per_order: round(calls as f64 / orders, 3),
            ms_per_order: round(ms / orders, 4),
            share: round(if total > 0.0 { ms / total } else { 0.0 }, 3),
            rows_examined_per_call: round(examined as f64 / calls as f64, 1),
        })
        .collect();
    top.sort_by(|a, b| b.ms_per_order.total_cmp(&a.ms_per_order));
    top.truncate(12);
    Ok(Digest {
        seconds: round(seconds, 1),
        orders: summary.ok,
        statements_per_order: round(statements as f64 / orders, 2),
        ms_per_order: round(total / orders, 3),
        reseed_ms_left_out: round(reseed, 1),
        top,
    })
}

/// What only the re-seed's scan says (jobs/src/publish_outbox/reseed.rs).
const RESEED_SCAN: &str =
    "AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event_id = e.event_id)";

/// A statement's shape: literals become `?`, lists of them one `?…`, a VALUES list one row.
pub fn shape(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(256));
    let mut chars = sql.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        if chars.peek() == Some(&c) {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                out.push('?');
                prev = '?';
            }
            '0'..='9' if !(prev.is_alphanumeric() || prev == '_' || prev == '`') => {
                while chars
                    .peek()
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.')
                {
                    chars.next();
                }
                out.push('?');
                prev = '?';
            }
            c if c.is_whitespace() => {
                if prev != ' ' {
                    out.push(' ');
                }
                prev = ' ';
            }
            c => {
                out.push(c);
                prev = c;
            }
        }
    }
    let mut s = out.trim().to_owned();
    // One row of a multi-row VALUES list stands for all of them.
    if let Some(at) = s.find(" VALUES (") {
        let rest = &s[at + " VALUES ".len()..];
        let mut depth = 0;
        let mut end = rest.len();
        for (i, ch) in rest.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let first = rest[..end].to_owned();
        let tail = rest[end..]
            .find(" ON DUPLICATE KEY UPDATE")
            .map(|t| rest[end + t..].to_owned())
            .unwrap_or_default();
        let many = rest[end..].trim_start().starts_with(',');
        s = format!(
            "{} VALUES {first}{}{tail}",
            &s[..at],
            if many { ", …" } else { "" }
        );
    }
    for (from, to) in [
        ("?, ?", "?"),
        (" WHEN ? THEN ? WHEN ? THEN ?", " WHEN ? THEN ?"),
    ] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    if s.chars().count() > 160 {
        s = s.chars().take(159).collect::<String>() + "…";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn shapes_hide_literals_and_lists() {
        assert_eq!(
            shape("SELECT a FROM t WHERE id IN (1, 2, 3) AND k = 'x''y'"),
            "SELECT a FROM t WHERE id IN (?) AND k = ?"
        );
        assert_eq!(
            shape("INSERT INTO t2 (a, b) VALUES (1, 'a'), (2, 'b')"),
            "INSERT INTO t2 (a, b) VALUES (?), …"
        );
        assert_eq!(
            shape("UPDATE s SET q = q - CASE p WHEN 1 THEN 2 WHEN 3 THEN 4 END"),
            "UPDATE s SET q = q - CASE p WHEN ? THEN ? END"
        );
    }
}
