//! The consumer runtime: consumes a work queue with manual acks, runs a
//! [`Handler`] on each message, and routes failures — transient ones to a
//! delayed retry queue, permanent or exhausted ones to the dead-letter queue
//! — always publishing (confirmed) before acking, so nothing is lost.
//! Reconnects with backoff when the broker goes away.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Brokers;
use amiquip::{
    AmqpProperties, AmqpValue, Channel, ConsumerMessage, ConsumerOptions, Delivery, FieldTable,
};
use anyhow::{bail, Context};
use chrono::Utc;
use crossbeam_channel::RecvTimeoutError;

use super::table::{header_int, header_str, truncate};
use super::topology::{ConsumerSpec, Topology};
use super::{cancel_and_drain, connect, Confirms, Outgoing};
use crate::reconnect::{self, Backoff};
use crate::shutdown::{Activity, Shutdown};

/// Headers this tool stamps on retried and dead-lettered messages. The
/// broker's own `x-death` is never relied on.
pub mod headers {
    pub const ATTEMPTS: &str = "x-ordctl-attempts";
    pub const FAILURE: &str = "x-ordctl-failure";
    pub const LAST_ERROR: &str = "x-ordctl-last-error";
    pub const FIRST_FAILED_AT: &str = "x-ordctl-first-failed-at";
    pub const LAST_FAILED_AT: &str = "x-ordctl-last-failed-at";
    pub const ORIGINAL_EXCHANGE: &str = "x-ordctl-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-ordctl-original-routing-key";
    pub const QUEUE: &str = "x-ordctl-queue";
    pub const REPLAYS: &str = "x-ordctl-replays";
}

/// Why a message could not be handled; decides retry versus dead letter.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Might work later: a service unreachable, an SMTP 4xx, a timeout.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Will never work: a malformed event, an unknown user, an SMTP 5xx.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Not this message's fault: a service every message needs is out (the
    /// SMTP server refuses the connection, the password, the certificate).
    /// The slot holds the message, unacked and without using an attempt,
    /// and tries it again after a pause, until the service is back.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

impl HandleError {
    pub fn class(&self) -> &'static str {
        match self {
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// A message as the handler sees it.
#[derive(Clone)]
pub struct Message<'a> {
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    /// 1 for the first attempt, then one more per retry.
    pub attempt: u32,
    /// The runtime's `message` span: every line it logs about this message
    /// is in it. A handler records what it learns (`order_id`) here.
    pub span: tracing::Span,
}

impl<'a> Message<'a> {
    fn of(delivery: &'a Delivery) -> Self {
        let properties = &delivery.properties;
        let headers = properties.headers().as_ref();
        let attempt = header_int(headers, headers::ATTEMPTS).unwrap_or(0).max(0) as u32 + 1;
        let message_id = properties.message_id().as_deref();
        Self {
            body: &delivery.body,
            message_id,
            attempt,
            span: tracing::info_span!(
                "message",
                message_id = message_id.unwrap_or("-"),
                attempt,
                order_id = tracing::field::Empty
            ),
        }
    }
}

/// What happened to a failed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Retrying { delay: Duration },
    DeadLettered,
}

/// Where a failed attempt goes: a transient failure with attempts left is
/// retried after the delay of its attempt (the last delay repeats once they
/// run out); anything else, or the last allowed attempt, is dead-lettered.
/// `attempt` counts from 1.
pub fn route(
    error: &HandleError,
    attempt: u32,
    max_attempts: u32,
    delays: &[Duration],
) -> Disposition {
    let delay = match error {
        HandleError::Transient(_) if attempt < max_attempts => {
            let index = (attempt.saturating_sub(1) as usize).min(delays.len().saturating_sub(1));
            delays.get(index).copied()
        }
        _ => None,
    };
    match delay {
        Some(delay) => Disposition::Retrying { delay },
        None => Disposition::DeadLettered,
    }
}

/// What the runtime runs on each message of one consumer's queue.
/// Implementations must be idempotent: a message can arrive twice.
pub trait Handler: Send + Sync {
    fn spec(&self) -> ConsumerSpec;

