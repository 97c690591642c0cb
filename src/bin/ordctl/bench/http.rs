//! The HTTP API under load, a constant-arrival-rate scenario: `ordctl serve` taking
//! `POST /orders` from `wrk` (Debian's HTTP load generator) at a constant
//! offered rate for a while, then flat out at a fixed number of
//! connections, compared with raw PostgreSQL (`pgbench`) at the same
//! concurrency.
//!
//! wrk is closed-loop: a connection sends its next request when the
//! previous answer arrived. The constant rate comes from its Lua `delay()`
//! hook, a pause per connection before each request, sized from two short
//! pilot runs so that connections × 1 / (pause + latency) is the target rate.
//! The achieved rate is what wrk counted, not the target.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ordctl::config::Settings;
use ordctl::domain::UserId;
use serde::{Deserialize, Serialize};

use super::measure::Rate;
use super::pipeline::worker_env;
use super::raw;

/// Debian's package `wrk`; scripts/bench.sh installs it.
const WRK: &str = "wrk";

/// `POST /orders` with a spread of users and amounts, paced by
/// `ORDCTL_WRK_DELAY_MS`; `done` prints the figures as one JSON line.
const SCRIPT: &str = r#"
local pause = tonumber(os.getenv("ORDCTL_WRK_DELAY_MS") or "0")
local first = tonumber(os.getenv("ORDCTL_WRK_FIRST_USER") or "1")
local users = tonumber(os.getenv("ORDCTL_WRK_USERS") or "1")
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  n = n + 1
  local body = string.format('{"user_id": %d, "amount": "%d.%02d"}',
    first + (n % users), 5 + n % 200, n % 100)
  return wrk.format(nil, "/orders", nil, body)
