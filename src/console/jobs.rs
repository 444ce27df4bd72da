//! The jobs pages: the list (filters, counts per state, select several, retry or discard the
//! selection, an order's or an event's dead rows and events, or every dead job matching the
//! filters — confirmed by the count the page showed) and one job (payload, attempts with
//! their errors and trace links, carried rows; retry or discard it).

use askama::Template;
use axum::{
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use orderflow_jobs::{
    kinds::QUEUES,
    operators::{
        job_query::{Counting, JobState, StatusFilter},
        ops::{self, ActionError, Confirm, Op, Outcome, Selection, LIMIT},
    },
};
use serde::{Deserialize, Serialize};

use super::{
    guard::{CsrfForm, Operator},
    view::{self, render, Chrome},
};
use crate::{
    error::{ApiError, ErrorCode},
    http::{extract::Path, paging::PageRequest},
    operators::views::{self as shared, FilterInput, JobDetail},
    state::AppState,
};

const PAGE_SIZE: u32 = 50;

/// The list's filters as the form sends them (and as links carry them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Filters {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    q: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<u32>,
}

impl Filters {
    /// Blank fields are absent.
    fn tidy(mut self) -> Self {
        for f in [
            &mut self.status,
            &mut self.queue,
            &mut self.q,
            &mut self.since,
            &mut self.until,
        ] {
            if f.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *f = None;
            }
        }
        self
    }

    fn input(&self) -> Result<FilterInput, String> {
        let status = match self.status.as_deref() {
            None => StatusFilter::DEAD,
            Some(s) => StatusFilter::parse(s).ok_or_else(|| format!("unknown state {s:?}"))?,
        };
        Ok(FilterInput {
            status,
            queue: self.queue.clone(),
            q: self.q.clone(),
            since: view::parse_time(self.since.as_deref())?,
            until: view::parse_time(self.until.as_deref())?,
        })
    }

    fn href(&self) -> String {
        format!("/console/jobs{}", view::query_string(self))
    }

    fn with(&self, status: Option<&str>, page: Option<u32>) -> Self {
        Self {
            status: status.map(str::to_owned),
            page,
            ..self.clone()
        }
    }
}

struct StateTab {
    label: &'static str,
    count: String,
    href: String,
    active: bool,
}

struct JobLine {
    id: String,
    queue: String,
    state: &'static str,
    attempts: String,
    last_result: String,
    run_at: String,
    done_at: String,
}

