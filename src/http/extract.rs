//! `Json` and `Path` extractors whose rejections are standard error bodies: malformed JSON
//! and type mismatches are 400 VALIDATION_ERROR with the offending field, a missing content
//! type 415, an oversized body 413, a non-numeric id in the path 400.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, FromRequestParts, Request},
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode, FieldError};

pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(map_rejection(rejection)),
        }
    }
}

fn map_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        }
        JsonRejection::JsonDataError(e) => {
            // serde_path_to_error gives "items[0].quantity: invalid type ..."
            let text = e.body_text();
            let detail = text
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&text);
            let (field, message) = match detail.split_once(": ") {
                Some((field, msg)) if !field.contains(' ') => (field.to_string(), msg.to_string()),
                _ => ("body".to_string(), detail.to_string()),
            };
            ApiError::validation(vec![FieldError::new(field, message)])
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(ErrorCode::ValidationError, "request body is not valid JSON")
                .with_detail("body", e.body_text())
        }
        other => ApiError::new(ErrorCode::ValidationError, other.body_text()),
    }
}

pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::validation(vec![FieldError::new("path", e.body_text())]))
    }
}
