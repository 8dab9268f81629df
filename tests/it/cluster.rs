//! Deterministic Cluster scenarios for the shard core (fake clock, seeded
//! links, no sockets): stripe routing across nodes and shards, a long lossy
//! run that must leave no transaction, timer or record behind, and a node
//! killed mid-flight with replication on.

use sipshard_shards::shard::Transport;
use sipshard_shards::testing::{Cluster, LinkConfig, Outcome, Responder, Rng, request};
use sipshard_shards::{NodeId, ShardId, StripeId};

#[test]
fn every_message_of_a_call_is_processed_by_its_stripe_owner() {
    let mut cluster = Cluster::new(3, 2, 7, LinkConfig::default(), Responder::default);
    let ua = cluster.add_uac(Transport::Udp);
    let from = cluster.uas[ua].peer.addr;
    let mut rng = Rng::new(99);
    let calls: Vec<String> = (0..200).map(|i| format!("call-{i}@routing.test")).collect();
    for (i, call_id) in calls.iter().enumerate() {
        for (n, method) in ["OPTIONS", "MESSAGE", "INFO"].iter().enumerate() {
            // Whatever node and shard receive it...
            let node = NodeId(rng.below(3) as u16);
            let shard = ShardId(rng.below(2) as u16);
            let bytes = request(method, from, call_id, n as u32 + 1, &format!("{i}x{n}"));
            cluster.start_request(ua, node, shard, bytes);
        }
    }
    cluster.drive(60_000);

    // ...only the stripe's owner ran the transaction user for it.
    let map = cluster.stripe_map().clone();
    let mut owners_seen = std::collections::HashSet::new();
    for call_id in &calls {
        let owner = map.owner(StripeId::of_call_id(call_id.as_bytes(), map.stripe_count()));
        owners_seen.insert((owner.node, owner.shard));
        let handled: Vec<(NodeId, ShardId)> = cluster
            .nodes
            .iter()
            .flatten()
            .flat_map(|s| s.tu().handled.get(call_id).cloned().unwrap_or_default())
            .collect();
        assert_eq!(handled.len(), 3, "{call_id}: every request reached a TU once");
        assert!(
            handled.iter().all(|&h| h == (owner.node, owner.shard)),
            "{call_id}: handled by {handled:?}, owner {owner:?}"
        );
    }
    assert_eq!(owners_seen.len(), 6, "the calls spread over all 3 x 2 shards");
    let stats: Vec<_> = cluster.nodes.iter().flatten().map(|s| s.stats()).collect();
    assert!(stats.iter().map(|s| s.forwarded_to_node).sum::<u64>() > 0);
    assert!(stats.iter().map(|s| s.forwarded_to_shard).sum::<u64>() > 0);
    assert_eq!(stats.iter().map(|s| s.transactions_created).sum::<u64>(), 600);
    assert!(cluster.uas[ua].outcomes().all(|(_, o)| o == Some(Outcome::Final(200))));
}

