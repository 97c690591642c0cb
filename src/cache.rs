//! Redis cache-aside for users and products: Redis first, PostgreSQL on a
//! miss, then the entry is cached with a TTL; product entries are also
//! deleted after every stock change. Redis being down is logged and skipped for a
//! few seconds — never a failure, never a slowdown per message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::r2d2::Pool;
use diesel::PgConnection;
use redis::Commands;
use url::Url;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{models::User, products, users};
use crate::domain::{Namespace, Product, ProductId, UserId};
use crate::secrets::redact;

/// How long a cached user lives.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// How long Redis is bypassed after a failure before it is tried again.
const BYPASS_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How long a cached product lives. Short: every stock change deletes the
/// entry after commit, and the TTL bounds what a lost deletion (Redis
/// unreachable at that moment) or a reader racing a writer can leave stale.
pub const PRODUCT_TTL: Duration = Duration::from_secs(30);

/// How long a sent-mark lives: long enough to outlast a PostgreSQL outage,
/// short enough that Redis never holds the whole delivery history.
pub const SENT_MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// Sends the SMTP server accepted, `{ns}:sent:CONSUMER:EVENT` → its reply.
/// Written right after the server's 250 and read before every send, so a
/// send whose `sent` row never committed (PostgreSQL went away) is not
/// sent again when the message is redelivered; the row is written then.
pub struct SentMarks {
    redis: RedisCache,
}

impl SentMarks {
    /// Builds the store without connecting: Redis may come up later.
    pub fn new(redis_url: &Url, namespace: Namespace, pool_size: u32) -> anyhow::Result<Self> {
        Ok(Self {
            redis: RedisCache::new(redis_url, namespace, pool_size, SENT_MARK_TTL)?,
        })
    }

    pub fn key(&self, consumer: &str, event_id: uuid::Uuid) -> String {
        self.redis
            .namespace
            .key(&format!("sent:{consumer}:{event_id}"))
    }

    /// The replies the server gave when these events were sent, for those
    /// that were: one per event, in order, read in one round trip.
    pub fn get_many(&self, consumer: &str, event_ids: &[uuid::Uuid]) -> Vec<Option<String>> {
        let keys: Vec<String> = event_ids
            .iter()
            .map(|&event_id| self.key(consumer, event_id))
            .collect();
        self.redis.get_many(&keys)
    }

    /// Remembers that the server accepted this event's email. Redis being
    /// down only widens the duplicate window back to what it was.
    pub fn set(&self, consumer: &str, event_id: uuid::Uuid, reply: &str) {
        self.redis.set(&self.key(consumer, event_id), &reply);
    }
}

/// Users by id, `{ns}:user:ID`.
pub struct UserCache {
    redis: RedisCache,
}

impl UserCache {
    /// Builds the cache without connecting: Redis may come up later.
    pub fn new(redis_url: &Url, namespace: Namespace, pool_size: u32) -> anyhow::Result<Self> {
        Ok(Self {
            redis: RedisCache::new(redis_url, namespace, pool_size, DEFAULT_TTL)?,
        })
    }

    pub fn key(&self, user_id: UserId) -> String {
        self.redis.namespace.key(&format!("user:{user_id}"))
    }

    /// The user, from Redis when cached, else from PostgreSQL (then cached).
    pub fn user(
        &self,
        conn: &mut PgConnection,
        user_id: UserId,
    ) -> diesel::QueryResult<Option<User>> {
        let key = self.key(user_id);
        if let Some(user) = self.redis.get::<User>(&key) {
            return Ok(Some(user));
        }
        let user = users::find(conn, user_id)?;
        if let Some(user) = &user {
            self.redis.set(&key, user);
        }
        Ok(user)
    }
}

/// Products by id, `{ns}:product:ID`, as `GET /products/{id}` serves them.
/// Whoever changes a product's stock calls [`ProductCache::invalidate`]
/// after the commit.
pub struct ProductCache {
    redis: RedisCache,
}

impl ProductCache {
    /// Builds the cache without connecting: Redis may come up later.
    pub fn new(redis_url: &Url, namespace: Namespace, pool_size: u32) -> anyhow::Result<Self> {
        Ok(Self {
            redis: RedisCache::new(redis_url, namespace, pool_size, PRODUCT_TTL)?,
        })
    }

    pub fn key(&self, id: ProductId) -> String {
        self.redis.namespace.key(&format!("product:{id}"))
    }

