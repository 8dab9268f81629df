//! The stateful proxy role on one shard, sans-IO with a fake clock: a whole call
//! relayed between a caller and a callee (100 Trying, 180, 200, ACK, BYE), CANCEL,
//! timeouts, retransmissions, and every error reply the proxy generates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipshard_shards::ShardId;
use sipshard_shards::proxy::{Proxy, ProxyConfig, RouteMatch, RouteTarget, StaticRoute};
use sipshard_shards::shard::{Input, Output, Peer, Shard, ShardConfig, ShardPorts, Transport};

const CALLER: &str = "127.0.0.1:5061";
const CALLEE: &str = "127.0.0.1:5090";

pub(crate) fn udp(addr: &str) -> Peer {
    Peer { addr: addr.parse().expect("addr"), transport: Transport::Udp }
}

struct Rig {
    shard: Shard<Proxy>,
    start: Instant,
    now: Instant,
}

/// The proxy under test: record-routing, a route for +44 numbers, the callee by default.
fn proxy_config() -> ProxyConfig {
    ProxyConfig {
        routes: vec![StaticRoute {
            matches: RouteMatch::UserPrefix("+44".into()),
            to: RouteTarget::parse("sip:127.0.0.1:5091").expect("route"),
        }],
        default_route: Some(RouteTarget::parse(&format!("sip:{CALLEE}")).expect("route")),
        record_route: true,
        b2bua: false,
        aliases: Vec::new(),
    }
}

impl Rig {
    fn new() -> Rig {
        Rig::with_capacity(64)
    }

    /// A proxy for at most `max_calls` calls at once.
    fn with_capacity(max_calls: usize) -> Rig {
        let start = Instant::now();
        let shard = Shard::new(ShardConfig::standalone(max_calls), Proxy::new(proxy_config()), start);
        Rig { shard, start, now: start }
    }

    /// Hands the shard one datagram and returns what it transmits.
    fn send(&mut self, from: &str, bytes: &[u8]) -> Vec<(SocketAddr, String)> {
        self.shard.handle(self.now, Input::Datagram { peer: udp(from), bytes });
        self.drain()
    }

    fn advance(&mut self, by: Duration) -> Vec<(SocketAddr, String)> {
        self.now += by;
        self.shard.handle(self.now, Input::Timeout);
        self.drain()
    }

    fn drain(&mut self) -> Vec<(SocketAddr, String)> {
        let mut out = Vec::new();
        while let Some(output) = self.shard.poll_output() {
            match output {
                Output::Transmit { peer, bytes } => {
                    out.push((peer.addr, String::from_utf8(bytes.to_vec()).expect("utf8")))
                }
                // One shard: its own location cache is updated already.
                Output::Location(_) => {}
                other => panic!("unexpected output {other:?}"),
            }
        }
        out
    }

    /// Waits out every transaction timer.
    fn settle(&mut self) {
        let _ = self.advance(Duration::from_secs(40));
        assert_eq!(self.shard.transactions(), 0, "every transaction ended");
        if self.shard.calls() == 0 {
            assert_eq!(self.shard.armed_timers(), 0, "no timer left once every call is gone");
        }
    }
}

fn invite(call_id: &str, branch: &str, extra: &str) -> String {
    format!(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{branch}\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag\r\nTo: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@{CALLER}>\r\nMax-Forwards: 70\r\n{extra}\
Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    )
}

/// The callee's response to a request it received (all Vias copied, a To tag added).
fn answer(request: &str, code: u16, reason: &str, to_tag: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in request.split("\r\n").take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        match name {
            "Via" | "From" | "Call-ID" | "CSeq" | "Record-Route" => out.push_str(&format!("{line}\r\n")),
            "To" if !line.contains("tag=") => out.push_str(&format!("{line};tag={to_tag}\r\n")),
            "To" => out.push_str(&format!("{line}\r\n")),
            _ => {}
        }
    }
    out.push_str(&format!("Contact: <sip:service@{CALLEE}>\r\nContent-Length: 0\r\n\r\n"));
    out
}

