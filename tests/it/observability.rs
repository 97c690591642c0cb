//! The observability subcommands against the real services: `tail-queue`
//! taps without stealing, `trace` tells an order's story, `status` counts
//! queues, backlog and dead letters, and the logging flags shape stderr.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{TestEnv, COMMAND_TIMEOUT};
use ordctl::messaging::publisher::Publisher;
use ordctl::messaging::Outgoing;
use serde_json::Value;

/// An `ordctl` process whose stdout and stderr are read line by line while it
/// runs, for streams (`tail-queue`, `status --watch`) a test must react to.
struct Live {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Live {
    /// Starts `ordctl args`; with `close_after`, stdout is closed after that
    /// many lines, as `| head -N` does.
    fn start(env: &TestEnv, args: &[&str], close_after: Option<usize>) -> Self {
        let mut child = env
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ordctl");
        let (out_tx, stdout) = mpsc::channel();
        let pipe = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            let mut lines = BufReader::new(pipe).lines();
            let mut read = 0;
            while close_after.is_none_or(|max| read < max) {
                let Some(Ok(line)) = lines.next() else { break };
                read += 1;
                let _ = out_tx.send(line);
            }
            // Dropping `lines` closes our end of the pipe.
        });
        let (err_tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        Self {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; stderr so far:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// The tap's own queue, once it is bound (from its "tapping … through
    /// QUEUE" line).
    fn wait_until_tapping(&mut self) -> String {
        let line = self.wait_for_log("tapping ");
        line.rsplit(" through ")
            .next()
            .expect("a queue name")
            .trim()
            .to_string()
    }

    fn next_line(&mut self) -> String {
        self.stdout
            .recv_timeout(COMMAND_TIMEOUT)
            .unwrap_or_else(|_| {
                panic!(
                    "no line on stdout; stderr:\n{}",
                    self.stderr_seen.join("\n")
                )
            })
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits for the exit; returns the code, the stdout lines not read yet
    /// and all of stderr.
    fn wait(mut self) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                break status;
            }
            assert!(Instant::now() < deadline, "ordctl did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.try_iter().collect();
        // The pipe closes with the process; take what is left.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push(line);
        }
        (status.code(), stdout, self.stderr_seen.join("\n"))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Publishes a body that is not an event to `{ns}.events`: the worker
/// dead-letters it as a permanent failure on its first attempt.
fn publish_garbage(env: &TestEnv, message_id: &str) {
    let mut publisher =
        Publisher::connect(&env.settings.amqp_url, &env.topology()).expect("connecting");
    publisher
        .publish_events(&[Outgoing::new(
            "order.created",
            message_id,
            b"this is not an event".to_vec(),
        )])
        .expect("publishing");
    publisher.close();
}

/// A user whose address no SMTP server accepts: delivering to them fails
/// permanently.
fn user_with_invalid_email(env: &TestEnv) -> i64 {
    env.scalar(
        "INSERT INTO users (name, email) VALUES ('Broken', 'not an address') RETURNING id AS n",
    )
}

#[test]
fn tail_queue_sees_every_event_while_the_worker_still_delivers_each_one() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut tail = Live::start(&env, &["tail-queue", "--limit", "3"], None);
    tail.wait_until_tapping();
    let placed: Vec<Value> = (1..=3)
        .map(|user| env.place_order(user, "10", &[]))
        .collect();
    let lines: Vec<String> = (0..3).map(|_| tail.next_line()).collect();
    let (code, _, stderr) = tail.wait();
    assert_eq!(code, Some(0), "{stderr}");

    for (line, order) in lines.iter().zip(&placed) {
        let expected = format!(
            "order.created order={} user={} amount=10.00 USD attempt=1",
            order["order_id"], order["user_id"]
        );
        assert!(
            line.contains(&expected),
            "{line:?} should contain {expected:?}"
        );
    }
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 3, "the tap must not take messages");
    assert_eq!(env.queue_depth(&env.work_queue()), 0);
}

#[test]
fn tail_queue_json_prints_one_object_per_message_with_the_spec_fields() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut tail = Live::start(&env, &["tail-queue", "--json", "--limit", "2"], None);
    tail.wait_until_tapping();
    let placed = [
        env.place_order(3, "42", &[]),
        env.place_order(4, "7.5", &[]),
    ];
    let (code, lines, stderr) = tail.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, order) in lines.iter().zip(&placed) {
        let message = json(line);
        assert_eq!(message["routing_key"], "order.created");
        assert_eq!(message["message_id"], order["event_id"]);
        assert!(message["headers"].is_object(), "{message}");
        assert_eq!(message["body"]["event_id"], order["event_id"]);
        assert_eq!(message["body"]["order"]["id"], order["order_id"]);
        assert_eq!(message["body"]["order"]["amount"], order["amount"]);
        let received_at = message["received_at"].as_str().expect("received_at");
        chrono::DateTime::parse_from_rfc3339(received_at).expect("an RFC 3339 time");
    }
}

