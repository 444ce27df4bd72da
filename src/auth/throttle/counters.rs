//! The throttle's state: fixed-window counters with limits, reserved atomically, and markers
//! with a lifetime. It lives in Redis, so that replicas share it (one Lua script per
//! operation: a check and its increment cannot be split by a concurrent login); while Redis
//! is down or slow (`REDIS_TIMEOUT_MS`, then bypassed for a second) it lives in this process
//! instead, in a map of bounded size, so that an unavailable Redis never switches the
//! throttle off. The process's map also mirrors what Redis counted here, so that when Redis
//! goes, this replica's counts go on from where they were rather than from zero. Each
//! attempt is settled in the store it was counted in (and in the mirror).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use hashlink::LruCache;

use super::ERRORS_METRIC;
use crate::optional_redis::{OptionalRedis, Unavailable};

/// Counters and markers kept in the process while Redis is unavailable. Each login touches
/// at most four; the least recently used go first, which are never a guesser's live ones
/// unless it outpaces every other client by this many keys.
const LOCAL_CAPACITY: usize = 100_000;

/// KEYS[1]: the marker; KEYS[2..]: the counters. ARGV[1]: window (ms); for counter j
/// (KEYS[j + 1]): ARGV[2j] its limit (-1: none), ARGV[2j + 1] '1' if the marker exempts it.
/// Returns {0, marked, count before this attempt per counter (-1: exempt)}, or, when a
/// counter is at its limit, {j, ms left in its window} and counts nothing.
const RESERVE_SCRIPT: &str = r#"
local marked = redis.call('EXISTS', KEYS[1]) == 1
local function exempt(j) return marked and ARGV[2 * j + 1] == '1' end
for j = 1, #KEYS - 1 do
  local limit = tonumber(ARGV[2 * j])
  if not exempt(j) and limit >= 0
     and tonumber(redis.call('GET', KEYS[j + 1]) or '0') >= limit then
    return {j, redis.call('PTTL', KEYS[j + 1])}
  end
end
local result = {0, marked and 1 or 0}
for j = 1, #KEYS - 1 do
  if exempt(j) then
    result[j + 2] = -1
  else
    result[j + 2] = redis.call('INCR', KEYS[j + 1]) - 1
    if redis.call('PTTL', KEYS[j + 1]) < 0 then
      redis.call('PEXPIRE', KEYS[j + 1], ARGV[1])
    end
  end
end
return result
"#;

/// KEYS: the counters to forget, then those to release (decrement, if still there), then
/// the marker to set. ARGV: how many to forget, how many to release, the marker's lifetime
/// (ms; 0: no marker).
const SETTLE_SCRIPT: &str = r#"
local forget, release = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, forget do redis.call('DEL', KEYS[i]) end
for i = forget + 1, forget + release do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[forget + release + 1], '1', 'PX', ARGV[3])
end
return 0
"#;

/// One counter of a reservation.
pub struct Counter<'a> {
    pub key: &'a str,
    /// At this count the attempt is refused; `None`: counted, never refused.
    pub limit: Option<u32>,
    /// Neither checked nor counted when the reservation's marker exists.
    pub exempt_when_marked: bool,
}

/// What a reservation found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserved {
    /// The attempt is counted: whether the marker exists, and each counter's count before
    /// this attempt (`None`: exempt, not counted).
    Counted {
        marked: bool,
        before: Vec<Option<u64>>,
    },
    /// Counter `index` is at its limit for this long; nothing was counted.
    Full { index: usize, retry_after: Duration },
}

/// Where an attempt was counted, and so where it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Local,
}

/// How an attempt ends in the store.
pub struct Settle<'a> {
    /// Counters deleted.
    pub forget: &'a [&'a str],
    /// Counters given their reservation back.
    pub release: &'a [&'a str],
    /// A marker set, with its lifetime.
    pub mark: Option<(&'a str, Duration)>,
}

pub struct Counters {
    redis: OptionalRedis,
    local: Local,
    reserve: redis::Script,
    settle: redis::Script,
}

