//! The queues page: per queue its jobs per state, the age of its oldest pending job, jobs
//! done and dead in the last 5 and 60 minutes, its live workers, the rebuilds of the Kafka
//! client it works through, and pause or resume.

use askama::Template;
use axum::{
    extract::State,
    response::{Redirect, Response},
};
use orderflow_jobs::{
    kafka_clients::ClientRebuilds,
    kinds::QUEUES,
    operators::pause,
    operators::{job_query::Counting, queues},
};
use serde::Deserialize;

use super::{
    guard::{CsrfForm, Operator},
    view::{self, render, Chrome},
};
use crate::{
    error::{ApiError, ErrorCode},
    http::extract::Path,
    state::AppState,
};

struct QueueLine {
    queue: String,
    paused: bool,
    changed: String,
    pending: String,
    running: String,
    dead: String,
    done: String,
    discarded: String,
    oldest_pending: String,
    done_5m: i64,
    done_60m: i64,
    dead_5m: i64,
    dead_60m: i64,
    workers: i64,
    /// Empty for a queue without a Kafka client.
    kafka_client: String,
    /// The fatal error behind the last rebuild (empty: none).
    kafka_client_error: String,
}

#[derive(Template)]
#[template(path = "console/queues.html")]
struct QueuesPage {
    chrome: Chrome,
    queues: Vec<QueueLine>,
}

/// "producer: 1 in 60 min, 3 in all, last 2026-12-01 12:00:00", or "producer: none".
fn rebuilds(r: &ClientRebuilds) -> String {
    if r.rebuilds_total == 0 {
        return format!("{}: none", r.client);
    }
    format!(
        "{}: {} in 60 min, {} in all, last {}",
        r.client,
        r.rebuilds_last_60m,
        r.rebuilds_total,
        view::time(r.last_rebuilt_at)
    )
}

fn age(secs: Option<i64>) -> String {
    match secs {
        None => "—".to_owned(),
        Some(s) if s < 120 => format!("{s} s"),
        Some(s) if s < 7200 => format!("{} min", s / 60),
        Some(s) => format!("{} h", s / 3600),
    }
}

pub async fn list(State(state): State<AppState>, operator: Operator) -> Result<Response, ApiError> {
    let chrome = Chrome::of(&operator, &state, "queues").await;
    let overview = queues::overview_by(
        &state.db,
        state.config.events.queue.lease,
        Counting::UpTo(view::COUNT_BOUND),
    )
    .await?;
    let queues = overview
        .into_iter()
        .map(|q| QueueLine {
            paused: q.pause.paused,
            changed: match (&q.pause.changed_by, q.pause.changed_at) {
                (Some(by), at @ Some(_)) => format!("{} by {by}", view::time(at)),
                _ => String::new(),
            },
            pending: view::count(q.counts.pending),
            running: view::count(q.counts.running),
            dead: view::count(q.counts.dead),
            done: view::count(q.counts.done),
            discarded: view::count(q.counts.discarded),
            oldest_pending: age(q.oldest_pending_age_secs),
            done_5m: q.finished.done_last_5m,
            done_60m: q.finished.done_last_60m,
            dead_5m: q.finished.dead_last_5m,
            dead_60m: q.finished.dead_last_60m,
            workers: q.live_workers,
            kafka_client: q.kafka_client.as_ref().map(rebuilds).unwrap_or_default(),
            kafka_client_error: q
                .kafka_client
                .and_then(|r| r.last_error)
                .unwrap_or_default(),
            queue: q.queue,
        })
        .collect();
    Ok(render(&QueuesPage { chrome, queues }))
}

#[derive(Deserialize)]
pub struct NoFields {}

pub async fn set_paused(
    State(state): State<AppState>,
    operator: Operator,
    Path((queue, op)): Path<(String, String)>,
    CsrfForm(_): CsrfForm<NoFields>,
) -> Result<Redirect, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such resource");
    let queue = QUEUES
        .into_iter()
        .find(|q| *q == queue)
        .ok_or_else(not_found)?;
    let paused = match op.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(not_found()),
    };
    pause::set_paused(&state.db, queue, paused, &operator.actor()).await?;
    let now = if paused { "paused" } else { "running again" };
    operator
        .flash(format!(
            "{queue} is {now} (every replica, from its next poll)."
        ))
        .await;
    Ok(Redirect::to("/console/queues"))
}
