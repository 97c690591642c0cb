//! `ordctl bench`: measures this machine's raw limits (PostgreSQL with
//! `pgbench`, SMTP with Postfix's `smtp-source`, RabbitMQ through amiquip —
//! no ordctl code in the way) and the pipeline's figures, each next to the
//! raw limit that bounds it at the same concurrency.
//!
//! It runs in a throw-away database (`ordctl_bench_<random>`) and namespace
//! (`bench_<random>`) that it removes at the end, so a user's data is never
//! touched. It needs a real SMTP server: a benchmark into `.eml` files would
//! measure the disk, not the pipeline.
//!
//! Each section (raw RabbitMQ, the concurrency curve, the default worker,
//! latency, the HTTP API under load, replay-dlq, and with `--cluster` the
//! queue types side by side) is one function that adds
//! its part of the [`Report`] and its rows of the table; a new section is
//! one more such function in [`run`].

pub mod http;
pub mod measure;
pub mod pipeline;
pub mod queues;
pub mod raw;
pub mod replay;

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::RunQueryDsl;
use ordctl::config::{Settings, SmtpSettings};
use ordctl::db::{self, PgPool};
use ordctl::domain::{Namespace, UserId};
use ordctl::error::InvalidInput;
use ordctl::messaging::{self, publisher::Publisher, topology::Topology, Brokers};
use ordctl::pipeline::worker::DEFAULT_CONCURRENCY;
use ordctl::shutdown::Shutdown;
use serde::Serialize;

use self::measure::{Machine, Rate};
use self::pipeline::{Latency, Pipeline, WorkerFlags, WorkerRun};
use self::raw::Connections;

/// Demo users the orders are spread over (each is cached after first use).
const USERS: u32 = 1000;
/// The window (publishes per confirm wait) and prefetch of the batched raw
/// RabbitMQ figures, which show what batching could gain.
const BATCH: u16 = 100;

/// The targets of the speed issue.
pub const PLACE_TARGET: f64 = 0.7;
pub const DRAIN_VS_SMTP_TARGET: f64 = 0.5;
pub const DEFAULT_DRAIN_TARGET: f64 = 1_500.0;
pub const BEST_DRAIN_TARGET: f64 = 2_500.0;
pub const P50_TARGET_MS: f64 = 10.0;
pub const P99_TARGET_MS: f64 = 50.0;
pub const RSS_TARGET_MIB: f64 = 64.0;
/// The HTTP issue's targets: the offered rate held, p99 within 50 ms, and
/// flat out at least 0.7 × raw PostgreSQL at the same concurrency.
pub const HTTP_HELD_TARGET: f64 = 0.98;
pub const HTTP_P99_TARGET_MS: f64 = 50.0;
pub const HTTP_MAX_TARGET: f64 = 0.7;
/// replay-dlq moving a backlog: at least half raw RabbitMQ's publish rate
/// with a confirm per 100, on one channel as the replay publishes.
pub const REPLAY_TARGET: f64 = 0.5;

