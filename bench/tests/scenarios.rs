//! sipbench against its own UAS over real loopback sockets: every scenario and
//! transport, digest challenges, retransmissions on a lossy path, the ramp,
//! the bare relay, and the CSV, HdrHistogram log and JSON outputs.

use std::collections::HashSet;

use base64::Engine as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sipshard_bench::digest::Credentials;
use sipshard_bench::relay::{Relay, RelayConfig};
use sipshard_bench::transport::TransportKind;
use sipshard_bench::uac::{self, Scenario, UacConfig};
use sipshard_bench::uas::{Uas, UasConfig};

fn uas(auth: Option<&str>) -> Uas {
    let mut config = UasConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.threads = 2;
    config.progress = false;
    config.auth = auth.map(|a| a.parse().expect("credentials"));
    Uas::start(&config).expect("the UAS starts")
}

fn uac(target: SocketAddr, scenario: Scenario, transport: TransportKind, calls: u64) -> UacConfig {
    let mut config = UacConfig::new(target);
    config.scenario = scenario;
    config.transport = transport;
    config.calls = calls;
    config.rate = 400.0;
    config.threads = 2;
    config.progress = false;
    config
}

fn count(stat: &std::sync::atomic::AtomicU64) -> u64 {
    stat.load(Ordering::Relaxed)
}

#[test]
fn calls_complete_over_udp_and_tcp_with_every_measure() {
    for transport in [TransportKind::Udp, TransportKind::Tcp] {
        let callee = uas(None);
        let report = uac::run(&uac(callee.local, Scenario::Call, transport, 200)).expect("the run completes");
        let stats = callee.stop().expect("stops");
        let c = &report.counts;
        assert_eq!((c.attempted, c.ok, c.failed, c.timed_out), (200, 200, 0, 0), "{transport:?}");
        assert_eq!(c.retransmissions, 0, "{transport:?}: nothing lost on loopback");
        assert_eq!((count(&stats.invites), count(&stats.acks), count(&stats.byes)), (200, 200, 200), "{transport:?}");
        let expected_connections = if transport == TransportKind::Tcp { 2 } else { 0 };
        assert_eq!(count(&stats.connections), expected_connections, "one connection per generator thread");
        let m = &report.measures;
        assert_eq!((m.setup.len(), m.invite_180.len(), m.bye.len()), (200, 200, 200), "{transport:?}");
        assert_eq!(m.invite_100.len(), 0, "sipbench uas sends no 100 Trying");
        assert!(m.setup.value_at_quantile(0.5) >= m.invite_180.value_at_quantile(0.5), "the 200 follows the 180");
    }
}

#[test]
fn registrations_answer_the_digest_challenge() {
    for transport in [TransportKind::Udp, TransportKind::Tcp] {
        let registrar = uas(Some("alice:secret"));
        let mut config = uac(registrar.local, Scenario::Register, transport, 100);
        config.auth = Some(Credentials { user: "alice".into(), password: "secret".into() });
        let report = uac::run(&config).expect("the run completes");
        let stats = registrar.stop().expect("stops");
        assert_eq!((report.counts.ok, report.counts.failed), (100, 0), "{transport:?}: {:?}", report.counts);
        assert_eq!(report.measures.register.len(), 100);
        assert_eq!((count(&stats.challenges), count(&stats.registers)), (100, 100), "one challenge, one 200 each");
    }
}

#[test]
fn a_wrong_password_fails_every_registration_with_403() {
    let registrar = uas(Some("alice:secret"));
    let mut config = uac(registrar.local, Scenario::Register, TransportKind::Udp, 20);
    config.auth = Some(Credentials { user: "alice".into(), password: "guess".into() });
    let report = uac::run(&config).expect("the run completes");
    registrar.stop().expect("stops");
    assert_eq!(report.counts.ok, 0);
    assert_eq!(report.counts.failures_by_code.get(&403), Some(&20), "{:?}", report.counts);
}

#[test]
fn a_challenge_without_credentials_fails_with_401() {
    let registrar = uas(Some("alice:secret"));
    let report = uac::run(&uac(registrar.local, Scenario::Register, TransportKind::Udp, 10)).expect("completes");
    registrar.stop().expect("stops");
    assert_eq!(report.counts.failures_by_code.get(&401), Some(&10), "{:?}", report.counts);
}

#[test]
fn options_queries_are_answered() {
    let callee = uas(None);
    let report = uac::run(&uac(callee.local, Scenario::Options, TransportKind::Udp, 100)).expect("completes");
    let stats = callee.stop().expect("stops");
    assert_eq!((report.counts.ok, report.measures.options.len(), count(&stats.others)), (100, 100, 100));
}

