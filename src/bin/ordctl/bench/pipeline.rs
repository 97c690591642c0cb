//! The pipeline's own figures: the place rate, the drain rate of a backlog
//! through a worker process, and the latencies at a fixed offered load. The
//! worker is this binary run as `ordctl worker` in a child process, so its
//! peak RSS is its own; its log tells when each SMTP 250 arrived.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use serde::Serialize;

use super::measure::{proc_cpu_secs, proc_status_kib, Percentiles, Rate, Stopwatch};
use crate::config::Settings;
use crate::db::{self, PgPool};
use crate::domain::{Currency, Money, NewOrder, UserId};
use crate::messaging::{self, publisher::Publisher, topology::Topology};
use crate::pipeline::place_order::{self, Users};
use crate::shutdown::Shutdown;

/// How long the pipeline may go without progress before a phase fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the benchmark looks at the delivery log while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The line `ordctl worker` logs (at info) right after the SMTP server's
/// 250 and the two delivery-log writes, before the delivery commits.
const SENT_LOG_LINE: &str = "confirmation sent";

/// What the benchmark needs to drive the pipeline.
pub struct Pipeline<'a> {
    pub settings: &'a Settings,
    pub topology: &'a Topology,
    pub pool: &'a PgPool,
    pub worker_exe: &'a Path,
    pub worker_concurrency: u16,
    pub shutdown: &'a Shutdown,
}

/// When each order's SMTP 250 arrived, per the worker's log.
type SentLog = Vec<(i64, DateTime<Utc>)>;

/// A finished worker process: its peak RSS, its CPU time, and when each
/// order's SMTP 250 arrived according to its log.
#[derive(Debug)]
pub struct WorkerRun {
    pub peak_rss_kib: u64,
    pub cpu_secs: f64,
    pub sent: SentLog,
}

/// Latencies at a fixed offered load, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub offered_per_sec: f64,
    /// Orders placed / (last order's created_at − first's).
    pub achieved_per_sec: f64,
    pub orders: u64,
    pub cpu_busy: f64,
    /// orders.created_at → the worker's log line after the SMTP 250.
    pub commit_to_smtp_250_ms: Percentiles,
    /// orders.created_at → notifications.sent_at (the delivery transaction's
    /// start, BEFORE the SMTP exchange): the pipeline minus the send.
    pub commit_to_sent_at_ms: Percentiles,
    /// outbox.created_at → outbox.published_at (the publishing
    /// transaction's start, before the publish and its confirm).
    pub relay_lag_ms: Percentiles,
}