fn in_dialog(method: &str, call_id: &str, branch: &str, cseq: u32, route: bool) -> String {
    let route = if route { "Route: <sip:127.0.0.1:5060;lr>\r\n" } else { "" };
    format!(
        "{method} sip:service@{CALLEE} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{branch}\r\n{route}\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag\r\nTo: service <sip:service@127.0.0.1:5060>;tag=callee-tag\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

pub(crate) fn status(message: &str) -> u16 {
    message.strip_prefix("SIP/2.0 ").and_then(|s| s[..3].parse().ok()).unwrap_or(0)
}

fn to(addr: &str) -> SocketAddr {
    addr.parse().expect("addr")
}

#[test]
fn a_call_is_relayed_end_to_end_with_record_route() {
    let mut rig = Rig::new();
    let out = rig.send(CALLER, invite("call-1", "inv1", "").as_bytes());
    // The relayed INVITE leaves first (the call waits on it), then the 100 Trying.
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!((out[1].0, status(&out[1].1)), (to(CALLER), 100));
    let (dest, relayed) = &out[0];
    assert_eq!(*dest, to(CALLEE));
    assert!(
        relayed
            .starts_with("INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    );
    assert!(relayed.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"), "{relayed}");
    assert!(relayed.contains("Max-Forwards: 69\r\n"), "{relayed}");
    assert!(relayed.ends_with("v=0\n"), "the body travels: {relayed}");

    let ringing = answer(relayed, 180, "Ringing", "callee-tag");
    let out = rig.send(CALLEE, ringing.as_bytes());
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, status(&out[0].1)), (to(CALLER), 180));
    assert!(!out[0].1.contains("127.0.0.1:5060;branch"), "our Via is removed: {}", out[0].1);

    let ok = answer(relayed, 200, "OK", "callee-tag");
    let out = rig.send(CALLEE, ok.as_bytes());
    assert_eq!((out[0].0, status(&out[0].1)), (to(CALLER), 200));
    // A retransmitted 2xx still goes up (RFC 6026).
    let out = rig.send(CALLEE, ok.as_bytes());
    assert_eq!((out[0].0, status(&out[0].1)), (to(CALLER), 200));

    let out = rig.send(CALLER, in_dialog("ACK", "call-1", "ack1", 1, true).as_bytes());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, to(CALLEE));
    assert!(out[0].1.starts_with("ACK sip:service@127.0.0.1:5090 SIP/2.0\r\n"));
    assert!(!out[0].1.contains("Route:"), "our Route entry is consumed: {}", out[0].1);

    rig.settle();
    assert_eq!(rig.shard.calls(), 1, "the confirmed dialog outlives its transactions");

    let bye = in_dialog("BYE", "call-1", "bye1", 2, true);
    let out = rig.send(CALLER, bye.as_bytes());
    assert_eq!(out[0].0, to(CALLEE));
    let ok = answer(&out[0].1, 200, "OK", "callee-tag");
    let out = rig.send(CALLEE, ok.as_bytes());
    assert_eq!((out[0].0, status(&out[0].1)), (to(CALLER), 200));
    rig.settle();
    assert_eq!(rig.shard.calls(), 0, "the call ended: nothing is kept");
    let stats = rig.shard.stats();
    assert_eq!(stats.acks_relayed, 1);
    assert_eq!(stats.client_transactions_created, 2);
    assert_eq!(stats.client_transactions_ended, 2);
}

/// With the shards' own ports (`server.shard_ports`), a UDP relay names the shard's port in its
/// Via and Record-Route; a Route naming any shard's port is this server's (consumed, not
/// followed); a caller over TCP gets the shared port, where TCP is listened on.
#[test]
fn with_shard_ports_the_relay_names_the_shards_own_port() {
    let mut rig = Rig::new();
    let ports = ShardPorts { first: 6000, count: 2 };
    let config = ShardConfig { shard_ports: Some(ports), ..ShardConfig::standalone(64) };
    rig.shard = Shard::new(config, Proxy::new(proxy_config()), rig.start);
    let out = rig.send(CALLER, invite("own-port", "inv9", "").as_bytes());
    let relayed = &out[0].1;
    assert!(relayed.contains("\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK"), "{relayed}");
    assert!(relayed.contains("Record-Route: <sip:127.0.0.1:6000;lr>\r\n"), "{relayed}");
    let _ = rig.send(CALLEE, answer(relayed, 200, "OK", "callee-tag").as_bytes());
    // An ACK routed through shard 1's port (the record-route of a call shard 1 relayed).
    let ack = in_dialog("ACK", "own-port", "ack9", 1, false)
        .replace("Max-Forwards", "Route: <sip:127.0.0.1:6001;lr>\r\nMax-Forwards");
    let out = rig.send(CALLER, ack.as_bytes());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, to(CALLEE), "the Route names us: it is consumed, the ACK goes on");
    assert!(!out[0].1.contains("Route:"), "{}", out[0].1);
    // A port past the last shard's is not ours.
    assert!(!ports.contains(6002) && ports.port_of(ShardId(2)).is_none());

    let tcp = Peer { addr: to(CALLER), transport: Transport::Tcp };
    let over_tcp = invite("own-port-tcp", "inv10", "").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    rig.shard.handle(rig.now, Input::Datagram { peer: tcp, bytes: over_tcp.as_bytes() });
    let out = rig.drain();
    let relayed = &out.iter().find(|(_, m)| m.starts_with("INVITE ")).expect("relayed").1;
    assert!(relayed.contains("\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch="), "to the UDP callee: {relayed}");
    assert!(relayed.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"), "the TCP caller's way back: {relayed}");
}

#[test]
fn an_error_response_is_acked_hop_by_hop_and_relayed() {
    let mut rig = Rig::new();
    let out = rig.send(CALLER, invite("call-busy", "inv2", "").as_bytes());
    let relayed = out[0].1.clone();
    let out = rig.send(CALLEE, answer(&relayed, 486, "Busy Here", "b").as_bytes());
    let seen: Vec<(SocketAddr, String)> =
        out.iter().map(|(a, m)| (*a, m.lines().next().unwrap_or_default().to_owned())).collect();
    assert_eq!(
        seen,
        vec![
            (to(CALLER), "SIP/2.0 486 Busy Here".to_owned()),
            (to(CALLEE), "ACK sip:service@127.0.0.1:5060 SIP/2.0".to_owned()),
        ],
        "the response goes up first (the caller waits on it), then the hop-by-hop ACK"
    );
    // The caller's ACK ends the server transaction here; it is not relayed (§16.7 step 5... the ACK of a non-2xx is hop by hop).
    let ack = in_dialog("ACK", "call-busy", "inv2", 1, false).replace(";tag=callee-tag", ";tag=b");
    assert!(rig.send(CALLER, ack.as_bytes()).is_empty());
    rig.settle();
    assert_eq!(rig.shard.calls(), 0);
}

#[test]
fn cancel_is_answered_and_sent_on_then_487_goes_up() {
    let mut rig = Rig::new();
    let out = rig.send(CALLER, invite("call-cancel", "inv3", "").as_bytes());
    let relayed = out[0].1.clone();
    let _ = rig.send(CALLEE, answer(&relayed, 180, "Ringing", "c").as_bytes());
    let cancel = invite("call-cancel", "inv3", "")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let out = rig.send(CALLER, cancel.as_bytes());
    assert_eq!(out.len(), 2, "{out:?}");
    let (ok, downstream): (Vec<_>, Vec<_>) = out.into_iter().partition(|(a, _)| *a == to(CALLER));
    assert_eq!(status(&ok[0].1), 200);
    assert!(downstream[0].1.starts_with("CANCEL sip:service@127.0.0.1:5060 SIP/2.0\r\n"));
    let branch =
        |m: &str| m.split("branch=").nth(1).and_then(|s| s.split(['\r', ';']).next()).unwrap_or_default().to_owned();
    assert_eq!(branch(&downstream[0].1), branch(&relayed), "the CANCEL carries the INVITE's branch");
    assert!(
        rig.send(CALLEE, answer(&downstream[0].1, 200, "OK", "c").as_bytes()).is_empty(),
        "the CANCEL's 200 stops here"
    );
    let out = rig.send(CALLEE, answer(&relayed, 487, "Request Terminated", "c").as_bytes());
    assert!(out.iter().any(|(a, m)| *a == to(CALLER) && status(m) == 487), "{out:?}");
    rig.settle();
    assert_eq!(rig.shard.calls(), 0);
}

#[test]
fn a_silent_callee_turns_into_408_and_retransmissions_follow_timer_a() {
    let mut rig = Rig::new();
    let out = rig.send(CALLER, invite("call-silent", "inv4", "").as_bytes());
    assert_eq!(out.len(), 2);
    // Timer A: 500 ms, then 1 s, 2 s ...
    let resent = rig.advance(Duration::from_millis(500));
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].0, to(CALLEE));
    assert!(rig.advance(Duration::from_millis(900)).is_empty());
    assert_eq!(rig.advance(Duration::from_millis(100)).len(), 1);
    // Timer B at 64*T1: 408 up.
    let mut timeout = Vec::new();
    while rig.now < rig.start + Duration::from_secs(33) {
        timeout.extend(rig.advance(Duration::from_millis(500)));
    }
    assert!(timeout.iter().any(|(a, m)| *a == to(CALLER) && status(m) == 408), "{timeout:?}");
    let response = timeout.iter().find(|(_, m)| status(m) == 408).map(|(_, m)| m.clone()).unwrap_or_default();
    assert!(!response.contains("127.0.0.1:5060;branch"), "our Via is not in the 408: {response}");
    assert!(response.contains(&format!("Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv4")), "{response}");
    let ack = in_dialog("ACK", "call-silent", "inv4", 1, false);
    let _ = rig.send(CALLER, ack.as_bytes());
    rig.settle();
    assert_eq!(rig.shard.calls(), 0);
    assert_eq!(rig.shard.tu().stats().relayed, 1);
}

