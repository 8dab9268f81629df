//! Deterministic Cluster scenarios with whole calls (fake clock, seeded lossy UA
//! links, no sockets): 3 nodes × 2 shards with replication, the proxy and the
//! B2BUA as transaction users, a callee that answers. Calls are set up, a node
//! is killed (its address moves to a survivor, as a floating IP would), and
//! every established call still takes a re-INVITE and ends with a BYE the
//! callee sees; calls in setup when it died end with a final response; a
//! killed node that comes back gets its stripes handed back with transactions
//! in flight.

use std::net::SocketAddr;

use sipshard_shards::proxy::{Proxy, ProxyConfig, RouteTarget};
use sipshard_shards::shard::Transport;
use sipshard_shards::testing::{Cluster, LinkConfig, Outcome, Rng};
use sipshard_shards::{NodeId, ShardId};

const NODES: u16 = 3;

/// The UA links: some loss, duplication and reordering, 2 ms one way.
const LOSSY: LinkConfig = LinkConfig { loss: 0.05, duplicate: 0.02, reorder: 0.05, reorder_ms: 100, delay_ms: 2 };

/// A proxy (or B2BUA) on every shard: every node's address is its own, the callee is the default route.
fn role(b2bua: bool) -> impl FnMut() -> Proxy + 'static {
    move || {
        Proxy::new(ProxyConfig {
            default_route: Some(RouteTarget::parse("sip:10.2.0.1:5060").expect("route parses")),
            record_route: true,
            b2bua,
            aliases: (0..NODES).map(|n| Cluster::<Proxy>::address_of(NodeId(n))).collect(),
            ..ProxyConfig::default()
        })
    }
}

