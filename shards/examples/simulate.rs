//! The seeded simulator (STYLE.md rule 15): each seed picks a cluster shape,
//! link behaviour and workload, runs it on the deterministic `Cluster`, and
//! checks the invariants. A failing seed is printed and replays exactly.
//!
//! ```text
//! cargo run --release -p sipshard-shards --features testing --example simulate -- [SEEDS] [FIRST]
//! tools/simulate.sh [SEEDS] [FIRST]
//! ```
//!
//! Invariants: every client transaction ends (final response or timeout);
//! every request reached the transaction user only on its stripe's owner; no
//! server transaction, call record, armed timer or datagram is left; every
//! transaction created ended.

use std::panic::{AssertUnwindSafe, catch_unwind};

use sipshard_shards::shard::Transport;
use sipshard_shards::testing::{Cluster, LinkConfig, Outcome, Responder, Rng, request};
use sipshard_shards::{NodeId, ShardId, StripeId};

struct Summary {
    transactions: usize,
    timed_out: usize,
    lost: u64,
}

fn run(seed: u64) -> Summary {
    let mut rng = Rng::new(seed);
    let nodes = 1 + rng.below(3) as u16;
    let shards = 1 + rng.below(3) as u16;
    let tcp = rng.below(4) == 0;
    // TCP neither loses, duplicates nor reorders; UDP may do all three.
    let link = if tcp {
        LinkConfig { delay_ms: rng.below(20), ..LinkConfig::default() }
    } else {
        LinkConfig {
            loss: rng.below(30) as f64 / 100.0,
            duplicate: rng.below(10) as f64 / 100.0,
            reorder: rng.below(20) as f64 / 100.0,
            reorder_ms: rng.below(500),
            delay_ms: rng.below(50),
        }
    };
    let mut cluster = Cluster::new(nodes, shards, seed, link, Responder::default);
    let ua = cluster.add_uac(if tcp { Transport::Tcp } else { Transport::Udp });
    let from = cluster.uas[ua].peer.addr;
    let total = 200 + rng.below(800) as usize;
    let calls = 1 + rng.below(total as u64 / 2) as usize;
    for i in 0..total {
        let method = ["INVITE", "OPTIONS", "MESSAGE", "INFO", "REGISTER"][rng.below(5) as usize];
        // Several transactions share a call (at most a few at once, far below the per-call limit).
        let call = format!("sim-{seed}-{}", i % calls);
        let bytes = request(method, from, &call, i as u32 + 1, &format!("s{seed}x{i}"));
        cluster.start_request(
            ua,
            NodeId(rng.below(u64::from(nodes)) as u16),
            ShardId(rng.below(u64::from(shards)) as u16),
            bytes,
        );
        if rng.below(10) == 0 {
            let until = cluster.now_ms() + rng.below(2_000);
            cluster.drive(until);
        }
    }
    let until = cluster.now_ms() + 2 * (32_000 + 5_000 + 1_000);
    cluster.drive(until);

    assert_eq!(cluster.uas[ua].live(), 0, "client transactions stuck");
    let outcomes: Vec<Option<Outcome>> = cluster.uas[ua].outcomes().map(|(_, o)| o).collect();
    assert_eq!(outcomes.len(), total);
    assert!(outcomes.iter().all(Option::is_some), "a client transaction ended without an outcome");
    let timed_out = outcomes.iter().filter(|o| **o == Some(Outcome::TimedOut)).count();
    if tcp {
        assert_eq!(timed_out, 0, "a lossless link timed a transaction out");
    }
    let map = cluster.stripe_map().clone();
    for shard in cluster.nodes.iter().flatten() {
        assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (0, 0, 0), "state left behind");
        let stats = shard.stats();
        assert_eq!(stats.transactions_created, stats.transactions_ended, "created != ended");
        for (call, handled) in &shard.tu().handled {
            let owner = map.owner(StripeId::of_call_id(call.as_bytes(), map.stripe_count()));
            assert!(handled.iter().all(|&h| h == (owner.node, owner.shard)), "{call} handled off its owner");
        }
    }
    assert_eq!(cluster.in_flight(), 0, "datagrams still in flight");
    Summary { transactions: total, timed_out, lost: cluster.lost }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().map_or(100, |a| a.parse().expect("SEEDS is a number"));
    let first: u64 = args.next().map_or(1, |a| a.parse().expect("FIRST is a number"));
    let (mut failed, mut transactions, mut timed_out, mut lost) = (Vec::new(), 0, 0, 0);
    for seed in first..first + seeds {
        match catch_unwind(AssertUnwindSafe(|| run(seed))) {
            Ok(s) => {
                transactions += s.transactions;
                timed_out += s.timed_out;
                lost += s.lost;
            }
            Err(_) => {
                eprintln!("seed {seed} FAILED (replay: simulate 1 {seed})");
                failed.push(seed);
            }
        }
        if (seed - first + 1) % 25 == 0 {
            eprintln!(
                "{} seeds, {transactions} transactions, {timed_out} timed out, {lost} datagrams lost",
                seed - first + 1
            );
        }
    }
    println!(
        "simulate: seeds={seeds} first={first} transactions={transactions} timed_out={timed_out} lost={lost} failed={}",
        failed.len()
    );
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
        std::process::exit(1);
    }
}
