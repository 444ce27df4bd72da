//! GET /notifications: a user's own notifications, written by the consume-notification job
//! (one per event id; the table and its SQL belong to `orderflow_jobs::consume_notification::notifications`).

use axum::extract::State;
use orderflow_jobs::consume_notification::notifications::{self, Notification};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    http::paging::{Page, PageParams, PageRequest},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// The caller's own notifications, newest first.
#[utoipa::path(
    get,
    path = "/notifications",
    operation_id = "listNotifications",
    tag = "notifications",
    security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of the caller's notifications", body = Page<Notification>),
        (status = 400, description = "VALIDATION_ERROR: bad paging", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    page: PageRequest,
) -> Result<axum::Json<Page<Notification>>, ApiError> {
    let (items, total) =
        notifications::list_for_user(&state.db, user.id, page.limit(), page.offset()).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}
