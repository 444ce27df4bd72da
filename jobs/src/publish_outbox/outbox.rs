//! The transactional outbox: an event row written in the same transaction as the change it
//! describes, so an event exists if and only if the change committed. publish-outbox takes
//! NEW rows to Kafka; the sweeper re-enqueues rows whose job was lost.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use orderflow_sql_script::{Part, Script};
use uuid::Uuid;

use crate::engine::sql_error;

pub const AGGREGATE_ORDER: &str = "ORDER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    OrderCreated,
    OrderCancelled,
}

impl EventType {
    /// Also the Kafka topic name (before any deployment prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "ORDER_CREATED",
            EventType::OrderCancelled => "ORDER_CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ORDER_CREATED" => Some(EventType::OrderCreated),
            "ORDER_CANCELLED" => Some(EventType::OrderCancelled),
            _ => None,
        }
    }
}

pub use crate::engine::trace::TraceContext;

/// A row as appended: its id, the event id, the publish job meant to carry it, and the trace
/// context stored with it (the job continues that trace).
#[derive(Debug, Clone)]
pub struct Appended {
    pub id: i64,
    pub event_id: Uuid,
    pub job_id: String,
    pub trace: TraceContext,
}

/// Appends a NEW event. `job_id` names the publish-outbox job that will be pushed for it
/// after the transaction commits, unless the row joins the job of a row committed just
/// before it (`publish_batch`), which then takes its place here (`assign_job`).
pub async fn append(
    conn: &mut MySqlConnection,
    event_type: EventType,
    aggregate_id: i64,
    payload: &serde_json::Value,
    trace: &TraceContext,
    job_id: &str,
) -> Result<Appended, sqlx::Error> {
    let event_id = Uuid::now_v7();
    let done = sqlx::query(
        "INSERT INTO outbox_events \
         (event_id, aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate, job_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event_id.to_string())
    .bind(AGGREGATE_ORDER)
    .bind(aggregate_id)
    .bind(event_type.as_str())
    .bind(payload.to_string())
    .bind(&trace.traceparent)
    .bind(&trace.tracestate)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(Appended {
        id: done.last_insert_id() as i64,
        event_id,
        job_id: job_id.to_owned(),
        trace: trace.clone(),
    })
}

/// An event to append with others (`append_many`).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: EventType,
    pub aggregate_id: i64,
    pub payload: String,
    pub trace: TraceContext,
}

/// Adds to `script` one INSERT of NEW events committed together, all to be carried by the
/// publish-outbox job `job_id` (pushed after the commit); returns their event ids, in order.
pub fn push_append(script: &mut Script, events: &[NewEvent], job_id: &str) -> Vec<Uuid> {
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    if events.is_empty() {
        return ids;
    }
    let texts: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let mut parts = vec![Part::Sql(
        "INSERT INTO outbox_events \
         (event_id, aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate, job_id) VALUES ",
    )];
    for (i, (e, id)) in events.iter().zip(&texts).enumerate() {
        parts.extend([
            Part::Sql(if i == 0 { "(" } else { ", (" }),
            Part::Text(id),
            Part::Sql(", "),
            Part::Text(AGGREGATE_ORDER),
            Part::Sql(", "),
            Part::Int(e.aggregate_id),
            Part::Sql(", "),
            Part::Text(e.event_type.as_str()),
            Part::Sql(", "),
            Part::Text(&e.payload),
            Part::Sql(", "),
            Part::OptText(e.trace.traceparent.as_deref()),
            Part::Sql(", "),
            Part::OptText(e.trace.tracestate.as_deref()),
            Part::Sql(", "),
            Part::Text(job_id),
            Part::Sql(")"),
        ]);
    }
    script.statement(&parts);
    ids
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub aggregate_id: i64,
    pub event_type: String,
    pub payload: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The publish job the row names (the one whose failure may make it DEAD).
    pub job_id: Option<String>,
}