#[test]
fn timer_c_cancels_a_callee_that_rings_forever() {
    let mut rig = Rig::new();
    let out = rig.send(CALLER, invite("call-ring", "inv9", "").as_bytes());
    let relayed = out[0].1.clone();
    let _ = rig.send(CALLEE, answer(&relayed, 180, "Ringing", "r").as_bytes());
    let mut seen = Vec::new();
    while rig.now < rig.start + Duration::from_secs(182) {
        seen.extend(rig.advance(Duration::from_secs(1)));
    }
    assert!(seen.iter().any(|(a, m)| *a == to(CALLER) && status(m) == 408), "{seen:?}");
    let (dest, cancel) = seen.iter().find(|(_, m)| m.starts_with("CANCEL ")).expect("the branch is cancelled (§16.8)");
    assert_eq!(*dest, to(CALLEE));
    let _ = rig.send(CALLEE, answer(cancel, 200, "OK", "r").as_bytes());
    let _ = rig.send(CALLEE, answer(&relayed, 487, "Request Terminated", "r").as_bytes());
    let _ = rig.send(CALLER, in_dialog("ACK", "call-ring", "inv9", 1, false).replace("callee-tag", "x").as_bytes());
    rig.settle();
    assert_eq!(rig.shard.calls(), 0);
}

#[test]
fn a_retransmitted_invite_gets_the_latest_response_and_is_not_relayed_twice() {
    let mut rig = Rig::new();
    let request = invite("call-rtx", "inv5", "");
    let _ = rig.send(CALLER, request.as_bytes());
    let again = rig.send(CALLER, request.as_bytes());
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, status(&again[0].1)), (to(CALLER), 100));
    assert_eq!(rig.shard.stats().client_transactions_created, 1);
}

#[test]
fn static_routes_pick_the_next_hop_by_user_prefix() {
    let mut rig = Rig::new();
    let request =
        invite("call-uk", "inv6", "").replace("sip:service@127.0.0.1:5060 SIP", "sip:+442071234567@127.0.0.1:5060 SIP");
    let out = rig.send(CALLER, request.as_bytes());
    assert_eq!(out[0].0, to("127.0.0.1:5091"));
}

