//! POST /auth/register and POST /auth/login.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    login::{authenticate, LoginRefused},
    password::{self, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS},
    repo,
    throttle::PeerAddr,
    Role,
};
use crate::{
    error::{ApiError, ErrorBody, ErrorCode, FieldError},
    http::extract::Json,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    pub email: String,
    #[schema(example = "correct-horse-battery", min_length = 8, max_length = 128)]
    pub password: String,
    /// 1–100 characters, not all blank, no control characters.
    #[schema(
        example = "Ada",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResponse {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

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

/// Creates a USER account.
#[utoipa::path(
    post,
    path = "/auth/register",
    operation_id = "register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = UserResponse),
        (status = 400, description = "VALIDATION_ERROR, one detail per bad field", body = ErrorBody),
        (status = 409, description = "EMAIL_TAKEN", body = ErrorBody),
    )
)]
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

/// Exchanges credentials for a bearer token. Failed logins are throttled per account and
/// client address, and per client address, each refusing with 429 and `Retry-After`; an
/// account failing from many addresses has its logins slowed, never refused (ADR 0013).
#[utoipa::path(
    post,
    path = "/auth/login",
    operation_id = "login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A bearer token", body = TokenResponse),
        (status = 401, description = "INVALID_CREDENTIALS (unknown email or wrong password)", body = ErrorBody),
        (status = 429, description = "TOO_MANY_REQUESTS: too many failed logins for this account from this address, or from this address; the password was not checked", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds until the throttling window ends"))),
    )
)]
async fn login(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<TokenResponse>, Response> {
    match authenticate(&state, peer, &headers, &req.email, req.password).await {
        Ok(user) => Ok(axum::Json(TokenResponse {
            access_token: state.jwt.issue(user.id, user.role),
            token_type: "Bearer",
            expires_in: state.jwt.ttl().as_secs(),
        })),
        Err(LoginRefused::Throttled(throttled)) => Err(throttled.into_response()),
        Err(LoginRefused::InvalidCredentials) => Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "email or password is incorrect",
        )
        .into_response()),
        Err(LoginRefused::Db(e)) => Err(ApiError::from(e).into_response()),
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
