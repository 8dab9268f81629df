//! Replication end to end over real sockets (issue 6): `sipshard failover-test`
//! runs two clustered `sipshard` processes on loopback, sets up calls through
//! node 1, kills it with SIGKILL, and sends every BYE to node 2. Every
//! established call must end with a 200 from the callee side, and the callee
//! must see every BYE: with sync replication, and with async replication (the
//! kill comes seconds after the last change, so async loses nothing either).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use sipshard_shards::replication::frame::{CHALLENGE_BYTES, Frame, PROOF_BYTES, decode, encode};
use sipshard_shards::{NodeId, ShardId};

use crate::support::{Running, free_port, free_port_pair, wait_until_bound, wait_until_healthy};

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

/// Runs the drill for `calls` calls and checks that every one was set up, ended with a 200 and
/// had its BYE seen by the callee; returns the drill's output.
fn drill_ends_every_call(calls: u64, args: &[&str]) -> String {
    let calls_arg = calls.to_string();
    let all: Vec<&str> = ["--calls", calls_arg.as_str()].into_iter().chain(args.iter().copied()).collect();
    let (stdout, established, ended_ok, lost) = drill(&all);
    assert_eq!((established, ended_ok, lost), (calls, calls, 0), "{stdout}");
    assert!(stdout.contains(&format!("byes {calls}")), "the callee saw every BYE: {stdout}");
    stdout
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
    let stdout = drill_ends_every_call(2000, &["--replication", "sync"]);
    // Node 2 took node 1's stripes over and activated the calls it held as replicas.
    assert_eq!(survivor_sum(&stdout, "stripes_taken_over="), 512, "half of 1024 stripes: {stdout}");
    assert!(survivor_sum(&stdout, "records_activated=") >= 500, "about half the calls were node 1's: {stdout}");
    assert!(stdout.contains("link1=dead"), "the survivor declared node 1 dead: {stdout}");
    // `sipshard cluster status` on the survivor: a new view where node 2 owns every stripe.
    let status = stdout.split("== sipshard cluster status (node 2)").nth(1).expect("the status section");
    assert!(status.contains("shard 0: epoch=2") && status.contains("owner2=1024"), "{status}");
    assert!(status.contains("(written "), "fresh: {status}");

    let stdout = drill_ends_every_call(1000, &["--replication", "async"]);
    assert_eq!(survivor_sum(&stdout, "held_messages="), 0, "async holds nothing back: {stdout}");
}

#[test]
fn a_restarted_node_gets_its_stripes_back_and_its_calls_still_end_cleanly() {
    let stdout = drill_ends_every_call(1000, &["--rejoin"]);
    assert!(stdout.contains("it owns 512 stripes again"), "the hand-back happened before the BYEs: {stdout}");
    let (survivor, returned) = stdout.split_once("== node 1 (restarted)").expect("both nodes' counters");
    // Node 2 took node 1's stripes, sent it a snapshot, gave them back and made them dormant.
    assert_eq!(survivor_sum(survivor, "stripes_handed_over="), 512, "{survivor}");
    assert!(survivor_sum(survivor, "records_deactivated=") >= 400, "{survivor}");
    // Node 1 installed the snapshot and activated its calls; their BYEs reached it via node 2.
    assert!(survivor_sum(returned, "replicas_installed=") >= 900, "{returned}");
    assert!(survivor_sum(returned, "records_activated=") >= 400, "{returned}");
    assert!(survivor_sum(returned, "local=") >= 400, "the returned node bridged BYEs: {returned}");
    // A BYE nobody holds: its stripe's owner (node 2, or node 1 via node 2) asked the other
    // node over the link, then answered 481.
    assert!(stdout.contains("stray BYE to node 2: 481 after"), "{stdout}");
    assert_eq!(survivor_sum(&stdout, "lookups="), 1, "{stdout}");
}

#[test]
fn a_node_back_before_it_was_declared_dead_finds_its_calls_by_lookup() {
    // Killed and restarted 100 ms later: node 2 never drops it, so it owns its stripes again at
    // once with none of its calls. Node 2 notices the new life and sends it every copy of its
    // stripes, which it takes as the owner (merged); a BYE that comes before its copy finds
    // the call by a Lookup of node 2's copy.
    let stdout = drill_ends_every_call(1000, &["--rejoin", "--rejoin-after-ms", "100"]);
    assert!(stdout.contains("before node 2 declared it dead"), "{stdout}");
    let (_, returned) = stdout.split_once("== node 1 (restarted)").expect("both nodes' counters");
    let found = survivor_sum(returned, "lookups_found=") + survivor_sum(returned, "replicas_merged=");
    assert!(found >= 400, "about half the calls were node 1's, each merged or found ({found}): {returned}");
    // Its new life was noticed: node 2 sent it copies of node 2's calls (its backup role).
    assert!(survivor_sum(returned, "replicas_installed=") >= 400, "{returned}");
}

