//! An operator's pause or resume of a queue: the state every replica's gate follows
//! (`engine::pause`), changed and logged in one transaction.

use sqlx::MySqlPool;

use super::action_log::{self, Action, Actor};

/// Pauses or resumes `queue` for every replica, recorded in the operators' action log in the
/// same transaction; returns whether the state changed.
pub async fn set_paused(
    pool: &MySqlPool,
    queue: &str,
    paused: bool,
    actor: &Actor,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let was: Option<bool> =
        sqlx::query_scalar("SELECT paused FROM job_queues WHERE queue = ? FOR UPDATE")
            .bind(queue)
            .fetch_optional(&mut *tx)
            .await?;
    let changed = was.unwrap_or(false) != paused;
    sqlx::query(
        "INSERT INTO job_queues (queue, paused, changed_at, changed_by) \
         VALUES (?, ?, CURRENT_TIMESTAMP(6), ?) \
         ON DUPLICATE KEY UPDATE paused = VALUES(paused), changed_at = VALUES(changed_at), \
         changed_by = VALUES(changed_by)",
    )
    .bind(queue)
    .bind(paused)
    .bind(actor.label())
    .execute(&mut *tx)
    .await?;
    let action = if paused {
        Action::Pause
    } else {
        Action::Resume
    };
    let target = serde_json::json!({ "queue": queue });
    action_log::record(&mut tx, actor, action, &target, u64::from(changed)).await?;
    tx.commit().await?;
    tracing::info!(queue, paused, changed, actor = %actor.label(), "queue state set by an operator");
    Ok(changed)
}