/// A UDP relay in front of the UAS that drops the first INVITE of every call.
fn lossy_relay(callee: SocketAddr, stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let back = UdpSocket::bind("127.0.0.1:0").expect("bind");
    front.set_read_timeout(Some(Duration::from_millis(5))).expect("timeout");
    back.set_read_timeout(Some(Duration::from_millis(5))).expect("timeout");
    let address = front.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut caller = None;
        let mut buf = vec![0u8; 65_535];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = front.recv_from(&mut buf) {
                caller = Some(from);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let call_id = text.lines().find(|l| l.starts_with("Call-ID:")).unwrap_or_default().to_owned();
                if text.starts_with("INVITE ") && seen.insert(call_id) {
                    continue; // Lost.
                }
                back.send_to(&buf[..n], callee).expect("relay");
            }
            if let (Ok((n, _)), Some(caller)) = (back.recv_from(&mut buf), caller) {
                front.send_to(&buf[..n], caller).expect("relay back");
            }
        }
    });
    (address, handle)
}

/// `sipbench relay` on a free loopback port, requests to `callee`.
fn relay_to(callee: SocketAddr) -> Relay {
    let config =
        RelayConfig { listen: "127.0.0.1:0".parse().expect("addr"), next_hop: callee, duration: None, progress: false };
    Relay::start(&config).expect("the relay starts")
}

#[test]
fn the_relay_carries_every_message_of_a_call_both_ways() {
    let callee = uas(None);
    let relay = relay_to(callee.local);
    let report = uac::run(&uac(relay.local, Scenario::Call, TransportKind::Udp, 200)).expect("completes");
    let relayed = relay.stop().expect("stops");
    let stats = callee.stop().expect("stops");
    let c = &report.counts;
    assert_eq!((c.attempted, c.ok, c.failed, c.timed_out), (200, 200, 0, 0));
    assert_eq!((count(&stats.invites), count(&stats.acks), count(&stats.byes)), (200, 200, 200));
    // The ACK and BYE came through the relay (its Record-Route), and every answer went back by it.
    assert_eq!(count(&relayed.invites), 200);
    assert_eq!(count(&relayed.requests), 600, "INVITE, ACK and BYE of each call");
    assert_eq!(count(&relayed.responses), 600, "180, 200 and the BYE's 200 of each call");
    assert_eq!(count(&relayed.dropped), 0);
}

#[test]
fn the_relay_puts_its_record_route_after_the_request_line_even_behind_leading_crlfs() {
    let next_hop = UdpSocket::bind("127.0.0.1:0").expect("bind");
    next_hop.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let relay = relay_to(next_hop.local_addr().expect("addr"));
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let record_route = format!("Record-Route: <sip:{};lr>\r\n", relay.local);
    let head = "INVITE sip:b@127.0.0.1 SIP/2.0\r\n";
    let rest = "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKrr\r\nCall-ID: rr\r\nCSeq: 1 INVITE\r\n\r\n";
    let mut buf = [0u8; 2048];
    // RFC 3261 §7.5: CRLFs before the start line are allowed (and skipped by parsers).
    for leading in ["", "\r\n", "\r\n\r\n"] {
        sender.send_to(format!("{leading}{head}{rest}").as_bytes(), relay.local).expect("send");
        let (n, _) = next_hop.recv_from(&mut buf).expect("the relayed INVITE");
        assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("{leading}{head}{record_route}{rest}"));
    }
    relay.stop().expect("stops");
}

