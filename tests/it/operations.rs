//! Operating ordctl: doctor, purge, prune, reconcile, shell completions and
//! the man page, each against the real services in a namespace and
//! database of the test's own.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_until, TestEnv};

#[test]
fn bash_completions_load_and_complete_subcommands() {
    let env = TestEnv::new();
    let script = env.ordctl(["completions", "bash"]).assert_code(0).output();
    let path = env.dir().join("ordctl.bash");
    std::fs::write(&path, script).unwrap();
    // Source the script, then ask its function what `ordctl pla<TAB>` offers.
    let probe = format!(
        "source {} && COMP_WORDS=(ordctl pla) COMP_CWORD=1 COMP_LINE='ordctl pla' COMP_POINT=10 \
         && _ordctl ordctl pla ordctl && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &probe])
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offered = String::from_utf8_lossy(&out.stdout);
    assert!(
        offered.lines().any(|line| line == "place-order"),
        "offered: {offered}"
    );
}

#[test]
fn an_unknown_shell_is_invalid_input() {
    let env = TestEnv::new();
    let run = env.ordctl(["completions", "cmd.exe"]).assert_code(2);
    assert_eq!(run.stderr_lines().len(), 1, "{:?}", run.stderr_lines());
}

#[test]
fn the_man_page_documents_every_subcommand_and_can_be_written_per_subcommand() {
    let env = TestEnv::new();
    let page = env.ordctl(["man"]).assert_code(0).output();
    assert!(page.contains(".TH ordctl 1"), "{page}");
    for subcommand in ["place\\-order", "worker", "replay\\-dlq", "completions"] {
        assert!(page.contains(subcommand), "no {subcommand} in the page");
    }
    let dir = env.dir().join("man1");
    env.ordctl(["man", "--dir", dir.to_str().unwrap()])
        .assert_code(0);
    let page = std::fs::read_to_string(dir.join("ordctl-place-order.1")).unwrap();
    assert!(page.contains("\\-\\-amount"), "{page}");
}

#[test]
fn purge_removes_a_namespaces_queues_exchanges_redis_keys_and_database_together() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    // A worker attached: purging under it would only see the queues
    // declared again, so purge refuses and removes nothing.
    let worker = env.spawn_worker(&[]);
    wait_until("the worker's consumer", Duration::from_secs(30), || {
        env.queue_exists(&env.work_queue()) && env.queue_consumers(&env.work_queue()) > 0
    });
    let refused = env.ordctl(["purge", "--yes"]).assert_code(3);
    assert_eq!(refused.stderr_lines().len(), 1, "{}", refused.stderr);
    assert!(refused
        .stderr
        .contains("stop the namespace's workers first"));
    worker.terminate();
    worker.wait().assert_code(0);

    for amount in ["1", "2"] {
        env.place_order(1, amount, &[]);
    }
    let cached = env.redis_key("user:1");
    redis::cmd("SET")
        .arg(&cached)
        .arg("{}")
        .query::<()>(&mut env.redis())
        .unwrap();

    // Without --yes: invalid input, nothing removed.
    let unconfirmed = env.ordctl(["purge"]).assert_code(2);
    assert_eq!(unconfirmed.stderr_lines().len(), 1);
    assert_eq!(env.queue_depth(&env.work_queue()), 2);

    let dry = env
        .ordctl(["purge", "--dry-run", "--database", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(dry["dry_run"], true);
    let work = dry["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|queue| queue["name"] == env.work_queue().as_str())
        .cloned()
        .expect("the work queue is listed");
    assert_eq!(work["messages"], 2);
    assert_eq!(dry["exchanges"].as_array().unwrap().len(), 3);
    assert!(dry["redis_keys"].as_u64().unwrap() >= 1);
    assert_eq!(dry["database"], format!("ordctl_t_{}", env.id).as_str());
    assert_eq!(
        env.queue_depth(&env.work_queue()),
        2,
        "a dry run removed messages"
    );

    let purged = env
        .ordctl(["purge", "--yes", "--database", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(purged["dry_run"], false);
    assert_eq!(purged["queues"], dry["queues"]);
    assert!(!env.queue_exists(&env.work_queue()));
    assert!(!env.queue_exists(&env.dlq()));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(env.redis_key("*"))
        .query(&mut env.redis())
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(!ordctl::db::database_exists(&env.settings.database_url).unwrap());

    // Purging an empty namespace is fine and says there was nothing.
    let again = env
        .ordctl(["purge", "--yes", "--database", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(again["queues"].as_array().unwrap().len(), 0);
    assert_eq!(again["database"], serde_json::Value::Null);
}

/// Puts `count` messages of junk in the notifications DLQ, as if a foreign
/// service had published them and they ended up dead-lettered.
fn dead_letter_junk(env: &TestEnv, count: usize) {
    use ordctl::messaging::{Confirms, Outgoing};
    let mut connection = ordctl::messaging::connect(&env.settings.amqp_url).unwrap();
    let channel = env.topology().declare(&mut connection).unwrap();
    let mut confirms = Confirms::enable(&channel).unwrap();
    let junk: Vec<Outgoing> = (0..count)
        .map(|n| {
            Outgoing::new(
                env.dlq(),
                format!("junk-{n}"),
                format!("junk {n}").into_bytes(),
            )
        })
        .collect();
    for window in junk.chunks(500) {
        confirms.publish(&channel, "", window).unwrap();
    }
    let _ = connection.close();
    assert_eq!(env.queue_depth(&env.dlq()) as usize, count);
}

#[test]
fn a_dry_run_then_a_replay_of_5000_dead_letters_moves_all_of_them_in_seconds() {
    const JUNK: usize = 5_000;
    let env = TestEnv::new();
    env.ordctl(["migrate"]).assert_code(0);
    dead_letter_junk(&env, JUNK);

    let dry = env
        .ordctl(["replay-dlq", "--dry-run", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(dry["messages"].as_array().unwrap().len(), JUNK);
    assert_eq!(dry["replayed"], 0);
    assert_eq!(dry["remaining"], JUNK);

    // Right after: the dry run left the queue as it found it.
    let started = Instant::now();
    let replayed = env.ordctl(["replay-dlq", "--json"]).assert_code(0).json();
    let took = started.elapsed();
    assert_eq!(replayed["replayed"], JUNK);
    assert_eq!(replayed["remaining"], 0);
    assert_eq!(env.queue_depth(&env.dlq()), 0);
    assert_eq!(env.queue_depth(&env.work_queue()) as usize, JUNK);
    eprintln!("replay-dlq moved {JUNK} dead letters in {took:?}");
    assert!(took < Duration::from_secs(30), "replay took {took:?}");
}

/// A RabbitMQ policy on one queue, removed on drop.
struct QueuePolicy(String);

impl QueuePolicy {
    /// Applies `definition` (JSON) to `queue` alone, above any other policy.
    fn set(queue: &str, definition: &str) -> Self {
        let name = format!("{queue}.test-policy");
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        let status = Command::new("rabbitmqctl")
            .args(["set_policy", &name, &pattern, definition])
            .args(["--apply-to", "queues", "--priority", "1000"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("running rabbitmqctl");
        assert!(status.success(), "rabbitmqctl set_policy failed");
        wait_until("the policy on the queue", Duration::from_secs(15), || {
            Command::new("rabbitmqctl")
                .args([
                    "list_queues",
                    "--quiet",
                    "--no-table-headers",
                    "name",
                    "policy",
                ])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|line| line.starts_with(queue) && line.ends_with(&name))
                })
        });
        Self(name)
    }
}

impl Drop for QueuePolicy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn a_replay_the_broker_rejects_midway_leaves_every_unconfirmed_letter_in_the_dlq() {
    const LETTERS: usize = 1_000;
    const ROOM: usize = 250;
    let env = TestEnv::new();
    env.ordctl(["migrate"]).assert_code(0);
    dead_letter_junk(&env, LETTERS);
    // The work queue takes ROOM messages, then the broker nacks every
    // further publish: windows the replay has already sent behind the
    // first nacked one are rejected too, or confirmed.
    let full = QueuePolicy::set(
        &env.work_queue(),
        &format!(r#"{{"max-length":{ROOM},"overflow":"reject-publish"}}"#),
    );
    let failed = env.ordctl(["replay-dlq"]).assert_code(1);
    assert!(failed.output().contains("rejected"), "{}", failed.output());
    // The letters whose copies were not all confirmed return to the DLQ
    // when the run's channel closes.
    let (dlq, work) = (env.dlq(), env.work_queue());
    wait_until(
        "the unconfirmed letters back in the DLQ",
        Duration::from_secs(15),
        || (env.queue_depth(&dlq) + env.queue_depth(&work)) as usize >= LETTERS,
    );
    // At most ROOM copies were confirmed: no other letter left the DLQ.
    let left = LETTERS - env.queue_depth(&dlq) as usize;
    assert!(
        left <= ROOM,
        "{left} letters left the DLQ, {ROOM} copies confirmed"
    );
    assert_eq!(env.queue_depth(&work) as usize, ROOM);
    // Once there is room again, the next run moves the rest.
    drop(full);
    let replayed = env.ordctl(["replay-dlq", "--json"]).assert_code(0).json();
    assert_eq!(replayed["remaining"], 0);
    assert_eq!(env.queue_depth(&dlq), 0);
}

/// An SMTP server that requires AUTH: user `ordctl`, password `right`
/// (aiosmtpd with an authenticator, no TLS needed for the test).
struct AuthSmtp {
    child: std::process::Child,
    port: u16,
}

impl AuthSmtp {
    const SCRIPT: &'static str = r#"
import sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

def authenticate(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"ordctl" and auth_data.password == b"right"
    return AuthResult(success=ok, handled=False)

Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]),
           authenticator=authenticate, auth_require_tls=False).start()
while True:
    time.sleep(3600)
"#;

    fn start() -> Self {
        let port = common::free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-c", Self::SCRIPT, &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting aiosmtpd");
        wait_until("the AUTH SMTP server", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port }
    }

    fn url(&self, password: &str) -> String {
        format!("smtp://ordctl:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for AuthSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn doctor_passes_on_a_ready_setup_and_a_wrong_smtp_password_fails_it_and_the_worker_in_one_line() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let smtp = AuthSmtp::start();
    let right = smtp.url("right");
    let report = env
        .ordctl(["doctor", "--json", "--smtp-url", &right])
        .assert_code(0)
        .json();
    assert_eq!(report["ok"], true, "{report:#}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["name"].as_str().unwrap())
        .collect();
    for name in ["postgresql", "rabbitmq", "queues", "redis", "smtp"] {
        assert!(names.contains(&name), "no {name} check in {names:?}");
    }

    let wrong = smtp.url("wrong");
    let run = env.ordctl(["doctor", "--smtp-url", &wrong]).assert_code(1);
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.starts_with('✗'))
        .collect();
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(failed[0].starts_with("✗ smtp: "), "{}", failed[0]);
    assert!(failed[0].contains("535"), "{}", failed[0]);
    assert!(
        failed[0].contains("fix the user and password"),
        "{}",
        failed[0]
    );
    assert!(
        !run.output().contains("wrong@"),
        "the password leaked: {}",
        run.output()
    );

    // The worker runs the same checks at start-up: one line, exit 1, and
    // nothing consumed.
    env.place_order(1, "5", &[]);
    let started = Instant::now();
    let worker = env.ordctl(["worker", "--smtp-url", &wrong]).assert_code(1);
    assert!(started.elapsed() < Duration::from_secs(20));
    let lines = worker.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("✗ smtp: ") && lines[0].contains("535"),
        "{}",
        lines[0]
    );
    assert_eq!(env.queue_depth(&env.work_queue()), 1);
}

#[test]
fn doctor_and_the_worker_refuse_queues_of_another_queue_type() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.run_worker(&[]);
    let run = env
        .ordctl(["doctor", "--queue-type", "quorum"])
        .assert_code(1);
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.starts_with('✗'))
        .collect();
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(failed[0].starts_with("✗ queues: "), "{}", failed[0]);
    assert!(failed[0].contains(&env.work_queue()), "{}", failed[0]);
    let worker = env
        .ordctl(["worker", "--queue-type", "quorum", "--exit-when-idle", "1"])
        .assert_code(1);
    assert_eq!(worker.stderr_lines().len(), 1, "{}", worker.stderr);
    // The classic queues are untouched and still work.
    env.ordctl(["doctor"]).assert_code(0);
}

/// Declares `queue` as a plain classic queue, as ordctl did before classic
/// queues were lazy; `Err` (a 406) when it exists otherwise.
fn declare_plain(env: &TestEnv, queue: &str) -> Result<(), amiquip::Error> {
    let mut connection = ordctl::messaging::connect(&env.settings.amqp_url).unwrap();
    let channel = connection.open_channel(None).unwrap();
    let options = amiquip::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = channel.queue_declare(queue, options).map(drop);
    let _ = connection.close();
    declared
}

#[test]
fn classic_queues_are_lazy_and_those_declared_before_keep_working() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    // The namespace's first work queue, as an earlier ordctl declared it.
    let topology = env.topology();
    let first = topology.queue(topology.consumers[0].name);
    declare_plain(&env, &first).unwrap();

    env.place_order(1, "5", &[]);
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 1);
    let doctor = env.ordctl(["doctor"]).assert_code(0);
    let warning = doctor
        .stdout
        .lines()
        .find(|line| line.starts_with("! queues: "))
        .unwrap_or_else(|| panic!("{}", doctor.stdout));
    assert!(warning.contains(&first), "{warning}");
    assert!(warning.contains("ordctl purge --yes"), "{warning}");

    // Recreated, they are lazy: declaring one plain is refused.
    env.ordctl(["purge", "--yes"]).assert_code(0);
    env.place_order(1, "6", &[]);
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 2);
    let refused = declare_plain(&env, &env.work_queue()).unwrap_err();
    assert!(refused.to_string().contains("x-queue-mode"), "{refused}");
    let doctor = env.ordctl(["doctor"]).assert_code(0);
    assert!(
        doctor
            .stdout
            .lines()
            .any(|line| line.starts_with("✓ queues: ")),
        "{}",
        doctor.stdout
    );
}

/// Makes everything in the env's history look `days` old.
fn age_history(env: &TestEnv, days: i64) {
    use diesel::RunQueryDsl;
    let mut db = env.db();
    for sql in [
        format!("UPDATE outbox SET created_at = created_at - interval '{days} days', published_at = published_at - interval '{days} days'"),
        format!("UPDATE notifications SET created_at = created_at - interval '{days} days', updated_at = updated_at - interval '{days} days', sent_at = sent_at - interval '{days} days'"),
        format!("UPDATE delivery_attempts SET created_at = created_at - interval '{days} days'"),
    ] {
        diesel::sql_query(sql).execute(&mut db).unwrap();
    }
}

#[test]
fn prune_deletes_only_history_every_consumer_delivered_and_a_dry_run_deletes_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    for user in 1..=3 {
        env.place_order(user, "10", &[]);
    }
    env.run_worker(&[]);
    // One delivery dead, one event never delivered, one never published.
    let dead =
        env.scalar("SELECT min(order_id) AS n FROM notifications WHERE consumer = 'payments'");
    env.scalar(&format!(
        "WITH d AS (UPDATE notifications SET status = 'dead' WHERE order_id = {dead} AND consumer = 'payments' RETURNING 1) SELECT count(*) AS n FROM d"
    ));
    let undelivered = env.place_order(4, "10", &[])["order_id"].as_i64().unwrap();
    let unpublished = env.place_order(5, "10", &["--amqp-url", common::DOWN_AMQP_URL])["order_id"]
        .as_i64()
        .unwrap();
    age_history(&env, 40);
    let notifications_of_dead = env.scalar(&format!(
        "SELECT count(*) AS n FROM notifications WHERE order_id = {dead}"
    ));

    let dry = env
        .ordctl(["prune", "--older-than", "30d", "--dry-run", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(dry["dry_run"], true);
    assert!(dry["events"].as_i64().unwrap() >= 5, "{dry}");
    let outbox_before = env.count("outbox");
    let attempts_before = env.count("delivery_attempts");

    // Nothing is old enough for a longer age.
    let none = env
        .ordctl(["prune", "--older-than", "60d", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(none["events"], 0);
    assert_eq!(
        env.count("outbox"),
        outbox_before,
        "the dry run deleted something"
    );

    let pruned = env
        .ordctl(["prune", "--older-than", "30d", "--json"])
        .assert_code(0)
        .json();
    for key in ["events", "outbox", "deliveries", "attempts"] {
        assert_eq!(pruned[key], dry[key], "{key}: {pruned} vs {dry}");
    }
    assert_eq!(
        env.count("delivery_attempts"),
        attempts_before - pruned["attempts"].as_i64().unwrap()
    );
    // What is left: the event with a dead delivery, the one no consumer
    // received, the one never published, and nothing else.
    let mut left: Vec<i64> = {
        use diesel::prelude::*;
        use ordctl::db::schema::outbox;
        outbox::table
            .select(outbox::order_id)
            .load(&mut env.db())
            .unwrap()
    };
    left.sort();
    let mut expected = vec![dead, undelivered, unpublished];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(env.count("notifications"), notifications_of_dead);
    assert_eq!(env.count("orders"), 5, "orders are never pruned");

    let bad = env.ordctl(["prune", "--older-than", "soon"]).assert_code(2);
    assert_eq!(bad.stderr_lines().len(), 1);
}

#[test]
fn prune_deletes_live_feed_rows_older_than_its_window_and_keeps_the_newer_ones() {
    use diesel::RunQueryDsl;
    let env = TestEnv::new();
    env.migrate_and_seed();
    for user in 1..=2 {
        env.place_order(user, "10", &[]);
    }
    let old = env.count("feed");
    assert!(old >= 2, "every order.created is in the feed");
    diesel::sql_query("UPDATE feed SET created_at = created_at - interval '40 days'")
        .execute(&mut env.db())
        .unwrap();
    env.place_order(3, "10", &[]);
    let newest = env.scalar("SELECT max(id) AS n FROM feed");

    let dry = env
        .ordctl(["prune", "--older-than", "30d", "--dry-run", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(dry["feed"], old, "{dry}");
    assert_eq!(env.count("feed"), old + 1, "the dry run deleted nothing");

    let pruned = env
        .ordctl(["prune", "--older-than", "30d", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(pruned["feed"], old, "{pruned}");
    assert_eq!(env.count("feed"), 1);
    assert_eq!(env.scalar("SELECT min(id) AS n FROM feed"), newest);
    // The cursor goes on: a later event never reuses a deleted id.
    env.place_order(4, "10", &[]);
    assert!(env.scalar("SELECT max(id) AS n FROM feed") > newest);
    let line = env
        .ordctl(["prune", "--older-than", "30d"])
        .assert_code(0)
        .stdout;
    assert!(line.contains("0 live feed rows"), "{line}");
}

#[test]
fn reconcile_finds_an_event_a_consumer_never_received_and_republishes_it_to_that_consumer_only() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(1, "10", &[]);
    env.run_worker(&[]);
    // Published, then lost before any worker saw it.
    let lost = env.place_order(2, "20", &[]);
    let queued = env
        .ordctl(["reconcile", "--older-than", "1s", "--json"])
        .assert_code(0);
    assert!(
        !queued.json()["skipped"].as_array().unwrap().is_empty(),
        "a consumer with queued messages is not judged"
    );
    for consumer in ["notifications", "payments"] {
        let queue = env.topology().queue(consumer);
        env.take_messages(&queue);
    }
    std::thread::sleep(Duration::from_millis(1100));

    let found = env
        .ordctl(["reconcile", "--older-than", "1s", "--json"])
        .assert_code(0)
        .json();
    let undelivered = found["undelivered"].as_array().unwrap();
    let mut consumers: Vec<&str> = undelivered
        .iter()
        .map(|event| event["consumer"].as_str().unwrap())
        .collect();
    consumers.sort();
    assert_eq!(consumers, ["notifications", "payments"], "{found}");
    assert!(undelivered
        .iter()
        .all(|event| event["order_id"] == lost["order_id"]));
    assert_eq!(found["republished"], 0);
    // Not old enough yet for the default age.
    let young = env.ordctl(["reconcile", "--json"]).assert_code(0).json();
    assert_eq!(young["undelivered"].as_array().unwrap().len(), 0);

    let republished = env
        .ordctl(["reconcile", "--older-than", "1s", "--republish", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(republished["republished"], 2);
    env.run_worker(&[]);
    let emails = env.emails();
    let confirmations = emails
        .iter()
        .filter(|email| {
            email.message_id == format!("<{}@ordctl>", lost["event_id"].as_str().unwrap())
        })
        .count();
    assert_eq!(confirmations, 1, "{emails:#?}");
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) AS n FROM payments WHERE order_id = {}",
            lost["order_id"]
        )),
        1
    );
    let done = env
        .ordctl(["reconcile", "--older-than", "1s", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(done["undelivered"].as_array().unwrap().len(), 0, "{done}");
}

#[test]
fn an_email_the_server_accepted_before_its_delivery_was_recorded_is_recorded_not_sent_again() {
    use diesel::prelude::*;
    use ordctl::db::schema::notifications;
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(1, "7", &[]);
    // As if a worker had sent it and PostgreSQL went away before the commit.
    let mark = env.redis_key(&format!(
        "sent:notifications:{}",
        placed["event_id"].as_str().unwrap()
    ));
    redis::cmd("SET")
        .arg(&mark)
        .arg("\"250 2.0.0 accepted earlier\"")
        .query::<()>(&mut env.redis())
        .unwrap();
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 0, "sent again");
    let (status, reply): (String, Option<String>) = notifications::table
        .filter(notifications::consumer.eq("notifications"))
        .select((notifications::status, notifications::smtp_reply))
        .first(&mut env.db())
        .unwrap();
    assert_eq!(status, "sent");
    assert_eq!(reply.as_deref(), Some("250 2.0.0 accepted earlier"));

    // Every send leaves its mark, with the server's reply.
    let second = env.place_order(2, "8", &[]);
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 1);
    let mark = env.redis_key(&format!(
        "sent:notifications:{}",
        second["event_id"].as_str().unwrap()
    ));
    let (value, ttl): (String, i64) = redis::pipe()
        .cmd("GET")
        .arg(&mark)
        .cmd("TTL")
        .arg(&mark)
        .query(&mut env.redis())
        .unwrap();
    assert!(value.contains("250"), "{value}");
    assert!(ttl > 3600, "{ttl}");
}
