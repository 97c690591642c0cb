//! The fleet-wide send rate (`worker --max-send-rate N`): however many
//! workers a namespace runs, on however many hosts, together they send at
//! most N emails a second, as an email provider allows.
//!
//! Every worker takes its turn from one token bucket in Redis,
//! `{ns}:send-rate`, through an atomic Lua script timed by the Redis
//! server's clock: the script hands out send times (a reservation, so each
//! sender waits exactly its turn instead of polling), and records the
//! worker in `{ns}:send-rate:workers`, a heartbeat set of the workers seen
//! in the last [`HEARTBEAT_WINDOW`]. A provider's throttling reply (SMTP 421
//! or 454) halves the shared rate for [`SLOW_FOR`] (down to a tenth of it),
//! so the fleet slows down instead of burning retries.
//!
//! Redis down: each worker paces itself at N divided by the number of
//! workers it last saw in the heartbeat set — its share — never unlimited.
//! Redis is tried again after [`BYPASS_AFTER_FAILURE`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::r2d2::Pool;
use url::Url;

use crate::domain::Namespace;
use crate::secrets::redact;

/// A worker not heard from for this long no longer counts in the fleet.
pub const HEARTBEAT_WINDOW: Duration = Duration::from_secs(10);
/// How long a throttling reply slows the fleet down.
pub const SLOW_FOR: Duration = Duration::from_secs(30);
/// The lowest the throttled rate goes, as a fraction of N.
const SLOWEST: f64 = 0.1;
/// Throttling replies within this long of the last slow-down are the same
/// episode (several workers hearing it at once): the rate halves once.
const SLOW_DOWN_EVERY: Duration = Duration::from_secs(1);
/// How long Redis is bypassed after a failure before it is tried again.
const BYPASS_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Takes a send time from the bucket: refills it at the (possibly
/// throttled) rate up to its burst, takes one token — going into debt when
/// there is none, which is the queue of reservations — and answers how many
/// microseconds to wait before sending, with the number of workers seen.
///
/// KEYS: bucket hash, workers set. ARGV: rate per second, burst, worker id,
/// heartbeat window (s), key TTL (ms), slow-down period (µs).
const ACQUIRE: &str = r"
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'factor', 'slowed_at')
local factor, slowed_at = tonumber(b[3]) or 1, tonumber(b[4]) or 0
if now - slowed_at > tonumber(ARGV[6]) then factor = 1 end
rate = rate * factor
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000000) - 1
local wait = 0
if tokens < 0 then wait = math.ceil(-tokens * 1000000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now, 'factor', tostring(factor))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local seconds = tonumber(t[1])
redis.call('ZADD', KEYS[2], seconds, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seconds - tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {wait, redis.call('ZCARD', KEYS[2])}
";

/// Halves the rate (once per episode, not below the slowest) and restarts
/// the slow-down period. ARGV: slowest factor, episode (µs), key TTL (ms),
/// slow-down period (µs).
const SLOW_DOWN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = redis.call('HMGET', KEYS[1], 'factor', 'slowed_at')
local factor, slowed_at = tonumber(b[1]) or 1, tonumber(b[2]) or 0
if now - slowed_at > tonumber(ARGV[4]) then factor = 1 end
if now - slowed_at > tonumber(ARGV[2]) then
  factor = math.max(tonumber(ARGV[1]), factor / 2)
  redis.call('HSET', KEYS[1], 'factor', tostring(factor), 'slowed_at', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return tostring(factor)
";

/// The fleet-wide limit, shared through Redis; see the module docs.
pub struct SendRate {
    per_second: f64,
    redis: Pool<redis::Client>,
    redis_url: String,
    bucket: String,
    workers: String,
    worker: String,
    acquire: redis::Script,
    slow_down: redis::Script,
    local: Mutex<Local>,
}

/// What a worker keeps for when Redis is down.
struct Local {
    /// Workers in the heartbeat set at the last successful read.
    workers_seen: Option<u64>,
    /// The next free send time of the local pacing.
    next: Instant,
    bypass_until: Option<Instant>,
    /// The shared rate's factor after this worker's last slow-down.
    factor: Option<String>,
}

impl SendRate {
    /// `per_second` emails a second across every worker of `namespace`.
    /// Connects lazily: Redis may come up later.
    pub fn new(redis_url: &Url, namespace: &Namespace, per_second: f64) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url.as_str())?;
        let redis = Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(500))
            .build_unchecked(client);
        Ok(Self {
            per_second,
            redis,
            redis_url: redact(redis_url),
            bucket: namespace.key("send-rate"),
            workers: namespace.key("send-rate:workers"),
            worker: uuid::Uuid::new_v4().to_string(),
            acquire: redis::Script::new(ACQUIRE),
            slow_down: redis::Script::new(SLOW_DOWN),
            local: Mutex::new(Local {
                workers_seen: None,
                next: Instant::now(),
                bypass_until: None,
                factor: None,
            }),
        })
    }

    /// Waits until this send's turn comes.
    pub fn acquire(&self) {
        let wait = match self.shared_turn() {
            Some(wait) => wait,
            None => self.local_turn(),
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// The provider answered with a throttling reply: slow the fleet down.
    pub fn throttled(&self) {
        let factor = self.redis_call(|redis| {
            self.slow_down
                .key(&self.bucket)
                .arg(SLOWEST)
                .arg(SLOW_DOWN_EVERY.as_micros() as u64)
                .arg(key_ttl_ms())
                .arg(SLOW_FOR.as_micros() as u64)
                .invoke::<String>(redis)
        });
        match factor {
            Some(factor) => {
                // Said once per slow-down, not once per throttled send.
                let mut local = self.local.lock().expect("send rate lock");
                if local.factor.as_deref() != Some(factor.as_str()) {
                    tracing::warn!(
                        "the SMTP server throttles: the fleet's send rate is now {factor} × {}/s for {}s",
                        self.per_second,
                        SLOW_FOR.as_secs()
                    );
                    local.factor = Some(factor);
                }
            }
            None => {
                // No Redis: this worker alone slows down, by pushing its
                // own next send time out by a second's share.
                let mut local = self.local.lock().expect("send rate lock");
                local.next = local.next.max(Instant::now()) + Duration::from_secs(1);
            }
        }
    }

    /// The wait Redis gives this send, or `None` if Redis is unavailable.
    fn shared_turn(&self) -> Option<Duration> {
        let (wait_micros, workers) = self.redis_call(|redis| {
            self.acquire
                .key(&self.bucket)
                .key(&self.workers)
                .arg(self.per_second)
                .arg(burst(self.per_second))
                .arg(&self.worker)
                .arg(HEARTBEAT_WINDOW.as_secs())
                .arg(key_ttl_ms())
                .arg(SLOW_FOR.as_micros() as u64)
                .invoke::<(u64, u64)>(redis)
        })?;
        self.local.lock().expect("send rate lock").workers_seen = Some(workers);
        Some(Duration::from_micros(wait_micros))
    }

    /// This worker's share of the rate, paced locally.
    fn local_turn(&self) -> Duration {
        let mut local = self.local.lock().expect("send rate lock");
        let interval =
            Duration::from_secs_f64(1.0 / fallback_rate(self.per_second, local.workers_seen));
        let now = Instant::now();
        let turn = local.next.max(now);
        local.next = turn + interval;
        turn - now
    }

    /// Runs one Redis call; on failure logs, bypasses Redis for a while and
    /// returns `None`.
    fn redis_call<T>(
        &self,
        call: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        {
            let mut local = self.local.lock().expect("send rate lock");
            if local
                .bypass_until
                .is_some_and(|until| Instant::now() < until)
            {
                return None;
            }
            local.bypass_until = None;
        }
        let result = match self.redis.get() {
            Ok(mut connection) => call(&mut connection).map_err(anyhow::Error::from),
            Err(error) => Err(anyhow::Error::from(error)),
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                let mut local = self.local.lock().expect("send rate lock");
                tracing::warn!(
                    "Redis at {} unavailable: sending at this worker's share of the fleet's rate, {:.2}/s: {error:#}",
                    self.redis_url,
                    fallback_rate(self.per_second, local.workers_seen)
                );
                local.bypass_until = Some(Instant::now() + BYPASS_AFTER_FAILURE);
                None
            }
        }
    }
}

