//! GET /notifications: a user's own notifications, written by the consume-notification job
//! (one per event id; the table and its SQL belong to `orderflow_jobs::notifications`).

use axum::{extract::State, routing::get, Router};
use orderflow_jobs::notifications::{self, Notification};

use crate::{
    app::AppState,
    auth::AuthUser,
    error::ApiError,
    http::paging::{Page, PageRequest},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/notifications", get(list))
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    page: PageRequest,
) -> Result<axum::Json<Page<Notification>>, ApiError> {
    let (items, total) =
        notifications::list_for_user(&state.db, user.id, page.limit(), page.offset()).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}
