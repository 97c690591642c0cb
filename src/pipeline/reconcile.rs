//! `ordctl reconcile`: finds events a consumer never received — published
//! a while ago, no delivery-log row of that consumer at all (a row means it
//! was delivered, is being retried, or sits in the DLQ for `replay-dlq`),
//! and nothing waiting in that consumer's queues that could still be it.
//! With `republish`, each goes again straight to the consumer's work queue
//! (not the exchange: the consumers that did get it are left alone).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use serde::Serialize;
use uuid::Uuid;

use super::prune::expected_deliveries;
use crate::domain::OrderId;
use crate::messaging::publisher::Publisher;
use crate::messaging::topology::Topology;
use crate::messaging::{self, Brokers, Outgoing};

/// Republishes per publisher-confirm wait.
const WINDOW: usize = 100;

/// One event a consumer never received.
#[derive(Clone, Debug, Serialize, QueryableByName)]
pub struct Undelivered {
    #[diesel(sql_type = Int8)]
    pub order_id: OrderId,
    #[diesel(sql_type = SqlUuid)]
    pub event_id: Uuid,
    #[diesel(sql_type = Text)]
    pub routing_key: String,
    #[diesel(sql_type = Text)]
    pub consumer: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub published_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    #[diesel(sql_type = Text)]
    payload: String,
}

/// A consumer whose queues still hold messages: its missing rows may be
/// on their way, so its events are not judged this time.
#[derive(Clone, Debug, Serialize)]
pub struct Busy {
    pub consumer: String,
    pub queued: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reconciled {
    pub undelivered: Vec<Undelivered>,
    /// How many of them were published again (0 without `--republish`).
    pub republished: u64,
    pub skipped: Vec<Busy>,
    /// Outbox rows older than the cutoff that the relay has not published
    /// yet: a relay (or a worker) is not running.
    pub unpublished: i64,
}

/// Lists (and with `republish`, republishes) events published before
/// `cutoff` that a registered consumer never received.
pub fn reconcile(
    conn: &mut PgConnection,
    amqp_url: &Brokers,
    topology: &Topology,
    cutoff: DateTime<Utc>,
    republish: bool,
) -> anyhow::Result<Reconciled> {
    let skipped = busy_consumers(amqp_url, topology)?;
    let (keys, names) = expected_deliveries();
    let (keys, names): (Vec<String>, Vec<String>) = keys
        .into_iter()
        .zip(names)
        .filter(|(_, name)| !skipped.iter().any(|busy| &busy.consumer == name))
        .unzip();
    let undelivered: Vec<Undelivered> = diesel::sql_query(
        "SELECT o.order_id, o.event_id, o.routing_key, e.consumer, o.published_at,
                o.payload::text AS payload
         FROM outbox o
         JOIN unnest($2::text[], $3::text[]) AS e(routing_key, consumer)
           ON e.routing_key = o.routing_key
         WHERE o.published_at IS NOT NULL AND o.published_at < $1
           AND NOT EXISTS (
             SELECT 1 FROM notifications n
             WHERE n.event_id = o.event_id AND n.consumer = e.consumer)
         ORDER BY o.id, e.consumer",
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<Array<Text>, _>(&keys)
    .bind::<Array<Text>, _>(&names)
    .load(conn)?;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let unpublished = diesel::sql_query(
        "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND created_at < $1",
    )
    .bind::<Timestamptz, _>(cutoff)
    .get_result::<Count>(conn)?
    .n;
    let mut republished = 0;
    if republish && !undelivered.is_empty() {
        let mut publisher = Publisher::connect(amqp_url, topology)?;
        for window in undelivered.chunks(WINDOW) {
            let messages: Vec<Outgoing> = window
                .iter()
                .map(|event| {
                    let mut message = Outgoing::new(
                        topology.queue(&event.consumer),
                        event.event_id.to_string(),
                        event.payload.clone().into_bytes(),
                    );
                    if let Some(at) = event.published_at {
                        message.timestamp = at.timestamp().max(0) as u64;
                    }
                    message
                })
                .collect();
            publisher.publish("", &messages)?;
            republished += messages.len() as u64;
        }
        publisher.close();
    }
    Ok(Reconciled {
        undelivered,
        republished,
        skipped,
        unpublished,
    })
}

/// Consumers with messages ready in their work or retry queues.
fn busy_consumers(amqp_url: &Brokers, topology: &Topology) -> anyhow::Result<Vec<Busy>> {
    let mut connection = messaging::connect(amqp_url)?;
    let channel = topology.declare(&mut connection)?;
    let mut busy = Vec::new();
    for consumer in &topology.consumers {
        let mut queued = messaging::queue_counts(&channel, &topology.queue(consumer.name))?.0;
        for delay in &topology.retry_delays {
            queued +=
                messaging::queue_counts(&channel, &topology.retry_queue(consumer.name, *delay))?.0;
        }
        if queued > 0 {
            busy.push(Busy {
                consumer: consumer.name.to_string(),
                queued,
            });
        }
    }
    let _ = channel.close();
    let _ = connection.close();
    Ok(busy)
}
