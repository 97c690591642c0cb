//! The `notifications` consumer: emails the customer about their order —
//! the confirmation (`order.created`), the cancellation (`order.cancelled`)
//! and each status move an admin makes (`order.status_updated`). The
//! customer is looked up through the Redis cache, the Message-ID comes from
//! the event, and the delivery step makes each event's email go out once.

use std::sync::Arc;

use anyhow::anyhow;
use diesel::PgConnection;
use lettre::message::Mailbox;
use lettre::Message as Email;
use uuid::Uuid;

use super::delivery::{db_error, Delivery};
use super::handler::{Consume, Consumer, Kind, Logged};
use crate::cache::{SentMarks, UserCache};
use crate::db::models::User;
use crate::domain::events::{Event, OrderSnapshot, ORDER_CANCELLED, ORDER_STATUS_UPDATED};
use crate::domain::{OrderId, ORDER_CREATED};
use crate::mail::{mail_error, render, MailError, Mailer};
use crate::messaging::consumer::HandleError;
use crate::messaging::topology::ConsumerSpec;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "notifications",
    routing_keys: &[ORDER_CREATED, ORDER_CANCELLED, ORDER_STATUS_UPDATED],
};

pub const CONSUMER: Consumer = Consumer {
    spec: SPEC,
    build: |deps| {
        Logged::boxed(
            &deps.db,
            Notifier {
                users: deps.users.clone(),
                mailer: deps.mailer.clone(),
                sent_marks: deps.sent_marks.clone(),
                from: deps.from.clone(),
            },
        )
    },
};

pub struct Notifier {
    pub users: Arc<UserCache>,
    pub mailer: Arc<Mailer>,
    pub sent_marks: Arc<SentMarks>,
    pub from: Mailbox,
}

impl Notifier {
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

impl Consume for Notifier {
    type Event = Event;

    const SPEC: ConsumerSpec = SPEC;

    fn parse(body: &[u8]) -> Result<Event, HandleError> {
        let event = Event::from_json(body)
            .map_err(|e| HandleError::Permanent(e.context("the message is not a valid event")))?;
        order_of(&event)?;
        Ok(event)
    }

    fn keys(event: &Event) -> (Uuid, OrderId) {
        (event.event_id(), event.order_id())
    }

    fn message_id(event: &Event) -> Option<String> {
        Some(render::message_id_for(event.event_id(), None))
    }

    fn kind(&self) -> Kind<'_> {
        Kind::Sends(&self.sent_marks)
    }

    /// Renders and sends the event's email.
    fn effect(
        &self,
        conn: &mut PgConnection,
        event: &Event,
        _delivery: &Delivery,
    ) -> Result<String, HandleError> {
        let order = order_of(event)?;
        let user = self
            .users
            .user(conn, order.user_id)
            .map_err(db_error)?
            .ok_or_else(|| HandleError::Permanent(anyhow!("unknown user {}", order.user_id)))?;
        let email = self.render(event, &user).map_err(mail_error)?;
        let reply = self.mailer.send(&email).map_err(mail_error)?;
        tracing::info!(order_id = order.id.0, to = %user.email, smtp_reply = %reply, "{} email sent", event.routing_key());
        Ok(reply)
    }
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
