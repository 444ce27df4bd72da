//! The action log page: every operator action, newest first.

use askama::Template;
use axum::{
    extract::{Query, State},
    response::Response,
};
use orderflow_jobs::operators::action_log;
use serde::Deserialize;

use super::{
    guard::Operator,
    view::{self, render, Chrome},
};
use crate::{error::ApiError, http::paging::MAX_PAGE, state::AppState};

const PAGE_SIZE: i64 = 50;

#[derive(Deserialize)]
pub struct Paging {
    page: Option<u32>,
}

struct EntryLine {
    at: String,
    via: String,
    actor: String,
    action: String,
    target: String,
    affected: i32,
}

#[derive(Template)]
#[template(path = "console/action_log.html")]
struct ActionLogPage {
    chrome: Chrome,
    entries: Vec<EntryLine>,
    total: i64,
    prev: Option<String>,
    next: Option<String>,
}

fn name(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(paging): Query<Paging>,
) -> Result<Response, ApiError> {
    let chrome = Chrome::of(&operator, &state, "action_log").await;
    let page = paging.page.unwrap_or(0).min(MAX_PAGE);
    let (entries, total) =
        action_log::list(&state.db, PAGE_SIZE, i64::from(page) * PAGE_SIZE).await?;
    let entries = entries
        .into_iter()
        .map(|e| EntryLine {
            at: view::time(Some(e.at)),
            via: name(e.via),
            action: name(e.action),
            target: view::shorten(&e.target.to_string(), 300),
            affected: e.affected,
            actor: e.actor,
        })
        .collect();
    let pages = (total + PAGE_SIZE - 1) / PAGE_SIZE;
    Ok(render(&ActionLogPage {
        chrome,
        entries,
        total,
        prev: (page > 0).then(|| format!("/console/audit?page={}", page - 1)),
        next: (i64::from(page) + 1 < pages).then(|| format!("/console/audit?page={}", page + 1)),
    }))
}
