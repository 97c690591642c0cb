//! The namespaced exchanges and queues, declared idempotently by every role
//! that publishes or consumes, so no message is ever published into a void.
//!
//! ```text
//! {ns}.events (topic) ──key──► {ns}.{consumer}            work queue
//! {ns}.retry  (direct) ─{consumer}.{delay}─► {ns}.{consumer}.retry.{delay}
//!                        (message TTL, then dead-lettered back to the work queue)
//! {ns}.dead   (topic) ──{consumer}──► {ns}.{consumer}.dlq
//! ```

use std::time::Duration;

use amiquip::{
    AmqpValue, Channel, Connection, ExchangeDeclareOptions, ExchangeType, FieldTable,
    QueueDeclareOptions,
};
use anyhow::Context;

use super::{closed_by_server, Link};
use crate::domain::Namespace;

/// What declaring opens its channel on: a connection, or a [`Link`].
pub trait Channels {
    fn open(&mut self) -> anyhow::Result<Channel>;
}

impl Channels for Connection {
    fn open(&mut self) -> anyhow::Result<Channel> {
        Ok(self.open_channel(None)?)
    }
}

impl Channels for Link {
    fn open(&mut self) -> anyhow::Result<Channel> {
        self.open_channel()
    }
}

/// What a consumer subscribes to: adding one is a `ConsumerSpec` plus a
/// handler, nothing else.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerSpec {
    /// Short name; its queues are `{ns}.{name}`, `.retry.*` and `.dlq`.
    pub name: &'static str,
    /// Routing keys (topic patterns) bound on `{ns}.events`.
    pub routing_keys: &'static [&'static str],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    /// Replicated queues for a RabbitMQ cluster.
    Quorum,
}

impl QueueType {
    /// As `--queue-type` and `ORDCTL_QUEUE_TYPE` take it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// The default retry delays: roughly 1 s, 5 s, 30 s, 2 min, 10 min.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

#[derive(Clone, Debug)]
pub struct Topology {
    pub namespace: Namespace,
    pub consumers: Vec<ConsumerSpec>,
    pub queue_type: QueueType,
    pub retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn new(namespace: Namespace, consumers: Vec<ConsumerSpec>) -> Self {
        Self {
            namespace,
            consumers,
            queue_type: QueueType::Classic,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }

    pub fn events_exchange(&self) -> String {
        self.namespace.name("events")
    }

    pub fn retry_exchange(&self) -> String {
        self.namespace.name("retry")
    }

    pub fn dead_exchange(&self) -> String {
        self.namespace.name("dead")
    }

    pub fn queue(&self, consumer: &str) -> String {
        self.namespace.name(consumer)
    }

    pub fn dlq(&self, consumer: &str) -> String {
        self.namespace.name(&format!("{consumer}.dlq"))
    }

    /// The routing key on `{ns}.retry` of the retry queue for `delay`.
    pub fn retry_key(&self, consumer: &str, delay: Duration) -> String {
        format!("{consumer}.{}s", delay.as_secs())
    }

    pub fn retry_queue(&self, consumer: &str, delay: Duration) -> String {
        self.namespace
            .name(&format!("{consumer}.retry.{}s", delay.as_secs()))
    }

    /// Every queue of the namespace, work queues first: what `status` shows.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for consumer in &self.consumers {
            names.push(self.queue(consumer.name));
            names.extend(
                self.retry_delays
                    .iter()
                    .map(|delay| self.retry_queue(consumer.name, *delay)),
            );
            names.push(self.dlq(consumer.name));
        }
        names
    }

    /// Declares everything on a new channel, which it returns for the
    /// caller's use; safe to call any number of times.
    pub fn declare(&self, channels: &mut dyn Channels) -> anyhow::Result<Channel> {
        self.declare_for(channels, None)
    }

    /// Declares the exchanges and the queues of the consumer called
    /// `consumer`: what consuming needs. (Publishers declare everything, so
    /// an event is never routed before every consumer's queue exists.)
    pub fn declare_consumer(
        &self,
        channels: &mut dyn Channels,
        consumer: &str,
    ) -> anyhow::Result<Channel> {
        self.declare_for(channels, Some(consumer))
    }

