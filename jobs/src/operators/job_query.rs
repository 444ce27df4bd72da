//! Reading the job table as operators see it: jobs by state, queue, the jobs a search named,
//! and the time they were queued; the count of each state under the same filter; one job.
//!
//! A job's *state* is what an operator acts on, read from apalis' status: `dead` is `Killed`
//! (attempts exhausted or refused for good) or `Failed` with no attempts left, which apalis
//! also treats as final; `pending` is waiting to run (`Pending`, `Queued`, or `Failed` with
//! attempts left: its backoff); `discarded` is a dead job an operator set aside for good.
//!
//! "When it was queued" is the job's ULID: its first ten characters are the time it was made,
//! and ULIDs sort by them, so `since`/`until` is a range of the primary key.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder};
use ulid::Ulid;

pub(crate) const DEAD: &str =
    "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))";
pub(crate) const DISCARDED: &str = "Discarded";

/// The state column of a listed job (see the module's doc).
const STATE: &str =
    "CASE WHEN status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts) \
     THEN 'dead' WHEN status = 'Discarded' THEN 'discarded' WHEN status = 'Running' THEN 'running' \
     WHEN status = 'Done' THEN 'done' ELSE 'pending' END";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Dead,
    Pending,
    Running,
    Done,
    Discarded,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Dead,
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Dead => "dead",
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl TryFrom<String> for JobState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// The `status` filter: one state, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Only(JobState),
    All,
}

impl StatusFilter {
    pub const DEAD: StatusFilter = StatusFilter::Only(JobState::Dead);

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Some(Self::All),
            s => JobState::parse(s).map(Self::Only),
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Self::Only(JobState::Dead) => DEAD,
            Self::Only(JobState::Pending) => {
                "(status IN ('Pending', 'Queued') OR (status = 'Failed' AND attempts < max_attempts))"
            }
            Self::Only(JobState::Running) => "status = 'Running'",
            Self::Only(JobState::Done) => "status = 'Done'",
            Self::Only(JobState::Discarded) => "status = 'Discarded'",
            Self::All => "TRUE",
        }
    }
}

/// How a count is made: exactly, or up to a bound — each state's count then reads at most
/// `bound + 1` index entries however many jobs the table keeps (7 days of `Done` jobs), and a
/// count above `bound` means "more than `bound`". For pages that refresh themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    Exact,
    UpTo(u32),
}

/// Which jobs a list, a count or a bulk action is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    pub status: StatusFilter,
    pub queue: Option<String>,
    /// Only these jobs (what a search resolved to; empty: none).
    pub ids: Option<Vec<String>>,
    /// Queued at or after / at or before.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Default for JobFilter {
    fn default() -> Self {
        Self {
            status: StatusFilter::DEAD,
            queue: None,
            ids: None,
            since: None,
            until: None,
        }
    }
}

/// The smallest ULID made at `t` (or the largest, with `last`).
pub(crate) fn ulid_at(t: DateTime<Utc>, last: bool) -> String {
    let ms = t.timestamp_millis().clamp(0, (1 << 48) - 1) as u64;
    let random = if last { (1u128 << 80) - 1 } else { 0 };
    Ulid::from_parts(ms, random).to_string()
}

impl JobFilter {
    /// ` WHERE …` for this filter, the status condition included or not (counts per state
    /// apply everything else).
    fn push_where(&self, q: &mut QueryBuilder<'_, MySql>, with_status: bool) {
        self.push_where_state(
            q,
            if with_status {
                self.status.sql()
            } else {
                "TRUE"
            },
        );
    }

