//! An order by id wherever it is now: live, or moved to the archive (operators' timeline).

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FoundOrder {
    pub id: i64,
    pub user_id: i64,
    pub status: String,
    pub total_amount: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it moved to the archive (None: still live).
    pub archived_at: Option<DateTime<Utc>>,
}

pub async fn find_any(pool: &MySqlPool, id: i64) -> Result<Option<FoundOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, status, total_amount, created_at, updated_at, \
         CAST(NULL AS DATETIME(6)) AS archived_at FROM orders WHERE id = ? \
         UNION ALL SELECT id, user_id, status, total_amount, created_at, updated_at, archived_at \
         FROM orders_archive WHERE id = ? LIMIT 1",
    )
    .bind(id)
    .bind(id)
    .fetch_optional(pool)
    .await
}
