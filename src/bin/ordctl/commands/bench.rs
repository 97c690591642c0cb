//! `ordctl bench`

use crate::bench::{self, Options, Report};
use std::time::Duration;

use anyhow::Context;
use ordctl::error::InvalidInput;
use ordctl::shutdown::Shutdown;

use super::Ctx;
use crate::flags;
use crate::output;

/// Measure this machine's raw limits (pgbench, Postfix's smtp-source,
/// RabbitMQ through amiquip) and the pipeline's place rate, drain rate,
/// latency, worker memory and replay-dlq rate, each next to the raw limit
/// at the same concurrency.
///
/// Needs a real SMTP server (--smtp-url / SMTP_URL), pgbench and
/// smtp-source. Works in its own throw-away database and namespace, removed
/// at the end. Build with --release for real figures. Example:
/// `scripts/bench.sh` or
/// `SMTP_URL=smtp://127.0.0.1:2525 ordctl bench --concurrency 4,32 --json`;
/// queue types side by side: `scripts/bench.sh --cluster` (starts the local
/// cluster) or `ordctl bench --cluster "$AMQP_URL_OF_THE_CLUSTER" --cluster-only`
#[derive(clap::Args)]
pub struct Args {
    /// Orders placed and drained, and operations per raw phase.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..))]
    orders: u64,

    /// The concurrencies of the curve, comma-separated: placing threads,
    /// worker slots, pgbench clients and smtp-source sessions.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: Vec<u16>,

    /// Orders per second offered in the latency phase (default: half what
    /// the pipeline sustains end to end, orders placed flat out while the
    /// default worker drains them).
    #[arg(long, value_name = "PER_SEC")]
    latency_rate: Option<f64>,

    /// How long the latency phase offers its load.
    #[arg(long, default_value = "20", value_name = "SECS", value_parser = flags::positive_seconds)]
    latency_secs: Duration,

    /// HTTP section: `POST /orders` per second offered to `ordctl serve`
    /// at a constant rate, with wrk.
    #[arg(long, default_value_t = 1_000.0, value_name = "PER_SEC")]
    http_rate: f64,

    /// HTTP section: how long the rate is offered.
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = flags::positive_seconds)]
    http_secs: Duration,

    /// HTTP section: connections that offer the rate.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    http_connections: u16,

    /// HTTP section: connections of the flat-out run (and pgbench clients
    /// it is compared with).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    http_max_connections: u16,

    /// Run only the HTTP section.
    #[arg(long)]
    http_only: bool,

    /// Run only the replay-dlq section (and its raw RabbitMQ figure).
    #[arg(long, conflicts_with = "http_only")]
    replay_only: bool,

    /// Run only the sustained end-to-end rate and the latency phase (with
    /// --latency-rate, only the latency phase).
    #[arg(long, conflicts_with_all = ["http_only", "replay_only"])]
    latency_only: bool,

    /// The nodes of a RabbitMQ cluster, comma-separated, as
    /// `scripts/cluster.sh start` prints them: adds the end-to-end drain on
    /// a classic and a quorum queue of the --amqp-url node and on a quorum
    /// queue of this cluster, side by side.
    #[arg(
        long,
        env = "ORDCTL_BENCH_CLUSTER",
        value_name = "AMQP_URLS",
        hide_env_values = true
    )]
    cluster: Option<String>,

    /// Run only the queue-type section (needs --cluster).
    #[arg(long, requires = "cluster")]
    cluster_only: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        if self
            .latency_rate
            .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
        {
            return Err(InvalidInput::new("--latency-rate must be a positive number").into());
        }
        if !(self.http_rate > 0.0 && self.http_rate.is_finite()) {
            return Err(InvalidInput::new("--http-rate must be a positive number").into());
        }
        let options = Options {
            orders: self.orders,
            concurrencies: self.concurrency,
            latency_rate: self.latency_rate,
            latency_secs: self.latency_secs.as_secs_f64(),
            worker_exe: std::env::current_exe().context("locating the ordctl binary")?,
            http_rate: self.http_rate,
            http_secs: self.http_secs.as_secs_f64(),
            http_connections: self.http_connections,
            http_max_connections: self.http_max_connections,
            http_only: self.http_only,
            replay_only: self.replay_only,
            latency_only: self.latency_only,
            cluster: self
                .cluster
                .as_deref()
                .map(|raw| ordctl::config::parse_brokers("--cluster", raw))
                .transpose()?,
            cluster_only: self.cluster_only,
        };
        let report = bench::run(&ctx.settings, &options, shutdown)?;
        if ctx.json {
            return output::json(&report);
        }
        print_table(&report)
    }
}

fn print_table(report: &Report) -> anyhow::Result<()> {
    let machine = &report.machine;
    let concurrencies: Vec<String> = report
        .parameters
        .concurrencies
        .iter()
        .map(u16::to_string)
        .collect();
    output::line(format!(
        "{} · {} cores ({}) · {} GiB · Linux {} · CPU {:.0}% busy before, load {} · {} orders per phase, concurrency {}",
        report.started_at.format("%Y-%m-%d %H:%M UTC"),
        machine.cpus,
        machine.cpu_model,
        machine.memory_gib,
        machine.kernel,
        report.cpu_busy_before * 100.0,
        report.load_average_before,
        report.parameters.orders,
        concurrencies.join(","),
    ))?;
    let mut table = output::table(["figure", "value", "vs raw limit", "target", "met"]);
    for figure in &report.figures {
        let value = if figure.value >= 100.0 {
            format!("{:.0} {}", figure.value, figure.unit)
        } else {
            format!("{:.1} {}", figure.value, figure.unit)
        };
        let ratio = match (&figure.baseline, figure.ratio) {
            (Some(baseline), Some(ratio)) => format!("{ratio:.2} × {baseline}"),
            _ => String::new(),
        };
        let met = match figure.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        table.add_row(vec![
            figure.name.clone(),
            value,
            ratio,
            figure.target.clone().unwrap_or_default(),
            met.to_string(),
        ]);
    }
    output::line(table)
}
