//! The idempotent-consumer step every consumer shares: the delivery-log row
//! for (event, consumer) is created and locked, the consumer's effect runs,
//! and the row is marked `sent` in the same transaction — so a redelivered,
//! replayed or concurrently delivered event has its effect once.

use anyhow::anyhow;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection};
use uuid::Uuid;

use crate::cache::SentMarks;
use crate::db::delivery_attempts::{self, NewAttempt};
use crate::db::models::NewNotification;
use crate::db::{self, notifications, LazyDb};
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

/// Makes the effects of `deliveries[i]` for each i given, together.
pub type WriteAll<'a> =
    dyn FnMut(&mut PgConnection, &[usize]) -> Result<Vec<String>, HandleError> + 'a;

/// A consumer's effect, in the shape that decides how it is made once.
/// Each is called with indices into the deliveries.
pub enum Effects<'a> {
    /// Database writes, in the deliveries' transaction, made for several
    /// deliveries at once (a few statements for a batch): they commit with
    /// the `sent` marks or not at all. Returns what happened per delivery.
    Writes(&'a mut WriteAll<'a>),
    /// Something outside the database that cannot be rolled back — an
    /// email — made one delivery at a time; the effect only reads the
    /// database. The SMTP server's acceptance is also kept in Redis
    /// ([`SentMarks`]) right after its reply and checked before sending:
    /// if PostgreSQL went away between the 250 and the commit, the
    /// redelivered message finds the mark, records the earlier send and
    /// sends nothing. Only a crash between the 250 and the mark (or Redis
    /// down as well) can send an event twice.
    Sends(
        &'a SentMarks,
        &'a mut dyn FnMut(&mut PgConnection, usize) -> Result<String, HandleError>,
    ),
}

/// Makes each delivery's effect at most once per (event, consumer).
/// Returns one result per delivery, in order.
///
/// The deliveries share one transaction: their delivery-log rows are
/// created and locked by one statement, the effects run, and the
/// successful ones are marked `sent` by one more — so a redelivered,
/// replayed or concurrently delivered event has its effect once (a
/// concurrent duplicate waits for the lock, then finds `sent`). A failed
/// email does not fail the others (it wrote nothing). A failed database
/// effect, or a failure of the transaction itself (a bogus event among
/// them, a lost connection), rolls the transaction back, and each delivery
/// is tried again in a transaction of its own, so only the bad one fails;
/// an email that went out meanwhile is found by its mark and not sent
/// again.
///
/// The commit does not wait for the disk ([`LazyDb`]): [`LazyDb::durable`]
/// runs before the messages are acked (see [`Logged`](super::handler::Logged)),
/// so one flush covers every delivery handled since. The marks are visible
/// to other transactions at once, so a redelivery still finds them `sent`.
pub fn once_each(
    db: &LazyDb,
    deliveries: &[Delivery],
    mut effects: Effects<'_>,
) -> Vec<Result<Outcome, HandleError>> {
    if deliveries.is_empty() {
        return Vec::new();
    }
    let mut conn = match db.get() {
        Ok(conn) => conn,
        Err(error) => {
            let message = format!("{error:#}");
            return deliveries
                .iter()
                .map(|_| Err(HandleError::Transient(anyhow!(message.clone()))))
                .collect();
        }
    };
    let all: Vec<usize> = (0..deliveries.len()).collect();
    if all.len() > 1 {
        match in_one_transaction(&mut conn, deliveries, &all, &mut effects) {
            Ok(results) => {
                wake(db, &effects);
                return results;
            }
            Err(error) => tracing::info!(
                consumer = deliveries[0].consumer,
                "{} deliveries failed together ({error}); trying each alone",
                deliveries.len()
            ),
        }
    }
    let results = all
        .iter()
        .map(|&i| {
            in_one_transaction(&mut conn, deliveries, &[i], &mut effects)
                .and_then(|mut results| results.pop().expect("one result per delivery"))
        })
        .collect();
    wake(db, &effects);
    results
}

/// After a delivery transaction: the live feed shows the deliveries, and a
/// relay publishes the events a database effect wrote.
fn wake(db: &LazyDb, effects: &Effects<'_>) {
    match effects {
        Effects::Writes(_) => db.wake(&[db::feed::CHANNEL, db::outbox::CHANNEL]),
        Effects::Sends(..) => db.wake(&[db::feed::CHANNEL]),
    }
}

