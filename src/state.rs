//! The state every handler shares, and the roles a process can serve. A leaf: it names the
//! parts the state holds, never a router, so every router can import it.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use orderflow_jobs::publish_outbox::publish_batch::PublishBatcher;
use sqlx::MySqlPool;

use crate::{
    auth::{jwt::JwtKeys, throttle::LoginThrottle},
    catalog::cache::Cache,
    config::Config,
    events::Events,
    orders::committer::OrderCommitter,
};

#[derive(Clone)]
pub struct AppState {
    pub db: MySqlPool,
    pub cache: Cache,
    pub jwt: Arc<JwtKeys>,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    pub events: Arc<Events>,
    pub login_throttle: LoginThrottle,
    /// Committed outbox rows on their way to a shared publish-outbox job.
    pub publisher: PublishBatcher,
    /// POST /orders, committed in batches.
    pub orders: OrderCommitter,
}

impl FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

impl FromRef<AppState> for MySqlPool {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

/// What a process serves: `all` is the API and the background workers together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Role {
    #[default]
    All,
    Api,
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}
