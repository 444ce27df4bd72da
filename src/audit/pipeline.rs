//! The outbox rows in id order, with their publish job and their notification: a PUBLISHED
//! event older than the notification grace has its notification; a NEW row older than the
//! sweep grace has a live job (one that will still run); DEAD and DISCARDED rows are listed.

use super::{Check, Kind, Scan};

pub(super) struct Pipeline {
    pub notified: Check,
    pub unqueued: Check,
    pub dead_rows: Check,
}

/// A row of the scan; flags are 0/1 (MySQL has no boolean type to decode).
type Row = (
    i64,            // id
    i64,            // aggregate_id
    String,         // event_type
    String,         // status
    Option<String>, // job_id
    i64,            // NEW and older than the sweep grace
    i64,            // PUBLISHED and older than the notification grace
    i64,            // has its notification
    Option<String>, // the job's state, NULL when there is no job
    Option<String>, // last_error
);

pub(super) async fn scan(scan: &mut Scan<'_>) -> Result<Pipeline, sqlx::Error> {
    let mut out = Pipeline {
        notified: Check::new(
            "notifications",
            Kind::Invariant,
            "every PUBLISHED event older than the grace has its notification",
        ),
        unqueued: Check::new(
            "outbox_unqueued",
            Kind::Invariant,
            "no NEW outbox row older than the sweep grace lacks a live job",
        ),
        dead_rows: Check::new(
            "outbox_dead",
            Kind::Listing,
            "DEAD and DISCARDED outbox rows",
        ),
    };
    let sweep_grace = scan.settings.sweep_grace.as_micros() as i64;
    let notification_grace = scan.settings.notification_grace.as_micros() as i64;
    let mut after = 0i64;
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT e.id, e.aggregate_id, e.event_type, e.status, e.job_id, \
             CAST(e.status = 'NEW' AND e.created_at < CURRENT_TIMESTAMP(6) - INTERVAL ? MICROSECOND AS SIGNED), \
             CAST(COALESCE(e.status = 'PUBLISHED' AND e.published_at < CURRENT_TIMESTAMP(6) - INTERVAL ? MICROSECOND, 0) AS SIGNED), \
             CAST(n.id IS NOT NULL AS SIGNED), \
             CASE WHEN j.id IS NULL THEN NULL \
                  WHEN j.status = 'Failed' AND j.attempts >= j.max_attempts THEN 'Killed' \
                  ELSE j.status END, \
             e.last_error \
             FROM outbox_events e \
             LEFT JOIN notifications n ON n.event_id = e.event_id \
             LEFT JOIN jobs j ON j.id = e.job_id \
             WHERE e.id > ? ORDER BY e.id LIMIT ?",
        )
        .bind(sweep_grace)
        .bind(notification_grace)
        .bind(after)
        .bind(scan.chunk())
        .fetch_all(&mut *scan.conn)
        .await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        for (id, order, kind, status, job_id, stale_new, due, notified, job, last_error) in &rows {
            let what = format!("{kind} of order {order}");
            if *due == 1 && *notified == 0 {
                out.notified.found(
                    format!("outbox {id}"),
                    format!("{what}: published, no notification"),
                );
            }
            let live =
                matches!(job.as_deref(), Some(s) if !matches!(s, "Done" | "Killed" | "Discarded"));
            if *stale_new == 1 && !live {
                out.unqueued.found(
                    format!("outbox {id}"),
                    format!(
                        "{what}: NEW, job {} is {}",
                        job_id.as_deref().unwrap_or("(none)"),
                        job.as_deref().unwrap_or("missing")
                    ),
                );
            }
            if matches!(status.as_str(), "DEAD" | "DISCARDED") {
                out.dead_rows.found(
                    format!("outbox {id}"),
                    format!(
                        "{what}: {status}, last error: {}",
                        last_error.as_deref().unwrap_or("-")
                    ),
                );
            }
        }
        for check in [&mut out.notified, &mut out.unqueued, &mut out.dead_rows] {
            check.scanned += rows.len() as u64;
        }
        scan.read("outbox", rows.len());
        after = last;
    }
    Ok(out)
}
