//! `ordctl trace ORDER_ID`: the life of one order, from its commit through
//! the outbox and every delivery attempt to its final state, read from the
//! tables that record each step.

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde::Serialize;
use uuid::Uuid;

use crate::db::delivery_attempts::{self, Attempt};
use crate::db::models::{Notification, Order, OutboxRow};
use crate::db::{notifications, orders, outbox};
use crate::domain::{AttemptOutcome, Currency, DeliveryStatus, Money, OrderId, UserId};
use crate::error::NotFound;

#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub order: TracedOrder,
    /// The order's event (its message id on the broker).
    pub event_id: Option<Uuid>,
    pub timeline: Vec<Step>,
    /// The confirmation's latest delivery state, as the delivery log holds it.
    pub notification: Option<Notification>,
    /// Every consumer's delivery-log row for the order's events.
    pub deliveries: Vec<Notification>,
    pub state: State,
}

#[derive(Clone, Debug, Serialize)]
pub struct TracedOrder {
    pub id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
    pub currency: Currency,
    pub created_at: DateTime<Utc>,
}

/// One thing that happened to the order, in pipeline order (a worker may
/// record its delivery a moment before the publisher records the confirm,
/// so the times are not always increasing).
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub step: StepKind,
    /// The event's routing key, for `published`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Which consumer made the attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// From commit to the broker's confirm, for `published`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Committed,
    Published,
    Sent,
    Duplicate,
    Retrying,
    DeadLettered,
    Replayed,
}

impl StepKind {
    fn from_outcome(outcome: AttemptOutcome) -> Self {
        match outcome {
            AttemptOutcome::Sent => Self::Sent,
            AttemptOutcome::Duplicate => Self::Duplicate,
            AttemptOutcome::Retrying => Self::Retrying,
            AttemptOutcome::Dead => Self::DeadLettered,
            AttemptOutcome::Replayed => Self::Replayed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Published => "published",
            Self::Sent => "sent",
            Self::Duplicate => "duplicate",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead-lettered",
            Self::Replayed => "replayed",
        }
    }
}

/// Where the order stands now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Committed; the relay has not published the event yet.
    NotPublished,
    /// Published; no worker has taken it yet.
    Queued,
    /// A worker holds it right now.
    Delivering,
    /// Failed transiently; waiting in a retry queue.
    Retrying,
    /// In the dead-letter queue.
    DeadLettered,
    /// Moved back from the dead-letter queue; waiting for a worker.
    Replayed,
    Delivered,
}

impl State {
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotPublished => "committed, not published yet (the relay will publish it)",
            Self::Queued => "published, waiting for a worker",
            Self::Delivering => "being delivered",
            Self::Retrying => "failed transiently, waiting to be retried",
            Self::DeadLettered => "dead-lettered (ordctl replay-dlq moves it back)",
            Self::Replayed => "replayed from the dead-letter queue, waiting for a worker",
            Self::Delivered => "delivered",
        }
    }
}

/// Reads the order's trace. An unknown order is [`NotFound`].
pub fn trace(conn: &mut PgConnection, order_id: OrderId) -> anyhow::Result<Trace> {
    let order = orders::find(conn, order_id)
        .with_context(|| format!("reading order {order_id}"))?
        .ok_or_else(|| NotFound::new(format!("order {order_id} not found")))?;
    let events = outbox::for_order(conn, order_id).context("reading the outbox")?;
    let attempts = delivery_attempts::for_order(conn, order_id).context("reading attempts")?;
    let deliveries =
        notifications::for_order(conn, order_id).context("reading the delivery log")?;
    build(order, &events, attempts, deliveries)
}

fn build(
    order: Order,
    events: &[OutboxRow],
    attempts: Vec<Attempt>,
    deliveries: Vec<Notification>,
) -> anyhow::Result<Trace> {
    // The state follows the confirmation: the order's first event, as the
    // notifications consumer handles it.
    let confirmation = events.first().map(|event| event.event_id);
    let notification = deliveries
        .iter()
        .find(|row| {
            Some(row.event_id) == confirmation
                && row.consumer == crate::consumers::notifications::SPEC.name
        })
        .cloned();
    let amount = Money::from_minor_units(order.amount_minor)
        .with_context(|| format!("order {} has an invalid amount", order.id))?;
    let mut timeline = vec![Step::new(order.created_at, StepKind::Committed)];
    for event in events {
        if let Some(published_at) = event.published_at {
            timeline.push(Step {
                event_id: Some(event.event_id),
                event: Some(event.routing_key.clone()),
                lag_secs: Some(seconds(published_at - event.created_at)),
                ..Step::new(published_at, StepKind::Published)
            });
        }
    }
    let last_outcome = attempts
        .iter()
        .rfind(|attempt| {
            Some(attempt.event_id) == confirmation
                && attempt.consumer == crate::consumers::notifications::SPEC.name
        })
        .map(|attempt| attempt.outcome);
    for attempt in attempts {
        let kind = StepKind::from_outcome(attempt.outcome);
        timeline.push(Step {
            consumer: Some(attempt.consumer),
            attempt: Some(attempt.attempt),
            smtp_reply: attempt.smtp_reply,
            error: attempt.error,
            ..Step::new(attempt.created_at, kind)
        });
    }
    let published = events.iter().any(|event| event.published_at.is_some());
    let state = state(published, notification.as_ref(), last_outcome);
    Ok(Trace {
        order: TracedOrder {
            id: order.id,
            user_id: order.user_id,
            amount,
            currency: order.currency,
            created_at: order.created_at,
        },
        event_id: events.first().map(|event| event.event_id),
        timeline,
        notification,
        deliveries,
        state,
    })
}

