//! POST /auth/register and POST /auth/login.

use axum::{extract::State, http::StatusCode, routing::post, Router};
use serde::{Deserialize, Serialize};

use super::{password, repo, Role};
use crate::{
    app::AppState,
    error::{ApiError, ErrorCode, FieldError},
    http::extract::Json,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub email: String,
    pub password: String,
    pub name: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserResponse {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A deliberately plain check: one `@`, a dotted domain, no spaces or control characters.
/// Deliverability is the mail system's business; this only refuses what cannot be an address.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && email.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

fn validate_register(req: &RegisterRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !valid_email(req.email.trim()) {
        errors.push(FieldError::new("email", "must be a valid email address"));
    }
    let pw_len = req.password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&pw_len) {
        errors.push(FieldError::new(
            "password",
            format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    errors
}

async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<UserResponse>), ApiError> {
    let errors = validate_register(&req);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let email = req.email.trim().to_lowercase();
    let name = req.name.trim().to_owned();
    let hash = password::hash(req.password).await;
    let id = repo::insert(&state.db, &email, &name, &hash, Role::User)
        .await
        .map_err(|e| match e {
            repo::CreateUserError::EmailTaken => {
                ApiError::new(ErrorCode::EmailTaken, "email is already registered")
            }
            repo::CreateUserError::Db(e) => e.into(),
        })?;
    tracing::info!(userId = id, "user registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(UserResponse {
            id,
            email,
            name,
            role: Role::User,
        }),
    ))
}

async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<TokenResponse>, ApiError> {
    let email = req.email.trim().to_lowercase();
    let user = if req.password.len() > 4 * MAX_PASSWORD_CHARS {
        None // never hash megabytes on behalf of an anonymous caller
    } else {
        repo::find_by_email(&state.db, &email).await?
    };
    let ok = password::verify(req.password, user.as_ref().map(|u| u.password_hash.clone())).await;
    match user {
        Some(user) if ok => Ok(axum::Json(TokenResponse {
            access_token: state.jwt.issue(user.id, user.role),
            token_type: "Bearer",
            expires_in: state.jwt.ttl().as_secs(),
        })),
        _ => Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "email or password is incorrect",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(valid_email("a@b.co"));
        assert!(valid_email("first.last+tag@example.org"));
        assert!(!valid_email("no-at-sign"));
        assert!(!valid_email("@example.org"));
        assert!(!valid_email("a@localhost"));
        assert!(!valid_email("a b@example.org"));
        assert!(!valid_email("a@b@example.org"));
    }

    #[test]
    fn register_validation_names_each_bad_field() {
        let errors = validate_register(&RegisterRequest {
            email: "x".into(),
            password: "short".into(),
            name: " ".into(),
        });
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "password", "name"]);
    }
}
