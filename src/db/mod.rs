//! PostgreSQL: connections, the embedded migrations, and one repository
//! module per table. Repository functions take `&mut PgConnection` so the
//! caller owns the transaction.

pub mod delivery_attempts;
pub mod feed;
pub mod lazy;
pub mod models;
pub mod notifications;
pub mod order_items;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod prepared;
pub mod products;
pub mod schema;
pub mod users;

use std::time::Duration;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, NopConnectionCustomizer, Pool};
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use url::Url;

use crate::secrets::redact;
use crate::shutdown::Shutdown;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type PgPool = Pool<ConnectionManager<PgConnection>>;

pub use lazy::LazyDb;

/// Opens one connection; the error names the (masked) URL.
pub fn connect(url: &Url) -> anyhow::Result<PgConnection> {
    PgConnection::establish(url.as_str())
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))
}

/// A pool of up to `size` connections, checked on creation so an
/// unreachable server fails fast with its cause.
pub fn pool(url: &Url, size: u32) -> anyhow::Result<PgPool> {
    pool_with(url, size, Box::new(NopConnectionCustomizer))
}

/// [`pool`] with `customizer` run on each new connection (e.g. a session
/// setting).
pub(crate) fn pool_with(
    url: &Url,
    size: u32,
    customizer: Box<dyn CustomizeConnection<PgConnection, diesel::r2d2::Error>>,
) -> anyhow::Result<PgPool> {
    // No `SELECT 1` per checkout (a round trip per message): a connection
    // broken by a server restart fails its next query, which is retried,
    // and r2d2 drops it as broken.
    Pool::builder()
        .test_on_check_out(false)
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(customizer)
        .build(ConnectionManager::new(url.as_str()))
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))
}

/// Creates the database named in `url` unless it exists, connecting to the
/// server's `postgres` maintenance database. Returns whether it was created.
pub fn create_database_if_missing(url: &Url) -> anyhow::Result<bool> {
    let name = database_name(url)?;
    let mut admin_url = url.clone();
    admin_url.set_path("/postgres");
    let mut conn = connect(&admin_url)?;
    if exists(&mut conn, &name)? {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}")).execute(&mut conn) {
        Ok(_) => Ok(true),
        // Another `migrate` created it a moment ago: that is what we wanted.
        Err(e)
            if e.to_string().contains("already exists")
                || e.to_string().contains("pg_database_datname_index") =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("creating database {quoted}")),
    }
}

/// Whether the database named in `url` exists (asked of the server's
/// `postgres` maintenance database).
pub fn database_exists(url: &Url) -> anyhow::Result<bool> {
    let name = database_name(url)?;
    let mut admin_url = url.clone();
    admin_url.set_path("/postgres");
    exists(&mut connect(&admin_url)?, &name)
}

fn exists(conn: &mut PgConnection, name: &str) -> anyhow::Result<bool> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let found: Found =
        diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(name)
            .get_result(conn)
            .context("looking up the database")?;
    Ok(found.n > 0)
}

/// Drops the database named in `url` if it exists (used by tests and
/// benchmarks that create throw-away databases).
pub fn drop_database(url: &Url) -> anyhow::Result<()> {
    let name = database_name(url)?;
    let mut admin_url = url.clone();
    admin_url.set_path("/postgres");
    let mut conn = connect(&admin_url)?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .execute(&mut conn)
        .with_context(|| format!("dropping database {quoted}"))?;
    Ok(())
}

fn database_name(url: &Url) -> anyhow::Result<String> {
    let name = url.path().trim_start_matches('/');
    anyhow::ensure!(
        !name.is_empty(),
        "the database URL {} names no database",
        redact(url)
    );
    Ok(url::form_urlencoded::parse(format!("n={name}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default())
}

/// Applies pending migrations and returns their names. An advisory lock
/// makes concurrent `ordctl migrate` runs wait for each other instead of
/// racing on the same DDL.
pub fn run_migrations(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    const LOCK_KEY: i64 = 0x6f72_6463_746c; // "ordctl"
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .execute(conn)?;
    let applied = apply_pending(conn).context("applying migrations");
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .execute(conn)?;
    applied
}

fn apply_pending(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    let pending = conn
        .pending_migrations(MIGRATIONS)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut applied = Vec::with_capacity(pending.len());
    for migration in pending {
        let name = migration.name().to_string();
        conn.run_migration(&*migration)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        applied.push(name);
    }
    Ok(applied)
}

/// Lets the current transaction commit without waiting for the disk
/// (`synchronous_commit = off` for this transaction alone), for writes whose
/// loss in a crash is harmless or made good before anyone relies on them.
pub fn commit_lazily(conn: &mut PgConnection) -> QueryResult<()> {
    prepared::prepared("SELECT set_config('synchronous_commit', 'off', true)", ())
        .execute(conn)
        .map(drop)
}

/// [`commit_lazily`], and wakes `channel`'s LISTENers when the transaction
/// commits (a rollback wakes no one), in the same round trip. Sent inside
/// the transaction, the notification holds PostgreSQL's notify lock from
/// just before the commit until it is written — not until it is on disk,
/// since this commit does not wait for the disk (see [`notify`]).
pub fn commit_lazily_waking(conn: &mut PgConnection, channel: &str) -> QueryResult<()> {
    prepared::prepared(
        "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')",
        (prepared::bind::<diesel::sql_types::Text, _>(channel),),
    )
    .execute(conn)
    .map(drop)
}

/// Wakes whoever LISTENs on `channels` after a commit that wrote what they
/// wait for — relays ([`outbox::CHANNEL`]), the live feed's readers
/// ([`feed::CHANNEL`]): one round trip, outside the writer's transaction (a
/// notification sent inside it would serialise the commits of every
/// writer, see migration 000005). Only a wake-up: if it fails, the readers'
/// sweeps find the rows a little later.
pub fn notify(conn: &mut PgConnection, channels: &[&str]) {
    let wake: String = channels.iter().map(|c| format!("NOTIFY {c};")).collect();
    if let Err(error) = conn.batch_execute(&wake) {
        tracing::debug!(%error, "waking LISTENers");
    }
}

/// Waits on a connection that LISTENs: returns when a notification came,
/// `sweep` passed or shutdown was triggered, checking every `poll`.
pub fn wait_for_notification(
    conn: &mut PgConnection,
    sweep: Duration,
    poll: Duration,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + sweep;
    while std::time::Instant::now() < deadline && !shutdown.is_triggered() {
        let mut notified = false;
        for notification in conn.notifications_iter() {
            notification.context("reading notifications")?;
            notified = true;
        }
        if notified {
            return Ok(());
        }
        std::thread::sleep(poll);
    }
    Ok(())
}