    /// ` WHERE …` for this filter with `state` in place of its status condition.
    fn push_where_state(&self, q: &mut QueryBuilder<'_, MySql>, state: &str) {
        q.push(" WHERE ");
        q.push(state);
        if let Some(queue) = &self.queue {
            q.push(" AND job_type = ").push_bind(queue.clone());
        }
        match self.ids.as_deref() {
            None => {}
            Some([]) => {
                q.push(" AND FALSE");
            }
            Some(ids) => {
                q.push(" AND id IN (");
                let mut sep = q.separated(", ");
                for id in ids {
                    sep.push_bind(id.clone());
                }
                q.push(")");
            }
        }
        if let Some(since) = self.since {
            q.push(" AND id >= ").push_bind(ulid_at(since, false));
        }
        if let Some(until) = self.until {
            q.push(" AND id <= ").push_bind(ulid_at(until, true));
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    pub id: String,
    pub queue: String,
    /// apalis' status: Pending, Queued, Running, Done, Failed, Killed, or Discarded (ours).
    pub status: String,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_result: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
    pub payload: Option<String>,
}

fn select_jobs() -> String {
    format!(
        "SELECT id, job_type AS queue, status, {STATE} AS state, attempts, max_attempts, \
         last_result, run_at, done_at, CAST(job AS CHAR) AS payload FROM jobs"
    )
}

/// A page of the jobs `filter` matches, the latest run first, and how many it matches.
pub async fn list(
    pool: &MySqlPool,
    filter: &JobFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<JobRow>, i64), sqlx::Error> {
    list_counted(pool, filter, limit, offset, Counting::Exact).await
}

/// [`list`], its total counted as `counting` says.
pub async fn list_counted(
    pool: &MySqlPool,
    filter: &JobFilter,
    limit: i64,
    offset: i64,
    counting: Counting,
) -> Result<(Vec<JobRow>, i64), sqlx::Error> {
    let mut q = QueryBuilder::new(select_jobs());
    filter.push_where(&mut q, true);
    q.push(" ORDER BY run_at DESC, id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows = q.build_query_as().fetch_all(pool).await?;
    let mut q = QueryBuilder::new("");
    push_count(&mut q, filter, filter.status.sql(), counting);
    let total = q.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

/// `SELECT COUNT(*)` of the jobs in `state` that `filter` matches; bounded, a count of a
/// sub-select that stops at `bound + 1` rows.
fn push_count(
    q: &mut QueryBuilder<'_, MySql>,
    filter: &JobFilter,
    state: &str,
    counting: Counting,
) {
    match counting {
        Counting::Exact => {
            q.push("SELECT COUNT(*) FROM jobs");
            filter.push_where_state(q, state);
        }
        Counting::UpTo(bound) => {
            q.push("SELECT COUNT(*) FROM (SELECT 1 FROM jobs");
            filter.push_where_state(q, state);
            q.push(" LIMIT ")
                .push_bind(i64::from(bound) + 1)
                .push(") AS bounded");
        }
    }
}

/// How many jobs of each state match `filter`, whatever its status.
pub async fn counts(
    pool: &MySqlPool,
    filter: &JobFilter,
) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    counts_by(pool, filter, Counting::Exact).await
}

/// [`counts`], made as `counting` says: exactly, one GROUP BY over every job the filter
/// matches; bounded, one count per state, each reading at most `bound + 1` rows of its
/// state's index range.
pub async fn counts_by(
    pool: &MySqlPool,
    filter: &JobFilter,
    counting: Counting,
) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    if let Counting::UpTo(bound) = counting {
        let mut q = QueryBuilder::new("");
        for (i, st) in JobState::ALL.into_iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            // The label is one of ours, never input.
            q.push(format!(
                "SELECT '{}', COUNT(*) FROM (SELECT 1 FROM jobs",
                st.as_str()
            ));
            filter.push_where_state(&mut q, StatusFilter::Only(st).sql());
            q.push(" LIMIT ")
                .push_bind(i64::from(bound) + 1)
                .push(") AS bounded");
        }
        let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(pool).await?;
        return Ok(JobState::ALL
            .into_iter()
            .map(|st| {
                let n = rows
                    .iter()
                    .find(|(s, _)| s == st.as_str())
                    .map_or(0, |r| r.1);
                (st, n)
            })
            .collect());
    }
    let mut q = QueryBuilder::new(format!("SELECT {STATE} AS state, COUNT(*) FROM jobs"));
    filter.push_where(&mut q, false);
    q.push(" GROUP BY state");
    let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(pool).await?;
    Ok(JobState::ALL
        .into_iter()
        .map(|st| {
            let n = rows
                .iter()
                .find(|(s, _)| s == st.as_str())
                .map_or(0, |r| r.1);
            (st, n)
        })
        .collect())
}

/// Up to `limit` dead jobs `filter` matches (whatever its status), oldest first, with their
/// queue; `lock`ed for the action that changes them (a dry run only reads).
pub(crate) async fn dead_jobs(
    conn: &mut MySqlConnection,
    filter: &JobFilter,
    limit: usize,
    lock: bool,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let filter = JobFilter {
        status: StatusFilter::DEAD,
        ..filter.clone()
    };
    let mut q = QueryBuilder::new("SELECT id, job_type FROM jobs");
    filter.push_where(&mut q, true);
    q.push(" ORDER BY id LIMIT ").push_bind(limit as i64);
    if lock {
        q.push(" FOR UPDATE");
    }
    q.build_query_as().fetch_all(conn).await
}

/// How many dead jobs `filter` matches (whatever its status).
pub(crate) async fn count_dead(
    conn: &mut MySqlConnection,
    filter: &JobFilter,
) -> Result<u64, sqlx::Error> {
    let filter = JobFilter {
        status: StatusFilter::DEAD,
        ..filter.clone()
    };
    let mut q = QueryBuilder::new("SELECT COUNT(*) FROM jobs");
    filter.push_where(&mut q, true);
    let n: i64 = q.build_query_scalar().fetch_one(conn).await?;
    Ok(n as u64)
}

/// One job, with what only its own page shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    #[sqlx(flatten)]
    pub row: JobRow,
    /// The worker that holds or last held it.
    pub lock_by: Option<String>,
    pub idempotency_key: Option<String>,
}

