use std::time::Duration;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
pub async fn purge_loop(_db: MySqlPool, _every: Duration, stop: CancellationToken) { stop.cancelled().await }
