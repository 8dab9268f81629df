//! A pair of links wired back to back, with a fake clock: handshake,
//! delivery, acknowledgement, window, resend after reconnect, replays,
//! corruption, authentication and liveness.

use super::frame::{CHALLENGE_BYTES, PROOF_BYTES, encode};
use super::*;
use crate::stripe::{NodeId, ShardId, StripeId};
use crate::table::{Change, Hints};

const SECRET: &[u8] = b"correct horse battery staple";

fn config(node: u16, secret: &[u8], incarnation: u64) -> LinkConfig {
    LinkConfig::new(42, secret, NodeId(node), ShardId(1), incarnation, 0x5eed ^ u64::from(node) ^ incarnation << 8)
}

fn change(n: u64) -> Change {
    Change {
        stripe: StripeId(n as u32 % 1024),
        key: format!("call-{n}").as_bytes().into(),
        version: n,
        hints: Hints::NONE,
        bytes: vec![n as u8; 100],
    }
}

/// Node 1 (connecting) and node 2 (accepting), shard 1 of each.
struct Pair {
    a: ReplicaLink,
    b: ReplicaLink,
    now: u64,
    a_events: Vec<LinkEvent>,
    b_events: Vec<LinkEvent>,
}

impl Pair {
    fn new(a: LinkConfig, b: LinkConfig) -> Pair {
        let mut pair = Pair {
            a: ReplicaLink::new(a, Side::Connecting, NodeId(2)),
            b: ReplicaLink::new(b, Side::Accepting, NodeId(1)),
            now: 1_000,
            a_events: Vec::new(),
            b_events: Vec::new(),
        };
        pair.connect();
        pair
    }

    fn up() -> Pair {
        let pair = Pair::new(config(1, SECRET, 1), config(2, SECRET, 1));
        assert!(pair.a.is_up() && pair.b.is_up(), "a: {:?} b: {:?}", pair.a_events, pair.b_events);
        pair
    }

    fn connect(&mut self) {
        self.a.connected(self.now);
        self.b.connected(self.now);
        self.exchange();
    }

    fn disconnect(&mut self) {
        self.a.disconnected(self.now);
        self.b.disconnected(self.now);
    }

    /// Moves bytes both ways until both are quiet.
    fn exchange(&mut self) {
        loop {
            let (to_b, to_a) = (self.a.take_outbound(), self.b.take_outbound());
            if to_b.is_empty() && to_a.is_empty() {
                break;
            }
            self.b.receive(self.now, &to_b);
            self.a.receive(self.now, &to_a);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.a.tick(self.now);
        self.b.tick(self.now);
    }
}

fn delivered(events: &[LinkEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Delivered(r) => Some(r.seq),
            _ => None,
        })
        .collect()
}

