//! `ordctl replay-dlq`: moves dead letters back to their work queue with the
//! attempt count reset and a replay counter stamped. A message leaves the
//! DLQ only after its republish was confirmed (it is fetched unacked, so a
//! crash mid-run requeues it). Republishes go out in windows of one
//! confirm wait each, the next windows sent while earlier ones await their
//! confirms; each window's originals are acked once all its copies are
//! confirmed, oldest first, so a backlog of thousands moves in seconds.
//!
//! Each message moved is stamped with the run's id: one that fails again
//! and comes back while the run is still going is recognised and left
//! alone, so a run never loops, without counting the queue at the start.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use amiquip::{
    AmqpValue, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery, FieldTable,
};
use anyhow::Context;
use chrono::{DateTime, Utc};
use crossbeam_channel::RecvTimeoutError;
use diesel::{Connection, PgConnection};
use serde::Serialize;
use uuid::Uuid;

use crate::db::delivery_attempts::{self, NewAttempt};
use crate::db::orders;
use crate::domain::events::Event;
use crate::domain::{AttemptOutcome, OrderId};
use crate::error::InvalidInput;
use crate::messaging::consumer::headers;
use crate::messaging::table::{header_int, header_str};
use crate::messaging::topology::Topology;
use crate::messaging::{self, Confirms, Link, Outgoing};

#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Move at most this many.
    pub limit: Option<u64>,
    /// Only this order's dead letters.
    pub order_id: Option<OrderId>,
    /// Only this consumer's dead-letter queue; `None`: every consumer's.
    pub consumer: Option<String>,
    /// List what would move; move nothing.
    pub dry_run: bool,
}

/// One dead letter, as listed by `--dry-run` and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The event's id, when the body is an event.
    #[serde(skip)]
    pub event_id: Option<Uuid>,
    pub consumer: String,
    pub queue: String,
    pub message_id: Option<String>,
    pub order_id: Option<OrderId>,
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
    /// What the dead-letter queues hold when the run ends.
    pub remaining: u64,
    pub dry_run: bool,
    /// What was moved (or, with `--dry-run`, would be).
    pub messages: Vec<DeadLetter>,
}

/// Header stamped on every message a run moves: the run's id.
pub const RUN_HEADER: &str = "x-ordctl-replay-run";
/// Republishes per publisher-confirm wait.
const WINDOW: usize = 100;
/// Windows sent whose confirms are still awaited: the broker works on
/// these while the run reads, sends and writes history.
const IN_FLIGHT: usize = 4;
/// Replays written to the orders' history per insert.
const HISTORY_BATCH: usize = 1_000;
/// Unacked deliveries the broker may push ahead while messages move.
const PREFETCH: u16 = 1_000;
/// A pause this long in deliveries means the DLQ may be drained: the
/// broker is asked whether anything is still ready.
const QUIET: Duration = Duration::from_millis(100);
/// The pause that means the same once every message counted at the start
/// has come.
const CAUGHT_UP: Duration = Duration::from_millis(5);
/// How long returned messages may take to be ready in the DLQ again.
const SETTLE: Duration = Duration::from_secs(30);