#[test]
fn a_node_frozen_past_the_dead_time_comes_back_to_one_view_and_no_call_is_lost() {
    // SIGSTOP for 2 s: node 2 takes node 1's stripes; after SIGCONT node 1 hears node 2
    // again, both settle on one view with the stripes back home, and every BYE (to node 2,
    // forwarded to node 1 for its stripes) ends its call.
    let stdout = drill_ends_every_call(1000, &["--pause-ms", "2000"]);
    assert!(stdout.contains("both nodes at epoch") && stdout.contains("node 1 owning 512 stripes"), "{stdout}");
    let (survivor, thawed) = stdout.split_once("== node 1 (thawed)").expect("both nodes' counters");
    assert_eq!(survivor_sum(survivor, "stripes_taken_over="), 512, "{survivor}");
    assert_eq!(survivor_sum(survivor, "stripes_handed_over="), 512, "{survivor}");
    assert!(survivor_sum(thawed, "records_activated=") >= 400, "{thawed}");
}

#[test]
fn a_partition_between_two_live_nodes_heals_to_one_view_and_no_call_is_lost() {
    // The replica links are cut for 2 s halfway through the setup: each node declares the
    // other dead and owns every stripe, node 1 (where the caller sends) sets up the rest of
    // the calls alone. When the links come back the nodes settle on one view, node 2 takes
    // the newer copies node 1 made, and every BYE sent to node 2 ends its call.
    let stdout = drill_ends_every_call(1000, &["--partition-ms", "2000"]);
    assert!(stdout.contains("links back after 2000 ms; both nodes at epoch"), "one view after the heal: {stdout}");
    let (survivor, across) = stdout.split_once("== node 1 (across the partition)").expect("both nodes' counters");
    for (name, counters) in [("node 2", survivor), ("node 1", across)] {
        assert!(survivor_sum(counters, "stripes_taken_over=") >= 512, "{name} took the other's stripes: {counters}");
    }
    let merged = survivor_sum(survivor, "replicas_merged=");
    assert!(merged >= 200, "node 2 took the copies node 1 changed during the partition ({merged}): {survivor}");
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

/// The cluster id sipshard derives from `cluster_id` (FNV-1a, 64 bits; src/config.rs).
fn cluster_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Writes `frames` on a new connection to `to`; returns every frame read back until the node
/// closes the connection (which it must do within 3 s).
fn talk(to: SocketAddr, bytes: &[u8], then: impl Fn(&Frame) -> Option<Vec<u8>>) -> Vec<Frame> {
    let mut stream = TcpStream::connect(to).expect("the replication port accepts");
    stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    stream.write_all(bytes).expect("write");
    let (mut got, mut buf, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("the node neither answered nor closed the connection: {e}"),
        }
        while let Some((frame, used)) = decode(&buf).expect("the node writes valid frames") {
            buf.drain(..used);
            if let Some(reply) = then(&frame) {
                stream.write_all(&reply).expect("write");
            }
            got.push(frame);
        }
    }
}

