//! The request fingerprint that tells a retry from a reuse of a key: SHA-256 over the
//! canonical JSON (keys sorted, no insignificant whitespace) of the request *as validated*.
//! A whole number is validated as the integer it is however it is written
//! (`crate::http::integer`: `2`, `2.0` and `2e0` are one quantity), so it is fingerprinted as
//! that integer; a client that re-serialises its body on retry sends the same request.
//!
//! The previous release hashed the body's JSON text with numbers as written. For a body
//! written with plain integers — what every client of ours sends — both forms are the same
//! bytes, so its stored keys match as they are. For a body that wrote a number another way,
//! the two differ; the request then carries both, and a stored record made with the previous
//! release's form of this very body matches it, so a key stored before a rolling deploy
//! replays within its retention instead of answering 422. New records store the current form.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The fingerprint of a validated request body, and the previous release's form of it when
/// that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub current: String,
    pub previous: Option<String>,
}

impl Fingerprint {
    pub fn of(body: &Value) -> Self {
        if !has_written_number(body) {
            // Every number is a plain integer: both forms are the same bytes.
            return Self {
                current: hash(body),
                previous: None,
            };
        }
        let current = hash(&validated(body));
        let previous = Some(hash(body)).filter(|p| *p != current);
        Self { current, previous }
    }

    /// Whether a stored record's fingerprint is this request's, in either form.
    pub fn matches(&self, stored: &str) -> bool {
        self.current == stored || self.previous.as_deref() == Some(stored)
    }
}

fn hash(body: &Value) -> String {
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

/// Whether a number in `body` is written other than as a plain integer (`2.0`, `2e0`).
fn has_written_number(body: &Value) -> bool {
    match body {
        Value::Number(n) => !(n.is_i64() || n.is_u64()),
        Value::Array(items) => items.iter().any(has_written_number),
        Value::Object(fields) => fields.values().any(has_written_number),
        _ => false,
    }
}

/// `body` with every number read as validation reads it: a whole number as that integer.
/// (The body has passed validation, so every number in it is one.)
fn validated(body: &Value) -> Value {
    match body {
        Value::Number(n) => crate::http::integer::deserialize(body)
            .map_or_else(|_| Value::Number(n.clone()), Value::from),
        Value::Array(items) => Value::Array(items.iter().map(validated).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), validated(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(json: &str) -> String {
        Fingerprint::of(&serde_json::from_str(json).unwrap()).current
    }

    #[test]
    fn key_order_whitespace_and_number_notation_do_not_count() {
        let a = fp(r#"{"items":[{"productId":1,"quantity":2}]}"#);
        assert_eq!(
            a,
            fp("{ \"items\" : [ { \"quantity\":2, \"productId\":1 } ] }")
        );
        assert_eq!(a, fp(r#"{"items":[{"productId":1.0,"quantity":2.0}]}"#));
        assert_eq!(a, fp(r#"{"items":[{"productId":1,"quantity":2e0}]}"#));
        assert_eq!(a, fp(r#"{"items":[{"productId":1,"quantity":20E-1}]}"#));
        assert_ne!(a, fp(r#"{"items":[{"productId":1,"quantity":3}]}"#));
        assert_ne!(
            fp(r#"{"items":[{"productId":1,"quantity":2},{"productId":2,"quantity":1}]}"#),
            fp(r#"{"items":[{"productId":2,"quantity":1},{"productId":1,"quantity":2}]}"#),
            "lines keep their order, as the previous release's fingerprint did"
        );
        assert_eq!(a.len(), 64);
        // A body whose only number is written another way (no plain integer beside it).
        assert_eq!(fp(r#"{"quantity":2.0}"#), fp(r#"{"quantity":2}"#));
        assert_eq!(fp("[2e0]"), fp("[2]"));
    }

    #[test]
    fn a_record_of_the_previous_release_matches_the_same_body_only() {
        let float: Value =
            serde_json::from_str(r#"{"items":[{"productId":7,"quantity":2.0}]}"#).unwrap();
        let fp = Fingerprint::of(&float);
        assert!(fp.matches(&hash(&float)), "the previous release's form");
        assert!(fp.matches(&fp.current));
        let other: Value =
            serde_json::from_str(r#"{"items":[{"productId":7,"quantity":3.0}]}"#).unwrap();
        assert!(!fp.matches(&hash(&other)));
        let plain: Value =
            serde_json::from_str(r#"{"items":[{"productId":7,"quantity":2}]}"#).unwrap();
        assert_eq!(Fingerprint::of(&plain).previous, None);
    }

    #[test]
    fn integer_bodies_hash_as_the_previous_release_hashed_them() {
        let body: Value =
            serde_json::from_str(r#"{"items":[{"productId":7,"quantity":2}]}"#).unwrap();
        assert_eq!(hash(&validated(&body)), hash(&body));
        let float: Value =
            serde_json::from_str(r#"{"items":[{"productId":7,"quantity":2.0}]}"#).unwrap();
        assert_ne!(hash(&validated(&float)), hash(&float));
    }
}
