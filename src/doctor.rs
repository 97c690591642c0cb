//! `ordctl doctor` and the worker's preflight: every setting and service
//! checked the way the worker will use it, one line each, with the fix.
//! Things that only degrade output (no management API) are warnings.

use std::fmt;
use std::time::Duration;

use diesel_migrations::MigrationHarness;
use redis::ConnectionLike;
use serde::Serialize;

use crate::config::{Settings, SmtpTls};
use crate::db;
use crate::mail;
use crate::messaging::management::ManagementApi;
use crate::messaging::topology::{QueueType, Topology};
use crate::messaging::{self, Brokers, Link};
use crate::secrets::redact;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// Works, but something is degraded.
    Warn,
    Fail,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Verdict,
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Verdict::Warn,
            ..Self::fail(name, detail, fix)
        }
    }
}

impl fmt::Display for Check {
    /// `✓ postgresql: reachable …` or `✗ smtp: … (fix: …)`, on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Verdict::Ok => "✓",
            Verdict::Warn => "!",
            Verdict::Fail => "✗",
        };
        let detail = one_line(&self.detail);
        write!(f, "{mark} {}: {detail}", self.name)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

/// Every check's result, in the order they ran.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|check| check.status == Verdict::Fail)
    }
}

/// Runs every check. `management` is the API `status` reads unacked
/// counts from; `None` skips that (warning-only) check.
pub fn run(settings: &Settings, topology: &Topology, management: Option<&ManagementApi>) -> Report {
    // Each service at once (a worker's start waits for all of them),
    // reported in this order.
    let checks = std::thread::scope(|scope| {
        let postgres = scope.spawn(|| postgres(settings));
        let rabbitmq = scope.spawn(|| rabbitmq(settings, topology));
        let management = management.map(|api| scope.spawn(|| management_api(api, topology)));
        let redis = scope.spawn(|| redis(settings));
        let mail = scope.spawn(|| mail(settings));
        let mut checks = vec![postgres.join().expect("the postgresql check panicked")];
        checks.extend(rabbitmq.join().expect("the rabbitmq check panicked"));
        if let Some(management) = management {
            checks.push(management.join().expect("the management check panicked"));
        }
        checks.push(redis.join().expect("the redis check panicked"));
        checks.push(mail.join().expect("the smtp check panicked"));
        checks
    });
    Report {
        ok: checks.iter().all(|check| check.status != Verdict::Fail),
        checks,
    }
}

/// The worker's preflight failed: the failing checks' lines.
#[derive(Debug, thiserror::Error)]
#[error("preflight: {}", .0.join("; "))]
pub struct PreflightFailed(pub Vec<String>);