#[test]
fn options_to_the_server_itself_is_a_health_check() {
    let mut rig = Rig::new();
    let options = invite("health", "opt1", "")
        .replace("INVITE sip:service@127.0.0.1:5060", "OPTIONS sip:127.0.0.1:5060")
        .replace("1 INVITE", "1 OPTIONS");
    let out = rig.send(CALLER, options.as_bytes());
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 200);
    assert!(out[0].1.contains("\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS"), "{}", out[0].1);
    assert!(out[0].1.contains("\r\nSupported: \r\n"), "{}", out[0].1);
    // OPTIONS for a user is routed like any request.
    let routed = invite("opt-user", "opt2", "").replace("INVITE sip:", "OPTIONS sip:").replace("1 INVITE", "1 OPTIONS");
    let out = rig.send(CALLER, routed.as_bytes());
    assert_eq!(out[0].0, to(CALLEE));
}

/// Each bad request gets the reply the issue names.
#[test]
fn every_error_reply_has_a_request_that_provokes_it() {
    let cases: Vec<(String, u16, &str)> = vec![
        (invite("e1", "e1", "").replace("Max-Forwards: 70", "Max-Forwards: 0"), 483, "Too Many Hops"),
        (invite("e2", "e2", "Proxy-Require: foo, bar\r\n"), 420, "Bad Extension"),
        (invite("e3", "e3", "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKlooped\r\n"), 482, "Loop Detected"),
        (in_dialog("BYE", "e4", "e4", 2, true), 481, "Call/Transaction Does Not Exist"),
        (
            invite("e5", "e5", "").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            400,
            "Bad Request (CSeq method does not match request method)",
        ),
        (invite("e6", "e6", "").replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia"), 505, "unsupported version SIP/3.0"),
        (
            invite("e7", "e7", "").replace("INVITE sip:service@127.0.0.1:5060", "INVITE mailto:service@example.com"),
            416,
            "unsupported URI scheme",
        ),
        (
            invite("e8", "e8", "")
                .replace("INVITE sip:", "REGISTER sip:")
                .replace("sip:service@127.0.0.1:5060 SIP", "sip:127.0.0.1:5060 SIP")
                .replace("1 INVITE", "1 REGISTER"),
            501,
            "Not Implemented",
        ),
        (invite("e9", "e9", "").replace("sip:service@127.0.0.1:5060 SIP", "sip:bob@example.com SIP"), 200, ""),
    ];
    for (request, code, reason) in cases {
        let mut rig = Rig::new();
        if code == 200 {
            // A domain with no static route goes to the default route.
            let out = rig.send(CALLER, request.as_bytes());
            assert_eq!(out[0].0, to(CALLEE));
            continue;
        }
        let out = rig.send(CALLER, request.as_bytes());
        assert_eq!(out.len(), 1, "{request}: {out:?}");
        let first = out[0].1.lines().next().unwrap_or_default().to_owned();
        assert_eq!(first, format!("SIP/2.0 {code} {reason}"), "{request}");
        if code == 420 {
            assert!(out[0].1.contains("\r\nUnsupported: foo, bar\r\n"), "{}", out[0].1);
        }
    }
    let mut rig = Rig::new();
    rig.shard.tu_mut();
    let no_route = Shard::new(ShardConfig::standalone(4), Proxy::new(ProxyConfig::default()), rig.start);
    rig.shard = no_route;
    let out = rig.send(CALLER, invite("e10", "e10", "").as_bytes());
    assert_eq!(out[0].1.lines().next(), Some("SIP/2.0 404 Not Found"));
}

#[test]
fn a_full_table_answers_503_with_retry_after() {
    // One call ringing is the capacity (a call already answered would not count: see below).
    let mut rig = Rig::with_capacity(1);
    let _ = rig.send(CALLER, invite("full-1", "f1", "").as_bytes());
    let out = rig.send(CALLER, invite("full-2", "f2", "").as_bytes());
    assert_eq!(out[0].1.lines().next(), Some("SIP/2.0 503 Service Unavailable"));
    assert!(out[0].1.contains("\r\nRetry-After: 5\r\n"));
}

/// A whole call through a proxy of `max_calls`: INVITE, 200, ACK, BYE, 200, with no time
/// passing (its transactions linger for timers J, K and L). Returns the caller's final answers.
fn call_through(rig: &mut Rig, call_id: &str) -> Vec<u16> {
    let out = rig.send(CALLER, invite(call_id, &format!("{call_id}i"), "").as_bytes());
    let Some((_, relayed)) = out.iter().find(|(to_addr, _)| *to_addr == to(CALLEE)) else {
        return out.iter().map(|(_, m)| status(m)).collect();
    };
    let relayed = relayed.clone();
    let mut finals: Vec<u16> =
        rig.send(CALLEE, answer(&relayed, 200, "OK", "callee-tag").as_bytes()).iter().map(|(_, m)| status(m)).collect();
    let _ = rig.send(CALLER, in_dialog("ACK", call_id, &format!("{call_id}a"), 1, true).as_bytes());
    let out = rig.send(CALLER, in_dialog("BYE", call_id, &format!("{call_id}b"), 2, true).as_bytes());
    let bye = out.iter().find(|(to_addr, _)| *to_addr == to(CALLEE)).map(|(_, m)| m.clone()).expect("BYE relayed");
    finals.extend(rig.send(CALLEE, answer(&bye, 200, "OK", "callee-tag").as_bytes()).iter().map(|(_, m)| status(m)));
    finals
}

#[test]
fn ended_calls_waiting_out_their_timers_leave_room_for_new_calls() {
    // A proxy for 4 calls at once takes 12 calls one after another within a second: each
    // call's record lingers 32 s (timers J and L) after its BYE, and is not a call then.
    let mut rig = Rig::with_capacity(4);
    for i in 0..12 {
        assert_eq!(call_through(&mut rig, &format!("linger-{i}")), vec![200, 200], "call {i}");
    }
    assert_eq!(rig.shard.calls(), 12, "every ended call's record is still absorbing retransmissions");
    assert_eq!(rig.shard.stats().refused_full, 0);
    // Four calls up at once are the capacity; ended ones never were in the way.
    for i in 0..4 {
        let out = rig.send(CALLER, invite(&format!("up-{i}"), &format!("up{i}"), "").as_bytes());
        assert_eq!(status(&out[out.len() - 1].1), 100, "call {i}");
    }
    let out = rig.send(CALLER, invite("up-4", "up4", "").as_bytes());
    assert_eq!(status(&out[0].1), 503, "the fifth call at once is refused");
    // Records in all are bounded too (4 x the capacity): at 16 the next call is refused even
    // though only 4 are calls.
    let mut rig = Rig::with_capacity(4);
    let answered: Vec<Vec<u16>> = (0..17).map(|i| call_through(&mut rig, &format!("bound-{i}"))).collect();
    assert!(answered[..16].iter().all(|f| *f == vec![200, 200]), "{answered:?}");
    assert_eq!(answered[16], vec![503], "the 17th record would pass the bound");
}

#[test]
fn a_full_timer_wheel_refuses_new_transactions_with_503() {
    // A wheel far smaller than the table: new requests are refused once it is nearly full,
    // rather than a timer failing to arm after the fact.
    let start = Instant::now();
    let mut config = ShardConfig::standalone(1_000);
    config.max_timers = 100;
    let mut rig = Rig { shard: Shard::new(config, Proxy::new(proxy_config()), start), start, now: start };
    let first: Vec<u16> = (0..60)
        .map(|i| rig.send(CALLER, invite(&format!("wheel-{i}"), &format!("w{i}"), "").as_bytes()))
        .map(|out| status(&out[out.len() - 1].1))
        .collect();
    let refused = first.iter().filter(|&&s| s == 503).count();
    assert!(first[..5].iter().all(|&s| s == 100), "{first:?}");
    assert!(refused > 0 && first.iter().all(|&s| s == 100 || s == 503), "{first:?}");
    assert_eq!(rig.shard.stats().refused_full, refused as u64);
    assert!(rig.shard.armed_timers() <= 100);
    // The calls it took go on: their timers fire, Timer C ends them, nothing is left.
    let _ = rig.advance(Duration::from_secs(200));
    rig.settle();
    assert_eq!(rig.shard.calls(), 0);
}

#[test]
fn a_response_for_no_transaction_is_relayed_by_its_via() {
    let mut rig = Rig::new();
    let stray = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKgone\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKx;rport=5071;received=127.0.0.2\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: stray\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = rig.send(CALLEE, stray.as_bytes());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, to("127.0.0.2:5071"), "received and rport win (RFC 3581)");
    assert!(!out[0].1.contains("z9hG4bKgone"));
    // Not ours: dropped and counted.
    let foreign = stray.replace("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKgone\r\n", "");
    assert!(rig.send(CALLEE, foreign.as_bytes()).is_empty());
    assert_eq!(rig.shard.stats().stray_responses, 1);
}

