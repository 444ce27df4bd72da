//! Bulk actions: retry or discard many dead jobs at once — the jobs named by id, every dead
//! job a filter matches, or an order's or an event's part of the jobs that carry it
//! (`crate::event_selection`: its batch-mates are left alone). The same rules hold whoever
//! asks (API, console, CLI):
//!
//! * **One transaction.** The jobs are locked, counted, changed and the audit entry written,
//!   then committed together: an action cut short (request timeout, client gone, database
//!   error) changes nothing, so no change is ever unrecorded.
//! * **At most [`LIMIT`] jobs.** Beyond it the action is refused whole; a narrower filter
//!   (queue, queued since/until) does the work in parts. It also bounds the transaction.
//! * **"All matching" is confirmed by its count.** A filter that names no order, event or job
//!   is every dead job it matches: it acts only with the count the operator expects
//!   (`Confirm::expected`), checked under the locks, and a count that is no longer right is
//!   refused with the current one. A dry run answers the count and changes nothing.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{MySqlConnection, MySqlPool};

use super::{
    action_log::{self, Actor},
    job_query::{self, JobFilter},
    ops::{change_whole, ActionError, Op},
};
use crate::{
    event_selection::{self, EventsOf, Part},
    search::Term,
};

/// The most jobs one bulk action changes (a job split off another counts as one).
pub const LIMIT: usize = 1000;

/// What a bulk action acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These jobs, whole; those that are not dead (or do not exist) are left alone.
    Ids(Vec<String>),
    /// The dead jobs a filter matches or, with an order or event id, that order's (or
    /// event's) rows and events in them.
    Filter(BulkFilter),
}

/// A bulk action's filter; every field optional, all of them must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkFilter {
    pub queue: Option<String>,
    /// A job id, an order id or an event id.
    pub term: Option<Term>,
    /// Queued at or after / at or before.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl BulkFilter {
    /// The jobs it is about, its search aside (a job id is a filter on ids).
    fn jobs(&self) -> JobFilter {
        JobFilter {
            queue: self.queue.clone(),
            ids: match &self.term {
                Some(Term::Job(id)) => Some(vec![id.clone()]),
                _ => None,
            },
            since: self.since,
            until: self.until,
            ..JobFilter::default()
        }
    }

    fn events(&self) -> Option<EventsOf> {
        match self.term {
            Some(Term::Order(id)) => Some(EventsOf::Order(id)),
            Some(Term::Event(id)) => Some(EventsOf::Event(id)),
            Some(Term::Job(_)) | None => None,
        }
    }

    fn record(&self) -> Value {
        json!({
            "queue": self.queue,
            "q": self.term.as_ref().map(Term::as_text),
            "since": self.since,
            "until": self.until,
        })
    }
}

impl Selection {
    /// Whether it means every dead job a filter matches, named by nothing.
    fn is_all_matching(&self) -> bool {
        matches!(self, Selection::Filter(f) if f.term.is_none())
    }
}

/// The operator's confirmation of a bulk action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirm {
    /// How many dead jobs the operator expects the selection to match. Required for "all
    /// matching"; checked whenever given.
    pub expected: Option<u64>,
    /// Count, change nothing.
    pub dry_run: bool,
}

/// What a bulk action matched and changed (a dry run changes nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Dead jobs the selection matches (what `Confirm::expected` is checked against).
    pub matched: u64,
    /// Jobs retried or discarded (archive-run jobs are never discarded).
    pub changed: u64,
    /// Outbox rows made NEW again, or DISCARDED (in a dry run: selected by order or event).
    pub outbox_rows: u64,
    /// Received events of notification jobs acted on by an order or event id.
    pub events: u64,
    /// Jobs split because they carried other orders' rows or events too.
    pub split: u64,
    pub dry_run: bool,
}

/// What an action will change, read (and locked, unless a dry run) in its transaction.
struct Plan {
    matched: u64,
    /// Whole jobs (id, queue).
    whole: Vec<(String, String)>,
    /// Parts of jobs, by order or event id.
    parts: Vec<Part>,
}

async fn plan(
    conn: &mut MySqlConnection,
    selection: &Selection,
    lock: bool,
) -> Result<Plan, sqlx::Error> {
    let filter = match selection {
        Selection::Ids(ids) => JobFilter {
            ids: Some(ids.clone()),
            ..JobFilter::default()
        },
        Selection::Filter(f) => {
            if let Some(of) = f.events() {
                let parts = event_selection::parts(conn, of, &f.jobs(), lock, LIMIT).await?;
                return Ok(Plan {
                    matched: parts.len() as u64,
                    whole: Vec::new(),
                    parts,
                });
            }
            f.jobs()
        }
    };
    let whole = job_query::dead_jobs(conn, &filter, LIMIT + 1, lock).await?;
    if whole.len() > LIMIT {
        return Ok(Plan {
            matched: job_query::count_dead(conn, &filter).await?,
            whole: Vec::new(),
            parts: Vec::new(),
        });
    }
    Ok(Plan {
        matched: whole.len() as u64,
        whole,
        parts: Vec::new(),
    })
}

/// Refuses what the operator did not (or no longer) mean.
fn check(selection: &Selection, matched: u64, expected: Option<u64>) -> Result<(), ActionError> {
    if matched > LIMIT as u64 {
        return Err(ActionError::TooManyMatching {
            matched,
            limit: LIMIT,
        });
    }
    match expected {
        Some(expected) if expected != matched => {
            Err(ActionError::CountChanged { expected, matched })
        }
        None if selection.is_all_matching() && matched > 0 => {
            Err(ActionError::ConfirmationRequired { matched })
        }
        _ => Ok(()),
    }
}

