//! Checking credentials, shared by the API's login (a bearer token) and the console's
//! sign-in (a session): the same throttling per account and per client address, the same
//! constant-cost check for unknown accounts.

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::{
    password::{self, MAX_PASSWORD_CHARS},
    repo,
    throttle::{self, Throttled},
    Role,
};
use crate::state::AppState;

/// An account whose password was right.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub id: i64,
    pub role: Role,
    /// As stored (normalised: trimmed, lower case).
    pub email: String,
}

#[derive(Debug)]
pub enum LoginRefused {
    /// Too many failures for the account or from the client; the password was not checked.
    Throttled(Throttled),
    /// Unknown email or wrong password (which one is not told).
    InvalidCredentials,
    Db(sqlx::Error),
}

/// Checks `email` and `password` for a client at `peer` (its headers name the client behind
/// trusted proxies), counting the attempt against the login throttle.
pub async fn authenticate(
    state: &AppState,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    email: &str,
    password: String,
) -> Result<Authenticated, LoginRefused> {
    let email = email.trim().to_lowercase();
    let user = repo::find_by_email(&state.db, &email)
        .await
        .map_err(LoginRefused::Db)?;
    let account = match &user {
        Some(u) => throttle::Account::Id(u.id),
        None => throttle::Account::Email(&email),
    };
    let client = state.login_throttle.client_ip(peer, headers);
    let attempt = state
        .login_throttle
        .begin(account, client)
        .await
        .map_err(LoginRefused::Throttled)?;
    // Never hash megabytes against a real hash on behalf of an anonymous caller.
    let hash = user
        .as_ref()
        .filter(|_| password.len() <= 4 * MAX_PASSWORD_CHARS)
        .map(|u| u.password_hash.clone());
    let ok = password::verify(password, hash).await;
    match user {
        Some(user) if ok => {
            attempt.succeeded().await;
            Ok(Authenticated {
                id: user.id,
                role: user.role,
                email,
            })
        }
        _ => {
            attempt.failed();
            Err(LoginRefused::InvalidCredentials)
        }
    }
}
