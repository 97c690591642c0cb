//! The idempotent-consumer step every consumer shares: the delivery-log row
//! for (event, consumer) is created and locked, the consumer's effect runs,
//! and the row is marked `sent` in the same transaction — so a redelivered,
//! replayed or concurrently delivered event has its effect once.

use anyhow::anyhow;
use anyhow::Context;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::cache::SentMarks;
use crate::db::delivery_attempts::{self, NewAttempt};
use crate::db::models::NewNotification;
use crate::db::{notifications, PgPool};
use crate::domain::{AttemptOutcome, DeliveryStatus, OrderId};
use crate::messaging::consumer::{Disposition, HandleError};

/// Which delivery: one event, as one consumer handles it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub event_id: Uuid,
    pub consumer: &'static str,
    pub order_id: OrderId,
    /// The email's Message-ID, for consumers that send one.
    pub message_id: Option<String>,
    /// 1 for the first attempt, then one more per retry.
    pub attempt: u32,
}

/// What one delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The effect happened; `reply` says how (an SMTP reply, a payment).
    Done { reply: String },
    /// The event had been handled before: nothing happened again.
    AlreadyDone,
}

/// Runs `effect` at most once per (event, consumer). The delivery-log row
/// stays locked while it runs, so a concurrent duplicate waits and then
/// does nothing; the effect's database writes commit with the `sent` mark.
///
/// The commit does not wait for the disk: [`make_durable`] runs before its
/// message is acked (see [`Logged`](super::handler::Logged)), so one flush covers
/// every delivery a slot handled since. The mark is visible to
/// other transactions at once, so a redelivery still finds it `sent`.
pub fn once(
    db: &PgPool,
    delivery: &Delivery,
    effect: impl FnOnce(&mut PgConnection) -> Result<String, HandleError>,
) -> Result<Outcome, HandleError> {
    let mut conn = db
        .get()
        .map_err(|e| HandleError::Transient(anyhow!(e).context("getting a database connection")))?;
    let row = log_row(delivery, DeliveryStatus::Pending);
    conn.transaction(|conn| {
        diesel::sql_query("SET LOCAL synchronous_commit TO OFF")
            .execute(conn)
            .map_err(db_error)?;
        let logged = notifications::lock_for_delivery(conn, &row).map_err(db_error)?;
        if logged.status == DeliveryStatus::Sent {
            tracing::info!(
                order_id = delivery.order_id.0,
                consumer = delivery.consumer,
                "already handled; nothing done"
            );
            record_attempt(conn, delivery, AttemptOutcome::Duplicate, None, None)?;
            return Ok(Outcome::AlreadyDone);
        }
        let reply = effect(conn)?;
        // The `sent` mark and its attempt row in one round trip.
        let attempt = delivery.attempt as i32;
        notifications::mark_sent(conn, delivery.event_id, delivery.consumer, attempt, &reply)
            .map_err(db_error)?;
        Ok(Outcome::Done { reply })
    })
}

/// Waits until every transaction committed so far on this server is on
/// disk: a transaction that takes an id commits with the session's
/// `synchronous_commit = on`, and flushing its commit record flushes the
/// write-ahead log before it, where every earlier commit is.
pub fn make_durable(db: &PgPool) -> anyhow::Result<()> {
    let mut conn = db.get().context("getting a database connection")?;
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_current_xact_id()").execute(conn)?;
        diesel::QueryResult::Ok(())
    })
    .context("flushing the delivery log to disk")?;
    Ok(())
}

/// [`once`] for an effect outside the database — an email — that cannot
/// be rolled back: the SMTP server's acceptance is also kept in Redis
/// ([`SentMarks`]) right after its reply and checked before sending. If
/// PostgreSQL went away between the 250 and the commit, the redelivered
/// message finds the mark, records the earlier send and sends nothing.
/// Only a crash between the 250 and the mark (or Redis down as well)
/// can still send an event twice.
pub fn once_sending(
    db: &PgPool,
    marks: &SentMarks,
    delivery: &Delivery,
    send: impl FnOnce(&mut PgConnection) -> Result<String, HandleError>,
) -> Result<Outcome, HandleError> {
    once(db, delivery, |conn| {
        if let Some(reply) = marks.get(delivery.consumer, delivery.event_id) {
            tracing::info!(
                order_id = delivery.order_id.0,
                consumer = delivery.consumer,
                "sent before its delivery could be recorded; recording it, sending nothing"
            );
            return Ok(reply);
        }
        let reply = send(conn)?;
        marks.set(delivery.consumer, delivery.event_id, &reply);
        Ok(reply)
    })
}

/// Records a failed attempt (`retrying` or `dead`) after the delivery
/// transaction rolled back; never downgrades a `sent` row.
pub fn record_failure(
    db: &PgPool,
    delivery: &Delivery,
    error: &HandleError,
    disposition: Disposition,
) -> anyhow::Result<()> {
    let (status, outcome) = match disposition {
        Disposition::Retrying { .. } => (DeliveryStatus::Retrying, AttemptOutcome::Retrying),
        Disposition::DeadLettered => (DeliveryStatus::Dead, AttemptOutcome::Dead),
    };
    let row = log_row(delivery, status);
    let error = error.to_string();
    let mut conn = db.get()?;
    conn.transaction(|conn| {
        notifications::record_failure(conn, &row, &error)?;
        delivery_attempts::record(conn, &attempt(delivery, outcome, Some(&error), None))
    })?;
    Ok(())
}

fn log_row(delivery: &Delivery, status: DeliveryStatus) -> NewNotification<'_> {
    NewNotification {
        event_id: delivery.event_id,
        consumer: delivery.consumer,
        order_id: delivery.order_id,
        status,
        message_id: delivery.message_id.as_deref(),
    }
}

fn record_attempt(
    conn: &mut PgConnection,
    delivery: &Delivery,
    outcome: AttemptOutcome,
    error: Option<&str>,
    reply: Option<&str>,
) -> Result<(), HandleError> {
    delivery_attempts::record(conn, &attempt(delivery, outcome, error, reply))
        .map(drop)
        .map_err(db_error)
}

fn attempt<'a>(
    delivery: &'a Delivery,
    outcome: AttemptOutcome,
    error: Option<&'a str>,
    reply: Option<&'a str>,
) -> NewAttempt<'a> {
    NewAttempt {
        event_id: delivery.event_id,
        consumer: delivery.consumer,
        order_id: delivery.order_id,
        attempt: delivery.attempt as i32,
        outcome,
        error,
        smtp_reply: reply,
    }
}

/// A database error during a delivery. A referenced order that does not
/// exist is permanent (the event is bogus); anything else may pass.
pub fn db_error(error: DieselError) -> HandleError {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            HandleError::Permanent(
                anyhow!(error).context("the event refers to an order that does not exist"),
            )
        }
        _ => HandleError::Transient(anyhow!(error)),
    }
}

/// Starting or committing a delivery's transaction failed: the database may
/// be back in a moment. Errors inside a delivery are classified explicitly
/// with [`db_error`].
impl From<DieselError> for HandleError {
    fn from(error: DieselError) -> Self {
        HandleError::Transient(anyhow!(error))
    }
}
