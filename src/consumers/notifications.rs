//! The `notifications` consumer: emails the customer about their order —
//! the confirmation for `order.created`. The customer is looked up through
//! the Redis cache, the email's Message-ID comes from the event, and the
//! delivery step makes each event's email go out once.

use std::sync::Arc;

use anyhow::anyhow;
use lettre::message::Mailbox;

use super::delivery::{self, db_error, Delivery, Outcome};
use super::Consumer;
use crate::cache::UserCache;
use crate::db::PgPool;
use crate::domain::{OrderCreated, ORDER_CREATED};
use crate::mail::{self, MailError, Mailer};
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "notifications",
    routing_keys: &[ORDER_CREATED],
};

pub const CONSUMER: Consumer = Consumer {
    spec: SPEC,
    build: |deps| {
        Box::new(Notifier {
            db: deps.db.clone(),
            users: deps.users.clone(),
            mailer: deps.mailer.clone(),
            from: deps.from.clone(),
        })
    },
};

pub struct Notifier {
    pub db: PgPool,
    pub users: Arc<UserCache>,
    pub mailer: Arc<Mailer>,
    pub from: Mailbox,
}

impl Notifier {
    /// Delivers one event: renders and sends its email unless it was sent
    /// before.
    pub fn deliver(&self, event: &OrderCreated, attempt: u32) -> Result<Outcome, HandleError> {
        let message_id = mail::message_id(event);
        let target = Self::target(event, &message_id, attempt);
        let outcome = delivery::once(&self.db, &target, |conn| {
            let user = self
                .users
                .user(conn, event.order.user_id)
                .map_err(db_error)?
                .ok_or_else(|| {
                    HandleError::Permanent(anyhow!("unknown user {}", event.order.user_id))
                })?;
            let email = mail::confirmation(event, &user, &self.from).map_err(mail_error)?;
            let reply = self.mailer.send(&email).map_err(mail_error)?;
            tracing::info!(order_id = event.order.id, to = %user.email, smtp_reply = %reply, "confirmation sent");
            Ok(reply)
        })?;
        Ok(outcome)
    }

    fn target<'a>(event: &OrderCreated, message_id: &'a str, attempt: u32) -> Delivery<'a> {
        Delivery {
            event_id: event.event_id,
            consumer: SPEC.name,
            order_id: event.order.id,
            message_id: Some(message_id),
            attempt,
        }
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
        let target = Self::target(&event, &message_id, message.attempt);
        delivery::record_failure(&self.db, &target, error, disposition)
    }
}

pub fn mail_error(error: MailError) -> HandleError {
    match error {
        MailError::Transient(text) => HandleError::Transient(anyhow!(text)),
        MailError::Permanent(text) => HandleError::Permanent(anyhow!(text)),
        MailError::Unavailable(text) => HandleError::Unavailable(anyhow!(text)),
    }
}
