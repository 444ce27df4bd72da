//! The operators' side over HTTP (ADMIN): jobs (filters, counts per state, one job with its
//! attempt history and carried outbox rows, retry and discard, one or in bulk), the queues
//! (overview, pause and resume), an order's timeline, and the action log of every action.
//! The web console (`crate::console`) renders the same views; `cli` is the command line's
//! side of the same actions.

mod action_log;
pub mod cli;
mod jobs;
mod queues;
pub mod timeline;
pub mod trace_link;
pub mod views;

use orderflow_jobs::operators::action_log::{Actor, Via};
use utoipa_axum::router::OpenApiRouter;

use crate::{auth::AdminUser, error::ApiError, state::AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(jobs::router())
        .merge(queues::router())
        .merge(timeline::router())
        .merge(action_log::router())
}

/// The action log's name for an administrator acting through `via`.
pub async fn actor(state: &AppState, admin: AdminUser, via: Via) -> Result<Actor, ApiError> {
    let user_id = admin.0.id;
    let email = crate::auth::email_of(&state.db, user_id)
        .await?
        .unwrap_or_else(|| format!("user {user_id}"));
    Ok(Actor::Account {
        via,
        user_id,
        email,
    })
}