end
if pause > 0 then
  function delay() return pause end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('ORDCTL_WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#;

/// What one wrk run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRun {
    pub connections: u16,
    pub secs: f64,
    /// The pause per connection before each request (0: flat out).
    pub pause_ms: u64,
    pub requests: u64,
    pub per_sec: f64,
    /// Socket errors, timeouts and responses >= 400.
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HttpFigures {
    pub offered_per_sec: f64,
    /// At the offered rate.
    pub constant: LoadRun,
    /// Flat out at the same concurrency as `raw_postgres`.
    pub max: LoadRun,
    /// pgbench's order+outbox transaction at `max.connections` clients.
    pub raw_postgres: Rate,
}

#[derive(Deserialize)]
struct WrkLine {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// What the HTTP section is asked to do.
pub struct HttpLoad<'a> {
    pub settings: &'a Settings,
    pub exe: &'a Path,
    pub user_ids: &'a [UserId],
    pub rate: f64,
    pub secs: f64,
    /// Connections of the constant-rate run.
    pub connections: u16,
    /// Connections (and pgbench clients) of the flat-out run.
    pub max_connections: u16,
    pub max_secs: f64,
}

impl HttpLoad<'_> {
    /// Starts `ordctl serve`, runs the pilot, the constant rate and the
    /// flat-out run against it, stops it, then runs pgbench.
    pub fn measure(&self) -> anyhow::Result<HttpFigures> {
        let server = Server::start(self.exe, self.settings, self.max_connections)?;
        let url = server.url.clone();
        let result = (|| {
            let script = tempfile::Builder::new()
                .prefix("ordctl-wrk-")
                .suffix(".lua")
                .tempfile()?;
            script.as_file().write_all(SCRIPT.as_bytes())?;
            let script = script.path();
            // The pause that makes the target rate: sized from a pilot at a
            // lower rate, then again from a pilot at that pause, whose
            // latency is the target load's — a pause sized from the first
            // alone offers less than the target once the latency rises.
            let cycle_ms = f64::from(self.connections) * 1000.0 / self.rate;
            let pilot_secs = self.secs.min(3.0);
            let mut pause_ms = cycle_ms as u64;
            for _ in 0..2 {
                let pilot = self.wrk(&url, script, self.connections, pilot_secs, pause_ms)?;
                pause_ms = pause_for(self.rate, &pilot);
            }
            tracing::info!(
                "HTTP: POST /orders at {:.0}/s for {}s ({} connections, {pause_ms} ms apart)",
                self.rate,
                self.secs,
                self.connections
            );
            let constant = self.wrk(&url, script, self.connections, self.secs, pause_ms)?;
            tracing::info!(
                "HTTP: POST /orders flat out for {}s ({} connections)",
                self.max_secs,
                self.max_connections
            );
            let max = self.wrk(&url, script, self.max_connections, self.max_secs, 0)?;
            anyhow::Ok((constant, max))
        })();
        server.stop();
        let (constant, max) = result?;
        let count = (max.per_sec * 5.0).clamp(1_000.0, 20_000.0) as u64;
        tracing::info!(
            "raw PostgreSQL: pgbench, {count} order+outbox transactions, {} clients",
            self.max_connections
        );
        let raw_postgres = raw::pgbench(
            &self.settings.database_url,
            self.user_ids,
            count,
            self.max_connections,
        )
        .context("pgbench")?;
        Ok(HttpFigures {
            offered_per_sec: self.rate,
            constant,
            max,
            raw_postgres,
        })
    }

    fn wrk(
        &self,
        url: &str,
        script: &Path,
        connections: u16,
        secs: f64,
        pause_ms: u64,
    ) -> anyhow::Result<LoadRun> {
        let first = self.user_ids.iter().map(|id| id.0).min().unwrap_or(1);
        let output = Command::new(WRK)
            .args(["-t", "2", "-c", &connections.to_string()])
            .args(["-d", &format!("{}s", secs.ceil() as u64)])
            .args(["--timeout", "5s", "-s"])
            .arg(script)
            .arg(url)
            .env("ORDCTL_WRK_DELAY_MS", pause_ms.to_string())
            .env("ORDCTL_WRK_FIRST_USER", first.to_string())
            .env("ORDCTL_WRK_USERS", self.user_ids.len().max(1).to_string())
            .stdin(Stdio::null())
            .output()
            .context("running wrk (Debian package wrk; scripts/bench.sh installs it)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed ({}): {}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix("ORDCTL_WRK "))
            .with_context(|| format!("no figures in wrk's output:\n{stdout}"))?;
        let figures: WrkLine = serde_json::from_str(line)?;
        let secs = figures.duration_us as f64 / 1e6;
        let ms = |us: u64| us as f64 / 1000.0;
        Ok(LoadRun {
            connections,
            secs,
            pause_ms,
            requests: figures.requests,
            per_sec: if secs > 0.0 {
                figures.requests as f64 / secs
            } else {
                0.0
            },
            errors: figures.connect
                + figures.read
                + figures.write
                + figures.status
                + figures.timeout,
            p50_ms: ms(figures.p50_us),
            p90_ms: ms(figures.p90_us),
            p99_ms: ms(figures.p99_us),
            max_ms: ms(figures.max_us),
        })
    }
}

/// The pause per connection that offers `rate` requests/s, from what a
/// run with its own pause achieved: a connection's cycle is its pause plus
/// the time a request took, the latter being what that run's rate leaves
/// once its pause is taken off. Rounded down: wrk pauses in whole
/// milliseconds, and a rate just above the target beats one just below.
fn pause_for(rate: f64, run: &LoadRun) -> u64 {
    let cycle_ms = f64::from(run.connections) * 1000.0 / rate;
    if run.per_sec <= 0.0 {
        return cycle_ms as u64;
    }
    let took_ms = f64::from(run.connections) * 1000.0 / run.per_sec - run.pause_ms as f64;
    (cycle_ms - took_ms.max(0.0)).max(0.0).floor() as u64
}

/// `ordctl serve` on a free loopback port, stopped with SIGTERM.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(exe: &Path, settings: &Settings, pool_size: u16) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(exe)
            .args(["serve", "--listen", &address])
            .args(["--pool-size", &pool_size.max(2).to_string()])
            .envs(worker_env(settings))
            .env(
                "ORDCTL_ADMIN_TOKEN",
                uuid::Uuid::new_v4().simple().to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let mut server = Self {
            child,
            url: format!("http://{address}"),
        };
        let health = format!("{}/health", server.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ureq::get(&health).call().is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("ordctl serve exited at start-up ({status})");
            }
            if Instant::now() > deadline {
                server.stop();
                bail!("ordctl serve did not answer {health} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(connections: u16, pause_ms: u64, per_sec: f64) -> LoadRun {
        LoadRun {
            connections,
            secs: 3.0,
            pause_ms,
            requests: (per_sec * 3.0) as u64,
            per_sec,
            errors: 0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
        }
    }

    #[test]
    fn the_pause_leaves_room_for_the_latency_the_pilot_saw() {
        // 50 connections, 34 ms apart, achieved 909/s: a request took 21 ms,
        // so 1,000/s needs 29 ms between requests.
        assert_eq!(pause_for(1000.0, &run(50, 34, 909.1)), 29);
        // A pilot already at the target keeps its pause.
        assert_eq!(pause_for(1000.0, &run(50, 30, 1000.0)), 30);
        // Requests slower than the cycle: no pause at all.
        assert_eq!(pause_for(1000.0, &run(50, 10, 500.0)), 0);
        // Nothing achieved: the whole cycle.
        assert_eq!(pause_for(1000.0, &run(50, 10, 0.0)), 50);
    }
}