#[derive(Clone, Debug)]
pub struct Options {
    /// Orders (and raw operations) per throughput phase.
    pub orders: u64,
    /// The concurrencies of the curve: placing threads, worker slots and
    /// raw connections.
    pub concurrencies: Vec<u16>,
    /// Offered load of the latency phase; default half what the pipeline
    /// sustains end to end (placing flat out while the default worker
    /// drains).
    pub latency_rate: Option<f64>,
    pub latency_secs: f64,
    /// The `ordctl` binary to run as the worker and the server.
    pub worker_exe: PathBuf,
    /// The HTTP section: `POST /orders` offered at this rate for this long
    /// over this many connections, then flat out at `http_max_connections`.
    pub http_rate: f64,
    pub http_secs: f64,
    pub http_connections: u16,
    pub http_max_connections: u16,
    /// Only the HTTP section (and its raw PostgreSQL figure).
    pub http_only: bool,
    /// Only the replay-dlq section (and its raw RabbitMQ figure).
    pub replay_only: bool,
    /// Only the latency section (the sustained rate, unless `latency_rate`
    /// is given, and the latency phase).
    pub latency_only: bool,
    /// The nodes of a cluster: adds the queue-type section (classic and
    /// quorum on one node, quorum on the cluster).
    pub cluster: Option<Brokers>,
    /// Only the queue-type section.
    pub cluster_only: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub started_at: DateTime<Utc>,
    pub machine: Machine,
    /// Share of all cores busy in the second before the run, and the load
    /// averages: other load (a build, tests) skews every figure.
    pub cpu_busy_before: f64,
    pub load_average_before: String,
    pub parameters: Parameters,
    pub amqp: Option<AmqpLimits>,
    /// Raw limits and pipeline figures at each concurrency.
    pub curve: Vec<Point>,
    /// `ordctl worker` with no flags draining the backlog.
    pub default_worker: Option<Drain>,
    pub latency: Option<Latency>,
    /// `ordctl serve` under `wrk`.
    pub http: Option<http::HttpFigures>,
    /// `replay-dlq` moving a backlog of dead letters.
    pub replay: Option<ReplayFigures>,
    /// The end-to-end drain per queue type and cluster size (`--cluster`).
    pub queues: Vec<queues::QueueSetup>,
    pub worker: WorkerFigures,
    /// Every figure with its ratio to the raw limit and target: what the
    /// table shows.
    pub figures: Vec<Figure>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    pub orders: u64,
    pub concurrencies: Vec<u16>,
    pub latency_secs: f64,
    pub smtp: String,
    /// The scratch database and namespace (removed at the end).
    pub database: String,
    pub namespace: String,
}

/// RabbitMQ through amiquip at the curve's highest concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct AmqpLimits {
    pub concurrency: u16,
    /// Persistent publishes, each waiting for its confirm.
    pub publish_confirm_each: Rate,
    /// Consume and ack, one unacked message per channel.
    pub consume_prefetch_1: Rate,
    pub publish_confirm_per_100: Rate,
    pub consume_prefetch_100: Rate,
}

/// `replay-dlq` moving `orders` dead letters back to their work queue, and
/// the raw limit it is held to: persistent publishes on one channel (the
/// replay's concurrency) with a confirm per 100 (its window).
#[derive(Clone, Debug, Serialize)]
pub struct ReplayFigures {
    pub raw_publish_confirm_per_100: Rate,
    pub dead_letters: Rate,
}

/// One concurrency of the curve.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub concurrency: u16,
    /// `pgbench` running the order+outbox transaction with this many clients.
    pub raw_postgres: Rate,
    /// `smtp-source` with this many sessions, each reusing its connection;
    /// absent when it cannot speak to the server (TLS or AUTH).
    pub raw_smtp: Option<Rate>,
    /// The same with a new connection per message, as the speed issue
    /// measured raw SMTP.
    pub raw_smtp_per_message: Option<Rate>,
    /// `place-order --count N --concurrency C`.
    pub place: Rate,
    /// `ordctl worker --concurrency C` draining the N placed orders.
    pub drain: Drain,
    /// `ordctl worker --smtp-connections C` (its default slots) draining
    /// as many: what C SMTP connections carry, beside smtp-source's C.
    pub drain_smtp_connections: Drain,
}

#[derive(Clone, Debug, Serialize)]
pub struct Drain {
    /// The flags passed to the worker; absent ones are its defaults.
    #[serde(flatten)]
    pub flags: WorkerFlags,
    pub rate: Rate,
    pub peak_rss_mib: f64,
    /// The worker's own CPU time per order.
    pub cpu_ms_per_order: f64,
}

