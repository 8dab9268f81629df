//! The running server over real UDP sockets, with test sockets as caller and
//! callee: every error reply the proxy generates, provoked by a bad request;
//! a call that recovers from a lost INVITE (timer A) and a retransmitted 2xx;
//! a BYE from the callee's side; a re-INVITE; CANCEL; a graceful stop; the
//! same dialog operations through the B2BUA; a caller's Via marked received
//! (RFC 3581); and shards pinned or not.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Running, free_port, free_port_pair, wait_until_healthy};

/// A sipshard process (proxy) on a free port; `route` is its default route, if any.
fn start(route: Option<SocketAddr>) -> (Running, SocketAddr) {
    start_as("proxy", route)
}

/// A sipshard process in `role` on a free port.
fn start_as(role: &str, route: Option<SocketAddr>) -> (Running, SocketAddr) {
    let server: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sipshard"));
    command.args(["run", "--listen", &server.to_string(), "--shards", "2", "--role", role]);
    if let Some(route) = route {
        command.args(["--route", &format!("sip:{route}")]);
    }
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("sipshard starts");
    let running = Running(child);
    wait_until_healthy(server);
    (running, server)
}

/// A sipshard proxy on a free port over UDP and TCP, its counters report going to `stdout`.
fn start_with_tcp(stdout: Stdio) -> (Running, SocketAddr) {
    let server: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["run", "--listen", &server.to_string(), "--shards", "2", "--transport", "both"])
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("sipshard starts");
    let running = Running(child);
    wait_until_healthy(server);
    (running, server)
}

/// A test UA: one UDP socket, reads with a timeout.
struct Ua {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Ua {
    fn new() -> Ua {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let addr = socket.local_addr().expect("addr");
        Ua { socket, addr }
    }

    fn send(&self, to: SocketAddr, message: &str) {
        self.socket.send_to(message.as_bytes(), to).expect("send");
    }

    /// The next message, and who sent it.
    fn recv(&self) -> (String, SocketAddr) {
        let mut buf = vec![0u8; 65_535];
        let (n, from) = self.socket.recv_from(&mut buf).expect("a message within 3 s");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    }

    /// The next message that starts with `start` (others, like 100 Trying, are skipped).
    fn expect(&self, start: &str) -> (String, SocketAddr) {
        for _ in 0..10 {
            let (message, from) = self.recv();
            if message.starts_with(start) {
                return (message, from);
            }
        }
        panic!("no message starting with {start:?}");
    }
}

fn request(method: &str, uri: &str, ua: &Ua, call_id: &str, cseq: u32, extra: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{call_id}{cseq}{method}\r\nMax-Forwards: 70\r\n\
From: <sip:caller@{}>;tag=caller\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:caller@{}>\r\n{extra}Content-Length: 0\r\n\r\n",
        ua.addr, ua.addr, ua.addr
    )
}

/// The callee's answer to `request`: its Vias, From, Call-ID, CSeq and Record-Route; To with a tag.
fn answer(request: &str, status: &str, contact: SocketAddr) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        match name {
            "Via" | "From" | "Call-ID" | "CSeq" | "Record-Route" => out.push_str(&format!("{line}\r\n")),
            "To" if line.contains("tag=") => out.push_str(&format!("{line}\r\n")),
            "To" => out.push_str(&format!("{line};tag=callee\r\n")),
            _ => {}
        }
    }
    out.push_str(&format!("Contact: <sip:callee@{contact}>\r\nContent-Length: 0\r\n\r\n"));
    out
}

fn status_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

