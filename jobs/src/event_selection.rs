//! An operator's action by order or event id, on the dead jobs that carry them. A publish job
//! carries the outbox rows of up to `PUBLISH_BATCH_SIZE` orders and a notification job up to
//! 64 received events; an operator who names order 42 means order 42's rows and events, not
//! its batch-mates'. Each dead job carrying some of them is a [`Part`]: whole, when they are
//! all it still answers for, or cut, when it carries others' too — then the selected rows or
//! events move to a copy of the job (`engine::split`), the action applies to the copy, and
//! the others stay where they were, under the dead job whose retry still revives exactly them.

use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::{
    consume_notification::{
        carried::{self as notification_jobs, Parted},
        job::CONSUME_NOTIFICATION,
    },
    engine::queue::{self},
    operators::{job_query, job_query::JobFilter, split},
    publish_outbox::{
        carried,
        job::{PublishOutbox, PUBLISH_OUTBOX},
    },
};

/// What an operator named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsOf {
    Order(i64),
    Event(Uuid),
}

/// How much of a dead job an action takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// All it answers for is selected: the job itself.
    Whole,
    /// These DEAD outbox rows of the publish job; its other rows stay.
    Rows(Vec<i64>),
    /// These events of the notification job; its other events stay.
    Events(Parted),
}

/// A dead job carrying selected rows or events, and which.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub job: String,
    pub queue: &'static str,
    pub cut: Cut,
    /// The selected outbox rows it carries (DEAD).
    pub outbox_rows: Vec<i64>,
    /// The selected events it carries.
    pub events: Vec<String>,
}

/// The dead job `id` if it matches `within` (queue, queued since/until), locked with `lock`.
async fn dead_within(
    conn: &mut MySqlConnection,
    id: &str,
    within: &JobFilter,
    lock: bool,
) -> Result<Option<String>, sqlx::Error> {
    let one = JobFilter {
        ids: Some(vec![id.to_owned()]),
        ..within.clone()
    };
    let found = job_query::dead_jobs(conn, &one, 1, lock).await?;
    Ok(found.into_iter().next().map(|(_, queue)| queue))
}

fn admits(within: &JobFilter, queue: &str) -> bool {
    within.queue.as_deref().is_none_or(|q| q == queue)
}

/// The parts of the dead jobs (at most `limit` + 1, so that a caller can tell "too many")
/// that carry what `of` names, within `within`; each job `lock`ed before it is read.
pub async fn parts(
    conn: &mut MySqlConnection,
    of: EventsOf,
    within: &JobFilter,
    lock: bool,
    limit: usize,
) -> Result<Vec<Part>, sqlx::Error> {
    let mut parts = Vec::new();
    if admits(within, PUBLISH_OUTBOX) {
        publish_parts(conn, of, within, lock, &mut parts).await?;
    }
    if admits(within, CONSUME_NOTIFICATION) {
        notification_parts(conn, of, within, lock, limit, &mut parts).await?;
    }
    parts.truncate(limit + 1);
    Ok(parts)
}

async fn publish_parts(
    conn: &mut MySqlConnection,
    of: EventsOf,
    within: &JobFilter,
    lock: bool,
    parts: &mut Vec<Part>,
) -> Result<(), sqlx::Error> {
    let event = match of {
        EventsOf::Event(id) => Some(id.to_string()),
        EventsOf::Order(_) => None,
    };
    let order = match of {
        EventsOf::Order(id) => Some(id),
        EventsOf::Event(_) => None,
    };
    let rows = carried::dead_rows_of(conn, order, event.as_deref()).await?;
    let mut jobs: Vec<&str> = rows.iter().filter_map(|(_, job)| job.as_deref()).collect();
    jobs.sort_unstable();
    jobs.dedup();
    for job in jobs {
        if dead_within(conn, job, within, lock).await?.as_deref() != Some(PUBLISH_OUTBOX) {
            continue;
        }
        // Read again under the job's lock: only an action holding it changes its DEAD rows.
        let open = carried::open_rows_of_job(conn, job).await?;
        let selected: Vec<i64> = open
            .iter()
            .filter(|(id, status)| {
                status == "DEAD"
                    && rows
                        .iter()
                        .any(|(r, j)| r == id && j.as_deref() == Some(job))
            })
            .map(|(id, _)| *id)
            .collect();
        if selected.is_empty() {
            continue;
        }
        // NEW rows under a dead job are its batch-mates' too (the sweeper hands them on).
        let cut = if selected.len() == open.len() {
            Cut::Whole
        } else {
            Cut::Rows(selected.clone())
        };
        parts.push(Part {
            job: job.to_owned(),
            queue: PUBLISH_OUTBOX,
            cut,
            outbox_rows: selected,
            events: Vec::new(),
        });
    }
    Ok(())
}

