//! Latency recording (HDR histograms, one per client task, merged at the end) and the
//! classification of every answer, so that a refusal or an error is counted, never lost.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track exactly; anything slower is clamped to it (and
/// still counted). The service answers 503 after 30 s, so a minute leaves room.
const MAX_TRACKED_MICROS: u64 = 60_000_000;
/// How many distinct error messages a scenario keeps to show.
const MAX_SAMPLES: usize = 5;

/// What one request ended as.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The answer the scenario wanted (201, or a correct replay).
    Ok,
    /// A 4xx with its error `code` (e.g. OUT_OF_STOCK).
    Refused(String),
    /// A 5xx (or a database error in the ceiling): always an error.
    ServerError(String),
    /// No HTTP answer at all (connection refused, reset, timeout).
    Transport(String),
    /// An answer with the right status but the wrong content (e.g. a replay that differs).
    Wrong(String),
}

/// Lags read after a run can be far longer than any request (a pipeline that falls behind).
const MAX_TRACKED_LAG_MICROS: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3).expect("valid histogram bounds")
}

/// Everything one client task (or, merged, one scenario) saw.
#[derive(Debug, Clone)]
pub struct Recorder {
    latencies: Histogram<u64>,
    pub ok: u64,
    pub refusals: BTreeMap<String, u64>,
    pub server_errors: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub wrong: u64,
    pub samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latencies: histogram(),
            ok: 0,
            refusals: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            transport_errors: 0,
            wrong: 0,
            samples: Vec::new(),
        }
    }
}

impl Recorder {
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_TRACKED_MICROS);
        self.latencies.saturating_record(micros);
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Refused(code) => *self.refusals.entry(code).or_default() += 1,
            Outcome::ServerError(code) => {
                self.sample(&code);
                *self.server_errors.entry(code).or_default() += 1;
            }
            Outcome::Transport(e) => {
                self.sample(&e);
                self.transport_errors += 1;
            }
            Outcome::Wrong(e) => {
                self.sample(&e);
                self.wrong += 1;
            }
        }
    }

    fn sample(&mut self, message: &str) {
        if self.samples.len() < MAX_SAMPLES && !self.samples.iter().any(|s| s == message) {
            self.samples.push(message.to_owned());
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latencies
            .add(&other.latencies)
            .expect("histograms share their bounds");
        self.ok += other.ok;
        for (code, n) in other.refusals {
            *self.refusals.entry(code).or_default() += n;
        }
        for (code, n) in other.server_errors {
            *self.server_errors.entry(code).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.wrong += other.wrong;
        for s in other.samples {
            self.sample(&s);
        }
    }

    pub fn requests(&self) -> u64 {
        self.latencies.len()
    }

    /// Refusals whose code is not in `allowed`, plus every 5xx, transport error and wrong
    /// answer: the count a scenario requires to be zero.
    pub fn errors(&self, allowed_refusals: &[&str]) -> u64 {
        let refused: u64 = self
            .refusals
            .iter()
            .filter(|(code, _)| !allowed_refusals.contains(&code.as_str()))
            .map(|(_, n)| n)
            .sum();
        refused + self.server_errors.values().sum::<u64>() + self.transport_errors + self.wrong
    }

    pub fn summary(&self, elapsed: Duration, allowed_refusals: &[&str]) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| self.latencies.value_at_quantile(q) as f64 / 1000.0;
        Summary {
            seconds: round(secs, 2),
            requests: self.requests(),
            ok: self.ok,
            ok_per_sec: round(self.ok as f64 / secs, 1),
            requests_per_sec: round(self.requests() as f64 / secs, 1),
            p50_ms: round(ms(0.50), 2),
            p95_ms: round(ms(0.95), 2),
            p99_ms: round(ms(0.99), 2),
            max_ms: round(self.latencies.max() as f64 / 1000.0, 2),
            refusals: self.refusals.clone(),
            server_errors: self.server_errors.clone(),
            transport_errors: self.transport_errors,
            wrong_answers: self.wrong,
            errors: self.errors(allowed_refusals),
            error_samples: self.samples.clone(),
        }
    }
}

/// The figures reported for one load run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seconds: f64,
    pub requests: u64,
    pub ok: u64,
    pub ok_per_sec: f64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// 4xx answers by error code.
    pub refusals: BTreeMap<String, u64>,
    /// 5xx answers (or database errors in the ceiling) by code.
    pub server_errors: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub wrong_answers: u64,
    /// Everything that must be zero: refusals other than the scenario's expected ones,
    /// 5xx, transport errors, wrong answers.
    pub errors: u64,
    pub error_samples: Vec<String>,
}

/// Percentiles of a list of durations measured after the fact (e.g. lags read from the
/// database), in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    pub fn of_micros(values: impl IntoIterator<Item = i64>) -> Self {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_LAG_MICROS, 3)
            .expect("valid histogram bounds");
        for v in values {
            h.saturating_record((v.max(1) as u64).min(MAX_TRACKED_LAG_MICROS));
        }
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: round(h.value_at_quantile(0.50) as f64 / 1000.0, 2),
            p99_ms: round(h.value_at_quantile(0.99) as f64 / 1000.0, 2),
            max_ms: round(h.max() as f64 / 1000.0, 2),
        }
    }
}

pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_outside_the_allowed_list_are_errors() {
        let mut r = Recorder::default();
        r.record(Duration::from_millis(2), Outcome::Ok);
        r.record(
            Duration::from_millis(3),
            Outcome::Refused("OUT_OF_STOCK".into()),
        );
        r.record(
            Duration::from_millis(4),
            Outcome::Refused("IDEMPOTENCY_KEY_IN_PROGRESS".into()),
        );
        let mut other = Recorder::default();
        other.record(Duration::from_millis(5), Outcome::ServerError("503".into()));
        r.merge(other);
        assert_eq!(r.requests(), 4);
        assert_eq!(r.errors(&["OUT_OF_STOCK"]), 2);
        let s = r.summary(Duration::from_secs(2), &["OUT_OF_STOCK"]);
        assert_eq!(s.ok, 1);
        assert_eq!(s.ok_per_sec, 0.5);
        assert!(s.max_ms >= 4.9 && s.max_ms <= 5.1, "{}", s.max_ms);
    }

    #[test]
    fn lags_longer_than_a_minute_are_not_clamped() {
        let s = Spread::of_micros([90_000_000]);
        assert!((s.max_ms - 90_000.0).abs() < 100.0, "{}", s.max_ms);
    }

    #[test]
    fn spread_of_micros() {
        let s = Spread::of_micros((1..=100).map(|ms| ms * 1000));
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{}", s.p50_ms);
        assert!((s.max_ms - 100.0).abs() < 0.1, "{}", s.max_ms);
    }
}
