//! Redis cache-aside for users: Redis first, PostgreSQL on a miss, then the
//! user is cached with a TTL. Redis being down is logged and skipped for a
//! few seconds — never a failure, never a slowdown per message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::r2d2::Pool;
use diesel::PgConnection;
use redis::Commands;
use url::Url;

use crate::config::redact;
use crate::db::{models::User, users};
use crate::domain::Namespace;

/// How long a cached user lives.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// How long Redis is bypassed after a failure before it is tried again.
const BYPASS_AFTER_FAILURE: Duration = Duration::from_secs(5);

pub struct UserCache {
    redis: Pool<redis::Client>,
    redis_url: String,
    namespace: Namespace,
    ttl: Duration,
    bypass_until: Mutex<Option<Instant>>,
}

impl UserCache {
    /// Builds the cache without connecting: Redis may come up later.
    pub fn new(redis_url: &Url, namespace: Namespace, pool_size: u32) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url.as_str())?;
        let redis = Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(500))
            .build_unchecked(client);
        Ok(Self {
            redis,
            redis_url: redact(redis_url),
            namespace,
            ttl: DEFAULT_TTL,
            bypass_until: Mutex::new(None),
        })
    }

    pub fn key(&self, user_id: i64) -> String {
        self.namespace.key(&format!("user:{user_id}"))
    }

    /// The user, from Redis when cached, else from PostgreSQL (then cached).
    pub fn user(&self, conn: &mut PgConnection, user_id: i64) -> diesel::QueryResult<Option<User>> {
        let key = self.key(user_id);
        if let Some(user) = self
            .redis_call(|redis| redis.get::<_, Option<String>>(&key))
            .flatten()
        {
            match serde_json::from_str::<User>(&user) {
                Ok(user) => return Ok(Some(user)),
                Err(error) => tracing::warn!("ignoring malformed cache entry {key}: {error}"),
            }
        }
        let user = users::find(conn, user_id)?;
        if let Some(user) = &user {
            let json = serde_json::to_string(user).expect("a user serializes");
            self.redis_call(|redis| redis.set_ex::<_, _, ()>(&key, json, self.ttl.as_secs()));
        }
        Ok(user)
    }

    /// Runs one Redis command; on failure logs, bypasses Redis for a while
    /// and returns `None`.
    fn redis_call<T>(
        &self,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let mut bypass = self.bypass_until.lock().expect("cache lock");
        if bypass.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        *bypass = None;
        drop(bypass);
        let result = match self.redis.get() {
            Ok(mut connection) => command(&mut connection).map_err(anyhow::Error::from),
            Err(error) => Err(anyhow::Error::from(error)),
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(
                    "Redis at {} unavailable, reading users from PostgreSQL: {error:#}",
                    self.redis_url
                );
                *self.bypass_until.lock().expect("cache lock") =
                    Some(Instant::now() + BYPASS_AFTER_FAILURE);
                None
            }
        }
    }
}
