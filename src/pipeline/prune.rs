//! `ordctl prune`: deletes delivered history older than a cutoff. An event
//! goes as a whole — its published outbox row, its `sent` delivery-log rows
//! and their attempts — and only once every consumer its routing key has
//! (per the registry) delivered it. Anything pending, retrying or dead is
//! never touched, nor is an event a consumer has not delivered yet: that
//! is what `reconcile` looks for.
//!
//! The live feed behind `GET /events` (the `feed` table) is a copy of the
//! events for watching, so its rows go by age alone. A client that comes
//! back with a cursor from before the cutoff resumes at the oldest event
//! kept.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use serde::Serialize;

use crate::consumers;
use crate::db::feed;
use crate::domain::DeliveryStatus;

/// What a prune deleted, or would delete with `--dry-run`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub dry_run: bool,
    /// Events whose whole history went.
    pub events: i64,
    pub outbox: i64,
    pub deliveries: i64,
    pub attempts: i64,
    /// Rows of the live event feed.
    pub feed: i64,
}

/// Every (routing key, consumer) pair the registry subscribes.
pub fn expected_deliveries() -> (Vec<String>, Vec<String>) {
    consumers::REGISTRY
        .iter()
        .flat_map(|consumer| {
            consumer
                .spec
                .routing_keys
                .iter()
                .map(|key| (key.to_string(), consumer.spec.name.to_string()))
        })
        .unzip()
}

/// Deletes (or counts) the history of events delivered before `cutoff`,
/// and the feed's rows from before it.
pub fn prune(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<Pruned> {
    let (keys, names) = expected_deliveries();
    conn.transaction(|conn| {
        // The events that may go: published before the cutoff, every
        // expected consumer has a `sent` row, none of their rows is in any
        // other state or was touched since the cutoff.
        diesel::sql_query(
            "CREATE TEMPORARY TABLE prunable ON COMMIT DROP AS
             SELECT o.id, o.event_id FROM outbox o
             WHERE o.published_at IS NOT NULL AND o.published_at < $1
               AND NOT EXISTS (
                 SELECT 1 FROM unnest($2::text[], $3::text[]) AS e(routing_key, consumer)
                 WHERE e.routing_key = o.routing_key
                   AND NOT EXISTS (
                     SELECT 1 FROM notifications n
                     WHERE n.event_id = o.event_id AND n.consumer = e.consumer
                       AND n.status = $4))
               AND NOT EXISTS (
                 SELECT 1 FROM notifications n
                 WHERE n.event_id = o.event_id
                   AND (n.status <> $4 OR n.updated_at >= $1))",
        )
        .bind::<Timestamptz, _>(cutoff)
        .bind::<Array<Text>, _>(&keys)
        .bind::<Array<Text>, _>(&names)
        .bind::<Text, _>(DeliveryStatus::Sent)
        .execute(conn)?;
        let mut pruned = Pruned {
            dry_run,
            events: count(conn, "SELECT count(*) AS n FROM prunable")?,
            ..Pruned::default()
        };
        let statements = [
            (
                "delivery_attempts a",
                "a.event_id IN (SELECT event_id FROM prunable)",
            ),
            (
                "notifications n",
                "n.event_id IN (SELECT event_id FROM prunable)",
            ),
            ("outbox o", "o.id IN (SELECT id FROM prunable)"),
        ];
        let mut counts = [0; 3];
        for ((table, condition), counted) in statements.iter().zip(&mut counts) {
            *counted = if dry_run {
                count(
                    conn,
                    &format!("SELECT count(*) AS n FROM {table} WHERE {condition}"),
                )?
            } else {
                diesel::sql_query(format!("DELETE FROM {table} WHERE {condition}")).execute(conn)?
                    as i64
            };
        }
        [pruned.attempts, pruned.deliveries, pruned.outbox] = counts;
        pruned.feed = if dry_run {
            feed::count_older_than(conn, cutoff)?
        } else {
            feed::delete_older_than(conn, cutoff)?
        };
        Ok(pruned)
    })
}

fn count(conn: &mut PgConnection, sql: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .map(|row| row.n)
}
