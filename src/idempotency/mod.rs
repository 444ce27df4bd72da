//! Idempotency-Key support for POST /orders, after the IETF httpapi Idempotency-Key draft
//! and Stripe's documented behaviour:
//!
//! * the key is scoped per user and enforced by `UNIQUE (user_id, idem_key)`;
//! * the record is written in the same transaction as the order, together with the response,
//!   so a committed record always carries the first outcome (an order, or a business refusal
//!   such as OUT_OF_STOCK) and a rolled-back attempt leaves nothing behind;
//! * a concurrent duplicate blocks on the first insert's row lock: it ends as a replay when the
//!   first commits, or as 409 IDEMPOTENCY_KEY_IN_PROGRESS if the wait exceeds its bound;
//! * the request fingerprint (SHA-256 of the canonical JSON of the request as validated, see
//!   `fingerprint`) tells a retry from a reuse.

mod fingerprint;
mod key;
mod purge;
mod repo;

pub use fingerprint::fingerprint;
pub use key::{parse_key, IDEMPOTENCY_KEY};
pub use purge::{purge_all, ExpiredIdempotencyKeys};
pub use repo::{complete, delete_expired, find, insert, Claim, StoredResponse};
