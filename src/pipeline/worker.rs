//! `ordctl worker`: the notification consumer, the outbox relay beside it,
//! and the idle timer for scripts — all stopped by one shutdown flag.

use std::time::Duration;

use anyhow::Context;

use super::{notify::Notifier, relay};
use crate::cache::UserCache;
use crate::config::Settings;
use crate::db;
use crate::mail::Mailer;
use crate::messaging;
use crate::messaging::consumer::{self, Activity, RunOptions};
use crate::messaging::topology::Topology;
use crate::shutdown::Shutdown;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub consumer: RunOptions,
    pub relay: bool,
    pub exit_when_idle: Option<Duration>,
}

/// Runs until `shutdown` (a signal) or, with `exit_when_idle`, until
/// nothing happened for that long. In-flight messages finish and are acked.
pub fn run(
    settings: &Settings,
    topology: &Topology,
    options: &WorkerOptions,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let slots = u32::from(options.consumer.concurrency.max(1));
    let notifier = Notifier {
        db: db::pool(&settings.database_url, slots + 1)?,
        cache: UserCache::new(&settings.redis_url, settings.namespace.clone(), slots)?,
        mailer: Mailer::new(settings.smtp.as_ref(), &settings.mail_dir, slots)
            .context("setting up the mailer")?,
        from: settings.mail_from.clone(),
    };
    let activity = &Activity::default();
    std::thread::scope(|scope| {
        if options.relay {
            scope.spawn(|| {
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
            });
        }
        consumer::run(
            &settings.amqp_url,
            topology,
            &notifier,
            &options.consumer,
            shutdown,
            activity,
        );
        // The relay and idle threads stop with the consumer.
        shutdown.trigger();
    });
    Ok(())
}

/// How many messages sit in the namespace's retry queues.
fn waiting_for_retry(url: &url::Url, topology: &Topology) -> anyhow::Result<u64> {
    let mut connection = messaging::connect(url)?;
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
