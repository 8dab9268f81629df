//! A fixed workload for instruction-count profiling of the shard core:
//! `ROUNDS` rounds of 10,000 OPTIONS transactions on one warm shard (request
//! in, 200 out, timer J fired 32 s later), the path `benches/core.rs` times.
//!
//! `cargo build --release -p sipshard-shards --features testing --example profile_txns &&
//! valgrind --tool=callgrind target/release/examples/profile_txns 2`; with a second argument
//! `register`, 10,000 REGISTERs (10,000 AoRs) to a registrar shard instead.
#![allow(clippy::disallowed_methods)] // The harness anchors the shard's clock; the shard reads none itself.

use std::time::{Duration, Instant};

use sipshard_shards::registrar::RegistrarConfig;
use sipshard_shards::shard::{Decision, FinalResponse, Input, Message, Peer, RequestContext, Shard, ShardConfig};
use sipshard_shards::shard::{TransactionUser, Transport};
use sipshard_shards::testing::request;

/// Answers 200: the cost measured is the core's.
struct Ok200;

impl TransactionUser for Ok200 {
    fn on_request(&mut self, _: &RequestContext, _: &Message<'_>) -> Decision {
        FinalResponse::new(200, "OK").into()
    }
}

fn main() {
    let rounds: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let register = std::env::args().nth(2).as_deref() == Some("register");
    let peer = Peer { addr: "127.0.0.1:5062".parse().expect("addr"), transport: Transport::Udp };
    let requests: Vec<Vec<u8>> = (0..10_000)
        .map(|i| match register {
            false => request("OPTIONS", peer.addr, &format!("opt-{i}@bench"), 1, &format!("o{i}")),
            true => format!(
                "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {}:5062;branch=z9hG4bKr{i};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:user{i}@127.0.0.1>;tag=r{i}\r\nTo: <sip:user{i}@127.0.0.1>\r\n\
Call-ID: reg-{i}@bench\r\nCSeq: 1 REGISTER\r\nContact: <sip:user{i}@127.0.0.1:5062>\r\nExpires: 3600\r\n\
Content-Length: 0\r\n\r\n",
                peer.addr.ip()
            )
            .into_bytes(),
        })
        .collect();
    let start = Instant::now();
    let mut now = start;
    let mut config = ShardConfig::standalone(20_000);
    config.registrar = register.then(RegistrarConfig::default);
    let mut shard = Shard::new(config, Ok200, start);
    let mut sent = 0u64;
    for _ in 0..rounds {
        for bytes in &requests {
            shard.handle(now, Input::Datagram { peer, bytes });
            while shard.poll_output().is_some() {
                sent += 1;
            }
        }
        now += Duration::from_secs(40);
        shard.handle(now, Input::Timeout);
        while shard.poll_output().is_some() {}
        assert_eq!(shard.transactions(), 0, "every transaction ended");
    }
    println!("{rounds} rounds, {sent} responses in {:?}", start.elapsed());
}