impl Counters {
    pub fn new(redis: OptionalRedis) -> Self {
        Self {
            redis,
            local: Local::new(LOCAL_CAPACITY),
            reserve: redis::Script::new(RESERVE_SCRIPT),
            settle: redis::Script::new(SETTLE_SCRIPT),
        }
    }

    /// Checks every counter against its limit and, if none is reached, counts the attempt
    /// on each: in Redis, or in the process when Redis is unavailable.
    pub async fn reserve(
        &self,
        marker: &str,
        counters: &[Counter<'_>],
        window: Duration,
    ) -> (Backend, Reserved) {
        let script = &self.reserve;
        let result = self
            .redis
            .run(|mut c| async move {
                let mut inv = script.key(marker);
                inv.arg(window.as_millis() as u64);
                for counter in counters {
                    inv.key(counter.key)
                        .arg(counter.limit.map_or(-1, i64::from))
                        .arg(i64::from(counter.exempt_when_marked));
                }
                inv.invoke_async::<Vec<i64>>(&mut c).await
            })
            .await;
        match result {
            Ok(reply) => {
                let reserved = from_script(&reply);
                if let Reserved::Counted { before, .. } = &reserved {
                    let counted = counters.iter().zip(before).filter(|(_, n)| n.is_some());
                    let keys: Vec<&str> = counted.map(|(c, _)| c.key).collect();
                    self.local.mirror(&keys, window, Instant::now());
                }
                (Backend::Redis, reserved)
            }
            Err(unavailable) => {
                unavailable_now("reserve", unavailable);
                (
                    Backend::Local,
                    self.local.reserve(marker, counters, window, Instant::now()),
                )
            }
        }
    }

    /// Ends an attempt in the store that counted it. If that was Redis and it has become
    /// unavailable, the attempt stays counted until its window ends (the safe side).
    pub async fn settle(&self, backend: Backend, settle: Settle<'_>) {
        self.local.settle(&settle, Instant::now());
        if backend == Backend::Local {
            return;
        }
        let script = &self.settle;
        let settle = &settle;
        let result = self
            .redis
            .run(|mut c| async move {
                let mut inv = script.prepare_invoke();
                for key in settle.forget.iter().chain(settle.release) {
                    inv.key(*key);
                }
                if let Some((marker, _)) = settle.mark {
                    inv.key(marker);
                }
                let ttl = settle.mark.map_or(0, |(_, ttl)| ttl.as_millis() as u64);
                inv.arg(settle.forget.len())
                    .arg(settle.release.len())
                    .arg(ttl)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(unavailable) = result {
            unavailable_now("settle", unavailable);
        }
    }
}

fn unavailable_now(op: &str, unavailable: Unavailable) {
    metrics::counter!(ERRORS_METRIC).increment(1);
    if let Unavailable::Failed(error) = unavailable {
        tracing::warn!(op, %error, "redis unavailable; logins are throttled in this process");
    }
}

fn from_script(reply: &[i64]) -> Reserved {
    match reply {
        [0, marked, counts @ ..] => Reserved::Counted {
            marked: *marked == 1,
            before: counts.iter().map(|&n| u64::try_from(n).ok()).collect(),
        },
        [index, ttl_ms, ..] => Reserved::Full {
            index: (*index as usize).saturating_sub(1),
            // A counter at its limit has a TTL; -1/-2 (none, or expired just now) mean "now".
            retry_after: Duration::from_millis(u64::try_from(*ttl_ms).unwrap_or(0)),
        },
        _ => Reserved::Full {
            index: 0,
            retry_after: Duration::ZERO,
        },
    }
}

/// A counter, or a marker (its count is 1), until `until`.
struct Entry {
    count: u64,
    until: Instant,
}

/// The same operations as the scripts above, on a map in this process: one lock, held for
/// no longer than the few lookups of one operation, so each is atomic as a script is.
/// A key's (count, end of window), unless it has expired.
fn live(map: &mut LruCache<String, Entry>, key: &str, now: Instant) -> Option<(u64, Instant)> {
    map.get(key)
        .filter(|e| e.until > now)
        .map(|e| (e.count, e.until))
}

/// Adds one to a key's count (a new window if it has none); returns the count before.
fn bump(map: &mut LruCache<String, Entry>, key: &str, window: Duration, now: Instant) -> u64 {
    let (count, until) = live(map, key, now).unwrap_or((0, now + window));
    map.insert(
        key.to_owned(),
        Entry {
            count: count + 1,
            until,
        },
    );
    count
}

struct Local {
    map: Mutex<LruCache<String, Entry>>,
}

impl Local {
    fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Entry>> {
        // A panic elsewhere cannot leave a half-made change: every change is one statement.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reserve(
        &self,
        marker: &str,
        counters: &[Counter<'_>],
        window: Duration,
        now: Instant,
    ) -> Reserved {
        let mut map = self.lock();
        let marked = live(&mut map, marker, now).is_some();
        let exempt = |c: &Counter<'_>| marked && c.exempt_when_marked;
        for (index, counter) in counters.iter().enumerate() {
            let Some(limit) = counter.limit.filter(|_| !exempt(counter)) else {
                continue;
            };
            match live(&mut map, counter.key, now) {
                Some((count, until)) if count >= u64::from(limit) => {
                    return Reserved::Full {
                        index,
                        retry_after: until - now,
                    }
                }
                _ => {}
            }
        }
        let before = counters
            .iter()
            .map(|counter| (!exempt(counter)).then(|| bump(&mut map, counter.key, window, now)))
            .collect();
        Reserved::Counted { marked, before }
    }

    /// Counts what Redis counted, without limits: Redis decided.
    fn mirror(&self, keys: &[&str], window: Duration, now: Instant) {
        let mut map = self.lock();
        for key in keys {
            bump(&mut map, key, window, now);
        }
    }

    fn settle(&self, settle: &Settle<'_>, now: Instant) {
        let mut map = self.lock();
        for key in settle.forget {
            map.remove(*key);
        }
        for key in settle.release {
            if let Some(entry) = map.get_mut(*key).filter(|e| e.until > now && e.count > 0) {
                entry.count -= 1;
            }
        }
        if let Some((marker, ttl)) = settle.mark {
            map.insert(
                marker.to_owned(),
                Entry {
                    count: 1,
                    until: now + ttl,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn counter(key: &str, limit: Option<u32>, exempt_when_marked: bool) -> Counter<'_> {
        Counter {
            key,
            limit,
            exempt_when_marked,
        }
    }

    /// Redis unusable (no valid URL): the attempt is counted in the process and settled
    /// there without a call to Redis; every reservation is one call that could not reach
    /// it, counted in `login_throttle_errors_total`.
    #[test]
    fn without_redis_attempts_are_counted_and_settled_in_the_process() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let redis = OptionalRedis::new("no-redis-here", Duration::from_millis(100), "t");
                let counters = Counters::new(redis);
                let limited = [counter("a", Some(1), false)];
                let (backend, reserved) = counters.reserve("m", &limited, WINDOW).await;
                assert_eq!(backend, Backend::Local);
                assert_eq!(reserved, counted(&[Some(0)], false));
                let (_, full) = counters.reserve("m", &limited, WINDOW).await;
                assert!(matches!(full, Reserved::Full { index: 0, .. }), "{full:?}");
                let forget = Settle {
                    forget: &["a"],
                    release: &[],
                    mark: None,
                };
                counters.settle(Backend::Local, forget).await;
                let (_, again) = counters.reserve("m", &limited, WINDOW).await;
                assert_eq!(again, counted(&[Some(0)], false), "forgotten when settled");
            })
        });
        let text = metrics.render();
        assert!(
            text.lines().any(|l| l == "login_throttle_errors_total 3"),
            "one error per reservation, none for the local settlement:\n{text}"
        );
    }

    fn counted(before: &[Option<u64>], marked: bool) -> Reserved {
        Reserved::Counted {
            marked,
            before: before.to_vec(),
        }
    }

    #[test]
    fn a_limit_refuses_and_counts_nothing_until_its_window_ends() {
        let local = Local::new(100);
        let t0 = Instant::now();
        let cs = [
            counter("pair", Some(2), false),
            counter("acct", None, false),
        ];
        assert_eq!(
            local.reserve("m", &cs, WINDOW, t0),
            counted(&[Some(0), Some(0)], false)
        );
        assert_eq!(
            local.reserve("m", &cs, WINDOW, t0),
            counted(&[Some(1), Some(1)], false)
        );
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            local.reserve("m", &cs, WINDOW, later),
            Reserved::Full {
                index: 0,
                retry_after: Duration::from_secs(40)
            }
        );
        // The refusal counted nothing: the unlimited counter is still at 2.
        let acct = [counter("acct", None, false)];
        assert_eq!(
            local.reserve("m", &acct, WINDOW, later),
            counted(&[Some(2)], false)
        );
        // A fixed window: the counts start again when it ends.
        let next = t0 + WINDOW;
        assert_eq!(
            local.reserve("m", &cs, WINDOW, next),
            counted(&[Some(0), Some(0)], false)
        );
    }

    #[test]
    fn a_marker_exempts_only_the_counters_that_say_so() {
        let local = Local::new(100);
        let now = Instant::now();
        let cs = [
            counter("pair", Some(1), false),
            counter("client", Some(1), true),
        ];
        assert_eq!(
            local.reserve("known", &cs, WINDOW, now),
            counted(&[Some(0), Some(0)], false)
        );
        let other = [
            counter("pair2", Some(1), false),
            counter("client", Some(1), true),
        ];
        assert!(matches!(
            local.reserve("known", &other, WINDOW, now),
            Reserved::Full { index: 1, .. }
        ));
        local.settle(
            &Settle {
                forget: &[],
                release: &[],
                mark: Some(("known", WINDOW)),
            },
            now,
        );
        assert_eq!(
            local.reserve("known", &other, WINDOW, now),
            counted(&[Some(0), None], true)
        );
        // The marker does not lift the limit that does not say so.
        assert!(matches!(
            local.reserve("known", &other, WINDOW, now),
            Reserved::Full { index: 0, .. }
        ));
    }

    #[test]
    fn settling_forgets_releases_and_never_goes_below_zero() {
        let local = Local::new(100);
        let now = Instant::now();
        let cs = [counter("a", Some(5), false), counter("b", Some(5), false)];
        local.reserve("m", &cs, WINDOW, now);
        local.reserve("m", &cs, WINDOW, now);
        let settle = Settle {
            forget: &["a"],
            release: &["b", "b", "b", "missing"],
            mark: None,
        };
        local.settle(&settle, now);
        assert_eq!(
            local.reserve("m", &cs, WINDOW, now),
            counted(&[Some(0), Some(0)], false)
        );
    }

    #[test]
    fn what_redis_counted_is_mirrored_so_a_fallback_goes_on_from_it() {
        let local = Local::new(100);
        let now = Instant::now();
        local.mirror(&["client", "client"], WINDOW, now);
        let cs = [counter("client", Some(3), false)];
        assert_eq!(
            local.reserve("m", &cs, WINDOW, now),
            counted(&[Some(2)], false)
        );
        assert!(matches!(
            local.reserve("m", &cs, WINDOW, now),
            Reserved::Full { index: 0, .. }
        ));
    }

    #[test]
    fn the_map_keeps_at_most_its_capacity() {
        let local = Local::new(3);
        let now = Instant::now();
        for key in ["a", "b", "c", "d"] {
            local.reserve("m", &[counter(key, None, false)], WINDOW, now);
        }
        assert_eq!(local.lock().len(), 3);
        assert!(
            !local.lock().contains_key("a"),
            "the least recently used went first"
        );
    }

    #[test]
    fn script_replies_are_read() {
        assert_eq!(
            from_script(&[0, 1, 3, -1, 7]),
            counted(&[Some(3), None, Some(7)], true)
        );
        assert_eq!(
            from_script(&[2, 1500]),
            Reserved::Full {
                index: 1,
                retry_after: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            from_script(&[1, -2]),
            Reserved::Full {
                index: 0,
                retry_after: Duration::ZERO
            }
        );
    }
}