#[test]
fn every_error_reply_over_udp() {
    let (_server, addr) = start(None);
    let ua = Ua::new();
    let uri = format!("sip:bob@{addr}");
    let big = format!("X-Padding: {}\r\n", "a".repeat(4_000)).repeat(5);
    let loop_via = format!("Via: SIP/2.0/UDP {addr};branch=z9hG4bKlooped\r\n");
    let cases: Vec<(String, &str)> = vec![
        (
            request("INVITE", &uri, &ua, "e1", 1, "").replace("Max-Forwards: 70", "Max-Forwards: 0"),
            "SIP/2.0 483 Too Many Hops",
        ),
        (request("INVITE", &uri, &ua, "e2", 1, "Proxy-Require: foo\r\n"), "SIP/2.0 420 Bad Extension"),
        (request("INVITE", &uri, &ua, "e3", 1, &loop_via), "SIP/2.0 482 Loop Detected"),
        (
            request("BYE", &uri, &ua, "e4", 2, "").replace(&format!("To: <{uri}>"), &format!("To: <{uri}>;tag=x")),
            "SIP/2.0 481 Call/Transaction Does Not Exist",
        ),
        (
            request("INVITE", &uri, &ua, "e5", 1, "").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            "SIP/2.0 400 Bad Request (CSeq method does not match request method)",
        ),
        (
            request("INVITE", &uri, &ua, "e6", 1, "").replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia"),
            "SIP/2.0 505 unsupported version SIP/3.0",
        ),
        (request("INVITE", "mailto:bob@example.com", &ua, "e7", 1, ""), "SIP/2.0 416 unsupported URI scheme"),
        (request("INVITE", &uri, &ua, "e8", 1, ""), "SIP/2.0 404 Not Found"),
        (request("INVITE", &uri, &ua, "e9", 1, &big), "SIP/2.0 513 Message Too Large"),
        (
            request("REGISTER", &format!("sip:{addr}"), &ua, "e10", 1, "Contact: <sip:a@127.0.0.1:9>;expires=5\r\n")
                .replace(&format!("To: <sip:{addr}>"), &format!("To: <sip:alice@{addr}>")),
            "SIP/2.0 423 Interval Too Brief",
        ),
    ];
    for (i, (bad, expected)) in cases.into_iter().enumerate() {
        ua.send(addr, &bad);
        // Skip retransmissions of earlier replies (timer G: they are not ACKed here).
        let call_id = format!("Call-ID: e{}\r\n", i + 1);
        let reply = (0..20)
            .map(|_| ua.recv().0)
            .find(|r| r.contains(&call_id))
            .unwrap_or_else(|| panic!("no reply to case {}", i + 1));
        assert_eq!(status_line(&reply), expected, "for:\n{bad}");
    }
}

#[test]
fn a_call_recovers_from_a_lost_invite_and_the_callee_can_hang_up() {
    let callee = Ua::new();
    let (_server, proxy) = start(Some(callee.addr));
    let caller = Ua::new();
    let uri = format!("sip:callee@{proxy}");
    caller.send(proxy, &request("INVITE", &uri, &caller, "lossy", 1, ""));
    let (_, _) = caller.expect("SIP/2.0 100 Trying");
    // The callee "loses" the first INVITE: timer A (T1 = 500 ms) brings it again.
    let (first, _) = callee.expect("INVITE ");
    let (again, _) = callee.expect("INVITE ");
    assert_eq!(first, again, "a retransmission is the same request");
    callee.send(proxy, &answer(&again, "180 Ringing", callee.addr));
    let ok = answer(&again, "200 OK", callee.addr);
    callee.send(proxy, &ok);
    caller.expect("SIP/2.0 180 Ringing");
    let (two_hundred, _) = caller.expect("SIP/2.0 200 OK");
    assert!(two_hundred.contains(&format!("Record-Route: <sip:{proxy};lr>")), "{two_hundred}");
    // The 2xx is retransmitted by the callee (as if the caller lost it): it reaches the caller again.
    callee.send(proxy, &ok);
    caller.expect("SIP/2.0 200 OK");
    let in_dialog = |method: &str, cseq: u32| {
        request(
            method,
            &format!("sip:callee@{}", callee.addr),
            &caller,
            "lossy",
            cseq,
            &format!("Route: <sip:{proxy};lr>\r\n"),
        )
        .replace(&format!("To: <sip:callee@{}>", callee.addr), &format!("To: <{uri}>;tag=callee"))
    };
    caller.send(proxy, &in_dialog("ACK", 1));
    callee.expect("ACK ");
    // A re-INVITE in the dialog goes through and is answered.
    caller.send(proxy, &in_dialog("INVITE", 2));
    let (reinvite, _) = callee.expect("INVITE ");
    assert!(reinvite.contains("CSeq: 2 INVITE"), "{reinvite}");
    callee.send(proxy, &answer(&reinvite, "200 OK", callee.addr));
    caller.expect("SIP/2.0 200 OK");
    caller.send(proxy, &in_dialog("ACK", 2));
    callee.expect("ACK ");
    // The callee hangs up: its BYE (to the caller's Contact, via our Record-Route) reaches the caller.
    let bye = format!(
        "BYE sip:caller@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKcalleebye\r\nMax-Forwards: 70\r\n\
Route: <sip:{proxy};lr>\r\nFrom: <{uri}>;tag=callee\r\nTo: <sip:caller@{}>;tag=caller\r\nCall-ID: lossy\r\n\
CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        caller.addr, callee.addr, caller.addr
    );
    callee.send(proxy, &bye);
    let (bye_at_caller, from) = caller.expect("BYE ");
    assert_eq!(from, proxy);
    caller.send(proxy, &answer(&bye_at_caller, "200 OK", caller.addr));
    callee.expect("SIP/2.0 200 OK");
}

