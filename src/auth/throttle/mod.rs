//! Login brute-force throttling, after OWASP's authentication guidance and without a lock
//! that anyone can set off (policy and reasons: ADR 0013). Three counters, in a fixed window
//! of `LOGIN_THROTTLE_WINDOW_SECS`, each reserved *before* the password is checked, in one
//! atomic step, so that no burst of concurrent logins can slip past a limit:
//!
//! * **per account and client address** (`LOGIN_MAX_FAILURES_PER_ACCOUNT_AND_IP`): at the
//!   limit, that address's logins to that account are refused — the guesser's, not the
//!   owner's elsewhere. A successful login forgets the count.
//! * **per client address** (`LOGIN_MAX_FAILURES_PER_IP`, IPv6 per /64), over all accounts:
//!   at the limit, the address's logins are refused — except to accounts that have logged
//!   in from it before (within `LOGIN_KNOWN_CLIENT_DAYS`), so that one guesser behind a NAT
//!   does not lock out the people who use it every day.
//! * **per account** (`LOGIN_SLOWDOWN_AFTER_ACCOUNT_FAILURES`), from every address: beyond
//!   it, logins to the account are slowed — a delay before the password check, doubling
//!   from 250 ms per failure up to `LOGIN_SLOWDOWN_MAX_MS` — never refused; a known address
//!   is not slowed.
//!
//! A successful login gives its reservations back (only failures stay counted) and marks
//! its address as known to the account. The account is the user id when the email belongs
//! to an account — the email column's collation is case- and accent-insensitive, so
//! `José@x.org` and `jose@x.org` are one account — or a hash of the normalised email
//! otherwise (no email is stored). The client address is the TCP peer unless
//! `HTTP_TRUSTED_PROXY_HOPS` says reverse proxies in front append to `X-Forwarded-For`.
//!
//! A refusal is 429 TOO_MANY_REQUESTS in the standard body with `Retry-After` (seconds until
//! the window ends), and the password is not checked, so a throttled guess learns nothing.
//! The counters live in Redis, shared by replicas (its calls bounded by
//! `LOGIN_THROTTLE_REDIS_TIMEOUT_MS`, longer than the cache's); while Redis is down or slower
//! than that, they live in the process (`counters`), per replica, so the throttle is never
//! switched off.

mod client;
mod counters;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

pub use client::{client_ip, PeerAddr};
use counters::{Backend, Counter, Counters, Reserved, Settle};

use crate::{
    config::LoginThrottleConfig,
    error::{ApiError, ErrorCode},
    optional_redis::OptionalRedis,
};

/// `login_throttled_total{scope="account_client"|"client"}`: logins refused with 429.
pub const THROTTLED_METRIC: &str = "login_throttled_total";
/// `login_slowed_total`: logins delayed because their account is failing from everywhere.
pub const SLOWED_METRIC: &str = "login_slowed_total";
/// `login_throttle_errors_total`: throttle calls to Redis that failed or were skipped in the
/// second of bypass after a failure; while it grows, logins are throttled per process.
pub const ERRORS_METRIC: &str = "login_throttle_errors_total";

/// The first delay of a slowed login; each further failure on the account doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// Whose limit refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This address, on this account.
    AccountClient,
    /// This address, on any account it is not known to.
    Client,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::AccountClient => "account_client",
            Scope::Client => "client",
        }
    }
}

/// The account a login is for.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    /// The email belongs to this user.
    Id(i64),
    /// No such account: counted by the (normalised) email.
    Email(&'a str),
}

