//! Pausing a queue: every replica stops fetching from it within one poll interval, and takes
//! it up again the same way; the state is a row of `job_queues`, so it survives restarts.
//!
//! Each process reads the table every poll interval ([`Pauses::watch`]) into one gate per
//! queue; a worker's fetch loop waits at a closed gate before each fetch ([`QueueGate`]). A
//! fetch costs nothing more than before, and a resumed queue is fetched from at once. Jobs a
//! worker had already fetched still run: pausing stops taking work, it does not abort it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::sync::watch;

/// Whether a worker may fetch. Closed until the process has read the queue's state once, so
/// a replica starting while its queue is paused never fetches from it.
#[derive(Debug, Clone)]
pub struct QueueGate(watch::Receiver<bool>);

impl QueueGate {
    /// A gate no one closes (for tests and tools that run a worker outside the pipeline).
    pub fn always_open() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keeps the channel open: a dropped sender would read as "no more changes".
        std::mem::forget(tx);
        Self(rx)
    }

    /// A gate and the switch that opens and closes it (tests).
    #[cfg(test)]
    pub(crate) fn switched(paused: bool) -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(paused);
        (tx, Self(rx))
    }

    pub fn is_paused(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once the queue is not paused (at once if it is not). If the process's pause
    /// state is gone (its `Pauses` dropped), the gate stays open.
    pub async fn opened(&mut self) {
        let _ = self.0.wait_for(|paused| !paused).await;
    }
}

/// The pause state of every queue, as this process last read it.
#[derive(Debug, Clone, Default)]
pub struct Pauses {
    gates: Arc<Mutex<Gates>>,
}

#[derive(Debug, Default)]
struct Gates {
    senders: HashMap<String, watch::Sender<bool>>,
    /// The paused queues read last; None until the first read.
    paused: Option<Vec<String>>,
}

impl Pauses {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state known to pause nothing and never read (a worker run outside the pipeline in
    /// a test: its gates are open).
    pub fn none() -> Self {
        let pauses = Self::default();
        pauses
            .gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused = Some(Vec::new());
        pauses
    }

    /// The gate of `queue`'s workers in this process.
    pub fn gate(&self, queue: &str) -> QueueGate {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        let paused = gates
            .paused
            .as_ref()
            .is_none_or(|p| p.iter().any(|q| q == queue));
        let sender = gates
            .senders
            .entry(queue.to_owned())
            .or_insert_with(|| watch::channel(paused).0);
        QueueGate(sender.subscribe())
    }

    /// Reads the paused queues and opens or closes every gate accordingly.
    pub async fn refresh(&self, pool: &MySqlPool) -> Result<(), sqlx::Error> {
        let paused: Vec<String> =
            sqlx::query_scalar("SELECT queue FROM job_queues WHERE paused = 1")
                .fetch_all(pool)
                .await?;
        self.apply(paused);
        Ok(())
    }

    /// Closes the gates of the `paused` queues and opens every other one.
    fn apply(&self, paused: Vec<String>) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        for (queue, sender) in &gates.senders {
            let closed = paused.contains(queue);
            sender.send_if_modified(|now| std::mem::replace(now, closed) != closed);
        }
        gates.paused = Some(paused);
    }

    /// Refreshes every `every` until `stop`.
    pub async fn watch(
        self,
        pool: MySqlPool,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.refresh(&pool).await {
                tracing::warn!(error = %e, "could not read the queues' pause state; keeping the last one");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// A queue's operator state.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    pub paused: bool,
    /// When it was last paused or resumed, and by whom (None: never).
    pub changed_at: Option<DateTime<Utc>>,
    pub changed_by: Option<String>,
}

/// Every queue that was ever paused or resumed, with its state.
pub async fn states(pool: &MySqlPool) -> Result<HashMap<String, PauseState>, sqlx::Error> {
    let rows: Vec<(String, bool, DateTime<Utc>, String)> =
        sqlx::query_as("SELECT queue, paused, changed_at, changed_by FROM job_queues")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(queue, paused, at, by)| {
            let state = PauseState {
                paused,
                changed_at: Some(at),
                changed_by: Some(by),
            };
            (queue, state)
        })
        .collect())
}

/// Per paused queue, seconds since it was paused (by the database's clock, which stamped it).
pub async fn paused_for(pool: &MySqlPool) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT queue, TIMESTAMPDIFF(SECOND, changed_at, CURRENT_TIMESTAMP(6)) FROM job_queues \
         WHERE paused = 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(queue, secs)| (queue, secs.unwrap_or(0).max(0)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paused(queues: &[&str]) -> Vec<String> {
        queues.iter().map(|q| q.to_string()).collect()
    }

    /// The gates follow what `refresh` read (`apply`), not a state the test sets itself.
    #[tokio::test]
    async fn a_gate_is_closed_until_the_state_is_known_and_follows_it() {
        let pauses = Pauses::new();
        let gate = pauses.gate("q");
        let other = pauses.gate("other");
        assert!(gate.is_paused(), "closed before the first read");
        assert!(other.is_paused(), "closed before the first read");
        pauses.apply(paused(&["other"]));
        assert!(!gate.is_paused(), "not paused: opened");
        assert!(other.is_paused(), "paused: stays closed");
        assert!(!pauses.gate("new").is_paused(), "known state: open");
        assert!(pauses.gate("other").is_paused(), "known state: closed");
        pauses.apply(paused(&["q"]));
        assert!(gate.is_paused(), "paused since: closed");
        assert!(!other.is_paused(), "resumed: opened");
        pauses.apply(Vec::new());
        assert!(!gate.is_paused() && !other.is_paused(), "all resumed");
        let mut always = QueueGate::always_open();
        always.opened().await;
        assert!(!always.is_paused());
    }

    #[tokio::test]
    async fn a_waiting_worker_passes_the_gate_when_its_queue_resumes() {
        let pauses = Pauses::new();
        pauses.apply(paused(&["q"]));
        let mut gate = pauses.gate("q");
        let waiter = tokio::spawn(async move {
            gate.opened().await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the queue is paused");
        pauses.apply(paused(&["another"]));
        assert!(!pauses.gate("q").is_paused(), "resumed");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the worker passes the gate once its queue resumes")
            .unwrap();
    }
}