#[test]
fn ten_thousand_transactions_over_a_lossy_link_leave_nothing_behind() {
    let link = LinkConfig { loss: 0.15, duplicate: 0.05, reorder: 0.1, reorder_ms: 300, delay_ms: 5 };
    let mut cluster = Cluster::new(2, 2, 2026, link, Responder::default);
    let ua = cluster.add_uac(Transport::Udp);
    let from = cluster.uas[ua].peer.addr;
    let mut rng = Rng::new(5);
    let total = 10_000;
    for i in 0..total {
        // An INVITE in five is refused (486): the ACK and timers G/H/I run too.
        let method = if i % 5 == 0 { "INVITE" } else { "OPTIONS" };
        let bytes = request(method, from, &format!("lossy-{i}@test"), 1, &format!("b{i}"));
        cluster.start_request(ua, NodeId(rng.below(2) as u16), ShardId(rng.below(2) as u16), bytes);
        if i % 100 == 99 {
            // 100 new transactions every 50 ms of fake time (2,000 per second).
            let until = cluster.now_ms() + 50;
            cluster.drive(until);
        }
    }
    // Longer than any transaction can live: 64*T1 + T4 + the worst delay, twice.
    let until = cluster.now_ms() + 2 * (32_000 + 5_000 + 1_000);
    cluster.drive(until);

    let outcomes: Vec<Option<Outcome>> = cluster.uas[ua].outcomes().map(|(_, o)| o).collect();
    assert_eq!(outcomes.len(), total);
    let ok = outcomes.iter().filter(|o| matches!(o, Some(Outcome::Final(200 | 486)))).count();
    assert_eq!(ok, total, "every transaction got its final response despite {} lost datagrams", cluster.lost);
    assert!(cluster.lost > 1_000, "the link really lost datagrams ({})", cluster.lost);
    assert_eq!(cluster.uas[ua].live(), 0, "no client transaction stuck");
    for shard in cluster.nodes.iter().flatten() {
        assert_eq!(shard.transactions(), 0, "no server transaction stuck");
        assert_eq!(shard.calls(), 0, "no call record left");
        assert_eq!(shard.armed_timers(), 0, "no timer left");
        assert!(shard.stats().retransmissions_received > 0);
    }
    assert_eq!(cluster.in_flight(), 0);
    let created: u64 = cluster.nodes.iter().flatten().map(|s| s.stats().transactions_created).sum();
    let ended: u64 = cluster.nodes.iter().flatten().map(|s| s.stats().transactions_ended).sum();
    assert_eq!(created, ended);
    assert_eq!(created, total as u64);
}

/// 3 nodes × 2 shards with replication over a lossy UA link: transactions are in flight on
/// every node when node 1 is killed and its address moves to node 2. Every transaction still
/// ends with its final response (none stuck, none lost), and no request reaches a transaction
/// user twice: a retransmission that lands on the survivor matches the replicated transaction
/// instead of starting a new one.
#[test]
fn a_killed_node_loses_no_transaction_and_runs_no_request_twice() {
    let link = LinkConfig { loss: 0.2, duplicate: 0.05, reorder: 0.1, reorder_ms: 200, delay_ms: 5 };
    let mut cluster = Cluster::replicated(3, 2, 31, link, Responder::default);
    let ua = cluster.add_uac(Transport::Udp);
    let from = cluster.uas[ua].peer.addr;
    let mut rng = Rng::new(8);
    let total = 900;
    for i in 0..total {
        let method = if i % 3 == 0 { "INVITE" } else { "MESSAGE" };
        let bytes = request(method, from, &format!("failover-{i}@test"), 1, &format!("f{i}"));
        cluster.start_request(ua, NodeId(rng.below(3) as u16), ShardId(rng.below(2) as u16), bytes);
    }
    // Mid-flight: lost datagrams are being retransmitted, some answers are on their way.
    cluster.drive(700);
    let before: u64 = cluster.nodes[1].iter().map(|s| s.stats().transactions_created).sum();
    assert!(before > 100, "node 1 was serving transactions when it died ({before})");
    cluster.kill(NodeId(1), NodeId(2));
    let taken: u64 = [0, 2].iter().flat_map(|&n| cluster.nodes[n].iter()).map(|s| s.stats().records_activated).sum();
    assert!(taken > 0, "the survivors activated node 1's replicated transactions");
    cluster.drive(cluster.now_ms() + 2 * (32_000 + 5_000 + 1_000));

    let outcomes: Vec<Option<Outcome>> = cluster.uas[ua].outcomes().map(|(_, o)| o).collect();
    let answered = outcomes.iter().filter(|o| matches!(o, Some(Outcome::Final(200 | 486)))).count();
    assert_eq!(answered, total, "every transaction got its final response ({} datagrams lost)", cluster.lost);
    assert_eq!(cluster.uas[ua].live(), 0, "no client transaction stuck");
    for i in 0..total {
        let call_id = format!("failover-{i}@test");
        let handled: usize =
            cluster.nodes.iter().flatten().map(|s| s.tu().handled.get(&call_id).map_or(0, Vec::len)).sum();
        assert_eq!(handled, 1, "{call_id} reached a transaction user {handled} times");
    }
    for n in [0, 2] {
        for shard in &cluster.nodes[n] {
            assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (0, 0, 0), "node {n}");
        }
    }
}
