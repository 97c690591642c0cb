//! The integration tests, one binary with a module per area, run against
//! the real PostgreSQL, RabbitMQ, Redis and SMTP. Every test gets its own
//! database, namespace and SMTP sink ([`common::TestEnv`]), so they all run
//! in parallel. The fault suite is a binary of its own (`tests/faults.rs`
//! says why).

#[path = "../common/mod.rs"]
mod common;
#[path = "../http_client/mod.rs"]
mod http_client;

mod bench_smoke;
mod consumers;
mod dashboard;
mod observability;
mod operations;
mod orders;
mod pipeline;
mod scale;
mod serve;
mod smtp;