    /// The exchanges, and the queues of `only` that consumer or of all.
    /// The first work queue is declared first ([`Topology::declare_work_queue`]):
    /// a namespace whose queues were declared before classic queues were
    /// lazy keeps them all as they are. `ordctl doctor` says how to convert
    /// them.
    fn declare_for(
        &self,
        channels: &mut dyn Channels,
        only: Option<&str>,
    ) -> anyhow::Result<Channel> {
        let consumers: Vec<&ConsumerSpec> = self
            .consumers
            .iter()
            .filter(|consumer| only.is_none_or(|name| name == consumer.name))
            .collect();
        let (channel, lazy) = match consumers.first() {
            Some(first) => self.declare_work_queue(channels, &self.queue(first.name))?,
            None => (channels.open()?, false),
        };
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            (self.events_exchange(), ExchangeType::Topic),
            (self.retry_exchange(), ExchangeType::Direct),
            (self.dead_exchange(), ExchangeType::Topic),
        ] {
            channel
                .exchange_declare(kind, name.as_str(), durable.clone())
                .with_context(|| format!("declaring exchange {name}"))?;
        }
        for consumer in consumers {
            let queue = self.queue(consumer.name);
            self.declare_queue(&channel, &queue, self.typed(FieldTable::new(), lazy))?;
            for key in consumer.routing_keys {
                channel.queue_bind(
                    queue.as_str(),
                    self.events_exchange(),
                    *key,
                    FieldTable::new(),
                )?;
            }
            for delay in &self.retry_delays {
                let retry = self.retry_queue(consumer.name, *delay);
                let mut arguments = FieldTable::new();
                arguments.insert(
                    "x-message-ttl".into(),
                    AmqpValue::LongLongInt(delay.as_millis() as i64),
                );
                arguments.insert(
                    "x-dead-letter-exchange".into(),
                    AmqpValue::LongString(String::new()),
                );
                arguments.insert(
                    "x-dead-letter-routing-key".into(),
                    AmqpValue::LongString(queue.clone()),
                );
                self.declare_queue(&channel, &retry, self.typed_retry(arguments, lazy))?;
                channel.queue_bind(
                    retry.as_str(),
                    self.retry_exchange(),
                    self.retry_key(consumer.name, *delay),
                    FieldTable::new(),
                )?;
            }
            let dlq = self.dlq(consumer.name);
            self.declare_queue(&channel, &dlq, self.typed(FieldTable::new(), lazy))?;
            channel.queue_bind(
                dlq.as_str(),
                self.dead_exchange(),
                consumer.name,
                FieldTable::new(),
            )?;
        }
        Ok(channel)
    }

    /// Declares a work queue or DLQ as [`Topology::declare`] does, on a new
    /// channel, which it returns with whether the namespace's classic
    /// queues are lazy. Classic queues are declared lazy (see
    /// [`Topology::typed`]); one that exists, declared before they were,
    /// is refused for its queue mode alone (406, which closes the channel)
    /// and is then declared as it was, on another new channel. Refused
    /// (406) when it exists with another `--queue-type`.
    pub fn declare_work_queue(
        &self,
        channels: &mut dyn Channels,
        name: &str,
    ) -> anyhow::Result<(Channel, bool)> {
        let channel = channels.open()?;
        let lazy = self.queue_type == QueueType::Classic;
        match self.declare_queue(&channel, name, self.typed(FieldTable::new(), lazy)) {
            Ok(()) => Ok((channel, lazy)),
            Err(error) if lazy && is_other_queue_mode(&error) => {
                tracing::debug!(queue = %name, "declared before classic queues were lazy: kept as it is");
                let channel = channels.open()?;
                self.declare_queue(&channel, name, self.typed(FieldTable::new(), false))?;
                Ok((channel, false))
            }
            Err(error) => Err(error),
        }
    }

    /// The arguments of `--queue-type`. A classic queue is lazy when
    /// `lazy`: it keeps its messages on disk, not in memory, so a backlog
    /// (no worker running, or a slower one) does not slow the broker's
    /// confirms to every publisher as it grows (measured in BENCHMARKS.md,
    /// "HTTP at 1,000/s for 60 s"). RabbitMQ 3.12 and later make every
    /// classic queue behave so and ignore the argument.
    fn typed(&self, mut arguments: FieldTable, lazy: bool) -> FieldTable {
        match self.queue_type {
            QueueType::Quorum => {
                arguments.insert(
                    "x-queue-type".into(),
                    AmqpValue::LongString("quorum".into()),
                );
            }
            QueueType::Classic if lazy => {
                arguments.insert("x-queue-mode".into(), AmqpValue::LongString("lazy".into()));
            }
            QueueType::Classic => {}
        }
        arguments
    }

    /// A retry queue is of the namespace's type too: on a cluster, a
    /// classic retry queue lives on one node, and while that node is down
    /// it cannot even be declared, which stops every publisher and consumer
    /// of the namespace. A quorum retry queue dead-letters at least once
    /// (RabbitMQ 3.10+), so an expired message is never dropped on its way
    /// back to the work queue.
    fn typed_retry(&self, mut arguments: FieldTable, lazy: bool) -> FieldTable {
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-dead-letter-strategy".into(),
                AmqpValue::LongString("at-least-once".into()),
            );
            arguments.insert(
                "x-overflow".into(),
                AmqpValue::LongString("reject-publish".into()),
            );
        }
        self.typed(arguments, lazy)
    }

    fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        arguments: FieldTable,
    ) -> anyhow::Result<()> {
        let options = QueueDeclareOptions {
            durable: true,
            arguments,
            ..Default::default()
        };
        channel.queue_declare(name, options).map(drop).with_context(|| {
            format!("declaring queue {name} (an existing queue with other arguments, e.g. another --queue-type, must be deleted first)")
        })
    }
}

/// Whether declaring a queue was refused for its queue mode alone: it
/// exists, declared before classic queues were lazy.
fn is_other_queue_mode(error: &anyhow::Error) -> bool {
    matches!(closed_by_server(error), Some((406, message)) if message.contains("x-queue-mode"))
}
