//! Failover of a call between two nodes, sans-IO with a fake clock: node 1 owns
//! the call's stripe and bridges it (B2BUA); every change of its record reaches
//! node 2 as a dormant replica; node 1 dies; the new view makes node 2 the
//! owner, and the callee's BYE, sent to node 2 (a floating IP moved), is
//! bridged to the caller from the replicated state alone. The call's
//! maximum-duration timer, stored in the record, is armed on the survivor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipshard_shards::proxy::{Proxy, ProxyConfig, RouteTarget};
use sipshard_shards::shard::{Input, Output, Shard, ShardConfig};
use sipshard_shards::{NodeId, ShardId, StripeId, StripeMap};

use crate::proxy::b2bua::header;
use crate::proxy::{status, udp};

const CALLER: &str = "127.0.0.1:5061";
const CALLEE: &str = "127.0.0.1:5090";
const STRIPES: u32 = 64;

/// Both nodes answer on the same (floating) address, as behind keepalived.
fn node(id: u16, view: &StripeMap, start: Instant) -> Shard<Proxy> {
    Shard::new(shard_config(id, view), Proxy::new(b2bua_to_callee()), start)
}

fn shard_config(id: u16, view: &StripeMap) -> ShardConfig {
    ShardConfig {
        node: NodeId(id),
        shard: ShardId(0),
        stripes: view.clone(),
        replicate: true,
        max_call_duration: Duration::from_secs(60),
        ..ShardConfig::standalone(64)
    }
}

fn b2bua_to_callee() -> ProxyConfig {
    ProxyConfig {
        default_route: Some(RouteTarget::parse(&format!("sip:{CALLEE}")).expect("route")),
        b2bua: true,
        ..ProxyConfig::default()
    }
}

/// Hands `shard` a datagram; returns what it transmits, and hands every change it makes to
/// `backup` as a replica (the replica link, delivered in order).
fn send(
    shard: &mut Shard<Proxy>,
    backup: Option<&mut Shard<Proxy>>,
    now: Instant,
    from: &str,
    bytes: &str,
) -> Vec<(SocketAddr, String)> {
    shard.handle(now, Input::Datagram { peer: udp(from), bytes: bytes.as_bytes() });
    drain(shard, backup, now)
}

fn drain(shard: &mut Shard<Proxy>, mut backup: Option<&mut Shard<Proxy>>, now: Instant) -> Vec<(SocketAddr, String)> {
    let mut out = Vec::new();
    while let Some(output) = shard.poll_output() {
        match output {
            Output::Transmit { peer, bytes } => out.push((peer.addr, String::from_utf8(bytes.to_vec()).expect("utf8"))),
            Output::Replicate(change) => {
                if let Some(backup) = backup.as_deref_mut() {
                    backup.handle(now, Input::Replica(&change));
                    assert!(backup.poll_output().is_none(), "a backup only stores");
                }
            }
            Output::Location(_) => {}
            other => panic!("unexpected output {other:?}"),
        }
    }
    out
}

/// The callee's answer to `request` (Vias, From, Call-ID, CSeq copied; a To tag added).
fn answer(request: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in request.split("\r\n").take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        match name {
            "Via" | "From" | "Call-ID" | "CSeq" => out.push_str(&format!("{line}\r\n")),
            "To" if !line.contains("tag=") => out.push_str(&format!("{line};tag=callee-tag\r\n")),
            "To" => out.push_str(&format!("{line}\r\n")),
            _ => {}
        }
    }
    out.push_str(&format!("Contact: <sip:service@{CALLEE}>\r\nContent-Length: 0\r\n\r\n"));
    out
}

/// A Call-ID whose stripe node 1 owns (node 2 holds its backup).
fn call_id_owned_by(view: &StripeMap, owner: NodeId) -> String {
    (0..)
        .map(|n| format!("failover-{n}@{CALLER}"))
        .find(|id| view.owner(StripeId::of_call_id(id.as_bytes(), STRIPES)).node == owner)
        .expect("some Call-ID lands on the owner")
}

