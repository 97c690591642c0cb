//! A tap on the namespace's exchanges for `ordctl tail-queue`: its own
//! exclusive, auto-delete, server-named queue bound beside the pipeline's
//! queues, so watching never takes a message away from a worker (rabtap's
//! "tap, don't steal").
//!
//! The flow tap binds `{ns}.events` with the routing-key pattern and every
//! retry key of `{ns}.retry`; the dead-letter tap binds `{ns}.dead`. Retried
//! and dead-lettered messages are routed by consumer name, so the pattern is
//! matched here against the original routing key this tool stamps on them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Brokers;
use amiquip::{
    AmqpValue, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery, FieldTable,
    QueueDeclareOptions, QueueDeleteOptions,
};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use crossbeam_channel::RecvTimeoutError;
use serde::Serialize;
use serde_json::Value;

use super::consumer::headers;
use super::table::{self, header_int, header_str};
use super::topology::Topology;
use super::{cancel_and_drain, connect};
use crate::error::InvalidInput;
use crate::shutdown::Shutdown;

/// How many messages the tap queue holds for a slow reader (`tail-queue |
/// less`) before the broker drops the oldest: a tap must never grow without
/// bound on a shared broker.
const TAP_QUEUE_MAX_LENGTH: i64 = 10_000;

/// Messages in flight to the tap at once; the rest wait on the broker.
const PREFETCH: u16 = 100;

/// A topic-exchange binding pattern: dot-separated words, `*` for exactly
/// one word, `#` for zero or more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingPattern(String);

impl RoutingPattern {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        // AMQP routing keys and binding keys are short strings.
        if raw.is_empty() || raw.len() > 255 {
            return Err(InvalidInput::new(format!(
                "invalid routing-key pattern {raw:?}: use 1 to 255 bytes, e.g. order.* or #"
            )));
        }
        Ok(Self(raw.to_string()))
    }

    /// Matches `routing_key` the way a topic exchange does.
    pub fn matches(&self, routing_key: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let key: Vec<&str> = routing_key.split('.').collect();
        topic_match(&pattern, &key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RoutingPattern {
    fn default() -> Self {
        Self("#".into())
    }
}

impl std::str::FromStr for RoutingPattern {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

fn topic_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| topic_match(rest, &key[skip..])),
        Some((word, rest)) => match key.split_first() {
            Some((first, key_rest)) => {
                (*word == "*" || word == first) && topic_match(rest, key_rest)
            }
            None => false,
        },
    }
}

/// What to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// New events and retries.
    Flow,
    /// What is being dead-lettered.
    DeadLetters,
}

#[derive(Clone, Debug)]
pub struct TapOptions {
    pub source: Source,
    pub pattern: RoutingPattern,
    /// Stop after this many messages.
    pub limit: Option<u64>,
    /// Stop after this long without a message.
    pub idle_timeout: Option<Duration>,
}

/// Why the tap stopped (every one of them is a normal end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupted,
    Limit,
    Idle,
}

/// One message seen by the tap: a copy, the pipeline got its own.
#[derive(Clone, Debug, Serialize)]
pub struct Tapped {
    pub received_at: DateTime<Utc>,
    /// The exchange it was published to: `{ns}.events`, `{ns}.retry` or
    /// `{ns}.dead`.
    pub exchange: String,
    pub routing_key: String,
    /// The event's own routing key, also for a retried or dead-lettered copy.
    pub original_routing_key: String,
    pub message_id: Option<String>,
    /// When it was first published (the AMQP timestamp property).
    pub published_at: Option<DateTime<Utc>>,
    pub headers: BTreeMap<String, Value>,
    /// Parsed JSON when the body is JSON, otherwise the body as text.
    pub body: Value,
    #[serde(skip)]
    pub kind: Kind,
    /// Attempts made before this copy (the attempts header).
    #[serde(skip)]
    pub attempts: Option<i64>,
    /// Why it failed, for a retried or dead-lettered copy.
    #[serde(skip)]
    pub reason: Option<String>,
}

