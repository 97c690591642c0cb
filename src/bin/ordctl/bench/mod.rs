//! `ordctl bench`: measures this machine's raw limits (Postgres, RabbitMQ,
//! SMTP without ordctl in the way) and the pipeline's figures, and states
//! each pipeline figure as a ratio of the raw limit that bounds it.
//!
//! It runs in a throw-away database (`ordctl_bench_<random>`) and namespace
//! (`bench_<random>`) that it removes at the end, so a user's data is never
//! touched. It needs a real SMTP server: a benchmark into `.eml` files would
//! measure the disk, not the pipeline.

pub mod measure;
pub mod pipeline;
pub mod raw;

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::RunQueryDsl;
use serde::Serialize;
use url::Url;

use self::measure::{Machine, Rate};
use self::pipeline::{Latency, Pipeline};
use crate::config::{Settings, SmtpSettings, SmtpTls};
use crate::db;
use crate::db::models::User;
use crate::domain::Namespace;
use crate::error::InvalidInput;
use crate::messaging::{self, topology::Topology};
use crate::shutdown::Shutdown;

/// Demo users the orders are spread over (each is cached after first use).
const USERS: u32 = 1000;
/// The window (publishes per confirm wait) and prefetch of the batched raw
/// RabbitMQ figures, which show what batching could gain.
const BATCH: u16 = 100;

/// The targets of issue 5, as ratios of the raw Postgres rate and absolutes.
pub const PLACE_TARGET: f64 = 0.7;
pub const DRAIN_TARGET: f64 = 0.3;
pub const P99_TARGET_MS: f64 = 50.0;
pub const RSS_TARGET_MIB: f64 = 64.0;