/// A worker's share of `per_second` while Redis is down: divided among the
/// workers it last saw (itself at least; itself alone if it never saw the
/// set).
pub fn fallback_rate(per_second: f64, workers_seen: Option<u64>) -> f64 {
    per_second / workers_seen.unwrap_or(1).max(1) as f64
}

/// Sends the bucket lets through at once after a quiet spell: a tenth of a
/// second's worth, at least one, so the rate holds over any window longer
/// than that.
fn burst(per_second: f64) -> f64 {
    (per_second / 10.0).max(1.0)
}

/// The bucket and heartbeat keys outlive a quiet fleet by a minute, then
/// Redis drops them.
fn key_ttl_ms() -> u64 {
    (SLOW_FOR + Duration::from_secs(30)).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_redis_each_worker_takes_its_share_of_the_last_fleet_it_saw() {
        assert_eq!(fallback_rate(50.0, Some(3)), 50.0 / 3.0);
        assert_eq!(fallback_rate(50.0, Some(1)), 50.0);
        // A set read as empty still counts this worker.
        assert_eq!(fallback_rate(50.0, Some(0)), 50.0);
        // Never read: this worker alone, never unlimited.
        assert_eq!(fallback_rate(12.0, None), 12.0);
        assert!(fallback_rate(0.5, Some(1000)) > 0.0);
    }

    #[test]
    fn local_pacing_spaces_sends_by_the_share() {
        let rate = SendRate::new(
            &Url::parse("redis://127.0.0.1:1/0").unwrap(),
            &Namespace::parse("t_pacing").unwrap(),
            40.0,
        )
        .unwrap();
        rate.local.lock().unwrap().workers_seen = Some(4);
        // 10/s each: the fifth send of a burst waits about 0.4 s.
        let waits: Vec<Duration> = (0..5).map(|_| rate.local_turn()).collect();
        assert!(waits[0] < Duration::from_millis(5), "{waits:?}");
        let fifth = waits[4].as_secs_f64();
        assert!((0.38..=0.41).contains(&fifth), "{waits:?}");
    }

    #[test]
    fn the_burst_is_a_tenth_of_a_second_and_at_least_one() {
        assert_eq!(burst(50.0), 5.0);
        assert_eq!(burst(2.0), 1.0);
    }
}
