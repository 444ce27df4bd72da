//! orderflow: orders, inventory and notifications, exactly once under duplication and failure.
//!
//! `app` is the composition root; each other module owns one concept and its SQL.

pub mod actuator;
pub mod app;
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
pub mod telemetry;
