//! The shard's edges over its public API: failed sends reported back, and the
//! per-call transaction limit.

use std::time::Instant;

/// §17.2.4: when the driver cannot send a response, the server transaction ends and
/// the transaction user hears of it.
#[test]
fn a_failed_send_ends_the_transaction_and_reaches_the_tu() {
    use sipshard_shards::shard::{
        Decision, FinalResponse, Input, Message, Output, Peer, RequestContext, Shard, ShardConfig, TransactionUser,
        Transport,
    };

    #[derive(Default)]
    struct Counting {
        failures: u32,
    }
    impl TransactionUser for Counting {
        fn on_request(&mut self, _: &RequestContext, _: &Message<'_>) -> Decision {
            FinalResponse::new(486, "Busy Here").into()
        }
        fn on_failure(&mut self, call_id: &[u8]) {
            assert_eq!(call_id, b"unreachable@test");
            self.failures += 1;
        }
    }
    let config = ShardConfig::standalone(8);
    let start = Instant::now();
    let mut shard = Shard::new(config, Counting::default(), start);
    let peer = Peer { addr: "127.0.0.1:5060".parse().unwrap(), transport: Transport::Tcp };
    let invite = sipshard_shards::testing::request("INVITE", peer.addr, "unreachable@test", 1, "1");
    shard.handle(start, Input::Datagram { peer, bytes: &invite });
    let Some(Output::Transmit { bytes: response, .. }) = shard.poll_output() else { panic!("a 486 is sent") };
    assert_eq!(shard.transactions(), 1, "waiting for the ACK (timer H)");
    shard.handle(start, Input::TransportError { peer, bytes: &response });
    assert_eq!(shard.tu().failures, 1);
    assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (0, 0, 0));
    assert_eq!(shard.stats().transaction_failures, 1);
}

/// A call holding its maximum of live transactions gets 503 for one more, and its
/// record is not touched (no new version, no change on the feed).
#[test]
fn a_call_at_its_transaction_limit_gets_503_and_stays_unchanged() {
    use sipshard_shards::shard::{Input, MAX_TXNS_PER_CALL, Output, Peer, Shard, ShardConfig, Transport};
    use sipshard_shards::testing::{FuzzAnswer, request};

    let start = Instant::now();
    let mut shard = Shard::new(ShardConfig { replicate: true, ..ShardConfig::standalone(8) }, FuzzAnswer, start);
    let peer = Peer { addr: "127.0.0.1:5060".parse().unwrap(), transport: Transport::Udp };
    let mut changes = 0;
    for n in 0..=MAX_TXNS_PER_CALL {
        let bytes = request("OPTIONS", peer.addr, "busy@test", n as u32 + 1, &format!("n{n}"));
        shard.handle(start, Input::Datagram { peer, bytes: &bytes });
        let mut last_response = Vec::new();
        while let Some(output) = shard.poll_output() {
            match output {
                Output::Transmit { bytes, .. } => last_response = bytes.to_vec(),
                Output::Replicate(_) => changes += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        if n == MAX_TXNS_PER_CALL {
            assert!(last_response.starts_with(b"SIP/2.0 503 "), "{}", String::from_utf8_lossy(&last_response));
            assert!(String::from_utf8_lossy(&last_response).contains("Retry-After: 5\r\n"));
        }
    }
    assert_eq!(changes, MAX_TXNS_PER_CALL, "one change per transaction created, none for the refusal");
    assert_eq!(shard.transactions(), MAX_TXNS_PER_CALL);
}

/// The usual end of a record, a lone server transaction's last timer (J for OPTIONS, I for an
/// INVITE answered 486 and ACKed), removes it as the general path would: one removal on the
/// change feed with the next version, no transaction, call, timer or index entry left; and
/// until then a retransmission is still answered from the transaction, with no new version.
#[test]
fn a_lone_transaction_ends_its_record_with_one_removal() {
    use std::time::Duration;

    use sipshard_shards::shard::{Input, Output, Peer, Shard, ShardConfig, Transport};
    use sipshard_shards::table::Hints;
    use sipshard_shards::testing::{BusyInvites, request};

    let start = Instant::now();
    let mut shard = Shard::new(ShardConfig { replicate: true, ..ShardConfig::standalone(8) }, BusyInvites, start);
    let peer = Peer { addr: "127.0.0.1:5060".parse().unwrap(), transport: Transport::Udp };
    let drain = |shard: &mut Shard<BusyInvites>| {
        let (mut sent, mut changes) = (0, Vec::new());
        while let Some(output) = shard.poll_output() {
            match output {
                Output::Transmit { .. } => sent += 1,
                Output::Replicate(change) => changes.push(change),
                other => panic!("unexpected {other:?}"),
            }
        }
        (sent, changes)
    };
    let options = request("OPTIONS", peer.addr, "lone-options@test", 1, "o1");
    let invite = request("INVITE", peer.addr, "lone-invite@test", 1, "i1");
    let ack = request("ACK", peer.addr, "lone-invite@test", 1, "i1");
    for bytes in [&options, &invite] {
        shard.handle(start, Input::Datagram { peer, bytes });
        let (sent, changes) = drain(&mut shard);
        assert_eq!((sent, changes.len()), (1, 1), "answered, one check-in");
    }
    shard.handle(start, Input::Datagram { peer, bytes: &options });
    assert_eq!(
        drain(&mut shard),
        (1, Vec::new()),
        "a retransmission is answered from the transaction, and changes nothing to replicate"
    );
    shard.handle(start, Input::Datagram { peer, bytes: &ack });
    let (_, acked) = drain(&mut shard);
    assert_eq!(acked.len(), 1, "the ACK confirms the INVITE transaction (timer I armed)");
    assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (2, 2, 2), "both records wait for J and I");

    shard.handle(start + Duration::from_secs(40), Input::Timeout);
    let (sent, removals) = drain(&mut shard);
    assert_eq!(sent, 0);
    let mut keys: Vec<&[u8]> = removals.iter().map(|c| &*c.key).collect();
    keys.sort();
    assert_eq!(keys, [&b"lone-invite@test"[..], b"lone-options@test"], "one removal per record");
    for change in &removals {
        assert!(change.bytes.is_empty() && change.hints.contains(Hints::REMOVED), "{change:?}");
        assert!(!change.hints.contains(Hints::CALL_ENDED), "no dialog ended");
    }
    let version_of = |key: &[u8]| removals.iter().find(|c| &*c.key == key).map(|c| c.version);
    // Each check-in made a version (the OPTIONS one, the INVITE's two: answered, ACKed); the removal is the next.
    assert_eq!((version_of(b"lone-options@test"), version_of(b"lone-invite@test")), (Some(2), Some(3)));
    assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (0, 0, 0));
    assert_eq!(shard.stats().transactions_ended, 2);
}