/// Replays dead letters of every consumer in `topology`. `progress` is
/// called once per message looked at, with an estimate of the total.
pub fn replay(
    conn: &mut PgConnection,
    amqp_url: &crate::messaging::Brokers,
    topology: &Topology,
    options: &ReplayOptions,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<ReplayReport> {
    if let Some(order_id) = options.order_id {
        if orders::find(conn, order_id)?.is_none() {
            return Err(InvalidInput::new(format!("unknown order {order_id}")).into());
        }
    }
    let mut link = amqp_url.open()?;
    let channel = topology.declare(&mut link)?;
    let result = replay_on(conn, &mut link, &channel, topology, options, progress);
    // Whatever happened: a close that never hangs (the broker may block
    // us), and anything still unacked goes back to the DLQ.
    link.close(Some(channel));
    result
}

fn replay_on(
    conn: &mut PgConnection,
    link: &mut Link,
    channel: &Channel,
    topology: &Topology,
    options: &ReplayOptions,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<ReplayReport> {
    let mut run = Run {
        id: Uuid::new_v4().to_string(),
        confirms: Confirms::enable(channel)?,
        channel,
        link,
        conn,
        options,
        report: ReplayReport {
            replayed: 0,
            remaining: 0,
            dry_run: options.dry_run,
            messages: Vec::new(),
        },
        looked_at: 0,
        consumers: Vec::new(),
        in_flight: VecDeque::new(),
        history: Vec::new(),
    };
    let wanted_consumers: Vec<&str> = topology
        .consumers
        .iter()
        .map(|consumer| consumer.name)
        .filter(|name| {
            options
                .consumer
                .as_deref()
                .is_none_or(|wanted| wanted == *name)
        })
        .collect();
    for consumer in &wanted_consumers {
        run.consumer(
            consumer,
            &topology.dlq(consumer),
            &topology.queue(consumer),
            progress,
        )?;
    }
    // Asked, not computed: what the DLQs hold now that the run is over.
    let mut remaining = 0;
    for consumer in &wanted_consumers {
        remaining += messaging::queue_counts(channel, &topology.dlq(consumer))?.0;
    }
    let mut report = run.report;
    report.remaining = remaining;
    Ok(report)
}

/// One replay run's state.
struct Run<'a> {
    id: String,
    confirms: Confirms,
    channel: &'a Channel,
    link: &'a mut Link,
    conn: &'a mut PgConnection,
    options: &'a ReplayOptions,
    report: ReplayReport,
    looked_at: u64,
    consumers: Vec<Consumer<'a>>,
    /// Windows republished, oldest first, with the tag of each one's last
    /// publish: their originals are still in the DLQ, unacked.
    in_flight: VecDeque<(u64, Vec<(Delivery, DeadLetter)>)>,
    /// Moved, not yet written to the orders' history.
    history: Vec<DeadLetter>,
}

impl<'a> Run<'a> {
    /// Moves (or lists) one consumer's dead letters.
    fn consumer(
        &mut self,
        consumer_name: &str,
        dlq: &str,
        work_queue: &str,
        progress: &dyn Fn(u64, u64),
    ) -> anyhow::Result<()> {
        // Kept messages stay unacked until the end so they are not fetched
        // twice; then they go back to the DLQ where they were. Keeping
        // needs an unlimited prefetch; moving alone, a bounded one.
        let keeps = self.options.dry_run || self.options.order_id.is_some();
        let (estimate, _) = messaging::queue_counts(self.channel, dlq)?;
        self.channel
            .qos(0, if keeps { 0 } else { PREFETCH }, false)
            .context("setting the prefetch")?;
        let consumer = self
            .channel
            .basic_consume(dlq, ConsumerOptions::default())
            .with_context(|| format!("consuming {dlq}"))?;
        let mut kept: Vec<Delivery> = Vec::new();
        let mut window: Vec<(Delivery, DeadLetter)> = Vec::with_capacity(WINDOW);
        let mut listed = 0u64;
        let mut seen = 0u64;
        let mut last_delivery = Instant::now();
        let result = loop {
            // `messages` holds what moved, or with --dry-run what would.
            if self.options.limit.is_some_and(|limit| listed >= limit) {
                break Ok(());
            }
            // Once as many came as the DLQ held at the start, a short pause
            // is enough to ask the broker whether it holds more.
            let pause = if seen >= estimate { CAUGHT_UP } else { QUIET };
            let delivery = match consumer.receiver().recv_timeout(pause) {
                Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                Ok(other) => break Err(anyhow::anyhow!("reading {dlq}: {other:?}")),
                Err(RecvTimeoutError::Timeout) => {
                    // Nothing came for a while: move what is pending, and
                    // stop once the broker has nothing ready either.
                    if let Err(error) = self
                        .flush(&mut window, work_queue)
                        .and_then(|()| self.settle(0))
                    {
                        break Err(error);
                    }
                    // None ready is not yet the end while fewer came than
                    // the DLQ held: the broker counts what it has sent us
                    // but we have not read yet as unacked, not ready. Only
                    // if none comes for a long while (another process took
                    // them) does the run end short of the count.
                    match messaging::queue_counts(self.channel, dlq) {
                        Ok((0, _)) if seen >= estimate || last_delivery.elapsed() > SETTLE => {
                            break Ok(())
                        }
                        Ok(_) => continue,
                        Err(error) => break Err(error),
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(anyhow::anyhow!("reading {dlq}: the channel closed"))
                }
            };
            last_delivery = Instant::now();
            let headers = delivery.properties.headers().as_ref();
            if header_str(headers, RUN_HEADER) == Some(self.id.as_str()) {
                // Moved by this very run and dead again: everything older
                // has been looked at.
                kept.push(delivery);
                break Ok(());
            }
            self.looked_at += 1;
            seen += 1;
            progress(self.looked_at, estimate.max(self.looked_at));
            let letter = describe(&delivery, consumer_name, dlq);
            let wanted = self
                .options
                .order_id
                .is_none_or(|id| letter.order_id == Some(id));
            if wanted {
                listed += 1;
            }
            if !wanted || self.options.dry_run {
                if wanted {
                    self.report.messages.push(letter);
                }
                kept.push(delivery);
                continue;
            }
            window.push((delivery, letter));
            if window.len() >= WINDOW {
                if let Err(error) = self.flush(&mut window, work_queue) {
                    break Err(error);
                }
            }
        };
        let flushed = result
            .and_then(|()| self.flush(&mut window, work_queue))
            .and_then(|()| self.settle(0));
        self.record_history();
        flushed?;
        consumer.cancel().context("cancelling the DLQ consumer")?;
        // Deliveries the broker sent before the cancel are ours to return.
        for message in consumer.receiver().try_iter() {
            if let ConsumerMessage::Delivery(delivery) = message {
                kept.push(delivery);
            }
        }
        // Kept, not dropped, until the channel closes: amiquip's I/O loop
        // fails if a delivery still in flight finds its consumer gone.
        self.consumers.push(consumer);
        self.give_back(kept, dlq)
    }

    /// Republishes the window without waiting for its confirms, then
    /// settles the oldest windows sent while more than [`IN_FLIGHT`] are.
    fn flush(
        &mut self,
        window: &mut Vec<(Delivery, DeadLetter)>,
        work_queue: &str,
    ) -> anyhow::Result<()> {
        if window.is_empty() {
            return Ok(());
        }
        let copies: Vec<Outgoing> = window
            .iter()
            .map(|(get, _)| replayed_copy(get, work_queue, &self.id))
            .collect();
        let last = self
            .confirms
            .send(self.channel, Some(self.link), "", &copies)
            .context("republishing dead letters")?;
        self.in_flight.push_back((last, std::mem::take(window)));
        self.settle(IN_FLIGHT)
    }

    /// Waits for the confirms of the oldest windows sent until at most
    /// `pending` are left, and removes each one's originals from the DLQ
    /// once all its copies are confirmed. A nack or a timeout leaves that
    /// window and every later one in the DLQ (they return when the channel
    /// closes).
    fn settle(&mut self, pending: usize) -> anyhow::Result<()> {
        while self.in_flight.len() > pending {
            let (last, _) = self.in_flight[0];
            self.confirms
                .wait_for(Some(self.link), last)
                .context("republishing dead letters")?;
            let (_, window) = self.in_flight.pop_front().expect("a window in flight");
            // Unless another order's letters are kept unacked on this
            // channel, everything delivered up to the window's last is in
            // this window or in ones already acked: one ack for all of it.
            let ack_all = self.options.order_id.is_none();
            let last = window.len() - 1;
            for (n, (get, letter)) in window.into_iter().enumerate() {
                if !ack_all {
                    get.ack(self.channel)
                } else if n == last {
                    get.ack_multiple(self.channel)
                } else {
                    Ok(())
                }
                .context("removing replayed messages from the DLQ")?;
                self.report.replayed += 1;
                self.history.push(letter);
            }
            if self.history.len() >= HISTORY_BATCH {
                self.record_history();
            }
        }
        Ok(())
    }

    /// Writes the replays moved so far into their orders' history, in one
    /// insert, and adds them to the report.
    fn record_history(&mut self) {
        record_replays(self.conn, &self.history);
        self.report.messages.append(&mut self.history);
    }

    /// Returns kept messages to the DLQ and waits until the broker has them
    /// ready again, so the next command (a replay right after a dry run)
    /// finds the queue as this one found it.
    fn give_back(&mut self, kept: Vec<Delivery>, dlq: &str) -> anyhow::Result<()> {
        if kept.is_empty() {
            return Ok(());
        }
        let (ready_before, _) = messaging::queue_counts(self.channel, dlq)?;
        let returned = kept.len() as u64;
        for get in kept {
            get.nack(self.channel, true)
                .context("returning a kept message to the DLQ")?;
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            let (ready, _) = messaging::queue_counts(self.channel, dlq)?;
            if ready >= ready_before + returned {
                return Ok(());
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "{dlq}: {} of {returned} returned messages not ready after {SETTLE:?}",
                    ready_before + returned - ready
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn describe(get: &Delivery, consumer: &str, queue: &str) -> DeadLetter {
    let properties = &get.properties;
    let found = properties.headers().as_ref();
    let dead_since = header_str(found, headers::LAST_FAILED_AT)
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.with_timezone(&Utc));
    let event = Event::from_json(&get.body).ok();
    DeadLetter {
        event_id: event.as_ref().map(Event::event_id),
        consumer: consumer.to_string(),
        queue: queue.to_string(),
        message_id: properties.message_id().clone(),
        order_id: event.as_ref().map(Event::order_id),
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
fn replayed_copy(get: &Delivery, work_queue: &str, run_id: &str) -> Outgoing {
    let properties = &get.properties;
    let mut found: FieldTable = properties.headers().clone().unwrap_or_default();
    let replays = header_int(Some(&found), headers::REPLAYS).unwrap_or(0) + 1;
    found.remove(headers::ATTEMPTS);
    found.insert(
        headers::REPLAYS.to_string(),
        AmqpValue::LongLongInt(replays),
    );
    found.insert(
        RUN_HEADER.to_string(),
        AmqpValue::LongString(run_id.to_string()),
    );
    let mut message = Outgoing::new(
        work_queue,
        properties.message_id().clone().unwrap_or_default(),
        get.body.clone(),
    );
    message.headers = found;
    if let Some(timestamp) = properties.timestamp() {
        message.timestamp = *timestamp;
    }
    message
}

/// Writes the replays into their orders' history in one insert; the move
/// itself already happened, so a failure here is only logged.
fn record_replays(conn: &mut PgConnection, moved: &[DeadLetter]) {
    let attempts: Vec<NewAttempt<'_>> = moved
        .iter()
        .filter_map(|letter| {
            Some(NewAttempt {
                event_id: letter.event_id?,
                consumer: &letter.consumer,
                order_id: letter.order_id?,
                attempt: letter.attempts as i32,
                outcome: AttemptOutcome::Replayed,
                error: letter.reason.as_deref(),
                smtp_reply: None,
            })
        })
        .collect();
    if attempts.is_empty() {
        return;
    }
    // Without waiting for the disk: the move, which must not be lost, is
    // already confirmed; a crash can lose only this note of it.
    let recorded = conn.transaction(|conn| {
        crate::db::commit_lazily(conn)?;
        delivery_attempts::record_many(conn, &attempts)
    });
    if let Err(error) = recorded {
        tracing::warn!(
            "recording {} replays in the orders' history: {error}",
            attempts.len()
        );
    }
}