#[test]
fn a_caller_whose_via_names_another_address_gets_it_marked_received_and_rport_filled() {
    // As behind a NAT: the Via names an address the datagrams do not come from (a loopback
    // one, so that nothing leaves loopback whatever the server does) and asks for rport.
    let callee = Ua::new();
    let (_server, proxy) = start(Some(callee.addr));
    let caller = Ua::new();
    let uri = format!("sip:callee@{proxy}");
    let invite = request("INVITE", &uri, &caller, "natted", 1, "")
        .replace(&format!("Via: SIP/2.0/UDP {};", caller.addr), "Via: SIP/2.0/UDP 127.0.0.9:5999;rport;");
    caller.send(proxy, &invite);
    let marked = format!(
        "SIP/2.0/UDP 127.0.0.9:5999;rport={};branch=z9hG4bKnatted1INVITE;received=127.0.0.1",
        caller.addr.port()
    );
    let (trying, _) = caller.expect("SIP/2.0 100 Trying");
    assert_eq!(header(&trying, "Via"), marked, "RFC 3261 §18.2.1, RFC 3581 §4");
    let (relayed, _) = callee.expect("INVITE ");
    let vias: Vec<&str> = relayed.lines().filter_map(|l| l.strip_prefix("Via: ")).collect();
    assert_eq!(vias.len(), 2, "{relayed}");
    assert_eq!(vias[1], marked, "the relayed INVITE carries the caller's Via marked, under the proxy's");
    callee.send(proxy, &answer(&relayed, "486 Busy Here", callee.addr));
    let (busy, from) = caller.expect("SIP/2.0 486 Busy Here");
    assert_eq!((from, header(&busy, "Via")), (proxy, marked.as_str()));
}

#[test]
fn a_caller_behind_a_nat_still_gets_the_callees_bye() {
    // As behind a NAT: the Via and the Contact name an address the INVITE does not come from (a
    // loopback one nothing listens on, so nothing leaves loopback). The proxy aliases the Contact.
    let callee = Ua::new();
    let (_server, proxy) = start(Some(callee.addr));
    let caller = Ua::new();
    let uri = format!("sip:callee@{proxy}");
    let invite = request("INVITE", &uri, &caller, "natted-contact", 1, "")
        .replace(&format!("Via: SIP/2.0/UDP {};", caller.addr), "Via: SIP/2.0/UDP 127.0.0.9:5999;rport;")
        .replace(&format!("Contact: <sip:caller@{}>", caller.addr), "Contact: <sip:caller@127.0.0.9:5999>");
    caller.send(proxy, &invite);
    let (relayed, _) = callee.expect("INVITE ");
    let contact = header(&relayed, "Contact");
    let aliased = format!("<sip:caller@127.0.0.9:5999;alias=127.0.0.1~{}~1>", caller.addr.port());
    assert_eq!(contact, aliased, "the Contact aliased to where the INVITE came from");
    callee.send(proxy, &answer(&relayed, "200 OK", callee.addr));
    let (ok, _) = caller.expect("SIP/2.0 200 OK");
    assert!(ok.contains(&format!("Record-Route: <sip:{proxy};lr>")), "{ok}");
    // The callee hangs up toward the Contact it was given, through the proxy's Record-Route.
    let target = aliased.trim_matches(['<', '>']);
    let bye = format!(
        "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKnattedbye\r\nMax-Forwards: 70\r\n\
Route: <sip:{proxy};lr>\r\nFrom: <{uri}>;tag=callee\r\nTo: <sip:caller@{}>;tag=caller\r\n\
Call-ID: natted-contact\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        callee.addr, caller.addr
    );
    callee.send(proxy, &bye);
    let (bye_at_caller, from) = caller.expect("BYE ");
    assert_eq!(from, proxy);
    assert!(bye_at_caller.starts_with("BYE sip:caller@127.0.0.9:5999 SIP/2.0\r\n"), "alias taken off: {bye_at_caller}");
    caller.send(proxy, &answer(&bye_at_caller, "200 OK", caller.addr));
    callee.expect("SIP/2.0 200 OK");
}

