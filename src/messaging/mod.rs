//! RabbitMQ: connections, the namespaced topology, publishing with
//! publisher confirms, and the consumer runtime.

pub mod brokers;
pub mod consumer;
pub mod link;
pub mod management;
pub mod publisher;
pub mod table;
pub mod tap;
pub mod topology;

use std::time::Duration;

use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Connection, FieldTable, Publish};
use anyhow::{bail, Context};
use crossbeam_channel::{Receiver, RecvTimeoutError};

pub use brokers::Brokers;
pub use link::{BrokerBlocked, Link};

/// How long a publish may wait for the broker's confirm before the channel
/// is considered broken.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a connection to the first of `brokers` that answers; a URL
/// without `connection_timeout` gets 5 s so an unreachable broker fails
/// fast instead of hanging. Roles that publish use a [`Link`] instead
/// ([`Brokers::open`]), which never hangs on close.
pub fn connect(brokers: &Brokers) -> anyhow::Result<Connection> {
    brokers.connect()
}

/// The reply code and text with which the broker closed a channel, when
/// that is where `error` came from (e.g. 404 for a missing queue, 406 for a
/// queue declared with other arguments).
pub fn closed_by_server(error: &anyhow::Error) -> Option<(u16, &str)> {
    error
        .chain()
        .find_map(|cause| match cause.downcast_ref::<amiquip::Error>() {
            Some(amiquip::Error::ServerClosedChannel { code, message, .. }) => {
                Some((*code, message.as_str()))
            }
            _ => None,
        })
}

/// A message to publish. Every message the tool publishes is persistent
/// JSON with a message id and a timestamp.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub routing_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
    pub headers: FieldTable,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

impl Outgoing {
    pub fn new(
        routing_key: impl Into<String>,
        message_id: impl Into<String>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            routing_key: routing_key.into(),
            message_id: message_id.into(),
            body,
            headers: FieldTable::new(),
            timestamp: chrono::Utc::now().timestamp().max(0) as u64,
        }
    }

    fn properties(&self) -> AmqpProperties {
        let properties = AmqpProperties::default()
            .with_message_id(self.message_id.clone())
            .with_content_type("application/json".to_string())
            .with_delivery_mode(2)
            .with_timestamp(self.timestamp);
        if self.headers.is_empty() {
            properties
        } else {
            properties.with_headers(self.headers.clone())
        }
    }
}

/// Publisher confirms on one channel: publishes a batch and waits until the
/// broker acknowledged every message of it, or ([`Confirms::send`],
/// [`Confirms::wait_for`]) sends further batches while earlier ones are
/// still unconfirmed.
pub struct Confirms {
    receiver: Receiver<Confirm>,
    smoother: ConfirmSmoother,
    /// Messages published on the channel so far: the last one's delivery
    /// tag (the broker numbers a channel's publishes from 1).
    sent: u64,
    /// Messages the broker has confirmed or rejected: every tag up to this.
    settled: u64,
    /// Messages up to this one were waited for and all confirmed.
    waited: u64,
    /// Rejected messages among the settled ones not yet waited for.
    nacked: Vec<u64>,
}

impl Confirms {
    pub fn enable(channel: &Channel) -> anyhow::Result<Self> {
        let receiver = channel.listen_for_publisher_confirms()?;
        channel
            .enable_publisher_confirms()
            .context("enabling publisher confirms")?;
        Ok(Self {
            receiver,
            smoother: ConfirmSmoother::new(),
            sent: 0,
            settled: 0,
            waited: 0,
            nacked: Vec::new(),
        })
    }

    /// Publishes `messages` to `exchange` and returns once all are confirmed.
    /// Any nack or timeout is an error, and then the caller must assume none
    /// of the batch was published (and drop the channel).
    pub fn publish(
        &mut self,
        channel: &Channel,
        exchange: &str,
        messages: &[Outgoing],
    ) -> anyhow::Result<()> {
        let last = self.send(channel, None, exchange, messages)?;
        self.wait_for(None, last)
    }

    /// [`Confirms::publish`] that also watches `link` for the broker
    /// blocking it: a blocked connection fails at once with
    /// [`BrokerBlocked`] instead of waiting out the confirm timeout.
    pub fn publish_watching(
        &mut self,
        channel: &Channel,
        link: &mut Link,
        exchange: &str,
        messages: &[Outgoing],
    ) -> anyhow::Result<()> {
        let last = self.send(channel, Some(&mut *link), exchange, messages)?;
        self.wait_for(Some(link), last)
    }

