//! `ordctl status`: every queue of the namespace with its depth, unacked
//! count and consumers, the outbox backlog, the delivery log by status, and
//! the dead letters grouped by reason.
//!
//! AMQP's passive declare gives ready and consumers only; `unacked` comes
//! from the RabbitMQ management HTTP API when it answers, and is `null`
//! (with the reason in `management.error`) when it does not. Dead-letter
//! reasons come from the delivery log rather than from peeking the DLQ:
//! peeking means taking each message and requeueing it, which a concurrent
//! `replay-dlq` would miss and which counts against a quorum queue's
//! delivery limit on every `status --watch` tick.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, notifications, outbox};
use crate::domain::DeliveryStatus;
use crate::messaging::management::ManagementApi;
use crate::messaging::{self, topology::Topology, Brokers};
use crate::secrets::redact;

/// The most frequent dead-letter reasons listed; the rest are summed up.
const TOP_REASONS: i64 = 10;

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub queues: Vec<QueueStatus>,
    pub outbox: OutboxStatus,
    /// Deliveries by status, all consumers together.
    pub deliveries: BTreeMap<String, i64>,
    /// Messages in the dead-letter queues.
    pub dlq: u64,
    /// The same figures for each consumer.
    pub consumers: Vec<ConsumerStatus>,
    pub dead_letters: Vec<DeadReason>,
    pub management: ManagementStatus,
    /// Why the broker blocks publishers (a memory or disk alarm), if it
    /// does: orders still commit, but nothing is published until it clears.
    pub broker_blocked: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub kind: QueueKind,
    pub ready: u64,
    /// Delivered but not yet acked: only the management API knows; `null`
    /// when it did not answer.
    pub unacked: Option<u64>,
    pub consumers: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Work,
    Retry,
    DeadLetter,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Work => "work",
            Self::Retry => "retry",
            Self::DeadLetter => "dead-letter",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OutboxStatus {
    pub pending: i64,
    pub oldest_pending_secs: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub deliveries: BTreeMap<String, i64>,
    /// Messages in this consumer's dead-letter queue.
    pub dlq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadReason {
    pub consumer: String,
    pub reason: String,
    pub count: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ManagementStatus {
    /// The API's base URL, password masked.
    pub url: String,
    /// Why `unacked` is unknown, if it is.
    pub error: Option<String>,
}

pub fn collect(
    settings: &Settings,
    topology: &Topology,
    management: &ManagementApi,
) -> anyhow::Result<Status> {
    let mut conn = db::connect(&settings.database_url)?;
    let (pending, oldest) = outbox::pending(&mut conn).context("reading the outbox")?;
    let counts = notifications::count_by_status(&mut conn).context("reading the delivery log")?;
    let mut queues = broker_queues(&settings.amqp_url, topology)?;
    let broker_blocked = broker_blocked(&settings.amqp_url)?;
    let mut management_error = None;
    for queue in &mut queues {
        match management.unacked(&queue.name) {
            Ok(unacked) => queue.unacked = unacked,
            Err(error) => {
                management_error = Some(format!("{error:#}"));
                break;
            }
        }
    }
    if management_error.is_some() {
        // All or nothing: a half-filled column would mislead.
        for queue in &mut queues {
            queue.unacked = None;
        }
    }

    let mut deliveries: BTreeMap<String, i64> = BTreeMap::new();
    for (_, status, count) in &counts {
        *deliveries.entry(status.to_string()).or_default() += count;
    }
    let mut consumers = Vec::with_capacity(topology.consumers.len());
    let mut dead_letters = Vec::new();
    for spec in &topology.consumers {
        let dlq_name = topology.dlq(spec.name);
        let dlq = queues
            .iter()
            .filter(|queue| queue.name == dlq_name)
            .map(|queue| queue.ready + queue.unacked.unwrap_or(0))
            .sum();
        let by_status: BTreeMap<String, i64> = counts
            .iter()
            .filter(|(consumer, _, _)| consumer == spec.name)
            .map(|(_, status, count)| (status.to_string(), *count))
            .collect();
        let dead_logged = by_status
            .get(DeliveryStatus::Dead.as_str())
            .copied()
            .unwrap_or(0);
        let top = notifications::dead_by_error(&mut conn, spec.name, TOP_REASONS)
            .context("reading dead deliveries")?;
        dead_letters.extend(dead_reasons(spec.name, top, dead_logged, dlq));
        consumers.push(ConsumerStatus {
            name: spec.name.to_string(),
            deliveries: by_status,
            dlq,
        });
    }
    Ok(Status {
        queues,
        outbox: OutboxStatus {
            pending,
            oldest_pending_secs: oldest
                .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0),
        },
        deliveries,
        dlq: consumers.iter().map(|consumer| consumer.dlq).sum(),
        consumers,
        dead_letters,
        management: ManagementStatus {
            url: redact(management.url()),
            error: management_error,
        },
        broker_blocked,
    })
}

/// The broker's block on publishers, if any, by a probe publish.
fn broker_blocked(brokers: &Brokers) -> anyhow::Result<Option<String>> {
    let mut link = brokers.open()?;
    let blocked = messaging::probe_blocked(&mut link);
    link.close(None);
    Ok(blocked?.map(|blocked| blocked.to_string()))
}

/// Ready and consumers of every queue of the namespace, by passive declare
/// after declaring the topology (so a fresh namespace shows zeros).
fn broker_queues(brokers: &Brokers, topology: &Topology) -> anyhow::Result<Vec<QueueStatus>> {
    let mut connection = messaging::connect(brokers)?;
    let channel = topology.declare(&mut connection)?;
    let mut names = Vec::new();
    for consumer in &topology.consumers {
        names.push((topology.queue(consumer.name), QueueKind::Work));
        for delay in &topology.retry_delays {
            names.push((
                topology.retry_queue(consumer.name, *delay),
                QueueKind::Retry,
            ));
        }
        names.push((topology.dlq(consumer.name), QueueKind::DeadLetter));
    }
    let mut queues = Vec::with_capacity(names.len());
    for (name, kind) in names {
        let (ready, consumers) = messaging::queue_counts(&channel, &name)?;
        queues.push(QueueStatus {
            ready,
            consumers,
            unacked: None,
            kind,
            name,
        });
    }
    let _ = channel.close();
    let _ = connection.close();
    Ok(queues)
}

/// A consumer's dead rows in the delivery log by last error, plus what its
/// DLQ holds beyond them: a message that is not a valid event has no row.
fn dead_reasons(
    consumer: &str,
    top: Vec<(Option<String>, i64)>,
    dead_logged: i64,
    dlq: u64,
) -> Vec<DeadReason> {
    let listed: i64 = top.iter().map(|(_, count)| count).sum();
    let reason = |reason: String, count: i64| DeadReason {
        consumer: consumer.to_string(),
        reason,
        count,
    };
    let mut reasons: Vec<DeadReason> = top
        .into_iter()
        .map(|(error, count)| DeadReason {
            consumer: consumer.to_string(),
            reason: error.unwrap_or_else(|| "(no error recorded)".into()),
            count,
        })
        .collect();
    if dead_logged > listed {
        reasons.push(reason("(other reasons)".into(), dead_logged - listed));
    }
    let unlogged = i64::try_from(dlq).unwrap_or(i64::MAX) - dead_logged;
    if unlogged > 0 {
        reasons.push(reason(
            "(not in the delivery log: not a valid event)".into(),
            unlogged,
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_reasons_add_the_rest_and_the_unlogged() {
        let top = vec![(Some("unknown user 9".into()), 3), (None, 1)];
        let reasons = dead_reasons("payments", top, 6, 8);
        assert!(reasons.iter().all(|reason| reason.consumer == "payments"));
        let counts: Vec<_> = reasons
            .iter()
            .map(|reason| (reason.reason.as_str(), reason.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("unknown user 9", 3),
                ("(no error recorded)", 1),
                ("(other reasons)", 2),
                ("(not in the delivery log: not a valid event)", 2),
            ]
        );
        assert!(dead_reasons("payments", vec![], 0, 0).is_empty());
    }
}