impl OutboxRow {
    pub fn trace(&self) -> TraceContext {
        TraceContext {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }
}

/// How `claim` treats rows another transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Skip them: that worker is most likely publishing them.
    Skip,
    /// Wait for it, then take whatever it left NEW.
    Wait,
}

/// Rows no job is sending: never claimed, or whose claim ended (released, or expired
/// because its job died mid-send).
const UNCLAIMED: &str = " AND (claimed_until IS NULL OR claimed_until < CURRENT_TIMESTAMP(6))";

/// Locks the rows among `ids` that are still NEW and unclaimed, for the claim that follows
/// (`hold`); rows another transaction is claiming are skipped or waited for, as `held` says.
pub async fn claim(
    conn: &mut MySqlConnection,
    ids: &[i64],
    held: Held,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::new(
        "SELECT id, event_id, aggregate_id, event_type, payload, traceparent, tracestate, created_at, \
         job_id \
         FROM outbox_events WHERE status = 'NEW'",
    );
    q.push(UNCLAIMED).push(" AND id IN");
    crate::push_id_list(&mut q, ids);
    q.push(match held {
        Held::Skip => " ORDER BY id FOR UPDATE SKIP LOCKED",
        Held::Wait => " ORDER BY id FOR UPDATE",
    });
    q.build_query_as().fetch_all(conn).await
}

/// Locks up to `limit` more NEW rows, oldest first, that have never failed and were written
/// at least `age` ago, for a publish job to carry along with its own: under load (or after an
/// outage) one job then drains a batch of the backlog in one transaction, and the jobs of
/// those rows find them published. Rows that failed before are left to their own jobs, so a
/// row Kafka refuses cannot fail everyone's job; younger rows too, as their jobs are coming.
pub async fn claim_backlog(
    conn: &mut MySqlConnection,
    exclude: &[i64],
    limit: u32,
    age: Duration,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::new(
        "SELECT id, event_id, aggregate_id, event_type, payload, traceparent, tracestate, created_at, \
         job_id \
         FROM outbox_events WHERE status = 'NEW' AND attempts = 0",
    );
    q.push(UNCLAIMED);
    if !age.is_zero() {
        // On `ix_outbox_status_created`: with no backlog the range is empty, where a scan of
        // every NEW row (each one just committed, most of them locked) was read before.
        q.push(" AND created_at <= CURRENT_TIMESTAMP(6) - INTERVAL ")
            .push_bind(age.as_micros() as i64)
            .push(" MICROSECOND");
    }
    if !exclude.is_empty() {
        q.push(" AND id NOT IN");
        crate::push_id_list(&mut q, exclude);
    }
    q.push(" ORDER BY created_at, id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE SKIP LOCKED");
    q.build_query_as().fetch_all(conn).await
}

/// Claims the locked rows for `lease` (inside the claiming transaction): the job then
/// commits, and sends them holding no lock; other jobs leave them alone meanwhile.
pub async fn hold(
    conn: &mut MySqlConnection,
    ids: &[i64],
    lease: Duration,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::new(
        "UPDATE outbox_events SET claimed_until = CURRENT_TIMESTAMP(6) + INTERVAL ",
    );
    q.push_bind(lease.as_micros() as i64)
        .push(" MICROSECOND WHERE id IN");
    crate::push_id_list(&mut q, ids);
    q.build().execute(conn).await?;
    Ok(())
}

/// Ends the claim on rows a job sent but Kafka did not take: their job may try them again.
pub async fn release(pool: &MySqlPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    settle(
        pool,
        "UPDATE outbox_events SET claimed_until = NULL WHERE status = 'NEW' AND id IN",
        ids,
    )
    .await
}

/// How many of the NEW rows among `ids` another job is sending now.
pub async fn claimed(pool: &MySqlPool, ids: &[i64]) -> Result<i64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::new(
        "SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW' \
         AND claimed_until >= CURRENT_TIMESTAMP(6) AND id IN",
    );
    crate::push_id_list(&mut q, ids);
    q.build_query_scalar().fetch_one(pool).await
}

