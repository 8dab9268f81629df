//! sipbench, the SIPp-style load generator (DESIGN.md §10), as a library: the
//! `sipbench` binary is its command line, and `sipshard demo` runs the same
//! caller and callee in-process.
//!
//! - [`uac`]: the caller (scenarios `call`, `register`, `options`), open-loop
//!   arrival rate with an optional ramp, UDP with RFC 3261 retransmissions or
//!   TCP, several generator threads;
//! - [`uas`]: the callee, answering at once on UDP and TCP;
//! - [`report`]: what a run measured, and its outputs (progress line, table,
//!   JSON, SIPp-like CSV, HdrHistogram interval log);
//! - [`relay`]: the least a proxy does on the wire (a floor for servers' CPU per call);
//! - [`digest`]: MD5 digest credentials for REGISTER challenges;
//! - [`transport`]: the generator's UDP socket or TCP connection;
//! - [`batch`]: `recvmmsg`/`sendmmsg`/`ppoll` for UDP.
//!
//! A black-box client: it depends on the parser only, so its numbers are
//! honest about the server.

pub mod batch;
pub mod digest;
pub mod relay;
pub mod report;
pub mod transport;
pub mod uac;
pub mod uas;
