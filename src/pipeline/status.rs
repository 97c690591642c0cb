//! `ordctl status`: queue depths and consumers, the outbox backlog, the
//! delivery log by status, and the dead-letter depth.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, notifications, outbox};
use crate::messaging::{self, topology::Topology};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub queues: Vec<QueueStatus>,
    pub outbox: OutboxStatus,
    pub deliveries: BTreeMap<String, i64>,
    pub dlq: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub ready: u64,
    /// Delivered but not yet acked. AMQP itself does not report it; `null`
    /// unless known.
    pub unacked: Option<u64>,
    pub consumers: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutboxStatus {
    pub pending: i64,
    pub oldest_pending_secs: Option<f64>,
}

pub fn collect(settings: &Settings, topology: &Topology) -> anyhow::Result<Status> {
    let mut conn = db::connect(&settings.database_url)?;
    let (pending, oldest) = outbox::pending(&mut conn)?;
    let deliveries = notifications::count_by_status(&mut conn)?
        .into_iter()
        .collect();

    let mut connection = messaging::connect(&settings.amqp_url)?;
    let channel = connection.open_channel(None)?;
    topology.declare(&channel)?;
    let mut queues = Vec::new();
    for name in topology.queue_names() {
        let queue = channel.queue_declare_passive(name.as_str())?;
        queues.push(QueueStatus {
            name,
            ready: u64::from(queue.declared_message_count().unwrap_or(0)),
            unacked: None,
            consumers: u64::from(queue.declared_consumer_count().unwrap_or(0)),
        });
    }
    let _ = channel.close();
    let _ = connection.close();

    let dlq_names: Vec<String> = topology
        .consumers
        .iter()
        .map(|consumer| topology.dlq(consumer.name))
        .collect();
    let dlq = queues
        .iter()
        .filter(|queue| dlq_names.contains(&queue.name))
        .map(|queue| queue.ready)
        .sum();
    Ok(Status {
        queues,
        outbox: OutboxStatus {
            pending,
            oldest_pending_secs: oldest
                .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0),
        },
        deliveries,
        dlq,
    })
}
