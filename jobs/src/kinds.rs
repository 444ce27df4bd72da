//! The job kinds of orderflow, listed once: each owns its queue, payload and push in its own
//! module; this is where the operators' views find every queue.

use crate::{
    archive_run::archive::ARCHIVE_RUN, audit_run::AUDIT,
    consume_notification::job::CONSUME_NOTIFICATION, publish_outbox::job::PUBLISH_OUTBOX,
    retention::RETENTION,
};

pub const QUEUES: [&str; 5] = [
    PUBLISH_OUTBOX,
    CONSUME_NOTIFICATION,
    ARCHIVE_RUN,
    RETENTION,
    AUDIT,
];
