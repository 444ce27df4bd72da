//! Parsing of the `Idempotency-Key` header: 1–255 printable ASCII characters, sent bare or
//! as a Structured Field string (`"…"`, with `\"` and `\\` escapes) as the draft specifies.

use axum::http::{HeaderMap, HeaderName};

use crate::error::{ApiError, ErrorCode};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const MAX_KEY_LEN: usize = 255;

fn malformed(reason: &str) -> ApiError {
    ApiError::validation(vec![]).with_detail("Idempotency-Key", reason)
}

fn unquote_sf_string(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A client's `Idempotency-Key`, as sent and checked: only [`IdempotencyKey::from_headers`]
/// makes one, so what reaches the order path is always a key the header rules accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The request's key, or the refusal the client is sent (missing: 400
    /// IDEMPOTENCY_KEY_REQUIRED; malformed: 400 VALIDATION_ERROR).
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        parse_key(headers).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Err(ApiError::new(
            ErrorCode::IdempotencyKeyRequired,
            "the Idempotency-Key header is required for this request",
        ));
    };
    if values.next().is_some() {
        return Err(malformed("must be sent once"));
    }
    let raw = value
        .to_str()
        .map_err(|_| malformed("must be printable ASCII"))?
        .trim();
    let key = if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        unquote_sf_string(&raw[1..raw.len() - 1])
            .ok_or_else(|| malformed("is not a valid quoted string"))?
    } else {
        raw.to_owned()
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(malformed("must be 1 to 255 characters"));
    }
    if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(malformed("must be printable ASCII"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(v: &str) -> Result<String, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(&IDEMPOTENCY_KEY, HeaderValue::from_str(v).unwrap());
        parse_key(&h)
    }

    #[test]
    fn bare_and_quoted_keys() {
        assert_eq!(parse("abc-123").unwrap(), "abc-123");
        assert_eq!(
            parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap(),
            "8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
        assert_eq!(parse(r#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
        assert_eq!(parse(&"k".repeat(255)).unwrap().len(), 255);
        // Quoted only when it both starts and ends with a quote; otherwise taken as it is.
        assert_eq!(parse(r#"ab""#).unwrap(), r#"ab""#);
        assert_eq!(parse(r#""ab"#).unwrap(), r#""ab"#);
        assert_eq!(parse(r#"""#).unwrap(), r#"""#);
    }

    #[test]
    fn malformed_keys() {
        for bad in ["\"\"", &"k".repeat(256), r#""a\nb""#, r#""a"b""#] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationError, "{bad}");
        }
    }

    #[test]
    fn missing_key_has_its_own_code() {
        assert_eq!(
            parse_key(&HeaderMap::new()).unwrap_err().code,
            ErrorCode::IdempotencyKeyRequired
        );
    }

    #[test]
    fn repeated_header_is_refused() {
        let mut h = HeaderMap::new();
        h.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        h.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert_eq!(parse_key(&h).unwrap_err().code, ErrorCode::ValidationError);
    }
}