#[test]
fn tail_queue_works_before_anything_exists_and_leaves_nothing_behind() {
    // No migrate, no order: the namespace has no exchange or queue yet.
    let env = TestEnv::new();
    let mut tail = Live::start(&env, &["tail-queue"], None);
    let tap_queue = tail.wait_until_tapping();
    assert!(env.queue_exists(&tap_queue), "{tap_queue}");
    assert!(
        env.queue_exists(&env.work_queue()),
        "the topology is declared"
    );
    tail.signal("INT");
    let (code, lines, stderr) = tail.wait();
    assert_eq!(code, Some(0), "Ctrl-C is a normal way to stop: {stderr}");
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        !env.queue_exists(&tap_queue),
        "the tap queue is removed on exit"
    );
}

#[test]
fn tail_queue_exits_0_after_the_idle_timeout() {
    let env = TestEnv::new();
    let run = env
        .ordctl(["tail-queue", "--idle-timeout", "1"])
        .assert_code(0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn tail_queue_into_head_exits_quietly_when_the_pipe_closes() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut tail = Live::start(&env, &["tail-queue"], Some(1));
    tail.wait_until_tapping();
    env.place_order(1, "1", &[]);
    let first = tail.next_line();
    assert!(first.contains("order.created"), "{first}");
    // The next line hits the closed pipe.
    env.place_order(2, "2", &[]);
    let (code, _, stderr) = tail.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn tail_queue_dlq_shows_what_is_dead_lettered_and_why() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut tail = Live::start(
        &env,
        &["tail-queue", "--dlq", "--json", "--limit", "1"],
        None,
    );
    tail.wait_until_tapping();
    publish_garbage(&env, "garbage-1");
    env.run_worker(&[]);
    let (code, lines, stderr) = tail.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let message = json(&lines[0]);
    assert_eq!(message["message_id"], "garbage-1");
    assert_eq!(message["body"], "this is not an event");
    let headers = &message["headers"];
    assert_eq!(headers["x-ordctl-failure"], "permanent");
    assert_eq!(headers["x-ordctl-attempts"], 1);
    assert_eq!(headers["x-ordctl-original-routing-key"], "order.created");
    // Dead-lettered by the notifications or the payments consumer,
    // whichever came first: both bind order.created.
    let reason = headers["x-ordctl-last-error"].as_str().expect("a reason");
    assert!(reason.contains("the message is not a valid"), "{reason}");
    // The tap saw a copy: the message itself is in the DLQ.
    assert_eq!(env.queue_depth(&env.dlq()), 1);
}

#[test]
fn tail_queue_dlq_lines_give_the_reason() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let broken = user_with_invalid_email(&env);
    let mut tail = Live::start(&env, &["tail-queue", "--dlq", "--limit", "1"], None);
    tail.wait_until_tapping();
    let placed = env.place_order(broken, "5", &[]);
    env.run_worker(&[]);
    let line = tail.next_line();
    let (code, _, stderr) = tail.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let order = format!("order={} user={broken}", placed["order_id"]);
    assert!(line.contains("[dead-lettered]"), "{line}");
    assert!(line.contains(&order), "{line}");
    assert!(line.contains("attempts=1"), "{line}");
    assert!(
        line.contains("reason=\"permanent: invalid address"),
        "{line}"
    );
}