pub async fn find(pool: &MySqlPool, id: &str) -> Result<Option<Job>, sqlx::Error> {
    let mut q = QueryBuilder::new(format!(
        "SELECT id, job_type AS queue, status, {STATE} AS state, attempts, max_attempts, \
         last_result, run_at, done_at, CAST(job AS CHAR) AS payload, lock_by, idempotency_key \
         FROM jobs WHERE id = "
    ));
    q.push_bind(id.to_owned());
    q.build_query_as().fetch_optional(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_case_insensitively() {
        assert_eq!(StatusFilter::parse("DEAD"), Some(StatusFilter::DEAD));
        assert_eq!(StatusFilter::parse("all"), Some(StatusFilter::All));
        assert_eq!(
            StatusFilter::parse("discarded"),
            Some(StatusFilter::Only(JobState::Discarded))
        );
        assert_eq!(StatusFilter::parse("killed"), None);
    }

    #[test]
    fn ulid_bounds_enclose_every_ulid_of_their_millisecond() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T15:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = Ulid::from_parts(t.timestamp_millis() as u64, 12345).to_string();
        assert!(ulid_at(t, false) <= id && id <= ulid_at(t, true));
        let later = t + chrono::Duration::milliseconds(1);
        assert!(ulid_at(t, true) < ulid_at(later, false));
        assert_eq!(ulid_at(t, false).len(), 26);
    }

    #[test]
    fn a_filter_binds_every_value_and_an_empty_search_matches_nothing() {
        let filter = JobFilter {
            status: StatusFilter::All,
            queue: Some("publish-outbox".into()),
            ids: Some(vec!["A".into(), "B".into()]),
            since: Some(Utc::now()),
            until: None,
        };
        let mut q = QueryBuilder::new("SELECT id FROM jobs");
        filter.push_where(&mut q, true);
        assert_eq!(
            q.sql(),
            "SELECT id FROM jobs WHERE TRUE AND job_type = ? AND id IN (?, ?) AND id >= ?"
        );
        let none = JobFilter {
            ids: Some(vec![]),
            ..JobFilter::default()
        };
        let mut q = QueryBuilder::new("SELECT id FROM jobs");
        none.push_where(&mut q, false);
        assert_eq!(q.sql(), "SELECT id FROM jobs WHERE TRUE AND FALSE");
    }
}
