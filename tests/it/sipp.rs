//! sipshard between two real SIPp instances over loopback UDP: `sipp -sn uac` →
//! sipshard (proxy, 2 shards) → `sipp -sn uas`, asserting on SIPp's own final
//! counters and on sipshard's per-shard counters (every call's transactions
//! were created on the shard that owns its stripe).
//!
//! Needs `sipp` (Debian package `sip-tester`, installed by .ci/run). Under
//! CI=true a missing sipp fails the test; elsewhere it is skipped with a note.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Running, free_port, last_stats, sipp_uas, stat, tool, wait_until_bound, wait_until_healthy};

use sipshard_parser::stripe_of;
use sipshard_shards::{DEFAULT_STRIPES, NodeId, StripeId, StripeMap};

/// Per-shard counters from sipshard's exit report (`shard N (core C): key=value ...`).
fn shard_counters(report: &str) -> Vec<Vec<(String, u64)>> {
    report
        .lines()
        .filter(|l| l.starts_with("shard "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0)))
                .collect()
        })
        .collect()
}

fn counter(shard: &[(String, u64)], name: &str) -> u64 {
    shard.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no counter {name}"))
}

/// What one run of `sipp -sn uac` → sipshard → `sipp -sn uas` gives.
struct Run {
    /// SIPp uac's last statistics row.
    stats: Vec<(String, String)>,
    /// sipshard's per-shard counters.
    shards: Vec<Vec<(String, u64)>>,
    /// The whole report, for failure messages.
    report: String,
    /// How many of the calls each shard owns (from SIPp's Call-IDs and the stripe map).
    owned: [u64; 2],
}

