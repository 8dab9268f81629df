//! Replication end to end over real sockets (issue 6): `sipshard failover-test`
//! runs two clustered `sipshard` processes on loopback, sets up calls through
//! node 1, kills it with SIGKILL, and sends every BYE to node 2. Every
//! established call must end with a 200 from the callee side, and the callee
//! must see every BYE: with sync replication, and with async replication (the
//! kill comes seconds after the last change, so async loses nothing either).

use std::process::Command;

/// Runs the drill; returns (stdout, established, ended_ok, lost).
fn drill(args: &[&str]) -> (String, u64, u64, u64) {
    let dir = std::env::temp_dir().join(format!("sipshard-it-failover-{}-{}", std::process::id(), args.join("-")));
    let out = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .arg("failover-test")
        .args(args)
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("sipshard failover-test runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    let field = |name: &str| -> u64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the last line {last:?}\n{stdout}\n{stderr}"))
    };
    assert!(last.starts_with("failover: "), "the last line is the summary: {stdout}\n{stderr}");
    let (established, ended_ok, lost) = (field("established="), field("ended_ok="), field("lost="));
    assert!(out.status.success(), "exit {}: {stdout}\n{stderr}", out.status);
    let _ = std::fs::remove_dir_all(&dir);
    (stdout, established, ended_ok, lost)
}

/// Sums `key=` over the survivor's shard lines.
fn survivor_sum(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.starts_with("shard "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.strip_prefix(key))
        .map(|n| n.parse::<u64>().expect("a count"))
        .sum()
}

#[test]
fn a_killed_node_loses_no_established_call_with_sync_or_async_replication() {
    let (stdout, established, ended_ok, lost) = drill(&["--calls", "2000", "--replication", "sync"]);
    assert_eq!((established, ended_ok, lost), (2000, 2000, 0), "{stdout}");
    assert!(stdout.contains("byes 2000"), "the callee saw every BYE: {stdout}");
    // Node 2 took node 1's stripes over and activated the calls it held as replicas.
    assert_eq!(survivor_sum(&stdout, "stripes_taken_over="), 512, "half of 1024 stripes: {stdout}");
    assert!(survivor_sum(&stdout, "records_activated=") >= 500, "about half the calls were node 1's: {stdout}");
    assert!(stdout.contains("link1=dead"), "the survivor declared node 1 dead: {stdout}");
    // `sipshard cluster status` on the survivor: a new view where node 2 owns every stripe.
    let status = stdout.split("== sipshard cluster status (node 2)").nth(1).expect("the status section");
    assert!(status.contains("shard 0: epoch=2") && status.contains("owner2=1024"), "{status}");
    assert!(status.contains("(written "), "fresh: {status}");

    let (stdout, established, ended_ok, lost) = drill(&["--calls", "1000", "--replication", "async"]);
    assert_eq!((established, ended_ok, lost), (1000, 1000, 0), "{stdout}");
    assert!(stdout.contains("byes 1000"), "the callee saw every BYE: {stdout}");
    assert_eq!(survivor_sum(&stdout, "held_messages="), 0, "async holds nothing back: {stdout}");
}

#[test]
fn a_restarted_node_gets_its_stripes_back_and_its_calls_still_end_cleanly() {
    let (stdout, established, ended_ok, lost) = drill(&["--calls", "1000", "--rejoin"]);
    assert_eq!((established, ended_ok, lost), (1000, 1000, 0), "{stdout}");
    assert!(stdout.contains("byes 1000"), "the callee saw every BYE: {stdout}");
    assert!(stdout.contains("it owns 512 stripes again"), "the hand-back happened before the BYEs: {stdout}");
    let (survivor, returned) = stdout.split_once("== node 1 (restarted)").expect("both nodes' counters");
    // Node 2 took node 1's stripes, sent it a snapshot, gave them back and made them dormant.
    assert_eq!(survivor_sum(survivor, "stripes_handed_over="), 512, "{survivor}");
    assert!(survivor_sum(survivor, "records_deactivated=") >= 400, "{survivor}");
    // Node 1 installed the snapshot and activated its calls; their BYEs reached it via node 2.
    assert!(survivor_sum(returned, "replicas_installed=") >= 900, "{returned}");
    assert!(survivor_sum(returned, "records_activated=") >= 400, "{returned}");
    assert!(survivor_sum(returned, "local=") >= 400, "the returned node bridged BYEs: {returned}");
    // A BYE nobody holds: node 2 asked node 1 over the link, then answered 481.
    assert!(stdout.contains("stray BYE to node 2: 481 after"), "{stdout}");
    assert!(survivor_sum(survivor, "lookups=") >= 1, "{survivor}");
}

#[test]
fn the_drill_refuses_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["failover-test", "--replication", "semi"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replication must be sync or async"));
}
