//! The sans-IO core one sipshard shard runs (DESIGN.md §2-4). No I/O, no
//! clock, no threads, no async: a shard is driven as `handle(now, input)`,
//! then `poll_output()` until `None`, then `poll_timeout()`.
//!
//! Built: the stripe map ([`stripe`]), the call tables ([`table`]), the timer
//! wheel ([`timer`]), the RFC 3261 transaction layer ([`transaction`]), the
//! [`shard::Shard`] state machine with the mechanics every role shares, and
//! the roles: the stateful proxy ([`proxy`], with [`nat`] for callers behind
//! a NAT), the B2BUA ([`b2bua`]) and the registrar ([`registrar`]), and the
//! sans-IO replica links ([`replication`]).
//! Geo shipping and the cold path come next.

pub mod timer;
pub mod transaction;

pub mod b2bua;
pub mod dialog;
pub mod nat;
pub mod proxy;
pub mod registrar;
pub mod replication;
pub mod shard;
pub mod stripe;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;

pub use stripe::{DEFAULT_STRIPES, MAX_REPLICAS, NodeId, Owner, Route, ShardId, StripeId, StripeMap};
