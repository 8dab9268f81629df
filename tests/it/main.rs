//! sipshard's integration tests, built as one binary (STYLE.md: ripgrep/tokio
//! habit): the CLI end to end, deterministic cluster scenarios, the shard's
//! edges, fuzz regressions, and the workspace's tidy rules.

mod cli_parse;
mod cluster;
mod cluster_calls;
mod demo;
mod failover;
mod fuzz_regressions;
mod proxy;
mod replication;
mod shard;
mod sipp;
mod support;
mod tidy;
mod udp_server;
mod wire_latency;
