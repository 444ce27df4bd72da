//! Who may use the console, and the token every state-changing form carries.
//!
//! [`Operator`]: a session signed in by an account that is still ADMIN (looked up on every
//! request, as the API's tokens are: a demoted admin is out at once). Anyone else is sent
//! to the sign-in page. What the operator does moves the session's idle expiry (in the
//! background, `session::touch_later`); a page refreshing itself (marked with
//! [`REFRESH_HEADER`] by console.js) does not.
//!
//! [`CsrfForm`]: an `application/x-www-form-urlencoded` body whose `csrf` field equals the
//! session's token (made at sign-in; the sign-in form has its own, `sign_in`). Missing or
//! different: 403 in the standard error body, before anything is read or changed. The session
//! cookie is also SameSite=Strict, so another site's form does not even carry it.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    RequestExt,
};
use orderflow_jobs::operators::action_log::{Actor, Via};
use rand::RngCore;
use serde::{de::DeserializeOwned, Deserialize};
use tower_cookies::{Cookie, Cookies};
use tower_sessions::{cookie::SameSite, Session};

use crate::{
    auth::{self, Role},
    error::{ApiError, ErrorCode, FieldError},
    state::AppState,
};

pub const USER_ID: &str = "user_id";
pub const EMAIL: &str = "email";
pub const CSRF: &str = "csrf";
/// The cookie carrying the message left for the next page (no session write for it: a page
/// that only reads must not write).
pub const FLASH: &str = "orderflow_console_flash";

/// Sent by a page's own script when it refreshes its list: not the operator's activity.
pub const REFRESH_HEADER: &str = "x-console-refresh";

/// A signed-in administrator.
pub struct Operator {
    pub user_id: i64,
    pub email: String,
    pub csrf: String,
    pub session: Session,
    cookies: Cookies,
    secure: bool,
}

impl Operator {
    /// The action log's name for this operator.
    pub fn actor(&self) -> Actor {
        Actor::Account {
            via: Via::Console,
            user_id: self.user_id,
            email: self.email.clone(),
        }
    }

    /// A message for the next page this operator sees (after a redirect).
    pub async fn flash(&self, message: impl Into<String>) {
        let value = hex::encode(message.into().as_bytes());
        self.cookies
            .add(console_cookie(FLASH, value, self.secure).build());
    }

    /// The message left by the previous request, if any (shown once).
    pub async fn take_flash(&self) -> Option<String> {
        let value = self.cookies.get(FLASH)?.value().to_owned();
        self.cookies
            .remove(console_cookie(FLASH, "", self.secure).build());
        hex::decode(value)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }
}

/// A cookie of the console: its paths only, HttpOnly, SameSite=Strict, Secure unless
/// configured off — as the session's.
pub fn console_cookie(
    name: &'static str,
    value: impl Into<String>,
    secure: bool,
) -> tower_cookies::cookie::CookieBuilder<'static> {
    Cookie::build((name, value.into()))
        .path(crate::console::PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
}

/// A new random token (256 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn session_failed(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console session store failed");
    ApiError::internal().into_response()
}

pub async fn session_of(parts: &mut Parts, state: &AppState) -> Result<Session, Response> {
    Session::from_request_parts(parts, state)
        .await
        .map_err(|(_, msg)| session_failed(msg))
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = session_of(parts, state).await?;
        let sign_in = || Redirect::to("/console/login").into_response();
        let user_id: Option<i64> = session.get(USER_ID).await.map_err(session_failed)?;
        let Some(user_id) = user_id else {
            return Err(sign_in());
        };
        let role = auth::role_of(&state.db, user_id)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        if role != Some(Role::Admin) {
            // Demoted or deleted since signing in: the session ends here.
            session.flush().await.map_err(session_failed)?;
            return Err(sign_in());
        }
        let email = session.get(EMAIL).await.map_err(session_failed)?;
        let csrf = session.get(CSRF).await.map_err(session_failed)?;
        let idle_left: Option<i64> = session
            .get(super::session::IDLE_LEFT)
            .await
            .map_err(session_failed)?;
        let idle = state.config.console.session_idle;
        let activity = !parts.headers.contains_key(REFRESH_HEADER);
        if let (true, Some(left), Some(id)) = (activity, idle_left, session.id()) {
            if super::session::touch_due(left, idle) {
                super::session::touch_later(state.db.clone(), id, idle);
            }
        }
        let cookies = Cookies::from_request_parts(parts, state)
            .await
            .map_err(|(_, msg)| session_failed(msg))?;
        tracing::Span::current().record("userId", user_id);
        Ok(Operator {
            user_id,
            email: email.unwrap_or_default(),
            csrf: csrf.unwrap_or_default(),
            session,
            cookies,
            secure: state.config.console.cookie_secure,
        })
    }
}

/// A form whose CSRF token was checked against the session's.
pub struct CsrfForm<T>(pub T);

#[derive(Deserialize)]
struct Token {
    csrf: Option<String>,
}

/// Compares in time independent of where the first difference is.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The body of a console form post: only `application/x-www-form-urlencoded` (415 otherwise),
/// the one encoding a browser's plain form sends; the caller parses it.
pub async fn form_body(req: Request, state: &AppState) -> Result<Bytes, Response> {
    let urlencoded = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !urlencoded {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/x-www-form-urlencoded",
        )
        .into_response());
    }
    Bytes::from_request(req, state)
        .await
        .map_err(IntoResponse::into_response)
}

pub fn forbidden() -> Response {
    ApiError::new(ErrorCode::Forbidden, "missing or invalid CSRF token").into_response()
}

impl<T: DeserializeOwned> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(mut req: Request, state: &AppState) -> Result<Self, Response> {
        let session = req
            .extract_parts_with_state::<Session, _>(state)
            .await
            .map_err(|(_, msg)| session_failed(msg))?;
        let body = form_body(req, state).await?;
        let expected: Option<String> = session.get(CSRF).await.map_err(session_failed)?;
        let sent = serde_html_form::from_bytes::<Token>(&body)
            .ok()
            .and_then(|t| t.csrf);
        match (expected, sent) {
            (Some(expected), Some(sent))
                if !expected.is_empty() && same_token(&expected, &sent) => {}
            _ => {
                tracing::warn!("console form refused: missing or invalid CSRF token");
                return Err(forbidden());
            }
        }
        serde_html_form::from_bytes(&body)
            .map(CsrfForm)
            .map_err(|e| {
                ApiError::validation(vec![FieldError::new("form", e.to_string())]).into_response()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..63]));
        assert!(!same_token(&a, ""));
    }
}
