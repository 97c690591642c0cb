//! The live event feed behind `GET /events`: ONE reader per process turns
//! the `feed` table into an ordered, gap-free stream and fans it out through
//! a bounded broadcast channel; each client catches up from PostgreSQL from
//! its own cursor and then follows the broadcast.
//!
//! The cursor is the feed row id, but ids are drawn at insert while
//! transactions commit out of order, so "everything after my cursor" is not
//! a safe query on its own: a reader that saw 101 may see 100 commit later.
//! The reader therefore only ever hands out ids up to a *settled horizon*:
//! it reads the sequence's last value `L`, then draws a fresh transaction
//! id `N`, and waits until every transaction older than `N` has ended
//! (`xmin > N`). Every id `<= L` was drawn by a transaction that already
//! had an xid (the feed is filled by AFTER triggers, see the migration),
//! which is therefore older than `N`; once those transactions end, the rows
//! `<= L` are final: visible, or holes left by a rollback that never fill.
//! (A snapshot's `xmax` would not do: it is one past the newest COMPLETED
//! xid, so a running transaction with a newer xid is not in its list.) Nothing is skipped by a timeout, so nothing is
//! lost; a long-running transaction only delays the feed.
//!
//! A slow client never slows anyone: the reader's `send` never blocks, and a
//! client that falls more than [`BROADCAST_CAPACITY`] events behind gets
//! `Lagged` and catches up from PostgreSQL again from its own cursor.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::{PgConnection, RunQueryDsl};
use tokio::sync::broadcast;
use url::Url;

use crate::db::{self, feed, PgPool};
use crate::reconnect;
use crate::shutdown::Shutdown;

/// Events a subscriber may fall behind before it must catch up from the
/// database instead.
pub const BROADCAST_CAPACITY: usize = 1024;
/// Rows read per query, by the reader and by a catching-up client.
pub const PAGE: i64 = 500;
/// How often the reader looks without having been notified (after a
/// reconnect a notification may have been missed).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often the LISTEN connection and an unsettled snapshot are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One feed entry: `id` is the SSE cursor, `routing_key` the SSE event
/// name, `data` the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEvent {
    pub id: i64,
    pub routing_key: String,
    pub data: String,
}

impl From<feed::FeedRow> for FeedEvent {
    fn from(row: feed::FeedRow) -> Self {
        Self {
            id: row.id,
            routing_key: row.routing_key,
            data: row.payload.to_string(),
        }
    }
}

/// The process's feed: the broadcast and the settled horizon. Cheap to
/// clone; the reader thread runs until the shutdown given to [`Feed::start`].
#[derive(Clone)]
pub struct Feed {
    sender: broadcast::Sender<Arc<FeedEvent>>,
    /// Every id `<=` this is settled. Raised BEFORE the events up to it are
    /// broadcast, so a client that subscribes and then reads it either gets
    /// an event from the database or from the broadcast, never neither.
    horizon: Arc<AtomicI64>,
    pool: PgPool,
}

impl Feed {
    /// Settles the current horizon (so new clients start "now"), then starts
    /// the reader thread.
    pub fn start(
        database_url: &Url,
        pool: PgPool,
        shutdown: &Shutdown,
    ) -> anyhow::Result<(Self, JoinHandle<()>)> {
        let mut conn = db::connect(database_url)?;
        let horizon = settle(&mut conn, shutdown)
            .context("reading the event feed (has `ordctl migrate` run?)")?
            .unwrap_or(0);
        drop(conn);
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        let feed = Self {
            sender,
            horizon: Arc::new(AtomicI64::new(horizon)),
            pool,
        };
        let reader = feed.clone();
        let database_url = database_url.clone();
        let shutdown = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name("feed-reader".into())
            .spawn(move || {
                reconnect::until_shutdown("event feed", &shutdown, || {
                    reader.session(&database_url, &shutdown)
                })
            })
            .context("starting the feed reader")?;
        Ok((feed, handle))
    }

    /// The settled horizon: the cursor of "now".
    pub fn horizon(&self) -> i64 {
        self.horizon.load(Ordering::SeqCst)
    }

    /// Subscribes to events above the horizon. Subscribe BEFORE reading
    /// [`Feed::horizon`] for a catch-up, so nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.sender.subscribe()
    }

    /// Settled events after `cursor`, up to `up_to`, at most [`PAGE`] (blocking).
    pub fn read(&self, cursor: i64, up_to: i64) -> anyhow::Result<Vec<FeedEvent>> {
        let mut conn = self.pool.get().context("getting a database connection")?;
        let rows = feed::between(&mut conn, cursor, up_to, PAGE)?;
        Ok(rows.into_iter().map(FeedEvent::from).collect())
    }

    fn session(&self, database_url: &Url, shutdown: &Shutdown) -> anyhow::Result<()> {
        let mut conn = db::connect(database_url)?;
        diesel::sql_query(format!("LISTEN {}", feed::CHANNEL))
            .execute(&mut conn)
            .context("LISTEN")?;
        while !shutdown.is_triggered() {
            let Some(settled) = settle(&mut conn, shutdown)? else {
                break;
            };
            let cursor = self.horizon();
            if settled > cursor {
                self.horizon.store(settled, Ordering::SeqCst);
                // With no client subscribed, nobody reads the broadcast: a
                // client that subscribes after this check reads the
                // horizon stored above, and catches up from PostgreSQL to
                // it.
                if self.sender.receiver_count() > 0 {
                    self.broadcast(&mut conn, cursor, settled)?;
                }
            }
            db::wait_for_notification(&mut conn, SWEEP_INTERVAL, POLL_INTERVAL, shutdown)?;
        }
        Ok(())
    }

    /// Broadcasts the events after `cursor`, up to `settled`.
    fn broadcast(
        &self,
        conn: &mut PgConnection,
        mut cursor: i64,
        settled: i64,
    ) -> anyhow::Result<()> {
        loop {
            let rows = feed::between(conn, cursor, settled, PAGE)?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                cursor = row.id;
                // No receivers is fine: nobody is watching.
                let _ = self.sender.send(Arc::new(FeedEvent::from(row)));
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Reads the sequence's last value, then draws a fresh xid, and waits until
/// every older transaction has ended: every id up to the returned value is
/// then final. `None` if shutdown came first.
fn settle(conn: &mut PgConnection, shutdown: &Shutdown) -> anyhow::Result<Option<i64>> {
    let last = feed::last_allocated(conn)?;
    let xid = feed::fresh_xid(conn)?;
    let started = Instant::now();
    let mut warned = false;
    while !feed::settled(conn, &xid)? {
        if shutdown.is_triggered() {
            return Ok(None);
        }
        if !warned && started.elapsed() > Duration::from_secs(5) {
            tracing::warn!("the event feed waits for a long-running transaction to end");
            warned = true;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(Some(last))
}