fn invite(from: SocketAddr, call_id: &str, branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:callee@sipshard.test SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:caller@client.test>;tag=c{branch}\r\nTo: <sip:callee@sipshard.test>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{from}>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Starts `count` calls from UA `ua`, each to a random node and shard; returns their Call-IDs.
fn place_calls(cluster: &mut Cluster<Proxy>, ua: usize, rng: &mut Rng, tag: &str, count: usize) -> Vec<String> {
    let from = cluster.uas[ua].peer.addr;
    (0..count)
        .map(|i| {
            let call_id = format!("{tag}-{i}@cluster.test");
            let (node, shard) = (NodeId(rng.below(u64::from(NODES)) as u16), ShardId(rng.below(2) as u16));
            cluster.start_request(ua, node, shard, invite(from, &call_id, &format!("{tag}{i}")));
            call_id
        })
        .collect()
}

/// Sends `method` (CSeq `cseq`) in every dialog UA `ua` set up; returns the new branches.
fn in_every_dialog(cluster: &mut Cluster<Proxy>, ua: usize, method: &str, cseq: u32) -> Vec<String> {
    let dialogs: Vec<(String, Vec<u8>, Vec<u8>)> =
        cluster.uas[ua].dialogs().map(|(b, i, o)| (b.to_owned(), i.to_vec(), o.to_vec())).collect();
    dialogs
        .iter()
        .map(|(branch, invite, ok)| {
            let new_branch = format!("{branch}-{method}");
            assert!(cluster.send_in_dialog(ua, invite, ok, method, cseq, &new_branch), "{branch}: dialog complete");
            format!("z9hG4bK{new_branch}")
        })
        .collect()
}

fn assert_all_ok(cluster: &Cluster<Proxy>, ua: usize, branches: &[String], what: &str) {
    for branch in branches {
        assert_eq!(
            cluster.uas[ua].outcome(branch),
            Some(Outcome::Final(200)),
            "{what} {branch} ({} datagrams lost so far)",
            cluster.lost
        );
    }
}

/// Every live shard is empty: no record, transaction or timer left behind.
fn assert_nothing_left(cluster: &Cluster<Proxy>, live: &[usize]) {
    for &n in live {
        for (s, shard) in cluster.nodes[n].iter().enumerate() {
            assert_eq!(
                (shard.calls(), shard.transactions(), shard.armed_timers()),
                (0, 0, 0),
                "node {n} shard {s}: calls, transactions, timers left"
            );
        }
    }
}

/// A replicated 3 × 2 cluster with a caller (UA 0) and a callee (callee 0), and 300 calls
/// (Call-IDs `TAG-i`) set up through it.
fn with_calls_up(b2bua: bool, seed: u64, tag: &str) -> (Cluster<Proxy>, Rng, Vec<String>) {
    let mut cluster = Cluster::replicated(NODES, 2, seed, LOSSY, role(b2bua));
    cluster.add_uac(Transport::Udp);
    cluster.add_uas();
    let mut rng = Rng::new(seed);
    let calls = place_calls(&mut cluster, 0, &mut rng, tag, 300);
    cluster.drive(cluster.now_ms() + 10_000);
    assert_eq!(cluster.uas[0].dialogs().count(), calls.len(), "every call was set up");
    (cluster, rng, calls)
}

fn calls_survive_a_killed_node(b2bua: bool, seed: u64) {
    let (mut cluster, mut rng, established) = with_calls_up(b2bua, seed, "up");
    let (ua, callee) = (0, 0);
    let via_node_1 = cluster.uas[ua].dialogs().filter(|(_, _, ok)| contains(ok, b"10.0.1.1:5060")).count();
    assert!(via_node_1 > 50, "node 1 handled calls before it died ({via_node_1})");

    // Calls in setup: INVITEs on their way when node 1 dies.
    let in_setup = place_calls(&mut cluster, ua, &mut rng, "setup", 60);
    cluster.drive(cluster.now_ms() + 3);
    let in_flight: usize = cluster.nodes[1].iter().map(|s| s.transactions()).sum();
    assert!(in_flight > 0, "node 1 dies with INVITE transactions in flight");
    cluster.kill(NodeId(1), NodeId(2));
    let activated: u64 = [0, 2].iter().flat_map(|&n| &cluster.nodes[n]).map(|s| s.stats().records_activated).sum();
    assert!(activated > 50, "the survivors made node 1's calls live ({activated})");
    cluster.drive(cluster.now_ms() + 40_000);
    let mut setup_outcomes = std::collections::BTreeMap::new();
    for i in 0..in_setup.len() {
        let outcome = cluster.uas[ua].outcome(&format!("z9hG4bKsetup{i}"));
        assert!(matches!(outcome, Some(Outcome::Final(_))), "call in setup {i} ended with {outcome:?}");
        *setup_outcomes.entry(format!("{outcome:?}")).or_insert(0) += 1;
    }
    eprintln!("calls in setup when node 1 died: {setup_outcomes:?}");

    let dialogs = cluster.uas[ua].dialogs().count();
    assert!(dialogs >= established.len(), "no established call was lost ({dialogs})");
    let reinvites = in_every_dialog(&mut cluster, ua, "INVITE", 2);
    cluster.drive(cluster.now_ms() + 10_000);
    assert_all_ok(&cluster, ua, &reinvites, "re-INVITE");
    let byes = in_every_dialog(&mut cluster, ua, "BYE", 3);
    cluster.drive(cluster.now_ms() + 40_000);
    assert_all_ok(&cluster, ua, &byes, "BYE");

    // The callee's Call-IDs are the A legs' (proxy) or the B legs' (B2BUA): count whole calls.
    let seen = &cluster.callees[callee].seen;
    let whole = seen.values().filter(|c| (c.invites, c.reinvites, c.byes) == (1, 1, 1) && c.acks >= 2).count();
    assert_eq!(whole, dialogs, "the callee saw one INVITE, re-INVITE and BYE, and the ACKs, per call");
    assert!(seen.values().all(|c| c.invites <= 1 && c.reinvites <= 1 && c.byes <= 1), "no request ran twice");
    assert_eq!(cluster.callees[callee].awaiting_ack(), 0);
    assert_eq!(cluster.uas[ua].live(), 0, "no client transaction stuck");
    assert_nothing_left(&cluster, &[0, 2]);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn proxied_calls_take_a_reinvite_and_a_bye_after_their_node_is_killed() {
    calls_survive_a_killed_node(false, 41);
}

#[test]
fn bridged_calls_take_a_reinvite_and_a_bye_after_their_node_is_killed() {
    calls_survive_a_killed_node(true, 42);
}

/// A killed node comes back while re-INVITEs are in flight: its stripes are handed back
/// (their records go dormant on the survivor and live on it), every re-INVITE and BYE
/// still gets its 200 and the callee sees each once.
#[test]
fn a_rejoining_node_takes_its_calls_back_with_transactions_in_flight() {
    let (mut cluster, _, calls) = with_calls_up(false, 43, "back");
    let (ua, callee) = (0, 0);
    cluster.kill(NodeId(1), NodeId(2));
    cluster.drive(cluster.now_ms() + 1_000);

    let reinvites = in_every_dialog(&mut cluster, ua, "INVITE", 2);
    cluster.drive(cluster.now_ms() + 3);
    let before = cluster.nodes[2].iter().map(|s| s.transactions()).sum::<usize>();
    assert!(before > 0, "re-INVITEs are in flight on the survivor when node 1 comes back");
    cluster.rejoin(NodeId(1));
    let activated: u64 = cluster.nodes[1].iter().map(|s| s.stats().records_activated).sum();
    let deactivated: u64 = [0, 2].iter().flat_map(|&n| &cluster.nodes[n]).map(|s| s.stats().records_deactivated).sum();
    assert!(activated > 50, "node 1 made its calls live again ({activated})");
    assert_eq!(activated, deactivated, "each record handed back went dormant where it was");
    cluster.drive(cluster.now_ms() + 10_000);
    assert_all_ok(&cluster, ua, &reinvites, "re-INVITE");
    let byes = in_every_dialog(&mut cluster, ua, "BYE", 3);
    cluster.drive(cluster.now_ms() + 40_000);
    assert_all_ok(&cluster, ua, &byes, "BYE");
    let handled_by_1: u64 = cluster.nodes[1].iter().map(|s| s.stats().transactions_created).sum();
    assert!(handled_by_1 > 50, "node 1 served BYEs after the hand-back ({handled_by_1})");
    for call_id in &calls {
        let call = cluster.callees[callee].seen.get(call_id).copied().unwrap_or_default();
        assert_eq!((call.invites, call.reinvites, call.byes), (1, 1, 1), "{call_id}: the callee saw {call:?}");
    }
    assert_eq!(cluster.uas[ua].live(), 0, "no client transaction stuck");
    assert_nothing_left(&cluster, &[0, 1, 2]);
}

/// Node 0 is cut off from nodes 1 and 2 (both sides keep running; node 0's address moves to
/// node 1, where the UAs then send): each side owns what it holds copies of. Every call takes a
/// re-INVITE and new calls are set up during the partition, on the majority's side only; the
/// island keeps stale copies. When the partition heals, the owners keep the newer copy of
/// each call, and every call, old or new, ends with one BYE the callee sees once.
#[test]
fn a_healed_partition_keeps_the_newer_copy_of_every_call() {
    for b2bua in [false, true] {
        let (mut cluster, mut rng, calls) = with_calls_up(b2bua, 44, "before");
        let (ua, callee) = (0, 0);

        cluster.partition(NodeId(0), NodeId(1));
        cluster.drive(cluster.now_ms() + 1_000);
        let reinvites = in_every_dialog(&mut cluster, ua, "INVITE", 2);
        let during = place_calls(&mut cluster, ua, &mut rng, "during", 60);
        cluster.drive(cluster.now_ms() + 10_000);
        assert_all_ok(&cluster, ua, &reinvites, "re-INVITE during the partition");
        assert_eq!(cluster.uas[ua].dialogs().count(), calls.len() + during.len(), "calls set up during it");
        let island_owned: usize = cluster.nodes[0].iter().map(|s| s.calls()).sum();
        assert!(island_owned > 100, "the island kept its copies ({island_owned})");

        cluster.heal();
        let merged: u64 = cluster.nodes.iter().flatten().map(|s| s.stats().replicas_merged).sum();
        assert!(merged > 50, "the newer copies won where the island owned them ({merged})");
        cluster.drive(cluster.now_ms() + 1_000);
        let byes = in_every_dialog(&mut cluster, ua, "BYE", 3);
        cluster.drive(cluster.now_ms() + 40_000);
        assert_all_ok(&cluster, ua, &byes, "BYE after the heal");

        let seen = &cluster.callees[callee].seen;
        let ended = seen.values().filter(|c| (c.invites, c.byes) == (1, 1)).count();
        assert_eq!(ended, calls.len() + during.len(), "one INVITE and one BYE per call (b2bua {b2bua})");
        assert_eq!(seen.values().filter(|c| c.reinvites == 1).count(), calls.len(), "one re-INVITE per old call");
        assert!(seen.values().all(|c| c.invites <= 1 && c.reinvites <= 1 && c.byes <= 1), "no request ran twice");
        assert_eq!(cluster.uas[ua].live(), 0, "no client transaction stuck");
        assert_nothing_left(&cluster, &[0, 1, 2]);
    }
}