#[derive(Clone, Debug)]
pub struct Options {
    /// Orders (and raw operations) per throughput phase.
    pub orders: u64,
    /// Threads placing orders, and of every raw phase.
    pub concurrency: u16,
    /// `ordctl worker --concurrency`.
    pub worker_concurrency: u16,
    /// Offered load of the latency phase; default half the slower of the
    /// place and drain rates.
    pub latency_rate: Option<f64>,
    pub latency_secs: f64,
    /// The `ordctl` binary to run as the worker.
    pub worker_exe: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub started_at: DateTime<Utc>,
    pub machine: Machine,
    /// Share of all cores busy in the second before the run: other load
    /// (a build, tests) skews every figure, so it is recorded with them.
    pub cpu_busy_before: f64,
    pub parameters: Parameters,
    pub raw: RawLimits,
    pub pipeline: PipelineFigures,
    pub worker: WorkerFigures,
    /// Every figure with its ratio to the raw limit and target: what the
    /// table shows.
    pub figures: Vec<Figure>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    pub orders: u64,
    pub concurrency: u16,
    pub worker_concurrency: u16,
    pub latency_secs: f64,
    pub smtp: String,
    /// The scratch database and namespace (removed at the end).
    pub database: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RawLimits {
    /// BEGIN; INSERT orders; INSERT outbox; COMMIT — plain SQL.
    pub postgres_order_tx: Rate,
    /// Persistent publishes, each waiting for its confirm.
    pub amqp_publish_confirm_each: Rate,
    /// Consume and ack, one unacked message per channel.
    pub amqp_consume_prefetch_1: Rate,
    pub amqp_publish_confirm_per_100: Rate,
    pub amqp_consume_prefetch_100: Rate,
    pub smtp_send: Rate,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineFigures {
    pub place: Rate,
    pub drain: Rate,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerFigures {
    /// The highest VmHWM of the worker processes (drain and latency runs).
    pub peak_rss_mib: f64,
    pub drain_peak_rss_mib: f64,
    pub latency_peak_rss_mib: f64,
    /// The worker's own CPU time per order while draining.
    pub drain_cpu_ms_per_order: f64,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The raw limit this figure is compared with, and the ratio to it.
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
}

/// Runs every phase and returns the figures. Whatever happens, the
/// database, queues, exchanges and Redis keys it made are removed.
pub fn run(settings: &Settings, options: &Options, shutdown: &Shutdown) -> anyhow::Result<Report> {
    let smtp = settings.smtp.clone().ok_or_else(|| {
        InvalidInput::new(
            "ordctl bench needs a real SMTP server: set --smtp-url or SMTP_URL \
             (scripts/bench.sh starts Postfix's smtp-sink); a benchmark into .eml files \
             would measure the disk, not the pipeline",
        )
    })?;
    anyhow::ensure!(options.orders >= 1, "--orders must be at least 1");
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let mut settings = settings.clone();
    settings
        .database_url
        .set_path(&format!("/ordctl_bench_{suffix}"));
    settings.namespace = Namespace::parse(&format!("bench_{suffix}"))?;
    let topology = crate::pipeline::topology(&settings);
    let scratch = Scratch {
        settings: &settings,
        topology: &topology,
        raw_queue: topology.namespace.name("bench.raw"),
    };
    tracing::info!(
        database = %format!("ordctl_bench_{suffix}"),
        namespace = %settings.namespace,
        "benchmark: scratch database and namespace"
    );
    let result = measure_all(&settings, &topology, &smtp, &scratch, options, shutdown);
    scratch.remove();
    result
}

fn measure_all(
    settings: &Settings,
    topology: &Topology,
    smtp: &SmtpSettings,
    scratch: &Scratch<'_>,
    options: &Options,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    let started_at = Utc::now();
    let before = measure::CpuSample::now();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let cpu_busy_before = before.busy_since();
    if cpu_busy_before > 0.2 {
        tracing::warn!(
            "{:.0}% of the CPU was busy before the benchmark started: figures will be low",
            cpu_busy_before * 100.0
        );
    }
    let (n, c) = (options.orders, options.concurrency);
    let url = &settings.database_url;
    db::create_database_if_missing(url)?;
    let mut conn = db::connect(url)?;
    db::run_migrations(&mut conn)?;
    let users = crate::pipeline::seed::seed(&mut conn, USERS)?;
    let user_ids: Vec<i64> = users.iter().map(|user| user.id).collect();
    let interrupted = || {
        if shutdown.is_triggered() {
            anyhow::bail!("interrupted");
        }
        Ok(())
    };

    tracing::info!("raw Postgres: {n} order+outbox transactions, {c} connections");
    let postgres = raw::postgres(url, &user_ids, n, c).context("raw Postgres")?;
    // The raw rows must not reach the pipeline's relay.
    diesel::sql_query("TRUNCATE outbox, orders CASCADE").execute(&mut conn)?;
    interrupted()?;

    let amqp = &settings.amqp_url;
    let queue = &scratch.raw_queue;
    raw::declare_queue(amqp, queue)?;
    tracing::info!("raw RabbitMQ: {n} persistent publishes and consumes, {c} channels");
    let publish_each = raw::amqp_publish(amqp, queue, n, c, 1).context("raw publish")?;
    let consume_1 = raw::amqp_consume(amqp, queue, n, c, 1).context("raw consume")?;
    interrupted()?;
    let publish_batch =
        raw::amqp_publish(amqp, queue, n, c, u64::from(BATCH)).context("raw batched publish")?;
    let consume_batch =
        raw::amqp_consume(amqp, queue, n, c, BATCH).context("raw batched consume")?;
    interrupted()?;

    tracing::info!("raw SMTP: {n} sends to {smtp}, {c} pooled connections");
    let email = sample_email(settings, &users[0])?;
    let smtp_send = raw::smtp(smtp, &email, n, c).context("raw SMTP")?;
    interrupted()?;

    // Up to LATENCY_PLACERS connections for the latency phase's placers.
    let pool = db::pool(url, u32::from(c.max(LATENCY_PLACERS)))?;
    let pipeline = Pipeline {
        settings,
        topology,
        pool: &pool,
        worker_exe: &options.worker_exe,
        worker_concurrency: options.worker_concurrency,
        shutdown,
    };
    tracing::info!("pipeline: placing {n} orders, concurrency {c}");
    let place = pipeline.place(n, c).context("placing orders")?;
    interrupted()?;
    tracing::info!(
        "pipeline: draining {n} orders through `ordctl worker --concurrency {}`",
        options.worker_concurrency
    );
    let (drain, drain_run) = pipeline.drain(n).context("draining")?;
    interrupted()?;
    // Half of what the whole pipeline sustains: the slower of placing and
    // draining. A load above the drain rate would measure a growing queue.
    let rate = options
        .latency_rate
        .unwrap_or(place.per_sec.min(drain.per_sec) / 2.0);
    tracing::info!(
        "pipeline: latency at {rate:.0} orders/s for {}s with a worker running",
        options.latency_secs
    );
    let (latency, latency_run) = pipeline
        .latency(rate, options.latency_secs, latency_placers(rate, c))
        .context("measuring latency")?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let worker = WorkerFigures {
        peak_rss_mib: mib(drain_run.peak_rss_kib.max(latency_run.peak_rss_kib)),
        drain_peak_rss_mib: mib(drain_run.peak_rss_kib),
        latency_peak_rss_mib: mib(latency_run.peak_rss_kib),
        drain_cpu_ms_per_order: drain_run.cpu_secs * 1000.0 / n as f64,
    };
    let raw = RawLimits {
        postgres_order_tx: postgres,
        amqp_publish_confirm_each: publish_each,
        amqp_consume_prefetch_1: consume_1,
        amqp_publish_confirm_per_100: publish_batch,
        amqp_consume_prefetch_100: consume_batch,
        smtp_send,
    };
    let pipeline = PipelineFigures {
        place,
        drain,
        latency,
    };
    Ok(Report {
        started_at,
        machine: Machine::describe(),
        cpu_busy_before,
        parameters: Parameters {
            orders: n,
            concurrency: c,
            worker_concurrency: options.worker_concurrency,
            latency_secs: options.latency_secs,
            smtp: smtp.to_string(),
            database: settings
                .database_url
                .path()
                .trim_start_matches('/')
                .to_string(),
            namespace: settings.namespace.to_string(),
        },
        figures: figures(&raw, &pipeline, &worker),
        raw,
        pipeline,
        worker,
    })
}

/// The rows of the table: each figure, what it is compared with, and
/// whether it meets its target.
pub fn figures(raw: &RawLimits, pipeline: &PipelineFigures, worker: &WorkerFigures) -> Vec<Figure> {
    let plain = |name: &str, value: f64, unit: &str| Figure {
        name: name.to_string(),
        value,
        unit: unit.to_string(),
        baseline: None,
        ratio: None,
        target: None,
        met: None,
    };
    let pg = raw.postgres_order_tx.per_sec;
    let versus =
        |name: &str, value: f64, unit: &str, base_name: &str, base: f64, target: Option<f64>| {
            let ratio = (base > 0.0).then(|| value / base);
            Figure {
                baseline: Some(base_name.to_string()),
                ratio,
                target: target.map(|t| format!("≥ {t:.2} × {base_name}")),
                met: target.map(|t| ratio.is_some_and(|r| r >= t)),
                ..plain(name, value, unit)
            }
        };
    let at_most = |name: &str, value: f64, unit: &str, limit: f64| Figure {
        target: Some(format!("≤ {limit} {unit}")),
        met: Some(value <= limit),
        ..plain(name, value, unit)
    };
    let latency = &pipeline.latency;
    let ms = |name: &str, value: f64| plain(name, value, "ms");
    vec![
        plain("raw Postgres: order+outbox transaction", pg, "tx/s"),
        plain(
            "raw RabbitMQ: persistent publish, confirm each",
            raw.amqp_publish_confirm_each.per_sec,
            "msg/s",
        ),
        plain(
            "raw RabbitMQ: consume + ack, prefetch 1",
            raw.amqp_consume_prefetch_1.per_sec,
            "msg/s",
        ),
        plain(
            "raw RabbitMQ: persistent publish, confirm per 100",
            raw.amqp_publish_confirm_per_100.per_sec,
            "msg/s",
        ),
        plain(
            "raw RabbitMQ: consume + ack, prefetch 100",
            raw.amqp_consume_prefetch_100.per_sec,
            "msg/s",
        ),
        plain(
            "raw SMTP: pooled lettre sends",
            raw.smtp_send.per_sec,
            "msg/s",
        ),
        versus(
            "place rate (place-order --count)",
            pipeline.place.per_sec,
            "orders/s",
            "raw Postgres",
            pg,
            Some(PLACE_TARGET),
        ),
        versus(
            "end-to-end drain (queue → worker → SMTP 250)",
            pipeline.drain.per_sec,
            "orders/s",
            "raw Postgres",
            pg,
            Some(DRAIN_TARGET),
        ),
        versus(
            "offered load for latency (achieved)",
            latency.achieved_per_sec,
            "orders/s",
            "max sustained (min of place, drain)",
            pipeline.place.per_sec.min(pipeline.drain.per_sec),
            None,
        ),
        ms("commit → SMTP 250, p50", latency.commit_to_smtp_250_ms.p50),
        ms("commit → SMTP 250, p95", latency.commit_to_smtp_250_ms.p95),
        at_most(
            "commit → SMTP 250, p99",
            latency.commit_to_smtp_250_ms.p99,
            "ms",
            P99_TARGET_MS,
        ),
        ms(
            "commit → notifications.sent_at, p99",
            latency.commit_to_sent_at_ms.p99,
        ),
        ms(
            "relay lag (published_at − created_at), p50",
            latency.relay_lag_ms.p50,
        ),
        ms(
            "relay lag (published_at − created_at), p99",
            latency.relay_lag_ms.p99,
        ),
        at_most(
            "worker peak RSS (VmHWM)",
            worker.peak_rss_mib,
            "MiB",
            RSS_TARGET_MIB,
        ),
    ]
}

/// The confirmation email the pipeline would send, for the raw SMTP phase.
fn sample_email(settings: &Settings, user: &User) -> anyhow::Result<lettre::Message> {
    let event = raw::sample_event(1, user.id);
    crate::mail::confirmation(&event, user, &settings.mail_from)
        .map_err(|error| anyhow::anyhow!("building the sample email: {error}"))
}

/// The SMTP URL of `smtp` with its credentials, to hand to the worker.
pub fn smtp_url(smtp: &SmtpSettings) -> anyhow::Result<Url> {
    let scheme = match smtp.tls {
        SmtpTls::Implicit => "smtps",
        SmtpTls::None | SmtpTls::StartTls => "smtp",
    };
    let host = if smtp.host.contains(':') && !smtp.host.starts_with('[') {
        format!("[{}]", smtp.host)
    } else {
        smtp.host.clone()
    };
    let mut url = Url::parse(&format!("{scheme}://{host}:{}", smtp.port))
        .with_context(|| format!("rebuilding the SMTP URL {smtp}"))?;
    if let Some((user, password)) = &smtp.credentials {
        let _ = url.set_username(user);
        let _ = url.set_password(Some(password));
    }
    if smtp.tls == SmtpTls::StartTls {
        url.set_query(Some("tls=starttls"));
    }
    Ok(url)
}

/// What the benchmark creates, removed at the end even after a failure.
struct Scratch<'a> {
    settings: &'a Settings,
    topology: &'a Topology,
    raw_queue: String,
}

impl Scratch<'_> {
    fn remove(&self) {
        if let Err(error) = db::drop_database(&self.settings.database_url) {
            tracing::warn!("benchmark: dropping the scratch database: {error:#}");
        }
        if let Err(error) = self.remove_broker_objects() {
            tracing::warn!("benchmark: deleting the scratch queues: {error:#}");
        }
        if let Err(error) = self.remove_redis_keys() {
            tracing::warn!("benchmark: deleting the scratch Redis keys: {error:#}");
        }
    }

    fn remove_broker_objects(&self) -> anyhow::Result<()> {
        let mut connection = messaging::connect(&self.settings.amqp_url)?;
        let mut queues = self.topology.queue_names();
        queues.push(self.raw_queue.clone());
        for queue in queues {
            // A failed delete closes the channel: one channel per delete.
            let channel = connection.open_channel(None)?;
            channel
                .queue_delete(queue.as_str(), Default::default())
                .with_context(|| format!("deleting queue {queue}"))?;
            let _ = channel.close();
        }
        for exchange in [
            self.topology.events_exchange(),
            self.topology.retry_exchange(),
            self.topology.dead_exchange(),
        ] {
            let channel = connection.open_channel(None)?;
            channel
                .exchange_delete(exchange.as_str(), false)
                .with_context(|| format!("deleting exchange {exchange}"))?;
            let _ = channel.close();
        }
        let _ = connection.close();
        Ok(())
    }

    fn remove_redis_keys(&self) -> anyhow::Result<()> {
        use redis::Commands;
        let client = redis::Client::open(self.settings.redis_url.as_str())?;
        let mut redis = client.get_connection()?;
        let pattern = self.settings.namespace.key("*");
        let keys: Vec<String> = redis.scan_match::<_, String>(&pattern)?.collect();
        for chunk in keys.chunks(500) {
            redis.del::<_, ()>(chunk)?;
        }
        Ok(())
    }
}

/// The most threads the latency phase places orders from.
const LATENCY_PLACERS: u16 = 64;

/// Threads enough to keep an open-loop schedule of `rate` orders/s when a
/// single `place-order` (commit, publish, confirm) takes up to 50 ms: at
/// least the benchmark's concurrency, at most [`LATENCY_PLACERS`].
fn latency_placers(rate: f64, concurrency: u16) -> u16 {
    ((rate * 0.05).ceil().min(f64::from(LATENCY_PLACERS)) as u16).max(concurrency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smtp_url_handed_to_the_worker_keeps_credentials_and_tls() {
        for raw in [
            "smtp://127.0.0.1:2525",
            "smtp://me:p%40ss@mail.example.com:587?tls=starttls",
            "smtps://mail.example.com:465",
        ] {
            let parsed = SmtpSettings::parse(raw).unwrap();
            let rebuilt = SmtpSettings::parse(smtp_url(&parsed).unwrap().as_str()).unwrap();
            assert_eq!(
                (rebuilt.host, rebuilt.port, rebuilt.tls, rebuilt.credentials),
                (parsed.host, parsed.port, parsed.tls, parsed.credentials),
                "{raw}"
            );
        }
    }
}
