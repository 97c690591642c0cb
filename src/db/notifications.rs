//! The `notifications` table: the delivery log, one row per event.

use diesel::prelude::*;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::models::{NewNotification, Notification};
use super::prepared::{bind, planned_each_time, prepared};
use super::schema::notifications;
use crate::domain::{AttemptOutcome, DeliveryStatus, OrderId};

/// Creates the events' rows if needed and locks them until the
/// transaction ends; returns each event's status. A second worker handling
/// one of the events waits here, then sees `sent` and sends nothing. The
/// rows are locked in event-id order, so two batches never deadlock.
pub fn lock_for_delivery(
    conn: &mut PgConnection,
    rows: &[NewNotification<'_>],
) -> QueryResult<HashMap<Uuid, DeliveryStatus>> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = SqlUuid)]
        event_id: Uuid,
        #[diesel(sql_type = Text)]
        status: DeliveryStatus,
    }
    let mut rows = rows.to_vec();
    rows.sort_by_key(|row| row.event_id);
    let locked: Vec<Locked> = prepared(
        "INSERT INTO notifications (event_id, consumer, order_id, status, message_id) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[]) \
         ON CONFLICT (event_id, consumer) DO UPDATE SET updated_at = now() \
         RETURNING event_id, status",
        (
            bind::<Array<SqlUuid>, _>(rows.iter().map(|row| row.event_id).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(rows.iter().map(|row| row.consumer).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(rows.iter().map(|row| row.order_id).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(rows.iter().map(|row| row.status).collect::<Vec<_>>()),
            bind::<Array<Nullable<Text>>, _>(
                rows.iter().map(|row| row.message_id).collect::<Vec<_>>(),
            ),
        ),
    )
    .load(conn)?;
    Ok(locked
        .into_iter()
        .map(|row| (row.event_id, row.status))
        .collect())
}

/// A delivery whose effect happened, to be marked `sent`.
#[derive(Clone, Debug)]
pub struct Sent {
    pub event_id: Uuid,
    pub attempt: i32,
    /// What happened: the SMTP server's reply, a payment.
    pub reply: String,
    /// When: right after the SMTP server's 250, for an email.
    pub at: DateTime<Utc>,
}

/// Marks one consumer's deliveries `sent` and records the attempts that
/// sent them, in one statement (one round trip in the delivery
/// transaction, which holds the rows' locks). Returns the attempt rows
/// written.
pub fn mark_sent(conn: &mut PgConnection, consumer: &str, sent: &[Sent]) -> QueryResult<usize> {
    if sent.is_empty() {
        return Ok(0);
    }
    planned_each_time(prepared(
        "WITH done AS ( \
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[]) \
                 AS d(event_id, attempt, reply, at)), \
         sent AS ( \
             UPDATE notifications n SET status = $5, attempts = n.attempts + 1, \
                 smtp_reply = done.reply, sent_at = done.at, updated_at = now() \
             FROM done WHERE n.event_id = done.event_id AND n.consumer = $6 \
             RETURNING n.event_id, n.consumer, n.order_id, done.attempt, done.reply) \
         INSERT INTO delivery_attempts (event_id, consumer, order_id, attempt, outcome, smtp_reply) \
         SELECT event_id, consumer, order_id, attempt, $7, reply FROM sent",
        (
            bind::<Array<SqlUuid>, _>(sent.iter().map(|s| s.event_id).collect::<Vec<_>>()),
            bind::<Array<Integer>, _>(sent.iter().map(|s| s.attempt).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(sent.iter().map(|s| s.reply.as_str()).collect::<Vec<_>>()),
            bind::<Array<Timestamptz>, _>(sent.iter().map(|s| s.at).collect::<Vec<_>>()),
            bind::<Text, _>(DeliveryStatus::Sent),
            bind::<Text, _>(consumer),
            bind::<Text, _>(AttemptOutcome::Sent),
        ),
    ))
    .execute(conn)
}

/// Records a failed attempt (`retrying` or `dead`) outside the delivery
/// transaction, which was rolled back. Never downgrades a `sent` row.
pub fn record_failure(
    conn: &mut PgConnection,
    row: &NewNotification<'_>,
    error: &str,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO notifications (event_id, consumer, order_id, status, message_id, attempts, last_error) \
         VALUES ($1, $2, $3, $4, $5, 1, $6) \
         ON CONFLICT (event_id, consumer) DO UPDATE SET status = EXCLUDED.status, \
             attempts = notifications.attempts + 1, last_error = EXCLUDED.last_error, updated_at = now() \
         WHERE notifications.status <> $7",
    )
    .bind::<SqlUuid, _>(row.event_id)
    .bind::<Text, _>(row.consumer)
    .bind::<BigInt, _>(row.order_id)
    .bind::<Text, _>(row.status)
    .bind::<Nullable<Text>, _>(row.message_id)
    .bind::<Text, _>(error)
    .bind::<Text, _>(DeliveryStatus::Sent)
    .execute(conn)
}

pub fn find(
    conn: &mut PgConnection,
    event_id: Uuid,
    consumer: &str,
) -> QueryResult<Option<Notification>> {
    notifications::table
        .filter(notifications::event_id.eq(event_id))
        .filter(notifications::consumer.eq(consumer))
        .select(Notification::as_select())
        .first(conn)
        .optional()
}

/// Delivery counts by consumer and status, e.g.
/// `[("notifications", Sent, 41), ("payments", Dead, 1)]`.
pub fn count_by_status(conn: &mut PgConnection) -> QueryResult<Vec<(String, DeliveryStatus, i64)>> {
    notifications::table
        .group_by((notifications::consumer, notifications::status))
        .select((
            notifications::consumer,
            notifications::status,
            diesel::dsl::count_star(),
        ))
        .order((notifications::consumer, notifications::status))
        .load(conn)
}

/// One consumer's dead deliveries grouped by their last error, most
/// frequent first.
pub fn dead_by_error(
    conn: &mut PgConnection,
    consumer: &str,
    limit: i64,
) -> QueryResult<Vec<(Option<String>, i64)>> {
    notifications::table
        .filter(notifications::status.eq(DeliveryStatus::Dead))
        .filter(notifications::consumer.eq(consumer))
        .group_by(notifications::last_error)
        .select((notifications::last_error, diesel::dsl::count_star()))
        .order((diesel::dsl::count_star().desc(), notifications::last_error))
        .limit(limit)
        .load(conn)
}

/// Every delivery-log row of an order, all consumers and events, oldest
/// first.
pub fn for_order(conn: &mut PgConnection, order_id: OrderId) -> QueryResult<Vec<Notification>> {
    notifications::table
        .filter(notifications::order_id.eq(order_id))
        .order(notifications::id)
        .select(Notification::as_select())
        .load(conn)
}
