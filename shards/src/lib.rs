//! The sans-IO core one sipshard shard runs (DESIGN.md §2-4). No I/O, no
//! clock, no threads, no async: a shard is driven as `handle(now, input)`,
//! then `poll_output()` until `None`, then `poll_timeout()`.
//!
//! This crate starts small: today it holds the stripe identifiers and the
//! stripe of a Call-ID. The call tables, timer wheel and transaction layer
//! are the subject of the shard-core issue.

pub mod timer;
pub mod transaction;

use sipshard_parser::stripe_of;

/// Default number of stripes per cluster (a power of two, fixed per cluster).
pub const DEFAULT_STRIPES: u32 = 1024;

/// A stripe: a fixed slice of the Call-ID space.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StripeId(pub u32);

impl StripeId {
    /// The stripe of a Call-ID among `stripe_count` stripes.
    pub fn of_call_id(call_id: &[u8], stripe_count: u32) -> StripeId {
        StripeId(stripe_of(call_id, stripe_count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_id_agrees_with_the_parser_hash() {
        let id = b"3848276298220188511@atlanta.example.com";
        assert_eq!(StripeId::of_call_id(id, DEFAULT_STRIPES).0, stripe_of(id, DEFAULT_STRIPES));
        assert!(StripeId::of_call_id(id, DEFAULT_STRIPES).0 < DEFAULT_STRIPES);
    }
}