    /// The product, from Redis when cached, else from PostgreSQL (then
    /// cached). `None` if there is no such product.
    pub fn product(
        &self,
        conn: &mut PgConnection,
        id: ProductId,
    ) -> anyhow::Result<Option<Product>> {
        let key = self.key(id);
        if let Some(product) = self.redis.get::<Product>(&key) {
            return Ok(Some(product));
        }
        let Some(row) = products::find(conn, id)? else {
            return Ok(None);
        };
        let product = Product::try_from(row)?;
        self.redis.set(&key, &product);
        Ok(Some(product))
    }

    /// Drops the products' entries, so the next read sees the committed
    /// stock. Redis being down is logged, not an error.
    pub fn invalidate(&self, ids: &[ProductId]) {
        if ids.is_empty() {
            return;
        }
        let keys: Vec<String> = ids.iter().map(|&id| self.key(id)).collect();
        self.redis.delete(&keys);
    }
}

/// Redis with JSON values under one TTL, bypassed for a while after a
/// failure.
struct RedisCache {
    redis: Pool<redis::Client>,
    /// For a fresh connection when a pooled one turns out broken.
    client: redis::Client,
    redis_url: String,
    namespace: Namespace,
    ttl: Duration,
    bypass_until: Mutex<Option<Instant>>,
}

impl RedisCache {
    fn new(
        redis_url: &Url,
        namespace: Namespace,
        pool_size: u32,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url.as_str())?;
        // No PING per checkout (a round trip per command): a connection a
        // Redis restart broke fails its command, which [`RedisCache::call`]
        // then runs once more on a fresh connection.
        let redis = Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_millis(500))
            .build_unchecked(client.clone());
        Ok(Self {
            redis,
            client,
            redis_url: redact(redis_url),
            namespace,
            ttl,
            bypass_until: Mutex::new(None),
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let cached = self
            .call(|redis| redis.get::<_, Option<String>>(key))
            .flatten()?;
        parse(key, &cached)
    }

    /// [`RedisCache::get`] for several keys in one round trip (MGET): one
    /// entry per key, in order.
    fn get_many<T: DeserializeOwned>(&self, keys: &[String]) -> Vec<Option<T>> {
        let cached = match keys {
            [] => None,
            _ => self.call(|redis| {
                redis::cmd("MGET")
                    .arg(keys)
                    .query::<Vec<Option<String>>>(redis)
            }),
        };
        match cached {
            Some(values) if values.len() == keys.len() => keys
                .iter()
                .zip(values)
                .map(|(key, value)| parse(key, &value?))
                .collect(),
            _ => keys.iter().map(|_| None).collect(),
        }
    }

    fn set(&self, key: &str, value: &impl Serialize) {
        let json = serde_json::to_string(value).expect("a cache entry serializes");
        self.call(|redis| redis.set_ex::<_, _, ()>(key, &json, self.ttl.as_secs()));
    }

    /// While Redis is down nothing cached can be read either; an entry a
    /// failed deletion leaves behind expires within the TTL.
    fn delete(&self, keys: &[String]) {
        self.call(|redis| redis.del::<_, ()>(keys));
    }

    /// Runs one Redis command (idempotent: it may run twice); on failure
    /// logs, bypasses Redis for a while and returns `None`. A pooled
    /// connection that fails as a broken connection does (Redis restarted
    /// since it was opened) is dropped and the command runs once more on a
    /// fresh one: only a failure there is an outage.
    fn call<T>(
        &self,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let mut bypass = self.bypass_until.lock().expect("cache lock");
        if bypass.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        *bypass = None;
        drop(bypass);
        let result = match self.redis.get() {
            Ok(mut connection) => match command(&mut connection) {
                Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                    drop(connection);
                    self.client
                        .get_connection_with_timeout(Duration::from_millis(500))
                        .and_then(|mut fresh| command(&mut fresh))
                }
                result => result,
            }
            .map_err(anyhow::Error::from),
            Err(error) => Err(anyhow::Error::from(error)),
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(
                    "Redis at {} unavailable, reading from PostgreSQL: {error:#}",
                    self.redis_url
                );
                *self.bypass_until.lock().expect("cache lock") =
                    Some(Instant::now() + BYPASS_AFTER_FAILURE);
                None
            }
        }
    }
}

/// A cached JSON value; a malformed one is logged and ignored.
fn parse<T: DeserializeOwned>(key: &str, cached: &str) -> Option<T> {
    match serde_json::from_str(cached) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::warn!("ignoring malformed cache entry {key}: {error}");
            None
        }
    }
}
