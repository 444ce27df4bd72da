//! The one mapping from failures to the standard error body:
//! `{"timestamp","path","code","message","details":[{"field","message"}]}`.
//!
//! Handlers return [`ApiError`]; it travels to the edge as a response extension and the
//! `error_body` middleware, which knows the request path, renders it. Responses that carry no
//! `ApiError` but an error status (unknown route, wrong method, timeouts, panics) are given the
//! same body there, so no other error shape can leave the service.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;

/// The codes, their wire names and [`ErrorCode::ALL`] from one list, so that no list of the
/// codes (the tests walk `ALL`) can miss one.
macro_rules! error_codes {
    ($($code:ident => $name:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $($code,)*
        }

        impl ErrorCode {
            /// Every code, in the order they are listed.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code),*];

            /// The code as it appears in the body, e.g. `OUT_OF_STOCK` (also a metric label).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => $name,)*
                }
            }
        }
    };
}

error_codes! {
    ValidationError => "VALIDATION_ERROR",
    IdempotencyKeyRequired => "IDEMPOTENCY_KEY_REQUIRED",
    Unauthorized => "UNAUTHORIZED",
    InvalidCredentials => "INVALID_CREDENTIALS",
    Forbidden => "FORBIDDEN",
    NotFound => "NOT_FOUND",
    MethodNotAllowed => "METHOD_NOT_ALLOWED",
    RequestTimeout => "REQUEST_TIMEOUT",
    EmailTaken => "EMAIL_TAKEN",
    SkuTaken => "SKU_TAKEN",
    InsufficientStock => "INSUFFICIENT_STOCK",
    OutOfStock => "OUT_OF_STOCK",
    InvalidState => "INVALID_STATE",
    ConfirmationRequired => "CONFIRMATION_REQUIRED",
    TooManyJobs => "TOO_MANY_JOBS",
    IdempotencyKeyInProgress => "IDEMPOTENCY_KEY_IN_PROGRESS",
    PayloadTooLarge => "PAYLOAD_TOO_LARGE",
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
    IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
    TooManyRequests => "TOO_MANY_REQUESTS",
    InternalError => "INTERNAL_ERROR",
    ServiceUnavailable => "SERVICE_UNAVAILABLE",
    OrderOutcomeUnknown => "ORDER_OUTCOME_UNKNOWN",
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            ValidationError | IdempotencyKeyRequired => StatusCode::BAD_REQUEST,
            Unauthorized | InvalidCredentials => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            EmailTaken
            | SkuTaken
            | InsufficientStock
            | OutOfStock
            | InvalidState
            | ConfirmationRequired
            | TooManyJobs
            | IdempotencyKeyInProgress => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OrderOutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code for an error status produced outside our handlers (router, tower layers).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::ValidationError,
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => Self::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::TOO_MANY_REQUESTS => Self::TooManyRequests,
            StatusCode::SERVICE_UNAVAILABLE => Self::ServiceUnavailable,
            s if s.is_client_error() => Self::ValidationError,
            _ => Self::InternalError,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<FieldError>,
    /// Seconds for the `Retry-After` header, when the client should come back later.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn validation(details: Vec<FieldError>) -> Self {
        Self {
            code: ErrorCode::ValidationError,
            message: "request validation failed".into(),
            details,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_detail(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.details.push(FieldError::new(field, message));
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalError, "internal server error")
    }

    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::ServiceUnavailable,
            "a dependency is unavailable, retry later",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The standard body for this error, as served to the client for `path`.
    pub fn body(&self, path: &str) -> ErrorBody<'_> {
        ErrorBody {
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            path: path.to_string(),
            code: self.code,
            message: &self.message,
            details: &self.details,
        }
    }
}

/// The one error shape of the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    #[schema(example = "2026-01-01T00:00:00.000Z")]
    pub timestamp: String,
    #[schema(example = "/api/v1/orders")]
    pub path: String,
    pub code: ErrorCode,
    pub message: &'a str,
    pub details: &'a [FieldError],
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status().into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// Database failures: unreachable or exhausted means "retry later" (503); anything else is
/// a bug or an unexpected state, logged with its cause and answered with a bare 500.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::unavailable()
        } else {
            tracing::error!(error = %err, "database error");
            Self::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_in_screaming_snake_case() {
        let json = serde_json::to_string(&ErrorCode::IdempotencyKeyInProgress).unwrap();
        assert_eq!(json, "\"IDEMPOTENCY_KEY_IN_PROGRESS\"");
    }

    #[test]
    fn as_str_is_the_serialized_code() {
        for &code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn body_has_exactly_the_standard_fields() {
        let err = ApiError::validation(vec![FieldError::new("items[0].quantity", "must be >= 1")]);
        let v = serde_json::to_value(err.body("/api/v1/orders")).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["code", "details", "message", "path", "timestamp"]);
        assert_eq!(v["details"][0]["field"], "items[0].quantity");
        assert_eq!(v["code"], "VALIDATION_ERROR");
    }

    #[test]
    fn foreign_statuses_map_to_codes() {
        assert_eq!(
            ErrorCode::for_status(StatusCode::METHOD_NOT_ALLOWED),
            ErrorCode::MethodNotAllowed
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::BAD_GATEWAY),
            ErrorCode::InternalError
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::IM_A_TEAPOT),
            ErrorCode::ValidationError
        );
    }
}
