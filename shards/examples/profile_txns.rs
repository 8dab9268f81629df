//! A fixed workload for instruction-count profiling of the shard core:
//! `ROUNDS` rounds of 10,000 OPTIONS transactions on one warm shard (request
//! in, 200 out, timer J fired 32 s later), the path `benches/core.rs` times.
//!
//! `cargo build --release -p sipshard-shards --features testing --example profile_txns &&
//! valgrind --tool=callgrind target/release/examples/profile_txns 2`; with a second argument
//! `register`, 10,000 REGISTERs (10,000 AoRs) to a registrar shard instead; with `invite`,
//! 10,000 INVITEs answered 486 and ACKed (timers G, H, I), the bench's INVITE transaction.
#![allow(clippy::disallowed_methods)] // The harness anchors the shard's clock; the shard reads none itself.

use std::time::{Duration, Instant};

use sipshard_shards::registrar::RegistrarConfig;
use sipshard_shards::shard::{Decision, FinalResponse, Input, Message, Peer, RequestContext, Shard, ShardConfig};
use sipshard_shards::shard::{TransactionUser, Transport};
use sipshard_shards::testing::request;

/// Answers 200 (an INVITE 486): the cost measured is the core's. `testing::BusyInvites` does the
/// same; this copy stays so that `tools/ab-core.sh` can build this file at older commits.
struct Ok200;

impl TransactionUser for Ok200 {
    fn on_request(&mut self, _: &RequestContext, request: &Message<'_>) -> Decision {
        if request.method() == Some(sipshard_parser::Method::Invite) {
            FinalResponse::new(486, "Busy Here").into()
        } else {
            FinalResponse::new(200, "OK").into()
        }
    }
}

fn main() {
    let rounds: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let mode = std::env::args().nth(2);
    let register = mode.as_deref() == Some("register");
    let invite = mode.as_deref() == Some("invite");
    let peer = Peer { addr: "127.0.0.1:5062".parse().expect("addr"), transport: Transport::Udp };
    let requests: Vec<Vec<u8>> = (0..10_000)
        .map(|i| match register {
            false if invite => request("INVITE", peer.addr, &format!("inv-{i}@bench"), 1, &format!("i{i}")),
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
    // The ACK of each INVITE's 486 (same branch: it matches the INVITE's transaction, §17.2.3).
    let acks: Vec<Vec<u8>> = (0..10_000)
        .filter(|_| invite)
        .map(|i| request("ACK", peer.addr, &format!("inv-{i}@bench"), 1, &format!("i{i}")))
        .collect();
    let start = Instant::now();
    let mut now = start;
    let mut busy = Duration::ZERO;
    let mut config = ShardConfig::standalone(20_000);
    // The server's stripe count (the standalone default has fewer): one shard owns them all.
    config.stripes =
        sipshard_shards::StripeMap::balanced(1, sipshard_shards::DEFAULT_STRIPES, &[sipshard_shards::NodeId(0)], 1, 1);
    config.registrar = register.then(RegistrarConfig::default);
    let mut shard = Shard::new(config, Ok200, start);
    let mut sent = 0u64;
    for r in 0..rounds {
        let round = Instant::now();
        for (i, bytes) in requests.iter().enumerate() {
            shard.handle(now, Input::Datagram { peer, bytes });
            while shard.poll_output().is_some() {
                sent += 1;
            }
            if let Some(ack) = acks.get(i) {
                shard.handle(now, Input::Datagram { peer, bytes: ack });
                while shard.poll_output().is_some() {}
            }
        }
        now += Duration::from_secs(40);
        shard.handle(now, Input::Timeout);
        while shard.poll_output().is_some() {}
        // The first round warms the shard (its tables and wheel grow to the batch's size) and is
        // not timed, as criterion's warm-up is not: the rate is the steady state's.
        if r > 0 || rounds == 1 {
            busy += round.elapsed();
        }
        assert_eq!(shard.transactions(), 0, "every transaction ended");
    }
    let txns = f64::from(rounds.saturating_sub(1).max(1)) * requests.len() as f64;
    println!("{rounds} rounds, {sent} responses in {:?}", start.elapsed());
    // Set-up (the shard, the requests) and the warm-up round excluded: the rate of the rounds after it.
    println!("{:.0} transactions/s", txns / busy.as_secs_f64());
}
