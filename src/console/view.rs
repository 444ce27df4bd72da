//! What every console page shares: the frame around it (who is signed in, the sign-out
//! form's token, the message left by the last action, the refresh period), rendering, and
//! the plain-text forms of times and query strings the templates show.

use askama::Template;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::guard::Operator;
use crate::{error::ApiError, state::AppState};

/// The page's frame.
pub struct Chrome {
    pub email: String,
    pub csrf: String,
    pub flash: Option<String>,
    /// Lists refresh themselves every this many seconds (0: never).
    pub refresh_secs: u64,
    /// The navigation entry of this page.
    pub section: &'static str,
}

impl Chrome {
    pub async fn of(operator: &Operator, state: &AppState, section: &'static str) -> Self {
        Self {
            email: operator.email.clone(),
            csrf: operator.csrf.clone(),
            flash: operator.take_flash().await,
            refresh_secs: state.config.console.refresh.as_secs(),
            section,
        }
    }
}

/// Lists that refresh themselves count each state up to this many jobs: past it, a count
/// reads "10000+" (and costs no more to make however many jobs the table keeps).
pub const COUNT_BOUND: u32 = 10_000;

/// A count made up to [`COUNT_BOUND`], as shown.
pub fn count(n: i64) -> String {
    if n > i64::from(COUNT_BOUND) {
        format!("{COUNT_BOUND}+")
    } else {
        n.to_string()
    }
}

/// The page, or a 500 in the standard body if its template fails (logged).
pub fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            ApiError::internal().into_response()
        }
    }
}

/// `2026-11-30 15:04:05` (UTC), or a dash.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "—".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The value of a `datetime-local` input for `t` (UTC).
pub fn input_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A time from a form: RFC 3339, or a `datetime-local` value read as UTC. Blank: None.
pub fn parse_time(raw: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Some(t) = crate::operators::views::rfc3339(raw) {
        return Ok(Some(t));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| format!("{raw:?} is not a date and time"))
}

/// `?a=1&b=2` for `query` (its empty fields left out), or nothing.
pub fn query_string(query: &impl Serialize) -> String {
    match serde_html_form::to_string(query) {
        Ok(s) if !s.is_empty() => format!("?{s}"),
        _ => String::new(),
    }
}

/// A job's `last_result` as a person reads it: apalis stores `{"Err": "…"}` or `{"Ok": …}`.
pub fn job_result(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or("");
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(o)) if o.len() == 1 => match o.iter().next() {
            Some((_, serde_json::Value::String(s))) => s.clone(),
            Some((_, v)) => v.to_string(),
            None => raw.to_owned(),
        },
        _ => raw.to_owned(),
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_rfc3339_or_datetime_local_in_utc() {
        let t = parse_time(Some("2026-11-30T15:04")).unwrap().unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-30T15:04:00+00:00");
        let t = parse_time(Some("2026-11-30T16:04:05+01:00"))
            .unwrap()
            .unwrap();
        assert_eq!(input_time(Some(t)), "2026-11-30T15:04:05");
        assert_eq!(parse_time(Some(" ")), Ok(None));
        assert!(parse_time(Some("yesterday")).is_err());
    }

    #[test]
    fn a_job_result_is_shown_without_its_wrapper() {
        assert_eq!(job_result(Some(r#"{"Err":"kafka down"}"#)), "kafka down");
        assert_eq!(
            job_result(Some(r#"{"Ok":{"published":1}}"#)),
            r#"{"published":1}"#
        );
        assert_eq!(job_result(Some("plain")), "plain");
        assert_eq!(job_result(None), "");
    }

    #[test]
    fn a_count_past_the_bound_reads_as_the_bound_and_more() {
        assert_eq!(count(0), "0");
        assert_eq!(count(i64::from(COUNT_BOUND)), "10000");
        assert_eq!(count(i64::from(COUNT_BOUND) + 1), "10000+");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
