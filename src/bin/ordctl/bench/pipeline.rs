//! The pipeline's own figures: the place rate, the drain rate of a backlog
//! through a worker process, and the latencies at a fixed offered load. The
//! worker is this binary run as `ordctl worker` in a child process, so its
//! peak RSS is its own; `notifications.sent_at` (taken right after the SMTP
//! server's 250) tells when each email went out.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use ordctl::cache::ProductCache;
use ordctl::config::Settings;
use ordctl::consumers::delivery::{self, Effects};
use ordctl::consumers::notifications::Notifier;
use ordctl::consumers::payments::{Gateway, Payments};
use ordctl::consumers::{Consume, Logged};
use ordctl::db::{self, outbox, LazyDb, PgPool};
use ordctl::domain::{Currency, Money, NewOrder, UserId};
use ordctl::fanout::fan_out;
use ordctl::messaging::consumer::{Message, PREFETCH_PER_SLOT};
use ordctl::messaging::{self, publisher::Publisher, topology::Topology};
use ordctl::pipeline::place_order::{self, Bulk, BulkContents, Users};
use ordctl::pipeline::worker::DEFAULT_CONCURRENCY;
use ordctl::shutdown::Shutdown;
use serde::Serialize;

use super::measure::{proc_cpu_secs, proc_status_kib, Percentiles, Rate, Stopwatch};

/// How long the pipeline may go without progress before a phase fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the benchmark looks at the delivery log while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The most threads the latency phase places orders from.
pub const LATENCY_PLACERS: u16 = 64;

/// What the benchmark needs to drive the pipeline.
pub struct Pipeline<'a> {
    pub settings: &'a Settings,
    pub topology: &'a Topology,
    pub pool: &'a PgPool,
    pub worker_exe: &'a Path,
    pub shutdown: &'a Shutdown,
}

/// The flags a benchmark's `ordctl worker` runs with; `None`: the
/// worker's default.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WorkerFlags {
    /// `--concurrency`: slots per consumer.
    pub worker_concurrency: Option<u16>,
    /// `--smtp-connections`: SMTP connections open at once, at most.
    pub smtp_connections: Option<u16>,
}

impl WorkerFlags {
    pub fn slots(concurrency: u16) -> Self {
        Self {
            worker_concurrency: Some(concurrency),
            ..Self::default()
        }
    }

    pub fn smtp_connections(connections: u16) -> Self {
        Self {
            smtp_connections: Some(connections),
            ..Self::default()
        }
    }

    fn args(&self) -> Vec<String> {
        [
            ("--concurrency", self.worker_concurrency),
            ("--smtp-connections", self.smtp_connections),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some([flag.to_string(), value?.to_string()]))
        .flatten()
        .collect()
    }
}

/// A finished worker process: its peak RSS and its CPU time.
#[derive(Debug)]
pub struct WorkerRun {
    pub peak_rss_kib: u64,
    pub cpu_secs: f64,
}

/// Latencies at a fixed offered load, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub offered_per_sec: f64,
    /// Orders placed / (last order's created_at − first's).
    pub achieved_per_sec: f64,
    pub orders: u64,
    pub cpu_busy: f64,
    /// orders.created_at (`now()` in the placing transaction, a little
    /// before its commit) → notifications.sent_at (`clock_timestamp()`
    /// right after the SMTP server's 250). Same clock: one machine.
    pub commit_to_smtp_250_ms: Percentiles,
    /// outbox.created_at → outbox.published_at (the publisher's claim,
    /// just before it publishes).
    pub relay_lag_ms: Percentiles,
    /// Where the rest goes: outbox.published_at → the start of the
    /// worker's delivery transaction (notifications.created_at; it
    /// includes the broker's routing and, at most, its confirm) ...
    pub published_to_delivery_ms: Percentiles,
    /// ... and that transaction's start → the SMTP server's 250.
    pub in_delivery_ms: Percentiles,
}