    /// Publishes `messages` to `exchange` without waiting for their
    /// confirms, and returns the last one's tag for [`Confirms::wait_for`].
    /// With `link`, fails at once if the broker blocks it.
    pub fn send(
        &mut self,
        channel: &Channel,
        link: Option<&mut Link>,
        exchange: &str,
        messages: &[Outgoing],
    ) -> anyhow::Result<u64> {
        if let Some(link) = link {
            link.check()?;
        }
        for message in messages {
            channel
                .basic_publish(
                    exchange,
                    Publish::with_properties(
                        &message.body,
                        message.routing_key.clone(),
                        message.properties(),
                    ),
                )
                .with_context(|| format!("publishing to {exchange:?}"))?;
            self.sent += 1;
        }
        Ok(self.sent)
    }

    /// Returns once the broker has confirmed every message sent up to and
    /// including `tag`. Any nack among them, or no confirm within the
    /// timeout, is an error, and then the caller must assume none of the
    /// messages not yet confirmed was published (and drop the channel);
    /// with `link`, so is the broker blocking it.
    pub fn wait_for(&mut self, mut link: Option<&mut Link>, tag: u64) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + CONFIRM_TIMEOUT;
        let notifications = link.as_ref().map_or_else(crossbeam_channel::never, |link| {
            link.notifications().clone()
        });
        while self.settled < tag {
            let received = crossbeam_channel::select! {
                recv(self.receiver) -> raw => raw.map_err(|_| RecvTimeoutError::Disconnected),
                recv(notifications) -> notification => {
                    if let (Some(link), Ok(notification)) = (link.as_mut(), notification) {
                        link.record(notification);
                        link.check()?;
                    }
                    continue;
                }
                recv(crossbeam_channel::at(deadline)) -> _ => Err(RecvTimeoutError::Timeout),
            };
            let raw = match received {
                Ok(raw) => raw,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no publisher confirm from RabbitMQ within {CONFIRM_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the RabbitMQ channel closed before confirming")
                }
            };
            for confirm in self.smoother.process(raw) {
                self.settled += 1;
                if let Confirm::Nack(_) = confirm {
                    self.nacked.push(self.settled);
                }
            }
        }
        let nacked = self.nacked.iter().filter(|&&nacked| nacked <= tag).count();
        if nacked > 0 {
            bail!(
                "RabbitMQ rejected {nacked} of {} messages",
                tag.saturating_sub(self.waited)
            );
        }
        self.waited = self.waited.max(tag);
        Ok(())
    }
}

/// Whether the broker blocks publishers right now: publishes one empty
/// message that no queue receives (default exchange, a routing key naming
/// no queue) and waits for its confirm. A broker under a memory or disk
/// alarm blocks it instead, and says why.
pub fn probe_blocked(link: &mut Link) -> anyhow::Result<Option<BrokerBlocked>> {
    let channel = link.open_channel()?;
    let mut confirms = Confirms::enable(&channel)?;
    let probe = Outgoing::new(
        format!("ordctl.probe.{}", uuid::Uuid::new_v4().simple()),
        "ordctl-probe",
        Vec::new(),
    );
    match confirms.publish_watching(&channel, link, "", &[probe]) {
        Ok(()) => {
            let _ = channel.close();
            Ok(None)
        }
        Err(error) => match error
            .chain()
            .find_map(|c| c.downcast_ref::<BrokerBlocked>())
        {
            Some(blocked) => {
                let blocked = blocked.clone();
                link.keep_stuck(channel);
                Ok(Some(blocked))
            }
            None => Err(error),
        },
    }
}

/// How many messages are ready in `queue` and how many consumers it has,
/// read without touching a message (a passive declare).
pub fn queue_counts(channel: &Channel, queue: &str) -> anyhow::Result<(u64, u64)> {
    let declared = channel
        .queue_declare_passive(queue)
        .with_context(|| format!("inspecting queue {queue}"))?;
    Ok((
        u64::from(declared.declared_message_count().unwrap_or(0)),
        u64::from(declared.declared_consumer_count().unwrap_or(0)),
    ))
}

/// Cancels a consumer and waits for the broker's answer: dropping it
/// instead leaves amiquip's I/O thread sending to a closed receiver.
/// Deliveries that arrive meanwhile are left unacked (the broker requeues
/// them when the channel closes).
pub fn cancel_and_drain(consumer: &amiquip::Consumer<'_>) -> anyhow::Result<()> {
    consumer.cancel().context("cancelling the consumer")?;
    while let Ok(message) = consumer.receiver().recv_timeout(Duration::from_secs(5)) {
        if !matches!(message, amiquip::ConsumerMessage::Delivery(_)) {
            break;
        }
    }
    Ok(())
}
