//! Idempotency-Key support for POST /orders, after the IETF httpapi Idempotency-Key draft
//! and Stripe's documented behaviour:
//!
//! * the key is scoped per user and enforced by `UNIQUE (user_id, idem_key)`;
//! * the record is written in the same transaction as the order, together with the response,
//!   so a committed record always carries the first outcome (an order, or a business refusal
//!   such as OUT_OF_STOCK) and a rolled-back attempt leaves nothing behind;
//! * a duplicate sent while the first is in flight waits for it (in the process that runs the
//!   first: `orders::committer`; across replicas: on the first insert's row lock) and ends as
//!   a replay, or as 409 IDEMPOTENCY_KEY_IN_PROGRESS if the wait exceeds its bound;
//! * the request fingerprint (SHA-256 of the canonical JSON of the request as validated, see
//!   `fingerprint`) tells a retry from a reuse.

mod fingerprint;
mod key;
mod purge;
mod repo;

pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, IDEMPOTENCY_KEY};
pub use purge::{purge_all, ExpiredIdempotencyKeys};
pub use repo::{
    accounts_and_records, push_delete_expired, push_store, KeyOf, Outcome, StoreError,
    StoredResponse,
};
