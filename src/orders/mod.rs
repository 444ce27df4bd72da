//! Orders: creation exactly once per Idempotency-Key, owner reads, cancel and complete.

mod admission;
mod allocate;
mod batch;
pub(crate) mod committer;
mod create;
mod ids;
mod lane;
mod lifecycle;
mod lookup;
mod model;
mod outcome;
mod repo;
mod routes;

pub use committer::{CommitSettings, OrderCommitter};
pub use lookup::{find_any, FoundOrder};
pub use model::{Order, OrderItem, OrderStatus};
pub use routes::router;
