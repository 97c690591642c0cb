//! The test environment: the shared services' addresses, one isolated
//! [`TestEnv`] per test (database, namespace, working directory, SMTP sink)
//! and what it can tell about them (queues, emails, rows).

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use amiquip::{Connection, QueueDeleteOptions};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::PgConnection;
use ordctl::config::{Settings, SettingsArgs};
use ordctl::messaging::topology::{QueueType, Topology};
use serde_json::Value;
use url::Url;

use super::*;

/// The shared PostgreSQL server (trust auth); each test gets its own database.
pub const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// The shared RabbitMQ broker; each test gets its own namespace on it.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The shared Redis; each test's keys start with its namespace.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// A broker URL nothing listens on: "RabbitMQ is down".
pub const DOWN_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
/// A Redis URL nothing listens on: "Redis is down".
pub const DOWN_REDIS_URL: &str = "redis://127.0.0.1:1/0";

/// How long one `ordctl` run may take before the test fails instead of hanging.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// The `--exit-when-idle` seconds [`TestEnv::run_worker`] passes: long enough
/// for the worker to connect on a busy machine, short enough to keep tests quick.
pub const WORKER_IDLE_SECS: &str = "2";

/// Variables `ordctl` reads besides the ones [`TestEnv::command`] sets; they
/// are removed so the developer's shell cannot change what a test sees.
const FOREIGN_VARS: &[&str] = &["RUST_LOG", "ORDCTL_QUEUE_TYPE", "MAIL_FROM", "NO_COLOR"];

/// One test's isolated world. Dropping it kills its SMTP sink, drops its
/// database, deletes its queues, exchanges and Redis keys, and removes its
/// working directory.
pub struct TestEnv {
    /// Unique per test: `t_<id>` is the namespace, `ordctl_t_<id>` the database.
    pub id: String,
    /// The settings every `ordctl` run of this env gets (as environment).
    pub settings: Settings,
    dir: tempfile::TempDir,
    smtp: SmtpSink,
}

impl TestEnv {
    /// Creates the env: ids, working directory and a running SMTP sink. The
    /// database does not exist until `ordctl migrate` runs.
    pub fn new() -> Self {
        Self::on_postgres(POSTGRES_SERVER)
    }

    /// Like [`TestEnv::new`], with the database on another PostgreSQL
    /// server (`postgres://user@host:port`), e.g. one a scenario restarts.
    pub fn on_postgres(server: &str) -> Self {
        Self::on(server, AMQP_URL, QueueType::Classic)
    }