async fn notification_parts(
    conn: &mut MySqlConnection,
    of: EventsOf,
    within: &JobFilter,
    lock: bool,
    limit: usize,
    parts: &mut Vec<Part>,
) -> Result<(), sqlx::Error> {
    let events: Vec<Uuid> = match of {
        EventsOf::Event(id) => vec![id],
        EventsOf::Order(order) => carried::event_ids_of_order(conn, order)
            .await?
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect(),
    };
    let named: Vec<String> = events.iter().map(Uuid::to_string).collect();
    for job in notification_jobs::carrying(&mut *conn, &events, limit + 1).await? {
        if dead_within(conn, &job, within, lock).await?.as_deref() != Some(CONSUME_NOTIFICATION) {
            continue;
        }
        let payload = split::payload(conn, &job).await?;
        let Some(parted) = notification_jobs::part(&payload, &named) else {
            continue;
        };
        let selected: Vec<String> = parted
            .selected
            .events
            .iter()
            .filter_map(|e| e.valid_event_id().map(str::to_owned))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let cut = if parted.others.events.is_empty() {
            Cut::Whole
        } else {
            Cut::Events(parted)
        };
        parts.push(Part {
            job,
            queue: CONSUME_NOTIFICATION,
            cut,
            outbox_rows: Vec::new(),
            events: selected,
        });
    }
    Ok(())
}

fn encode<T: serde::Serialize>(payload: &T) -> Result<Vec<u8>, sqlx::Error> {
    serde_json::to_vec(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Gives a cut part a job of its own — a copy of its job carrying only the selected rows or
/// events, which its job no longer carries — and returns the job the action applies to (the
/// part's own job when it is whole).
pub async fn separate(conn: &mut MySqlConnection, part: &Part) -> Result<String, sqlx::Error> {
    if part.cut == Cut::Whole {
        return Ok(part.job.clone());
    }
    let into = queue::new_job_id();
    match &part.cut {
        Cut::Whole => {}
        Cut::Rows(rows) => {
            let original: Option<PublishOutbox> =
                serde_json::from_slice(&split::payload(conn, &part.job).await?).ok();
            let carries = PublishOutbox {
                outbox_ids: rows.clone(),
                trace: original
                    .as_ref()
                    .map(|p| p.trace.clone())
                    .unwrap_or_default(),
            };
            split::copy_as(conn, &part.job, &into, &encode(&carries)?).await?;
            carried::move_dead_rows(conn, rows, &into).await?;
            // A job given its rows by id (the sweeper's) must not list the ones it gave away.
            if let Some(mut original) = original.filter(|p| !p.outbox_ids.is_empty()) {
                original.outbox_ids.retain(|id| !rows.contains(id));
                split::set_payload(conn, &part.job, &encode(&original)?).await?;
            }
        }
        Cut::Events(parted) => {
            split::copy_as(conn, &part.job, &into, &encode(&parted.selected)?).await?;
            split::set_payload(conn, &part.job, &encode(&parted.others)?).await?;
        }
    }
    tracing::info!(job_id = %part.job, into = %into, queue = part.queue,
        outbox_rows = part.outbox_rows.len(), events = part.events.len(),
        "an operator's selection split off a dead job");
    Ok(into)
}