#[test]
fn a_caller_behind_a_nat_gets_every_response_where_it_sent_from() {
    // The caller writes its private address in its Via and asks for rport (RFC 3581); its
    // datagrams arrive from the NAT's public address.
    let (public, private) = ("127.0.0.1:40000", "10.0.0.5:5060");
    let mut rig = Rig::new();
    let request = invite("nat-1", "nat", "").replace(
        &format!("Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKnat"),
        &format!("Via: SIP/2.0/UDP {private};branch=z9hG4bKnat;rport"),
    );
    let marked = format!("Via: SIP/2.0/UDP {private};branch=z9hG4bKnat;rport=40000;received=127.0.0.1\r\n");
    let out = rig.send(public, request.as_bytes());
    assert_eq!(out.len(), 2, "{out:?}");
    let relayed = &out[0].1;
    assert_eq!(out[0].0, to(CALLEE));
    // §18.2.1 and RFC 3581 §4: the relayed request carries the caller's Via marked, under ours.
    let second_via = relayed.lines().filter(|l| l.starts_with("Via: ")).nth(1);
    assert_eq!(second_via, Some(marked.trim_end()), "{relayed}");
    assert_eq!((out[1].0, status(&out[1].1)), (to(public), 100));
    assert!(out[1].1.contains(&marked), "the 100 Trying's Via is marked: {}", out[1].1);
    let ok = answer(relayed, 200, "OK", "callee-tag");
    let out = rig.send(CALLEE, ok.as_bytes());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].0, status(&out[0].1)), (to(public), 200));
    assert!(out[0].1.starts_with(&format!("SIP/2.0 200 OK\r\n{marked}")), "{}", out[0].1);
    // Once the INVITE's transaction is gone (timer L), a retransmitted 200 is relayed by the
    // Via alone (§16.7, §18.2.2): it must still reach the NAT's address, not the private one.
    let _ = rig.advance(Duration::from_secs(40));
    assert_eq!(rig.shard.transactions(), 0);
    let out = rig.send(CALLEE, ok.as_bytes());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].0, status(&out[0].1)), (to(public), 200), "received and rport lead back through the NAT");
}

