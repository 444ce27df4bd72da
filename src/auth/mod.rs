//! Accounts and access: registration and login, argon2id password hashes, HS256 JWTs with
//! exp/iss/aud validated, and the extractors that enforce the USER/ADMIN roles.

mod extractor;
mod jwt;
mod password;
mod repo;
mod routes;

pub use extractor::{AdminUser, AuthUser};
pub use jwt::{Claims, JwtKeys};
pub use repo::{promote, ensure_admin, PromoteError};
pub use routes::router;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[sqlx(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Admin,
}
