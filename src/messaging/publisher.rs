//! A confirmed publisher: its own connection and channel, topology declared
//! on connect.

use amiquip::{Channel, Connection};
use url::Url;

use super::topology::Topology;
use super::{connect, Confirms, Outgoing};

pub struct Publisher {
    events_exchange: String,
    // Field order matters: the channel closes before its connection.
    channel: Channel,
    confirms: Confirms,
    connection: Connection,
}

impl Publisher {
    pub fn connect(url: &Url, topology: &Topology) -> anyhow::Result<Self> {
        let mut connection = connect(url)?;
        let channel = connection.open_channel(None)?;
        topology.declare(&channel)?;
        let confirms = Confirms::enable(&channel)?;
        Ok(Self {
            events_exchange: topology.events_exchange(),
            channel,
            confirms,
            connection,
        })
    }

    /// Publishes and waits for the broker's confirm of every message.
    pub fn publish(&mut self, exchange: &str, messages: &[Outgoing]) -> anyhow::Result<()> {
        self.confirms.publish(&self.channel, exchange, messages)
    }

    /// Publishes to the namespace's `{ns}.events` exchange.
    pub fn publish_events(&mut self, messages: &[Outgoing]) -> anyhow::Result<()> {
        self.confirms
            .publish(&self.channel, &self.events_exchange, messages)
    }

    pub fn close(self) {
        let _ = self.channel.close();
        let _ = self.connection.close();
    }
}
