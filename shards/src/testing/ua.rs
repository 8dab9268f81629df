//! The dialog side of the harness's user agents: a callee ([`Uas`]) that answers
//! what the cluster relays to it as a phone would (180 and 200 to an INVITE, its
//! 2xx retransmitted until the ACK comes, §13.3.1.4; 200 to a re-INVITE, a BYE and
//! anything else; a retransmitted request answered again), and the requests a
//! caller sends inside a dialog it set up (§12.2.1.1: the ACK for a 2xx, BYE,
//! re-INVITE), built from its INVITE and the 2xx it got.

use std::collections::HashMap;
use std::net::SocketAddr;

use sipshard_parser::{Contact, HeaderSlot, Message, Method, ResponseSpec, parse, write_response};

use crate::shard::Peer;
use crate::timer::TimerWheel;
use crate::transaction::TimerConfig;

/// What a callee saw of one call (by Call-ID).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CallSeen {
    /// Dialog-creating INVITEs (no To tag), retransmissions not counted.
    pub invites: u32,
    /// re-INVITEs (To tag present), retransmissions not counted.
    pub reinvites: u32,
    /// ACKs for its 2xx (duplicates counted once per 2xx).
    pub acks: u32,
    /// BYEs, retransmissions not counted.
    pub byes: u32,
}

/// A 2xx to an INVITE, retransmitted until its ACK (§13.3.1.4).
#[derive(Clone, Debug)]
struct Unacked {
    response: Vec<u8>,
    to: SocketAddr,
    interval_ms: u64,
    give_up_ms: u64,
}

/// A user agent server: the callee behind the cluster.
#[derive(Debug)]
pub struct Uas {
    /// Its address.
    pub peer: Peer,
    /// What it saw, by Call-ID.
    pub seen: HashMap<String, CallSeen>,
    /// Its 2xx that were never acknowledged (given up after 64·T1).
    pub unacked_2xx: u64,
    /// The last response to each request, by branch (a retransmission gets it again).
    answered: HashMap<String, (Vec<u8>, SocketAddr)>,
    /// 2xx waiting for their ACK, by (Call-ID, CSeq number), with the wheel's key.
    waiting: HashMap<(String, u32), (u64, Unacked)>,
    keys: HashMap<u64, (String, u32)>,
    wheel: TimerWheel<u64>,
    next: u64,
    timers: TimerConfig,
}

impl Uas {
    pub(super) fn new(peer: Peer, timers: TimerConfig) -> Self {
        Uas {
            peer,
            seen: HashMap::new(),
            unacked_2xx: 0,
            answered: HashMap::new(),
            waiting: HashMap::new(),
            keys: HashMap::new(),
            wheel: TimerWheel::new(200_000, 0),
            next: 1,
            timers,
        }
    }

    /// The 2xx still waiting for an ACK.
    pub fn awaiting_ack(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.wheel.next_deadline_ms()
    }

    /// Handles a request; returns the responses to send and where (the top Via's sent-by).
    pub(super) fn on_request(&mut self, now_ms: u64, bytes: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
        let Ok(msg) = parse(bytes, &mut slots) else { return Vec::new() };
        let (Some(method), Ok(Some(call_id)), Ok(Some(cseq)), Ok(Some(via))) =
            (msg.method(), msg.call_id(), msg.cseq(), msg.top_via())
        else {
            return Vec::new();
        };
        let Some(to) = via_address(via.host, via.port) else { return Vec::new() };
        let seen = self.seen.entry(call_id.to_owned()).or_default();
        if method == Method::Ack {
            if self.waiting.remove(&(call_id.to_owned(), cseq.seq)).is_some() {
                seen.acks += 1;
            }
            return Vec::new();
        }
        let branch = via.branch.unwrap_or_default().to_owned();
        if let Some((response, to)) = self.answered.get(&branch) {
            return vec![(*to, response.clone())];
        }
        let dialog_exists = msg.to().ok().flatten().is_some_and(|to| to.tag().is_some());
        match method {
            Method::Invite if dialog_exists => seen.reinvites += 1,
            Method::Invite => seen.invites += 1,
            Method::Bye => seen.byes += 1,
            _ => {}
        }
        let tag = format!("callee{}", self.next);
        let contact = format!("<sip:{}>", self.peer.addr);
        let record_route: Vec<&[u8]> =
            msg.headers_named(sipshard_parser::HeaderName::RecordRoute).map(|h| h.value).collect();
        let mut headers: Vec<(&str, &[u8])> = vec![("Contact", contact.as_bytes())];
        headers.extend(record_route.iter().map(|rr| ("Record-Route", *rr)));
        let respond = |code, reason| {
            // The simulated callee answers its only upstream: the Via is copied as it came.
            let spec =
                ResponseSpec { code, reason, to_tag: Some(&tag), headers: &headers, body: b"", received_from: None };
            let mut out = vec![0u8; bytes.len() + 512];
            let n = write_response(&msg, &spec, &mut out).expect("invariant: room for a response");
            out.truncate(n);
            out
        };
        let mut sends = Vec::new();
        if method == Method::Invite {
            if !dialog_exists {
                sends.push((to, respond(180, "Ringing")));
            }
            let ok = respond(200, "OK");
            let id = self.next;
            let t1 = self.timers.t1.as_millis() as u64;
            self.wheel.arm(now_ms + t1, id).expect("invariant: callee wheel room");
            let give_up_ms = now_ms + self.timers.t1_x64().as_millis() as u64;
            let unacked = Unacked { response: ok.clone(), to, interval_ms: t1, give_up_ms };
            self.keys.insert(id, (call_id.to_owned(), cseq.seq));
            self.waiting.insert((call_id.to_owned(), cseq.seq), (id, unacked));
            sends.push((to, ok));
        } else {
            sends.push((to, respond(200, "OK")));
        }
        self.next += 1;
        if let Some(last) = sends.last() {
            self.answered.insert(branch, (last.1.clone(), to));
        }
        sends
    }