#[test]
fn a_phone_registered_from_behind_a_nat_is_called_and_hung_up_on_where_it_registered_from() {
    // The embedded default runs the registrar. The phone's Via and Contact name 127.0.0.9:5999
    // (nothing listens there); its REGISTER comes from its socket.
    let (_server, server) = start(None);
    let phone = Ua::new();
    let aor = format!("sip:alice@{server}");
    let register = request("REGISTER", &format!("sip:{server}"), &phone, "natted-reg", 1, "Expires: 600\r\n")
        .replace(&format!("Via: SIP/2.0/UDP {};", phone.addr), "Via: SIP/2.0/UDP 127.0.0.9:5999;rport;")
        .replace(&format!("To: <sip:{server}>"), &format!("To: <{aor}>"))
        .replace(&format!("Contact: <sip:caller@{}>", phone.addr), "Contact: <sip:alice@127.0.0.9:5999>");
    phone.send(server, &register);
    let (ok, _) = phone.expect("SIP/2.0 200 OK");
    assert_eq!(header(&ok, "Contact"), "<sip:alice@127.0.0.9:5999>;expires=600", "answered as registered");
    // A call to the AoR reaches the phone's socket, its Contact as the Request-URI. The INVITE may
    // land on a shard the location has not reached yet (404): tried again under a new Call-ID.
    let caller = Ua::new();
    for attempt in 0..20 {
        let call_id = format!("to-natted-{attempt}");
        caller.send(server, &request("INVITE", &aor, &caller, &call_id, 1, ""));
        let (reply, _) = caller.expect("SIP/2.0 ");
        if reply.starts_with("SIP/2.0 404 ") {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let (invite, from) = phone.expect("INVITE ");
        assert_eq!(from, server);
        assert!(invite.starts_with("INVITE sip:alice@127.0.0.9:5999 SIP/2.0\r\n"), "alias taken off: {invite}");
        // The phone answers with the Contact it registered: the caller gets it aliased, and its
        // BYE (through the Record-Route) reaches the phone's socket too.
        let ok = answer(&invite, "200 OK", phone.addr)
            .replace(&format!("Contact: <sip:callee@{}>", phone.addr), "Contact: <sip:alice@127.0.0.9:5999>");
        phone.send(server, &ok);
        let (ok, _) = caller.expect("SIP/2.0 200 OK");
        let aliased = format!("<sip:alice@127.0.0.9:5999;alias=127.0.0.1~{}~1>", phone.addr.port());
        assert_eq!(header(&ok, "Contact"), aliased, "{ok}");
        let in_dialog = |method: &str, cseq: u32| {
            request(
                method,
                aliased.trim_matches(['<', '>']),
                &caller,
                &call_id,
                cseq,
                &format!("Route: <sip:{server};lr>\r\n"),
            )
            .replace(&format!("To: <{}>", aliased.trim_matches(['<', '>'])), &format!("To: <{aor}>;tag=callee"))
        };
        caller.send(server, &in_dialog("ACK", 1));
        let (ack, _) = phone.expect("ACK ");
        assert!(ack.starts_with("ACK sip:alice@127.0.0.9:5999 SIP/2.0\r\n"), "{ack}");
        caller.send(server, &in_dialog("BYE", 2));
        let (bye, _) = phone.expect("BYE ");
        assert!(bye.starts_with("BYE sip:alice@127.0.0.9:5999 SIP/2.0\r\n"), "{bye}");
        phone.send(server, &answer(&bye, "200 OK", phone.addr));
        caller.expect("SIP/2.0 200 OK");
        return;
    }
    panic!("the registration never reached the shard the INVITE landed on");
}

#[test]
fn a_cancelled_call_ends_with_487_on_both_sides() {
    let callee = Ua::new();
    let (_server, proxy) = start(Some(callee.addr));
    let caller = Ua::new();
    let uri = format!("sip:callee@{proxy}");
    let invite = request("INVITE", &uri, &caller, "cancelled", 1, "");
    caller.send(proxy, &invite);
    let (relayed, _) = callee.expect("INVITE ");
    callee.send(proxy, &answer(&relayed, "180 Ringing", callee.addr));
    caller.expect("SIP/2.0 180 Ringing");
    // CANCEL: same branch, Call-ID, From, To and CSeq number as the INVITE (§9.1).
    let cancel = invite.replace("INVITE sip:", "CANCEL sip:").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    caller.send(proxy, &cancel);
    let (ok, _) = caller.expect("SIP/2.0 200 OK");
    assert!(ok.contains("CSeq: 1 CANCEL"), "{ok}");
    let (cancel_at_callee, _) = callee.expect("CANCEL ");
    callee.send(proxy, &answer(&cancel_at_callee, "200 OK", callee.addr));
    callee.send(proxy, &answer(&relayed, "487 Request Terminated", callee.addr));
    // The proxy ACKs the 487 hop by hop and relays it up.
    callee.expect("ACK ");
    let (terminated, _) = caller.expect("SIP/2.0 487 Request Terminated");
    assert!(terminated.contains("CSeq: 1 INVITE"), "{terminated}");
}

#[test]
fn sigterm_refuses_new_calls_and_lets_a_ringing_call_finish() {
    let callee = Ua::new();
    let (mut server, proxy) = start(Some(callee.addr));
    let caller = Ua::new();
    let uri = format!("sip:callee@{proxy}");
    caller.send(proxy, &request("INVITE", &uri, &caller, "draining-1", 1, ""));
    let (relayed, _) = callee.expect("INVITE ");
    callee.send(proxy, &answer(&relayed, "180 Ringing", callee.addr));
    caller.expect("SIP/2.0 180 Ringing");
    let killed = Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    // A new call is refused while the ringing one may still finish.
    caller.send(proxy, &request("INVITE", &uri, &caller, "draining-2", 1, ""));
    let (refused, _) = caller.expect("SIP/2.0 503 Service Unavailable");
    assert!(refused.contains("Call-ID: draining-2"), "{refused}");
    assert!(refused.contains("\r\nRetry-After: 5\r\n"), "{refused}");
    callee.send(proxy, &answer(&relayed, "200 OK", callee.addr));
    caller.expect("SIP/2.0 200 OK");
    // With no transaction waiting any more, the server exits on its own, successfully.
    for _ in 0..50 {
        if let Some(status) = server.0.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sipshard did not exit within 5 s of its last answered transaction");
}

/// The value of a header in a message.
fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message.split("\r\n").find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": "))).unwrap_or_default()
}

