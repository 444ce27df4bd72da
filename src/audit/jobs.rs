//! Every dead job (attempts exhausted or refused for good), with its queue and last error:
//! listed for an operator (`orderflow jobs retry|discard`), not a failure of the audit.

use super::{Check, Kind, Scan};

pub(super) async fn scan(scan: &mut Scan<'_>) -> Result<Check, sqlx::Error> {
    let mut check = Check::new("dead_jobs", Kind::Listing, "dead jobs");
    let mut after = String::new();
    loop {
        // Dead as the operators' views define it (orderflow_jobs::operators::job_query).
        let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT id, job_type, attempts, LEFT(last_result, 300) FROM jobs \
             WHERE (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts)) \
             AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(&after)
        .bind(scan.chunk())
        .fetch_all(&mut *scan.conn)
        .await?;
        let Some(last) = rows.last().map(|r| r.0.clone()) else {
            break;
        };
        for (id, queue, attempts, last_error) in &rows {
            check.found(
                format!("job {id}"),
                format!(
                    "queue {queue}, {attempts} attempts, last error: {}",
                    last_error.as_deref().unwrap_or("-")
                ),
            );
        }
        check.scanned += rows.len() as u64;
        scan.read("dead jobs", rows.len());
        after = last;
    }
    Ok(check)
}