#[test]
fn a_registered_user_is_called_at_its_contact() {
    use sipshard_shards::registrar::RegistrarConfig;
    let mut rig = Rig::new();
    let config = ShardConfig { registrar: Some(RegistrarConfig::default()), ..ShardConfig::standalone(64) };
    rig.shard = Shard::new(config, Proxy::new(ProxyConfig::default()), rig.start);
    let register = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5095;branch=z9hG4bKreg1\r\n\
From: <sip:alice@127.0.0.1:5060>;tag=r\r\nTo: <sip:alice@127.0.0.1:5060>\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:alice@127.0.0.1:5095;transport=udp>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";
    let out = rig.send("127.0.0.1:5095", register.as_bytes());
    assert_eq!(out.len(), 1);
    assert!(out[0].1.starts_with("SIP/2.0 200 OK\r\n"), "{}", out[0].1);
    assert!(out[0].1.contains("\r\nContact: <sip:alice@127.0.0.1:5095;transport=udp>;expires=600\r\n"), "{}", out[0].1);
    assert_eq!(rig.shard.tu().location().len(), 1);

    let call =
        invite("call-alice", "inv7", "").replace("sip:service@127.0.0.1:5060 SIP", "sip:alice@127.0.0.1:5060 SIP");
    let out = rig.send(CALLER, call.as_bytes());
    assert_eq!(out[0].0, to("127.0.0.1:5095"), "{out:?}");
    assert!(out[0].1.starts_with("INVITE sip:alice@127.0.0.1:5095;transport=udp SIP/2.0\r\n"), "{}", out[0].1);
    // An unregistered user at our address, with no default route: 404.
    let nobody = invite("call-bob", "inv8", "").replace("sip:service@127.0.0.1:5060 SIP", "sip:bob@127.0.0.1:5060 SIP");
    let out = rig.send(CALLER, nobody.as_bytes());
    assert_eq!(out[0].1.lines().next(), Some("SIP/2.0 404 Not Found"));
    // Unregistering empties the location and, once its transaction ends, the table.
    let unregister =
        register.replace("Expires: 600", "Expires: 0").replace("CSeq: 1", "CSeq: 2").replace("reg1", "reg2");
    let out = rig.send("127.0.0.1:5095", unregister.as_bytes());
    assert!(out[0].1.starts_with("SIP/2.0 200 OK\r\n"));
    assert!(!out[0].1.contains("Contact:"), "{}", out[0].1);
    assert_eq!(rig.shard.tu().location().len(), 0);
}

/// A REGISTER is routed by its AoR, not its Call-ID: on a shard that does not own the AoR's
/// stripe it is forwarded whoever owns the Call-ID's, and handled where the AoR lives.
#[test]
fn a_register_goes_to_the_shard_of_its_aor() {
    use sipshard_shards::registrar::RegistrarConfig;
    use sipshard_shards::{NodeId, StripeId, StripeMap};
    let map = StripeMap::balanced(1, 64, &[NodeId(0)], 2, 1);
    let shard_of = |key: &str| map.owner(StripeId::of_call_id(key.as_bytes(), 64)).shard;
    // An AoR shard 1 owns, under a Call-ID shard 0 owns.
    let user = (0..).map(|n| format!("user{n}")).find(|u| shard_of(&format!("{u}@127.0.0.1")) == ShardId(1));
    let user = user.expect("some AoR on shard 1");
    let call_id = (0..).map(|n| format!("reg-{n}")).find(|c| shard_of(c) == ShardId(0)).expect("a Call-ID on shard 0");
    let register = format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5095;branch=z9hG4bKaor1\r\n\
From: <sip:{user}@127.0.0.1:5060>;tag=r\r\nTo: <sip:{user}@127.0.0.1:5060>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:5095>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    let start = Instant::now();
    for (shard, forwarded) in [(ShardId(0), true), (ShardId(1), false)] {
        let config = ShardConfig {
            shard,
            stripes: map.clone(),
            registrar: Some(RegistrarConfig::default()),
            ..ShardConfig::standalone(64)
        };
        let mut shard = Shard::new(config, Proxy::new(ProxyConfig::default()), start);
        shard.handle(start, Input::Datagram { peer: udp("127.0.0.1:5095"), bytes: register.as_bytes() });
        let outputs: Vec<Output> = std::iter::from_fn(|| shard.poll_output()).collect();
        if forwarded {
            assert!(matches!(outputs[..], [Output::Forward { shard: ShardId(1) }]), "{outputs:?}");
            assert_eq!((shard.stats().forwarded_to_shard, shard.stats().local), (1, 0));
        } else {
            let ok = outputs
                .iter()
                .any(|o| matches!(o, Output::Transmit { bytes, .. } if bytes.starts_with(b"SIP/2.0 200 OK\r\n")));
            assert!(ok, "{outputs:?}");
            assert_eq!(shard.tu().location().len(), 1);
        }
    }
}

pub(crate) mod b2bua {
    use super::*;

    fn rig() -> Rig {
        let mut rig = Rig::new();
        let config = ProxyConfig {
            default_route: Some(RouteTarget::parse(&format!("sip:{CALLEE}")).expect("route")),
            b2bua: true,
            ..ProxyConfig::default()
        };
        rig.shard = Shard::new(ShardConfig::standalone(64), Proxy::new(config), rig.start);
        rig
    }

