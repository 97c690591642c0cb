//! `ordctl purge`: removes a namespace's queues, exchanges and Redis keys
//! together (and, when asked, its database), so a demo that is reset and
//! reuses order ids never receives the old run's events.

use amiquip::{Channel, Connection, QueueDeleteOptions};
use anyhow::Context;
use redis::Commands;
use serde::Serialize;

use crate::config::Settings;
use crate::db;
use crate::error::Refused;
use crate::messaging::{self, topology::Topology};

/// What a purge removed, or would remove with `--dry-run`.
#[derive(Debug, Serialize)]
pub struct Purged {
    pub namespace: String,
    pub dry_run: bool,
    /// The queues that existed, with the messages they held.
    pub queues: Vec<PurgedQueue>,
    pub exchanges: Vec<String>,
    pub redis_keys: u64,
    /// The database dropped (only with `--database`), if it existed.
    pub database: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PurgedQueue {
    pub name: String,
    pub messages: u64,
}

/// Removes (or with `dry_run` only lists) the namespace's broker objects,
/// Redis keys and, with `database`, its database. Refused, with nothing
/// removed, while any consumer is attached to one of its queues: a running
/// worker would declare them again at once.
pub fn purge(
    settings: &Settings,
    topology: &Topology,
    database: bool,
    dry_run: bool,
) -> anyhow::Result<Purged> {
    let mut connection = messaging::connect(&settings.amqp_url)?;
    let mut queues = Vec::new();
    let mut busy = Vec::new();
    for name in topology.queue_names() {
        if let Some((messages, consumers)) = counts(&mut connection, &name)? {
            if consumers > 0 {
                busy.push(format!("{name} ({consumers})"));
            }
            queues.push(PurgedQueue { name, messages });
        }
    }
    if !busy.is_empty() {
        let _ = connection.close();
        return Err(Refused::new(format!(
            "consumers are attached to {}: stop the namespace's workers first",
            busy.join(", ")
        ))
        .into());
    }
    let mut exchanges = Vec::new();
    for name in [
        topology.events_exchange(),
        topology.retry_exchange(),
        topology.dead_exchange(),
    ] {
        if exists(&mut connection, |channel| {
            Ok(channel.exchange_declare_passive(name.as_str()).map(drop)?)
        })? {
            exchanges.push(name);
        }
    }
    if !dry_run {
        let channel = connection.open_channel(None)?;
        for queue in &queues {
            channel
                .queue_delete(queue.name.as_str(), QueueDeleteOptions::default())
                .with_context(|| format!("deleting queue {}", queue.name))?;
        }
        for exchange in &exchanges {
            channel
                .exchange_delete(exchange.as_str(), false)
                .with_context(|| format!("deleting exchange {exchange}"))?;
        }
        let _ = channel.close();
    }
    let _ = connection.close();

    let redis_keys = redis_keys(settings, dry_run)?;
    let database = if database {
        drop_database(settings, dry_run)?
    } else {
        None
    };
    Ok(Purged {
        namespace: settings.namespace.to_string(),
        dry_run,
        queues,
        exchanges,
        redis_keys,
        database,
    })
}

/// Messages and consumers of `queue`, or `None` if it does not exist.
fn counts(connection: &mut Connection, queue: &str) -> anyhow::Result<Option<(u64, u64)>> {
    let mut found = None;
    exists(connection, |channel| {
        found = Some(messaging::queue_counts(channel, queue)?);
        Ok(())
    })?;
    Ok(found)
}

/// Runs a passive declare on a channel of its own (a missing object closes
/// the channel it was asked on); `false` when the object does not exist.
fn exists(
    connection: &mut Connection,
    declare: impl FnOnce(&Channel) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let channel = connection
        .open_channel(None)
        .context("opening a RabbitMQ channel")?;
    match declare(&channel) {
        Ok(()) => {
            let _ = channel.close();
            Ok(true)
        }
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

fn is_not_found(error: &anyhow::Error) -> bool {
    matches!(crate::messaging::closed_by_server(error), Some((404, _)))
}

/// Deletes (or counts) the `{ns}:*` keys, found with SCAN, never KEYS: a
/// shared Redis must not stall for us.
fn redis_keys(settings: &Settings, dry_run: bool) -> anyhow::Result<u64> {
    let shown = crate::secrets::redact(&settings.redis_url);
    let mut redis = redis::Client::open(settings.redis_url.as_str())
        .and_then(|client| client.get_connection())
        .with_context(|| format!("connecting to Redis at {shown}"))?;
    let pattern = settings.namespace.key("*");
    let keys: Vec<String> = redis
        .scan_match::<_, String>(&pattern)
        .context("listing the namespace's Redis keys")?
        .collect();
    if !dry_run {
        for chunk in keys.chunks(500) {
            redis
                .del::<_, ()>(chunk)
                .context("deleting the namespace's Redis keys")?;
        }
    }
    Ok(keys.len() as u64)
}

/// The database's name if it exists; dropped unless `dry_run`.
fn drop_database(settings: &Settings, dry_run: bool) -> anyhow::Result<Option<String>> {
    let name = settings
        .database_url
        .path()
        .trim_start_matches('/')
        .to_string();
    if !db::database_exists(&settings.database_url)? {
        return Ok(None);
    }
    if !dry_run {
        db::drop_database(&settings.database_url)?;
    }
    Ok(Some(name))
}