/// `calls` calls at `rate`/s through sipshard (proxy, 2 shards), with `config` as its config file;
/// over TCP (`sipp -t t1`, sipshard listening on both transports) when `tcp`, else UDP.
fn run_calls(sipp: &Path, calls: u32, rate: u32, config: &str, tcp: bool) -> Run {
    let (transport, sipp_transport, route_param) =
        if tcp { ("both", "t1", ";transport=tcp") } else { ("udp", "u1", "") };
    let (listen, uas_port, uac_port) = (free_port(), free_port(), free_port());
    let server: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    let dir = std::env::temp_dir().join(format!("sipshard-sipp-{}-{listen}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_file = dir.join("sipshard.toml");
    std::fs::write(&config_file, config).expect("config");

    let mut sipshard = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args(["run", "--config", config_file.to_str().expect("utf8 path")])
            .args(["--listen", &server.to_string(), "--shards", "2"])
            .args(["--route", &format!("sip:127.0.0.1:{uas_port}{route_param}"), "--transport", transport])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipshard starts"),
    );
    wait_until_healthy(server);
    let _uas = sipp_uas(sipp, uas_port, sipp_transport, &dir);
    wait_until_bound(uas_port, tcp);
    let stats_file = dir.join("uac.csv");
    let mut uac = Command::new(sipp)
        .args(["-sn", "uac", "-t", sipp_transport, &server.to_string(), "-i", "127.0.0.1", "-p", &uac_port.to_string()])
        .args(["-r", &rate.to_string(), "-m", &calls.to_string(), "-nostdin", "-timeout", "60", "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-stf", stats_file.to_str().expect("utf8 path"), "-trace_err"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp uac starts");
    let uac_pid = uac.id();
    let status = uac.wait().expect("sipp uac ends");
    let stats = last_stats(&stats_file);
    assert!(
        status.success() || stat(&stats, "FailedCall(C)") > 0,
        "sipp uac exit status {status}; its error log: {}",
        sipp_errors(&dir)
    );

    // A graceful stop: the report comes on stdout.
    let killed = Command::new("kill").args(["-TERM", &sipshard.0.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let mut report = String::new();
    sipshard.0.stdout.take().expect("stdout").read_to_string(&mut report).expect("report");
    let exit = sipshard.0.wait().expect("sipshard exits");
    let mut log = String::new();
    if let Some(stderr) = sipshard.0.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    assert!(exit.success(), "sipshard exit {exit}: {log}");
    let shards = shard_counters(&report);
    assert_eq!(shards.len(), 2, "{report}");

    // SIPp's Call-IDs are `N-PID@127.0.0.1`: compute each call's owner as the server does.
    let map = StripeMap::balanced(1, DEFAULT_STRIPES, &[NodeId(0)], 2, 1);
    let mut owned = [0u64; 2];
    for n in 1..=calls {
        let call_id = format!("{n}-{uac_pid}@127.0.0.1");
        let owner = map.owner(StripeId(stripe_of(call_id.as_bytes(), DEFAULT_STRIPES)));
        owned[usize::from(owner.shard.0)] += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Run { stats, shards, report, owned }
}

impl Run {
    /// SIPp's own final counters: every call succeeded.
    fn assert_all_calls_ok(&self, calls: u64) {
        assert_eq!(stat(&self.stats, "TotalCallCreated"), calls, "{:?}", self.stats);
        assert_eq!(stat(&self.stats, "SuccessfulCall(C)"), calls, "{:?}", self.stats);
        assert_eq!(stat(&self.stats, "FailedCall(C)"), 0, "{:?}", self.stats);
    }

    /// Each call's transactions were created on the shard owning its stripe, nothing failed.
    fn assert_owners_did_the_work(&self) {
        let report = &self.report;
        for (i, shard) in self.shards.iter().enumerate() {
            // INVITE and BYE each make one server transaction on the owner, plus the health checks.
            let created = counter(shard, "transactions");
            let owned = self.owned[i];
            assert!(
                (2 * owned..=2 * owned + 50).contains(&created),
                "shard {i} created {created} transactions for {owned} calls it owns: {report}"
            );
            assert_eq!(counter(shard, "failures"), 0, "{report}");
            assert_eq!(counter(shard, "dropped_malformed"), 0, "{report}");
        }
    }

    fn total(&self, name: &str) -> u64 {
        self.shards.iter().map(|s| counter(s, name)).sum()
    }
}

#[test]
fn sipp_calls_through_the_proxy_over_udp_with_two_shards() {
    let Some(sipp) = tool("sipp") else { return };
    let run = run_calls(&sipp, 2000, 200, "", false);
    run.assert_all_calls_ok(2000);
    run.assert_owners_did_the_work();
    let local = run.total("local");
    // Six messages per call reach the proxy (INVITE, ACK, BYE; 180, 200, 200), each handled at
    // least once (more only when SIPp retransmits on a loaded machine).
    assert!(local >= 12_000, "{}", run.report);
    eprintln!(
        "sipp: 2000/2000 calls; {local} messages handled, {} moved between shards",
        run.total("forwarded_to_shard")
    );
}

#[test]
fn sipp_calls_complete_when_every_datagram_reaches_the_wrong_shard_first() {
    let Some(sipp) = tool("sipp") else { return };
    let run = run_calls(&sipp, 1000, 200, "[server]\nsteer_to_wrong_shard = true\n", false);
    run.assert_all_calls_ok(1000);
    run.assert_owners_did_the_work();
    let (local, forwarded) = (run.total("local"), run.total("forwarded_to_shard"));
    // Every call message (6 per call) was first handled by a shard that does not own it and moved on.
    assert!(local >= 6_000, "{}", run.report);
    assert!(forwarded >= 6_000, "{forwarded} of {local} messages moved: {}", run.report);
}

#[test]
fn sipp_calls_through_the_proxy_over_tcp_with_two_shards() {
    let Some(sipp) = tool("sipp") else { return };
    let run = run_calls(&sipp, 2000, 200, "", true);
    run.assert_all_calls_ok(2000);
    run.assert_owners_did_the_work();
    // One connection from the caller, accepted by one shard; each shard opened its own to the callee.
    assert_eq!(run.total("tcp_accepted"), 1, "{}", run.report);
    assert_eq!(run.total("tcp_connected"), 2, "{}", run.report);
    assert_eq!(run.total("tcp_framing_errors"), 0, "{}", run.report);
    assert_eq!(run.total("send_errors"), 0, "{}", run.report);
    // No retransmissions over TCP: every request arrived once.
    assert_eq!(run.total("retransmissions_received"), 0, "{}", run.report);
}

/// REGISTER over UDP from a test socket; returns the response.
fn register(server: SocketAddr, user: &str, contact_port: u16, expires: u32) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let local = socket.local_addr().expect("addr");
    let request = format!(
        "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKreg{expires}\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@{server}>;tag=r1\r\nTo: <sip:{user}@{server}>\r\nCall-ID: reg-{user}-{local}\r\nCSeq: {} REGISTER\r\n\
Contact: <sip:{user}@127.0.0.1:{contact_port}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n",
        1 + expires
    );
    socket.send_to(request.as_bytes(), server).expect("send");
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("the registrar answers");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The embedded default (registrar + proxy, no route): a user registers, SIPp calls it.
/// With 2 shards, the AoR's owner and most calls' owners differ: the location reaches both.
#[test]
fn sipp_calls_a_registered_user_on_the_embedded_default() {
    let Some(sipp) = tool("sipp") else { return };
    let (listen, uas_port, uac_port) = (free_port(), free_port(), free_port());
    let server: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    let dir = std::env::temp_dir().join(format!("sipshard-reg-{}-{listen}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _sipshard = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args(["run", "--listen", &server.to_string(), "--shards", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipshard starts"),
    );
    wait_until_healthy(server);
    let _uas = sipp_uas(&sipp, uas_port, "u1", &dir);
    wait_until_bound(uas_port, false);
    let brief = register(server, "alice", uas_port, 5);
    assert!(brief.starts_with("SIP/2.0 423 Interval Too Brief\r\n"), "{brief}");
    assert!(brief.contains("\r\nMin-Expires: 60\r\n"), "{brief}");
    let ok = register(server, "alice", uas_port, 600);
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert!(ok.contains(&format!("\r\nContact: <sip:alice@127.0.0.1:{uas_port}>;expires=600\r\n")), "{ok}");

    let stats_file = dir.join("uac.csv");
    let status = Command::new(&sipp)
        .args(["-sn", "uac", "-s", "alice", &server.to_string(), "-i", "127.0.0.1", "-p", &uac_port.to_string()])
        .args(["-r", "100", "-m", "200", "-nostdin", "-timeout", "30", "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-stf", stats_file.to_str().expect("utf8 path")])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp uac runs");
    let stats = last_stats(&stats_file);
    assert_eq!(stat(&stats, "SuccessfulCall(C)"), 200, "{stats:?}");
    assert_eq!(stat(&stats, "FailedCall(C)"), 0, "{stats:?}");
    assert!(status.success(), "sipp uac exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sipp_calls_through_the_b2bua_over_udp_with_two_shards() {
    let Some(sipp) = tool("sipp") else { return };
    let run = run_calls(&sipp, 2000, 200, "[server]\nrole = \"b2bua\"\n", false);
    run.assert_all_calls_ok(2000);
    run.assert_owners_did_the_work();
    // Two client transactions per call (the B leg's INVITE and BYE), on the owner.
    assert_eq!(run.total("client_transactions"), 4000, "{}", run.report);
    assert_eq!(run.total("acks_relayed"), 2000, "{}", run.report);
}

#[test]
fn sipp_calls_through_the_b2bua_over_tcp_with_two_shards() {
    let Some(sipp) = tool("sipp") else { return };
    let run = run_calls(&sipp, 2000, 200, "[server]\nrole = \"b2bua\"\n", true);
    run.assert_all_calls_ok(2000);
    run.assert_owners_did_the_work();
    assert_eq!(run.total("tcp_framing_errors"), 0, "{}", run.report);
    assert_eq!(run.total("retransmissions_received"), 0, "{}", run.report);
}

/// What SIPp wrote to its `-trace_err` files in `dir` (why it exited, when it did).
fn sipp_errors(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else { return String::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("_errors.log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<Vec<_>>()
        .join("\n")
}
