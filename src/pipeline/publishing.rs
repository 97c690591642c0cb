//! Publishing just-committed events for a server: one thread, with its own
//! PostgreSQL connection and publisher, takes whatever requests have queued
//! since its last round and publishes all of their events under ONE confirm
//! wait, then tells each request whether its events were confirmed and
//! marked published. A request holds no database connection while its
//! publish waits, and the busier the server, the more requests share a
//! round (the way PostgreSQL's group commit shares a disk flush): one
//! claim transaction (the rows stamped published, committed once confirmed)
//! and one confirm wait per round instead of per request — and one NOTIFY
//! per round, sent in that transaction, which wakes the live feed for all
//! of its orders (the requests commit without one; a round that failed
//! wakes the relays too). More threads were measured to cost more CPU per
//! request (more, smaller rounds) and so fewer requests per second on a
//! busy machine.
//!
//! Nothing changes about what is guaranteed: the events were committed
//! with their order before they are queued here; a failed or skipped
//! publish (broker down or blocking, a lost connection, the server
//! stopping) answers `false` and leaves the rows to the relay.

use std::sync::Mutex;
use std::thread::JoinHandle;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use diesel::PgConnection;
use tokio::sync::oneshot;
use url::Url;

use super::{place_order, relay};
use crate::db;
use crate::messaging::publisher::PublisherPool;

/// The most events one round publishes (as many as a relay batch).
pub const MAX_ROUND: usize = relay::BATCH_SIZE as usize;

/// One request's events and where its answer goes.
struct Job {
    outbox_ids: Vec<i64>,
    published: oneshot::Sender<bool>,
}

/// The publishing thread. [`Publishing::close`] lets it finish what is
/// queued and stops it.
pub struct Publishing {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<PublisherPool>>>,
}

impl Publishing {
    /// Starts the thread. It connects on its first round, so a server
    /// starts while the broker is down.
    pub fn start(database_url: &Url, publishers: PublisherPool) -> anyhow::Result<Self> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let database_url = database_url.clone();
        let thread = std::thread::Builder::new()
            .name("publishing".into())
            .spawn(move || {
                run(&database_url, &publishers, &receiver);
                publishers
            })
            .context("starting the publishing thread")?;
        Ok(Self {
            jobs: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues committed outbox rows for publishing. The answer is `true`
    /// once the broker confirmed every one of them and they are marked
    /// published; `false` (or a dropped sender, once closed) when they were
    /// not, and the relay publishes them.
    pub fn publish(&self, outbox_ids: Vec<i64>) -> oneshot::Receiver<bool> {
        let (published, answer) = oneshot::channel();
        if let Some(jobs) = self.jobs.lock().expect("publishing").as_ref() {
            // Fails only once the thread has ended: the answer is then
            // dropped, which reads as not published.
            let _ = jobs.send(Job {
                outbox_ids,
                published,
            });
        }
        answer
    }

    /// Stops taking jobs, lets the thread publish what is queued, joins it
    /// and closes its publisher.
    pub fn close(&self) {
        drop(self.jobs.lock().expect("publishing").take());
        if let Some(thread) = self.thread.lock().expect("publishing").take() {
            if let Ok(publishers) = thread.join() {
                publishers.close();
            }
        }
    }
}

/// The thread: a round per wake-up, until the queue is closed and empty.
fn run(database_url: &Url, publishers: &PublisherPool, jobs: &Receiver<Job>) {
    let mut conn: Option<PgConnection> = None;
    while let Ok(first) = jobs.recv() {
        let mut events = first.outbox_ids.len();
        let mut round = vec![first];
        while events < MAX_ROUND {
            let Ok(job) = jobs.try_recv() else { break };
            events += job.outbox_ids.len();
            round.push(job);
        }
        let outbox_ids: Vec<i64> = round
            .iter()
            .flat_map(|job| job.outbox_ids.iter().copied())
            .collect();
        let published = publish_round(database_url, publishers, &mut conn, &outbox_ids);
        for job in round {
            // The request may have gone (its client hung up): fine.
            let _ = job.published.send(published);
        }
    }
}

/// Publishes the rows under one confirm wait and marks them published,
/// which wakes the live feed, or announces them if that failed. A failure
/// is logged and drops the publisher and the connection (either may be
/// what broke); the rows stay for the relay.
fn publish_round(
    database_url: &Url,
    publishers: &PublisherPool,
    conn: &mut Option<PgConnection>,
    outbox_ids: &[i64],
) -> bool {
    if outbox_ids.is_empty() {
        return true;
    }
    let connection = match conn {
        Some(connection) => connection,
        None => match db::connect(database_url) {
            Ok(connection) => conn.insert(connection),
            Err(error) => return not_published(outbox_ids, &error),
        },
    };
    // No publisher: the broker is unreachable, which the pool reports.
    let published = publishers.take().map(|mut publisher| {
        let result = relay::publish_committed(connection, &mut publisher, outbox_ids);
        match result {
            Ok(()) => publishers.give_back(publisher),
            Err(_) => publisher.close(),
        }
        result
    });
    // Unpublished: one wake-up for the round's orders, so the live feed
    // shows them and a relay publishes them.
    if !matches!(published, Some(Ok(()))) {
        place_order::announce(connection);
    }
    match published {
        Some(Ok(())) => true,
        Some(Err(error)) => {
            *conn = None;
            not_published(outbox_ids, &error)
        }
        None => false,
    }
}

/// Logs a round that could not publish its committed events; `false`.
fn not_published(outbox_ids: &[i64], error: &anyhow::Error) -> bool {
    tracing::warn!(
        events = outbox_ids.len(),
        "events committed but not published ({error:#}); the relay will publish them"
    );
    false
}
