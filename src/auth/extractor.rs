//! `AuthUser` (any valid token) and `AdminUser` (role ADMIN). A missing, malformed, expired
//! or forged token is 401 UNAUTHORIZED; a valid token without the role is 403 FORBIDDEN.
//! `TokenUser` is a valid token whose account the handler checks itself (POST /orders checks
//! it in the transaction that commits the order, for a whole batch at once).
//!
//! A token is only as good as its account: every authenticated request looks the user up by
//! primary key, so a token whose account was deleted is 401, and an ADMIN token whose account
//! was demoted since is treated as USER. A promotion still needs a new login (the role
//! travels in the token; the stored role can only take it away).

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};

use sqlx::MySqlPool;

use super::{repo, JwtKeys, Role};
use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: i64,
    pub role: Role,
}

#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

/// A valid token; its account is not looked up here. The handler must refuse the request
/// (401) when the account no longer exists, before anything is written.
#[derive(Debug, Clone, Copy)]
pub struct TokenUser {
    pub id: i64,
    pub role: Role,
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, msg)
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<JwtKeys>: FromRef<S>,
    MySqlPool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let TokenUser { id, role: claimed } = TokenUser::from_request_parts(parts, state).await?;
        let stored = repo::role_of(&MySqlPool::from_ref(state), id)
            .await?
            .ok_or_else(account_gone)?;
        let role = if claimed == Role::Admin && stored == Role::Admin {
            Role::Admin
        } else {
            Role::User
        };
        Ok(AuthUser { id, role })
    }
}

impl<S> FromRequestParts<S> for TokenUser
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Arc::<JwtKeys>::from_ref(state);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing bearer token"))?
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("expected `Authorization: Bearer <token>`"))?;
        let claims = keys
            .verify(token.trim())
            .ok_or_else(|| unauthorized("invalid or expired token"))?;
        let id: i64 = claims
            .sub
            .parse()
            .map_err(|_| unauthorized("invalid token subject"))?;
        tracing::Span::current().record("userId", id);
        Ok(TokenUser {
            id,
            role: claims.role,
        })
    }
}

/// The refusal of a token whose account is gone.
pub fn account_gone() -> ApiError {
    unauthorized("the token's account no longer exists")
}

impl<S> FromRequestParts<S> for AdminUser
where
    Arc<JwtKeys>: FromRef<S>,
    MySqlPool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this operation requires the ADMIN role",
            ));
        }
        Ok(AdminUser(user))
    }
}