impl Drain {
    fn new(flags: WorkerFlags, rate: Rate, run: &WorkerRun) -> Self {
        Self {
            flags,
            cpu_ms_per_order: run.cpu_secs * 1000.0 / rate.count.max(1) as f64,
            rate,
            peak_rss_mib: mib(run.peak_rss_kib),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerFigures {
    /// The highest VmHWM of every worker process the benchmark ran.
    pub peak_rss_mib: f64,
}

impl WorkerFigures {
    /// Takes in one more worker process's peak RSS.
    fn saw(&mut self, peak_rss_mib: f64) {
        self.peak_rss_mib = self.peak_rss_mib.max(peak_rss_mib);
    }
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

impl Figure {
    fn plain(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.to_string(),
            baseline: None,
            ratio: None,
            target: None,
            met: None,
        }
    }

    /// Compared with `base`, optionally with a target ratio.
    fn versus(mut self, base_name: &str, base: f64, target: Option<f64>) -> Self {
        let ratio = (base > 0.0).then(|| self.value / base);
        self.baseline = Some(base_name.to_string());
        self.ratio = ratio;
        if let Some(target) = target {
            self.target = Some(format!("≥ {target:.2} × {base_name}"));
            self.met = Some(ratio.is_some_and(|r| r >= target));
        }
        self
    }

    fn at_least(mut self, limit: f64) -> Self {
        self.target = Some(format!("≥ {limit} {}", self.unit));
        self.met = Some(self.value >= limit);
        self
    }

    fn at_most(mut self, limit: f64) -> Self {
        self.target = Some(format!("≤ {limit} {}", self.unit));
        self.met = Some(self.value <= limit);
        self
    }
}

/// What every section needs.
struct Bench<'a> {
    settings: &'a Settings,
    topology: &'a Topology,
    smtp: &'a SmtpSettings,
    pool: &'a PgPool,
    options: &'a Options,
    shutdown: &'a Shutdown,
    user_ids: Vec<UserId>,
}

impl Bench<'_> {
    fn interrupted(&self) -> anyhow::Result<()> {
        if self.shutdown.is_triggered() {
            anyhow::bail!("interrupted");
        }
        Ok(())
    }

    /// The curve's highest concurrency.
    fn max_concurrency(&self) -> u16 {
        self.options
            .concurrencies
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
    }

    fn pipeline(&self) -> Pipeline<'_> {
        Pipeline {
            settings: self.settings,
            topology: self.topology,
            pool: self.pool,
            worker_exe: &self.options.worker_exe,
            shutdown: self.shutdown,
        }
    }
}

/// Runs every section and returns the figures. Whatever happens, the
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
    let topology = ordctl::pipeline::topology(&settings);
    let scratch = Scratch::new(&settings, Some(topology.namespace.name("bench.raw")));
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
    let cpu_busy_before = measure::busy_in_the_next_second();
    if cpu_busy_before > 0.2 {
        tracing::warn!(
            "{:.0}% of the CPU was busy before the benchmark started: figures will be low",
            cpu_busy_before * 100.0
        );
    }
    let url = &settings.database_url;
    db::create_database_if_missing(url)?;
    let mut conn = db::connect(url)?;
    db::run_migrations(&mut conn)?;
    let users = ordctl::pipeline::seed::seed(&mut conn, USERS)?;
    // The namespace's exchange and queues, as every publisher and worker
    // declares them: a phase that waits for a worker's consumers on them
    // may come before anything else has.
    Publisher::connect(&settings.amqp_url, topology)?.close();
    let max_concurrency = options.concurrencies.iter().copied().max().unwrap_or(1);
    let pool = db::pool(
        url,
        u32::from(max_concurrency.max(pipeline::LATENCY_PLACERS)),
    )?;
    let bench = Bench {
        settings,
        topology,
        smtp,
        pool: &pool,
        options,
        shutdown,
        user_ids: users.iter().map(|user| user.id).collect(),
    };
    let mut report = Report {
        started_at,
        machine: Machine::describe(),
        cpu_busy_before,
        load_average_before: measure::load_average(),
        parameters: Parameters {
            orders: options.orders,
            concurrencies: options.concurrencies.clone(),
            latency_secs: options.latency_secs,
            smtp: smtp.to_string(),
            database: url.path().trim_start_matches('/').to_string(),
            namespace: settings.namespace.to_string(),
        },
        amqp: None,
        curve: Vec::new(),
        default_worker: None,
        latency: None,
        http: None,
        replay: None,
        queues: Vec::new(),
        worker: WorkerFigures::default(),
        figures: Vec::new(),
    };
    if options.http_only {
        http_section(&bench, &mut report)?;
        return Ok(report);
    }
    if let (true, Some(cluster)) = (options.cluster_only, &options.cluster) {
        queues::section(&bench, cluster, &mut report)?;
        return Ok(report);
    }
    if options.latency_only {
        latency_section(&bench, &mut report)?;
        return Ok(report);
    }
    let raw_queue = scratch.raw_queue.as_deref().expect("the scratch raw queue");
    if options.replay_only {
        raw::declare_queue(&settings.amqp_url, raw_queue)?;
        // The dead letters are events of orders in the database.
        bench
            .pipeline()
            .place(options.orders, max_concurrency)
            .context("placing the orders to dead-letter")?;
        replay_section(&bench, raw_queue, &mut report)?;
        return Ok(report);
    }
    let email = raw::sample_email(settings, &users[0])?;
    amqp_section(&bench, raw_queue, max_concurrency, &mut report)?;
    curve_section(&bench, &email, &mut report)?;
    default_worker_section(&bench, &mut report)?;
    latency_section(&bench, &mut report)?;
    http_section(&bench, &mut report)?;
    // Last: the replayed messages wait in the work queue with no worker
    // to take them, until the scratch queues are removed.
    replay_section(&bench, raw_queue, &mut report)?;
    if let Some(cluster) = &options.cluster {
        queues::section(&bench, cluster, &mut report)?;
    }
    report.figures.push(
        Figure::plain(
            "worker peak RSS (VmHWM, every run)",
            report.worker.peak_rss_mib,
            "MiB",
        )
        .at_most(RSS_TARGET_MIB),
    );
    Ok(report)
}

