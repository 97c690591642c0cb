//! Queue types side by side (`--cluster`): the end-to-end drain — N orders
//! placed, then `ordctl worker` with its defaults draining them into the
//! SMTP server — on a classic queue and on a quorum queue of the
//! `--amqp-url` node, and on a quorum queue of a three-node cluster
//! (`scripts/cluster.sh start`), one after the other in one run. Each runs
//! in a namespace of its own (a namespace's queues have one type), removed
//! right after it.

use anyhow::Context;
use ordctl::config::Settings;
use ordctl::domain::Namespace;
use ordctl::messaging::topology::QueueType;
use ordctl::messaging::Brokers;
use serde::Serialize;

use super::measure::Rate;
use super::pipeline::{Pipeline, WorkerFlags};
use super::{Bench, Drain, Figure, Report, Scratch};

/// One setup's figures.
#[derive(Clone, Debug, Serialize)]
pub struct QueueSetup {
    pub setup: String,
    pub queue_type: QueueType,
    pub nodes: usize,
    pub place: Rate,
    pub drain: Drain,
}

pub(super) fn section(
    bench: &Bench<'_>,
    cluster: &Brokers,
    report: &mut Report,
) -> anyhow::Result<()> {
    let one_node = &bench.settings.amqp_url;
    let setups = [
        ("classic queue, one node", one_node, QueueType::Classic),
        ("quorum queue, one node", one_node, QueueType::Quorum),
        ("quorum queue, 3-node cluster", cluster, QueueType::Quorum),
    ];
    for (index, (setup, brokers, queue_type)) in setups.into_iter().enumerate() {
        let mut settings = bench.settings.clone();
        settings.amqp_url = brokers.clone();
        settings.queue_type = queue_type;
        settings.namespace = Namespace::parse(&format!("{}_q{index}", bench.settings.namespace))?;
        let measured = measure(bench, &settings, setup);
        Scratch::new(&settings, None).remove_namespace();
        let (place, drain) = measured?;
        report.worker.saw(drain.peak_rss_mib);
        report.figures.push(Figure::plain(
            format!("place rate, {setup}"),
            place.per_sec,
            "orders/s",
        ));
        report.figures.push(Figure::plain(
            format!("e2e drain, {setup}"),
            drain.rate.per_sec,
            "emails/s",
        ));
        report.queues.push(QueueSetup {
            setup: setup.to_string(),
            queue_type,
            nodes: brokers.urls().len(),
            place,
            drain,
        });
        bench.interrupted()?;
    }
    Ok(())
}

/// Places N orders at the curve's highest concurrency, then drains them
/// with a default worker.
fn measure(bench: &Bench<'_>, settings: &Settings, setup: &str) -> anyhow::Result<(Rate, Drain)> {
    let topology = ordctl::pipeline::topology(settings);
    let pipeline = Pipeline {
        settings,
        topology: &topology,
        pool: bench.pool,
        worker_exe: &bench.options.worker_exe,
        shutdown: bench.shutdown,
    };
    let n = bench.options.orders;
    let c = bench.max_concurrency();
    tracing::info!("queue types: placing {n} orders, {setup}");
    let place = pipeline
        .place(n, c)
        .with_context(|| format!("placing orders, {setup}"))?;
    bench.interrupted()?;
    tracing::info!("queue types: draining {n} orders through `ordctl worker`, {setup}");
    let (rate, run) = pipeline
        .drain(n, WorkerFlags::default())
        .with_context(|| format!("draining, {setup}"))?;
    Ok((place, Drain::new(WorkerFlags::default(), rate, &run)))
}
