//! `sipshard demo`, the README's first command: a short run prints the caller's
//! report (no failed call) and every shard's counters, and exits 0.

use std::process::Command;

#[test]
fn the_demo_completes_every_call_and_prints_both_reports() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["demo", "--seconds", "2", "--rate", "200"])
        .output()
        .expect("sipshard demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}: {stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("calls: attempted 400  ok 400  failed 0  timed out 0"), "{stdout}");
    for measure in ["INVITE->100", "INVITE->180", "INVITE->200", "BYE->200"] {
        assert!(stdout.lines().any(|l| l.starts_with(measure)), "{measure} row: {stdout}");
    }
    assert!(stdout.contains("invites 400  acks 400  byes 400"), "the callee saw every call: {stdout}");
    let shards: Vec<&str> = stdout.lines().filter(|l| l.starts_with("shard ")).collect();
    assert!(!shards.is_empty(), "per-shard counters: {stdout}");
    let sum = |key: &str| -> u64 {
        shards
            .iter()
            .flat_map(|l| l.split_whitespace())
            .filter_map(|kv| kv.strip_prefix(key))
            .map(|n| n.parse::<u64>().expect("a count"))
            .sum()
    };
    // The health checks before the load are answered by the server itself, never relayed.
    assert_eq!(sum("client_transactions="), 800, "INVITE and BYE relayed once per call: {stdout}");
    assert!(sum("transactions=") > 800, "the calls' and the health checks' server transactions: {stdout}");
}

#[test]
fn the_demo_refuses_an_unbounded_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["demo", "--seconds", "0"])
        .output()
        .expect("sipshard demo runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds must be between 1 and 600"));
}