struct QueueOption {
    name: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct JobsPage {
    chrome: Chrome,
    q_value: String,
    queue_value: String,
    /// `since`/`until` as `datetime-local` values.
    since: String,
    until: String,
    status: String,
    queues: Vec<QueueOption>,
    tabs: Vec<StateTab>,
    rows: Vec<JobLine>,
    error: Option<String>,
    /// Dead jobs matching the filters, as the "all matching" buttons confirm them (absent
    /// with a search: an order's or event's part is what those buttons act on then).
    expected: Option<i64>,
    limit: usize,
    over_limit: bool,
    total: String,
    page: u32,
    pages: i64,
    /// "+" when there are more pages than counted.
    more_pages: &'static str,
    prev: Option<String>,
    next: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(filters): Query<Filters>,
) -> Response {
    let filters = filters.tidy();
    let chrome = Chrome::of(&operator, &state, "jobs").await;
    let page = PageRequest {
        page: filters.page.unwrap_or(0).min(crate::http::paging::MAX_PAGE),
        size: PAGE_SIZE,
    };
    let (input, error) = match filters.input() {
        Ok(input) => (input, None),
        Err(e) => (
            Filters::default()
                .input()
                .unwrap_or_else(|_| unreachable!()),
            Some(e),
        ),
    };
    let result = async {
        let filter = input.resolve(&state.db).await?;
        shared::job_page_by(&state.db, &filter, page, Counting::UpTo(view::COUNT_BOUND)).await
    };
    let jobs = match result.await {
        Ok(jobs) => jobs,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let status = filters.status.clone().unwrap_or_else(|| "dead".into());
    let counts = &jobs.counts;
    let tabs = JobState::ALL
        .into_iter()
        .map(|st| {
            let count = match st {
                JobState::Dead => counts.dead,
                JobState::Pending => counts.pending,
                JobState::Running => counts.running,
                JobState::Done => counts.done,
                JobState::Discarded => counts.discarded,
            };
            StateTab {
                label: st.as_str(),
                count: view::count(count),
                href: filters.with(Some(st.as_str()), None).href(),
                active: status == st.as_str(),
            }
        })
        .collect();
    let rows = jobs
        .items
        .into_iter()
        .map(|j| JobLine {
            attempts: attempts_label(j.attempts, j.max_attempts),
            last_result: view::shorten(&view::job_result(j.last_result.as_deref()), 120),
            run_at: view::time(j.run_at),
            done_at: view::time(j.done_at),
            state: j.state.as_str(),
            id: j.id,
            queue: j.queue,
        })
        .collect();
    let at = jobs.page;
    let prev = (at > 0).then(|| filters.with(filters.status.as_deref(), Some(at - 1)).href());
    let next = (i64::from(at) + 1 < jobs.total_pages)
        .then(|| filters.with(filters.status.as_deref(), Some(at + 1)).href());
    render(&JobsPage {
        chrome,
        since: view::input_time(input.since),
        until: view::input_time(input.until),
        status,
        queues: QUEUES
            .into_iter()
            .map(|name| QueueOption {
                name,
                selected: filters.queue.as_deref() == Some(name),
            })
            .collect(),
        q_value: filters.q.clone().unwrap_or_default(),
        queue_value: filters.queue.clone().unwrap_or_default(),
        tabs,
        rows,
        error,
        expected: filters.q.is_none().then_some(jobs.counts.dead),
        limit: LIMIT,
        over_limit: jobs.counts.dead > LIMIT as i64,
        total: view::count(jobs.total_items),
        page: at,
        pages: jobs.total_pages,
        more_pages: if jobs.total_items > i64::from(view::COUNT_BOUND) {
            "+"
        } else {
            ""
        },
        prev,
        next,
    })
}

/// The list form's buttons: the selected jobs, or every dead job matching the filters (the
/// list's filters, and the dead count it showed, ride along as hidden fields).
#[derive(Deserialize)]
pub struct SelectionForm {
    action: String,
    #[serde(default)]
    ids: Vec<String>,
    status: Option<String>,
    queue: Option<String>,
    q: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// The dead count the page showed when it was loaded.
    expected: Option<String>,
}

fn refusal(op: Op, e: ActionError) -> Result<String, ApiError> {
    let verb = op.done();
    match e {
        ActionError::NotFound(id) => Ok(format!("No job {id}.")),
        ActionError::NotDead { id, status } => Ok(format!(
            "Job {id} is {status}; only dead jobs can be {verb}."
        )),
        ActionError::NotDiscardable { id, reason, .. } => {
            Ok(format!("Job {id} cannot be discarded: {reason}."))
        }
        ActionError::ConfirmationRequired { matched } => Ok(format!(
            "Nothing was {verb}: {matched} dead job(s) match these filters, and acting on all \
             of them needs that count confirmed. Reload the list and try again."
        )),
        ActionError::CountChanged { expected, matched } => Ok(format!(
            "Nothing was {verb}: {matched} dead job(s) match these filters now, not {expected} \
             as the page showed. Check the list and try again."
        )),
        ActionError::TooManyMatching { matched, limit } => Ok(format!(
            "Nothing was {verb}: {matched} dead jobs match these filters, and one action takes \
             at most {limit}. Narrow the filters (queue, queued since/until)."
        )),
        ActionError::TooManySelected { selected, limit } => Ok(format!(
            "Nothing was {verb}: {selected} jobs selected, and one action takes at most \
             {limit}. Select fewer, or use the filters."
        )),
        ActionError::Db(e) => Err(e.into()),
    }
}

/// The flash message of a bulk action that went through.
fn done(op: Op, o: &Outcome) -> String {
    let done = match op {
        Op::Retry => "re-queued",
        Op::Discard => "discarded",
    };
    let mut message = format!("{} dead job(s) {done}", o.changed);
    if o.outbox_rows > 0 || o.events > 0 {
        message.push_str(&format!(
            " ({} outbox row(s), {} event(s)",
            o.outbox_rows, o.events
        ));
        if o.split > 0 {
            message.push_str(&format!(
                "; {} job(s) split, their other orders' events left as they were",
                o.split
            ));
        }
        message.push(')');
    }
    message.push('.');
    message
}

pub async fn act_on_selection(
    State(state): State<AppState>,
    operator: Operator,
    CsrfForm(form): CsrfForm<SelectionForm>,
) -> Result<Redirect, ApiError> {
    let filters = Filters {
        status: form.status,
        queue: form.queue,
        q: form.q,
        since: form.since,
        until: form.until,
        page: None,
    }
    .tidy();
    let back = filters.href();
    let (op, all) = match form.action.as_str() {
        "retry" => (Op::Retry, false),
        "discard" => (Op::Discard, false),
        "retry-all" => (Op::Retry, true),
        "discard-all" => (Op::Discard, true),
        _ => return Err(ApiError::new(ErrorCode::ValidationError, "unknown action")),
    };
    let mut confirm = Confirm::default();
    let selection = if all {
        let input = filters
            .input()
            .map_err(|e| ApiError::new(ErrorCode::ValidationError, e))?;
        confirm.expected = match form.expected.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n) => Some(n.parse().map_err(|_| {
                ApiError::new(ErrorCode::ValidationError, "expected is not a count")
            })?),
        };
        Selection::Filter(input.bulk())
    } else if form.ids.is_empty() {
        operator.flash("Select at least one job first.").await;
        return Ok(Redirect::to(&back));
    } else {
        Selection::Ids(form.ids)
    };
    let actor = operator.actor();
    let message = match ops::act_on_all(&state.db, op, &selection, confirm, &actor).await {
        Ok(outcome) => done(op, &outcome),
        Err(e) => refusal(op, e)?,
    };
    operator.flash(message).await;
    Ok(Redirect::to(&back))
}

