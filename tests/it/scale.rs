//! Scaling out: several RabbitMQ nodes in one `--amqp-url`, and the
//! fleet-wide send rate.

use crate::common;

use common::{with_password, TestEnv, AMQP_URL, DOWN_AMQP_URL};

#[test]
fn every_command_moves_on_to_the_next_node_when_the_first_does_not_answer() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let down = with_password(DOWN_AMQP_URL, "hunter2");
    let nodes = format!("{down}, {AMQP_URL}");
    let with_nodes = |args: &[&str]| {
        let mut all = vec!["--amqp-url", nodes.as_str()];
        all.extend_from_slice(args);
        let run = env.ordctl(all);
        assert!(
            !run.output().contains("hunter2"),
            "a password shown by {args:?}:\n{}",
            run.output()
        );
        run
    };

    let placed = with_nodes(&["place-order", "--json", "--user", "3", "--amount", "42"])
        .assert_code(0)
        .json();
    assert_eq!(placed["published"], true, "{placed}");
    with_nodes(&["worker", "--exit-when-idle", "2"]).assert_code(0);
    assert_eq!(env.emails().len(), 1);

    let status = with_nodes(&["status", "--json"]).assert_code(0).json();
    assert_eq!(status["deliveries"]["sent"], 2, "{status}");
    let replay = with_nodes(&["replay-dlq", "--json"]).assert_code(0).json();
    assert_eq!(replay["remaining"], 0, "{replay}");
    with_nodes(&["tail-queue", "--idle-timeout", "0.5"]).assert_code(0);
    with_nodes(&["relay", "--once"]).assert_code(0);

    // doctor passes on the node that answers and warns about the other.
    let doctor = with_nodes(&["doctor"]).assert_code(0);
    assert!(
        doctor.stdout.contains("127.0.0.1:1/") && doctor.stdout.contains("does not answer"),
        "{}",
        doctor.stdout
    );
    assert!(
        doctor.stdout.contains("guest:***@127.0.0.1:1/"),
        "{}",
        doctor.stdout
    );

    // No node answers: one error naming each, passwords masked.
    let nowhere = format!("{down},{down}");
    let run = env
        .ordctl(["relay", "--once", "--amqp-url", &nowhere])
        .assert_code(1);
    assert!(
        run.stderr.contains("none of the 2 RabbitMQ nodes answered"),
        "{}",
        run.stderr
    );
    assert!(!run.output().contains("hunter2"), "{}", run.output());
}

#[test]
fn a_malformed_node_in_the_list_is_invalid_input_with_its_password_masked() {
    let env = TestEnv::new();
    let run = env
        .ordctl([
            "status",
            "--amqp-url",
            &format!("{AMQP_URL},http://u:hunter2@host/"),
        ])
        .assert_code(2);
    assert!(run.stderr.contains("--amqp-url"), "{}", run.stderr);
    assert!(!run.output().contains("hunter2"), "{}", run.output());
}