/// Raw RabbitMQ, at the curve's highest concurrency: what one confirm per
/// publish and one unacked message per consumer cost against batches.
fn amqp_section(bench: &Bench<'_>, queue: &str, c: u16, report: &mut Report) -> anyhow::Result<()> {
    let n = bench.options.orders;
    let amqp = &bench.settings.amqp_url;
    raw::declare_queue(amqp, queue)?;
    tracing::info!("raw RabbitMQ: {n} persistent publishes and consumes, {c} channels");
    let limits = AmqpLimits {
        concurrency: c,
        publish_confirm_each: raw::amqp_publish(amqp, queue, n, c, 1).context("raw publish")?,
        consume_prefetch_1: raw::amqp_consume(amqp, queue, n, c, 1).context("raw consume")?,
        publish_confirm_per_100: raw::amqp_publish(amqp, queue, n, c, u64::from(BATCH))
            .context("raw batched publish")?,
        consume_prefetch_100: raw::amqp_consume(amqp, queue, n, c, BATCH)
            .context("raw batched consume")?,
    };
    bench.interrupted()?;
    let rows = [
        (
            "persistent publish, confirm each",
            &limits.publish_confirm_each,
        ),
        ("consume + ack, prefetch 1", &limits.consume_prefetch_1),
        (
            "persistent publish, confirm per 100",
            &limits.publish_confirm_per_100,
        ),
        ("consume + ack, prefetch 100", &limits.consume_prefetch_100),
    ];
    for (name, rate) in rows {
        report.figures.push(Figure::plain(
            format!("raw RabbitMQ at {c}: {name}"),
            rate.per_sec,
            "msg/s",
        ));
    }
    report.amqp = Some(limits);
    Ok(())
}