/// [`once_each`]'s transaction for `deliveries[i]` for each i in `which`.
/// An effect's error fails its delivery — and, for a delivery alone or a
/// database effect, rolls the whole transaction back, as the effect's own
/// writes must be.
fn in_one_transaction(
    conn: &mut PgConnection,
    deliveries: &[Delivery],
    which: &[usize],
    effects: &mut Effects<'_>,
) -> Result<Vec<Result<Outcome, HandleError>>, HandleError> {
    let alone = which.len() == 1;
    conn.transaction(|conn| {
        let rows: Vec<_> = which
            .iter()
            .map(|&i| log_row(&deliveries[i], DeliveryStatus::Pending))
            .collect();
        let statuses = notifications::lock_for_delivery(conn, &rows).map_err(db_error)?;
        let mut results: Vec<Option<Result<Outcome, HandleError>>> =
            which.iter().map(|_| None).collect();
        let mut todo = Vec::new();
        for (k, &i) in which.iter().enumerate() {
            let delivery = &deliveries[i];
            if statuses.get(&delivery.event_id) == Some(&DeliveryStatus::Sent) {
                tracing::info!(
                    order_id = delivery.order_id.0,
                    consumer = delivery.consumer,
                    "already handled; nothing done"
                );
                record_attempt(conn, delivery, AttemptOutcome::Duplicate, None, None)?;
                results[k] = Some(Ok(Outcome::AlreadyDone));
            } else {
                todo.push(k);
            }
        }
        let mut sent = Vec::new();
        let mut done = |k: usize, reply: String, results: &mut [Option<_>]| {
            let delivery = &deliveries[which[k]];
            sent.push(notifications::Sent {
                event_id: delivery.event_id,
                attempt: delivery.attempt as i32,
                reply: reply.clone(),
                at: chrono::Utc::now(),
            });
            results[k] = Some(Ok(Outcome::Done { reply }));
        };
        match effects {
            Effects::Writes(effect) if !todo.is_empty() => {
                let indices: Vec<usize> = todo.iter().map(|&k| which[k]).collect();
                let replies = effect(conn, &indices)?;
                for (&k, reply) in todo.iter().zip(replies) {
                    done(k, reply, &mut results);
                }
            }
            Effects::Writes(_) => {}
            Effects::Sends(marks, send) => {
                let event_ids: Vec<Uuid> = todo
                    .iter()
                    .map(|&k| deliveries[which[k]].event_id)
                    .collect();
                let earlier = marks.get_many(deliveries[0].consumer, &event_ids);
                for (&k, earlier) in todo.iter().zip(earlier) {
                    let i = which[k];
                    match send_once(marks, &deliveries[i], earlier, || send(conn, i)) {
                        Ok(reply) => done(k, reply, &mut results),
                        Err(error) if alone => return Err(error),
                        // It wrote nothing: the others go on.
                        Err(error) => results[k] = Some(Err(error)),
                    }
                }
            }
        }
        // Every `sent` mark and its attempt row in one round trip.
        notifications::mark_sent(conn, deliveries[0].consumer, &sent).map_err(db_error)?;
        Ok(results
            .into_iter()
            .map(|result| result.expect("every delivery has a result"))
            .collect())
    })
}

/// An email's send, unless its mark (`earlier`, read for the batch before
/// its sends) says it went out before.
fn send_once(
    marks: &SentMarks,
    delivery: &Delivery,
    earlier: Option<String>,
    send: impl FnOnce() -> Result<String, HandleError>,
) -> Result<String, HandleError> {
    if let Some(reply) = earlier {
        tracing::info!(
            order_id = delivery.order_id.0,
            consumer = delivery.consumer,
            "sent before its delivery could be recorded; recording it, sending nothing"
        );
        return Ok(reply);
    }
    let reply = send()?;
    marks.set(delivery.consumer, delivery.event_id, &reply);
    Ok(reply)
}

/// Records a failed attempt (`retrying` or `dead`) after the delivery
/// transaction rolled back; never downgrades a `sent` row.
pub fn record_failure(
    db: &LazyDb,
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
    db.wake(&[db::feed::CHANNEL]);
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
