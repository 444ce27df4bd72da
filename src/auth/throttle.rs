//! Login brute-force throttling, per account and per client address, with the counters in
//! Redis so that every replica sees the same counts.
//!
//! * **Per account**: every attempt on an account is counted *before* its password is
//!   checked (one Lua script: INCR, and PEXPIRE when the counter is new — a fixed window of
//!   `LOGIN_THROTTLE_WINDOW_SECS`). Counting first means that a burst of concurrent guesses
//!   cannot all slip past the check before the first failure is recorded. A successful login
//!   deletes the counter, so only failures accumulate. The account is the user id when the
//!   email belongs to an account — the email column's collation is case- and
//!   accent-insensitive, so `José@x.org`, `jose@x.org` and `JOSE@x.org` are one account and
//!   one counter — or a hash of the normalised email otherwise (no email is stored in Redis).
//! * **Per client**: failed logins from one address are counted (after the failure, so that
//!   many people logging in successfully behind one NAT are never throttled); once
//!   `LOGIN_MAX_FAILURES_PER_IP` is reached every login from that address is refused until
//!   the window ends. IPv6 clients are counted per /64, the block one subscriber gets. The
//!   address is the TCP peer unless `HTTP_TRUSTED_PROXY_HOPS` says reverse proxies in front
//!   append to `X-Forwarded-For`.
//!
//! A refusal is 429 TOO_MANY_REQUESTS in the standard body with `Retry-After` (seconds until
//! the window ends), and the password is not checked, so a throttled guess learns nothing.
//! Redis being down or slow (bounded by `REDIS_TIMEOUT_MS`) fails **open**: the login goes
//! ahead unthrottled, the failure is logged and counted (`login_throttle_errors_total`), and
//! Redis is bypassed for a second, as the product cache does.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{header, request::Parts, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::{
    config::LoginThrottleConfig,
    error::{ApiError, ErrorCode},
    optional_redis::{OptionalRedis, Unavailable},
};

/// `login_throttled_total{scope="account"|"client"}`: logins refused with 429.
pub const THROTTLED_METRIC: &str = "login_throttled_total";
/// `login_throttle_errors_total`: throttle calls to Redis that failed or were skipped in the
/// second of bypass after a failure; while it grows, logins are not throttled (fail open).
pub const ERRORS_METRIC: &str = "login_throttle_errors_total";

/// KEYS[1]: the account's counter; KEYS[2], if given: the client's failure counter.
/// ARGV: window (ms), account limit, client limit.
/// Returns {0, 0} to go ahead, or {scope, ms left in the window}: 1 = account, 2 = client.
/// A client already over its limit does not count against the account it tried.
const BEGIN_SCRIPT: &str = r#"
if #KEYS > 1 then
  local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
  if failures >= tonumber(ARGV[3]) then
    return {2, redis.call('PTTL', KEYS[2])}
  end
end
local attempts = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if attempts > tonumber(ARGV[2]) then
  return {1, redis.call('PTTL', KEYS[1])}
end
return {0, 0}
"#;

/// KEYS[1]: the client's failure counter; ARGV[1]: window (ms).
const FAILED_SCRIPT: &str = r#"
local failures = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return failures
"#;

/// Whose limit refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Account,
    Client,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
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
            Scope::Account => "too many failed logins for this account; retry later",
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

/// The TCP peer's address, when the server was started with connect info (`app::serve`
/// is); `None` otherwise, e.g. in a test router served without it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// The client's address: the TCP peer, or with `hops` trusted proxies in front (each
/// appending the address it received the request from to `X-Forwarded-For`), the entry
/// `hops` places from the right — the one the outermost trusted proxy wrote. Entries to its
/// left were written by the client and are ignored; a header with too few entries falls
/// back to the peer.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    entries
        .len()
        .checked_sub(hops)
        .and_then(|i| parse_ip(entries[i]))
        .or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The counter's name for a client: IPv4 as is, IPv6 by its /64.
fn client_bucket(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

#[derive(Clone)]
pub struct LoginThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    redis: OptionalRedis,
    prefix: String,
    config: LoginThrottleConfig,
    begin: redis::Script,
    failed: redis::Script,
}

/// One login attempt that the throttle let through; report how it ended.
pub struct Attempt {
    throttle: LoginThrottle,
    account_key: String,
    client_key: Option<String>,
}