struct AttemptLine {
    attempt: i32,
    started: String,
    finished: String,
    outcome: &'static str,
    worker: String,
    error: String,
    trace_id: String,
    trace_url: Option<String>,
}

struct RowLine {
    outbox_id: i64,
    order_id: i64,
    event_id: String,
    event_type: String,
    status: String,
    attempts: i32,
    last_error: String,
    published: String,
    trace_id: String,
    trace_url: Option<String>,
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    chrome: Chrome,
    id: String,
    queue: String,
    state: &'static str,
    status: String,
    attempts: String,
    run_at: String,
    done_at: String,
    worker: String,
    last_result: String,
    payload: String,
    dead: bool,
    history: Vec<AttemptLine>,
    rows: Vec<RowLine>,
    publish_job: bool,
}

fn pretty_json(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or("");
    serde_json::from_str::<serde_json::Value>(raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| raw.to_owned())
}

fn job_page(chrome: Chrome, detail: JobDetail) -> JobPage {
    let job = detail.job;
    JobPage {
        chrome,
        state: job.state.as_str(),
        dead: job.state == JobState::Dead,
        attempts: attempts_label(job.attempts, job.max_attempts),
        run_at: view::time(job.run_at),
        done_at: view::time(job.done_at),
        worker: detail.lock_by.unwrap_or_default(),
        last_result: view::job_result(job.last_result.as_deref()),
        payload: pretty_json(job.payload.as_deref()),
        publish_job: job.queue == orderflow_jobs::publish_outbox::job::PUBLISH_OUTBOX,
        history: detail
            .attempt_history
            .into_iter()
            .map(|a| AttemptLine {
                attempt: a.attempt.attempt,
                started: view::time(Some(a.attempt.started_at)),
                finished: view::time(Some(a.attempt.finished_at)),
                outcome: a.attempt.outcome.as_str(),
                worker: a.attempt.worker.unwrap_or_default(),
                error: a.attempt.error,
                trace_id: a.attempt.trace_id.unwrap_or_default(),
                trace_url: a.trace_url,
            })
            .collect(),
        rows: detail
            .outbox_rows
            .into_iter()
            .map(|r| RowLine {
                outbox_id: r.row.outbox_id,
                order_id: r.row.order_id,
                event_id: r.row.event_id,
                event_type: r.row.event_type,
                status: r.row.status,
                attempts: r.row.attempts,
                last_error: r.row.last_error.unwrap_or_default(),
                published: view::time(r.row.published_at),
                trace_id: r.trace.trace_id.unwrap_or_default(),
                trace_url: r.trace.trace_url,
            })
            .collect(),
        id: job.id,
        queue: job.queue,
        status: job.status,
    }
}

pub async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let chrome = Chrome::of(&operator, &state, "jobs").await;
    let detail = shared::job_detail(&state.db, state.config.trace_ui.as_ref(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(render(&job_page(chrome, detail)))
}

#[derive(Deserialize)]
pub struct NoFields {}

pub async fn act_on_one(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, op)): Path<(String, String)>,
    CsrfForm(_): CsrfForm<NoFields>,
) -> Result<Redirect, ApiError> {
    let op = match op.as_str() {
        "retry" => Op::Retry,
        "discard" => Op::Discard,
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such resource")),
    };
    let actor = operator.actor();
    let message = match ops::act(&state.db, op, &id, &actor).await {
        Ok(rows) => match op {
            Op::Retry => format!("Job {id} re-queued ({rows} outbox row(s) NEW again)."),
            Op::Discard => format!("Job {id} discarded ({rows} outbox row(s) DISCARDED)."),
        },
        Err(e) => refusal(op, e)?,
    };
    operator.flash(message).await;
    Ok(Redirect::to(&job_href(&id)))
}

/// The job's page, for ids that are plain (every ULID is); the list otherwise.
fn job_href(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        format!("/console/jobs/{id}")
    } else {
        "/console/jobs".to_owned()
    }
}

/// "3/5" for a job that a count of attempts ends. A publish job's retries end with its
/// retry window instead (ADR 0015; its `max_attempts` only keeps apalis out of the
/// decision), so "7/1000000" would show a limit nobody set.
fn attempts_label(attempts: i32, max_attempts: i32) -> String {
    let windowed = i64::from(max_attempts)
        >= i64::from(orderflow_jobs::publish_outbox::retry_policy::PUBLISH_MAX_ATTEMPTS);
    if windowed {
        format!("{attempts} (retried until its window ends)")
    } else {
        format!("{attempts}/{max_attempts}")
    }
}

#[cfg(test)]
mod attempts_tests {
    use super::attempts_label;

    #[test]
    fn a_count_limit_is_shown_and_a_window_is_named() {
        assert_eq!(attempts_label(2, 5), "2/5");
        let publish = orderflow_jobs::publish_outbox::retry_policy::PUBLISH_MAX_ATTEMPTS as i32;
        assert_eq!(
            attempts_label(7, publish),
            "7 (retried until its window ends)"
        );
    }
}
