//! Finding jobs by what operators know: a job id, an order id or an event id. A search spans
//! the job kinds (publish jobs carry outbox rows; notification jobs carry received events),
//! so it lives beside them rather than in the engine, and hands the engine the job ids.

use sqlx::MySqlPool;
use uuid::Uuid;

use crate::{consume_notification::carried as notification_jobs, publish_outbox::carried};

/// At most this many jobs answer one search (an order has a few events, each a few jobs).
pub const MAX_JOBS: usize = 1000;

/// What a search term is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// Digits: an order id (a job id is a 26-character ULID, never an `i64`).
    Order(i64),
    /// A UUID: an event id.
    Event(Uuid),
    /// Anything else: a job id.
    Job(String),
}

impl Term {
    pub fn parse(q: &str) -> Option<Self> {
        let q = q.trim();
        if q.is_empty() {
            return None;
        }
        Some(if let Ok(id) = q.parse::<i64>() {
            Term::Order(id)
        } else if let Ok(id) = Uuid::parse_str(q) {
            Term::Event(id)
        } else {
            Term::Job(q.to_owned())
        })
    }

    /// The term as an operator writes it.
    pub fn as_text(&self) -> String {
        match self {
            Term::Order(id) => id.to_string(),
            Term::Event(id) => id.to_string(),
            Term::Job(id) => id.clone(),
        }
    }
}

/// The jobs a term names: the job itself, or the publish jobs carrying the order's (or the
/// event's) outbox rows and the notification jobs carrying its events.
pub async fn jobs_for(pool: &MySqlPool, term: &Term) -> Result<Vec<String>, sqlx::Error> {
    let rows = match term {
        Term::Job(id) => return Ok(vec![id.clone()]),
        Term::Order(id) => carried::of_order(pool, *id).await?,
        Term::Event(id) => carried::by_event(pool, &id.to_string())
            .await?
            .into_iter()
            .collect(),
    };
    let mut events: Vec<Uuid> = rows
        .iter()
        .filter_map(|r| Uuid::parse_str(&r.event_id).ok())
        .collect();
    if let Term::Event(id) = term {
        // Still searched for when its outbox row is gone (retention) or never was ours.
        if !events.contains(id) {
            events.push(*id);
        }
    }
    let mut jobs: Vec<String> = rows.into_iter().filter_map(|r| r.job_id).collect();
    jobs.extend(notification_jobs::carrying(pool, &events, MAX_JOBS).await?);
    jobs.sort_unstable();
    jobs.dedup();
    jobs.truncate(MAX_JOBS);
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_is_an_order_an_event_or_a_job() {
        assert_eq!(Term::parse(" 42 "), Some(Term::Order(42)));
        let event = "0192f3a4-5b6c-7d8e-9f00-112233445566";
        assert_eq!(
            Term::parse(event),
            Some(Term::Event(Uuid::parse_str(event).unwrap()))
        );
        assert_eq!(
            Term::parse("01JDEADJOB0000000000000000"),
            Some(Term::Job("01JDEADJOB0000000000000000".into()))
        );
        assert_eq!(Term::parse("  "), None);
    }
}
