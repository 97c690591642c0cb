//! The `notifications` table: the delivery log, one row per event.

use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid};
use uuid::Uuid;

use super::models::{NewNotification, Notification};
use super::schema::notifications;
use crate::domain::{AttemptOutcome, DeliveryStatus, OrderId};

/// Creates the event's row if needed and locks it until the transaction
/// ends. A second worker handling the same event waits here, then sees
/// `sent` and sends nothing.
pub fn lock_for_delivery(
    conn: &mut PgConnection,
    row: &NewNotification<'_>,
) -> QueryResult<Notification> {
    diesel::insert_into(notifications::table)
        .values(row)
        .on_conflict((notifications::event_id, notifications::consumer))
        .do_update()
        .set(notifications::updated_at.eq(now))
        .returning(Notification::as_returning())
        .get_result(conn)
}

/// Marks the delivery `sent` and records the attempt that sent it, in one
/// statement (one round trip in the delivery transaction, which holds the
/// row lock while the effect runs). Returns the attempt rows written (1).
pub fn mark_sent(
    conn: &mut PgConnection,
    event_id: Uuid,
    consumer: &str,
    attempt: i32,
    reply: &str,
) -> QueryResult<usize> {
    diesel::sql_query(
        "WITH sent AS ( \
             UPDATE notifications SET status = $5, attempts = attempts + 1, \
                 smtp_reply = $3, sent_at = clock_timestamp(), updated_at = now() \
             WHERE event_id = $1 AND consumer = $2 RETURNING order_id) \
         INSERT INTO delivery_attempts (event_id, consumer, order_id, attempt, outcome, smtp_reply) \
         SELECT $1, $2, order_id, $4, $6, $3 FROM sent",
    )
    .bind::<SqlUuid, _>(event_id)
    .bind::<Text, _>(consumer)
    .bind::<Text, _>(reply)
    .bind::<diesel::sql_types::Integer, _>(attempt)
    .bind::<Text, _>(DeliveryStatus::Sent)
    .bind::<Text, _>(AttemptOutcome::Sent)
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