fn closed(events: &[LinkEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Closed { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn changes_flow_both_ways_in_order_and_are_acknowledged() {
    let mut pair = Pair::up();
    let up = LinkEvent::Up { epoch: 0, restarted: false };
    assert!(pair.a_events.contains(&up) && pair.b_events.contains(&up));
    for n in 1..=3 {
        assert_eq!(pair.a.replicate(&change(n)), Ok(n));
    }
    pair.b.replicate(&change(100)).expect("queued");
    pair.exchange();
    assert_eq!(delivered(&pair.b_events), [1, 2, 3]);
    assert_eq!(delivered(&pair.a_events), [1]);
    let got = pair.b_events.iter().find_map(|e| match e {
        LinkEvent::Delivered(r) if r.seq == 2 => Some(r.change.clone()),
        _ => None,
    });
    assert_eq!(got, Some(change(2)), "the change arrives whole");
    assert!(pair.a_events.contains(&LinkEvent::Acked { seq: 3 }));
    assert_eq!((pair.a.unacked(), pair.a.acked(), pair.b.unacked()), (0, 3, 0));
}

#[test]
fn a_wrong_secret_fails_the_handshake_and_nothing_is_delivered() {
    let mut pair = Pair::new(config(1, SECRET, 1), config(2, b"another secret", 1));
    pair.a.replicate(&change(1)).expect("queued");
    pair.exchange();
    assert!(!pair.a.is_up() && !pair.b.is_up());
    assert_eq!(closed(&pair.a_events), ["node 2 failed authentication (shared secret?)"]);
    assert!(delivered(&pair.b_events).is_empty());
    // The accepting side, never proven to, gives up when the connection goes silent.
    pair.tick(600);
    pair.drain();
    assert!(pair.b_events.contains(&LinkEvent::PeerDead), "{:?}", pair.b_events);
    assert_eq!(pair.a.unacked(), 1, "the change waits for a proven peer");
}

#[test]
fn a_forged_proof_is_refused_by_the_accepting_side() {
    let mut b = ReplicaLink::new(config(2, SECRET, 1), Side::Accepting, NodeId(1));
    b.connected(0);
    let mut bytes = Vec::new();
    encode(
        &Frame::Hello {
            cluster: 42,
            node: NodeId(1),
            shard: ShardId(1),
            epoch: 0,
            incarnation: 9,
            challenge: [1; CHALLENGE_BYTES],
        },
        &mut bytes,
    );
    b.receive(0, &bytes);
    assert!(!b.take_outbound().is_empty(), "a Welcome");
    bytes.clear();
    encode(&Frame::Proof { proof: [0; PROOF_BYTES], received: 0 }, &mut bytes);
    b.receive(1, &bytes);
    assert!(!b.is_up());
    assert_eq!(
        b.poll_event(),
        Some(LinkEvent::Closed { reason: "node 1 failed authentication (shared secret?)".into() })
    );
}

#[test]
fn the_wrong_cluster_node_or_shard_is_refused_with_the_reason() {
    let mut other_cluster = config(2, SECRET, 1);
    other_cluster.cluster = 7;
    let pair = Pair::new(config(1, SECRET, 1), other_cluster);
    assert_eq!(closed(&pair.b_events), ["cluster id 42 is not ours (7)"]);

    let mut other_shard = config(2, SECRET, 1);
    other_shard.shard = ShardId(0);
    let pair = Pair::new(config(1, SECRET, 1), other_shard);
    assert_eq!(closed(&pair.b_events), ["shard 1 linked to shard 0"]);

    let mut a = ReplicaLink::new(config(3, SECRET, 1), Side::Connecting, NodeId(2));
    let mut b = ReplicaLink::new(config(2, SECRET, 1), Side::Accepting, NodeId(1));
    a.connected(0);
    b.connected(0);
    b.receive(0, &a.take_outbound());
    assert_eq!(b.poll_event(), Some(LinkEvent::Closed { reason: "node 3 answered where node 1 was expected".into() }));
}

#[test]
fn a_corrupted_frame_closes_the_link_and_is_not_delivered() {
    let mut pair = Pair::up();
    pair.a.replicate(&change(1)).expect("queued");
    let mut bytes = pair.a.take_outbound();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    pair.b.receive(pair.now, &bytes);
    pair.drain();
    assert!(!pair.b.is_up());
    assert_eq!(closed(&pair.b_events), ["bad frame from node 1: frame checksum mismatch"]);
    assert!(delivered(&pair.b_events).is_empty());
    // Reconnected, the change goes again and arrives once.
    pair.disconnect();
    pair.connect();
    assert_eq!(delivered(&pair.b_events), [1]);
    assert_eq!(pair.a.stats().changes_resent, 1);
}

#[test]
fn a_replayed_change_is_ignored() {
    let mut pair = Pair::up();
    pair.a.replicate(&change(1)).expect("queued");
    let bytes = pair.a.take_outbound();
    pair.b.receive(pair.now, &bytes);
    pair.b.receive(pair.now, &bytes);
    pair.exchange();
    assert_eq!(delivered(&pair.b_events), [1]);
    assert_eq!(pair.b.stats().duplicates_ignored, 1);
    assert!(pair.b.is_up(), "a replay is not an attack on the link itself");
}

#[test]
fn after_a_reconnect_only_what_the_peer_lacks_is_resent() {
    let mut pair = Pair::up();
    for n in 1..=5 {
        pair.a.replicate(&change(n)).expect("queued");
    }
    // Changes 1-3 arrive; 4 and 5 and every Ack are lost with the connection.
    let bytes = pair.a.take_outbound();
    let mut cut = 0;
    let mut frames = 0;
    while frames < 3 {
        let (_, len) = super::frame::decode(&bytes[cut..]).expect("frame").expect("whole");
        cut += len;
        frames += 1;
    }
    pair.b.receive(pair.now, &bytes[..cut]);
    let _lost_acks = pair.b.take_outbound();
    pair.disconnect();
    pair.tick(100);
    pair.connect();
    assert_eq!(delivered(&pair.b_events), [1, 2, 3, 4, 5], "each once, in order");
    assert_eq!(pair.a.stats().changes_resent, 2, "only 4 and 5 went again");
    assert_eq!(pair.a.unacked(), 0);
}

#[test]
fn the_window_bounds_changes_in_flight() {
    let mut a_config = config(1, SECRET, 1);
    a_config.window = 2;
    let mut pair = Pair::new(a_config, config(2, SECRET, 1));
    for n in 1..=5 {
        pair.a.replicate(&change(n)).expect("queued");
    }
    let first = pair.a.take_outbound();
    let mut in_flight = 0;
    let mut at = 0;
    while let Ok(Some((_, len))) = super::frame::decode(&first[at..]) {
        at += len;
        in_flight += 1;
    }
    assert_eq!(in_flight, 2);
    pair.b.receive(pair.now, &first);
    pair.exchange();
    assert_eq!(delivered(&pair.b_events), [1, 2, 3, 4, 5]);
}

#[test]
fn a_full_queue_refuses_more_changes() {
    let mut a_config = config(1, SECRET, 1);
    a_config.max_queued = 3;
    let mut link = ReplicaLink::new(a_config, Side::Connecting, NodeId(2));
    for n in 1..=3 {
        link.replicate(&change(n)).expect("room");
    }
    assert_eq!(link.replicate(&change(4)), Err(LinkError::Full(3)));
}

#[test]
fn heartbeats_keep_a_quiet_link_alive_and_silence_kills_it_once() {
    let mut pair = Pair::up();
    for _ in 0..50 {
        pair.tick(100);
        pair.exchange();
    }
    assert!(!pair.a_events.contains(&LinkEvent::PeerDead) && pair.a.is_up(), "5 s of heartbeats");
    // The peer goes silent (its bytes are lost): dead 600 ms after it was last heard.
    let heard = pair.now;
    let mut dead_at = None;
    for _ in 0..20 {
        pair.tick(50);
        let _ = pair.b.take_outbound();
        let to_b = pair.a.take_outbound();
        pair.b.receive(pair.now, &to_b);
        pair.drain();
        if dead_at.is_none() && pair.a_events.contains(&LinkEvent::PeerDead) {
            dead_at = Some(pair.now);
        }
    }
    assert_eq!(dead_at, Some(heard + 600));
    assert_eq!(pair.a_events.iter().filter(|e| **e == LinkEvent::PeerDead).count(), 1);
    assert_eq!(closed(&pair.a_events), ["node 2 silent for 600 ms"]);
}

#[test]
fn a_restarted_peer_gets_every_unacknowledged_change_and_numbers_its_own_from_one() {
    let mut pair = Pair::up();
    pair.b.replicate(&change(50)).expect("queued");
    pair.exchange();
    pair.a.replicate(&change(1)).expect("queued");
    pair.a.replicate(&change(2)).expect("queued");
    let _lost = pair.a.take_outbound();
    // Node 2 dies and comes back (a new incarnation, nothing received).
    pair.a.disconnected(pair.now);
    pair.b = ReplicaLink::new(config(2, SECRET, 2), Side::Accepting, NodeId(1));
    pair.b_events.clear();
    pair.connect();
    assert_eq!(delivered(&pair.b_events), [1, 2]);
    pair.b.replicate(&change(51)).expect("queued");
    pair.exchange();
    assert_eq!(delivered(&pair.a_events), [1, 1], "its first change, then the new incarnation's first");
}

#[test]
fn protocol_violations_close_the_link() {
    let mut pair = Pair::up();
    let mut bytes = Vec::new();
    encode(&Frame::Change { seq: 5, stripe: 0, key: b"k".to_vec(), version: 1, hints: 0, record: vec![] }, &mut bytes);
    pair.b.receive(pair.now, &bytes);
    pair.drain();
    assert_eq!(closed(&pair.b_events), ["change 5 from node 1 after 0: a gap"]);

    let mut pair = Pair::up();
    bytes.clear();
    encode(&Frame::Ack { seq: 9 }, &mut bytes);
    pair.a.receive(pair.now, &bytes);
    pair.drain();
    assert_eq!(closed(&pair.a_events), ["node 2 acknowledged change 9, never sent"]);

    let mut pair = Pair::up();
    bytes.clear();
    encode(&Frame::Proof { proof: [0; PROOF_BYTES], received: 0 }, &mut bytes);
    pair.a.receive(pair.now, &bytes);
    pair.drain();
    assert_eq!(closed(&pair.a_events), ["unexpected Proof from node 2 in state Up"]);
}

#[test]
fn the_next_deadline_is_the_heartbeat_or_the_dead_check() {
    let mut pair = Pair::up();
    assert_eq!(pair.a.poll_timeout(), Some(pair.now + 200), "heartbeat first");
    pair.disconnect();
    assert_eq!(pair.a.poll_timeout(), Some(pair.now + 600), "down: only the dead check");
    let idle = ReplicaLink::new(config(1, SECRET, 1), Side::Connecting, NodeId(2));
    assert_eq!(idle.poll_timeout(), None, "never connected: nothing to wait for");
}

#[test]
fn sip_messages_are_forwarded_while_up_and_dropped_and_counted_while_down() {
    let mut pair = Pair::up();
    let ua: std::net::SocketAddr = "127.0.0.9:5061".parse().expect("addr");
    assert!(pair.a.forward(ua, false, b"BYE sip:bob@b SIP/2.0\r\n\r\n"));
    pair.exchange();
    let got: Vec<_> = pair.b_events.iter().filter(|e| matches!(e, LinkEvent::Forwarded { .. })).collect();
    assert_eq!(
        got,
        [&LinkEvent::Forwarded { from: ua, tcp: false, message: b"BYE sip:bob@b SIP/2.0\r\n\r\n".to_vec() }]
    );
    assert_eq!((pair.a.stats().forwards_sent, pair.b.stats().forwards_received), (1, 1));
    pair.disconnect();
    assert!(!pair.a.forward(ua, true, b"INVITE"));
    assert_eq!(pair.a.stats().forwards_dropped, 1);
    assert!(pair.a.take_outbound().is_empty(), "nothing written for a down link");
}

#[test]
fn a_message_for_the_peers_connection_is_passed_while_up_and_counted_when_dropped() {
    let mut pair = Pair::up();
    let ua: std::net::SocketAddr = "127.0.0.9:40000".parse().expect("addr");
    assert!(pair.b.send_to_connection(ua, b"SIP/2.0 200 OK\r\n\r\n"));
    pair.exchange();
    let got: Vec<_> = pair.a_events.iter().filter(|e| matches!(e, LinkEvent::Send { .. })).collect();
    assert_eq!(got, [&LinkEvent::Send { to: ua, message: b"SIP/2.0 200 OK\r\n\r\n".to_vec() }]);
    assert_eq!((pair.b.stats().sends_sent, pair.a.stats().sends_received), (1, 1));
    pair.disconnect();
    assert!(!pair.b.send_to_connection(ua, b"SIP/2.0 180 Ringing"));
    assert_eq!(pair.b.stats().sends_dropped, 1);
}

#[test]
fn a_view_reaches_the_peer_while_up() {
    let mut pair = Pair::up();
    let view = crate::stripe::StripeMap::balanced(7, 64, &[NodeId(1), NodeId(2)], 2, 2);
    assert!(pair.a.send_view(&view));
    pair.exchange();
    assert!(pair.b_events.contains(&LinkEvent::View(view.clone())), "{:?}", pair.b_events);
    pair.disconnect();
    assert!(!pair.a.send_view(&view), "nothing sent on a down link");
}

#[test]
fn a_restarted_peer_gets_what_is_queued_numbered_from_where_it_is_not_a_gap() {
    let mut pair = Pair::up();
    for n in 1..=3 {
        pair.a.replicate(&change(n)).expect("queued");
    }
    pair.exchange();
    assert_eq!(pair.a.acked(), 3);
    pair.a.replicate(&change(4)).expect("queued");
    pair.a.replicate(&change(5)).expect("queued");
    let _lost = pair.a.take_outbound();
    // Node 2 restarts: it acknowledged 3 changes in its last life and has none now.
    pair.a.disconnected(pair.now);
    pair.b = ReplicaLink::new(config(2, SECRET, 2), Side::Accepting, NodeId(1));
    pair.b_events.clear();
    pair.connect();
    assert!(closed(&pair.b_events).is_empty() && closed(&pair.a_events).is_empty(), "{:?}", pair.b_events);
    assert_eq!(delivered(&pair.b_events), [1, 2], "changes 4 and 5, renumbered for the new life");
    assert!(pair.a_events.contains(&LinkEvent::Up { epoch: 0, restarted: true }), "{:?}", pair.a_events);
    let got: Vec<u64> = pair
        .b_events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Delivered(r) => Some(r.change.version),
            _ => None,
        })
        .collect();
    assert_eq!(got, [4, 5]);
    assert_eq!((pair.a.acked(), pair.a.unacked(), pair.a.renumberings()), (2, 0, 1));
    pair.a.replicate(&change(6)).expect("queued");
    pair.exchange();
    assert_eq!(delivered(&pair.b_events), [1, 2, 3]);
}

#[test]
fn a_lookup_is_answered_with_the_copy_or_nothing() {
    let mut pair = Pair::up();
    assert!(pair.a.send_lookup(9, StripeId(5), b"call-5"));
    pair.exchange();
    let asked = pair.b_events.iter().find_map(|e| match e {
        LinkEvent::Lookup { id, stripe, key } => Some((*id, *stripe, key.clone())),
        _ => None,
    });
    assert_eq!(asked, Some((9, StripeId(5), b"call-5".to_vec())));
    pair.b.send_lookup_reply(9, Some(&change(5)));
    pair.b.send_lookup_reply(10, None);
    pair.exchange();
    type Copy = (Vec<u8>, u64, Vec<u8>);
    let replies: Vec<(u64, Option<Copy>)> = pair
        .a_events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::LookupReply { id, found } => {
                Some((*id, found.as_ref().map(|c| (c.key.to_vec(), c.version, c.bytes.clone()))))
            }
            _ => None,
        })
        .collect();
    let c = change(5);
    assert_eq!(replies, [(9, Some((c.key.to_vec(), c.version, c.bytes))), (10, None)]);
}