#[test]
fn trace_follows_a_delivered_order_from_commit_to_sent() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(3, "42", &[]);
    env.run_worker(&[]);
    let order_id = placed["order_id"].to_string();

    let trace = env
        .ordctl(["trace", &order_id, "--json"])
        .assert_code(0)
        .json();
    assert_eq!(trace["order"]["id"], placed["order_id"]);
    assert_eq!(trace["order"]["amount"], "42.00");
    assert_eq!(trace["event_id"], placed["event_id"]);
    // The confirmation's steps; the payments consumer's charge and its
    // payment.succeeded event are in the timeline too.
    let confirmation = confirmation_steps(&trace);
    let steps: Vec<&str> = confirmation
        .iter()
        .map(|step| step["step"].as_str().expect("a step"))
        .collect();
    assert_eq!(steps, ["committed", "published", "sent"]);
    let published = confirmation[1];
    assert!(published["lag_secs"].as_f64().expect("a lag") >= 0.0);
    let sent = confirmation[2];
    assert_eq!(sent["attempt"], 1);
    assert!(
        sent["smtp_reply"]
            .as_str()
            .expect("a reply")
            .starts_with("250"),
        "{sent}"
    );
    assert_eq!(trace["state"], "delivered");
    assert_eq!(trace["notification"]["status"], "sent");

    let table = env.ordctl(["trace", &order_id]).assert_code(0).stdout;
    for expected in ["committed", "published", "sent", "now: delivered"] {
        assert!(table.contains(expected), "{expected:?} missing:\n{table}");
    }
}

#[test]
fn trace_of_an_order_to_an_invalid_address_ends_dead_lettered() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let broken = user_with_invalid_email(&env);
    let placed = env.place_order(broken, "9.99", &[]);
    env.run_worker(&[]);

    let order_id = placed["order_id"].to_string();
    let trace = env
        .ordctl(["trace", &order_id, "--json"])
        .assert_code(0)
        .json();
    let timeline = confirmation_steps(&trace);
    let last = timeline.last().expect("steps");
    assert_eq!(last["step"], "dead_lettered", "{trace}");
    assert_eq!(last["attempt"], 1);
    assert!(
        last["error"]
            .as_str()
            .expect("an error")
            .contains("invalid address"),
        "{last}"
    );
    assert_eq!(trace["state"], "dead_lettered");
    assert_eq!(trace["notification"]["status"], "dead");
}

/// The trace's steps about the confirmation email: the commit, the
/// order.created publish and the notifications consumer's attempts.
fn confirmation_steps(trace: &Value) -> Vec<&Value> {
    trace["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter(|step| {
            step.get("consumer")
                .is_none_or(|consumer| consumer == "notifications")
                && step
                    .get("event")
                    .is_none_or(|event| event == "order.created")
        })
        .collect()
}

#[test]
fn trace_of_an_unknown_order_exits_2() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let run = env.ordctl(["trace", "424242"]).assert_code(2);
    assert_eq!(run.stderr.trim(), "error: order 424242 not found");
    env.ordctl(["trace", "not-a-number"]).assert_code(2);
}