/// A timer finds its call through the wheel entry alone (no index of transactions): a Call-ID
/// too long to be held inline (a shared key) gets its 486 retransmitted by timer G (the record
/// checked out and back in) and its transaction ended by timer H, as a short one does.
#[test]
fn timers_find_their_call_whether_its_key_is_inline_or_shared() {
    use std::time::Duration;

    use sipshard_shards::shard::{Input, Output, Peer, Shard, ShardConfig, Transport};
    use sipshard_shards::table::INLINE_CALL_KEY;
    use sipshard_shards::testing::{BusyInvites, request};

    let start = Instant::now();
    let mut shard = Shard::new(ShardConfig::standalone(8), BusyInvites, start);
    let peer = Peer { addr: "127.0.0.1:5060".parse().unwrap(), transport: Transport::Udp };
    let long = format!("{}@phone.example.com", "a1b2c3d4".repeat(8));
    assert!(long.len() > INLINE_CALL_KEY && "short@test".len() <= INLINE_CALL_KEY);
    let sent = |shard: &mut Shard<BusyInvites>| {
        let mut responses = Vec::new();
        while let Some(output) = shard.poll_output() {
            let Output::Transmit { bytes, .. } = output else { panic!("unexpected {output:?}") };
            responses.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        responses
    };
    for (call_id, branch) in [(long.as_str(), "l1"), ("short@test", "s1")] {
        shard.handle(start, Input::Datagram { peer, bytes: &request("INVITE", peer.addr, call_id, 1, branch) });
        assert!(sent(&mut shard)[0].starts_with("SIP/2.0 486 "), "{call_id} answered");
    }
    assert_eq!((shard.transactions(), shard.armed_timers()), (2, 4), "timers G and H of each");
    // Timer G (T1): each 486 again, from its own record.
    shard.handle(start + Duration::from_millis(500), Input::Timeout);
    let again = sent(&mut shard);
    assert_eq!(again.len(), 2, "{again:?}");
    for call_id in [long.as_str(), "short@test"] {
        assert!(again.iter().any(|r| r.starts_with("SIP/2.0 486 ") && r.contains(call_id)), "{call_id}: {again:?}");
    }
    assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (2, 2, 4), "G re-armed, H waits");
    // Timer H (64·T1): no ACK came; both transactions end, and their records with them.
    shard.handle(start + Duration::from_secs(33), Input::Timeout);
    sent(&mut shard);
    assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (0, 0, 0));
    assert_eq!(shard.stats().transactions_ended, 2);
}

