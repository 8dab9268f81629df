//! Fuzz target: `Shard::handle` never panics on any datagram and leaves
//! nothing behind (see `sipshard_shards::testing::replay_datagrams`).
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static BASE: OnceLock<Instant> = OnceLock::new();
    sipshard_shards::testing::replay_datagrams(*BASE.get_or_init(Instant::now), data);
});