#[test]
fn through_the_b2bua_a_reinvite_goes_across_and_the_callee_hangs_up() {
    let callee = Ua::new();
    let (_server, b2bua) = start_as("b2bua", Some(callee.addr));
    let caller = Ua::new();
    let uri = format!("sip:callee@{b2bua}");
    caller.send(b2bua, &request("INVITE", &uri, &caller, "bridged", 1, ""));
    caller.expect("SIP/2.0 100 Trying");
    let (b_invite, _) = callee.expect("INVITE ");
    let b_call_id = header(&b_invite, "Call-ID").to_owned();
    assert!(b_call_id.starts_with("b2b~") && !b_invite.contains("bridged"), "{b_invite}");
    callee.send(b2bua, &answer(&b_invite, "200 OK", callee.addr));
    let (ok, _) = caller.expect("SIP/2.0 200 OK");
    let a_to = header(&ok, "To").to_owned();
    let in_dialog = |method: &str, cseq: u32| {
        request(method, &format!("sip:{b2bua}"), &caller, "bridged", cseq, "")
            .replace(&format!("To: <sip:{b2bua}>"), &format!("To: {a_to}"))
    };
    caller.send(b2bua, &in_dialog("ACK", 1));
    let (b_ack, _) = callee.expect("ACK ");
    assert_eq!(header(&b_ack, "Call-ID"), b_call_id);
    // A re-INVITE from the caller reaches the callee on the B leg with the B leg's next CSeq.
    caller.send(b2bua, &in_dialog("INVITE", 2));
    let (reinvite, _) = callee.expect("INVITE ");
    assert_eq!(header(&reinvite, "CSeq"), "2 INVITE");
    assert_eq!(header(&reinvite, "Call-ID"), b_call_id);
    callee.send(b2bua, &answer(&reinvite, "200 OK", callee.addr));
    let (reok, _) = caller.expect("SIP/2.0 200 OK");
    assert_eq!(header(&reok, "CSeq"), "2 INVITE");
    caller.send(b2bua, &in_dialog("ACK", 2));
    let (b_ack2, _) = callee.expect("ACK ");
    assert_eq!(header(&b_ack2, "CSeq"), "2 ACK");
    // The callee hangs up on the B leg; the caller gets the BYE on the A leg.
    let bye = format!(
        "BYE sip:{b2bua} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKbbye\r\nMax-Forwards: 70\r\n\
From: {};tag=callee\r\nTo: {}\r\nCall-ID: {b_call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        callee.addr,
        header(&b_invite, "To"),
        header(&b_invite, "From"),
    );
    callee.send(b2bua, &bye);
    let (a_bye, _) = caller.expect("BYE ");
    assert_eq!(header(&a_bye, "Call-ID"), "bridged");
    caller.send(b2bua, &answer(&a_bye, "200 OK", caller.addr));
    let (bye_ok, _) = callee.expect("SIP/2.0 200 OK");
    assert_eq!(header(&bye_ok, "Call-ID"), b_call_id);
}