impl Pipeline<'_> {
    /// `place-order --count N --concurrency C`, through the library call
    /// it makes.
    pub fn place(&self, count: u64, concurrency: u16) -> anyhow::Result<Rate> {
        let stopwatch = Stopwatch::start();
        let bulk = Bulk {
            users: Users::All,
            contents: BulkContents::Amounts {
                amount: Some(amount()),
                currency: Currency::default(),
            },
            count,
            concurrency,
            product_cache: None,
        };
        let summary = place_order::place_many(
            self.pool,
            &|| Publisher::connect(&self.settings.amqp_url, self.topology),
            &bulk,
            &|_| {},
        )?;
        anyhow::ensure!(
            summary.failed == 0 && summary.published == summary.placed,
            "placing failed: {summary:?}"
        );
        let mut rate = stopwatch.rate(summary.placed);
        // place_many's own clock excludes connecting and the user lookup.
        rate.secs = summary.elapsed_secs;
        rate.per_sec = summary.orders_per_sec;
        Ok(rate)
    }

    /// The database work `ordctl worker` does for `count` orders, and
    /// nothing else: no broker, no SMTP server, no Redis. The orders are
    /// placed first (their events marked published, as place-order would),
    /// then `threads` threads take them in batches of the most a slot
    /// handles at once, making the worker's own library calls for each
    /// batch: the payments consumer's handler (delivery-log rows, payments,
    /// the orders' `paid` status, `payment.succeeded`), the notifications
    /// consumer's delivery step with an email that costs nothing (its
    /// delivery-log rows and attempts), the relay's claim of the events the
    /// payments wrote, and the flush before an ack. What PostgreSQL alone
    /// allows a drain on this machine.
    pub fn database_work(
        &self,
        user_ids: &[UserId],
        count: u64,
        threads: u16,
    ) -> anyhow::Result<Rate> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let first_id = max_order_id(&mut conn)?;
        self.place_paced(user_ids, count, f64::INFINITY, threads, false)?;
        #[derive(QueryableByName)]
        struct Body {
            #[diesel(sql_type = Text)]
            payload: String,
        }
        let bodies: Vec<Body> = diesel::sql_query(
            "UPDATE outbox SET published_at = now() WHERE order_id > $1 AND published_at IS NULL \
             RETURNING payload::text AS payload",
        )
        .bind::<BigInt, _>(first_id)
        .load(&mut conn)?;
        let batches: Vec<&[Body]> = bodies.chunks(usize::from(PREFETCH_PER_SLOT)).collect();

        let db = LazyDb::connect(&self.settings.database_url, u32::from(threads))?;
        let payments = Logged::boxed(
            &db,
            Payments {
                gateway: Gateway { fail_rate: 0.0 },
                products: Arc::new(ProductCache::new(
                    &self.settings.redis_url,
                    self.settings.namespace.clone(),
                    1,
                )?),
            },
        );
        let stopwatch = Stopwatch::start();
        fan_out(threads, batches.len() as u64, &|| Ok(()), &|_, items| {
            while let Some(n) = items.take() {
                let batch = batches[n as usize];
                let messages: Vec<Message<'_>> = batch
                    .iter()
                    .map(|body| Message {
                        body: body.payload.as_bytes(),
                        message_id: None,
                        attempt: 1,
                        span: tracing::Span::none(),
                    })
                    .collect();
                for result in payments.handle(&messages) {
                    result.map_err(|error| anyhow::anyhow!("payments: {error}"))?;
                }
                let deliveries = batch
                    .iter()
                    .map(|body| {
                        let event = Notifier::parse(body.payload.as_bytes())
                            .map_err(|error| anyhow::anyhow!("{error}"))?;
                        Ok(Logged::<Notifier>::delivery(&event, 1))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut emails = |_: &mut PgConnection, which: &[usize]| {
                    Ok(which.iter().map(|_| "250 2.0.0 Ok".to_string()).collect())
                };
                for outcome in delivery::once_each(&db, &deliveries, Effects::Writes(&mut emails)) {
                    outcome.map_err(|error| anyhow::anyhow!("notifications: {error}"))?;
                }
                db.get()?.transaction(|conn| {
                    outbox::claim_unpublished(conn, i64::from(PREFETCH_PER_SLOT)).map(drop)
                })?;
                db.durable()?;
            }
            Ok(())
        })
        .context("the worker's database work")?;
        Ok(stopwatch.rate(count))
    }

    /// Starts `ordctl worker` with `flags` on a backlog of `count` queued
    /// orders and times it from spawning the process until the last of the
    /// `count` emails was sent.
    pub fn drain(&self, count: u64, flags: WorkerFlags) -> anyhow::Result<(Rate, WorkerRun)> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let (before, _) = count_sent(&mut conn, 0)?;
        let stopwatch = Stopwatch::start();
        let mut worker = self.spawn_worker(flags)?;
        let last = self.wait_until_sent(&mut worker, 0, before + count)?;
        let rate = stopwatch.rate_until(count, last);
        Ok((rate, worker.finish()?))
    }

    /// What the whole pipeline sustains: `count` orders placed one by one
    /// as the latency phase places them (commit, publish, confirm), flat
    /// out from `concurrency` threads, while a default worker runs; timed
    /// from the first placing until the last email's 250. (Placing and
    /// draining measured apart each have the machine to themselves, and
    /// bulk placing publishes in windows, which costs less per order.)
    pub fn sustained(
        &self,
        user_ids: &[UserId],
        count: u64,
        concurrency: u16,
    ) -> anyhow::Result<(Rate, WorkerRun)> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let first_id = max_order_id(&mut conn)?;
        let mut worker = self.spawn_worker(WorkerFlags::default())?;
        self.wait_until_started(&mut worker, DEFAULT_CONCURRENCY)?;
        let stopwatch = Stopwatch::start();
        self.place_paced(user_ids, count, f64::INFINITY, concurrency, true)?;
        let last = self.wait_until_sent(&mut worker, first_id, count)?;
        let rate = stopwatch.rate_until(count, last);
        Ok((rate, worker.finish()?))
    }

    /// Places orders at `per_sec` for `secs` seconds with a default worker
    /// running, then reads each order's latencies from the database.
    pub fn latency(
        &self,
        user_ids: &[UserId],
        per_sec: f64,
        secs: f64,
    ) -> anyhow::Result<(Latency, WorkerRun)> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let mut worker = self.spawn_worker(WorkerFlags::default())?;
        self.wait_until_started(&mut worker, DEFAULT_CONCURRENCY)?;
        // Warm-up, not measured: the same load for a moment. A worker opens
        // its database, Redis and SMTP connections as the first messages
        // need them; one that has been running has them.
        let warm_up = ((per_sec * WARM_UP_SECS).round() as u64).max(1);
        let first_id = max_order_id(&mut conn)?;
        self.place_paced(user_ids, warm_up, per_sec, placers(per_sec), true)?;
        self.wait_until_sent(&mut worker, first_id, warm_up)?;

        let first_id = max_order_id(&mut conn)?;
        let count = ((per_sec * secs).round() as u64).max(1);
        let stopwatch = Stopwatch::start();
        self.place_paced(user_ids, count, per_sec, placers(per_sec), true)?;
        self.wait_until_sent(&mut worker, first_id, count)?;
        let cpu_busy = stopwatch.rate(count).cpu_busy;
        let run = worker.finish()?;

        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Timestamptz)]
            created_at: DateTime<Utc>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            published_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            delivery_started_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            sent_at: Option<DateTime<Utc>>,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT o.created_at, x.published_at, n.created_at AS delivery_started_at, n.sent_at \
             FROM orders o \
             JOIN outbox x ON x.order_id = o.id AND x.routing_key = 'order.created' \
             LEFT JOIN notifications n ON n.order_id = o.id AND n.status = 'sent' \
                 AND n.consumer = 'notifications' \
             WHERE o.id > $1 ORDER BY o.id",
        )
        .bind::<BigInt, _>(first_id)
        .load(&mut conn)?;
        let millis = |from: DateTime<Utc>, to: DateTime<Utc>| {
            (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
        };
        let span = match (rows.first(), rows.last()) {
            (Some(first), Some(last)) => millis(first.created_at, last.created_at) / 1000.0,
            _ => 0.0,
        };
        let latency = Latency {
            offered_per_sec: per_sec,
            achieved_per_sec: if span > 0.0 {
                (count - 1) as f64 / span
            } else {
                0.0
            },
            orders: count,
            cpu_busy,
            commit_to_smtp_250_ms: Percentiles::of(
                rows.iter()
                    .filter_map(|row| Some(millis(row.created_at, row.sent_at?)))
                    .collect(),
            ),
            relay_lag_ms: Percentiles::of(
                rows.iter()
                    .filter_map(|row| Some(millis(row.created_at, row.published_at?)))
                    .collect(),
            ),
            published_to_delivery_ms: Percentiles::of(
                rows.iter()
                    .filter_map(|row| Some(millis(row.published_at?, row.delivery_started_at?)))
                    .collect(),
            ),
            in_delivery_ms: Percentiles::of(
                rows.iter()
                    .filter_map(|row| Some(millis(row.delivery_started_at?, row.sent_at?)))
                    .collect(),
            ),
        };
        Ok((latency, run))
    }

    /// Places `count` orders on a fixed schedule, order i at i / `per_sec`
    /// seconds (all at once for an infinite rate), from `concurrency` threads (an open loop: a slow order does
    /// not delay the next one's start unless every thread is busy). With
    /// `publish`, each order's event is published after its commit, as
    /// place-order does; without, it stays unpublished in the outbox.
    fn place_paced(
        &self,
        user_ids: &[UserId],
        count: u64,
        per_sec: f64,
        concurrency: u16,
        publish: bool,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(!user_ids.is_empty(), "the benchmark database has no users");
        // The schedule starts once every placer is connected (fan_out
        // starts them together): connecting is no order's latency.
        let started = OnceLock::new();
        let setup = || -> anyhow::Result<_> {
            let conn = self.pool.get()?;
            let publisher = publish
                .then(|| Publisher::connect(&self.settings.amqp_url, self.topology))
                .transpose()?;
            Ok((conn, publisher))
        };
        fan_out(concurrency, count, &setup, &|(conn, publisher), items| {
            let started = *started.get_or_init(Instant::now);
            while let Some(n) = items.take() {
                if self.shutdown.is_triggered() {
                    break;
                }
                let due = started + Duration::from_secs_f64(n as f64 / per_sec);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let order = NewOrder::for_amount(
                    user_ids[n as usize % user_ids.len()],
                    amount(),
                    Currency::default(),
                );
                place_order::place(conn, publisher, &order)?;
            }
            if let Some(publisher) = publisher.take() {
                publisher.close();
            }
            Ok(())
        })
        .context("placing orders at a fixed rate")?;
        Ok(())
    }

    fn spawn_worker(&self, flags: WorkerFlags) -> anyhow::Result<Worker> {
        Worker::spawn(self.worker_exe, self.settings, flags)
    }

    /// Waits until the worker has started: every consumer's work queue has
    /// `slots` consumers (the worker's slots, each its own channel). A
    /// worker that is still opening channels and connections would put its
    /// start-up into the first orders' latency.
    fn wait_until_started(&self, worker: &mut Worker, slots: u16) -> anyhow::Result<()> {
        let mut connection = messaging::connect(&self.settings.amqp_url)?;
        let channel = connection.open_channel(None)?;
        let deadline = Instant::now() + STALL_TIMEOUT;
        let result = loop {
            worker.check_alive()?;
            let mut started = true;
            for consumer in &self.topology.consumers {
                let queue = self.topology.queue(consumer.name);
                let declared = channel.queue_declare_passive(queue.as_str())?;
                started &= declared.declared_consumer_count().unwrap_or(0) >= u32::from(slots);
            }
            if started {
                break Ok(());
            }
            if Instant::now() > deadline || self.shutdown.is_triggered() {
                break Err(anyhow::anyhow!(
                    "the worker did not start {slots} slots on every work queue"
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        let _ = channel.close();
        let _ = connection.close();
        result
    }

    /// Polls the delivery log until `count` orders with an id above
    /// `after_id` are sent; returns when the last of them was (its
    /// `sent_at`, the worker's clock at the SMTP server's 250), so the
    /// poll's interval adds nothing to a phase's time.
    fn wait_until_sent(
        &self,
        worker: &mut Worker,
        after_id: i64,
        count: u64,
    ) -> anyhow::Result<DateTime<Utc>> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let (mut seen, mut progressed) = (0, Instant::now());
        loop {
            let (sent, last) = count_sent(&mut conn, after_id)?;
            if let Some(last) = last.filter(|_| sent >= count) {
                return Ok(last);
            }
            if sent > seen {
                (seen, progressed) = (sent, Instant::now());
            }
            worker.check_alive()?;
            if self.shutdown.is_triggered() {
                bail!("interrupted");
            }
            if progressed.elapsed() > STALL_TIMEOUT {
                bail!(
                    "no order was sent for {STALL_TIMEOUT:?} ({sent} of {count} sent); \
                     the worker's last lines:\n{}",
                    worker.tail()
                );
            }
            worker.sample();
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// How long the latency phase offers its load before the measured part.
const WARM_UP_SECS: f64 = 1.0;

/// Threads enough to keep an open-loop schedule of `rate` orders/s when a
/// single `place-order` (commit, publish, confirm) takes up to 50 ms, at
/// most [`LATENCY_PLACERS`].
fn placers(rate: f64) -> u16 {
    ((rate * 0.05).ceil().clamp(1.0, f64::from(LATENCY_PLACERS))) as u16
}

fn amount() -> Money {
    Money::from_minor_units(4200).expect("a positive amount")
}

fn max_order_id(conn: &mut PgConnection) -> anyhow::Result<i64> {
    #[derive(QueryableByName)]
    struct Max {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let max: Max =
        diesel::sql_query("SELECT coalesce(max(id), 0) AS id FROM orders").get_result(conn)?;
    Ok(max.id)
}

/// How many confirmation emails of orders with an id above `after_id` were
/// sent, and when the last one was.
fn count_sent(
    conn: &mut PgConnection,
    after_id: i64,
) -> anyhow::Result<(u64, Option<DateTime<Utc>>)> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        last: Option<DateTime<Utc>>,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n, max(sent_at) AS last FROM notifications \
         WHERE status = 'sent' AND consumer = 'notifications' AND order_id > $1",
    )
    .bind::<BigInt, _>(after_id)
    .get_result(conn)?;
    Ok((count.n.max(0) as u64, count.last))
}

/// The environment that points `ordctl worker` at the benchmark's
/// database, namespace and SMTP server. Passed as environment variables,
/// not flags, so no password shows in the process list.
pub fn worker_env(settings: &Settings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATABASE_URL", settings.database_url.to_string()),
        ("AMQP_URL", settings.amqp_url.to_env()),
        ("REDIS_URL", settings.redis_url.to_string()),
        ("MAIL_FROM", settings.mail_from.to_string()),
        ("ORDCTL_NAMESPACE", settings.namespace.to_string()),
        (
            "ORDCTL_QUEUE_TYPE",
            settings.queue_type.as_str().to_string(),
        ),
        // What a user sees by default: warnings and the start-up lines.
        ("RUST_LOG", "info".to_string()),
    ];
    if let Some(smtp) = &settings.smtp {
        env.push(("SMTP_URL", smtp.url().to_string()));
    }
    env
}

/// An `ordctl worker --exit-when-idle` child process; the last lines of its
/// log are kept to explain a failure.
struct Worker {
    child: Child,
    pid: u32,
    peak_rss_kib: u64,
    cpu_secs: f64,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(exe: &Path, settings: &Settings, flags: WorkerFlags) -> anyhow::Result<Self> {
        let mut command = Command::new(exe);
        command
            .args(["worker", "--exit-when-idle", "3"])
            .args(flags.args());
        // The worker's defaults are what is measured, whatever this shell
        // sets for its own workers.
        for tuning in ["ORDCTL_MAX_SEND_RATE", "ORDCTL_SMTP_CONNECTIONS"] {
            command.env_remove(tuning);
        }
        let mut child = command
            .envs(worker_env(settings))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} worker", exe.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let reader = {
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            peak_rss_kib: 0,
            cpu_secs: 0.0,
            tail,
            reader: Some(reader),
        })
    }

    /// Reads the peak RSS and CPU time while the process still exists.
    fn sample(&mut self) {
        if let Some(kib) = proc_status_kib(self.pid, "VmHWM") {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
        if let Some(secs) = proc_cpu_secs(self.pid) {
            self.cpu_secs = self.cpu_secs.max(secs);
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the worker exited early ({status}); its last lines:\n{}",
                self.tail()
            );
        }
        Ok(())
    }

    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Samples once more, then waits for the idle timeout to end it.
    fn finish(mut self) -> anyhow::Result<WorkerRun> {
        self.sample();
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        anyhow::ensure!(
            status.success(),
            "the worker failed ({status}); its last lines:\n{}",
            self.tail()
        );
        Ok(WorkerRun {
            peak_rss_kib: self.peak_rss_kib,
            cpu_secs: self.cpu_secs,
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only a worker abandoned by an error is still running here.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
