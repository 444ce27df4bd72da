//! GET /admin/audit: the operators' action log, newest first (ADMIN). The path keeps its
//! first name; the invariant audit is `crate::audit`.

use axum::extract::State;
use orderflow_jobs::operators::action_log::{self, ActionLogEntry};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::AdminUser,
    error::{ApiError, ErrorBody},
    http::paging::{Page, PageParams, PageRequest},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Every operator action (retry, bulk retry, discard, bulk discard, pause, resume) from the
/// API, the console and the CLI: who, what, on which jobs or filter, how many, when (ADMIN).
#[utoipa::path(
    get,
    path = "/admin/audit",
    operation_id = "listAudit",
    tag = "operators",
    security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of the action log, newest first", body = Page<ActionLogEntry>),
        (status = 400, description = "VALIDATION_ERROR: bad paging", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    page: PageRequest,
) -> Result<axum::Json<Page<ActionLogEntry>>, ApiError> {
    let (items, total) = action_log::list(&state.db, page.limit(), page.offset()).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}
