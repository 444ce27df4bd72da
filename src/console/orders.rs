//! An order's timeline, searched by order id: its journey from commit to notification.

use askama::Template;
use axum::{
    extract::{Query, State},
    response::Response,
};
use serde::Deserialize;

use super::{
    guard::Operator,
    view::{self, render, Chrome},
};
use crate::{error::ApiError, operators::timeline, state::AppState};

#[derive(Deserialize)]
pub struct Search {
    id: Option<String>,
}

struct StepLine {
    step: String,
    at: String,
    event: String,
    status: String,
    job_id: String,
    attempts: String,
    detail: String,
}

struct Found {
    order_id: i64,
    user_id: i64,
    status: String,
    total: i64,
    archived: bool,
    trace_id: String,
    trace_url: Option<String>,
    steps: Vec<StepLine>,
}

#[derive(Template)]
#[template(path = "console/timeline.html")]
struct TimelinePage {
    chrome: Chrome,
    query: String,
    found: Option<Found>,
    message: Option<String>,
}

pub async fn timeline(
    State(state): State<AppState>,
    operator: Operator,
    Query(search): Query<Search>,
) -> Result<Response, ApiError> {
    let chrome = Chrome::of(&operator, &state, "orders").await;
    let query = search.id.unwrap_or_default().trim().to_owned();
    let (found, message) = match query.parse::<i64>() {
        _ if query.is_empty() => (None, None),
        Err(_) => (None, Some(format!("{query:?} is not an order id."))),
        Ok(id) => match timeline::build(&state.db, state.config.trace_ui.as_ref(), id).await? {
            None => (None, Some(format!("No order {id}, live or archived."))),
            Some(t) => (
                Some(Found {
                    order_id: t.order_id,
                    user_id: t.user_id,
                    status: t.status,
                    total: t.total_amount,
                    archived: t.archived,
                    trace_id: t.trace.trace_id.unwrap_or_default(),
                    trace_url: t.trace.trace_url,
                    steps: t
                        .steps
                        .into_iter()
                        .map(|s| StepLine {
                            step: serde_json::to_value(s.step)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            at: view::time(s.at),
                            event: match (s.event_type, s.event_id) {
                                (Some(t), Some(id)) => format!("{t} {id}"),
                                _ => String::new(),
                            },
                            status: s.status.unwrap_or_default(),
                            job_id: s.job_id.unwrap_or_default(),
                            attempts: s.attempts.map(|a| a.to_string()).unwrap_or_default(),
                            detail: s.detail.unwrap_or_default(),
                        })
                        .collect(),
                }),
                None,
            ),
        },
    };
    Ok(render(&TimelinePage {
        chrome,
        query,
        found,
        message,
    }))
}
