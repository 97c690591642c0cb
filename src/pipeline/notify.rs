//! The worker step for `order.created`: look the customer up (Redis, then
//! PostgreSQL), send the confirmation, record the delivery. Idempotent: an
//! event already delivered is acked without a second email.

use anyhow::anyhow;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection};
use lettre::message::Mailbox;

use crate::cache::UserCache;
use crate::db::delivery_attempts::{self, NewAttempt};
use crate::db::models::NewNotification;
use crate::db::{notifications, PgPool};
use crate::domain::{OrderCreated, ORDER_CREATED};
use crate::mail::{self, MailError, Mailer};
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "notifications",
    routing_keys: &[ORDER_CREATED],
};

/// What one delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        smtp_reply: String,
    },
    /// The event had been delivered before: nothing was sent.
    AlreadySent,
}

pub struct Notifier {
    pub db: PgPool,
    pub cache: UserCache,
    pub mailer: Mailer,
    pub from: Mailbox,
}

impl Notifier {
    /// Delivers one event. The delivery-log row stays locked while the email
    /// is sent, so a concurrent duplicate waits and then sends nothing.
    pub fn deliver(
        &self,
        event: &OrderCreated,
        attempt_number: u32,
    ) -> Result<Outcome, HandleError> {
        let mut conn = self.db.get().map_err(|e| {
            HandleError::Transient(anyhow!(e).context("getting a database connection"))
        })?;
        let message_id = mail::message_id(event);
        let row = NewNotification {
            event_id: event.event_id,
            consumer: SPEC.name,
            order_id: event.order.id,
            status: notifications::PENDING,
            message_id: Some(&message_id),
        };
        let conn: &mut PgConnection = &mut conn;
        conn.transaction(|conn| {
            let logged = notifications::lock_for_delivery(conn, &row).map_err(db_error)?;
            if logged.status == notifications::SENT {
                tracing::info!(order_id = event.order.id, "already delivered; nothing sent");
                let duplicate = attempt(event, attempt_number, delivery_attempts::DUPLICATE, None, None);
                delivery_attempts::record(conn, &duplicate).map_err(db_error)?;
                return Ok(Outcome::AlreadySent);
            }
            let user = self
                .cache
                .user(conn, event.order.user_id)
                .map_err(db_error)?
                .ok_or_else(|| HandleError::Permanent(anyhow!("unknown user {}", event.order.user_id)))?;
            let email = mail::confirmation(event, &user, &self.from).map_err(mail_error)?;
            let smtp_reply = self.mailer.send(&email).map_err(mail_error)?;
            notifications::mark_sent(conn, event.event_id, SPEC.name, &smtp_reply).map_err(db_error)?;
            let sent = attempt(event, attempt_number, delivery_attempts::SENT, None, Some(&smtp_reply));
            delivery_attempts::record(conn, &sent).map_err(db_error)?;
            tracing::info!(order_id = event.order.id, to = %user.email, %smtp_reply, "confirmation sent");
            Ok(Outcome::Sent { smtp_reply })
        })
    }
}

impl Handler for Notifier {
    fn spec(&self) -> ConsumerSpec {
        SPEC
    }

    fn handle(&self, message: &Message<'_>) -> Result<(), HandleError> {
        let event = OrderCreated::from_json(message.body).map_err(|e| {
            HandleError::Permanent(e.context("the message is not a valid order.created event"))
        })?;
        // The consumer's `message` span (its message_id is the event id).
        tracing::Span::current().record("order_id", event.order.id);
        self.deliver(&event, message.attempt).map(drop)
    }

    fn failed(
        &self,
        message: &Message<'_>,
        error: &HandleError,
        disposition: Disposition,
    ) -> anyhow::Result<()> {
        // A body that is not an event has no delivery-log row to write.
        let Ok(event) = OrderCreated::from_json(message.body) else {
            return Ok(());
        };
        let message_id = mail::message_id(&event);
        let (status, outcome) = match disposition {
            Disposition::Retrying { .. } => (notifications::RETRYING, delivery_attempts::RETRYING),
            Disposition::DeadLettered => (notifications::DEAD, delivery_attempts::DEAD),
        };
        let row = NewNotification {
            event_id: event.event_id,
            consumer: SPEC.name,
            order_id: event.order.id,
            status,
            message_id: Some(&message_id),
        };
        let mut conn = self.db.get()?;
        let error = error.to_string();
        conn.transaction(|conn| {
            notifications::record_failure(conn, &row, &error)?;
            delivery_attempts::record(
                conn,
                &attempt(&event, message.attempt, outcome, Some(&error), None),
            )
        })?;
        Ok(())
    }
}

fn attempt<'a>(
    event: &OrderCreated,
    number: u32,
    outcome: &'a str,
    error: Option<&'a str>,
    smtp_reply: Option<&'a str>,
) -> NewAttempt<'a> {
    NewAttempt {
        event_id: event.event_id,
        consumer: SPEC.name,
        order_id: event.order.id,
        attempt: number as i32,
        outcome,
        error,
        smtp_reply,
    }
}

fn mail_error(error: MailError) -> HandleError {
    match error {
        MailError::Transient(text) => HandleError::Transient(anyhow!(text)),
        MailError::Permanent(text) => HandleError::Permanent(anyhow!(text)),
    }
}

/// A referenced order that does not exist is permanent (the event is
/// bogus); anything else from the database may pass.
fn db_error(error: DieselError) -> HandleError {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            HandleError::Permanent(
                anyhow!(error).context("the event refers to an order that does not exist"),
            )
        }
        _ => HandleError::Transient(anyhow!(error)),
    }
}

impl From<DieselError> for HandleError {
    fn from(error: DieselError) -> Self {
        db_error(error)
    }
}
