//! The replay figure: a backlog of dead letters in the notifications DLQ
//! moved back by the same library call `ordctl replay-dlq` makes, next to
//! raw RabbitMQ publishing on one channel (as the replay does) with a
//! confirm per 100 messages (its window).

use amiquip::AmqpValue;
use anyhow::Context;
use diesel::prelude::*;
use ordctl::consumers::notifications;
use ordctl::db::schema::orders;
use ordctl::domain::{OrderId, UserId};
use ordctl::messaging::consumer::headers;
use ordctl::messaging::topology::Topology;
use ordctl::messaging::{self, Confirms, Outgoing};
use ordctl::pipeline::replay::{self, ReplayOptions};

use super::measure::{Rate, Stopwatch};
use super::raw;

/// Dead letters published per confirm wait while the backlog is made.
const SETUP_WINDOW: usize = 500;

/// Empties the namespace's queues, then puts `count` dead letters in the
/// notifications DLQ, as the worker leaves them after a permanent failure:
/// `order.created` events of the orders already in the database (so the
/// replay writes their history as it does for real ones), with the failure
/// headers. Emptied first because the sections before leave their orders'
/// events queued (no worker drains what the HTTP section places): the
/// replay publishes into an empty work queue, as the raw figure does into
/// its queue, and as it does for real where workers keep the queue short.
pub fn dead_letter(
    conn: &mut PgConnection,
    amqp_url: &messaging::Brokers,
    topology: &Topology,
    count: u64,
) -> anyhow::Result<()> {
    let orders: Vec<(OrderId, UserId)> = orders::table
        .select((orders::id, orders::user_id))
        .order(orders::id)
        .limit(count as i64)
        .load(conn)
        .context("reading the orders to dead-letter")?;
    anyhow::ensure!(
        !orders.is_empty(),
        "the replay figure needs orders in the benchmark database"
    );
    let dlq = topology.dlq(notifications::SPEC.name);
    let failed_at = chrono::Utc::now().to_rfc3339();
    let letters: Vec<Outgoing> = (0..count as usize)
        .map(|n| {
            let (order_id, user_id) = orders[n % orders.len()];
            let event = raw::sample_event(order_id, user_id);
            let body = serde_json::to_vec(&event).expect("an event serializes");
            let mut letter = Outgoing::new(dlq.as_str(), event.event_id.to_string(), body);
            for (key, value) in [
                (headers::ATTEMPTS, AmqpValue::LongLongInt(1)),
                (headers::FAILURE, AmqpValue::LongString("permanent".into())),
                (
                    headers::LAST_ERROR,
                    AmqpValue::LongString("550 mailbox unavailable (benchmark)".into()),
                ),
                (
                    headers::LAST_FAILED_AT,
                    AmqpValue::LongString(failed_at.clone()),
                ),
            ] {
                letter.headers.insert(key.to_string(), value);
            }
            letter
        })
        .collect();
    let mut connection = messaging::connect(amqp_url)?;
    let channel = topology.declare(&mut connection)?;
    for queue in topology.queue_names() {
        channel
            .queue_purge(queue.as_str())
            .with_context(|| format!("emptying {queue}"))?;
    }
    let mut confirms = Confirms::enable(&channel)?;
    for window in letters.chunks(SETUP_WINDOW) {
        confirms
            .publish(&channel, "", window)
            .context("dead-lettering the benchmark's messages")?;
    }
    let _ = channel.close();
    let _ = connection.close();
    Ok(())
}

/// Runs the replay of every notifications dead letter and times it; the
/// run must move all `count` and leave the DLQ empty.
pub fn measure(
    conn: &mut PgConnection,
    amqp_url: &messaging::Brokers,
    topology: &Topology,
    count: u64,
) -> anyhow::Result<Rate> {
    let options = ReplayOptions {
        consumer: Some(notifications::SPEC.name.to_string()),
        ..ReplayOptions::default()
    };
    let stopwatch = Stopwatch::start();
    let report = replay::replay(conn, amqp_url, topology, &options, &|_, _| {})
        .context("replaying the dead letters")?;
    let rate = stopwatch.rate(report.replayed);
    anyhow::ensure!(
        report.replayed == count && report.remaining == 0,
        "replay-dlq moved {} of {count} dead letters and left {}",
        report.replayed,
        report.remaining
    );
    Ok(rate)
}
