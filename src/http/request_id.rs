//! `X-Request-Id`: kept from the client when it is sane, generated otherwise, echoed on every
//! response and recorded on the request's span. tower-http sets and propagates the header;
//! this module only decides what "sane" means, because tower-http keeps any incoming value.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 1–128 characters of `[A-Za-z0-9._:-]`: enough for UUIDs, ULIDs and tracing ids, and
/// nothing that could forge a log line or carry markup.
pub fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops an incoming request id that is not sane, so that the id layer generates one.
pub async fn drop_insane_request_id(mut req: Request, next: Next) -> Response {
    if let Some(v) = req.headers().get(&X_REQUEST_ID) {
        if !is_sane(v) {
            req.headers_mut().remove(&X_REQUEST_ID);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_odd_ones_are_not() {
        assert!(is_sane(&HeaderValue::from_static(
            "3f1c2a9e-7b1d-4a55-9c0e-1d2b3c4d5e6f"
        )));
        assert!(is_sane(&HeaderValue::from_static("req:42.a_b")));
        assert!(!is_sane(&HeaderValue::from_static("")));
        assert!(!is_sane(&HeaderValue::from_static("a b")));
        assert!(!is_sane(&HeaderValue::from_static("<script>")));
        assert!(!is_sane(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
    }
}
