//! Renders every error response in the standard body (see `crate::error`).

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::{ApiError, ErrorCode};

pub async fn render_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let err = match parts.extensions.remove::<ApiError>() {
        Some(err) => err,
        // Already a JSON body of ours (a replayed idempotent response): keep it verbatim.
        None if is_json(&parts.headers) => return Response::from_parts(parts, body),
        None => from_foreign_status(status),
    };
    let json = serde_json::to_vec(&err.body(&path)).expect("error body serializes");
    parts.status = err.status();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn from_foreign_status(status: StatusCode) -> ApiError {
    let code = ErrorCode::for_status(status);
    let message = match code {
        ErrorCode::NotFound => "no such resource".to_string(),
        ErrorCode::MethodNotAllowed => "method not allowed on this resource".to_string(),
        ErrorCode::RequestTimeout => "the request took too long and was abandoned".to_string(),
        ErrorCode::PayloadTooLarge => "request body is too large".to_string(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
    };
    ApiError::new(code, message)
}

/// Unknown routes.
pub async fn not_found() -> Response {
    ApiError::new(ErrorCode::NotFound, "no such resource").into_response()
}

/// Panics become a 500 in the standard body (the panic message is logged, never sent).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %msg, "request handler panicked");
    ApiError::internal().into_response()
}