    /// The value of header `name` in `message`.
    pub(crate) fn header<'a>(message: &'a str, name: &str) -> &'a str {
        message
            .split("\r\n")
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .unwrap_or_else(|| panic!("no {name} in {message}"))
    }

    #[test]
    fn a_call_is_bridged_with_topology_hidden_and_either_side_hangs_up() {
        let mut rig = rig();
        let out = rig.send(CALLER, invite("a-leg-1", "inv1", "Record-Route: <sip:10.9.9.9;lr>\r\n").as_bytes());
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(status(&out[1].1), 100);
        let (dest, b_invite) = (out[0].0, out[0].1.clone());
        assert_eq!(dest, to(CALLEE));
        let b_call_id = header(&b_invite, "Call-ID").to_owned();
        assert!(b_call_id.starts_with("b2b~"), "{b_invite}");
        for hidden in ["a-leg-1", "caller-tag", "10.9.9.9", "z9hG4bKinv1"] {
            assert!(!b_invite.contains(hidden), "{hidden} leaks to the B side: {b_invite}");
        }
        // The caller's identity (From URI) goes on; where it is (Via, Contact) does not.
        assert_eq!(header(&b_invite, "Contact"), "<sip:127.0.0.1:5060>");
        assert!(!header(&b_invite, "Via").contains(CALLER), "{b_invite}");
        assert!(b_invite.ends_with("v=0\n"), "the SDP travels: {b_invite}");

        let out = rig.send(CALLEE, answer(&b_invite, 180, "Ringing", "callee-tag").as_bytes());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].0, status(&out[0].1)), (to(CALLER), 180));
        assert_eq!(header(&out[0].1, "Call-ID"), "a-leg-1");
        let a_tag = header(&out[0].1, "To").split("tag=").nth(1).expect("a To tag").to_owned();
        let out = rig.send(CALLEE, answer(&b_invite, 200, "OK", "callee-tag").as_bytes());
        assert_eq!((out[0].0, status(&out[0].1)), (to(CALLER), 200));
        assert!(header(&out[0].1, "To").ends_with(&format!("tag={a_tag}")), "one To tag for the A leg");
        assert!(!out[0].1.contains(CALLEE), "the B side's Contact is hidden: {}", out[0].1);

        // A's ACK becomes B's ACK (CSeq 1, B's Call-ID and tags).
        let ack = in_dialog("ACK", "a-leg-1", "ack1", 1, false).replace("tag=callee-tag", &format!("tag={a_tag}"));
        let out = rig.send(CALLER, ack.as_bytes());
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].1.starts_with("ACK sip:service@127.0.0.1:5090 SIP/2.0\r\n"), "{}", out[0].1);
        assert_eq!(header(&out[0].1, "Call-ID"), b_call_id);
        assert_eq!(header(&out[0].1, "CSeq"), "1 ACK");
        assert!(header(&out[0].1, "To").ends_with(";tag=callee-tag"));

        // The callee hangs up: its BYE reaches the caller on the A leg, the 200 goes back.
        let b_from = header(&b_invite, "From").to_owned();
        let bye = format!(
            "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbbye\r\nFrom: service <sip:service@127.0.0.1:5060>;tag=callee-tag\r\n\
To: {b_from}\r\nCall-ID: {b_call_id}\r\nCSeq: 7 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let out = rig.send(CALLEE, bye.as_bytes());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, to(CALLER));
        assert!(out[0].1.starts_with(&format!("BYE sip:sipp@{CALLER} SIP/2.0\r\n")), "{}", out[0].1);
        assert_eq!(header(&out[0].1, "Call-ID"), "a-leg-1");
        assert_eq!(header(&out[0].1, "To"), "sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag");
        let out = rig.send(CALLER, answer(&out[0].1, 200, "OK", "x").as_bytes());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].0, status(&out[0].1)), (to(CALLEE), 200));
        assert_eq!(header(&out[0].1, "Call-ID"), b_call_id);
        rig.settle();
        assert_eq!(rig.shard.calls(), 0, "the call is over and forgotten");
    }

    #[test]
    fn a_caller_behind_a_nat_is_answered_and_called_where_it_sent_from() {
        // Its Via and Contact name its private address; its datagrams come from the NAT's.
        let (public, private) = ("127.0.0.1:40000", "10.0.0.5:5060");
        let mut rig = rig();
        let request = invite("a-nat", "nat", "")
            .replace(
                &format!("Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKnat"),
                &format!("Via: SIP/2.0/UDP {private};branch=z9hG4bKnat;rport"),
            )
            .replace(&format!("Contact: <sip:sipp@{CALLER}>"), &format!("Contact: <sip:sipp@{private}>"));
        let marked = format!("SIP/2.0/UDP {private};branch=z9hG4bKnat;rport=40000;received=127.0.0.1");
        let out = rig.send(public, request.as_bytes());
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[1].0, status(&out[1].1), header(&out[1].1, "Via")), (to(public), 100, marked.as_str()));
        let b_invite = out[0].1.clone();
        let mut a_tag = String::new();
        for (code, reason) in [(180, "Ringing"), (200, "OK")] {
            let out = rig.send(CALLEE, answer(&b_invite, code, reason, "callee-tag").as_bytes());
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!((out[0].0, status(&out[0].1), header(&out[0].1, "Via")), (to(public), code, marked.as_str()));
            a_tag = header(&out[0].1, "To").split("tag=").nth(1).expect("a To tag").to_owned();
        }
        let ack = in_dialog("ACK", "a-nat", "ack1", 1, false).replace("tag=callee-tag", &format!("tag={a_tag}"));
        assert_eq!(rig.send(public, ack.as_bytes()).len(), 1, "the ACK goes across");
        // The callee hangs up: the A leg's BYE names the caller's Contact but goes to the
        // address the caller's requests came from (the leg latched onto it), not the private one.
        let bye = format!(
            "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbbye\r\nFrom: service <sip:service@127.0.0.1:5060>;tag=callee-tag\r\n\
To: {}\r\nCall-ID: {}\r\nCSeq: 7 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            header(&b_invite, "From"),
            header(&b_invite, "Call-ID")
        );
        let out = rig.send(CALLEE, bye.as_bytes());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, to(public));
        assert!(out[0].1.starts_with(&format!("BYE sip:sipp@{private} SIP/2.0\r\n")), "{}", out[0].1);
    }

    #[test]
    fn the_maximum_call_duration_sends_bye_on_both_legs() {
        let mut rig = rig();
        let config = ShardConfig { max_call_duration: Duration::from_secs(10), ..ShardConfig::standalone(64) };
        let proxy = ProxyConfig {
            default_route: Some(RouteTarget::parse(&format!("sip:{CALLEE}")).expect("route")),
            b2bua: true,
            ..ProxyConfig::default()
        };
        rig.shard = Shard::new(config, Proxy::new(proxy), rig.start);
        let out = rig.send(CALLER, invite("long-call", "inv3", "").as_bytes());
        let b_invite = out[0].1.clone();
        let out = rig.send(CALLEE, answer(&b_invite, 200, "OK", "callee-tag").as_bytes());
        let a_tag = header(&out[0].1, "To").split("tag=").nth(1).expect("tag").to_owned();
        let ack = in_dialog("ACK", "long-call", "ack3", 1, false).replace("tag=callee-tag", &format!("tag={a_tag}"));
        let _ = rig.send(CALLER, ack.as_bytes());
        assert!(rig.advance(Duration::from_secs(9)).is_empty(), "nothing before the limit");
        let byes = rig.advance(Duration::from_secs(2));
        let mut dests: Vec<SocketAddr> = byes.iter().filter(|(_, m)| m.starts_with("BYE ")).map(|(a, _)| *a).collect();
        dests.sort();
        assert_eq!(dests, vec![to(CALLER), to(CALLEE)], "{byes:?}");
        assert_eq!(rig.shard.unanswered_transactions(), 2, "a draining server waits for its own BYEs' 200s");
        for (_, bye) in byes.iter().filter(|(_, m)| m.starts_with("BYE ")) {
            let from = if bye.contains("b2b~") { CALLEE } else { CALLER };
            assert!(rig.send(from, answer(bye, 200, "OK", "x").as_bytes()).is_empty(), "our own BYE's 200 stops here");
        }
        assert_eq!(rig.shard.unanswered_transactions(), 0);
        rig.settle();
        assert_eq!(rig.shard.calls(), 0);
    }

    #[test]
    fn an_unanswered_call_is_cancelled_after_the_no_answer_time() {
        let mut rig = rig();
        let out = rig.send(CALLER, invite("ringing", "inv4", "").as_bytes());
        let b_invite = out[0].1.clone();
        let _ = rig.send(CALLEE, answer(&b_invite, 180, "Ringing", "c").as_bytes());
        let mut seen = Vec::new();
        while rig.now < rig.start + Duration::from_secs(182) {
            seen.extend(rig.advance(Duration::from_secs(1)));
        }
        assert!(seen.iter().any(|(a, m)| *a == to(CALLER) && status(m) == 408), "{seen:?}");
        let (_, cancel) = seen.iter().find(|(_, m)| m.starts_with("CANCEL ")).expect("the B leg is cancelled");
        let _ = rig.send(CALLEE, answer(cancel, 200, "OK", "c").as_bytes());
        let out = rig.send(CALLEE, answer(&b_invite, 487, "Request Terminated", "c").as_bytes());
        assert!(out.iter().any(|(_, m)| m.starts_with("ACK ")), "{out:?}");
        let ack = in_dialog("ACK", "ringing", "inv4", 1, false);
        let _ = rig.send(CALLER, ack.as_bytes());
        rig.settle();
        assert_eq!(rig.shard.calls(), 0);
    }

    #[test]
    fn a_busy_callee_is_reported_to_the_caller() {
        let mut rig = rig();
        let out = rig.send(CALLER, invite("a-leg-2", "inv2", "").as_bytes());
        let b_invite = out[0].1.clone();
        let out = rig.send(CALLEE, answer(&b_invite, 486, "Busy Here", "b").as_bytes());
        let lines: Vec<(SocketAddr, String)> =
            out.iter().map(|(a, m)| (*a, m.lines().next().unwrap_or_default().to_owned())).collect();
        assert_eq!(
            lines,
            vec![
                (to(CALLER), "SIP/2.0 486 Busy Here".to_owned()),
                (to(CALLEE), "ACK sip:service@127.0.0.1:5060 SIP/2.0".to_owned())
            ],
            "the caller's response first, then the B leg's ACK"
        );
        rig.settle();
        assert_eq!(rig.shard.calls(), 0);
    }
}
