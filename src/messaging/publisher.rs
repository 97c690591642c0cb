//! A confirmed publisher: its own connection and channel, topology declared
//! on connect. It notices at once when the broker blocks publishers (a
//! memory or disk alarm), and closing it never hangs.

use amiquip::Channel;

use super::topology::Topology;
use super::{BrokerBlocked, Brokers, Confirms, Link, Outgoing};

pub struct Publisher {
    events_exchange: String,
    channel: Option<Channel>,
    confirms: Confirms,
    link: Option<Link>,
}

impl Publisher {
    pub fn connect(brokers: &Brokers, topology: &Topology) -> anyhow::Result<Self> {
        let mut link = brokers.open()?;
        let channel = topology.declare(&mut link)?;
        let confirms = Confirms::enable(&channel)?;
        Ok(Self {
            events_exchange: topology.events_exchange(),
            channel: Some(channel),
            confirms,
            link: Some(link),
        })
    }

    /// Publishes and waits for the broker's confirm of every message. A
    /// broker that blocks publishers fails it at once with [`BrokerBlocked`]
    /// in the chain.
    pub fn publish(&mut self, exchange: &str, messages: &[Outgoing]) -> anyhow::Result<()> {
        let (Some(channel), Some(link)) = (self.channel.as_ref(), self.link.as_mut()) else {
            anyhow::bail!("publishing on a closed publisher");
        };
        self.confirms
            .publish_watching(channel, link, exchange, messages)
    }

    /// Publishes to the namespace's `{ns}.events` exchange.
    pub fn publish_events(&mut self, messages: &[Outgoing]) -> anyhow::Result<()> {
        let exchange = self.events_exchange.clone();
        self.publish(&exchange, messages)
    }

    /// Whether the broker blocks this publisher's connection right now.
    pub fn blocked(&mut self) -> Option<BrokerBlocked> {
        self.link().check().err()
    }

    /// Waits until the broker lifts its block, polling `give_up` (say, a
    /// shutdown flag) meanwhile; `false` if it gave up first.
    pub fn wait_unblocked(&mut self, give_up: impl Fn() -> bool) -> bool {
        self.link().wait_unblocked(give_up)
    }

    /// Closes the channel and connection; never hangs, even on a broker
    /// that blocks us (see [`Link::close`]).
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(link) = self.link.take() {
            link.close(self.channel.take());
        }
    }

    fn link(&mut self) -> &mut Link {
        self.link.as_mut().expect("an open link")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shut();
    }
}

/// The publishers of a server's publishing thread
/// ([`crate::pipeline::publishing`]): it takes one (or connects a new one)
/// for each round, publishes, and gives it back. After a failed
/// connect, nobody tries again for [`RETRY_CONNECT_AFTER`], so a down
/// broker costs each order nothing (it stays `published: false` and the
/// relay publishes it).
pub struct PublisherPool {
    brokers: Brokers,
    topology: Topology,
    idle: std::sync::Mutex<Vec<Publisher>>,
    down_since: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long a pool waits after a failed connect before trying again.
pub const RETRY_CONNECT_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl PublisherPool {
    pub fn new(brokers: &Brokers, topology: Topology) -> Self {
        Self {
            brokers: brokers.clone(),
            topology,
            idle: Default::default(),
            down_since: Default::default(),
        }
    }

    /// An idle publisher, a new one, or `None` (with a warning) when the
    /// broker cannot be reached.
    pub fn take(&self) -> Option<Publisher> {
        if let Some(publisher) = self.idle.lock().expect("publisher pool").pop() {
            return Some(publisher);
        }
        if self
            .down_since
            .lock()
            .expect("publisher pool")
            .is_some_and(|since| since.elapsed() < RETRY_CONNECT_AFTER)
        {
            return None;
        }
        match Publisher::connect(&self.brokers, &self.topology) {
            Ok(publisher) => {
                *self.down_since.lock().expect("publisher pool") = None;
                Some(publisher)
            }
            Err(error) => {
                tracing::warn!("broker unavailable ({error:#}); orders are committed and the relay will publish them");
                *self.down_since.lock().expect("publisher pool") = Some(std::time::Instant::now());
                None
            }
        }
    }

    /// Returns a publisher that is still healthy for the next request.
    pub fn give_back(&self, publisher: Publisher) {
        self.idle.lock().expect("publisher pool").push(publisher);
    }

    /// Closes every idle publisher.
    pub fn close(&self) {
        for publisher in self.idle.lock().expect("publisher pool").drain(..) {
            publisher.close();
        }
    }
}
