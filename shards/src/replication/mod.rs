//! Replication inside a site (DESIGN.md §5), sans-IO: the frames replica links
//! carry ([`frame`]) and the protocol state of one link ([`link`]): handshake
//! with a shared-secret HMAC, numbered changes delivered once and in order,
//! acknowledgements, a window, resending after a reconnect, heartbeats and
//! dead-peer detection. The sockets are the runtime's (src/); the stripes'
//! failover, lookups and snapshots build on these links.

pub mod frame;
pub mod link;

#[cfg(test)]
mod tests;

pub use frame::{Frame, FrameError, MAX_FRAME_BYTES};
pub use link::{LinkConfig, LinkError, LinkEvent, LinkStats, Replica, ReplicaLink, Side};
