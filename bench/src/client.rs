//! The HTTP side: one keep-alive reqwest client shared by all load tasks (its pool keeps a
//! connection per concurrent task), the set-up calls, and POST /orders classified into an
//! `Outcome`.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::stats::Outcome;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// An answer to POST /orders.
pub struct OrderAnswer {
    pub status: u16,
    pub replayed: bool,
    pub body: String,
}

impl OrderAnswer {
    /// The error body's `code`, if the answer is an error.
    pub fn error_code(&self) -> Option<String> {
        error_code(&self.body)
    }

    /// 201 is the wanted answer; 4xx are refusals by code; 5xx are errors.
    pub fn outcome(&self) -> Outcome {
        match self.status {
            201 => Outcome::Ok,
            s @ 400..=499 => {
                Outcome::Refused(error_code(&self.body).unwrap_or(format!("HTTP_{s}")))
            }
            s => Outcome::ServerError(format!(
                "HTTP {s} {}",
                error_code(&self.body).unwrap_or_default()
            )),
        }
    }
}

fn error_code(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body)
        .ok()?
        .get("code")?
        .as_str()
        .map(str::to_owned)
}

/// `{"items":[{"productId":…,"quantity":…}]}`, serialized once per request.
pub fn order_body(product_id: i64, quantity: i64) -> String {
    json!({"items": [{"productId": product_id, "quantity": quantity}]}).to_string()
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // Above the service's own 30 s request timeout: its 503 is what we want to see.
            .timeout(Duration::from_secs(45))
            .build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
        })
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Registers an account; returns its id.
    pub async fn register(&self, email: &str, password: &str) -> anyhow::Result<i64> {
        let v = self
            .post(
                "/auth/register",
                None,
                json!({"email": email, "password": password, "name": "Bench User"}),
            )
            .await?;
        v["id"].as_i64().context("register answer has no id")
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let v = self
            .post(
                "/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await?;
        v["accessToken"]
            .as_str()
            .map(str::to_owned)
            .context("login answer has no accessToken")
    }

    /// Creates a product with `stock` units; returns its id.
    pub async fn create_product(
        &self,
        admin_token: &str,
        sku: &str,
        price: i64,
        stock: i64,
    ) -> anyhow::Result<i64> {
        let v = self
            .post(
                "/admin/products",
                Some(admin_token),
                json!({"sku": sku, "name": format!("Bench {sku}"), "price": price, "initialStock": stock}),
            )
            .await?;
        v["id"].as_i64().context("product answer has no id")
    }

    /// POST /orders; `Err` only when no HTTP answer came back.
    pub async fn create_order(
        &self,
        token: &str,
        key: &str,
        body: &str,
    ) -> Result<OrderAnswer, reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}/api/v1/orders", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        let status = resp.status();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let body = resp.text().await?;
        Ok(OrderAnswer {
            status: status.as_u16(),
            replayed,
            body,
        })
    }

    /// Pauses or resumes a job queue (ADMIN): no process of the service fetches from a
    /// paused queue from its next poll on (`cost` uses it to measure the stages apart).
    pub async fn set_queue_paused(
        &self,
        admin_token: &str,
        queue: &str,
        paused: bool,
    ) -> anyhow::Result<()> {
        let op = if paused { "pause" } else { "resume" };
        let resp = self
            .http
            .post(format!("{}/api/v1/admin/queues/{queue}/{op}", self.base))
            .bearer_auth(admin_token)
            .send()
            .await
            .with_context(|| format!("{op} {queue}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "{op} {queue}: {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// A counter from /actuator/prometheus, summed over its labels (0 if never incremented).
    pub async fn counter(&self, name: &str) -> Option<f64> {
        Some(sum_counter(&self.scrape().await?, name))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET /actuator/health/liveness, which does no work: how long any answer takes.
    pub async fn liveness(&self) -> anyhow::Result<u16> {
        let r = self
            .http
            .get(format!("{}/actuator/health/liveness", self.base))
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// The service's Prometheus exposition.
    pub async fn scrape(&self) -> Option<String> {
        self.http
            .get(format!("{}/actuator/prometheus", self.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }
}

/// A histogram's cumulative buckets `(le, count)` for the series whose labels contain every
/// `labels` pair (as written in the exposition, e.g. `status="503"`), summed over the rest.
pub fn histogram_buckets(text: &str, name: &str, labels: &[&str]) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let prefix = format!("{name}_bucket{{");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !labels.iter().all(|l| series.split(',').any(|s| s == *l)) {
            continue;
        }
        let Some(le) = series
            .split(',')
            .find_map(|s| s.strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'))
            .and_then(|v| {
                if v == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    v.parse().ok()
                }
            })
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += value,
            None => buckets.push((le, value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

fn sum_counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_picked_by_labels_and_summed_over_the_rest() {
        let text = "h_bucket{route=\"/o\",status=\"503\",le=\"0.01\"} 4\n\
                    h_bucket{route=\"/o\",status=\"503\",le=\"+Inf\"} 5\n\
                    h_bucket{route=\"/p\",status=\"503\",le=\"0.01\"} 1\n\
                    h_bucket{route=\"/p\",status=\"503\",le=\"+Inf\"} 1\n\
                    h_bucket{route=\"/o\",status=\"201\",le=\"0.01\"} 9\n\
                    h_count{route=\"/o\",status=\"503\"} 5\n";
        assert_eq!(
            histogram_buckets(text, "h", &["status=\"503\""]),
            vec![(0.01, 5.0), (f64::INFINITY, 6.0)]
        );
        assert_eq!(
            histogram_buckets(text, "h", &["route=\"/o\"", "status=\"503\""]),
            vec![(0.01, 4.0), (f64::INFINITY, 5.0)]
        );
        assert!(histogram_buckets(text, "missing", &[]).is_empty());
    }

    #[test]
    fn counters_are_summed_over_labels() {
        let text = "# TYPE c counter\nc{a=\"1\"} 2\nc{a=\"2\"} 3\nc_other 7\n";
        assert_eq!(sum_counter(text, "c"), 5.0);
        assert_eq!(sum_counter(text, "missing"), 0.0);
    }

    fn answer(status: u16, body: &str) -> Outcome {
        OrderAnswer {
            status,
            replayed: false,
            body: body.into(),
        }
        .outcome()
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        assert!(matches!(answer(201, "{}"), Outcome::Ok));
        assert!(
            matches!(answer(409, r#"{"code":"OUT_OF_STOCK"}"#), Outcome::Refused(c) if c == "OUT_OF_STOCK")
        );
        assert!(matches!(answer(422, "not json"), Outcome::Refused(c) if c == "HTTP_422"));
        assert!(
            matches!(answer(503, r#"{"code":"SERVICE_UNAVAILABLE"}"#), Outcome::ServerError(c) if c.contains("503"))
        );
    }
}