    /// Handles a batch of messages — the ones the broker had already sent
    /// when the slot took the first, a single one under light load — and
    /// returns one result per message, in order. One message's failure
    /// must not fail the others.
    fn handle(&self, messages: &[Message<'_>]) -> Vec<Result<(), HandleError>>;

    /// Called after a failure was routed (retry or dead letter), before the
    /// message is acked, e.g. to write a delivery log. Errors are logged.
    fn failed(
        &self,
        _message: &Message<'_>,
        _error: &HandleError,
        _disposition: Disposition,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Makes everything this handler recorded so far durable. The runtime
    /// calls it before acking the messages handled since the last call, so
    /// a handler may commit its records without waiting for the disk (one
    /// flush then covers many messages) and still never have a message
    /// acked whose record could be lost.
    fn durable(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Messages handled at once (one channel and thread each).
    pub concurrency: u16,
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
}

/// Consumes until `shutdown`, reconnecting with backoff on any broker error.
pub fn run(
    brokers: &Brokers,
    topology: &Topology,
    handler: &dyn Handler,
    options: &RunOptions,
    shutdown: &Shutdown,
    activity: &Activity,
) {
    reconnect::until_shutdown("consumer", shutdown, || {
        session(brokers, topology, handler, options, shutdown, activity)
    });
}

fn session(
    brokers: &Brokers,
    topology: &Topology,
    handler: &dyn Handler,
    options: &RunOptions,
    shutdown: &Shutdown,
    activity: &Activity,
) -> anyhow::Result<()> {
    let mut connection = connect(brokers)?;
    let setup = topology.declare_consumer(&mut connection, handler.spec().name)?;
    setup.close()?;
    let channels = (0..options.concurrency.max(1))
        .map(|_| connection.open_channel(None))
        .collect::<Result<Vec<_>, _>>()
        .context("opening channels")?;
    tracing::info!(queue = %topology.queue(handler.spec().name), concurrency = channels.len(), "consuming");

    let failed = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let slots: Vec<_> = channels
            .into_iter()
            .map(|channel| {
                let failed = &failed;
                scope.spawn(move || {
                    let result = Slot {
                        channel: &channel,
                        topology,
                        handler,
                        options,
                        activity,
                    }
                    .run(shutdown, failed);
                    if result.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    let _ = channel.close();
                    result
                })
            })
            .collect();
        // Join every slot before reporting the first error.
        let results: Vec<_> = slots
            .into_iter()
            .map(|slot| {
                slot.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a consumer thread panicked")))
            })
            .collect();
        results.into_iter().collect::<anyhow::Result<()>>()
    });
    let _ = connection.close();
    result
}

/// How long a slot pauses after consecutive transient failures, at most.
const SLOT_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long a slot holding a message through an outage waits between
/// tries, at most.
const OUTAGE_PAUSE_MAX: Duration = Duration::from_secs(10);
/// Unacked messages a slot may hold: the broker sends the next ones while
/// it handles the current batch, so the slot never waits for a round trip
/// between messages. Also the largest batch: the messages waiting when the
/// slot takes one are handled together (one delivery transaction, see
/// [`Handler::handle`]). Handled messages are acked once the slot holds
/// this many or goes quiet ([`ACK_WHEN_QUIET`]), after one
/// [`Handler::durable`] — one disk flush and one ack for all of them. They
/// are handled in order, and a shutdown or crash returns the unacked ones
/// to the queue.
pub const PREFETCH_PER_SLOT: u16 = 16;
/// A slot acks what it handled once no message came for this long.
const ACK_WHEN_QUIET: Duration = Duration::from_millis(100);

/// One channel, one batch of messages at a time.
struct Slot<'a> {
    channel: &'a Channel,
    topology: &'a Topology,
    handler: &'a dyn Handler,
    options: &'a RunOptions,
    activity: &'a Activity,
}

impl Slot<'_> {
    fn run(&self, shutdown: &Shutdown, failed: &AtomicBool) -> anyhow::Result<()> {
        self.channel.qos(0, PREFETCH_PER_SLOT, false)?;
        let mut confirms = Confirms::enable(self.channel)?;
        let queue = self.topology.queue(self.handler.spec().name);
        let consumer = self
            .channel
            .basic_consume(queue.as_str(), ConsumerOptions::default())?;
        // Consecutive transient failures: during an outage (SMTP or
        // PostgreSQL down) the slot slows down instead of burning through
        // the queue's retry budget.
        let mut backoff = Backoff::up_to(SLOT_PAUSE_MAX);
        // Handled, not yet acked: waiting for one durable() for all.
        let mut handled: Vec<Delivery> = Vec::new();
        while !shutdown.is_triggered() && !failed.load(Ordering::SeqCst) {
            let first = match consumer.receiver().recv_timeout(ACK_WHEN_QUIET) {
                Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                Ok(other) => bail!("consumer on {queue} stopped: {other:?}"),
                Err(RecvTimeoutError::Timeout) => {
                    self.ack(&mut handled)?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => bail!("consumer on {queue} disconnected"),
            };
            // The messages already here join the first one's batch.
            let mut batch = vec![first];
            let mut stopped = None;
            while batch.len() < usize::from(PREFETCH_PER_SLOT) {
                match consumer.receiver().try_recv() {
                    Ok(ConsumerMessage::Delivery(delivery)) => batch.push(delivery),
                    Ok(other) => {
                        stopped = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.activity.begin();
            let result = self.process(&mut confirms, batch, shutdown, &mut handled);
            self.activity.end();
            let transient = result?;
            if let Some(other) = stopped {
                bail!("consumer on {queue} stopped: {other:?}");
            }
            // Ack once the slot holds its most, or when no message came
            // for a while: the flush and the ack wait neither a message
            // already pushed to this slot nor, at a steady low rate, each
            // message, which would make one disk flush per email.
            if transient || handled.len() >= usize::from(PREFETCH_PER_SLOT) {
                self.ack(&mut handled)?;
            }
            if transient {
                shutdown.sleep(backoff.next_delay());
            } else {
                backoff.reset();
            }
        }
        self.ack(&mut handled)?;
        // A message delivered meanwhile is not acked, so the broker
        // requeues it when the channel closes.
        cancel_and_drain(&consumer)?;
        Ok(())
    }

    /// Acks the handled deliveries once the handler made their records
    /// durable: one ack for all, the last one's with `multiple`, which is
    /// right because the slot takes and handles its messages in order —
    /// every earlier delivery on this channel is acked or in `handled`. If
    /// the flush fails, none is acked: the broker redelivers them and the
    /// delivery log makes the repeat harmless.
    fn ack(&self, handled: &mut Vec<Delivery>) -> anyhow::Result<()> {
        if handled.is_empty() {
            return Ok(());
        }
        self.handler
            .durable()
            .context("making the delivery log durable before acking")?;
        let last = handled.pop().expect("not empty");
        handled.clear();
        last.ack_multiple(self.channel).context("acking")
    }

    /// Handles a batch of deliveries and adds them to `handled`, to be
    /// acked — each failed one after its retry or dead letter was
    /// confirmed. An error leaves them unacked for redelivery. Returns
    /// whether one failed transiently. Through an outage it acks what was
    /// handled before, holds the messages the outage stopped and tries them
    /// again; a shutdown meanwhile leaves the batch unacked (requeued).
    fn process(
        &self,
        confirms: &mut Confirms,
        batch: Vec<Delivery>,
        shutdown: &Shutdown,
        handled: &mut Vec<Delivery>,
    ) -> anyhow::Result<bool> {
        let messages: Vec<Message> = batch.iter().map(Message::of).collect();
        let mut results: Vec<Option<Result<(), HandleError>>> =
            messages.iter().map(|_| None).collect();
        let mut pause = Backoff::up_to(OUTAGE_PAUSE_MAX);
        let mut holding = false;
        loop {
            let waiting: Vec<usize> = (0..messages.len())
                .filter(|&i| results[i].is_none())
                .collect();
            let subset: Vec<Message> = waiting.iter().map(|&i| messages[i].clone()).collect();
            let mut outage = false;
            for (&i, result) in waiting.iter().zip(self.handle(&subset)) {
                match result {
                    // The handler's service logs the outage once; per
                    // message it is only a debug line.
                    Err(HandleError::Unavailable(error)) => {
                        let _entered = messages[i].span.enter();
                        tracing::debug!(%error, "holding the message through an outage");
                        outage = true;
                    }
                    result => results[i] = Some(result),
                }
            }
            if !outage {
                break;
            }
            self.ack(handled)?;
            // Waiting for a service is not work: `--exit-when-idle` may
            // end the worker, and the messages are requeued.
            if !holding {
                self.activity.end();
                holding = true;
            }
            if shutdown.sleep(pause.next_delay()) {
                self.activity.begin();
                return Ok(false);
            }
        }
        if holding {
            self.activity.begin();
        }
        let mut transient = false;
        for ((delivery, message), result) in batch.iter().zip(&messages).zip(results) {
            if let Some(Err(error)) = result {
                transient |= matches!(error, HandleError::Transient(_));
                let _entered = message.span.enter();
                self.route_failure(confirms, delivery, message, &error)?;
            }
        }
        handled.extend(batch);
        Ok(transient)
    }

    /// Publishes a failed message to its retry queue or the dead-letter
    /// queue (confirmed), then lets the handler record the failure.
    fn route_failure(
        &self,
        confirms: &mut Confirms,
        delivery: &Delivery,
        message: &Message<'_>,
        error: &HandleError,
    ) -> anyhow::Result<()> {
        let spec = self.handler.spec();
        let attempt = message.attempt;
        let disposition = route(
            error,
            attempt,
            self.options.max_attempts,
            &self.topology.retry_delays,
        );
        let (exchange, routing_key) = match disposition {
            Disposition::Retrying { delay } => {
                tracing::warn!(%error, "attempt {attempt} failed ({}); retrying in {delay:?}", error.class());
                (
                    self.topology.retry_exchange(),
                    self.topology.retry_key(spec.name, delay),
                )
            }
            Disposition::DeadLettered => {
                tracing::error!(%error, "attempt {attempt} failed ({}); dead-lettered", error.class());
                (self.topology.dead_exchange(), spec.name.to_string())
            }
        };
        let mut outgoing = failed_copy(delivery, &self.topology.queue(spec.name), error, attempt);
        outgoing.routing_key = routing_key;
        confirms.publish(self.channel, &exchange, &[outgoing])?;
        if let Err(log_error) = self.handler.failed(message, error, disposition) {
            tracing::warn!("recording the failure: {log_error:#}");
        }
        Ok(())
    }

    /// Runs the handler on a batch. A poison message must not take the
    /// worker down, nor fail its neighbours: if the handler panics, each
    /// message is tried alone, and one that panics alone fails permanently.
    fn handle(&self, messages: &[Message<'_>]) -> Vec<Result<(), HandleError>> {
        let run = |messages: &[Message<'_>]| {
            std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.handle(messages)))
        };
        match run(messages) {
            Ok(results) => results,
            Err(_) if messages.len() > 1 => messages
                .iter()
                .flat_map(|message| self.handle(std::slice::from_ref(message)))
                .collect(),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                vec![Err(HandleError::Permanent(anyhow::anyhow!(
                    "the handler panicked: {what}"
                )))]
            }
        }
    }
}

/// The message to republish after a failure: same body and properties,
/// headers updated with this attempt.
fn failed_copy(delivery: &Delivery, queue: &str, error: &HandleError, attempt: u32) -> Outgoing {
    let properties: &AmqpProperties = &delivery.properties;
    let previous = properties.headers().as_ref();
    let mut headers: FieldTable = previous.cloned().unwrap_or_default();
    let now = Utc::now().to_rfc3339();
    let mut set = |key: &str, value: AmqpValue| {
        headers.insert(key.to_string(), value);
    };
    set(
        headers::ATTEMPTS,
        AmqpValue::LongLongInt(i64::from(attempt)),
    );
    set(
        headers::FAILURE,
        AmqpValue::LongString(error.class().to_string()),
    );
    set(
        headers::LAST_ERROR,
        AmqpValue::LongString(truncate(&error.to_string(), 1000)),
    );
    set(headers::LAST_FAILED_AT, AmqpValue::LongString(now.clone()));
    if header_str(previous, headers::FIRST_FAILED_AT).is_none() {
        set(headers::FIRST_FAILED_AT, AmqpValue::LongString(now));
    }
    if header_str(previous, headers::ORIGINAL_EXCHANGE).is_none() {
        set(
            headers::ORIGINAL_EXCHANGE,
            AmqpValue::LongString(delivery.exchange.clone()),
        );
        set(
            headers::ORIGINAL_ROUTING_KEY,
            AmqpValue::LongString(delivery.routing_key.clone()),
        );
    }
    set(headers::QUEUE, AmqpValue::LongString(queue.to_string()));
    Outgoing {
        routing_key: String::new(),
        message_id: properties.message_id().clone().unwrap_or_default(),
        body: delivery.body.clone(),
        headers,
        timestamp: properties
            .timestamp()
            .unwrap_or_else(|| Utc::now().timestamp().max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: [Duration; 3] = [
        Duration::from_secs(5),
        Duration::from_secs(30),
        Duration::from_secs(300),
    ];

    fn transient() -> HandleError {
        HandleError::Transient(anyhow::anyhow!("SMTP 451"))
    }

    #[test]
    fn a_transient_failure_waits_longer_at_each_attempt_then_repeats_the_last_delay() {
        let delays: Vec<_> = (1..=4)
            .map(|attempt| route(&transient(), attempt, 10, &DELAYS))
            .collect();
        assert_eq!(
            delays,
            [
                Disposition::Retrying { delay: DELAYS[0] },
                Disposition::Retrying { delay: DELAYS[1] },
                Disposition::Retrying { delay: DELAYS[2] },
                Disposition::Retrying { delay: DELAYS[2] },
            ]
        );
    }

    #[test]
    fn the_last_allowed_attempt_is_dead_lettered() {
        assert_eq!(
            route(&transient(), 4, 5, &DELAYS),
            Disposition::Retrying { delay: DELAYS[2] }
        );
        assert_eq!(
            route(&transient(), 5, 5, &DELAYS),
            Disposition::DeadLettered
        );
        assert_eq!(
            route(&transient(), 1, 1, &DELAYS),
            Disposition::DeadLettered
        );
    }

    #[test]
    fn a_permanent_failure_is_dead_lettered_at_once() {
        let permanent = HandleError::Permanent(anyhow::anyhow!("unknown user"));
        assert_eq!(route(&permanent, 1, 5, &DELAYS), Disposition::DeadLettered);
    }

    #[test]
    fn without_retry_delays_nothing_is_retried() {
        assert_eq!(route(&transient(), 1, 5, &[]), Disposition::DeadLettered);
    }
}
