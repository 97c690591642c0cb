//! The pipeline's consumers, registered in one list. The topology, the
//! worker, `status`, `trace`, `tail-queue` and `replay-dlq` all read
//! [`REGISTRY`], so adding a consumer is one module with a [`Consume`]
//! (its [`ConsumerSpec`], its events and its effect), plus one line here.

pub mod delivery;
pub mod notifications;
pub mod payments;
pub mod staff_alerts;

use std::sync::Arc;

use lettre::message::Mailbox;
use uuid::Uuid;

use crate::cache::{ProductCache, SentMarks, UserCache};
use crate::db::PgPool;
use crate::domain::OrderId;
use crate::error::InvalidInput;
use crate::mail::Mailer;
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;
use delivery::Delivery;

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

/// Every consumer of the pipeline.
pub const REGISTRY: &[Consumer] = &[
    notifications::CONSUMER,
    payments::CONSUMER,
    staff_alerts::CONSUMER,
];

/// The specs of every registered consumer, in registry order.
pub fn specs() -> Vec<ConsumerSpec> {
    REGISTRY.iter().map(|consumer| consumer.spec).collect()
}

/// Looks up consumers by name, e.g. from `--consumers notifications,payments`.
pub fn select(names: &[String]) -> Result<Vec<&'static Consumer>, InvalidInput> {
    if names.is_empty() {
        return Ok(REGISTRY.iter().collect());
    }
    let mut selected: Vec<&'static Consumer> = Vec::new();
    for name in names {
        let consumer = find(name)?;
        if !selected
            .iter()
            .any(|known| known.spec.name == consumer.spec.name)
        {
            selected.push(consumer);
        }
    }
    Ok(selected)
}

/// The consumer called `name`; an unknown name is invalid input that lists
/// the known ones.
pub fn find(name: &str) -> Result<&'static Consumer, InvalidInput> {
    REGISTRY
        .iter()
        .find(|consumer| consumer.spec.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = REGISTRY.iter().map(|c| c.spec.name).collect();
            InvalidInput::new(format!(
                "unknown consumer {name:?}: expected one of {}",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_unique_and_valid_queue_suffixes() {
        let names: Vec<&str> = REGISTRY.iter().map(|c| c.spec.name).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique);
        for name in names {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
        }
    }

    #[test]
    fn selecting_consumers_rejects_unknown_names_and_drops_repeats() {
        assert_eq!(select(&[]).unwrap().len(), REGISTRY.len());
        let picked = select(&["notifications".into(), "notifications".into()]).unwrap();
        assert_eq!(picked.len(), 1);
        let Err(error) = select(&["nope".into()]) else {
            panic!("an unknown consumer was accepted");
        };
        assert!(
            error.to_string().contains("unknown consumer \"nope\""),
            "{error}"
        );
    }
}
