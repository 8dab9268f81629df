//! The shard core alone, in memory (no sockets): transactions per second on
//! one core through the whole path (parse, stripe routing by the Call-ID,
//! §17.2.3 matching, record checkout and check-in with encoding, the
//! transaction user, the response write, timers, termination), and the
//! timer wheel's arm/cancel cost.
//!
//! `cargo bench -p sipshard-shards --features testing --bench core`
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn.
#![allow(clippy::disallowed_methods)] // The bench anchors the shard's clock; the shard reads none itself.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sipshard_shards::shard::{Input, Peer, Shard, ShardConfig, Transport};
use sipshard_shards::testing::{BusyInvites, request};
use sipshard_shards::timer::TimerWheel;
use sipshard_shards::transaction::TimerConfig;
use sipshard_shards::{NodeId, ShardId, StripeMap};

const BATCH: usize = 10_000;

fn shard(now: Instant, replicate: bool) -> Shard<BusyInvites> {
    let config = ShardConfig {
        node: NodeId(0),
        shard: ShardId(0),
        local: "127.0.0.1:5060".parse().expect("addr"),
        shard_ports: None,
        stripes: StripeMap::balanced(1, 1024, &[NodeId(0)], 1, 1),
        max_calls: 2 * BATCH,
        max_timers: 8 * BATCH,
        timers: TimerConfig::default(),
        seed: 7,
        replicate,
        retry_after_s: 5,
        registrar: None,
        max_message_bytes: sipshard_shards::shard::DEFAULT_MAX_MESSAGE_BYTES,
        no_answer: sipshard_shards::shard::DEFAULT_NO_ANSWER,
        max_call_duration: sipshard_shards::shard::DEFAULT_MAX_CALL_DURATION,
        lookup_before_481: false,
    };
    Shard::new(config, BusyInvites, now)
}

fn peer() -> Peer {
    Peer { addr: "127.0.0.1:5062".parse().expect("addr"), transport: Transport::Udp }
}

/// One batch on a warm shard: every request (and ACK) in at `now`, outputs drained,
/// then the clock moves past every wait timer so each transaction terminates.
fn batch(shard: &mut Shard<BusyInvites>, now: &mut Instant, requests: &[Vec<u8>], acks: &[Vec<u8>]) -> usize {
    let peer = peer();
    let created = shard.stats().transactions_created;
    let mut sent = 0;
    for (i, bytes) in requests.iter().enumerate() {
        shard.handle(*now, Input::Datagram { peer, bytes });
        while let Some(out) = shard.poll_output() {
            black_box(out);
            sent += 1;
        }
        if let Some(ack) = acks.get(i) {
            shard.handle(*now, Input::Datagram { peer, bytes: ack });
            while shard.poll_output().is_some() {}
        }
    }
    *now += Duration::from_secs(40);
    shard.handle(*now, Input::Timeout);
    while shard.poll_output().is_some() {}
    assert_eq!(shard.transactions(), 0, "every transaction terminated");
    assert_eq!((shard.stats().transactions_created - created) as usize, requests.len());
    sent
}

/// Steady state: one shard, warm tables, batch after batch.
fn steady(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    requests: &[Vec<u8>],
    acks: &[Vec<u8>],
    replicate: bool,
) {
    c.bench_function(name, |b| {
        let start = Instant::now();
        let mut shard = shard(start, replicate);
        let mut now = start;
        batch(&mut shard, &mut now, requests, acks);
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                batch(&mut shard, &mut now, requests, acks);
            }
            t0.elapsed()
        })
    });
}

/// A cold shard per batch: its tables grow from empty and everything is freed at the end.
fn run(requests: &[Vec<u8>], acks: &[Vec<u8>], replicate: bool) -> usize {
    let start = Instant::now();
    let mut shard = shard(start, replicate);
    let peer = peer();
    let mut sent = 0;
    for (i, bytes) in requests.iter().enumerate() {
        shard.handle(start, Input::Datagram { peer, bytes });
        while let Some(out) = shard.poll_output() {
            black_box(out);
            sent += 1;
        }
        if let Some(ack) = acks.get(i) {
            shard.handle(start, Input::Datagram { peer, bytes: ack });
            while shard.poll_output().is_some() {}
        }
    }
    shard.handle(start + Duration::from_secs(40), Input::Timeout);
    while shard.poll_output().is_some() {}
    assert_eq!(shard.transactions(), 0, "every transaction terminated");
    assert_eq!(shard.stats().transactions_created as usize, requests.len());
    sent
}

fn ack(i: usize) -> Vec<u8> {
    // Matches its INVITE's server transaction by branch, sent-by and method (§17.2.3).
    request("ACK", peer().addr, &format!("inv-{i}@bench"), 1, &format!("i{i}"))
}

fn benches(c: &mut Criterion) {
    let options: Vec<Vec<u8>> =
        (0..BATCH).map(|i| request("OPTIONS", peer().addr, &format!("opt-{i}@bench"), 1, &format!("o{i}"))).collect();
    let invites: Vec<Vec<u8>> =
        (0..BATCH).map(|i| request("INVITE", peer().addr, &format!("inv-{i}@bench"), 1, &format!("i{i}"))).collect();
    let acks: Vec<Vec<u8>> = (0..BATCH).map(ack).collect();

    let mut group = c.benchmark_group("transactions");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    steady(&mut group, "non_invite_request_response", &options, &[], false);
    steady(&mut group, "invite_486_ack", &invites, &acks, false);
    // The same with the change feed on: every check-in encodes its record (postcard + CRC-32).
    steady(&mut group, "non_invite_with_change_feed", &options, &[], true);
    group.bench_function("non_invite_cold_shard", |b| b.iter(|| run(&options, &[], false)));
    group.finish();

    let mut wheel_group = c.benchmark_group("timer_wheel");
    wheel_group.throughput(Throughput::Elements(BATCH as u64));
    wheel_group.bench_function("arm_cancel", |b| {
        b.iter_batched_ref(
            || TimerWheel::<u64>::new(BATCH, 0),
            |wheel| {
                for i in 0..BATCH as u64 {
                    let id = wheel.arm(500 + (i * 7919) % 64_000, i).expect("room");
                    black_box(wheel.cancel(id));
                }
            },
            BatchSize::SmallInput,
        )
    });
    wheel_group.bench_function("arm_fire", |b| {
        b.iter_batched_ref(
            || TimerWheel::<u64>::new(BATCH, 0),
            |wheel| {
                for i in 0..BATCH as u64 {
                    wheel.arm(500 + (i * 7919) % 64_000, i).expect("room");
                }
                let mut fired = 0;
                while wheel.poll_expired(70_000).is_some() {
                    fired += 1;
                }
                assert_eq!(fired, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    wheel_group.finish();
}

criterion_group!(core_benches, benches);
criterion_main!(core_benches);
