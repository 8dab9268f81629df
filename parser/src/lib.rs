//! Zero-copy SIP (RFC 3261) parser and writer.
//!
//! No I/O, no clock, no allocation: a [`Message`] borrows the datagram it was
//! parsed from and the header slots the caller lends it. Typed headers (Via,
//! From/To, CSeq, Contact, Route, auth, ...) are decoded only when asked.
//!
//! ```
//! use sipshard_parser::{parse, HeaderSlot, Message};
//!
//! let datagram = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\
//! Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK776asdhds\r\n\
//! From: <sip:alice@example.com>;tag=1928301774\r\nTo: <sip:bob@example.com>\r\n\
//! Call-ID: a84b4c76e66710\r\nCSeq: 63104 OPTIONS\r\nContent-Length: 0\r\n\r\n";
//! let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
//! let msg = parse(datagram, &mut slots).unwrap();
//! assert_eq!(msg.call_id().unwrap(), Some("a84b4c76e66710"));
//! assert_eq!(msg.top_via().unwrap().unwrap().branch, Some("z9hG4bK776asdhds"));
//! assert!(msg.problems().is_empty());
//! ```
//!
//! Layers, from the wire up:
//! - [`frame`]: where a message ends in a stream buffer (`Partial` until whole).
//! - [`parse`]: start line, header slots, body by Content-Length.
//! - typed accessors on [`Message`] and the `parse` functions of [`Via`], [`NameAddr`],
//!   [`CSeq`], [`Uri`], [`Auth`].
//! - [`Message::problems`]: SIP rules a well-framed message can still break.
//! - [`Editor`], [`write_message`], [`write_response`]: writing without re-parsing.
//! - [`peek_call_id`] and [`stripe_of`]: routing a datagram to its shard.

mod error;
mod grammar;
mod header;
pub mod limits;
mod message;
mod method;
mod params;
pub mod problems;
mod stripe;
mod typed;
mod uri;
mod writer;

pub use error::{ErrorKind, ParseError};
pub use header::{Header, HeaderName, HeaderSlot};
pub use message::{Frame, Headers, Message, RequestLine, StartLine, StatusLine, Version, frame, parse};
pub use method::Method;
pub use params::{Param, ParamIter, Params, unquote};
pub use problems::{Problem, Problems};
pub use stripe::{peek_call_id, stripe_of};
pub use typed::{
    Auth, CSeq, Contact, MAGIC_COOKIE, MediaType, NameAddr, TokenParams, Transport, Values, Via, ViaBranchSentBy,
};
pub use uri::{Scheme, Unescape, Uri, unescape};
pub use writer::{Editor, ResponseSpec, WriteError, write_ack, write_cancel, write_message, write_response};
