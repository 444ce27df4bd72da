//! Signing in and out. Only an ADMIN account signs in; the attempt counts against the same
//! login throttle as the API's (per account and per client address). A successful sign-in
//! gets a new session id (no fixation) and a new CSRF token.
//!
//! Nothing is stored before a sign-in succeeds: the sign-in form's CSRF token is a random
//! value kept in a cookie of its own ([`LOGIN_CSRF`], SameSite=Strict like the session's) and
//! echoed by the form; a post whose token differs from its cookie's is refused (another
//! site's form carries neither). Visiting the form, or failing to sign in, writes no row.

use askama::Template;
use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
    RequestExt, RequestPartsExt,
};
use serde::Deserialize;
use tower_cookies::Cookies;
use tower_sessions::Session;

use super::{
    guard::{self, form_body, CsrfForm, Operator, CSRF, EMAIL, USER_ID},
    view::render,
};
use crate::{
    auth::{self, LoginRefused, PeerAddr, Role},
    error::ApiError,
    state::AppState,
};

/// The cookie holding the sign-in form's CSRF token.
pub const LOGIN_CSRF: &str = "orderflow_console_login";

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    csrf: String,
    email: String,
    error: Option<String>,
}

fn cookies_failed(msg: &str) -> Response {
    tracing::error!(error = msg, "console cookies unavailable");
    ApiError::internal().into_response()
}

/// The sign-in form's token: the visitor's, or a new one set in its cookie now.
fn token_of(cookies: &Cookies, secure: bool) -> String {
    if let Some(token) = cookies
        .get(LOGIN_CSRF)
        .map(|c| c.value().to_owned())
        .filter(|t| t.len() == 64)
    {
        return token;
    }
    let token = guard::new_token();
    cookies.add(guard::console_cookie(LOGIN_CSRF, token.clone(), secure).build());
    token
}

pub async fn form(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    if parts
        .extract_with_state::<Operator, _>(&state)
        .await
        .is_ok()
    {
        return Redirect::to("/console/jobs").into_response();
    }
    let cookies = match Cookies::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err((_, msg)) => return cookies_failed(msg),
    };
    render(&LoginPage {
        csrf: token_of(&cookies, state.config.console.cookie_secure),
        email: String::new(),
        error: None,
    })
}

#[derive(Deserialize)]
pub struct Credentials {
    csrf: Option<String>,
    email: String,
    password: String,
}

/// The sign-in form, its token checked against its cookie's before anything else.
pub struct SignInForm {
    credentials: Credentials,
    /// The form's token, to render the form again with.
    csrf: String,
}

impl FromRequest<AppState> for SignInForm {
    type Rejection = Response;

    async fn from_request(mut req: Request, state: &AppState) -> Result<Self, Response> {
        let cookies = req
            .extract_parts_with_state::<Cookies, _>(state)
            .await
            .map_err(|(_, msg)| cookies_failed(msg))?;
        let body = form_body(req, state).await?;
        let credentials: Credentials = serde_html_form::from_bytes(&body).map_err(|e| {
            ApiError::validation(vec![crate::error::FieldError::new("form", e.to_string())])
                .into_response()
        })?;
        let expected = cookies.get(LOGIN_CSRF).map(|c| c.value().to_owned());
        match (expected, credentials.csrf.as_deref()) {
            (Some(expected), Some(sent))
                if !expected.is_empty() && guard::same_token(&expected, sent) =>
            {
                Ok(Self {
                    csrf: expected,
                    credentials,
                })
            }
            _ => {
                tracing::warn!("console sign-in refused: missing or invalid CSRF token");
                Err(guard::forbidden())
            }
        }
    }
}

/// The sign-in form again, with why it was refused.
fn refused(csrf: String, email: String, error: &str) -> Response {
    render(&LoginPage {
        csrf,
        email,
        error: Some(error.to_owned()),
    })
}

pub async fn sign_in(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    session: Session,
    cookies: Cookies,
    form: SignInForm,
) -> Response {
    let SignInForm {
        credentials: form,
        csrf,
    } = form;
    let user = match auth::authenticate(&state, peer, &headers, &form.email, form.password.clone())
        .await
    {
        Ok(user) => user,
        Err(LoginRefused::InvalidCredentials) => {
            return refused(csrf, form.email, "Email or password is incorrect.")
        }
        Err(LoginRefused::Throttled(t)) => {
            let secs = t.retry_after_secs();
            let message = format!("Too many failed sign-ins; try again in {secs} s.");
            return refused(csrf, form.email, &message);
        }
        Err(LoginRefused::Db(e)) => return ApiError::from(e).into_response(),
    };
    if user.role != Role::Admin {
        tracing::warn!(
            userId = user.id,
            "a non-ADMIN account tried to sign in to the console"
        );
        return refused(csrf, form.email, "The console is for administrators only.");
    }
    let started = async {
        session.cycle_id().await?;
        session.insert(USER_ID, user.id).await?;
        session.insert(EMAIL, &user.email).await?;
        session.insert(CSRF, guard::new_token()).await
    };
    if let Err(e) = started.await {
        tracing::error!(error = %e, "console session store failed");
        return ApiError::internal().into_response();
    }
    // Signed in: the session carries its own token from now on.
    cookies
        .remove(guard::console_cookie(LOGIN_CSRF, "", state.config.console.cookie_secure).build());
    tracing::info!(userId = user.id, "operator signed in to the console");
    Redirect::to("/console/jobs").into_response()
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn sign_out(operator: Operator, CsrfForm(_): CsrfForm<Empty>) -> Response {
    if let Err(e) = operator.session.flush().await {
        tracing::error!(error = %e, "console session store failed");
        return ApiError::internal().into_response();
    }
    tracing::info!(
        userId = operator.user_id,
        "operator signed out of the console"
    );
    Redirect::to("/console/login").into_response()
}
