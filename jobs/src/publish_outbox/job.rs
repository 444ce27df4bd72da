//! The publish-outbox job: its queue, its payload and its push.

use apalis::prelude::{BoxDynError, TaskBuilder, TaskId, TaskSink};
use apalis_mysql::TaskBuilderExt;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use ulid::Ulid;

use super::retry_policy::PUBLISH_MAX_ATTEMPTS;
use crate::engine::{
    queue::{storage, JobKind, QueueSettings},
    trace::TraceContext,
};

pub const PUBLISH_OUTBOX: &str = "publish-outbox";

/// Publish outbox rows: those listed (the sweeper's batches), or, with an empty list, the NEW
/// rows that name this job (what the order path commits: `publish_batch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOutbox {
    #[serde(default)]
    pub outbox_ids: Vec<i64>,
    /// The trace of the order that queued it (empty for the sweeper's batches).
    #[serde(default)]
    pub trace: TraceContext,
}

impl JobKind for PublishOutbox {
    const QUEUE: &'static str = PUBLISH_OUTBOX;

    /// None: a publish job is pushed under the id chosen for it (`push_publish`).
    fn idempotency_key(&self) -> Option<String> {
        None
    }
}

pub async fn push_publish(
    pool: &MySqlPool,
    settings: &QueueSettings,
    job_id: &str,
    outbox_ids: Vec<i64>,
    trace: TraceContext,
) -> Result<(), BoxDynError> {
    let id: Ulid = job_id.parse()?;
    // Its retries end with the retry window, not a count (`retry_policy`).
    let task = TaskBuilder::new(PublishOutbox { outbox_ids, trace })
        .with_task_id(TaskId::new(id))
        .max_attempts(PUBLISH_MAX_ATTEMPTS)
        .build();
    storage::<PublishOutbox>(pool, PUBLISH_OUTBOX, settings)
        .push_task(task)
        .await
        .map_err(|e| Box::new(e) as BoxDynError)
}
