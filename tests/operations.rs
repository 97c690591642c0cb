//! Operating ordctl: doctor, purge, prune, reconcile, shell completions and
//! the man page, each against the real services in a namespace and
//! database of the test's own.

mod common;

use std::process::Command;

use common::TestEnv;

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