#[test]
fn an_established_b2bua_call_ends_through_the_survivor() {
    let start = Instant::now();
    let mut now = start;
    let view = StripeMap::balanced(1, STRIPES, &[NodeId(1), NodeId(2)], 1, 2);
    let mut one = node(1, &view, start);
    let mut two = node(2, &view, start);
    let call_id = call_id_owned_by(&view, NodeId(1));
    let stripe = StripeId::of_call_id(call_id.as_bytes(), STRIPES);
    assert_eq!(view.placement(stripe).backups().collect::<Vec<_>>(), [NodeId(2)]);

    // The call is set up through node 1.
    let invite = format!(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag\r\nTo: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@{CALLER}>\r\nMax-Forwards: 70\r\n\
Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    );
    let out = send(&mut one, Some(&mut two), now, CALLER, &invite);
    assert_eq!(out.len(), 2, "{out:?}");
    let b_invite = out[0].1.clone();
    let b_call_id = header(&b_invite, "Call-ID").to_owned();
    let b_from = header(&b_invite, "From").to_owned();
    let out = send(&mut one, Some(&mut two), now, CALLEE, &answer(&b_invite, 200, "OK"));
    assert_eq!(status(&out[0].1), 200);
    let a_tag = header(&out[0].1, "To").split("tag=").nth(1).expect("A-leg To tag").to_owned();
    let ack = format!(
        "ACK sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKack1\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag\r\nTo: service <sip:service@127.0.0.1:5060>;tag={a_tag}\r\n\
Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let out = send(&mut one, Some(&mut two), now, CALLER, &ack);
    assert_eq!(out.len(), 1, "the ACK goes on to B: {out:?}");
    // The INVITE transactions end; the confirmed call stays, on node 1 and as a replica on 2.
    now += Duration::from_secs(40);
    one.handle(now, Input::Timeout);
    let _ = drain(&mut one, Some(&mut two), now);
    assert_eq!((one.calls(), two.calls()), (1, 1));
    assert_eq!(two.armed_timers(), 0, "a replica is dormant");
    assert!(two.stats().replicas_installed >= 3, "{:?}", two.stats());

    // Node 1 dies. The view without it gives node 2 the stripe.
    drop(one);
    let survivor_view = view.without(NodeId(1));
    two.handle(now, Input::View(&survivor_view));
    assert!(drain(&mut two, None, now).is_empty(), "taking over sends nothing by itself");
    assert_eq!((two.stats().stripes_taken_over > 0, two.stats().records_activated), (true, 1));
    assert_eq!(two.armed_timers(), 1, "the call's maximum-duration timer is armed here now");

    // The callee hangs up, to the floating address now on node 2.
    let bye = format!(
        "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbbye\r\n\
From: service <sip:service@127.0.0.1:5060>;tag=callee-tag\r\nTo: {b_from}\r\nCall-ID: {b_call_id}\r\n\
CSeq: 7 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let out = send(&mut two, None, now, CALLEE, &bye);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, CALLER.parse::<SocketAddr>().expect("addr"));
    assert!(out[0].1.starts_with(&format!("BYE sip:sipp@{CALLER} SIP/2.0\r\n")), "{}", out[0].1);
    assert_eq!(header(&out[0].1, "Call-ID"), call_id);
    assert_eq!(header(&out[0].1, "To"), "sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag");
    let out = send(&mut two, None, now, CALLER, &answer(&out[0].1, 200, "OK"));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].0, status(&out[0].1)), (CALLEE.parse().expect("addr"), 200));
    assert_eq!(header(&out[0].1, "Call-ID"), b_call_id);
    now += Duration::from_secs(40);
    two.handle(now, Input::Timeout);
    let _ = drain(&mut two, None, now);
    assert_eq!(
        (two.calls(), two.armed_timers()),
        (0, 0),
        "the call ended on the survivor, nothing left: {} transactions, {:?}",
        two.transactions(),
        two.stats()
    );
}

