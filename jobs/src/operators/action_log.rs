//! The operators' action log (the `operator_audit` table; the invariant audit is
//! `crate::audit_run` and the service's `audit`): every retry, bulk retry, discard, bulk
//! discard, pause and resume, from the API, the console or the CLI — who, what, on which jobs
//! or filter, how many it changed, and when.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

/// Where an action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Api,
    Console,
    Cli,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Console => "console",
            Via::Cli => "cli",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "api" => Via::Api,
            "console" => Via::Console,
            _ => Via::Cli,
        }
    }
}

/// Who acts: an ADMIN account (through the API or the console), or the CLI (whoever holds
/// the database credentials; the operating-system user is recorded when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Account {
        via: Via,
        user_id: i64,
        email: String,
    },
    Cli {
        os_user: Option<String>,
    },
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::Account { email, .. } => email.clone(),
            Actor::Cli { os_user: Some(u) } => format!("cli ({u})"),
            Actor::Cli { os_user: None } => "cli".to_owned(),
        }
    }

    fn via(&self) -> Via {
        match self {
            Actor::Account { via, .. } => *via,
            Actor::Cli { .. } => Via::Cli,
        }
    }

    fn user_id(&self) -> Option<i64> {
        match self {
            Actor::Account { user_id, .. } => Some(*user_id),
            Actor::Cli { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Retry,
    BulkRetry,
    Discard,
    BulkDiscard,
    Pause,
    Resume,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::BulkRetry => "bulk_retry",
            Action::Discard => "discard",
            Action::BulkDiscard => "bulk_discard",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Action::Retry,
            Action::BulkRetry,
            Action::Discard,
            Action::BulkDiscard,
            Action::Pause,
            Action::Resume,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// Records an action in the caller's transaction. `target` names the jobs, the filter or the
/// queue; `affected` is how many jobs (or queues) it changed.
pub async fn record(
    conn: &mut MySqlConnection,
    actor: &Actor,
    action: Action,
    target: &serde_json::Value,
    affected: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operator_audit (via, actor_user_id, actor, action, target, affected) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(actor.via().as_str())
    .bind(actor.user_id())
    .bind(actor.label())
    .bind(action.as_str())
    .bind(target.to_string())
    .bind(affected.min(i32::MAX as u64) as i32)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The API document keeps the schema's first name (`/admin/audit` keeps its path too).
#[cfg_attr(feature = "openapi", schema(as = AuditEntry))]
#[serde(rename_all = "camelCase")]
pub struct ActionLogEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub via: Via,
    pub actor: String,
    pub actor_user_id: Option<i64>,
    pub action: Action,
    /// The jobs (`ids`), the filter (`filter`) or the queue (`queue`) acted on.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub target: serde_json::Value,
    /// How many jobs (or queues) the action changed.
    pub affected: i32,
}

#[derive(sqlx::FromRow)]
struct ActionLogRow {
    id: i64,
    at: DateTime<Utc>,
    via: String,
    actor: String,
    actor_user_id: Option<i64>,
    action: String,
    target: String,
    affected: i32,
}

/// A page of the log, newest first, and the number of entries.
pub async fn list(
    pool: &MySqlPool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ActionLogEntry>, i64), sqlx::Error> {
    let rows: Vec<ActionLogRow> = sqlx::query_as(
        "SELECT id, at, via, actor, actor_user_id, action, target, affected \
         FROM operator_audit ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT COUNT(*) FROM operator_audit")
        .fetch_one(pool)
        .await?;
    let entries = rows
        .into_iter()
        .filter_map(|r| {
            Some(ActionLogEntry {
                id: r.id,
                at: r.at,
                via: Via::parse(&r.via),
                actor: r.actor,
                actor_user_id: r.actor_user_id,
                // The CHECK constraint admits only the actions above.
                action: Action::parse(&r.action)?,
                target: serde_json::from_str(&r.target).unwrap_or(serde_json::Value::Null),
                affected: r.affected,
            })
        })
        .collect();
    Ok((entries, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_their_names() {
        for a in [
            Action::Retry,
            Action::BulkRetry,
            Action::Discard,
            Action::BulkDiscard,
            Action::Pause,
            Action::Resume,
        ] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }

    #[test]
    fn the_cli_is_named_with_its_user_when_known() {
        assert_eq!(Actor::Cli { os_user: None }.label(), "cli");
        let cli = Actor::Cli {
            os_user: Some("ops".into()),
        };
        assert_eq!(cli.label(), "cli (ops)");
        assert_eq!(cli.user_id(), None);
        let admin = Actor::Account {
            via: Via::Console,
            user_id: 7,
            email: "a@b.co".into(),
        };
        assert_eq!(
            (admin.label().as_str(), admin.via()),
            ("a@b.co", Via::Console)
        );
    }
}
