//! What a consumer is made of: the [`Consume`] trait each one implements,
//! [`Logged`], which runs it with the delivery log kept for it, and what
//! the registry builds consumers from ([`Consumer`], [`Deps`]).

use std::sync::Arc;

use lettre::message::Mailbox;
use uuid::Uuid;

use super::delivery::{self, Delivery};
use crate::cache::{ProductCache, SentMarks, UserCache};
use crate::db::PgPool;
use crate::domain::OrderId;
use crate::mail::Mailer;
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;

/// What handlers are built from: the worker's shared resources and options.
pub struct Deps {
    pub db: PgPool,
    pub users: Arc<UserCache>,
    pub products: Arc<ProductCache>,
    pub mailer: Arc<Mailer>,
    /// Emails the SMTP server accepted, kept in Redis in case the `sent`
    /// row cannot be committed.
    pub sent_marks: Arc<SentMarks>,
    /// Sender of every email.
    pub from: Mailbox,
    /// Where `staff-alerts` sends low-stock alerts.
    pub staff: Mailbox,
    /// The simulated payment gateway's transient failure rate (0–1).
    pub payment_fail_rate: f64,
}

/// One registered consumer: what it subscribes to and how to build it.
pub struct Consumer {
    pub spec: ConsumerSpec,
    pub build: fn(&Deps) -> Box<dyn Handler>,
}

/// What a consumer writes: the events it takes and its effect. The rest —
/// the order id on every log line, the delivery-log rows of failed
/// attempts, the flush before acks — [`Logged`] does alike for every
/// consumer.
pub trait Consume: Send + Sync + 'static {
    /// What this consumer's messages carry.
    type Event;

    const SPEC: ConsumerSpec;

    /// The event in a message body; anything else is a permanent failure
    /// (with no delivery-log row, having no event to key it).
    fn parse(body: &[u8]) -> Result<Self::Event, HandleError>;

    /// The event's id and the order it is about: the delivery log's key.
    fn keys(event: &Self::Event) -> (Uuid, OrderId);

    /// The Message-ID of the email the effect sends, for those that send one.
    fn message_id(_event: &Self::Event) -> Option<String> {
        None
    }

    /// The effect, at most once per delivery: wrapped in
    /// [`delivery::once`] (or [`delivery::once_sending`] for an email).
    fn handle(&self, event: &Self::Event, delivery: &Delivery) -> Result<(), HandleError>;
}

/// A [`Consume`] as the consumer runtime runs it, with the delivery log
/// kept for it.
pub struct Logged<C> {
    db: PgPool,
    consumer: C,
}

impl<C: Consume> Logged<C> {
    pub fn boxed(db: &PgPool, consumer: C) -> Box<dyn Handler> {
        Box::new(Self {
            db: db.clone(),
            consumer,
        })
    }

    fn delivery(event: &C::Event, attempt: u32) -> Delivery {
        let (event_id, order_id) = C::keys(event);
        Delivery {
            event_id,
            consumer: C::SPEC.name,
            order_id,
            message_id: C::message_id(event),
            attempt,
        }
    }
}

impl<C: Consume> Handler for Logged<C> {
    fn spec(&self) -> ConsumerSpec {
        C::SPEC
    }

    fn handle(&self, message: &Message<'_>) -> Result<(), HandleError> {
        let event = C::parse(message.body)?;
        let delivery = Self::delivery(&event, message.attempt);
        // The runtime's `message` span: every line about it names the order.
        tracing::Span::current().record("order_id", delivery.order_id.0);
        self.consumer.handle(&event, &delivery)
    }

    fn failed(
        &self,
        message: &Message<'_>,
        error: &HandleError,
        disposition: Disposition,
    ) -> anyhow::Result<()> {
        let Ok(event) = C::parse(message.body) else {
            return Ok(());
        };
        let delivery = Self::delivery(&event, message.attempt);
        delivery::record_failure(&self.db, &delivery, error, disposition)
    }

    fn durable(&self) -> anyhow::Result<()> {
        delivery::make_durable(&self.db)
    }
}
