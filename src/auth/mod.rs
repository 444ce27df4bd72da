//! Accounts and access: registration and login, argon2id password hashes, HS256 JWTs with
//! exp/iss/aud validated, and the extractors that enforce the USER/ADMIN roles.

mod extractor;
pub(crate) mod jwt;
mod login;
mod password;
mod repo;
mod routes;
pub mod throttle;

pub use extractor::{account_gone, AdminUser, AuthUser, TokenUser};
pub use jwt::{Claims, JwtKeys};
pub use login::{authenticate, Authenticated, LoginRefused};
pub use repo::{email_of, ensure_admin, promote, role_of, Bootstrap, PromoteError};
pub use routes::router;
pub use throttle::{LoginThrottle, PeerAddr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Admin => "ADMIN",
        }
    }
}

/// Read from the `role` column (a VARCHAR guarded by a CHECK constraint).
impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "USER" => Ok(Role::User),
            "ADMIN" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}")),
        }
    }
}
