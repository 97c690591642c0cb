//! The `outbox` table: events committed with their order, waiting to be
//! published.

use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, min};
use diesel::prelude::*;

use diesel::sql_types::{Array, BigInt, Jsonb, Text, Uuid as SqlUuid};

use super::models::{NewOutboxRow, OutboxRow};
use super::prepared::{bind, planned_each_time, prepared};
use super::schema::outbox;
use crate::domain::{Event, OrderId};

/// The Postgres channel the insert trigger notifies (see the migration).
pub const CHANNEL: &str = "outbox_inserted";

/// Inserts one row, as a statement diesel prepares once per connection (see
/// [`super::orders::insert`]).
pub fn insert(conn: &mut PgConnection, row: &NewOutboxRow<'_>) -> QueryResult<OutboxRow> {
    diesel::insert_into(outbox::table)
        .values((
            outbox::event_id.eq(row.event_id),
            outbox::order_id.eq(row.order_id),
            outbox::routing_key.eq(row.routing_key),
            outbox::payload.eq(row.payload),
        ))
        .returning(OutboxRow::as_returning())
        .get_result(conn)
}

/// Writes `event` to the outbox, to be published under its routing key;
/// the row's `order_id` is the event's order.
pub fn insert_event(conn: &mut PgConnection, event: &Event) -> QueryResult<OutboxRow> {
    let payload = event.to_json();
    insert(
        conn,
        &NewOutboxRow {
            event_id: event.event_id(),
            order_id: event.order_id(),
            routing_key: event.routing_key(),
            payload: &payload,
        },
    )
}

/// Writes several events to the outbox in one statement, as
/// [`insert_event`] does one.
pub fn insert_events(conn: &mut PgConnection, events: &[Event]) -> QueryResult<usize> {
    prepared(
        "INSERT INTO outbox (event_id, order_id, routing_key, payload) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[])",
        (
            bind::<Array<SqlUuid>, _>(events.iter().map(Event::event_id).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(events.iter().map(Event::order_id).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(events.iter().map(Event::routing_key).collect::<Vec<_>>()),
            bind::<Array<Jsonb>, _>(events.iter().map(Event::to_json).collect::<Vec<_>>()),
        ),
    )
    .execute(conn)
}

/// Claims up to `limit` unpublished rows, oldest first, skipping rows
/// another relay holds: concurrent relays never publish the same row at
/// once. Claimed rows are stamped published in the caller's transaction,
/// which must commit only once the broker confirmed them (see [`claim`]).
pub fn claim_unpublished(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<OutboxRow>> {
    let mut rows: Vec<OutboxRow> = prepared(
        "UPDATE outbox SET published_at = clock_timestamp(), last_error = NULL \
         WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL \
                      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING *",
        (bind::<BigInt, _>(limit),),
    )
    .load(conn)?;
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

/// Claims the rows among `ids` that are still unpublished, waiting for a
/// relay that holds any of them to finish (a row it published is not
/// returned), and stamps them published (`clock_timestamp()`, just before
/// the publish) in the caller's transaction: one write per row, which is
/// also its lock. The caller publishes them and commits only once the
/// broker confirmed them; until then everyone else sees them unpublished,
/// and a rollback leaves them so. Returned in id order.
pub fn claim(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<OutboxRow>> {
    let mut rows: Vec<OutboxRow> = planned_each_time(prepared(
        "UPDATE outbox SET published_at = clock_timestamp(), last_error = NULL \
         WHERE id = ANY($1) AND published_at IS NULL \
         RETURNING *",
        (bind::<Array<BigInt>, _>(ids),),
    ))
    .load(conn)?;
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

/// Subscribes the connection to [`CHANNEL`], so that committed rows wake it.
pub fn listen(conn: &mut PgConnection) -> QueryResult<usize> {
    diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(conn)
}

pub fn record_failure(conn: &mut PgConnection, ids: &[i64], error: &str) -> QueryResult<usize> {
    planned_each_time(
        diesel::update(outbox::table.filter(outbox::id.eq_any(ids))).set((
            outbox::attempts.eq(outbox::attempts + 1),
            outbox::last_error.eq(error),
        )),
    )
    .execute(conn)
}

/// How many rows wait to be published, and since when the oldest one.
pub fn pending(conn: &mut PgConnection) -> QueryResult<(i64, Option<DateTime<Utc>>)> {
    outbox::table
        .filter(outbox::published_at.is_null())
        .select((count_star(), min(outbox::created_at)))
        .first(conn)
}

/// The events of one order (normally one), oldest first.
pub fn for_order(conn: &mut PgConnection, order_id: OrderId) -> QueryResult<Vec<OutboxRow>> {
    outbox::table
        .filter(outbox::order_id.eq(order_id))
        .order(outbox::id)
        .select(OutboxRow::as_select())
        .load(conn)
}