#[test]
fn a_replica_is_removed_with_its_call_and_never_overwrites_an_owner() {
    let start = Instant::now();
    let view = StripeMap::balanced(1, STRIPES, &[NodeId(1), NodeId(2)], 1, 2);
    let mut one = node(1, &view, start);
    let mut two = node(2, &view, start);
    // An OPTIONS answered by the server itself leaves no record: no replica either.
    let call_id = call_id_owned_by(&view, NodeId(1));
    let options = format!(
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKo1\r\n\
From: <sip:probe@{CALLER}>;tag=p\r\nTo: <sip:127.0.0.1:5060>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let out = send(&mut one, Some(&mut two), start, CALLER, &options);
    assert_eq!(status(&out[0].1), 200);
    let later = start + Duration::from_secs(40);
    one.handle(later, Input::Timeout);
    let _ = drain(&mut one, Some(&mut two), later);
    assert_eq!((one.calls(), two.calls()), (0, 0), "the removal reached the replica");
    assert!(two.stats().replicas_removed >= 1);

    // A copy for a stripe node 2 owns that does not decode is refused (a newer one that does
    // would be merged: see the test below).
    let mine = call_id_owned_by(&view, NodeId(2));
    let stripe = StripeId::of_call_id(mine.as_bytes(), STRIPES);
    let stale = sipshard_shards::table::Change {
        stripe,
        key: mine.as_bytes().into(),
        version: 9,
        hints: sipshard_shards::table::Hints::NONE,
        bytes: vec![1, 2, 3],
    };
    two.handle(later, Input::Replica(&stale));
    assert_eq!((two.calls(), two.stats().replicas_refused), (0, 1));
}

#[test]
fn a_call_the_new_owner_lacks_is_looked_up_from_a_peer_before_a_481() {
    let start = Instant::now();
    let now = start;
    let view = StripeMap::balanced(1, STRIPES, &[NodeId(1), NodeId(2)], 1, 2);
    // Lookups on, as the runtime runs a cluster.
    let with_lookup = |id| {
        let config = ShardConfig { lookup_before_481: true, ..shard_config(id, &view) };
        Shard::new(config, Proxy::new(b2bua_to_callee()), start)
    };
    let mut one = with_lookup(1);
    let mut two = with_lookup(2);
    let call_id = call_id_owned_by(&view, NodeId(1));
    let stripe = StripeId::of_call_id(call_id.as_bytes(), STRIPES);

    // A call set up on node 1 whose changes never reached node 2 (async, lost with a link).
    let invite = format!(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv2\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag\r\nTo: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@{CALLER}>\r\nMax-Forwards: 70\r\n\
Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    );
    let out = send(&mut one, None, now, CALLER, &invite);
    let b_invite = out[0].1.clone();
    let b_call_id = header(&b_invite, "Call-ID").to_owned();
    let b_from = header(&b_invite, "From").to_owned();
    let out = send(&mut one, None, now, CALLEE, &answer(&b_invite, 200, "OK"));
    assert_eq!(status(&out[0].1), 200);
    assert_eq!(two.calls(), 0, "node 2 holds no copy");

    // The stripe moves to node 2 (a hand-over); node 1 keeps the record, dormant.
    let moved = view.without(NodeId(1));
    one.handle(now, Input::View(&moved));
    let _ = drain(&mut one, None, now);
    two.handle(now, Input::View(&moved));
    let _ = drain(&mut two, None, now);
    assert_eq!((one.stats().records_deactivated, one.calls(), one.armed_timers()), (1, 1, 0));

    // The callee's BYE reaches node 2: parked, and a lookup asked instead of a 481.
    let bye = format!(
        "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbbye2\r\n\
From: service <sip:service@127.0.0.1:5060>;tag=callee-tag\r\nTo: {b_from}\r\nCall-ID: {b_call_id}\r\n\
CSeq: 7 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    two.handle(now, Input::Datagram { peer: udp(CALLEE), bytes: bye.as_bytes() });
    let asked = match two.poll_output() {
        Some(Output::Lookup { stripe: s, key }) => (s, key),
        other => panic!("expected a lookup, got {other:?}"),
    };
    assert_eq!(asked, (stripe, b_call_id.as_bytes().into()));
    assert!(two.poll_output().is_none(), "nothing sent while it waits");
    // Node 1 answers from its dormant copy, found by the B leg's Call-ID.
    let copy = one.lookup(stripe, b_call_id.as_bytes()).expect("node 1 has the call");
    assert_eq!(&*copy.key, call_id.as_bytes());
    two.handle(now, Input::LookupDone { stripe, key: b_call_id.as_bytes(), found: Some(&copy) });
    let out = drain(&mut two, None, now);
    assert_eq!(out.len(), 1, "the BYE is bridged to the caller: {out:?}");
    assert!(out[0].1.starts_with(&format!("BYE sip:sipp@{CALLER} SIP/2.0\r\n")), "{}", out[0].1);
    assert_eq!((two.stats().lookups, two.stats().lookups_found, two.stats().records_activated), (1, 1, 1));

    // A BYE for a call nobody holds: looked up, then 481.
    let stray = bye.replace(&b_call_id, "nobody-knows@test").replace("bbye2", "bbye3");
    two.handle(now, Input::Datagram { peer: udp(CALLEE), bytes: stray.as_bytes() });
    let Some(Output::Lookup { stripe: s, key }) = two.poll_output() else { panic!("a lookup") };
    two.handle(now, Input::LookupDone { stripe: s, key: &key, found: None });
    let out = drain(&mut two, None, now);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(status(&out[0].1), 481);
}

/// Hands `shard` a datagram; returns what it transmits and the changes it made (not delivered).
fn send_keeping_changes(
    shard: &mut Shard<Proxy>,
    now: Instant,
    from: &str,
    bytes: &str,
) -> (Vec<String>, Vec<sipshard_shards::table::Change>) {
    shard.handle(now, Input::Datagram { peer: udp(from), bytes: bytes.as_bytes() });
    let (mut sent, mut changes) = (Vec::new(), Vec::new());
    while let Some(output) = shard.poll_output() {
        match output {
            Output::Transmit { bytes, .. } => sent.push(String::from_utf8(bytes.to_vec()).expect("utf8")),
            Output::Replicate(change) => changes.push(change),
            _ => {}
        }
    }
    (sent, changes)
}

/// A partition: node 2 takes the stripe over while node 1, alive, goes on with the call. When
/// node 1's changes reach node 2 (the links are back), node 2, owner too, takes the newer copy
/// (live, with its version, sending nothing), refuses an older one, and ends its copy on a
/// newer removal.
#[test]
fn two_owners_of_a_stripe_keep_the_newer_copy_of_a_call() {
    let start = Instant::now();
    let view = StripeMap::balanced(1, STRIPES, &[NodeId(1), NodeId(2)], 1, 2);
    let mut one = node(1, &view, start);
    let mut two = node(2, &view, start);
    let call_id = call_id_owned_by(&view, NodeId(1));
    let invite = format!(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv3\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller-tag\r\nTo: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@{CALLER}>\r\nMax-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n"
    );
    let (sent, first) = send_keeping_changes(&mut one, start, CALLER, &invite);
    for change in &first {
        two.handle(start, Input::Replica(change));
    }
    assert_eq!(two.stats().replicas_installed, first.len() as u64);

    // The links go: node 2 declares node 1 dead and owns the call (node 1 still does too).
    two.handle(start, Input::View(&view.without(NodeId(1))));
    assert!(drain(&mut two, None, start).is_empty());
    assert_eq!(two.stats().records_activated, 1);
    // Node 1 goes on alone: the callee answers, the call is up there.
    let (sent, newer) = send_keeping_changes(&mut one, start, CALLEE, &answer(&sent[0], 200, "OK"));
    assert_eq!(status(&sent[0]), 200);

    // The links are back: node 1's newer copy wins on node 2; no echo, no message.
    let before = two.stats();
    for change in &newer {
        two.handle(start, Input::Replica(change));
        assert!(two.poll_output().is_none(), "a merged copy sends nothing and is not sent back");
    }
    let merged = two.stats().replicas_merged - before.replicas_merged;
    assert_eq!(merged, newer.len() as u64, "{:?}", two.stats());
    assert_eq!(two.calls(), 1);
    let kept = two.lookup(first[0].stripe, &first[0].key).expect("the call is held");
    assert_eq!(kept.version, newer.last().expect("a change").version, "it kept the version it came with");
    // An older copy (the INVITE's) is refused.
    let refused = two.stats().replicas_refused;
    two.handle(start, Input::Replica(&first[0]));
    assert_eq!(two.stats().replicas_refused, refused + 1);
    // A newer removal (the call ended on node 1) ends node 2's copy.
    let removal = sipshard_shards::table::Change { version: kept.version + 1, bytes: Vec::new(), ..kept.clone() };
    two.handle(start, Input::Replica(&removal));
    assert_eq!((two.calls(), two.armed_timers()), (0, 0), "removed, its timers cancelled");
}
