//! `ordctl bench` with a tiny load: proves every phase runs and the JSON
//! carries every figure. It asserts nothing about speed — benchmarks are
//! never timed tests; the real figures are in BENCHMARKS.md.

use crate::common;

use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::Value;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    datname: String,
}

#[test]
fn bench_with_a_tiny_load_reports_every_figure_and_cleans_up() {
    let env = common::TestEnv::new();
    let run = env
        .ordctl([
            "bench",
            "--orders",
            "20",
            "--concurrency",
            "1,2",
            "--latency-rate",
            "20",
            "--latency-secs",
            "1",
            "--http-rate",
            "20",
            "--http-secs",
            "1",
            "--http-connections",
            "2",
            "--http-max-connections",
            "2",
            "--json",
        ])
        .assert_code(0);
    let report = run.json();

    let mut paths: Vec<String> = [
        "/amqp/publish_confirm_each/per_sec",
        "/amqp/consume_prefetch_1/per_sec",
        "/amqp/publish_confirm_per_100/per_sec",
        "/amqp/consume_prefetch_100/per_sec",
        "/default_worker/rate/per_sec",
        "/default_worker/peak_rss_mib",
        "/latency/achieved_per_sec",
        "/latency/commit_to_smtp_250_ms/p50",
        "/latency/commit_to_smtp_250_ms/p99",
        "/latency/relay_lag_ms/p99",
        "/worker/peak_rss_mib",
        "/http/constant/per_sec",
        "/http/max/per_sec",
        "/http/raw_postgres/per_sec",
        "/replay/raw_publish_confirm_per_100/per_sec",
        "/replay/dead_letters/per_sec",
    ]
    .map(String::from)
    .to_vec();
    for point in 0..2 {
        for figure in [
            "raw_postgres",
            "raw_smtp",
            "raw_smtp_per_message",
            "place",
            "drain/rate",
            "drain_smtp_connections/rate",
        ] {
            paths.push(format!("/curve/{point}/{figure}/per_sec"));
        }
    }
    for path in &paths {
        let value = report.pointer(path).and_then(Value::as_f64);
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{path} is {value:?} in:\n{report:#}"
        );
    }
    assert_eq!(report["curve"][1]["concurrency"], 2);
    assert_eq!(report["curve"][1]["drain"]["worker_concurrency"], 2);
    assert!(report["curve"][1]["drain"]["smtp_connections"].is_null());
    let by_connections = &report["curve"][1]["drain_smtp_connections"];
    assert_eq!(by_connections["smtp_connections"], 2);
    assert!(by_connections["worker_concurrency"].is_null());
    assert!(report["default_worker"]["worker_concurrency"].is_null());
    assert_eq!(report["curve"][0]["place"]["count"], 20);
    assert_eq!(report["curve"][0]["drain"]["rate"]["count"], 20);
    assert_eq!(
        report["curve"][0]["drain_smtp_connections"]["rate"]["count"],
        20
    );
    assert_eq!(report["latency"]["commit_to_smtp_250_ms"]["samples"], 20);
    assert_eq!(report["latency"]["published_to_delivery_ms"]["samples"], 20);
    assert_eq!(report["latency"]["in_delivery_ms"]["samples"], 20);
    assert_eq!(report["replay"]["dead_letters"]["count"], 20);
    let figures = report["figures"].as_array().expect("a figures array");
    let ratios: Vec<&str> = figures
        .iter()
        .filter(|figure| figure["ratio"].is_number())
        .map(|figure| figure["name"].as_str().unwrap())
        .collect();
    for name in [
        "place rate at 1",
        "drain, worker --smtp-connections 1",
        "place rate at 2",
        "drain, worker --smtp-connections 2",
        "replay-dlq, dead letters moved",
    ] {
        assert!(ratios.contains(&name), "{name} has no ratio: {ratios:?}");
    }

    // The scratch database and queues are gone.
    let database = report["parameters"]["database"].as_str().unwrap();
    let namespace = report["parameters"]["namespace"].as_str().unwrap();
    assert!(database.starts_with("ordctl_bench_"), "{database}");
    let mut admin =
        PgConnection::establish(&format!("{}/postgres", common::POSTGRES_SERVER)).unwrap();
    let left: Vec<String> = diesel::sql_query("SELECT datname FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(database)
        .load::<Name>(&mut admin)
        .unwrap()
        .into_iter()
        .map(|row| row.datname)
        .collect();
    assert!(left.is_empty(), "{left:?} was left behind");
    let mut broker = amiquip::Connection::insecure_open(common::AMQP_URL).unwrap();
    let channel = broker.open_channel(None).unwrap();
    let work_queue = format!("{namespace}.notifications");
    assert!(
        channel.queue_declare_passive(work_queue.as_str()).is_err(),
        "{work_queue} was left behind"
    );
    let _ = broker.close();
}

#[test]
fn bench_without_an_smtp_server_is_refused_with_exit_2() {
    let env = common::TestEnv::new();
    let run = env
        .ordctl_with_env(["bench", "--orders", "5"], &[("SMTP_URL", "")])
        .assert_code(2);
    assert!(
        run.stderr.contains("needs a real SMTP server"),
        "{}",
        run.stderr
    );
}
