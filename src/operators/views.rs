//! What operators look at, assembled once for the API (as JSON) and the console (as HTML):
//! a page of jobs with the count of each state, and one job with its attempt history and
//! the outbox rows it carries, each with its trace link.

use chrono::{DateTime, Utc};
use orderflow_jobs::{
    engine::attempts::{self, AttemptRecord},
    operators::{
        job_query::{self, Counting, JobFilter, JobRow, StatusFilter},
        ops::BulkFilter,
        queues::StateCounts,
    },
    publish_outbox::{
        carried::{self, OutboxRecord},
        job::PUBLISH_OUTBOX,
    },
    search::{self, Term},
};
use serde::Serialize;
use sqlx::MySqlPool;
use utoipa::ToSchema;

use super::trace_link::TraceLink;
use crate::{config::TraceUiUrl, http::paging::PageRequest};

/// A time an operator typed as RFC 3339 (surrounding blanks ignored), in UTC: the API's
/// filters take only this; the console's forms also take a `datetime-local` value.
pub fn rfc3339(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Attempts shown per job, newest first (a job has at most JOB_MAX_ATTEMPTS per round).
pub const MAX_ATTEMPTS_SHOWN: u32 = 100;
/// Outbox rows shown per publish job (a job is given at most PUBLISH_BATCH_SIZE).
pub const MAX_ROWS_SHOWN: u32 = 1000;

/// The filters of a job list or of a bulk action, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInput {
    pub status: StatusFilter,
    pub queue: Option<String>,
    /// A job id, an order id or an event id.
    pub q: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl FilterInput {
    /// The job filter, the search resolved to the jobs it names.
    pub async fn resolve(&self, pool: &MySqlPool) -> Result<JobFilter, sqlx::Error> {
        let ids = match self.q.as_deref().and_then(Term::parse) {
            Some(term) => Some(search::jobs_for(pool, &term).await?),
            None => None,
        };
        Ok(JobFilter {
            status: self.status,
            queue: self.queue.clone().filter(|q| !q.is_empty()),
            ids,
            since: self.since,
            until: self.until,
        })
    }

    /// The filter of a bulk action (on dead jobs, whatever `status`), its search left to the
    /// action: an order or an event id selects that order's rows and events, not whole jobs.
    /// Blank fields are absent.
    pub fn bulk(&self) -> BulkFilter {
        BulkFilter {
            queue: self.queue.clone().filter(|q| !q.trim().is_empty()),
            term: self.q.as_deref().and_then(Term::parse),
            since: self.since,
            until: self.until,
        }
    }
}

/// A page of jobs, and how many jobs of each state the same filter matches (whatever its
/// status), so that a list also tells where the others are.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobPage {
    pub items: Vec<JobRow>,
    pub page: u32,
    pub size: u32,
    pub total_items: i64,
    pub total_pages: i64,
    pub counts: StateCounts,
}

pub async fn job_page(
    pool: &MySqlPool,
    filter: &JobFilter,
    page: PageRequest,
) -> Result<JobPage, sqlx::Error> {
    job_page_by(pool, filter, page, Counting::Exact).await
}

/// [`job_page`], its total and counts made as `counting` says (the console's pages, which
/// refresh themselves, count up to a bound).
pub async fn job_page_by(
    pool: &MySqlPool,
    filter: &JobFilter,
    page: PageRequest,
    counting: Counting,
) -> Result<JobPage, sqlx::Error> {
    let (items, total) =
        job_query::list_counted(pool, filter, page.limit(), page.offset(), counting).await?;
    let counts = StateCounts::from_pairs(&job_query::counts_by(pool, filter, counting).await?);
    let size = i64::from(page.size);
    Ok(JobPage {
        items,
        page: page.page,
        size: page.size,
        total_items: total,
        total_pages: (total + size - 1) / size,
        counts,
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    #[serde(flatten)]
    pub attempt: AttemptRecord,
    /// The attempt's trace in the tracing UI (`TRACE_UI_URL`).
    pub trace_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CarriedRow {
    #[serde(flatten)]
    pub row: OutboxRecord,
    /// The trace of the order's request.
    #[serde(flatten)]
    pub trace: TraceLink,
}

impl CarriedRow {
    pub fn new(row: OutboxRecord, ui: Option<&TraceUiUrl>) -> Self {
        let trace = TraceLink::new(ui, row.trace_id());
        Self { row, trace }
    }
}

/// One job: the job table's row, the worker that holds or last held it, its failed attempts
/// (newest first) and, for a publish job, the outbox rows it carries.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobRow,
    pub lock_by: Option<String>,
    pub attempt_history: Vec<AttemptView>,
    pub outbox_rows: Vec<CarriedRow>,
}

pub async fn job_detail(
    pool: &MySqlPool,
    ui: Option<&TraceUiUrl>,
    id: &str,
) -> Result<Option<JobDetail>, sqlx::Error> {
    let Some(job) = job_query::find(pool, id).await? else {
        return Ok(None);
    };
    let attempt_history = attempts::of_job(pool, id, MAX_ATTEMPTS_SHOWN)
        .await?
        .into_iter()
        .map(|attempt| AttemptView {
            trace_url: TraceLink::new(ui, attempt.trace_id.clone()).trace_url,
            attempt,
        })
        .collect();
    let outbox_rows = if job.row.queue == PUBLISH_OUTBOX {
        carried::of_job(pool, id, MAX_ROWS_SHOWN)
            .await?
            .into_iter()
            .map(|row| CarriedRow::new(row, ui))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some(JobDetail {
        job: job.row,
        lock_by: job.lock_by,
        attempt_history,
        outbox_rows,
    }))
}
