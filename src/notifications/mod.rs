//! A user's notifications, created by the consume-notification job (one per event id).

use axum::{extract::State, routing::get, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::ApiError,
    http::paging::{Page, PageRequest},
};

#[derive(Debug, Serialize, sqlx::FromRow)]
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

pub fn router() -> Router<AppState> {
    Router::new().route("/notifications", get(list))
}

async fn list_for_user(
    pool: &MySqlPool,
    user_id: i64,
    page: PageRequest,
) -> Result<(Vec<Notification>, i64), sqlx::Error> {
    let items = sqlx::query_as(
        "SELECT id, event_id, order_id, type, message, created_at FROM notifications \
         WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(user_id)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok((items, total))
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    page: PageRequest,
) -> Result<axum::Json<Page<Notification>>, ApiError> {
    let (items, total) = list_for_user(&state.db, user.id, page).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}
