//! Inputs the fuzzers once broke the code with, replayed on every test run
//! (files in shards/tests/fuzz-regressions/, named after what they found).

use std::time::Instant;

#[test]
fn shard_fuzz_regressions_replay_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shards/tests/fuzz-regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(dir).expect("regression dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("regression file");
        sipshard_shards::testing::replay_datagrams(Instant::now(), &data);
        replayed += 1;
    }
    assert!(replayed >= 1, "the regression corpus is not empty");
}

/// The leak the shard fuzzer found: a request the transaction user never answered
/// finally kept its server transaction forever. Now a non-final answer becomes 500.
#[test]
fn a_non_final_tu_answer_is_replaced_by_500_and_nothing_leaks() {
    use std::time::Duration;

    use sipshard_shards::shard::{
        Decision, FinalResponse, Input, Message, Output, Peer, RequestContext, Shard, ShardConfig, TransactionUser,
        Transport,
    };

    struct RingsForever;
    impl TransactionUser for RingsForever {
        fn on_request(&mut self, _: &RequestContext, _: &Message<'_>) -> Decision {
            FinalResponse::new(180, "Ringing").into()
        }
    }
    let config = ShardConfig::standalone(8);
    let start = Instant::now();
    let mut shard = Shard::new(config, RingsForever, start);
    let peer = Peer { addr: "127.0.0.1:5060".parse().unwrap(), transport: Transport::Udp };
    let options = sipshard_shards::testing::request("OPTIONS", peer.addr, "leak@test", 1, "1");
    shard.handle(start, Input::Datagram { peer, bytes: &options });
    let Some(Output::Transmit { bytes, .. }) = shard.poll_output() else { panic!("a response is sent") };
    assert!(bytes.starts_with(b"SIP/2.0 500 "), "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(shard.stats().tu_errors, 1);
    shard.handle(start + Duration::from_secs(33), Input::Timeout);
    while shard.poll_output().is_some() {}
    assert_eq!((shard.transactions(), shard.calls(), shard.armed_timers()), (0, 0, 0));
}
