//! Operating ordctl: doctor, purge, prune, reconcile, shell completions and
//! the man page, each against the real services in a namespace and
//! database of the test's own.

mod common;

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
        queue_exists(&env, &env.work_queue()) && env.queue_consumers(&env.work_queue()) > 0
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
    assert!(!queue_exists(&env, &env.work_queue()));
    assert!(!queue_exists(&env, &env.dlq()));
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

fn queue_exists(env: &TestEnv, queue: &str) -> bool {
    let mut connection = ordctl::messaging::connect(&env.settings.amqp_url).unwrap();
    let channel = connection.open_channel(None).unwrap();
    let exists = channel.queue_declare_passive(queue).is_ok();
    let _ = connection.close();
    exists
}

#[test]
fn a_dry_run_then_a_replay_of_5000_dead_letters_moves_all_of_them_in_seconds() {
    use ordctl::messaging::{Confirms, Outgoing};
    const JUNK: usize = 5_000;
    let env = TestEnv::new();
    env.ordctl(["migrate"]).assert_code(0);
    // A foreign service published junk that ended up dead-lettered.
    let mut connection = ordctl::messaging::connect(&env.settings.amqp_url).unwrap();
    let channel = connection.open_channel(None).unwrap();
    env.topology().declare(&channel).unwrap();
    let mut confirms = Confirms::enable(&channel).unwrap();
    let junk: Vec<Outgoing> = (0..JUNK)
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
    assert_eq!(env.queue_depth(&env.dlq()) as usize, JUNK);

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