/// Which exchange a tapped copy came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new event, from `{ns}.events`.
    Event,
    /// A retry on its way to a delay queue, from `{ns}.retry`.
    Retry,
    /// A dead letter, from `{ns}.dead`.
    Dead,
}

impl Tapped {
    fn from_delivery(delivery: &Delivery, topology: &Topology) -> Self {
        let properties = &delivery.properties;
        let table = properties.headers().as_ref();
        let kind = if delivery.exchange == topology.retry_exchange() {
            Kind::Retry
        } else if delivery.exchange == topology.dead_exchange() {
            Kind::Dead
        } else {
            Kind::Event
        };
        let reason = header_str(table, headers::LAST_ERROR).map(|error| {
            match header_str(table, headers::FAILURE) {
                Some(class) => format!("{class}: {error}"),
                None => error.to_string(),
            }
        });
        Self {
            received_at: Utc::now(),
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            original_routing_key: header_str(table, headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or(&delivery.routing_key)
                .to_string(),
            message_id: properties.message_id().clone(),
            published_at: properties
                .timestamp()
                .and_then(|secs| DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)),
            headers: table
                .map(|table| {
                    table
                        .iter()
                        .map(|(key, value)| (key.clone(), table::to_json(value)))
                        .collect()
                })
                .unwrap_or_default(),
            body: serde_json::from_slice(&delivery.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&delivery.body).into())),
            kind,
            attempts: header_int(table, headers::ATTEMPTS),
            reason,
        }
    }
}

/// Declares the namespace's topology (so tapping works before anything was
/// ever published), binds a private queue and hands every matching message
/// to `sink` until `shutdown`, the limit or the idle timeout. The private
/// queue is deleted on the way out, whatever `sink` returned.
pub fn tap(
    brokers: &Brokers,
    topology: &Topology,
    options: &TapOptions,
    shutdown: &Shutdown,
    mut sink: impl FnMut(&Tapped) -> anyhow::Result<()>,
) -> anyhow::Result<Stop> {
    let mut connection = connect(brokers)?;
    let channel = topology.declare(&mut connection)?;
    let result = tap_on(&channel, topology, options, shutdown, &mut sink);
    let _ = channel.close();
    let _ = connection.close();
    result
}

fn tap_on(
    channel: &Channel,
    topology: &Topology,
    options: &TapOptions,
    shutdown: &Shutdown,
    sink: &mut dyn FnMut(&Tapped) -> anyhow::Result<()>,
) -> anyhow::Result<Stop> {
    let mut arguments = FieldTable::new();
    arguments.insert(
        "x-max-length".into(),
        AmqpValue::LongLongInt(TAP_QUEUE_MAX_LENGTH),
    );
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                durable: false,
                exclusive: true,
                auto_delete: true,
                arguments,
            },
        )
        .context("declaring the tap queue")?;
    let name = queue.name().to_string();
    let result = bind_and_consume(channel, &name, topology, options, shutdown, sink);
    // Exclusive and auto-delete already guarantee it goes with the
    // connection; deleting it explicitly makes that immediate.
    let _ = channel.queue_delete(name.as_str(), QueueDeleteOptions::default());
    result
}

fn bind_and_consume(
    channel: &Channel,
    queue: &str,
    topology: &Topology,
    options: &TapOptions,
    shutdown: &Shutdown,
    sink: &mut dyn FnMut(&Tapped) -> anyhow::Result<()>,
) -> anyhow::Result<Stop> {
    let watched = bind(channel, queue, topology, options)?;
    channel.qos(0, PREFETCH, false)?;
    let consumer = channel.basic_consume(
        queue,
        ConsumerOptions {
            exclusive: true,
            ..Default::default()
        },
    )?;
    // Said once bound: from here on nothing published is missed.
    tracing::info!("tapping {watched} through {queue}");
    let outcome = consume(&consumer, topology, options, shutdown, sink);
    // The outcome is what the caller needs; a tap that cannot cancel goes
    // with its connection anyway.
    let _ = cancel_and_drain(&consumer);
    outcome
}

