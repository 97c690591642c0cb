//! `GET /health` (the process runs) and `GET /ready` (PostgreSQL, RabbitMQ
//! and Redis answer).

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::RunQueryDsl;
use serde_json::json;

use crate::http::state::AppState;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when every service answers, else 503 naming what is down. The three
/// checks run at once, each on the blocking pool with its own timeout.
pub async fn ready(State(state): State<AppState>) -> Response {
    let run = |name: &'static str, check: fn(&AppState) -> anyhow::Result<()>| {
        let state = state.clone();
        async move {
            let outcome = tokio::task::spawn_blocking(move || check(&state))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|result| result);
            (name, outcome)
        }
    };
    let checks = tokio::join!(
        run("PostgreSQL", check_postgres),
        run("RabbitMQ", check_rabbitmq),
        run("Redis", check_redis),
    );
    let checks = [checks.0, checks.1, checks.2];
    let mut report = serde_json::Map::new();
    let mut down = Vec::new();
    for (name, outcome) in &checks {
        let entry = match outcome {
            Ok(()) => "ok".to_string(),
            Err(error) => {
                down.push(format!("{name} is down ({error:#})"));
                format!("down: {error:#}")
            }
        };
        report.insert(name.to_ascii_lowercase(), entry.into());
    }
    if down.is_empty() {
        return Json(json!({ "status": "ready", "checks": report })).into_response();
    }
    let error = format!("not ready: {}", down.join("; "));
    let error = error.split_whitespace().collect::<Vec<_>>().join(" ");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": error, "checks": report })),
    )
        .into_response()
}

fn check_postgres(state: &AppState) -> anyhow::Result<()> {
    let mut conn = state.pool.get_timeout(CHECK_TIMEOUT)?;
    diesel::sql_query("SELECT 1").execute(&mut conn)?;
    Ok(())
}

fn check_rabbitmq(state: &AppState) -> anyhow::Result<()> {
    let brokers = state.settings.amqp_url.with_connect_timeout(CHECK_TIMEOUT);
    let connection = crate::messaging::connect(&brokers)?;
    connection.close().context("closing the check connection")?;
    Ok(())
}

fn check_redis(state: &AppState) -> anyhow::Result<()> {
    let client = redis::Client::open(state.settings.redis_url.as_str())?;
    let mut connection = client.get_connection_with_timeout(CHECK_TIMEOUT)?;
    redis::cmd("PING").query::<String>(&mut connection)?;
    Ok(())
}
