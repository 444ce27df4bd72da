//! SQL of the notifications table: one row per event (`event_id` UNIQUE).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;

use orderflow_sql_script::{Part, Script};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: i64,
    pub event_id: String,
    pub order_id: i64,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewNotification<'a> {
    pub event_id: &'a str,
    pub user_id: i64,
    pub order_id: i64,
    pub kind: &'a str,
    pub message: &'a str,
}

/// Inserts the notification; false if this event already has one. Inside a transaction, a
/// duplicate undoes only this statement (InnoDB), so the other inserts of a batch stand.
pub async fn insert(
    db: impl sqlx::Executor<'_, Database = sqlx::MySql>,
    n: &NewNotification<'_>,
) -> Result<bool, sqlx::Error> {
    let res = sqlx::query(
        "INSERT INTO notifications (event_id, user_id, order_id, type, message) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(n.event_id)
    .bind(n.user_id)
    .bind(n.order_id)
    .bind(n.kind)
    .bind(n.message)
    .execute(db)
    .await;
    match res {
        Ok(_) => Ok(true),
        Err(e) if crate::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Inserts every notification of `rows` with one statement (issue 33: one per job, not one
/// per event). It fails whole if one of the events already has its notification (the
/// UNIQUE event id, `is_unique_violation`): inside a transaction only this statement is
/// undone, and the caller inserts them one by one with [`insert`] to tell which were new.
pub async fn insert_many(
    conn: &mut sqlx::MySqlConnection,
    rows: &[NewNotification<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut parts = vec![Part::Sql(
        "INSERT INTO notifications (event_id, user_id, order_id, type, message) VALUES ",
    )];
    for (i, n) in rows.iter().enumerate() {
        parts.extend([
            Part::Sql(if i == 0 { "(" } else { ", (" }),
            Part::Text(n.event_id),
            Part::Sql(", "),
            Part::Int(n.user_id),
            Part::Sql(", "),
            Part::Int(n.order_id),
            Part::Sql(", "),
            Part::Text(n.kind),
            Part::Sql(", "),
            Part::Text(n.message),
            Part::Sql(")"),
        ]);
    }
    let mut script = Script::default();
    script.statement(&parts);
    script.run(conn).await.map(drop).map_err(|e| e.error)
}

pub async fn list_for_user(
    pool: &MySqlPool,
    user_id: i64,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Notification>, i64), sqlx::Error> {
    let items = sqlx::query_as(
        "SELECT id, event_id, order_id, type, message, created_at FROM notifications \
         WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok((items, total))
}

/// The notifications of these events (the event id is UNIQUE: an index lookup each).
pub async fn for_events(
    pool: &MySqlPool,
    event_ids: &[String],
) -> Result<Vec<Notification>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sqlx::QueryBuilder::new(
        "SELECT id, event_id, order_id, type, message, created_at FROM notifications \
         WHERE event_id IN (",
    );
    let mut sep = q.separated(", ");
    for id in event_ids {
        sep.push_bind(id.clone());
    }
    q.push(") ORDER BY id");
    q.build_query_as().fetch_all(pool).await
}