/// Binds the tap queue for `options.source`; returns what it watches, for
/// the log.
fn bind(
    channel: &Channel,
    queue: &str,
    topology: &Topology,
    options: &TapOptions,
) -> anyhow::Result<String> {
    let bind = |exchange: String, key: String| {
        channel
            .queue_bind(queue, exchange.as_str(), key.as_str(), FieldTable::new())
            .with_context(|| format!("binding the tap to {exchange} with {key:?}"))
    };
    let watched = match options.source {
        Source::Flow => {
            bind(topology.events_exchange(), options.pattern.as_str().into())?;
            for consumer in &topology.consumers {
                for delay in &topology.retry_delays {
                    bind(
                        topology.retry_exchange(),
                        topology.retry_key(consumer.name, *delay),
                    )?;
                }
            }
            format!(
                "{} ({}) and {}",
                topology.events_exchange(),
                options.pattern.as_str(),
                topology.retry_exchange()
            )
        }
        Source::DeadLetters => {
            bind(topology.dead_exchange(), "#".into())?;
            format!(
                "{} ({})",
                topology.dead_exchange(),
                options.pattern.as_str()
            )
        }
    };
    Ok(watched)
}

/// Hands matching messages to `sink` until a stop condition.
fn consume(
    consumer: &Consumer<'_>,
    topology: &Topology,
    options: &TapOptions,
    shutdown: &Shutdown,
    sink: &mut dyn FnMut(&Tapped) -> anyhow::Result<()>,
) -> anyhow::Result<Stop> {
    let mut seen = 0u64;
    let mut last_seen = Instant::now();
    loop {
        if shutdown.is_triggered() {
            break Ok(Stop::Interrupted);
        }
        if options.limit.is_some_and(|limit| seen >= limit) {
            break Ok(Stop::Limit);
        }
        if options
            .idle_timeout
            .is_some_and(|idle| last_seen.elapsed() >= idle)
        {
            break Ok(Stop::Idle);
        }
        match consumer.receiver().recv_timeout(Duration::from_millis(100)) {
            Ok(ConsumerMessage::Delivery(delivery)) => {
                let tapped = Tapped::from_delivery(&delivery, topology);
                let wanted = tapped.kind == Kind::Event
                    || options.pattern.matches(&tapped.original_routing_key);
                let handled = if wanted { sink(&tapped) } else { Ok(()) };
                // Acking our own copy only paces the broker; it is gone
                // with the tap queue either way.
                consumer.ack(delivery)?;
                if let Err(error) = handled {
                    break Err(error);
                }
                if wanted {
                    seen += 1;
                    last_seen = Instant::now();
                }
            }
            Ok(other) => break Err(anyhow::anyhow!("the tap stopped: {other:?}")),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the tap's consumer disconnected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(raw: &str) -> RoutingPattern {
        RoutingPattern::parse(raw).unwrap()
    }

    #[test]
    fn patterns_match_like_a_topic_exchange() {
        for (raw, key, expected) in [
            ("#", "order.created", true),
            ("#", "", true),
            ("order.*", "order.created", true),
            ("order.*", "order.created.eu", false),
            ("order.#", "order", true),
            ("order.#", "order.created.eu", true),
            ("*.created", "order.created", true),
            ("*.created", "created", false),
            ("#.eu", "order.created.eu", true),
            ("order.created", "order.created", true),
            ("order.created", "order.cancelled", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
        ] {
            assert_eq!(pattern(raw).matches(key), expected, "{raw} vs {key}");
        }
    }

    #[test]
    fn empty_or_overlong_patterns_are_rejected() {
        assert!(RoutingPattern::parse("").is_err());
        assert!(RoutingPattern::parse(&"a".repeat(256)).is_err());
        assert_eq!(RoutingPattern::default().as_str(), "#");
    }
}