    /// Retransmits the 2xx whose time has come (T1 doubling to T2, given up after 64·T1).
    pub(super) fn on_timers(&mut self, now_ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut sends = Vec::new();
        while let Some((_, id)) = self.wheel.poll_expired(now_ms) {
            let Some(key) = self.keys.remove(&id) else { continue };
            let Some((armed, unacked)) = self.waiting.get_mut(&key) else { continue };
            if *armed != id {
                continue;
            }
            if now_ms >= unacked.give_up_ms {
                self.waiting.remove(&key);
                self.unacked_2xx += 1;
                continue;
            }
            sends.push((unacked.to, unacked.response.clone()));
            unacked.interval_ms = (unacked.interval_ms * 2).min(self.timers.t2.as_millis() as u64);
            self.wheel.arm(now_ms + unacked.interval_ms, id).expect("invariant: callee wheel room");
            self.keys.insert(id, key);
        }
        sends
    }
}

/// A Via sent-by as an address (port 5060 unless given); `None` for a host name.
fn via_address(host: &str, port: Option<u16>) -> Option<SocketAddr> {
    let ip = host.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, port.unwrap_or(5060)))
}

/// A request inside the dialog that `invite` (sent by the caller at `from`) and its 2xx `ok`
/// set up (§12.2.1.1): Request-URI the callee's Contact, Route the Record-Route set reversed,
/// From of the INVITE, To of the 2xx (with its tag), the same Call-ID, and `cseq` (the
/// INVITE's number for an ACK). Returns the request and where it goes first: the first
/// Route's address, else the Contact's. `None` when either message lacks what it needs.
pub fn in_dialog_request(
    method: &str,
    invite: &[u8],
    ok: &[u8],
    cseq: u32,
    branch: &str,
    from: SocketAddr,
) -> Option<(Vec<u8>, SocketAddr)> {
    let (mut islots, mut oslots) = ([HeaderSlot::EMPTY; Message::SLOTS], [HeaderSlot::EMPTY; Message::SLOTS]);
    let (invite, ok) = (parse(invite, &mut islots).ok()?, parse(ok, &mut oslots).ok()?);
    let target = match ok.contacts().next()? {
        Ok(Contact::Address { addr, .. }) => addr.uri,
        _ => return None,
    };
    let routes: Vec<_> = ok.record_routes().filter_map(Result::ok).collect();
    let first_hop = routes.last().map_or(target, |route| route.uri);
    let next_hop = via_address(first_hop.host, first_hop.port)?;
    let mut text = format!(
        "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n",
        target.raw
    );
    for route in routes.iter().rev() {
        text.push_str(&format!("Route: <{}>\r\n", route.uri.raw));
    }
    let header = |m: &Message<'_>, name| m.header(name).map(|v| String::from_utf8_lossy(v).into_owned());
    use sipshard_parser::HeaderName::{CallId, From, To};
    text.push_str(&format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        header(&invite, From)?,
        header(&ok, To)?,
        header(&invite, CallId)?
    ));
    Some((text.into_bytes(), next_hop))
}