#[test]
fn through_the_b2bua_cancel_reaches_the_b_leg() {
    let callee = Ua::new();
    let (_server, b2bua) = start_as("b2bua", Some(callee.addr));
    let caller = Ua::new();
    let invite = request("INVITE", &format!("sip:callee@{b2bua}"), &caller, "bridged-cancel", 1, "");
    caller.send(b2bua, &invite);
    let (b_invite, _) = callee.expect("INVITE ");
    callee.send(b2bua, &answer(&b_invite, "180 Ringing", callee.addr));
    caller.expect("SIP/2.0 180 Ringing");
    caller.send(b2bua, &invite.replace("INVITE sip:", "CANCEL sip:").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL"));
    caller.expect("SIP/2.0 200 OK");
    let (b_cancel, _) = callee.expect("CANCEL ");
    assert_eq!(header(&b_cancel, "Call-ID"), header(&b_invite, "Call-ID"));
    callee.send(b2bua, &answer(&b_cancel, "200 OK", callee.addr));
    callee.send(b2bua, &answer(&b_invite, "487 Request Terminated", callee.addr));
    callee.expect("ACK ");
    caller.expect("SIP/2.0 487 Request Terminated");
}

#[test]
fn a_phone_registered_over_tcp_from_behind_a_nat_is_called_on_its_own_connection() {
    use std::io::{Read, Write};
    let (_sipshard, server) = start_with_tcp(Stdio::null());
    // The phone's Via and Contact name 127.0.0.9:5999 (nothing listens there): behind a NAT.
    let mut phone = std::net::TcpStream::connect(server).expect("connect");
    phone.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let aor = format!("sip:alice@{server}");
    let register = format!(
        "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.9:5999;branch=z9hG4bKtcpnat\r\nMax-Forwards: 70\r\n\
From: <{aor}>;tag=p\r\nTo: <{aor}>\r\nCall-ID: tcp-natted-reg\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:alice@127.0.0.9:5999;transport=tcp>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    phone.write_all(register.as_bytes()).expect("write");
    let mut buf = [0u8; 8192];
    let n = phone.read(&mut buf).expect("the registrar answers on the connection");
    let ok = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert_eq!(header(&ok, "Contact"), "<sip:alice@127.0.0.9:5999;transport=tcp>;expires=600", "as registered");
    // A call over UDP reaches the phone on the connection it registered on.
    let caller = Ua::new();
    for attempt in 0..20 {
        let call_id = format!("to-tcp-natted-{attempt}");
        caller.send(server, &request("INVITE", &aor, &caller, &call_id, 1, ""));
        let (reply, _) = caller.expect("SIP/2.0 ");
        if reply.starts_with("SIP/2.0 404 ") {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = phone.read(&mut buf).expect("the INVITE on the phone's connection");
        let invite = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            invite.starts_with("INVITE sip:alice@127.0.0.9:5999;transport=tcp SIP/2.0\r\n"),
            "alias taken off: {invite}"
        );
        phone.write_all(answer(&invite, "486 Busy Here", server).as_bytes()).expect("write");
        caller.expect("SIP/2.0 486 Busy Here");
        return;
    }
    panic!("the registration never reached the shard the INVITE landed on");
}

#[test]
fn over_tcp_keep_alives_get_pongs_and_a_stream_that_does_not_frame_is_closed_and_counted() {
    use std::io::{Read, Write};
    let (mut sipshard, server) = start_with_tcp(Stdio::piped());
    let mut stream = std::net::TcpStream::connect(server).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let local = stream.local_addr().expect("addr");
    // A health check over TCP: the answer comes back on this connection (§18.2.2).
    let options = format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp1\r\nMax-Forwards: 70\r\n\
From: <sip:probe@{local}>;tag=t\r\nTo: <sip:{server}>\r\nCall-ID: tcp-health\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let mut buf = [0u8; 4096];
    // A keep-alive ping (a double CRLF, RFC 5626 §3.5.1) gets its pong (one CRLF), twice.
    for _ in 0..2 {
        stream.write_all(b"\r\n\r\n").expect("write");
        let n = stream.read(&mut buf).expect("a pong");
        assert_eq!(&buf[..n], b"\r\n");
    }
    stream.write_all(options.as_bytes()).expect("write");
    let n = stream.read(&mut buf).expect("a reply on the same connection");
    assert!(buf[..n].starts_with(b"SIP/2.0 200 OK\r\n"), "{}", String::from_utf8_lossy(&buf[..n]));
    // A Content-Length that is not a number cannot be framed (§18.3): the server closes the stream.
    stream.write_all(b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: many\r\n\r\n").expect("write");
    let closed = stream.read(&mut buf).expect("the server closes, it does not hang");
    assert_eq!(closed, 0, "{}", String::from_utf8_lossy(&buf[..closed]));
    // The counters say why.
    let killed = Command::new("kill").args(["-TERM", &sipshard.0.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let mut report = String::new();
    sipshard.0.stdout.take().expect("stdout").read_to_string(&mut report).expect("report");
    let total = |name: &str| -> u64 {
        report
            .split_whitespace()
            .filter_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(|v| v.parse::<u64>().expect("a count"))
            .sum()
    };
    assert_eq!(total("tcp_accepted"), 1, "{report}");
    assert_eq!(total("tcp_framing_errors"), 1, "{report}");
}

/// With `server.shard_ports`, each shard relays from its own port and names it in its Via and
/// Record-Route: the callee's answers and the caller's ACKs and BYEs (sipbench follows the
/// Route, §8.1.2) reach the shard that owns the call, so only the INVITEs that the kernel gave
/// to the other shard move between shards (half the messages move without it).
#[test]
fn with_shard_ports_only_initial_invites_move_between_shards() {
    use sipshard_bench::uac::{self, UacConfig};
    use sipshard_bench::uas::{Uas, UasConfig};

    let mut callee_config = UasConfig::new("127.0.0.1:0".parse().expect("addr"));
    callee_config.progress = false;
    let callee = Uas::start(&callee_config).expect("the callee starts");
    let server: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let first = free_port_pair();
    let log_path = std::env::temp_dir().join(format!("sipshard-it-shard-ports-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("log");
    let mut sipshard = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args(["run", "--listen", &server.to_string(), "--shards", "2", "--role", "proxy"])
            .args(["--route", &format!("sip:{}", callee.local), "--shard-ports", &first.to_string()])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sipshard starts"),
    );
    wait_until_healthy(server);
    let mut caller = UacConfig::new(server);
    caller.calls = 300;
    caller.rate = 300.0;
    caller.progress = false;
    let report = uac::run(&caller).expect("the caller runs");
    let callee_stats = callee.stop().expect("the callee stops");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sipshard.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    sipshard.0.wait().expect("sipshard stops");
    let log = std::fs::read_to_string(&log_path).expect("log");
    let _ = std::fs::remove_file(&log_path);
    let sum = |key: &str| -> u64 {
        log.lines()
            .filter(|l| l.starts_with("shard "))
            .flat_map(|l| l.split(' '))
            .filter_map(|kv| kv.strip_prefix(key))
            .map(|n| n.parse::<u64>().expect("a count"))
            .sum()
    };
    assert_eq!((report.counts.ok, report.counts.failed, report.counts.timed_out), (300, 0, 0), "{log}");
    assert_eq!(callee_stats.byes.load(std::sync::atomic::Ordering::Relaxed), 300);
    let (handled, moved) = (sum("local="), sum("forwarded_to_shard="));
    assert!(handled >= 6 * 300, "six messages per call: {log}");
    // At most the INVITEs (and their retransmissions) move; without the shards' own ports
    // about half of all six messages of every call would.
    assert!(moved <= 300 + report.counts.retransmissions, "{moved} of {handled} moved: {log}");
}

/// `--no-pin` (`server.pin_shards = false`): the shards' threads may run on every core the
/// process may, where pinned ones each have one core; calls go through either way.
#[test]
fn unpinned_shards_may_run_on_any_core_and_carry_calls() {
    use sipshard_bench::uac::{self, UacConfig};
    use sipshard_bench::uas::{Uas, UasConfig};

    // Each thread of the process: (name, the cores it may run on, as /proc lists them).
    let cores_of_threads = |pid: u32| -> Vec<(String, String)> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc");
        tasks
            .map(|task| {
                let path = task.expect("task").path();
                let name = std::fs::read_to_string(path.join("comm")).expect("comm").trim().to_string();
                let status = std::fs::read_to_string(path.join("status")).expect("status");
                let cores = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .expect("Cpus_allowed_list")
                    .trim()
                    .to_string();
                (name, cores)
            })
            .collect()
    };
    let mut callee_config = UasConfig::new("127.0.0.1:0".parse().expect("addr"));
    callee_config.progress = false;
    let callee = Uas::start(&callee_config).expect("the callee starts");
    for pinned in [true, false] {
        let server: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sipshard"));
        command.args(["run", "--listen", &server.to_string(), "--shards", "2", "--route"]);
        command.arg(format!("sip:{}", callee.local));
        if !pinned {
            command.arg("--no-pin");
        }
        let sipshard = Running(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("sipshard starts"));
        wait_until_healthy(server);
        let threads = cores_of_threads(sipshard.0.id());
        let process_cores = &threads.iter().find(|(name, _)| name == "sipshard").expect("the main thread").1;
        let shard_cores: Vec<&str> =
            threads.iter().filter(|(name, _)| name.starts_with("shard-")).map(|(_, c)| c.as_str()).collect();
        assert!(!shard_cores.is_empty(), "{threads:?}");
        for cores in &shard_cores {
            if pinned {
                assert!(cores.parse::<usize>().is_ok(), "a pinned shard has one core: {threads:?}");
            } else {
                assert_eq!(cores, process_cores, "an unpinned shard may run where the process may: {threads:?}");
            }
        }
        let mut caller = UacConfig::new(server);
        caller.calls = 100;
        caller.rate = 200.0;
        caller.progress = false;
        let report = uac::run(&caller).expect("the caller runs");
        assert_eq!((report.counts.ok, report.counts.failed, report.counts.timed_out), (100, 0, 0), "pinned: {pinned}");
    }
    callee.stop().expect("the callee stops");
}