#[test]
fn status_json_has_the_spec_shape_and_counts_dead_letters_by_reason() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let broken = user_with_invalid_email(&env);
    env.place_order(1, "1", &[]);
    env.place_order(broken, "2", &[]);
    publish_garbage(&env, "garbage-2");
    env.run_worker(&[]);

    let status = env.ordctl(["status", "--json"]).assert_code(0).json();
    let queues = status["queues"].as_array().expect("queues");
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert!(names.contains(&env.work_queue().as_str()), "{names:?}");
    assert!(names.contains(&env.dlq().as_str()), "{names:?}");
    assert!(
        names.iter().any(|name| name.contains(".retry.")),
        "{names:?}"
    );
    for queue in queues {
        assert!(queue["ready"].is_u64(), "{queue}");
        assert!(queue["consumers"].is_u64(), "{queue}");
        // Known only through the management API, which may be off.
        assert!(
            queue["unacked"].is_u64() || queue["unacked"].is_null(),
            "{queue}"
        );
    }
    let dlq = queues
        .iter()
        .find(|q| q["name"] == env.dlq().as_str())
        .unwrap();
    assert_eq!(dlq["ready"], 2);
    // Plus the garbage in the payments consumer's DLQ.
    assert_eq!(status["dlq"], 3);
    assert_eq!(status["outbox"]["pending"], 0);
    assert!(status["outbox"]["oldest_pending_secs"].is_null());
    let notifications = status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|consumer| consumer["name"] == "notifications")
        .expect("the notifications consumer");
    assert_eq!(notifications["deliveries"]["sent"], 1);
    assert_eq!(notifications["deliveries"]["dead"], 1);
    // The garbage went to the payments consumer's queue too (it binds
    // order.created); both valid orders were charged.
    assert_eq!(status["deliveries"]["sent"], 3);
    let reasons: Vec<(&str, i64)> = status["dead_letters"]
        .as_array()
        .expect("dead letters")
        .iter()
        .filter(|r| r["consumer"] == "notifications")
        .map(|r| (r["reason"].as_str().unwrap(), r["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].0.contains("invalid address"), "{reasons:?}");
    assert!(reasons[1].0.contains("not a valid event"), "{reasons:?}");
    assert!(reasons.iter().all(|(_, count)| *count == 1), "{reasons:?}");

    let table = env.ordctl(["status"]).assert_code(0).stdout;
    assert!(table.contains(&env.dlq()), "{table}");
    assert!(table.contains("invalid address"), "{table}");
}

#[test]
fn status_counts_an_unpublished_outbox_row() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(1, "1", &[]);
    env.ordctl_with_env(
        ["place-order", "--user", "2", "--amount", "2"],
        &[("AMQP_URL", common::DOWN_AMQP_URL)],
    )
    .assert_code(0);
    let status = env.ordctl(["status", "--json"]).assert_code(0).json();
    assert_eq!(status["outbox"]["pending"], 1);
    assert!(
        status["outbox"]["oldest_pending_secs"]
            .as_f64()
            .expect("an age")
            >= 0.0
    );
    assert_eq!(status["queues"][0]["ready"], 1);
}

#[test]
fn status_watch_prints_snapshot_after_snapshot_until_a_signal() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut watch = Live::start(&env, &["status", "--watch", "0.2", "--json"], None);
    let first = json(&watch.next_line());
    let second = json(&watch.next_line());
    assert!(first["queues"].is_array() && second["queues"].is_array());
    watch.signal("TERM");
    let (code, _, stderr) = watch.wait();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn quiet_silences_info_logs() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let loud = env.run_worker(&[]);
    assert!(loud.stderr.contains("INFO"), "{}", loud.stderr);
    let quiet = env.run_worker(&["-q"]);
    assert!(!quiet.stderr.contains("INFO"), "{}", quiet.stderr);
}

#[test]
fn log_format_json_gives_one_json_object_per_line_naming_the_event() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let broken = user_with_invalid_email(&env);
    let placed = env.place_order(broken, "3", &[]);
    let run = env.run_worker(&["--log-format", "json"]);
    let lines: Vec<Value> = run.stderr_lines().into_iter().map(json).collect();
    assert!(
        lines.iter().all(|line| line["level"].is_string()),
        "{lines:?}"
    );
    let dead = lines
        .iter()
        .find(|line| line["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error line: {lines:?}"));
    assert_eq!(dead["span"]["message_id"], placed["event_id"], "{dead}");
}
