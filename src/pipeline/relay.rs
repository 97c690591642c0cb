//! The outbox relay: publishes events whose post-commit publish did not
//! happen. Woken by LISTEN/NOTIFY as rows commit, with a periodic sweep as a
//! fallback. Rows are claimed `FOR UPDATE SKIP LOCKED`, so relays running at
//! once never publish the same row; the claim stamps them published in a
//! transaction that commits only after the broker confirmed them.

use std::time::Duration;

use anyhow::Context;
use diesel::{Connection, PgConnection};
use url::Url;

use crate::db::models::OutboxRow;
use crate::db::{self, outbox};
use crate::messaging::publisher::Publisher;
use crate::messaging::topology::Topology;
use crate::messaging::{BrokerBlocked, Brokers, Outgoing};
use crate::reconnect;
use crate::shutdown::{Activity, Shutdown};

/// Rows claimed and published per transaction.
pub const BATCH_SIZE: i64 = 500;
/// How often the relay sweeps without having been notified.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the LISTEN connection is checked for notifications.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Publishes rows the caller claimed ([`outbox::claim`]), waiting for the
/// broker's confirms; the caller's commit then makes their stamp visible.
fn publish_rows(publisher: &mut Publisher, rows: &[OutboxRow]) -> anyhow::Result<()> {
    let messages: Vec<Outgoing> = rows
        .iter()
        .map(|row| {
            let mut message = Outgoing::new(
                row.routing_key.clone(),
                row.event_id.to_string(),
                row.payload.to_string().into_bytes(),
            );
            message.timestamp = row.created_at.timestamp().max(0) as u64;
            message
        })
        .collect();
    publisher.publish_events(&messages)
}

/// Publishes just-committed orders' events, all under one confirm wait.
/// Waits for a relay that holds any of the rows; once it returns `Ok`,
/// every one of them is published (by this call or by that relay), and the
/// live feed's readers were woken for them. On an error the caller wakes
/// the relays and the feed ([`super::place_order::announce`]).
///
/// The claim's commit does not wait for the disk: a stamp lost in a
/// PostgreSQL crash only has the relay publish the event again, which
/// consumers ignore.
pub fn publish_committed(
    conn: &mut PgConnection,
    publisher: &mut Publisher,
    outbox_ids: &[i64],
) -> anyhow::Result<()> {
    conn.transaction(|conn| {
        db::commit_lazily_waking(conn, db::feed::CHANNEL)?;
        let unpublished = outbox::claim(conn, outbox_ids)?;
        if !unpublished.is_empty() {
            publish_rows(publisher, &unpublished)?;
        }
        Ok(())
    })
}

/// Claims and publishes one batch; returns how many rows it published.
pub fn publish_batch(conn: &mut PgConnection, publisher: &mut Publisher) -> anyhow::Result<usize> {
    let mut claimed = Vec::new();
    let result = conn.transaction(|conn| {
        db::commit_lazily(conn)?;
        claimed = outbox::claim_unpublished(conn, BATCH_SIZE)?;
        if !claimed.is_empty() {
            publish_rows(publisher, &claimed)?;
        }
        anyhow::Ok(claimed.len())
    });
    if let Err(error) = &result {
        let ids: Vec<i64> = claimed.iter().map(|row| row.id).collect();
        if !ids.is_empty() {
            let _ = outbox::record_failure(conn, &ids, &format!("{error:#}"));
        }
    }
    result
}

/// Publishes batches until nothing is left.
pub fn drain(
    conn: &mut PgConnection,
    publisher: &mut Publisher,
    shutdown: &Shutdown,
) -> anyhow::Result<usize> {
    let mut total = 0;
    while !shutdown.is_triggered() {
        let published = publish_batch(conn, publisher)?;
        total += published;
        if published < BATCH_SIZE as usize {
            break;
        }
    }
    Ok(total)
}

/// `ordctl relay --once`: drains and returns the number published; any
/// failure is returned to the caller.
pub fn run_once(
    database_url: &Url,
    amqp_url: &Brokers,
    topology: &Topology,
) -> anyhow::Result<usize> {
    let mut conn = db::connect(database_url)?;
    let mut publisher = Publisher::connect(amqp_url, topology)?;
    let published = drain(&mut conn, &mut publisher, &Shutdown::new());
    publisher.close();
    published
}

/// `ordctl relay` (and the worker's relay thread): runs until `shutdown`,
/// reconnecting to PostgreSQL and RabbitMQ with backoff.
pub fn run(
    database_url: &Url,
    amqp_url: &Brokers,
    topology: &Topology,
    shutdown: &Shutdown,
    activity: &Activity,
) {
    reconnect::until_shutdown("relay", shutdown, || {
        session(database_url, amqp_url, topology, shutdown, activity)
    });
}

fn session(
    database_url: &Url,
    amqp_url: &Brokers,
    topology: &Topology,
    shutdown: &Shutdown,
    activity: &Activity,
) -> anyhow::Result<()> {
    let mut conn = db::connect(database_url)?;
    outbox::listen(&mut conn).context("LISTEN")?;
    let mut publisher = Publisher::connect(amqp_url, topology)?;
    while !shutdown.is_triggered() {
        let published = match drain(&mut conn, &mut publisher, shutdown) {
            Ok(published) => published,
            Err(error) => match blocked(&error) {
                Some(blocked) => {
                    // Said once per alarm; reconnecting would only be
                    // blocked again, and the outbox keeps the rows safe.
                    tracing::warn!("relay: {blocked}; publishing resumes when the alarm clears");
                    if !publisher.wait_unblocked(|| shutdown.is_triggered()) {
                        break;
                    }
                    tracing::info!("relay: the broker no longer blocks publishers; resuming");
                    // The old channel still owes confirms for what it sent
                    // before the block: start afresh rather than miscount.
                    publisher.close();
                    publisher = Publisher::connect(amqp_url, topology)?;
                    continue;
                }
                None => return Err(error),
            },
        };
        if published > 0 {
            activity.touch();
            tracing::info!(published, "relayed outbox events");
        }
        db::wait_for_notification(&mut conn, SWEEP_INTERVAL, POLL_INTERVAL, shutdown)?;
    }
    publisher.close();
    Ok(())
}

/// The broker's block, if that is what failed a publish.
pub fn blocked(error: &anyhow::Error) -> Option<&BrokerBlocked> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<BrokerBlocked>())
}
