//! Signing in and out. Only an ADMIN account signs in; the attempt counts against the same
//! login throttle as the API's (per account and per client address). A successful sign-in
//! gets a new session id (no fixation) and a new CSRF token.

use askama::Template;
use axum::{
    extract::{Request, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
    RequestPartsExt,
};
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    guard::{self, CsrfForm, Operator, CSRF, EMAIL, USER_ID},
    view::render,
};
use crate::{
    app::AppState,
    auth::{self, LoginRefused, PeerAddr, Role},
    error::ApiError,
};

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    csrf: String,
    email: String,
    error: Option<String>,
}

/// The session's CSRF token, made now if the session has none (the sign-in form is the
/// first page of a visit).
async fn token_of(session: &Session) -> Result<String, Response> {
    let failed = |e: tower_sessions::session::Error| {
        tracing::error!(error = %e, "console session store failed");
        ApiError::internal().into_response()
    };
    if let Some(token) = session.get::<String>(CSRF).await.map_err(failed)? {
        return Ok(token);
    }
    let token = guard::new_token();
    session.insert(CSRF, &token).await.map_err(failed)?;
    Ok(token)
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
    let session = match guard::session_of(&mut parts, &state).await {
        Ok(s) => s,
        Err(res) => return res,
    };
    match token_of(&session).await {
        Ok(csrf) => render(&LoginPage {
            csrf,
            email: String::new(),
            error: None,
        }),
        Err(res) => res,
    }
}

/// The sign-in form again, with why it was refused.
async fn refused(session: &Session, email: String, error: &str) -> Response {
    match token_of(session).await {
        Ok(csrf) => render(&LoginPage {
            csrf,
            email,
            error: Some(error.to_owned()),
        }),
        Err(res) => res,
    }
}

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

pub async fn sign_in(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    session: Session,
    CsrfForm(form): CsrfForm<Credentials>,
) -> Response {
    let user = match auth::authenticate(&state, peer, &headers, &form.email, form.password.clone())
        .await
    {
        Ok(user) => user,
        Err(LoginRefused::InvalidCredentials) => {
            return refused(&session, form.email, "Email or password is incorrect.").await
        }
        Err(LoginRefused::Throttled(t)) => {
            let secs = t.retry_after_secs();
            let message = format!("Too many failed sign-ins; try again in {secs} s.");
            return refused(&session, form.email, &message).await;
        }
        Err(LoginRefused::Db(e)) => return ApiError::from(e).into_response(),
    };
    if user.role != Role::Admin {
        tracing::warn!(
            userId = user.id,
            "a non-ADMIN account tried to sign in to the console"
        );
        return refused(
            &session,
            form.email,
            "The console is for administrators only.",
        )
        .await;
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