#[test]
fn the_relay_drops_what_it_cannot_route() {
    let callee = uas(None);
    let relay = relay_to(callee.local);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender.send_to(b"not SIP\r\n\r\n", relay.local).expect("send");
    sender.send_to(b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n", relay.local).expect("send");
    let started = std::time::Instant::now();
    while count(&relay.stats.dropped) < 2 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let relayed = relay.stop().expect("stops");
    callee.stop().expect("stops");
    assert_eq!(count(&relayed.dropped), 2, "not SIP, and a response without a Via");
    assert_eq!(count(&relayed.requests) + count(&relayed.responses), 0);
}

#[test]
fn a_lost_invite_is_retransmitted_on_timer_a_and_counted() {
    let callee = uas(None);
    let stop = Arc::new(AtomicBool::new(false));
    let (relay, relay_thread) = lossy_relay(callee.local, stop.clone());
    let mut config = uac(relay, Scenario::Call, TransportKind::Udp, 5);
    config.threads = 1;
    let report = uac::run(&config).expect("completes");
    stop.store(true, Ordering::Relaxed);
    relay_thread.join().expect("relay stops");
    let stats = callee.stop().expect("stops");
    assert_eq!((report.counts.ok, report.counts.retransmissions), (5, 5), "{:?}", report.counts);
    assert_eq!(count(&stats.invites), 5, "only the retransmissions reached the callee");
    // Latency counts from the first (lost) INVITE: at least T1.
    assert!(report.measures.setup.min() >= 500_000, "setup min {} µs", report.measures.setup.min());
}

#[test]
fn the_command_line_writes_json_csv_and_an_hdr_log_that_agree() {
    let callee = uas(None);
    let dir = std::env::temp_dir().join(format!("sipbench-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (json, csv, hlog) = (dir.join("s.json"), dir.join("s.csv"), dir.join("s.hlog"));
    let out = Command::new(env!("CARGO_BIN_EXE_sipbench"))
        .args(["uac", &callee.local.to_string(), "--rate", "100", "--rate-step", "100", "--step-seconds", "1"])
        .args(["--rate-max", "300", "--duration", "3", "--calls", "100000", "--threads", "2"])
        .args(["--json", json.to_str().expect("utf8")])
        .args(["--csv", csv.to_str().expect("utf8")])
        .args(["--hdr-log", hlog.to_str().expect("utf8")])
        .output()
        .expect("sipbench runs");
    callee.stop().expect("stops");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().filter(|l| l.contains("calls/s") && l.contains("setup p50")).count() >= 3, "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("INVITE->200") && stdout.contains("BYE->200"), "{stdout}");

    // The ramp: 100, 200, then 300 calls/s, one second each.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
    assert_eq!(summary["calls_attempted"], 600, "{summary}");
    assert_eq!(summary["calls_ok"], 600, "{summary}");
    for key in ["setup_ms", "bye_ms", "invite_180_ms"] {
        assert_eq!(summary[key]["count"], 600, "{key}: {summary}");
    }

    // The CSV: SIPp's columns; the cumulative counts of the last row match the summary.
    let text = std::fs::read_to_string(&csv).expect("csv");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(';').collect()).collect();
    let column = |name: &str| rows[0].iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}"));
    let last = rows.last().expect("rows");
    assert_eq!(last[column("SuccessfulCall(C)")], "600");
    assert_eq!(last[column("FailedCall(C)")], "0");
    assert_eq!(last[column("TotalCallCreated")], "600");
    let targets: Vec<&str> = rows[1..4].iter().map(|r| r[column("TargetRate")]).collect();
    assert_eq!(targets, ["100.000", "200.000", "300.000"]);
    let period: u64 = rows[1..].iter().map(|r| r[column("SuccessfulCall(P)")].parse::<u64>().expect("count")).sum();
    assert_eq!(period, 600, "the periods add up to the total");

    // The HdrHistogram log: one `setup` histogram per second, counts adding up to every call.
    let log = std::fs::read(&hlog).expect("hlog");
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    let mut setups = 0;
    for entry in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&log) {
        if let Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(h)) = entry {
            if h.tag().map(|t| t.as_str()) == Some("setup") {
                let bytes = base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).expect("base64");
                let histogram: hdrhistogram::Histogram<u64> =
                    deserializer.deserialize(&mut bytes.as_slice()).expect("a V2 histogram");
                setups += histogram.len();
            }
        }
    }
    assert_eq!(setups, 600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failures_beyond_the_allowed_ratio_exit_non_zero() {
    let registrar = uas(Some("alice:secret"));
    let out = Command::new(env!("CARGO_BIN_EXE_sipbench"))
        .args(["uac", &registrar.local.to_string(), "--scenario", "register", "--auth", "alice:wrong"])
        .args(["--calls", "10", "--rate", "100", "--quiet"])
        .output()
        .expect("sipbench runs");
    registrar.stop().expect("stops");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("10 of 10 calls failed or timed out"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed with 403: 10"));
}

#[test]
fn byes_go_to_the_bye_target_when_one_is_given() {
    let (first, second) = (uas(None), uas(None));
    let mut config = uac(first.local, Scenario::Call, TransportKind::Udp, 50);
    config.bye_target = Some(second.local);
    config.hold = Duration::from_millis(20);
    let report = uac::run(&config).expect("completes");
    let (first, second) = (first.stop().expect("stops"), second.stop().expect("stops"));
    assert_eq!((report.counts.ok, report.measures.bye.len()), (50, 50), "{:?}", report.counts);
    assert_eq!((count(&first.invites), count(&first.acks), count(&first.byes)), (50, 50, 0));
    assert_eq!((count(&second.invites), count(&second.byes)), (0, 50), "every BYE went to the moved address");
    let mut tcp = uac(second_free(), Scenario::Call, TransportKind::Tcp, 1);
    tcp.bye_target = Some(second_free());
    assert!(tcp.validate().expect_err("refused").to_string().contains("--bye-target needs --transport udp"));
}

fn second_free() -> SocketAddr {
    "127.0.0.1:9".parse().expect("addr")
}
