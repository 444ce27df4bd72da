//! orderflow: orders, inventory and notifications, exactly once under duplication and failure.
//!
//! The composition root is `startup` (state, workers, serving) over `router` (every router and
//! the middleware stack); `state` is the leaf they and every handler share. Each other module
//! owns one concept and its SQL.

pub mod actuator;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod notifications;
pub mod operators;
pub mod optional_redis;
pub mod orders;
pub mod outbox;
pub mod router;
pub mod startup;
pub mod state;
pub mod telemetry;