/// At each concurrency C: pgbench and smtp-source with C clients, then
/// `place-order --count N --concurrency C`, and `ordctl worker
/// --concurrency C` (C slots per consumer) draining what was placed; then
/// as many placed again, drained by `ordctl worker --smtp-connections C`
/// (its default slots sharing C SMTP connections), the drain held to
/// smtp-source's C sessions.
fn curve_section(
    bench: &Bench<'_>,
    email: &lettre::Message,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = bench.options.orders;
    let pipeline = bench.pipeline();
    for &c in &bench.options.concurrencies {
        tracing::info!("raw PostgreSQL: pgbench, {n} order+outbox transactions, {c} clients");
        let raw_postgres =
            raw::pgbench(&bench.settings.database_url, &bench.user_ids, n, c).context("pgbench")?;
        let mut conn = db::connect(&bench.settings.database_url)?;
        // The raw rows must not reach the pipeline's relay.
        diesel::sql_query("TRUNCATE outbox, orders CASCADE").execute(&mut conn)?;
        tracing::info!("raw SMTP: smtp-source, {n} messages, {c} sessions");
        let raw_smtp = raw::smtp_source(bench.smtp, email, n, c, Connections::Reused)
            .context("smtp-source -d")?;
        let raw_smtp_per_message =
            raw::smtp_source(bench.smtp, email, n, c, Connections::PerMessage)
                .context("smtp-source")?;
        bench.interrupted()?;
        tracing::info!("pipeline: placing {n} orders, concurrency {c}");
        let place = pipeline.place(n, c).context("placing orders")?;
        bench.interrupted()?;
        let drain = drain_with(
            bench,
            WorkerFlags::slots(c),
            &format!("--concurrency {c}"),
            report,
        )?;
        pipeline.place(n, c).context("placing orders")?;
        let drain_smtp_connections = drain_with(
            bench,
            WorkerFlags::smtp_connections(c),
            &format!("--smtp-connections {c}"),
            report,
        )?;

        let figures = &mut report.figures;
        figures.push(Figure::plain(
            format!("raw PostgreSQL at {c} (pgbench)"),
            raw_postgres.per_sec,
            "tx/s",
        ));
        if let Some(smtp) = &raw_smtp_per_message {
            figures.push(Figure::plain(
                format!("raw SMTP at {c} (smtp-source, a connection per message)"),
                smtp.per_sec,
                "msg/s",
            ));
        }
        if let Some(smtp) = &raw_smtp {
            figures.push(Figure::plain(
                format!("raw SMTP at {c} (smtp-source -d, connections reused)"),
                smtp.per_sec,
                "msg/s",
            ));
        }
        figures.push(
            Figure::plain(format!("place rate at {c}"), place.per_sec, "orders/s").versus(
                &format!("pgbench at {c}"),
                raw_postgres.per_sec,
                Some(PLACE_TARGET),
            ),
        );
        figures.push(Figure::plain(
            format!("drain, worker --concurrency {c}"),
            drain.rate.per_sec,
            "emails/s",
        ));
        let drained = || {
            Figure::plain(
                format!("drain, worker --smtp-connections {c}"),
                drain_smtp_connections.rate.per_sec,
                "emails/s",
            )
        };
        if let Some(smtp) = &raw_smtp_per_message {
            figures.push(drained().versus(
                &format!("smtp-source at {c}, a connection per message"),
                smtp.per_sec,
                Some(DRAIN_VS_SMTP_TARGET),
            ));
        }
        if let Some(smtp) = &raw_smtp {
            figures.push(drained().versus(
                &format!("smtp-source -d at {c}, connections reused"),
                smtp.per_sec,
                None,
            ));
        }
        report.curve.push(Point {
            concurrency: c,
            raw_postgres,
            raw_smtp,
            raw_smtp_per_message,
            place,
            drain,
            drain_smtp_connections,
        });
    }
    Ok(())
}

/// `ordctl worker` with `flags` draining the N orders placed before it;
/// its peak RSS joins the report's.
fn drain_with(
    bench: &Bench<'_>,
    flags: WorkerFlags,
    described: &str,
    report: &mut Report,
) -> anyhow::Result<Drain> {
    let n = bench.options.orders;
    tracing::info!("pipeline: draining {n} orders through `ordctl worker {described}`");
    let (rate, run) = bench
        .pipeline()
        .drain(n, flags)
        .with_context(|| format!("draining with {described}"))?;
    let drain = Drain::new(flags, rate, &run);
    report.worker.saw(drain.peak_rss_mib);
    bench.interrupted()?;
    Ok(drain)
}

/// A new user's `ordctl worker` (no flags) draining N placed orders.
fn default_worker_section(bench: &Bench<'_>, report: &mut Report) -> anyhow::Result<()> {
    let n = bench.options.orders;
    let pipeline = bench.pipeline();
    let c = bench.max_concurrency();
    // What PostgreSQL alone allows a drain: the worker's database work
    // with as many threads as the default worker has slots on the two
    // consumers that take every order.
    let threads = 2 * DEFAULT_CONCURRENCY;
    tracing::info!(
        "PostgreSQL alone: the worker's database work for {n} orders, {threads} threads"
    );
    let database = pipeline
        .database_work(&bench.user_ids, n, threads)
        .context("measuring the worker's database work alone")?;
    tracing::info!(
        "PostgreSQL alone: {:.0} orders/s, {:.0}% of the CPU busy",
        database.per_sec,
        database.cpu_busy * 100.0
    );
    let database_name = "PostgreSQL alone";
    report.figures.push(Figure::plain(
        format!(
            "{database_name}: the worker's database work per order, {threads} threads \
             (no broker, SMTP or Redis)"
        ),
        database.per_sec,
        "orders/s",
    ));
    bench.interrupted()?;
    pipeline.place(n, c).context("placing orders")?;
    let drain = drain_with(bench, WorkerFlags::default(), "(defaults)", report)?;
    report.figures.push(
        Figure::plain(
            "drain, `ordctl worker` with defaults",
            drain.rate.per_sec,
            "emails/s",
        )
        .versus(database_name, database.per_sec, None)
        .at_least(DEFAULT_DRAIN_TARGET),
    );
    let best = report
        .curve
        .iter()
        .flat_map(|point| [&point.drain, &point.drain_smtp_connections])
        .map(|drain| drain.rate.per_sec)
        .fold(drain.rate.per_sec, f64::max);
    report.figures.push(
        Figure::plain(
            "drain, best worker setting (the curve's and the defaults')",
            best,
            "emails/s",
        )
        .versus(database_name, database.per_sec, None)
        .at_least(BEST_DRAIN_TARGET),
    );
    report.default_worker = Some(drain);
    bench.interrupted()
}