impl LoginThrottle {
    /// Never fails: a bad URL only means logins are not throttled (logged).
    pub fn new(url: &str, prefix: &str, timeout: Duration, config: LoginThrottleConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis: OptionalRedis::new(url, timeout, "logins are not throttled"),
                prefix: prefix.to_owned(),
                config,
                begin: redis::Script::new(BEGIN_SCRIPT),
                failed: redis::Script::new(FAILED_SCRIPT),
            }),
        }
    }

    /// The address the per-client limit applies to, per `HTTP_TRUSTED_PROXY_HOPS`.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        client_ip(peer, headers, self.inner.config.trusted_proxy_hops)
    }

    fn account_key(&self, account: Account<'_>) -> String {
        match account {
            Account::Id(id) => format!("{}login:account:{id}", self.inner.prefix),
            Account::Email(email) => {
                let digest = hex::encode(Sha256::digest(email.as_bytes()));
                format!("{}login:email:{}", self.inner.prefix, &digest[..32])
            }
        }
    }

    fn client_key(&self, ip: IpAddr) -> String {
        format!("{}login:client:{}", self.inner.prefix, client_bucket(ip))
    }

    /// Counts the attempt, or refuses it if the account or the client is over its limit.
    /// Without Redis the attempt goes ahead (fail open).
    pub async fn begin(
        &self,
        account: Account<'_>,
        client: Option<IpAddr>,
    ) -> Result<Attempt, Throttled> {
        let account_key = self.account_key(account);
        let client_key = client.map(|ip| self.client_key(ip));
        let cfg = &self.inner.config;
        let window_ms = cfg.window.as_millis() as u64;
        let verdict = {
            let (script, account_key, client_key) = (&self.inner.begin, &account_key, &client_key);
            self.run("begin", |mut c| async move {
                let mut inv = script.key(account_key);
                if let Some(k) = client_key {
                    inv.key(k);
                }
                inv.arg(window_ms)
                    .arg(cfg.max_failures_per_account)
                    .arg(cfg.max_failures_per_ip)
                    .invoke_async::<(i64, i64)>(&mut c)
                    .await
            })
            .await
        };
        let scope = match verdict {
            Some((1, _)) => Some(Scope::Account),
            Some((2, _)) => Some(Scope::Client),
            _ => None,
        };
        if let (Some(scope), Some((_, ttl_ms))) = (scope, verdict) {
            metrics::counter!(THROTTLED_METRIC, "scope" => scope.as_str()).increment(1);
            tracing::warn!(scope = scope.as_str(), "login throttled");
            // A counter always has a TTL; -1/-2 (none, or expired just now) mean "now".
            let left = u64::try_from(ttl_ms).unwrap_or(0);
            return Err(Throttled {
                scope,
                retry_after: Duration::from_millis(left),
            });
        }
        Ok(Attempt {
            throttle: self.clone(),
            account_key,
            client_key,
        })
    }

    /// One Redis round trip; `None` when Redis was unavailable (counted, and logged when it
    /// was tried): the caller then fails open.
    async fn run<T, F, Fut>(&self, op: &str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        match self.inner.redis.run(f).await {
            Ok(v) => Some(v),
            Err(unavailable) => {
                metrics::counter!(ERRORS_METRIC).increment(1);
                if let Unavailable::Failed(error) = unavailable {
                    tracing::warn!(op, %error, "redis unavailable; login not throttled (fail open)");
                }
                None
            }
        }
    }
}

impl Attempt {
    /// The password was right: the account's failures are forgotten.
    pub async fn succeeded(self) {
        let key = &self.account_key;
        self.throttle
            .run("reset", |mut c| async move {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await
            })
            .await;
    }

    /// The credentials were wrong: the failure counts against the client too (it already
    /// counted against the account when the attempt began).
    pub async fn failed(self) {
        let Some(key) = &self.client_key else { return };
        let window_ms = self.throttle.inner.config.window.as_millis() as u64;
        let script = &self.throttle.inner.failed;
        self.throttle
            .run("fail", |mut c| async move {
                script
                    .key(key)
                    .arg(window_ms)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_proxies_are_trusted() {
        let peer = Some("10.0.0.5".parse().unwrap());
        let h = xff(&["203.0.113.9"]);
        assert_eq!(client_ip(peer, &h, 0), peer);
        assert_eq!(client_ip(peer, &h, 1), Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn the_entry_written_by_the_outermost_trusted_proxy_is_used() {
        let peer = Some("10.0.0.5".parse().unwrap());
        // The client forged the first entry; the two trusted proxies wrote the last two.
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.0.0.9:4431"]);
        assert_eq!(client_ip(peer, &h, 1), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(
            client_ip(peer, &h, 2),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(client_ip(peer, &xff(&["x"]), 2), peer, "too few entries");
        assert_eq!(
            client_ip(peer, &xff(&["junk"]), 1),
            peer,
            "unparsable entry"
        );
        assert_eq!(
            client_ip(peer, &xff(&["[2001:db8::1]:443"]), 1),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = client_bucket("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_bucket("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, client_bucket("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            client_bucket("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = |ms| Throttled {
            scope: Scope::Account,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(t(0).retry_after_secs(), 1);
        assert_eq!(t(1).retry_after_secs(), 1);
        assert_eq!(t(1000).retry_after_secs(), 1);
        assert_eq!(t(1001).retry_after_secs(), 2);
    }
}