impl Pipeline<'_> {
    /// `place-order --count N --concurrency C`, through the library call
    /// it makes.
    pub fn place(&self, count: u64, concurrency: u16) -> anyhow::Result<Rate> {
        let stopwatch = Stopwatch::start();
        let summary = place_order::place_many(
            self.pool,
            &|| Publisher::connect(&self.settings.amqp_url, self.topology),
            Users::All,
            Some(amount()),
            &Currency::default(),
            count,
            concurrency,
            &|_| {},
        )?;
        anyhow::ensure!(
            summary.failed == 0 && summary.published == summary.placed,
            "placing failed: {summary:?}"
        );
        let mut rate = stopwatch.rate(summary.placed);
        // place_many's own clock excludes the user lookup before it starts.
        rate.secs = summary.elapsed_secs;
        rate.per_sec = summary.orders_per_sec;
        Ok(rate)
    }

    /// Starts a worker on a backlog of `count` queued orders and times it
    /// from spawning the process until all `count` are logged as sent.
    pub fn drain(&self, count: u64) -> anyhow::Result<(Rate, WorkerRun)> {
        let stopwatch = Stopwatch::start();
        let mut worker = self.spawn_worker()?;
        self.wait_until_sent(&mut worker, 0, count)?;
        let rate = stopwatch.rate(count);
        Ok((rate, worker.finish()?))
    }

    /// Places orders at `per_sec` for `secs` seconds with a worker running,
    /// then measures each order's latencies from the database and the
    /// worker's log.
    pub fn latency(
        &self,
        per_sec: f64,
        secs: f64,
        concurrency: u16,
    ) -> anyhow::Result<(Latency, WorkerRun)> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let first_id = max_order_id(&mut conn)?;
        let user_ids = crate::db::users::all_ids(&mut conn)?;
        let count = ((per_sec * secs).round() as u64).max(1);

        let mut worker = self.spawn_worker()?;
        self.wait_for_consumer(&mut worker)?;
        let stopwatch = Stopwatch::start();
        self.place_paced(&user_ids, count, per_sec, concurrency)?;
        self.wait_until_sent(&mut worker, first_id, count)?;
        let cpu_busy = stopwatch.rate(count).cpu_busy;
        let run = worker.finish()?;

        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Timestamptz)]
            created_at: DateTime<Utc>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            published_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            sent_at: Option<DateTime<Utc>>,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT o.id, o.created_at, x.published_at, n.sent_at FROM orders o \
             JOIN outbox x ON x.order_id = o.id \
             LEFT JOIN notifications n ON n.order_id = o.id \
             WHERE o.id > $1 ORDER BY o.id",
        )
        .bind::<BigInt, _>(first_id)
        .load(&mut conn)?;
        let created: std::collections::HashMap<i64, DateTime<Utc>> =
            rows.iter().map(|row| (row.id, row.created_at)).collect();
        let millis = |from: DateTime<Utc>, to: DateTime<Utc>| {
            (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
        };
        let to_250: Vec<f64> = run
            .sent
            .iter()
            .filter_map(|(id, at)| Some(millis(*created.get(id)?, *at)))
            .collect();
        anyhow::ensure!(
            to_250.len() as u64 >= count,
            "the worker logged {} of {count} sends with a {SENT_LOG_LINE:?} line; \
             is its log level below info?",
            to_250.len()
        );
        let first = rows.first().map(|row| row.created_at);
        let last = rows.last().map(|row| row.created_at);
        let span = match (first, last) {
            (Some(first), Some(last)) => millis(first, last) / 1000.0,
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
            commit_to_smtp_250_ms: Percentiles::of(to_250),
            commit_to_sent_at_ms: Percentiles::of(
                rows.iter()
                    .filter_map(|row| Some(millis(row.created_at, row.sent_at?)))
                    .collect(),
            ),
            relay_lag_ms: Percentiles::of(
                rows.iter()
                    .filter_map(|row| Some(millis(row.created_at, row.published_at?)))
                    .collect(),
            ),
        };
        Ok((latency, run))
    }

    /// Places `count` orders on a fixed schedule, order i at i / `per_sec`
    /// seconds, from `concurrency` threads (an open loop: a slow order does
    /// not delay the next one's start unless every thread is busy).
    fn place_paced(
        &self,
        user_ids: &[i64],
        count: u64,
        per_sec: f64,
        concurrency: u16,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(!user_ids.is_empty(), "the benchmark database has no users");
        let next = AtomicU64::new(0);
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..concurrency.max(1) {
                scope.spawn(|| {
                    let result = (|| -> anyhow::Result<()> {
                        let mut conn = self.pool.get()?;
                        let mut publisher =
                            Some(Publisher::connect(&self.settings.amqp_url, self.topology)?);
                        loop {
                            let n = next.fetch_add(1, Ordering::SeqCst);
                            if n >= count || self.shutdown.is_triggered() {
                                break;
                            }
                            let due = started + Duration::from_secs_f64(n as f64 / per_sec);
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            let order = NewOrder {
                                user_id: UserId(user_ids[n as usize % user_ids.len()]),
                                amount: amount(),
                                currency: Currency::default(),
                            };
                            place_order::place(&mut conn, &mut publisher, &order)?;
                        }
                        if let Some(publisher) = publisher {
                            publisher.close();
                        }
                        Ok(())
                    })();
                    if let Err(error) = result {
                        first_error.lock().unwrap().get_or_insert(error);
                        next.store(count, Ordering::SeqCst);
                    }
                });
            }
        });
        match first_error.into_inner().unwrap() {
            Some(error) => Err(error.context("placing orders at a fixed rate")),
            None => Ok(()),
        }
    }

    fn spawn_worker(&self) -> anyhow::Result<Worker> {
        Worker::spawn(self.worker_exe, self.settings, self.worker_concurrency)
    }

    /// Waits until the worker consumes from the work queue.
    fn wait_for_consumer(&self, worker: &mut Worker) -> anyhow::Result<()> {
        let queue = self.topology.queue(crate::pipeline::notify::SPEC.name);
        let mut connection = messaging::connect(&self.settings.amqp_url)?;
        let channel = connection.open_channel(None)?;
        let deadline = Instant::now() + STALL_TIMEOUT;
        let result = loop {
            worker.check_alive()?;
            let declared = channel.queue_declare_passive(queue.as_str())?;
            if declared.declared_consumer_count().unwrap_or(0) > 0 {
                break Ok(());
            }
            if Instant::now() > deadline || self.shutdown.is_triggered() {
                break Err(anyhow::anyhow!(
                    "the worker did not start consuming {queue}"
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        let _ = channel.close();
        let _ = connection.close();
        result
    }

    /// Polls the delivery log until `count` orders with an id above
    /// `after_id` are sent.
    fn wait_until_sent(
        &self,
        worker: &mut Worker,
        after_id: i64,
        count: u64,
    ) -> anyhow::Result<()> {
        let mut conn = db::connect(&self.settings.database_url)?;
        let (mut seen, mut progressed) = (0, Instant::now());
        loop {
            let sent = count_sent(&mut conn, after_id)?;
            if sent >= count {
                return Ok(());
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

fn count_sent(conn: &mut PgConnection, after_id: i64) -> anyhow::Result<u64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM notifications WHERE status = 'sent' AND order_id > $1",
    )
    .bind::<BigInt, _>(after_id)
    .get_result(conn)?;
    Ok(count.n.max(0) as u64)
}

/// The environment that points `ordctl worker` at the benchmark's
/// database, namespace and SMTP server. Passed as environment variables,
/// not flags, so no password shows in the process list.
pub fn worker_env(settings: &Settings) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut env = vec![
        ("DATABASE_URL", settings.database_url.to_string()),
        ("AMQP_URL", settings.amqp_url.to_string()),
        ("REDIS_URL", settings.redis_url.to_string()),
        ("MAIL_FROM", settings.mail_from.to_string()),
        ("ORDCTL_NAMESPACE", settings.namespace.to_string()),
        (
            "ORDCTL_QUEUE_TYPE",
            match settings.queue_type {
                crate::messaging::topology::QueueType::Classic => "classic",
                crate::messaging::topology::QueueType::Quorum => "quorum",
            }
            .to_string(),
        ),
        // Info is the default level, and the one whose per-send line the
        // latency measurement reads.
        ("RUST_LOG", "info".to_string()),
    ];
    if let Some(smtp) = &settings.smtp {
        env.push(("SMTP_URL", super::smtp_url(smtp)?.to_string()));
    }
    Ok(env)
}

/// An `ordctl worker --exit-when-idle` child process whose log is read as
/// it runs.
struct Worker {
    child: Child,
    pid: u32,
    peak_rss_kib: u64,
    cpu_secs: f64,
    sent: Arc<Mutex<SentLog>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(exe: &Path, settings: &Settings, concurrency: u16) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            // Text logs: the latency measurement reads their timestamps.
            .args(["--log-format", "text", "worker", "--exit-when-idle", "3"])
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .envs(worker_env(settings)?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} worker", exe.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let reader = {
            let (sent, tail) = (Arc::clone(&sent), Arc::clone(&tail));
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(entry) = parse_sent_line(&line) {
                        sent.lock().unwrap().push(entry);
                    }
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
            sent,
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
        let sent = std::mem::take(&mut *self.sent.lock().unwrap());
        Ok(WorkerRun {
            peak_rss_kib: self.peak_rss_kib,
            cpu_secs: self.cpu_secs,
            sent,
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

/// The order id and time of a worker log line saying a confirmation was
/// sent, e.g. `2026-11-21T10:00:00.123456Z  INFO …: confirmation sent
/// order_id=42 to=… smtp_reply=250 …`.
fn parse_sent_line(line: &str) -> Option<(i64, DateTime<Utc>)> {
    let (_, fields) = line.split_once(SENT_LOG_LINE)?;
    let at = DateTime::parse_from_rfc3339(line.split_whitespace().next()?)
        .ok()?
        .with_timezone(&Utc);
    let (_, rest) = fields.split_once("order_id=")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((digits.parse().ok()?, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_line_gives_its_order_and_time() {
        let line = "2026-11-21T10:00:00.123456Z  INFO message{message_id=abc attempt=1}:\
                    event{event_id=abc order_id=7}: ordctl::pipeline::notify: confirmation sent \
                    order_id=42 to=user1@example.com smtp_reply=250 2.0.0 Ok";
        let (id, at) = parse_sent_line(line).unwrap();
        assert_eq!(id, 42);
        assert_eq!(at.to_rfc3339(), "2026-11-21T10:00:00.123456+00:00");
    }

    #[test]
    fn other_lines_are_ignored() {
        assert!(parse_sent_line("2026-11-21T10:00:00Z  INFO consuming queue=x").is_none());
        assert!(parse_sent_line("garbage confirmation sent order_id=1").is_none());
    }
}