    /// The env on PostgreSQL `server` and the RabbitMQ node(s) `amqp_url`,
    /// with queues of `queue_type`.
    pub fn on(server: &str, amqp_url: &str, queue_type: QueueType) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ordctl-test-{id}-"))
            .tempdir()
            .expect("creating a temp dir");
        let smtp = SmtpSink::start(dir.path());
        let args = SettingsArgs {
            database_url: format!("{server}/ordctl_t_{id}"),
            amqp_url: amqp_url.into(),
            redis_url: REDIS_URL.into(),
            smtp_url: Some(smtp.url()),
            mail_dir: dir.path().join("mail"),
            mail_from: "Orders <orders@example.com>".into(),
            namespace: format!("t_{id}"),
            queue_type,
        };
        let settings = Settings::parse(&args).expect("valid test settings");
        Self {
            id,
            settings,
            dir,
            smtp,
        }
    }

    /// The working directory `ordctl` runs in (no stray `.env` is read).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// This env's namespace, e.g. `t_0123456789ab`.
    pub fn namespace(&self) -> &str {
        self.settings.namespace.as_str()
    }

    /// This env's database URL, as a string for `--database-url` variants.
    pub fn database_url(&self) -> String {
        self.settings.database_url.to_string()
    }

    /// The SMTP sink's URL, `smtp://127.0.0.1:PORT`.
    pub fn smtp_url(&self) -> String {
        self.smtp.url()
    }

    /// The namespace's exchanges and queues, as `ordctl` names them.
    pub fn topology(&self) -> Topology {
        ordctl::pipeline::topology(&self.settings)
    }

    /// The notifications work queue, `t_<id>.notifications`.
    pub fn work_queue(&self) -> String {
        self.topology()
            .queue(ordctl::consumers::notifications::SPEC.name)
    }

    /// The notifications dead-letter queue, `t_<id>.notifications.dlq`.
    pub fn dlq(&self) -> String {
        self.topology()
            .dlq(ordctl::consumers::notifications::SPEC.name)
    }

    // ---- running ordctl ----

    /// An `ordctl` command with this env's settings in its environment, run in
    /// the env's directory. Flags in `args` win over the environment, so a
    /// test overrides a setting by passing e.g. `--amqp-url`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ordctl"));
        command
            .args(args)
            .current_dir(self.dir())
            .env("DATABASE_URL", self.database_url())
            .env("AMQP_URL", self.settings.amqp_url.to_env())
            .env("REDIS_URL", self.settings.redis_url.as_str())
            .env("SMTP_URL", self.smtp_url())
            .env("MAIL_DIR", &self.settings.mail_dir)
            .env("ORDCTL_NAMESPACE", self.namespace())
            .stdin(Stdio::null());
        for var in FOREIGN_VARS {
            command.env_remove(var);
        }
        command.env("ORDCTL_QUEUE_TYPE", self.settings.queue_type.as_str());
        command
    }

    /// Runs `ordctl args` to completion (at most [`COMMAND_TIMEOUT`]).
    pub fn ordctl<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Running::spawn(self.command(args)).wait()
    }

    /// Runs `ordctl args` with some environment variables replaced, e.g.
    /// `[("AMQP_URL", DOWN_AMQP_URL)]`.
    pub fn ordctl_with_env<I, S>(&self, args: I, vars: &[(&str, &str)]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Running::spawn(self.command_with_env(args, vars)).wait()
    }

    /// [`TestEnv::command`] with some environment variables replaced.
    pub fn command_with_env<I, S>(&self, args: I, vars: &[(&str, &str)]) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(args);
        command.envs(vars.iter().copied());
        command
    }

    /// Starts `ordctl args` in the background; it is killed if still running
    /// when the returned handle is dropped.
    pub fn spawn<I, S>(&self, args: I) -> Running
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Running::spawn(self.command(args))
    }

    /// Starts `ordctl worker` (plus `extra` flags) in the background.
    pub fn spawn_worker(&self, extra: &[&str]) -> Running {
        self.spawn(["worker"].iter().chain(extra))
    }

    /// Runs `ordctl worker --exit-when-idle 2` (plus `extra`) until it is
    /// idle, and asserts it exited 0.
    pub fn run_worker(&self, extra: &[&str]) -> Run {
        let args = ["worker", "--exit-when-idle", WORKER_IDLE_SECS];
        self.ordctl(args.iter().chain(extra)).assert_code(0)
    }

    /// Runs `ordctl migrate` and `ordctl seed` (10 users), asserting both succeed.
    pub fn migrate_and_seed(&self) {
        self.ordctl(["migrate"]).assert_code(0);
        self.ordctl(["seed", "--users", "10"]).assert_code(0);
    }

    /// Runs `ordctl place-order --user USER --amount AMOUNT --json` (plus
    /// `extra`), asserts exit 0 and returns the printed JSON.
    pub fn place_order(&self, user: i64, amount: &str, extra: &[&str]) -> Value {
        let user = user.to_string();
        let args = ["place-order", "--user", &user, "--amount", amount, "--json"];
        self.ordctl(args.iter().chain(extra)).assert_code(0).json()
    }

    // ---- PostgreSQL ----

    /// A new connection to this env's database.
    pub fn db(&self) -> PgConnection {
        ordctl::db::connect(&self.settings.database_url).expect("connecting to the test database")
    }

    /// The number of rows in `table`.
    pub fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) AS n FROM {table}"))
    }

    /// The bigint column `n` of the one row `sql` returns, e.g.
    /// `SELECT count(DISTINCT user_id) AS n FROM orders`.
    pub fn scalar(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let row: Row = diesel::sql_query(sql)
            .get_result(&mut self.db())
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.n
    }

    // ---- RabbitMQ ----

    fn amqp(&self) -> Connection {
        ordctl::messaging::connect(&self.settings.amqp_url).expect("connecting to RabbitMQ")
    }

    /// Messages ready in `queue` (which must exist).
    pub fn queue_depth(&self, queue: &str) -> u32 {
        self.declare_passive(queue).0
    }

    /// Consumers attached to `queue` (which must exist).
    pub fn queue_consumers(&self, queue: &str) -> u32 {
        self.declare_passive(queue).1
    }

    /// Whether the queue exists: a passive declare succeeds, or is refused
    /// with 405 RESOURCE_LOCKED because another connection holds it
    /// exclusively (a missing queue is 404).
    pub fn queue_exists(&self, queue: &str) -> bool {
        let mut connection = self.amqp();
        let channel = connection.open_channel(None).expect("opening a channel");
        let exists = match channel.queue_declare_passive(queue) {
            Ok(_) => true,
            Err(amiquip::Error::ServerClosedChannel { code: 405, .. }) => true,
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => false,
            Err(error) => panic!("declaring {queue} passively: {error}"),
        };
        let _ = connection.close();
        exists
    }

    fn declare_passive(&self, queue: &str) -> (u32, u32) {
        let mut connection = self.amqp();
        let channel = connection.open_channel(None).expect("opening a channel");
        let declared = channel
            .queue_declare_passive(queue)
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
        let counts = (
            declared.declared_message_count().unwrap_or(0),
            declared.declared_consumer_count().unwrap_or(0),
        );
        let _ = connection.close();
        counts
    }

    /// Takes every message ready in `queue` (basic_get, acked) to inspect it.
    pub fn take_messages(&self, queue: &str) -> Vec<QueuedMessage> {
        let mut connection = self.amqp();
        let channel = connection.open_channel(None).expect("opening a channel");
        let mut messages = Vec::new();
        while let Some(got) = channel
            .basic_get(queue, true)
            .unwrap_or_else(|e| panic!("basic_get from {queue}: {e}"))
        {
            let delivery = got.delivery;
            let properties = &delivery.properties;
            messages.push(QueuedMessage {
                routing_key: delivery.routing_key.clone(),
                message_id: properties.message_id().clone(),
                content_type: properties.content_type().clone(),
                delivery_mode: *properties.delivery_mode(),
                timestamp: *properties.timestamp(),
                body: serde_json::from_slice(&delivery.body).unwrap_or_else(|e| {
                    panic!("message body is not JSON ({e}): {:?}", delivery.body)
                }),
            });
        }
        let _ = connection.close();
        messages
    }

    fn delete_broker_objects(&self) -> anyhow::Result<()> {
        let topology = self.topology();
        let mut connection = self.amqp();
        // A failed delete closes its channel, so each gets a fresh one.
        for queue in topology.queue_names() {
            let channel = connection.open_channel(None)?;
            if channel
                .queue_delete(queue.as_str(), QueueDeleteOptions::default())
                .is_ok()
            {
                let _ = channel.close();
            }
        }
        for exchange in [
            topology.events_exchange(),
            topology.retry_exchange(),
            topology.dead_exchange(),
        ] {
            let channel = connection.open_channel(None)?;
            if channel.exchange_delete(exchange.as_str(), false).is_ok() {
                let _ = channel.close();
            }
        }
        connection.close()?;
        Ok(())
    }

    // ---- Redis ----

    /// A connection to the shared Redis.
    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(REDIS_URL)
            .and_then(|client| client.get_connection())
            .expect("connecting to Redis")
    }

    /// `<namespace>:<suffix>`: one of this env's Redis keys.
    pub fn redis_key(&self, suffix: &str) -> String {
        self.settings.namespace.key(suffix)
    }

    fn delete_redis_keys(&self) -> redis::RedisResult<()> {
        let mut redis = redis::Client::open(REDIS_URL)?.get_connection()?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(self.redis_key("*"))
            .query(&mut redis)?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(keys).query::<()>(&mut redis)?;
        }
        Ok(())
    }

    // ---- SMTP ----

    /// Every email the SMTP sink has accepted, ordered by Message-ID.
    pub fn emails(&self) -> Vec<Email> {
        self.smtp.emails()
    }

    /// Waits until the sink holds at least `n` emails, then returns them all.
    pub fn wait_for_emails(&self, n: usize) -> Vec<Email> {
        wait_until(&format!("{n} emails"), COMMAND_TIMEOUT, || {
            self.emails().len() >= n
        });
        self.emails()
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.smtp.stop();
        if let Err(error) = self.delete_broker_objects() {
            eprintln!("cleanup: deleting the queues of {}: {error:#}", self.id);
        }
        if let Err(error) = ordctl::db::drop_database(&self.settings.database_url) {
            eprintln!("cleanup: dropping the database of {}: {error:#}", self.id);
        }
        if let Err(error) = self.delete_redis_keys() {
            eprintln!("cleanup: deleting the Redis keys of {}: {error}", self.id);
        }
    }
}

/// A message taken from a queue, with the properties every published event carries.
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    /// 2 is persistent.
    pub delivery_mode: Option<u8>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    pub body: Value,
}

/// A free loopback TCP port (another process may take it before it is used).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port()
}

/// `url` with `password` set in it, for tests that check passwords are
/// masked (the test PostgreSQL's trust auth ignores it).
pub fn with_password(url: &str, password: &str) -> String {
    let mut url = Url::parse(url).expect("a valid URL");
    url.set_password(Some(password))
        .expect("a URL that can hold a password");
    url.to_string()
}