/// §17.2.3: the ACK of a 486 matches its INVITE's transaction whether its Via is the INVITE's
/// bytes or written otherwise with the same branch and sent-by; a CANCEL with the INVITE's very
/// Via is a transaction of its own (the method is part of the key).
#[test]
fn an_ack_matches_its_invite_by_branch_and_sent_by_and_a_cancel_with_the_same_via_does_not() {
    use sipshard_shards::shard::{Input, Output, Peer, Shard, ShardConfig, Transport};
    use sipshard_shards::testing::{BusyInvites, request};

    let start = Instant::now();
    let mut shard = Shard::new(ShardConfig::standalone(8), BusyInvites, start);
    let peer = Peer { addr: "127.0.0.1:5062".parse().unwrap(), transport: Transport::Udp };
    let responses = |shard: &mut Shard<BusyInvites>| {
        std::iter::from_fn(|| shard.poll_output())
            .filter_map(|o| match o {
                Output::Transmit { bytes, .. } => Some(String::from_utf8(bytes.to_vec()).expect("utf8")),
                _ => None,
            })
            .map(|r| r.lines().next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let invite = |call: &str, shard: &mut Shard<BusyInvites>| {
        let bytes = request("INVITE", peer.addr, call, 1, "i1");
        shard.handle(start, Input::Datagram { peer, bytes: &bytes });
        assert_eq!(responses(shard), ["SIP/2.0 486 Busy Here"]);
    };

    // The same Via bytes: absorbed, the transaction confirmed (timer I only).
    invite("same-via@test", &mut shard);
    let ack = request("ACK", peer.addr, "same-via@test", 1, "i1");
    shard.handle(start, Input::Datagram { peer, bytes: &ack });
    assert_eq!(responses(&mut shard), Vec::<String>::new());
    assert_eq!((shard.transactions(), shard.armed_timers()), (1, 1), "timers G and H gone, I armed");

    // The parameters the other way round: other bytes, the same key.
    invite("other-via@test", &mut shard);
    let ack = String::from_utf8(request("ACK", peer.addr, "other-via@test", 1, "i1")).expect("utf8");
    let reordered = ack.replace(";branch=z9hG4bKi1;rport", ";rport;branch=z9hG4bKi1");
    assert_ne!(reordered, ack);
    shard.handle(start, Input::Datagram { peer, bytes: reordered.as_bytes() });
    assert_eq!(responses(&mut shard), Vec::<String>::new());
    assert_eq!((shard.transactions(), shard.armed_timers()), (2, 2), "the second INVITE confirmed too");

    // A CANCEL with the INVITE's Via is a transaction of its own, answered; the INVITE's 486
    // is not sent again.
    invite("cancelled@test", &mut shard);
    let cancel = request("CANCEL", peer.addr, "cancelled@test", 1, "i1");
    shard.handle(start, Input::Datagram { peer, bytes: &cancel });
    assert_eq!(responses(&mut shard), ["SIP/2.0 200 OK"]);
    assert_eq!(shard.stats().retransmissions_received, 0);
}

/// Keep-alives (a datagram of CRLFs, an empty one, a NUL: what phones behind a NAT send every few
/// seconds) are counted as such, not as malformed, and answered with nothing.
#[test]
fn keep_alive_datagrams_are_counted_and_not_malformed() {
    use sipshard_shards::shard::{Input, Peer, Shard, ShardConfig, Transport};
    use sipshard_shards::testing::BusyInvites;

    let start = Instant::now();
    let mut shard = Shard::new(ShardConfig::standalone(8), BusyInvites, start);
    let peer = Peer { addr: "127.0.0.1:5060".parse().unwrap(), transport: Transport::Udp };
    for bytes in [&b"\r\n\r\n"[..], b"\r\n", b"", b"\0", b"junk\r\n\r\n"] {
        shard.handle(start, Input::Datagram { peer, bytes });
        assert!(shard.poll_output().is_none(), "{bytes:?} answered");
    }
    let stats = shard.stats();
    assert_eq!((stats.keepalives_received, stats.dropped_malformed), (4, 1), "{stats:?}");
}
