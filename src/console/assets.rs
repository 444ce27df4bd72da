//! The console's stylesheet and script, built into the binary (no CDN, nothing to deploy
//! beside it).

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};

use crate::{
    error::{ApiError, ErrorCode},
    http::extract::Path,
};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return ApiError::new(ErrorCode::NotFound, "no such resource").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}
