//! `ordctl replay-dlq`: moves dead letters back to their work queue with the
//! attempt count reset and a replay counter stamped. A message leaves the
//! DLQ only after its republish was confirmed (it is fetched unacked, so a
//! crash mid-run requeues it), and a run moves at most what the DLQ held
//! when it started, so a message that fails again is not looped.

use amiquip::{AmqpValue, FieldTable, Get};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde::Serialize;

use crate::db::delivery_attempts::{self, NewAttempt};
use crate::db::orders;
use crate::domain::events::Event;
use crate::error::InvalidInput;
use crate::messaging::consumer::headers;
use crate::messaging::topology::Topology;
use crate::messaging::{self, header_int, header_str, Confirms, Outgoing};

#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Move at most this many.
    pub limit: Option<u64>,
    /// Only this order's dead letters.
    pub order_id: Option<i64>,
    /// Only this consumer's dead-letter queue; `None`: every consumer's.
    pub consumer: Option<String>,
    /// List what would move; move nothing.
    pub dry_run: bool,
}

/// One dead letter, as listed by `--dry-run` and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub consumer: String,
    pub queue: String,
    pub message_id: Option<String>,
    pub order_id: Option<i64>,
    pub reason: Option<String>,
    pub failure: Option<String>,
    pub attempts: i64,
    pub replays: i64,
    pub dead_since: Option<DateTime<Utc>>,
    pub age_secs: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub replayed: u64,
    /// Of the dead letters there when the run started, how many are left.
    pub remaining: u64,
    pub dry_run: bool,
    /// What was moved (or, with `--dry-run`, would be).
    pub messages: Vec<DeadLetter>,
}

/// Replays dead letters of every consumer in `topology`. `progress` is
/// called once per message looked at.
pub fn replay(
    conn: &mut PgConnection,
    amqp_url: &url::Url,
    topology: &Topology,
    options: &ReplayOptions,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<ReplayReport> {
    if let Some(order_id) = options.order_id {
        if orders::find(conn, order_id)?.is_none() {
            return Err(InvalidInput::new(format!("unknown order {order_id}")).into());
        }
    }
    let mut connection = messaging::connect(amqp_url)?;
    let channel = connection.open_channel(None)?;
    topology.declare(&channel)?;
    let mut confirms = Confirms::enable(&channel)?;

    let mut report = ReplayReport {
        replayed: 0,
        remaining: 0,
        dry_run: options.dry_run,
        messages: Vec::new(),
    };
    let wanted_consumers = topology.consumers.iter().filter(|consumer| {
        options
            .consumer
            .as_deref()
            .is_none_or(|name| name == consumer.name)
    });
    for consumer in wanted_consumers {
        let dlq = topology.dlq(consumer.name);
        let work_queue = topology.queue(consumer.name);
        let (at_start, _) = messaging::queue_counts(&channel, &dlq)?;
        // Kept messages stay unacked until the end so they are not fetched
        // twice; then they go back to the DLQ where they were.
        let mut kept: Vec<Get> = Vec::new();
        let replayed_before = report.replayed;
        for looked_at in 1..=at_start {
            // `messages` holds what moved, or with --dry-run what would.
            if options
                .limit
                .is_some_and(|limit| report.messages.len() as u64 >= limit)
            {
                break;
            }
            let Some(get) = channel
                .basic_get(dlq.as_str(), false)
                .context("reading the DLQ")?
            else {
                break;
            };
            progress(looked_at, at_start);
            let letter = describe(&get, consumer.name, &dlq);
            let wanted = options
                .order_id
                .is_none_or(|id| letter.order_id == Some(id));
            if !wanted || options.dry_run {
                if wanted {
                    report.messages.push(letter);
                }
                kept.push(get);
                continue;
            }
            confirms.publish(&channel, "", &[replayed_copy(&get, &work_queue)])?;
            record_replay(conn, &get, &letter);
            get.ack(&channel)
                .context("removing the replayed message from the DLQ")?;
            report.replayed += 1;
            report.messages.push(letter);
        }
        for get in kept {
            get.nack(&channel, true)
                .context("returning a kept message to the DLQ")?;
        }
        // Counted, not asked: the broker requeues nacked messages
        // asynchronously, so a passive declare now could undercount.
        report.remaining += at_start - (report.replayed - replayed_before);
    }
    let _ = channel.close();
    let _ = connection.close();
    Ok(report)
}

fn describe(get: &Get, consumer: &str, queue: &str) -> DeadLetter {
    let properties = &get.delivery.properties;
    let found = properties.headers().as_ref();
    let dead_since = header_str(found, headers::LAST_FAILED_AT)
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.with_timezone(&Utc));
    DeadLetter {
        consumer: consumer.to_string(),
        queue: queue.to_string(),
        message_id: properties.message_id().clone(),
        order_id: Event::from_json(&get.delivery.body)
            .ok()
            .map(|event| event.order_id().0),
        reason: header_str(found, headers::LAST_ERROR).map(str::to_string),
        failure: header_str(found, headers::FAILURE).map(str::to_string),
        attempts: header_int(found, headers::ATTEMPTS).unwrap_or(0),
        replays: header_int(found, headers::REPLAYS).unwrap_or(0),
        dead_since,
        age_secs: dead_since.map(|at| (Utc::now() - at).num_seconds().max(0)),
    }
}

/// The message as it goes back: same body and properties, attempts reset,
/// replay counter incremented, failure history kept for `trace`.
fn replayed_copy(get: &Get, work_queue: &str) -> Outgoing {
    let properties = &get.delivery.properties;
    let mut found: FieldTable = properties.headers().clone().unwrap_or_default();
    let replays = header_int(Some(&found), headers::REPLAYS).unwrap_or(0) + 1;
    found.remove(headers::ATTEMPTS);
    found.insert(
        headers::REPLAYS.to_string(),
        AmqpValue::LongLongInt(replays),
    );
    let mut message = Outgoing::new(
        work_queue,
        properties.message_id().clone().unwrap_or_default(),
        get.delivery.body.clone(),
    );
    message.headers = found;
    if let Some(timestamp) = properties.timestamp() {
        message.timestamp = *timestamp;
    }
    message
}

/// Writes the replay into the order's history; the move itself already
/// happened, so a failure here is only logged.
fn record_replay(conn: &mut PgConnection, get: &Get, letter: &DeadLetter) {
    let Ok(event) = Event::from_json(&get.delivery.body) else {
        return;
    };
    let attempt = NewAttempt {
        event_id: event.event_id(),
        consumer: &letter.consumer,
        order_id: event.order_id().0,
        attempt: letter.attempts as i32,
        outcome: delivery_attempts::REPLAYED,
        error: letter.reason.as_deref(),
        smtp_reply: None,
    };
    if let Err(error) = delivery_attempts::record(conn, &attempt) {
        tracing::warn!(event_id = %event.event_id(), order_id = event.order_id().0, "recording the replay: {error}");
    }
}
