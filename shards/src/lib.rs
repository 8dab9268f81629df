//! The sans-IO core one sipshard shard runs (DESIGN.md §2-4). No I/O, no
//! clock, no threads, no async: a shard is driven as `handle(now, input)`,
//! then `poll_output()` until `None`, then `poll_timeout()`.
//!
//! Built so far: the stripe map ([`stripe`]), the timer wheel ([`timer`]) and
//! the RFC 3261 transaction layer ([`transaction`]). The call tables and the
//! `Shard` driver are in progress (see the shard-core issue).

pub mod timer;
pub mod transaction;

pub mod b2bua;
pub mod dialog;
pub mod proxy;
pub mod registrar;
pub mod shard;
pub mod stripe;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;

pub use stripe::{DEFAULT_STRIPES, NodeId, Owner, Route, ShardId, StripeId, StripeMap};