/// The default worker running while orders are placed on an open-loop
/// schedule at half what the pipeline sustains end to end (placing flat
/// out while the worker drains); latencies from the database.
fn latency_section(bench: &Bench<'_>, report: &mut Report) -> anyhow::Result<()> {
    let n = bench.options.orders;
    let c = bench.max_concurrency();
    let options = bench.options;
    // `--latency-only --latency-rate R` measures the latency phase alone.
    let sustained = if options.latency_only && options.latency_rate.is_some() {
        None
    } else {
        tracing::info!(
            "pipeline: {n} orders placed one by one from {c} threads while `ordctl worker` drains them"
        );
        let (end_to_end, run) = bench
            .pipeline()
            .sustained(&bench.user_ids, n, c)
            .context("measuring the sustained rate")?;
        report.worker.saw(mib(run.peak_rss_kib));
        report.figures.push(Figure::plain(
            "sustained end to end: placed and emailed, worker defaults",
            end_to_end.per_sec,
            "orders/s",
        ));
        bench.interrupted()?;
        Some(end_to_end.per_sec)
    };
    let rate = match (options.latency_rate, sustained) {
        (Some(rate), _) => rate,
        (None, Some(sustained)) => sustained / 2.0,
        (None, None) => unreachable!("the sustained rate is measured without --latency-rate"),
    }
    .max(1.0);
    let secs = bench.options.latency_secs;
    tracing::info!(
        "pipeline: latency at {rate:.0} orders/s for {secs}s with `ordctl worker` running"
    );
    let (latency, run) = bench
        .pipeline()
        .latency(&bench.user_ids, rate, secs)
        .context("measuring latency")?;
    report.worker.saw(mib(run.peak_rss_kib));
    let figures = &mut report.figures;
    let offered = Figure::plain(
        "offered load for latency (achieved)",
        latency.achieved_per_sec,
        "orders/s",
    );
    figures.push(match sustained {
        Some(sustained) => offered.versus("sustained", sustained, None),
        None => offered,
    });
    let to_250 = &latency.commit_to_smtp_250_ms;
    figures.push(Figure::plain("commit → SMTP 250, p50", to_250.p50, "ms").at_most(P50_TARGET_MS));
    figures.push(Figure::plain("commit → SMTP 250, p95", to_250.p95, "ms"));
    figures.push(Figure::plain("commit → SMTP 250, p99", to_250.p99, "ms").at_most(P99_TARGET_MS));
    for (name, value) in [
        (
            "relay lag (published_at − created_at), p50",
            latency.relay_lag_ms.p50,
        ),
        (
            "relay lag (published_at − created_at), p99",
            latency.relay_lag_ms.p99,
        ),
        (
            "published → worker's delivery transaction, p99",
            latency.published_to_delivery_ms.p99,
        ),
        (
            "delivery transaction → SMTP 250, p99",
            latency.in_delivery_ms.p99,
        ),
    ] {
        figures.push(Figure::plain(name, value, "ms"));
    }
    report.latency = Some(latency);
    Ok(())
}

