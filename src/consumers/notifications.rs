//! The `notifications` consumer: emails the customer about their order —
//! the confirmation (`order.created`), the cancellation (`order.cancelled`)
//! and each status move an admin makes (`order.status_updated`). The
//! customer is looked up through the Redis cache, the Message-ID comes from
//! the event, and the delivery step makes each event's email go out once.

use std::sync::Arc;

use anyhow::anyhow;
use lettre::message::Mailbox;
use lettre::Message as Email;

use super::delivery::{self, db_error, Delivery, Outcome};
use super::Consumer;
use crate::cache::{SentMarks, UserCache};
use crate::db::models::User;
use crate::db::PgPool;
use crate::domain::events::{Event, OrderSnapshot, ORDER_CANCELLED, ORDER_STATUS_UPDATED};
use crate::domain::ORDER_CREATED;
use crate::mail::{render, MailError, Mailer};
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "notifications",
    routing_keys: &[ORDER_CREATED, ORDER_CANCELLED, ORDER_STATUS_UPDATED],
};

pub const CONSUMER: Consumer = Consumer {
    spec: SPEC,
    build: |deps| {
        Box::new(Notifier {
            db: deps.db.clone(),
            users: deps.users.clone(),
            mailer: deps.mailer.clone(),
            sent_marks: deps.sent_marks.clone(),
            from: deps.from.clone(),
        })
    },
};

pub struct Notifier {
    pub db: PgPool,
    pub users: Arc<UserCache>,
    pub mailer: Arc<Mailer>,
    pub sent_marks: Arc<SentMarks>,
    pub from: Mailbox,
}

impl Notifier {
    /// Delivers one event: renders and sends its email unless it was sent
    /// before.
    pub fn deliver(&self, event: &Event, attempt: u32) -> Result<Outcome, HandleError> {
        let order = order_of(event)?;
        let message_id = render::message_id_for(event.event_id(), None);
        let target = target(event, &message_id, attempt);
        delivery::once_sending(&self.db, &self.sent_marks, &target, |conn| {
            let user = self
                .users
                .user(conn, order.user_id)
                .map_err(db_error)?
                .ok_or_else(|| HandleError::Permanent(anyhow!("unknown user {}", order.user_id)))?;
            let email = self.render(event, &user).map_err(mail_error)?;
            let reply = self.mailer.send(&email).map_err(mail_error)?;
            tracing::info!(order_id = order.id, to = %user.email, smtp_reply = %reply, "{} email sent", event.routing_key());
            Ok(reply)
        })
    }

    fn render(&self, event: &Event, user: &User) -> Result<Email, MailError> {
        match event {
            Event::OrderCreated(event) => render::confirmation(event, user, &self.from),
            Event::OrderCancelled(event) => render::cancellation(event, user, &self.from),
            Event::OrderStatusUpdated(event) => render::status_update(event, user, &self.from),
            other => Err(MailError::Permanent(format!(
                "the notifications consumer does not handle {} events",
                other.routing_key()
            ))),
        }
    }
}

impl Handler for Notifier {
    fn spec(&self) -> ConsumerSpec {
        SPEC
    }

    fn handle(&self, message: &Message<'_>) -> Result<(), HandleError> {
        let event = parse(message.body)?;
        // The consumer's `message` span (its message_id is the event id).
        tracing::Span::current().record("order_id", event.order_id().0);
        self.deliver(&event, message.attempt).map(drop)
    }

    fn durable(&self) -> anyhow::Result<()> {
        delivery::make_durable(&self.db)
    }

    fn failed(
        &self,
        message: &Message<'_>,
        error: &HandleError,
        disposition: Disposition,
    ) -> anyhow::Result<()> {
        // A body that is not an event has no delivery-log row to write.
        let Ok(event) = parse(message.body) else {
            return Ok(());
        };
        let message_id = render::message_id_for(event.event_id(), None);
        let target = target(&event, &message_id, message.attempt);
        delivery::record_failure(&self.db, &target, error, disposition)
    }
}

/// The event in a message body; anything else is a permanent failure.
fn parse(body: &[u8]) -> Result<Event, HandleError> {
    let event = Event::from_json(body)
        .map_err(|e| HandleError::Permanent(e.context("the message is not a valid event")))?;
    order_of(&event)?;
    Ok(event)
}

/// The order a customer email is about.
fn order_of(event: &Event) -> Result<&OrderSnapshot, HandleError> {
    match event {
        Event::OrderCreated(event) => Ok(&event.order),
        Event::OrderCancelled(event) => Ok(&event.order),
        Event::OrderStatusUpdated(event) => Ok(&event.order),
        other => Err(HandleError::Permanent(anyhow!(
            "the notifications consumer does not handle {} events",
            other.routing_key()
        ))),
    }
}

fn target<'a>(event: &Event, message_id: &'a str, attempt: u32) -> Delivery<'a> {
    Delivery {
        event_id: event.event_id(),
        consumer: SPEC.name,
        order_id: event.order_id().0,
        message_id: Some(message_id),
        attempt,
    }
}

pub fn mail_error(error: MailError) -> HandleError {
    match error {
        MailError::Transient(text) => HandleError::Transient(anyhow!(text)),
        MailError::Permanent(text) => HandleError::Permanent(anyhow!(text)),
        MailError::Unavailable(text) => HandleError::Unavailable(anyhow!(text)),
    }
}