/// The worker's start-up check: the same checks as `doctor` but the
/// management API's; `Err` names every failing one.
pub fn preflight(settings: &Settings, topology: &Topology) -> Result<Vec<Check>, PreflightFailed> {
    let report = run(settings, topology, None);
    let failed: Vec<String> = report.failures().map(ToString::to_string).collect();
    if failed.is_empty() {
        Ok(report.checks)
    } else {
        Err(PreflightFailed(failed))
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn postgres(settings: &Settings) -> Check {
    const NAME: &str = "postgresql";
    let url = redact(&settings.database_url);
    let mut conn = match db::connect(&settings.database_url) {
        Ok(conn) => conn,
        Err(error) => {
            let missing = format!("{error:#}").contains("does not exist");
            let fix = if missing {
                "run `ordctl migrate`, which creates it".to_string()
            } else {
                "start PostgreSQL, or point --database-url / DATABASE_URL at it".to_string()
            };
            return Check::fail(NAME, format!("{error:#}"), fix);
        }
    };
    match conn.pending_migrations(db::MIGRATIONS) {
        Ok(pending) if pending.is_empty() => Check::ok(NAME, format!("{url}: reachable, migrated")),
        Ok(pending) => Check::fail(
            NAME,
            format!("{url}: {} migrations not applied", pending.len()),
            "run `ordctl migrate`",
        ),
        Err(error) => Check::fail(
            NAME,
            format!("{url}: reading the applied migrations: {error}"),
            "run `ordctl migrate`",
        ),
    }
}

/// Reachable and not blocking publishers; then the namespace's existing
/// queues against `--queue-type`. With several nodes, each one that does
/// not answer is a warning: the others carry on without it.
fn rabbitmq(settings: &Settings, topology: &Topology) -> Vec<Check> {
    const NAME: &str = "rabbitmq";
    let mut checks = unreachable_nodes(&settings.amqp_url);
    let mut link = match settings.amqp_url.open() {
        Ok(link) => link,
        Err(error) => {
            return vec![Check::fail(
                NAME,
                format!("{error:#}"),
                "start RabbitMQ, or fix --amqp-url / AMQP_URL (host, port, user, password, vhost)",
            )]
        }
    };
    let url = redact(settings.amqp_url.current());
    checks.push(match messaging::probe_blocked(&mut link) {
        Ok(None) => Check::ok(NAME, format!("{url}: reachable, accepting publishes")),
        Ok(Some(blocked)) => Check::fail(
            NAME,
            format!("{url}: {blocked}"),
            "free memory or disk on the RabbitMQ node (or raise vm_memory_high_watermark / disk_free_limit); orders are committed meanwhile and published when it clears",
        ),
        Err(error) => Check::fail(NAME, format!("{url}: publishing: {error:#}"), "see the RabbitMQ server log"),
    });
    if link.is_blocked() {
        // Declares would queue up behind the block.
        link.close(None);
        return checks;
    }
    checks.push(queue_types(&mut link, topology));
    link.close(None);
    checks
}

/// A warning for each node of a list of several that does not answer.
fn unreachable_nodes(brokers: &Brokers) -> Vec<Check> {
    if brokers.urls().len() < 2 {
        return Vec::new();
    }
    brokers
        .urls()
        .iter()
        .filter_map(|url| match Link::open(url) {
            Ok(link) => {
                link.close(None);
                None
            }
            Err(error) => Some((url, error)),
        })
        .map(|(url, error)| {
            Check::warn(
                "rabbitmq node",
                format!("{} does not answer: {error:#}", redact(url)),
                "start the node again (scripts/cluster.sh start for the local cluster); connections use the other nodes meanwhile",
            )
        })
        .collect()
}

/// Every existing work queue and DLQ of the namespace must be of the
/// configured type: declaring it with the configured arguments is refused
/// (406) when it is not. Queues that do not exist yet are left alone.
/// Classic queues declared before they were lazy still work: a warning.
fn queue_types(link: &mut Link, topology: &Topology) -> Check {
    const NAME: &str = "queues";
    let kind = topology.queue_type.as_str();
    let mut existing = 0;
    let mut wrong = Vec::new();
    let mut not_lazy = Vec::new();
    for consumer in &topology.consumers {
        for queue in [topology.queue(consumer.name), topology.dlq(consumer.name)] {
            match declared_as(link, topology, &queue) {
                Ok(Declared::Missing) => {}
                Ok(Declared::Configured) => existing += 1,
                Ok(Declared::NotLazy) => not_lazy.push(queue),
                Ok(Declared::Other) => wrong.push(queue),
                Err(error) => {
                    return Check::fail(
                        NAME,
                        format!("inspecting {queue}: {error:#}"),
                        "see the RabbitMQ server log",
                    )
                }
            }
        }
    }
    if !wrong.is_empty() {
        return Check::fail(
            NAME,
            format!("{} not of --queue-type {kind}", wrong.join(", ")),
            format!("use the --queue-type (ORDCTL_QUEUE_TYPE) they were declared with, or recreate them: `ordctl purge --yes` (deletes their messages), then start the worker with --queue-type {kind}"),
        );
    }
    if !not_lazy.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "{} declared before classic queues were lazy: they work, but a backlog slows every publisher's confirms as it grows",
                not_lazy.join(", ")
            ),
            "recreate them when they are empty: `ordctl purge --yes`, then start the worker",
        );
    }
    if existing == 0 {
        Check::ok(
            NAME,
            format!(
                "namespace {}: none declared yet; the worker declares them as {kind}",
                topology.namespace
            ),
        )
    } else {
        Check::ok(
            NAME,
            format!(
                "namespace {}: {existing} work and dead-letter queues, all {kind}",
                topology.namespace
            ),
        )
    }
}

/// How an existing queue was declared, against the configured arguments.
enum Declared {
    Missing,
    Configured,
    /// Classic, declared before classic queues were lazy.
    NotLazy,
    /// Of another `--queue-type` (or arguments).
    Other,
}

/// Declares the queue passively, then as the worker would
/// ([`Topology::declare_work_queue`]).
fn declared_as(link: &mut Link, topology: &Topology, queue: &str) -> anyhow::Result<Declared> {
    let channel = link.open_channel()?;
    if let Err(error) = channel.queue_declare_passive(queue) {
        let error = anyhow::Error::from(error);
        return match messaging::closed_by_server(&error) {
            Some((404, _)) => Ok(Declared::Missing),
            _ => Err(error),
        };
    }
    let _ = channel.close();
    match topology.declare_work_queue(link, queue) {
        Ok((channel, lazy)) => {
            let _ = channel.close();
            match (topology.queue_type, lazy) {
                (QueueType::Classic, false) => Ok(Declared::NotLazy),
                _ => Ok(Declared::Configured),
            }
        }
        // Refused: declared with another --queue-type.
        Err(error) => match messaging::closed_by_server(&error) {
            Some((406, _)) => Ok(Declared::Other),
            _ => Err(error),
        },
    }
}