/// A constant-arrival-rate HTTP scenario with wrk: `POST /orders` to `ordctl serve` at a
/// constant offered rate, then flat out next to pgbench at the same
/// concurrency.
fn http_section(bench: &Bench<'_>, report: &mut Report) -> anyhow::Result<()> {
    let options = bench.options;
    let figures = http::HttpLoad {
        settings: bench.settings,
        exe: &options.worker_exe,
        user_ids: &bench.user_ids,
        rate: options.http_rate,
        secs: options.http_secs,
        connections: options.http_connections,
        max_connections: options.http_max_connections,
        max_secs: (options.http_secs / 4.0).clamp(1.0, 20.0),
    }
    .measure()
    .context("measuring the HTTP API")?;
    bench.interrupted()?;
    let rate = figures.offered_per_sec;
    let constant = &figures.constant;
    let max = &figures.max;
    let at = |what: &str| format!("HTTP POST /orders at {rate:.0}/s offered: {what}");
    let rows = &mut report.figures;
    rows.push(
        Figure::plain(at("achieved"), constant.per_sec, "req/s").versus(
            "offered",
            rate,
            Some(HTTP_HELD_TARGET),
        ),
    );
    rows.push(Figure::plain(at("errors"), constant.errors as f64, "requests").at_most(0.0));
    rows.push(Figure::plain(at("p50"), constant.p50_ms, "ms"));
    rows.push(Figure::plain(at("p99"), constant.p99_ms, "ms").at_most(HTTP_P99_TARGET_MS));
    let c = max.connections;
    rows.push(Figure::plain(
        format!("raw PostgreSQL at {c} (pgbench)"),
        figures.raw_postgres.per_sec,
        "tx/s",
    ));
    rows.push(
        Figure::plain(
            format!("HTTP POST /orders flat out at {c} connections"),
            max.per_sec,
            "req/s",
        )
        .versus(
            &format!("pgbench at {c}"),
            figures.raw_postgres.per_sec,
            Some(HTTP_MAX_TARGET),
        ),
    );
    rows.push(Figure::plain(
        format!("HTTP POST /orders flat out at {c}: errors"),
        max.errors as f64,
        "requests",
    ));
    rows.push(Figure::plain(
        format!("HTTP POST /orders flat out at {c}: p99"),
        max.p99_ms,
        "ms",
    ));
    report.http = Some(figures);
    Ok(())
}

/// A backlog of N dead letters moved back by `replay-dlq`, next to raw
/// RabbitMQ publishing as it does: one channel, a confirm per 100.
fn replay_section(bench: &Bench<'_>, queue: &str, report: &mut Report) -> anyhow::Result<()> {
    let n = bench.options.orders;
    let amqp = &bench.settings.amqp_url;
    tracing::info!("raw RabbitMQ: {n} persistent publishes, 1 channel, a confirm per {BATCH}");
    let raw = raw::amqp_publish(amqp, queue, n, 1, u64::from(BATCH))
        .context("raw batched publish on one channel")?;
    bench.interrupted()?;
    let mut conn = db::connect(&bench.settings.database_url)?;
    replay::dead_letter(&mut conn, amqp, bench.topology, n)?;
    tracing::info!("pipeline: replay-dlq moving {n} dead letters");
    let moved = replay::measure(&mut conn, amqp, bench.topology, n)?;
    bench.interrupted()?;
    let base = "persistent publish, confirm per 100";
    report.figures.push(Figure::plain(
        format!("raw RabbitMQ at 1: {base}"),
        raw.per_sec,
        "msg/s",
    ));
    report.figures.push(
        Figure::plain("replay-dlq, dead letters moved", moved.per_sec, "msg/s").versus(
            &format!("{base} at 1"),
            raw.per_sec,
            Some(REPLAY_TARGET),
        ),
    );
    report.replay = Some(ReplayFigures {
        raw_publish_confirm_per_100: raw,
        dead_letters: moved,
    });
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the benchmark creates, removed at the end even after a failure.
struct Scratch<'a> {
    settings: &'a Settings,
    topology: Topology,
    raw_queue: Option<String>,
}

impl<'a> Scratch<'a> {
    fn new(settings: &'a Settings, raw_queue: Option<String>) -> Self {
        Self {
            settings,
            topology: ordctl::pipeline::topology(settings),
            raw_queue,
        }
    }

    fn remove(&self) {
        if let Err(error) = db::drop_database(&self.settings.database_url) {
            tracing::warn!("benchmark: dropping the scratch database: {error:#}");
        }
        self.remove_namespace();
    }

    /// The namespace's queues, exchanges and Redis keys; not the database.
    fn remove_namespace(&self) {
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
        queues.extend(self.raw_queue.clone());
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