pub async fn mark_published(pool: &MySqlPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    settle(
        pool,
        "UPDATE outbox_events SET status = 'PUBLISHED', published_at = CURRENT_TIMESTAMP(6), \
         attempts = attempts + 1, last_error = NULL, claimed_until = NULL \
         WHERE status = 'NEW' AND id IN",
        ids,
    )
    .await
}

/// Tries of a statement that settles a send ([`mark_published`], [`release`]).
const SETTLE_TRIES: usize = 3;

/// Runs `update` on `ids`, again at once if InnoDB chose it as a deadlock victim or it timed
/// out on a lock (the statement alone was rolled back). Giving up there would leave the rows
/// claimed for the whole claim lease: every job waiting on them stalls that long, and rows
/// Kafka already has are sent again (`publish_pipeline::marking_rows_published_survives…`).
async fn settle(pool: &MySqlPool, update: &str, ids: &[i64]) -> Result<(), sqlx::Error> {
    let mut tried = 0;
    loop {
        let mut q = QueryBuilder::new(update);
        crate::push_id_list(&mut q, ids);
        tried += 1;
        match q.build().execute(pool).await {
            Ok(_) => return Ok(()),
            Err(e)
                if tried < SETTLE_TRIES
                    && (sql_error::is_deadlock(&e) || sql_error::is_lock_wait_timeout(&e)) =>
            {
                tracing::warn!(error = %e, rows = ids.len(), "settling published rows lost a lock conflict; trying again");
                metrics::counter!("outbox_settle_retries_total").increment(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Records a failed attempt on the rows still NEW that name `job_id` (a row another job
/// carries is that job's to settle); `dead` ends their road (status DEAD).
pub async fn record_failure(
    pool: &MySqlPool,
    job_id: &str,
    ids: &[i64],
    error: &str,
    dead: bool,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let status = if dead { "DEAD" } else { "NEW" };
    let mut q = QueryBuilder::new("UPDATE outbox_events SET attempts = attempts + 1, status = ");
    q.push_bind(status)
        .push(", last_error = ")
        .push_bind(truncate(error, 1000))
        .push(" WHERE status = 'NEW' AND job_id = ")
        .push_bind(job_id)
        .push(" AND id IN");
    crate::push_id_list(&mut q, ids);
    Ok(q.build().execute(pool).await?.rows_affected())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Records a transient failure on the rows still NEW (they stay NEW; the first failure
/// starts their retry window). Returns how many of them have been failing for longer than
/// `window`: their job must give up.
pub async fn record_retry(
    pool: &MySqlPool,
    job_id: &str,
    ids: &[i64],
    error: &str,
    window: Duration,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::new(
        "UPDATE outbox_events SET attempts = attempts + 1,          first_failed_at = COALESCE(first_failed_at, CURRENT_TIMESTAMP(6)), last_error = ",
    );
    q.push_bind(truncate(error, 1000))
        .push(" WHERE status = 'NEW' AND job_id = ")
        .push_bind(job_id)
        .push(" AND id IN");
    crate::push_id_list(&mut q, ids);
    q.build().execute(pool).await?;
    let mut q = QueryBuilder::new(
        "SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW' \
         AND first_failed_at < CURRENT_TIMESTAMP(6) - INTERVAL ",
    );
    q.push_bind(window.as_micros() as i64)
        .push(" MICROSECOND AND job_id = ")
        .push_bind(job_id)
        .push(" AND id IN");
    crate::push_id_list(&mut q, ids);
    let expired: i64 = q.build_query_scalar().fetch_one(pool).await?;
    Ok(expired as u64)
}

/// The rows still NEW that name `job_id` end their road (DEAD), keeping their last error.
pub async fn mark_dead(pool: &MySqlPool, job_id: &str, ids: &[i64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::new(
        "UPDATE outbox_events SET status = 'DEAD' WHERE status = 'NEW' AND job_id = ",
    );
    q.push_bind(job_id).push(" AND id IN");
    crate::push_id_list(&mut q, ids);
    Ok(q.build().execute(pool).await?.rows_affected())
}

/// How many DEAD rows name `job_id`.
pub async fn dead_of_job(pool: &MySqlPool, job_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox_events WHERE job_id = ? AND status = 'DEAD'")
        .bind(job_id)
        .fetch_one(pool)
        .await
}

/// NEW rows older than `grace` whose publish job is gone (never pushed, lost, finished
/// without publishing them, or dead while they were not: a job that died of another row's
/// permanent error, and maybe since discarded by an operator): the sweeper gives them a new
/// job.
pub async fn orphaned(
    pool: &MySqlPool,
    grace: Duration,
    limit: u32,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT e.id FROM outbox_events e LEFT JOIN jobs j ON j.id = e.job_id \
         WHERE e.status = 'NEW' AND e.created_at < CURRENT_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
         AND (j.id IS NULL OR j.status IN ('Done', 'Killed', 'Discarded')) ORDER BY e.id LIMIT ?",
    )
    .bind(grace.as_micros() as i64)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Hands the NEW rows of jobs that were never pushed to `job_id` (before it is pushed).
pub async fn merge_jobs(pool: &MySqlPool, from: &[&str], job_id: &str) -> Result<(), sqlx::Error> {
    if from.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::new("UPDATE outbox_events SET job_id = ");
    q.push_bind(job_id)
        .push(" WHERE status = 'NEW' AND job_id IN (");
    let mut list = q.separated(", ");
    for id in from {
        list.push_bind(*id);
    }
    q.push(")");
    q.build().execute(pool).await?;
    Ok(())
}

/// The NEW rows that name `job_id`: what a job pushed without an id list carries.
pub async fn rows_of_job(pool: &MySqlPool, job_id: &str) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM outbox_events WHERE job_id = ? AND status = 'NEW' ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
}

/// Hands rows to a new job (before that job is pushed).
pub async fn assign_job(pool: &MySqlPool, ids: &[i64], job_id: &str) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::new("UPDATE outbox_events SET job_id = ");
    q.push_bind(job_id).push(" WHERE status = 'NEW' AND id IN");
    crate::push_id_list(&mut q, ids);
    q.build().execute(pool).await?;
    Ok(())
}

/// NEW rows: the backlog the publisher has not drained yet.
/// Retention: deletes up to `limit` PUBLISHED rows published more than `older_than` ago
/// (NEW and DEAD rows stay: they are work, or the operators' to look at).
pub async fn purge_published(
    pool: &MySqlPool,
    older_than: std::time::Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox_events WHERE status = 'PUBLISHED' \
         AND published_at < CURRENT_TIMESTAMP(6) - INTERVAL ? SECOND LIMIT ?",
    )
    .bind(older_than.as_secs() as i64)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The rows that are not PUBLISHED, as operators watch them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpublished {
    /// NEW rows (the backlog).
    pub new: i64,
    /// Seconds since the oldest NEW row was committed (0: none).
    pub oldest_new_age_secs: i64,
    pub dead: i64,
    pub discarded: i64,
}

/// NEW, DEAD and DISCARDED rows and the age of the oldest NEW one, in one read of the
/// `(status, created_at)` index.
pub async fn unpublished(pool: &MySqlPool) -> Result<Unpublished, sqlx::Error> {
    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT status, COUNT(*), TIMESTAMPDIFF(SECOND, MIN(created_at), CURRENT_TIMESTAMP(6)) \
         FROM outbox_events WHERE status IN ('NEW', 'DEAD', 'DISCARDED') GROUP BY status",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Unpublished::default();
    for (status, count, oldest) in rows {
        match status.as_str() {
            "NEW" => {
                out.new = count;
                out.oldest_new_age_secs = oldest.unwrap_or(0).max(0);
            }
            "DEAD" => out.dead = count,
            _ => out.discarded = count,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_their_topic_names() {
        for t in [EventType::OrderCreated, EventType::OrderCancelled] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("ORDER_SHIPPED"), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