#[test]
fn a_replication_port_refuses_garbage_strangers_and_a_wrong_secret_and_the_node_goes_on() {
    let dir = std::env::temp_dir().join(format!("sipshard-it-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (sip, replication) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{sip}\"\nshards = 1\n\n[cluster]\nnode = 2\nsecret = \"the-right-shared-secret\"\n\
         listen = \"127.0.0.1:{replication}\"\nstatus_file = \"{}\"\n\n[[cluster.peers]]\nnode = 1\naddress = \"127.0.0.1:9\"\n",
        dir.join("node2.status").display()
    );
    std::fs::write(dir.join("node2.toml"), config).expect("config");
    let log = std::fs::File::create(dir.join("node2.log")).expect("log");
    let node = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args(["run", "--config"])
            .arg(dir.join("node2.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sipshard starts"),
    );
    let server: SocketAddr = format!("127.0.0.1:{sip}").parse().expect("addr");
    wait_until_healthy(server);
    wait_until_bound(replication, true);
    let port: SocketAddr = format!("127.0.0.1:{replication}").parse().expect("addr");

    // Garbage: not a frame; closed without a word.
    assert!(talk(port, &[0x7f; 64], |_| None).is_empty());
    // A well-formed Hello from another cluster: closed.
    let hello = |cluster| {
        let mut out = Vec::new();
        let frame = Frame::Hello {
            cluster,
            node: NodeId(1),
            shard: ShardId(0),
            epoch: 1,
            incarnation: 7,
            challenge: [5; CHALLENGE_BYTES],
        };
        encode(&frame, &mut out);
        out
    };
    assert!(talk(port, &hello(cluster_id("another")), |_| None).is_empty());
    // The right cluster but not the secret: the node proves itself (Welcome), our forged
    // Proof is refused, the connection closed.
    let got = talk(port, &hello(cluster_id("sipshard")), |frame| {
        matches!(frame, Frame::Welcome { .. }).then(|| {
            let mut out = Vec::new();
            encode(&Frame::Proof { proof: [0; PROOF_BYTES], received: 0 }, &mut out);
            out
        })
    });
    assert!(matches!(got.as_slice(), [Frame::Welcome { .. }]), "{got:?}");
    // A replayed Change before any handshake: closed too.
    let mut change = Vec::new();
    encode(
        &Frame::Change { seq: 1, stripe: 0, key: b"k".to_vec(), version: 1, hints: 0, record: vec![1] },
        &mut change,
    );
    assert!(talk(port, &change, |_| None).is_empty());

    // The node goes on serving SIP, and its log says why each link was refused.
    wait_until_healthy(server);
    drop(node);
    let log = std::fs::read_to_string(dir.join("node2.log")).expect("log");
    for why in ["out of bounds", "cluster id", "failed authentication", "opened with Change instead of Hello"] {
        assert!(log.contains(why), "the log names {why:?}: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UA connected over TCP to node 1 only: node 1 forwards the messages of the calls node 2
/// owns, and node 2's answers come back through node 1 (`Frame::Send`), written on the UA's
/// connection. Without that, node 2 would try a new connection to the UA's ephemeral port and
/// half of the calls would fail.
#[test]
fn calls_over_tcp_to_one_node_are_answered_on_that_connection_whichever_node_owns_them() {
    use sipshard_bench::transport::TransportKind;
    use sipshard_bench::uac::{self, UacConfig};
    use sipshard_bench::uas::{Uas, UasConfig};

    let dir = std::env::temp_dir().join(format!("sipshard-it-tcp-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut callee_config = UasConfig::new("127.0.0.1:0".parse().expect("addr"));
    callee_config.progress = false;
    let callee = Uas::start(&callee_config).expect("the callee starts");
    let sip = [free_port(), free_port()];
    let replication = [free_port_pair(), free_port_pair()];
    let mut nodes = Vec::new();
    for (i, id) in [1u16, 2].into_iter().enumerate() {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nshards = 2\ntransport = \"both\"\nrole = \"proxy\"\n\n\
             [proxy]\ndefault_route = \"sip:{}\"\n\n[cluster]\nnode = {id}\nsecret = \"tcp-cluster-test-secret\"\n\
             listen = \"127.0.0.1:{}\"\n\n[[cluster.peers]]\nnode = {}\naddress = \"127.0.0.1:{}\"\nsip = \"127.0.0.1:{}\"\n",
            sip[i],
            callee.local,
            replication[i],
            3 - id,
            replication[1 - i],
            sip[1 - i],
        );
        let path = dir.join(format!("node{id}.toml"));
        std::fs::write(&path, config).expect("config");
        let log = std::fs::File::create(dir.join(format!("node{id}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sipshard starts");
        nodes.push(Running(child));
    }
    for &port in &sip {
        wait_until_healthy(format!("127.0.0.1:{port}").parse().expect("addr"));
    }
    let links_up = |id: u16| {
        let text = std::fs::read_to_string(dir.join(format!("node{id}.log"))).unwrap_or_default();
        text.matches("replica link up").count() >= 2
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(links_up(1) && links_up(2)) {
        assert!(std::time::Instant::now() < deadline, "the replica links did not come up within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut caller = UacConfig::new(format!("127.0.0.1:{}", sip[0]).parse().expect("addr"));
    caller.transport = TransportKind::Tcp;
    caller.calls = 200;
    caller.rate = 200.0;
    caller.hold = Duration::from_millis(200);
    caller.progress = false;
    let report = uac::run(&caller).expect("the caller runs");
    let callee_stats = callee.stop().expect("the callee stops");

    let mut reports = Vec::new();
    for (node, id) in nodes.iter_mut().zip([1, 2]) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(node.0.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        node.0.wait().expect("the node stops");
        reports.push(std::fs::read_to_string(dir.join(format!("node{id}.log"))).expect("log"));
    }
    let sum = |log: &str, key: &str| -> u64 {
        log.lines()
            .filter(|l| l.starts_with("shard "))
            .flat_map(|l| l.split([' ', ':']))
            .filter_map(|kv| kv.strip_prefix(key))
            .map(|n| n.parse::<u64>().expect("a count"))
            .sum()
    };
    let (through_1, sent_by_2) = (sum(&reports[0], "conn_in="), sum(&reports[1], "conn_out="));
    assert_eq!(
        (report.counts.ok, report.counts.failed, report.counts.timed_out),
        (200, 0, 0),
        "every call over TCP ended well\n{}\nnode 1:\n{}\nnode 2:\n{}",
        report.table(),
        reports[0],
        reports[1]
    );
    assert_eq!(callee_stats.byes.load(std::sync::atomic::Ordering::Relaxed), 200);
    assert!(sum(&reports[0], "fwd_out=") > 0, "node 1 forwarded node 2's calls");
    assert!(sent_by_2 > 0 && through_1 == sent_by_2, "node 2 answered through node 1 ({sent_by_2} / {through_1})");
    let _ = std::fs::remove_dir_all(&dir);
}