/// A login refused by the throttle: 429 in the standard body with `Retry-After`.
#[derive(Debug)]
pub struct Throttled {
    pub scope: Scope,
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds, rounded up, at least 1 (RFC 9110 `delay-seconds`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let message = match self.scope {
            Scope::AccountClient => {
                "too many failed logins for this account from this address; retry later"
            }
            Scope::Client => "too many failed logins from this address; retry later",
        };
        let mut res = ApiError::new(ErrorCode::TooManyRequests, message)
            .with_detail("Retry-After", format!("retry in {secs} s"))
            .into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

/// The delay of a login to an account that has failed `failures` times in the window.
fn slowdown(failures: u64, config: &LoginThrottleConfig) -> Duration {
    let Some(beyond) = failures.checked_sub(u64::from(config.slowdown_after_account_failures))
    else {
        return Duration::ZERO;
    };
    let factor = 1u32 << beyond.min(16);
    FIRST_DELAY.saturating_mul(factor).min(config.slowdown_max)
}

#[derive(Clone)]
pub struct LoginThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    counters: Counters,
    prefix: String,
    config: LoginThrottleConfig,
}

/// One login attempt that the throttle let through; report how it ended.
pub struct Attempt {
    throttle: LoginThrottle,
    backend: Backend,
    account_client: String,
    /// The counters this attempt reserved that a success gives back.
    reserved: Vec<String>,
    /// Set on success: the address is known to the account from then on.
    known: Option<String>,
}

impl LoginThrottle {
    /// Never fails: a bad Redis URL only means the counters live in the process (logged).
    pub fn new(url: &str, prefix: &str, config: LoginThrottleConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                counters: Counters::new(OptionalRedis::new(
                    url,
                    config.redis_timeout,
                    "logins are throttled per process",
                )),
                prefix: prefix.to_owned(),
                config,
            }),
        }
    }

    /// The address the per-client limits apply to, per `HTTP_TRUSTED_PROXY_HOPS`.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        client_ip(peer, headers, self.inner.config.trusted_proxy_hops)
    }

    fn key(&self, parts: &[&str]) -> String {
        format!("{}login:{}", self.inner.prefix, parts.join(":"))
    }

    /// The Redis keys of a login: its counters, and the marker of its address being known.
    fn keys(&self, account: Account<'_>, client: Option<IpAddr>) -> Keys {
        let account_id = match account {
            Account::Id(id) => format!("user-{id}"),
            Account::Email(email) => {
                let digest = hex::encode(Sha256::digest(email.as_bytes()));
                format!("email-{}", &digest[..32])
            }
        };
        let bucket = client.map(client::client_bucket);
        let bucket_name = bucket.as_deref().unwrap_or("unknown-client");
        Keys {
            account_client: self.key(&["account-client", &account_id, bucket_name]),
            client: bucket.as_deref().map(|b| self.key(&["client", b])),
            account: self.key(&["account", &account_id]),
            // Only an address a real account logged in from can be known to it.
            known: match (account, &bucket) {
                (Account::Id(_), Some(b)) => Some(self.key(&["known", &account_id, b])),
                _ => None,
            },
        }
    }

    /// Reserves the attempt on its counters, or refuses it if the address is over a limit
    /// for this account or for every account it is not known to. A login to an account that
    /// is failing from everywhere returns only after its delay.
    pub async fn begin(
        &self,
        account: Account<'_>,
        client: Option<IpAddr>,
    ) -> Result<Attempt, Throttled> {
        let cfg = &self.inner.config;
        let keys = self.keys(account, client);
        let counters = keys.counters(cfg);
        // A marker that never exists stands in when the address cannot be known.
        let never_known = self.key(&["never-known"]);
        let marker = keys.known.as_deref().unwrap_or(&never_known);
        let (backend, reserved) = self
            .inner
            .counters
            .reserve(marker, &counters, cfg.window)
            .await;
        let (marked, before) = match reserved {
            Reserved::Counted { marked, before } => (marked, before),
            Reserved::Full { index, retry_after } => return Err(refuse(index, retry_after)),
        };
        if !marked {
            let account_failures = before.last().copied().flatten().unwrap_or(0);
            slow_down(slowdown(account_failures, cfg)).await;
        }
        // Every counter but the first (forgotten on success) that this attempt counted on.
        let reserved = counters
            .iter()
            .zip(&before)
            .skip(1)
            .filter(|(_, count)| count.is_some())
            .map(|(counter, _)| counter.key.to_owned())
            .collect();
        Ok(Attempt {
            throttle: self.clone(),
            backend,
            account_client: keys.account_client,
            reserved,
            known: keys.known,
        })
    }
}