fn management_api(api: &ManagementApi, topology: &Topology) -> Check {
    const NAME: &str = "rabbitmq management";
    let shown = redact(api.url());
    match api.unacked(&topology.queue(topology.consumers.first().map_or("notifications", |c| c.name))) {
        Ok(_) => Check::ok(NAME, format!("{shown}: answering (status shows unacked counts)")),
        Err(error) => Check::warn(
            NAME,
            format!("{shown}: {error:#}; `status` cannot show unacked counts"),
            "enable it on the broker: rabbitmq-plugins enable rabbitmq_management (scripts/services.sh does), or pass --management-url",
        ),
    }
}

fn redis(settings: &Settings) -> Check {
    const NAME: &str = "redis";
    let url = redact(&settings.redis_url);
    let result = redis::Client::open(settings.redis_url.as_str()).and_then(|client| {
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(conn.is_open())
    });
    match result {
        Ok(_) => Check::ok(NAME, format!("{url}: reachable")),
        Err(error) => {
            let text = error.to_string();
            let fix =
                if text.contains("NOAUTH") || text.contains("WRONGPASS") || text.contains("AUTH") {
                    "fix the password in --redis-url / REDIS_URL (redis://:PASSWORD@host:6379/0)"
                } else {
                    "start Redis, or point --redis-url / REDIS_URL at it"
                };
            Check::fail(NAME, format!("{url}: {text}"), fix)
        }
    }
}

/// SMTP: connects, TLS as configured, authenticates, sends nothing. With
/// no SMTP URL: the directory the `.eml` files go to is writable.
fn mail(settings: &Settings) -> Check {
    const NAME: &str = "smtp";
    let Some(smtp) = &settings.smtp else {
        let dir = &settings.mail_dir;
        let probe = dir.join(format!(".ordctl-doctor-{}", uuid::Uuid::new_v4().simple()));
        let writable = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&probe, b""))
            .and_then(|()| std::fs::remove_file(&probe));
        return match writable {
            Ok(()) => Check::ok(
                "mail",
                format!(
                    "no --smtp-url: emails are written as .eml files under {}",
                    dir.display()
                ),
            ),
            Err(error) => Check::fail(
                "mail",
                format!("cannot write into {}: {error}", dir.display()),
                "fix --mail-dir / MAIL_DIR, or set --smtp-url / SMTP_URL",
            ),
        };
    };
    let tls = match smtp.tls {
        SmtpTls::None => "plain",
        SmtpTls::StartTls => "STARTTLS",
        SmtpTls::Implicit => "TLS",
    };
    let auth = match &smtp.credentials {
        Some((user, _)) => format!("authenticated as {user}"),
        None => "no authentication".to_string(),
    };
    let tested = mail::smtp::SmtpPool::new(smtp, 1)
        .and_then(|pool| pool.check().map_err(anyhow::Error::from));
    match tested {
        Ok(()) => Check::ok(NAME, format!("{smtp}: connects, {tls}, {auth}")),
        Err(error) => {
            let text = format!("{error:#}");
            let fix = if text.contains("535") || text.contains("authentication failed") {
                "fix the user and password in --smtp-url / SMTP_URL (smtp://USER:PASSWORD@host:port)"
            } else if text.contains("mechanism") {
                "the server offers no authentication: remove the user and password from --smtp-url, or use ?tls=starttls if it offers AUTH only after STARTTLS"
            } else if text.contains("tls") || text.contains("TLS") || text.contains("certificate") {
                "match the server's TLS: smtp:// (plain), ?tls=starttls, or smtps:// (implicit TLS)"
            } else {
                "start the SMTP server, or fix host and port in --smtp-url / SMTP_URL"
            };
            Check::fail(NAME, format!("{smtp}: {text}"), fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_one_line_with_its_mark_and_fix() {
        let check = Check::fail("smtp", "535 authentication\nfailed", "fix the password");
        assert_eq!(
            check.to_string(),
            "✗ smtp: 535 authentication failed (fix: fix the password)"
        );
        assert_eq!(
            Check::ok("redis", "reachable").to_string(),
            "✓ redis: reachable"
        );
        assert!(Check::warn("x", "y", "z").to_string().starts_with("! x: y"));
    }
}
