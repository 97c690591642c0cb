//! PostgreSQL for the worker's consumers, which acknowledge what they wrote
//! in batches: their commits do not wait for the disk, one flush makes all
//! of them durable before any message is acked, and the LISTENers their
//! writes concern are woken a few times a second rather than per commit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::{PgConnection, RunQueryDsl};
use url::Url;

use super::PgPool;

/// How often LISTENers are woken at most, per channel. A wake-up costs a
/// statement, and every LISTENing backend reads every notification: one per
/// delivery batch serialised the batches on the server's notification lock.
pub const WAKE_EVERY: Duration = Duration::from_millis(5);

/// The worker's database: a pool whose commits are lazy, [`LazyDb::durable`]
/// to make them durable, and [`LazyDb::wake`] for the readers of what they
/// wrote. Cheap to clone; the clones share all three.
#[derive(Clone)]
pub struct LazyDb {
    pool: PgPool,
    flusher: Arc<Flusher>,
    waker: Arc<Waker>,
}

impl LazyDb {
    /// Up to `size` connections (a [`super::pool`]), each with
    /// `synchronous_commit = off`: a commit returns once it is in the
    /// server's memory.
    pub fn connect(url: &Url, size: u32) -> anyhow::Result<Self> {
        let pool = super::pool_with(url, size, Box::new(LazyCommits))?;
        Ok(Self {
            flusher: Arc::new(Flusher::default()),
            waker: Arc::new(Waker::start(pool.clone())),
            pool,
        })
    }

    pub fn get(&self) -> anyhow::Result<PooledConnection<ConnectionManager<PgConnection>>> {
        self.pool.get().context("getting a database connection")
    }

    /// Returns once every transaction committed on this pool before the
    /// call is on disk. Concurrent callers share flushes: one that starts
    /// after a caller's commits covers them.
    pub fn durable(&self) -> anyhow::Result<()> {
        self.flusher.flush(&self.pool)
    }

    /// Wakes whoever LISTENs on `channels` within [`WAKE_EVERY`]; returns
    /// at once. Only a wake-up: the readers' sweeps find the rows anyway.
    pub fn wake(&self, channels: &[&'static str]) {
        self.waker.wake(channels);
    }
}

#[derive(Debug)]
struct LazyCommits;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for LazyCommits {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("SET synchronous_commit = off")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Flushes shared by concurrent callers (group commit): each takes a
/// ticket after its commits; a flush covers every ticket taken before it
/// started.
#[derive(Default)]
struct Flusher {
    tickets: AtomicU64,
    state: Mutex<FlushState>,
    flushed: Condvar,
}

#[derive(Default)]
struct FlushState {
    running: bool,
    /// Every ticket up to this one is durable.
    covered: u64,
}

impl Flusher {
    fn flush(&self, pool: &PgPool) -> anyhow::Result<()> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.state.lock().expect("flusher lock");
        loop {
            if state.covered >= ticket {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                let upto = self.tickets.load(Ordering::SeqCst);
                drop(state);
                let result = flush_wal(pool);
                let mut state = self.state.lock().expect("flusher lock");
                state.running = false;
                if result.is_ok() {
                    state.covered = state.covered.max(upto);
                }
                self.flushed.notify_all();
                return result;
            }
            state = self.flushed.wait(state).expect("flusher lock");
        }
    }
}

/// Waits until every transaction committed so far on this server is on
/// disk: a transaction that takes an id and commits with
/// `synchronous_commit = on` waits for its commit record, and flushing it
/// flushes the write-ahead log before it, where every earlier commit is.
/// One statement, its own transaction: one round trip.
fn flush_wal(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.get().context("getting a database connection")?;
    super::prepared::prepared(
        "SELECT set_config('synchronous_commit', 'on', true), pg_current_xact_id()",
        (),
    )
    .execute(&mut conn)
    .context("flushing the delivery log to disk")?;
    Ok(())
}

/// Sends the NOTIFYs that writers asked for from a thread of its own, at
/// most one per channel every [`WAKE_EVERY`]; the last request is always
/// sent, so readers never wait for their sweep after a burst.
struct Waker {
    shared: Arc<(Mutex<Wakes>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Wakes {
    pending: BTreeSet<&'static str>,
    stopping: bool,
}

impl Waker {
    fn start(pool: PgPool) -> Self {
        let shared = Arc::new((Mutex::new(Wakes::default()), Condvar::new()));
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pg-waker".into())
                .spawn(move || Self::run(&pool, &shared))
                .expect("spawning the wake-up thread")
        };
        Self {
            shared,
            thread: Some(thread),
        }
    }

    fn wake(&self, channels: &[&'static str]) {
        let (wakes, changed) = &*self.shared;
        wakes
            .lock()
            .expect("waker lock")
            .pending
            .extend(channels.iter().copied());
        changed.notify_one();
    }

    fn run(pool: &PgPool, shared: &(Mutex<Wakes>, Condvar)) {
        let (wakes, changed) = shared;
        loop {
            let (channels, stopping) = {
                let mut wakes = changed
                    .wait_while(wakes.lock().expect("waker lock"), |w| {
                        w.pending.is_empty() && !w.stopping
                    })
                    .expect("waker lock");
                (std::mem::take(&mut wakes.pending), wakes.stopping)
            };
            if !channels.is_empty() {
                // Never blocked for long, so a worker's shutdown is not
                // either; a busy pool keeps the wake-up for the next turn.
                match pool.get_timeout(Duration::from_millis(100)) {
                    Ok(mut conn) => {
                        let channels: Vec<&str> = channels.into_iter().collect();
                        super::notify(&mut conn, &channels);
                    }
                    Err(error) if stopping => tracing::debug!(%error, "waking LISTENers"),
                    Err(_) => wakes.lock().expect("waker lock").pending.extend(channels),
                }
            }
            if stopping {
                return;
            }
            std::thread::sleep(WAKE_EVERY);
        }
    }
}

impl Drop for Waker {
    /// Sends what is pending, then ends the thread.
    fn drop(&mut self) {
        let (wakes, changed) = &*self.shared;
        wakes.lock().expect("waker lock").stopping = true;
        changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