/// The Redis keys of one login.
struct Keys {
    account_client: String,
    /// `None` when the client's address is not known (no connect info).
    client: Option<String>,
    account: String,
    known: Option<String>,
}

impl Keys {
    /// The account × address counter first (`refuse` reads the index), the account last
    /// (`begin` reads its count for the delay).
    fn counters(&self, cfg: &LoginThrottleConfig) -> Vec<Counter<'_>> {
        let mut counters = vec![Counter {
            key: &self.account_client,
            limit: Some(cfg.max_failures_per_account_and_ip),
            exempt_when_marked: false,
        }];
        if let Some(key) = &self.client {
            counters.push(Counter {
                key,
                limit: Some(cfg.max_failures_per_ip),
                exempt_when_marked: true,
            });
        }
        counters.push(Counter {
            key: &self.account,
            limit: None,
            exempt_when_marked: false,
        });
        counters
    }
}

/// The refusal of a login whose counter `index` is at its limit.
fn refuse(index: usize, retry_after: Duration) -> Throttled {
    let scope = if index == 0 {
        Scope::AccountClient
    } else {
        Scope::Client
    };
    metrics::counter!(THROTTLED_METRIC, "scope" => scope.as_str()).increment(1);
    tracing::warn!(scope = scope.as_str(), "login throttled");
    Throttled { scope, retry_after }
}

async fn slow_down(delay: Duration) {
    if delay.is_zero() {
        return;
    }
    metrics::counter!(SLOWED_METRIC).increment(1);
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "login slowed: the account is failing"
    );
    tokio::time::sleep(delay).await;
}

impl Attempt {
    /// The password was right: this address's failures on the account are forgotten, the
    /// attempt no longer counts, and the address is known to the account.
    pub async fn succeeded(self) {
        let inner = &self.throttle.inner;
        let release: Vec<&str> = self.reserved.iter().map(String::as_str).collect();
        let settle = Settle {
            forget: &[&self.account_client],
            release: &release,
            mark: self
                .known
                .as_deref()
                .map(|key| (key, inner.config.known_client_ttl)),
        };
        inner.counters.settle(self.backend, settle).await;
    }

    /// The credentials were wrong: the attempt stays counted, as it was reserved.
    pub fn failed(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(after: u32, max_ms: u64) -> LoginThrottleConfig {
        LoginThrottleConfig {
            max_failures_per_account_and_ip: 5,
            max_failures_per_ip: 50,
            slowdown_after_account_failures: after,
            slowdown_max: Duration::from_millis(max_ms),
            known_client_ttl: Duration::from_secs(60),
            window: Duration::from_secs(60),
            redis_timeout: Duration::from_millis(500),
            trusted_proxy_hops: 0,
        }
    }

    #[test]
    fn the_delay_starts_at_the_bound_doubles_and_is_capped() {
        let cfg = config(20, 5000);
        let ms = |n| slowdown(n, &cfg).as_millis();
        assert_eq!(ms(0), 0);
        assert_eq!(ms(19), 0);
        assert_eq!(ms(20), 250);
        assert_eq!(ms(21), 500);
        assert_eq!(ms(24), 4000);
        assert_eq!(ms(25), 5000);
        assert_eq!(ms(u64::MAX), 5000);
        assert_eq!(slowdown(30, &config(20, 0)), Duration::ZERO);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = |ms| Throttled {
            scope: Scope::AccountClient,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(t(0).retry_after_secs(), 1);
        assert_eq!(t(1).retry_after_secs(), 1);
        assert_eq!(t(1000).retry_after_secs(), 1);
        assert_eq!(t(1001).retry_after_secs(), 2);
    }
}