/// The action log's record of an action: what was asked and exactly what changed.
struct Record {
    jobs: Vec<String>,
    split: Vec<Value>,
    outbox_rows: Vec<i64>,
    events: Vec<String>,
}

fn target(selection: &Selection, expected: Option<u64>, done: &Record) -> Value {
    let mut target = match selection {
        Selection::Ids(ids) => json!({ "ids": ids }),
        Selection::Filter(f) => json!({ "filter": f.record() }),
    };
    target["expectedCount"] = json!(expected);
    target["jobs"] = json!(done.jobs);
    if let Selection::Filter(f) = selection {
        if f.events().is_some() {
            target["split"] = json!(done.split);
            target["outboxRows"] = json!(done.outbox_rows);
            target["events"] = json!(done.events);
        }
    }
    target
}

/// Retries or discards what `selection` names, as `confirm` allows, in one transaction with
/// its audit entry (see the module's doc). A dry run answers the count and changes nothing.
pub async fn act_on_all(
    pool: &MySqlPool,
    op: Op,
    selection: &Selection,
    confirm: Confirm,
    actor: &Actor,
) -> Result<Outcome, ActionError> {
    if let Selection::Ids(ids) = selection {
        if ids.len() > LIMIT {
            return Err(ActionError::TooManySelected {
                selected: ids.len(),
                limit: LIMIT,
            });
        }
    }
    let mut tx = pool.begin().await?;
    let plan = plan(&mut tx, selection, !confirm.dry_run).await?;
    let selected_rows: usize = plan.parts.iter().map(|p| p.outbox_rows.len()).sum();
    let events: usize = plan.parts.iter().map(|p| p.events.len()).sum();
    let split = plan
        .parts
        .iter()
        .filter(|p| p.cut != event_selection::Cut::Whole)
        .count();
    if confirm.dry_run {
        return Ok(Outcome {
            matched: plan.matched,
            outbox_rows: selected_rows as u64,
            events: events as u64,
            split: split as u64,
            dry_run: true,
            ..Outcome::default()
        });
    }
    check(selection, plan.matched, confirm.expected)?;

    let mut jobs = plan.whole;
    let mut record = Record {
        jobs: Vec::new(),
        split: Vec::new(),
        outbox_rows: Vec::new(),
        events: Vec::new(),
    };
    for part in &plan.parts {
        let acted = event_selection::separate(&mut tx, part).await?;
        if acted != part.job {
            record.split.push(json!({ "job": part.job, "into": acted }));
        }
        record.outbox_rows.extend(&part.outbox_rows);
        record.events.extend(part.events.iter().cloned());
        jobs.push((acted, part.queue.to_owned()));
    }
    let changed = change_whole(&mut tx, op, &jobs).await?;
    record.jobs = changed.jobs;
    let n = record.jobs.len() as u64;
    action_log::record(
        &mut tx,
        actor,
        op.bulk(),
        &target(selection, confirm.expected, &record),
        n,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        action = op.bulk().as_str(),
        matched = plan.matched,
        changed = n,
        outbox_rows = changed.outbox_rows,
        events,
        split,
        "dead jobs changed by an operator"
    );
    Ok(Outcome {
        matched: plan.matched,
        changed: n,
        outbox_rows: changed.outbox_rows,
        events: events as u64,
        split: split as u64,
        dry_run: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Selection {
        Selection::Filter(BulkFilter::default())
    }

    #[test]
    fn all_matching_needs_its_count_and_a_named_selection_does_not() {
        let order = Selection::Filter(BulkFilter {
            term: Some(Term::Order(42)),
            ..BulkFilter::default()
        });
        let ids = Selection::Ids(vec!["A".into()]);
        assert!(matches!(
            check(&all(), 3, None),
            Err(ActionError::ConfirmationRequired { matched: 3 })
        ));
        assert!(check(&all(), 0, None).is_ok(), "nothing to confirm");
        assert!(check(&all(), 3, Some(3)).is_ok());
        assert!(matches!(
            check(&all(), 3, Some(2)),
            Err(ActionError::CountChanged {
                expected: 2,
                matched: 3
            })
        ));
        assert!(check(&order, 2, None).is_ok());
        assert!(check(&ids, 1, None).is_ok());
        assert!(matches!(
            check(&ids, 1, Some(4)),
            Err(ActionError::CountChanged { .. })
        ));
    }

    #[test]
    fn beyond_the_limit_is_refused_whatever_the_count() {
        let over = LIMIT as u64 + 1;
        assert!(matches!(
            check(&all(), over, Some(over)),
            Err(ActionError::TooManyMatching { matched, limit: LIMIT }) if matched == over
        ));
        assert!(check(&all(), LIMIT as u64, Some(LIMIT as u64)).is_ok());
    }

    #[test]
    fn the_audit_target_of_a_filter_names_its_search_and_what_changed() {
        let by_order = Selection::Filter(BulkFilter {
            term: Some(Term::Order(42)),
            ..BulkFilter::default()
        });
        let done = Record {
            jobs: vec!["J2".into()],
            split: vec![json!({"job": "J", "into": "J2"})],
            outbox_rows: vec![7],
            events: vec![],
        };
        let t = target(&by_order, None, &done);
        assert_eq!(t["filter"]["q"], "42");
        assert_eq!(t["jobs"], json!(["J2"]));
        assert_eq!(t["outboxRows"], json!([7]));
        assert_eq!(t["split"][0]["into"], "J2");
        let t = target(&all(), Some(3), &done);
        assert_eq!(t["expectedCount"], 3);
        assert!(t.get("outboxRows").is_none());
    }
}
