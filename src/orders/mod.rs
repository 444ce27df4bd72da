//! Orders: creation exactly once per Idempotency-Key, owner reads, cancel and complete.

mod create;
mod lifecycle;
mod model;
mod repo;
mod routes;

pub use model::{Order, OrderItem, OrderStatus};
pub use routes::router;