fn state(
    published: bool,
    notification: Option<&Notification>,
    last_outcome: Option<AttemptOutcome>,
) -> State {
    match notification.map(|row| row.status) {
        Some(DeliveryStatus::Sent) => State::Delivered,
        _ if last_outcome == Some(AttemptOutcome::Replayed) => State::Replayed,
        Some(DeliveryStatus::Dead) => State::DeadLettered,
        Some(DeliveryStatus::Retrying) => State::Retrying,
        Some(DeliveryStatus::Pending) => State::Delivering,
        // A worker may take the message before the publisher records the
        // confirm: a delivery-log row means it was published.
        None if published => State::Queued,
        None => State::NotPublished,
    }
}

impl Step {
    fn new(at: DateTime<Utc>, step: StepKind) -> Self {
        Self {
            at,
            step,
            event: None,
            consumer: None,
            attempt: None,
            event_id: None,
            lag_secs: None,
            smtp_reply: None,
            error: None,
        }
    }

    /// What a person reads in the detail column.
    pub fn detail(&self) -> String {
        let mut parts = Vec::new();
        if let Some(consumer) = &self.consumer {
            parts.push(consumer.clone());
        }
        if let Some(event) = &self.event {
            parts.push(event.clone());
        }
        if let Some(event_id) = self.event_id {
            parts.push(format!("event {event_id}"));
        }
        if let Some(lag) = self.lag_secs {
            parts.push(format!("{lag:.3}s after commit"));
        }
        if let Some(reply) = &self.smtp_reply {
            parts.push(reply.clone());
        }
        if let Some(error) = &self.error {
            parts.push(error.clone());
        }
        parts.join("; ")
    }
}

fn seconds(delta: chrono::TimeDelta) -> f64 {
    delta.num_milliseconds().max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn order() -> Order {
        Order {
            id: OrderId(42),
            user_id: UserId(3),
            amount_minor: 4200,
            currency: Currency::default(),
            created_at: at(0),
            status: crate::domain::OrderStatus::Pending,
            updated_at: at(0),
        }
    }

    fn event(published: Option<i64>) -> OutboxRow {
        OutboxRow {
            id: 1,
            event_id: Uuid::nil(),
            order_id: OrderId(42),
            routing_key: "order.created".into(),
            payload: serde_json::json!({}),
            created_at: at(0),
            published_at: published.map(at),
        }
    }

    fn attempt(number: i32, outcome: AttemptOutcome, secs: i64) -> Attempt {
        let sent = outcome == AttemptOutcome::Sent;
        Attempt {
            event_id: Uuid::nil(),
            consumer: "notifications".into(),
            attempt: number,
            outcome,
            error: (!sent).then(|| "boom".into()),
            smtp_reply: sent.then(|| "250 OK".into()),
            created_at: at(secs),
        }
    }

    fn notification(status: DeliveryStatus) -> Notification {
        Notification {
            event_id: Uuid::nil(),
            order_id: OrderId(42),
            status,
            attempts: 1,
            last_error: None,
            smtp_reply: None,
            message_id: Some("<m>".into()),
            updated_at: at(9),
            consumer: "notifications".into(),
        }
    }

    #[test]
    fn a_delivered_order_reads_commit_publish_send() {
        let trace = build(
            order(),
            &[event(Some(1))],
            vec![
                attempt(1, AttemptOutcome::Retrying, 2),
                attempt(2, AttemptOutcome::Sent, 4),
            ],
            vec![notification(DeliveryStatus::Sent)],
        )
        .unwrap();
        let steps: Vec<_> = trace.timeline.iter().map(|step| step.step).collect();
        assert_eq!(
            steps,
            [
                StepKind::Committed,
                StepKind::Published,
                StepKind::Retrying,
                StepKind::Sent
            ]
        );
        assert_eq!(trace.timeline[1].lag_secs, Some(1.0));
        assert_eq!(trace.timeline[3].detail(), "notifications; 250 OK");
        assert_eq!(trace.state, State::Delivered);
        let json = serde_json::to_value(&trace).unwrap();
        assert_eq!(json["order"]["amount"], "42.00");
        assert_eq!(json["timeline"][2]["step"], "retrying");
        assert_eq!(json["state"], "delivered");
    }

    #[test]
    fn the_state_follows_the_last_thing_that_happened() {
        use AttemptOutcome as A;
        use DeliveryStatus as D;
        let cases = [
            (false, None, None, State::NotPublished),
            (true, None, None, State::Queued),
            (false, Some(D::Pending), None, State::Delivering),
            (true, Some(D::Retrying), Some(A::Retrying), State::Retrying),
            (true, Some(D::Dead), Some(A::Dead), State::DeadLettered),
            (true, Some(D::Dead), Some(A::Replayed), State::Replayed),
            (true, Some(D::Sent), Some(A::Duplicate), State::Delivered),
        ];
        for (published, status, last, expected) in cases {
            let row = status.map(notification);
            assert_eq!(
                state(published, row.as_ref(), last),
                expected,
                "{status:?} {last:?}"
            );
        }
    }
}
