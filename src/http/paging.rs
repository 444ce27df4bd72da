//! `?page=0&size=20` paging shared by every list endpoint, with a bounded page size.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, FieldError};

pub const DEFAULT_SIZE: u32 = 20;
pub const MAX_SIZE: u32 = 100;
/// Deep pages are refused rather than served with an ever larger OFFSET scan.
pub const MAX_PAGE: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub size: u32,
}

impl PageRequest {
    pub fn offset(&self) -> i64 {
        i64::from(self.page) * i64::from(self.size)
    }
    pub fn limit(&self) -> i64 {
        i64::from(self.size)
    }
}

/// The paging query parameters as documented; [`PageRequest`] is what handlers receive.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Zero-based page number.
    #[param(minimum = 0, maximum = 10_000, default = 0)]
    pub page: Option<u32>,
    /// Items per page.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub size: Option<u32>,
}

#[derive(Deserialize)]
struct RawPaging {
    page: Option<String>,
    size: Option<String>,
}

fn parse(
    field: &str,
    raw: Option<&str>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, FieldError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(FieldError::new(
            field,
            format!("must be an integer between {min} and {max}"),
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(raw) = Query::<RawPaging>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::validation(vec![FieldError::new("query", e.body_text())]))?;
        let page = parse("page", raw.page.as_deref(), 0, 0, MAX_PAGE);
        let size = parse("size", raw.size.as_deref(), DEFAULT_SIZE, 1, MAX_SIZE);
        match (page, size) {
            (Ok(page), Ok(size)) => Ok(Self { page, size }),
            (p, s) => Err(ApiError::validation(
                [p.err(), s.err()].into_iter().flatten().collect(),
            )),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub size: u32,
    pub total_items: i64,
    pub total_pages: i64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, req: PageRequest, total_items: i64) -> Self {
        let size = i64::from(req.size);
        Self {
            items,
            page: req.page,
            size: req.size,
            total_items,
            total_pages: (total_items + size - 1) / size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bounds() {
        assert_eq!(parse("size", None, 20, 1, 100), Ok(20));
        assert_eq!(parse("size", Some("100"), 20, 1, 100), Ok(100));
        assert!(parse("size", Some("101"), 20, 1, 100).is_err());
        assert!(parse("size", Some("0"), 20, 1, 100).is_err());
        assert!(parse("page", Some("-1"), 0, 0, MAX_PAGE).is_err());
        assert!(parse("page", Some("abc"), 0, 0, MAX_PAGE).is_err());
    }

    #[test]
    fn total_pages_rounds_up() {
        let req = PageRequest { page: 0, size: 20 };
        assert_eq!(Page::<()>::new(vec![], req, 0).total_pages, 0);
        assert_eq!(Page::<()>::new(vec![], req, 20).total_pages, 1);
        assert_eq!(Page::<()>::new(vec![], req, 21).total_pages, 2);
    }
}
