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
//! * the request fingerprint (SHA-256 of the canonical JSON body) tells a retry from a reuse.

mod key;
mod purge;
mod repo;

pub use key::{parse_key, IDEMPOTENCY_KEY};
pub use purge::{purge_all, ExpiredIdempotencyKeys};
pub use repo::{delete_expired, find_many, store, KeyOf, Outcome, StoreError, StoredResponse};

use sha2::{Digest, Sha256};

/// SHA-256 over the canonical form of the JSON body (keys sorted, no insignificant
/// whitespace), so formatting and key order do not make a retry look like a new request.
pub fn fingerprint(body: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"items":[{"productId":1,"quantity":2}]}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str("{ \"items\" : [ { \"quantity\":2, \"productId\":1 } ] }")
                .unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"items":[{"productId":1,"quantity":3}]}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a).len(), 64);
    }
}
