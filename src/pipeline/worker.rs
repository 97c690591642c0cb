//! `ordctl worker`: the selected consumers (every registered one by
//! default), the outbox relay beside them, and the idle timer for scripts —
//! all stopped by one shutdown flag.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lettre::message::Mailbox;

use super::relay;
use crate::cache::{ProductCache, SentMarks, UserCache};
use crate::config::Settings;
use crate::consumers::{Consumer, Deps};
use crate::db;
use crate::mail::Mailer;
use crate::messaging;
use crate::messaging::consumer::{self, RunOptions};
use crate::messaging::topology::Topology;
use crate::send_rate::SendRate;
use crate::shutdown::{Activity, Shutdown};

/// Slots per consumer when `--concurrency` is not given. 8 fills two
/// cores: fewer leave them waiting on round trips; more only add
/// connections and smaller batches, and 16 drained 10 % fewer emails/s
/// than 8 in six paired runs (BENCHMARKS.md).
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// SMTP connections a worker opens at most when `--smtp-connections` is
/// not given (see [`WorkerOptions::smtp_connections`]).
pub const DEFAULT_SMTP_CONNECTIONS: u16 = 16;

/// PostgreSQL connections the slots share, at most (plus one): a slot holds
/// one only while its batch's transaction runs, PostgreSQL does a batch's
/// work in a few milliseconds on a few cores, and `max_connections` (100 by
/// default) is shared by every worker, relay and server.
const MAX_DB_CONNECTIONS: u32 = 16;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Per consumer: each runs this many slots.
    pub consumer: RunOptions,
    /// Where `staff-alerts` sends low-stock alerts.
    pub staff: Mailbox,
    /// The simulated payment gateway's transient failure rate (0–1).
    pub payment_fail_rate: f64,
    pub relay: bool,
    pub exit_when_idle: Option<Duration>,
    /// Emails a second across every worker of the namespace (see
    /// [`SendRate`]); `None`: as fast as they come.
    pub max_send_rate: Option<f64>,
    /// SMTP connections open at once, at most, whatever the slots: the
    /// provider's limit. Slots that find every connection busy wait.
    pub smtp_connections: u16,
}

/// Runs `consumers` until `shutdown` (a signal) or, with `exit_when_idle`,
/// until nothing happened for that long. In-flight messages finish and are
/// acked.
pub fn run(
    settings: &Settings,
    topology: &Topology,
    consumers: &[&Consumer],
    options: &WorkerOptions,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let slots = u32::from(options.consumer.concurrency.max(1)) * consumers.len().max(1) as u32;
    let deps = Deps {
        db: db::LazyDb::connect(&settings.database_url, slots.min(MAX_DB_CONNECTIONS) + 1)?,
        users: Arc::new(UserCache::new(
            &settings.redis_url,
            settings.namespace.clone(),
            slots,
        )?),
        products: Arc::new(ProductCache::new(
            &settings.redis_url,
            settings.namespace.clone(),
            slots,
        )?),
        mailer: Arc::new(mailer(settings, options)?),
        sent_marks: Arc::new(SentMarks::new(
            &settings.redis_url,
            settings.namespace.clone(),
            slots,
        )?),
        from: settings.mail_from.clone(),
        staff: options.staff.clone(),
        payment_fail_rate: options.payment_fail_rate,
    };
    let handlers: Vec<_> = consumers
        .iter()
        .map(|consumer| (consumer.build)(&deps))
        .collect();
    let activity = &Activity::default();
    std::thread::scope(|scope| {
        if options.relay {
            scope.spawn(|| {
                let _stop = StopAllOnExit(shutdown);
                relay::run(
                    &settings.database_url,
                    &settings.amqp_url,
                    topology,
                    shutdown,
                    activity,
                )
            });
        }
        if let Some(idle) = options.exit_when_idle {
            scope.spawn(move || {
                let _stop = StopAllOnExit(shutdown);
                exit_when_idle(settings, topology, idle, shutdown, activity)
            });
        }
        let running: Vec<_> = handlers
            .iter()
            .map(|handler| {
                scope.spawn(|| {
                    // The other consumers, the relay and the idle timer stop
                    // with this one.
                    let _stop = StopAllOnExit(shutdown);
                    consumer::run(
                        &settings.amqp_url,
                        topology,
                        handler.as_ref(),
                        &options.consumer,
                        shutdown,
                        activity,
                    );
                })
            })
            .collect();
        let panicked = running
            .into_iter()
            .map(|consumer| consumer.join().is_err())
            .fold(false, |any, this| any | this);
        anyhow::ensure!(!panicked, "a consumer thread panicked");
        Ok(())
    })
}

/// Stops the whole worker when the thread holding it ends, however it
/// ends: a thread that died (a panic) must not leave the others running
/// without it, or a worker that neither works nor exits.
struct StopAllOnExit<'a>(&'a Shutdown);

impl Drop for StopAllOnExit<'_> {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// The mailer, limited to the fleet's send rate when there is one.
fn mailer(settings: &Settings, options: &WorkerOptions) -> anyhow::Result<Mailer> {
    let mailer = Mailer::new(
        settings.smtp.as_ref(),
        &settings.mail_dir,
        u32::from(options.smtp_connections),
    )
    .context("setting up the mailer")?;
    Ok(match options.max_send_rate {
        Some(rate) => mailer.limited_by(SendRate::new(
            &settings.redis_url,
            &settings.namespace,
            rate,
        )?),
        None => mailer,
    })
}

/// Triggers `shutdown` once nothing happened for `idle` and no message
/// waits in a retry queue.
fn exit_when_idle(
    settings: &Settings,
    topology: &Topology,
    idle: Duration,
    shutdown: &Shutdown,
    activity: &Activity,
) {
    while !shutdown.is_triggered() {
        if activity.idle_for() >= idle {
            // Messages waiting out a retry delay are work to do.
            match waiting_for_retry(&settings.amqp_url, topology) {
                Ok(0) | Err(_) => {
                    tracing::info!("idle for {idle:?}; exiting");
                    shutdown.trigger();
                }
                Ok(waiting) => {
                    tracing::info!(waiting, "idle, but messages wait in retry queues");
                    activity.touch();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many messages sit in the namespace's retry queues.
fn waiting_for_retry(brokers: &messaging::Brokers, topology: &Topology) -> anyhow::Result<u64> {
    let mut connection = messaging::connect(brokers)?;
    let channel = connection.open_channel(None)?;
    let mut waiting = 0;
    for consumer in &topology.consumers {
        for delay in &topology.retry_delays {
            let retry_queue = topology.retry_queue(consumer.name, *delay);
            waiting += messaging::queue_counts(&channel, &retry_queue)?.0;
        }
    }
    let _ = connection.close();
    Ok(waiting)
}
