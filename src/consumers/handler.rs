//! What a consumer is made of: the [`Consume`] trait each one implements,
//! [`Logged`], which runs it with the delivery log kept for it, and what
//! the registry builds consumers from ([`Consumer`], [`Deps`]).

use std::sync::Arc;

use diesel::PgConnection;
use lettre::message::Mailbox;
use uuid::Uuid;

use super::delivery::{self, Delivery, Effects, Outcome};
use crate::cache::{ProductCache, SentMarks, UserCache};
use crate::db::LazyDb;
use crate::domain::OrderId;
use crate::mail::Mailer;
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;

/// What handlers are built from: the worker's shared resources and options.
pub struct Deps {
    /// Commits lazily: [`Logged`] makes them durable before any ack.
    pub db: LazyDb,
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
/// making the effect once per event, batching deliveries into one
/// transaction, the order id on every log line, the delivery-log rows of
/// failed attempts, the flush before acks — [`Logged`] does alike for every
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

    /// What the effect is: database writes, or an email.
    fn kind(&self) -> Kind<'_>;

    /// The effect, run at most once per delivery inside the delivery's
    /// transaction (see [`delivery::once_each`]); returns what happened,
    /// for the delivery log (an SMTP reply, a payment).
    fn effect(
        &self,
        conn: &mut PgConnection,
        event: &Self::Event,
        delivery: &Delivery,
    ) -> Result<String, HandleError>;

    /// The effects of several deliveries at once, all or none — for a
    /// [`Kind::Writes`] consumer that can write a batch in a few
    /// statements. By default, each [`Consume::effect`] in turn.
    fn effects(
        &self,
        conn: &mut PgConnection,
        batch: &[(&Self::Event, &Delivery)],
    ) -> Result<Vec<String>, HandleError> {
        batch
            .iter()
            .map(|(event, delivery)| self.effect(conn, event, delivery))
            .collect()
    }

    /// Runs after the effect committed, e.g. to drop cache entries it made
    /// stale.
    fn committed(&self, _event: &Self::Event) {}
}

/// What a consumer's effect is.
#[derive(Clone, Copy)]
pub enum Kind<'a> {
    /// Database writes, in the delivery's transaction.
    Writes,
    /// An email, remembered in these marks once the server took it (see
    /// [`Effects::Sends`]).
    Sends(&'a SentMarks),
}

/// A [`Consume`] as the consumer runtime runs it, with the delivery log
/// kept for it.
pub struct Logged<C> {
    db: LazyDb,
    consumer: C,
}

impl<C: Consume> Logged<C> {
    pub fn boxed(db: &LazyDb, consumer: C) -> Box<dyn Handler> {
        Box::new(Self {
            db: db.clone(),
            consumer,
        })
    }

    /// Which delivery `event` is, as this consumer handles it.
    pub fn delivery(event: &C::Event, attempt: u32) -> Delivery {
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

    fn handle(&self, messages: &[Message<'_>]) -> Vec<Result<(), HandleError>> {
        let mut results: Vec<Option<Result<(), HandleError>>> =
            messages.iter().map(|_| None).collect();
        // The messages that parse are delivered together.
        let (mut events, mut deliveries, mut at) = (Vec::new(), Vec::new(), Vec::new());
        for (i, message) in messages.iter().enumerate() {
            match C::parse(message.body) {
                Ok(event) => {
                    let delivery = Self::delivery(&event, message.attempt);
                    // Every line the runtime logs about the message names
                    // the order.
                    message.span.record("order_id", delivery.order_id.0);
                    events.push(event);
                    deliveries.push(delivery);
                    at.push(i);
                }
                Err(error) => results[i] = Some(Err(error)),
            }
        }
        let mut one = |conn: &mut PgConnection, j: usize| {
            let _entered = messages[at[j]].span.enter();
            self.consumer.effect(conn, &events[j], &deliveries[j])
        };
        let mut all = |conn: &mut PgConnection, js: &[usize]| {
            let batch: Vec<_> = js.iter().map(|&j| (&events[j], &deliveries[j])).collect();
            self.consumer.effects(conn, &batch)
        };
        let effects = match self.consumer.kind() {
            Kind::Writes => Effects::Writes(&mut all),
            Kind::Sends(marks) => Effects::Sends(marks, &mut one),
        };
        let outcomes = delivery::once_each(&self.db, &deliveries, effects);
        for (j, outcome) in outcomes.into_iter().enumerate() {
            if matches!(outcome, Ok(Outcome::Done { .. })) {
                self.consumer.committed(&events[j]);
            }
            results[at[j]] = Some(outcome.map(drop));
        }
        results
            .into_iter()
            .map(|result| result.expect("every message has a result"))
            .collect()
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
        self.db.durable()
    }
}
