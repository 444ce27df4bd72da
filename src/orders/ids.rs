//! The two ids an order's owner reads and changes it by. Both are 64-bit integers in the
//! database; as distinct types, a call that passes the owner where the order belongs (the
//! two sit side by side in `find_owned` and `cancel`) no longer compiles.

use std::fmt;

use serde::Deserialize;

/// An order's id, as it appears in `/orders/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct OrderId(pub i64);

/// The account an order belongs to (the token's subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct OwnerId(pub i64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
