//! The B2BUA's message building (DESIGN.md §8): a call is one record in the
//! stripe of the A leg's Call-ID holding both dialogs ([`B2buaCall`]); the B
//! leg gets a fresh Call-ID, From tag, Via and Contact, so nothing of the A
//! side's Via, Contact, Record-Route or Call-ID reaches the B side.
//!
//! The B leg's Call-ID encodes the A leg's stripe in the clear
//! (`b2b~SSSS~<random>`, [`b_leg_call_id`]): every node routes a B-leg message
//! to the call's owner with the same pure function as any other
//! ([`crate::StripeId::of_call_id`]), and the owner finds the record through a
//! small per-shard index from B Call-ID to A Call-ID, rebuilt from records
//! (each holds its `b_call_id`) when a replica takes a stripe over.
//!
//! The shard does the rest (dialog.rs holds the records): requests are
//! rebuilt on the other leg from its [`Dialog`], responses are rebuilt from
//! the stored request of the server transaction they answer.

use std::fmt::Write as _;

use crate::dialog::{B2buaCall, Dialog};
use crate::stripe::StripeId;

/// The B leg's Call-ID for a call in `stripe`: `b2b~SSSS~TTTTTTTTTTTTTTTT` (hex stripe, hex token).
pub fn b_leg_call_id(stripe: StripeId, token: u64) -> String {
    format!("b2b~{:04x}~{token:016x}", stripe.0 & 0xffff)
}

/// A header value without its `tag` parameter (From and To as a dialog stores them).
pub fn without_tag(value: &str) -> &str {
    let params_at = value.rfind('>').map_or(0, |gt| gt + 1);
    match value[params_at..].find(";tag=") {
        Some(i) => value[..params_at + i].trim_end(),
        None => value.trim_end(),
    }
}

/// Which leg a message belongs to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// The caller's leg (its Call-ID is the record's key).
    A,
    /// The callee's leg.
    B,
}

impl Side {
    /// The other leg.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

impl B2buaCall {
    /// The dialog of one leg.
    pub fn leg(&self, side: Side) -> &Dialog {
        match side {
            Side::A => &self.a_leg,
            Side::B => &self.b_leg,
        }
    }

    /// The dialog of one leg, to change.
    pub fn leg_mut(&mut self, side: Side) -> &mut Dialog {
        match side {
            Side::A => &mut self.a_leg,
            Side::B => &mut self.b_leg,
        }
    }
}

/// What a request on one leg carries besides the dialog.
pub struct LegRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// CSeq number.
    pub cseq: u32,
    /// The leg's Call-ID.
    pub call_id: &'a str,
    /// Our Via value (with its branch).
    pub via: &'a str,
    /// Our Contact URI.
    pub contact: &'a str,
    /// Max-Forwards.
    pub max_forwards: u8,
    /// Content-Type of the body, if any.
    pub content_type: Option<&'a [u8]>,
    /// Body.
    pub body: &'a [u8],
}

/// Writes a request inside `leg`'s dialog (§12.2.1.1): Request-URI the remote target,
/// the route set, From our URI and tag, To the remote URI and tag.
pub fn write_leg_request(leg: &Dialog, request: &LegRequest<'_>) -> Vec<u8> {
    let mut out = String::with_capacity(400 + request.body.len());
    let _ = write!(
        out,
        "{} {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: {}\r\n",
        request.method, leg.remote_target, request.via, request.max_forwards
    );
    for route in &leg.route_set {
        let _ = write!(out, "Route: {route}\r\n");
    }
    let _ = write!(out, "From: {};tag={}\r\nTo: {}", leg.local_uri, leg.local_tag, leg.remote_uri);
    if !leg.remote_tag.is_empty() {
        let _ = write!(out, ";tag={}", leg.remote_tag);
    }
    let _ = write!(
        out,
        "\r\nCall-ID: {}\r\nCSeq: {} {}\r\nContact: <{}>\r\n",
        request.call_id, request.cseq, request.method, request.contact
    );
    let mut bytes = out.into_bytes();
    if let Some(content_type) = request.content_type {
        bytes.extend_from_slice(b"Content-Type: ");
        bytes.extend_from_slice(content_type);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", request.body.len()).as_bytes());
    bytes.extend_from_slice(request.body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::DialogState;
    use crate::shard::{Peer, Transport};

    #[test]
    fn b_leg_call_ids_route_to_the_a_legs_stripe() {
        for stripe in [0, 1, 517, 1023] {
            let id = b_leg_call_id(StripeId(stripe), 0xdead_beef);
            assert_eq!(StripeId::of_call_id(id.as_bytes(), 1024), StripeId(stripe), "{id}");
        }
        assert_eq!(b_leg_call_id(StripeId(10), 1), "b2b~000a~0000000000000001");
        // A Call-ID that merely looks similar is hashed as usual.
        let odd = b"b2b~zzzz~x";
        assert_eq!(StripeId::of_call_id(odd, 1024).0, sipshard_parser::stripe_of(odd, 1024));
    }

    #[test]
    fn tags_come_off_and_requests_follow_the_dialog() {
        assert_eq!(without_tag("sipp <sip:sipp@127.0.0.1:5061>;tag=1234"), "sipp <sip:sipp@127.0.0.1:5061>");
        assert_eq!(without_tag("<sip:a@x;tag=uriparam>;x=1"), "<sip:a@x;tag=uriparam>;x=1");
        assert_eq!(without_tag("sip:a@x;tag=9"), "sip:a@x");
        let leg = Dialog {
            local_tag: "ours".into(),
            remote_tag: "theirs".into(),
            local_uri: "<sip:alice@a.test>".into(),
            remote_uri: "<sip:bob@b.test>".into(),
            remote_target: "sip:bob@192.0.2.4:5070".into(),
            route_set: vec!["<sip:192.0.2.9;lr>".into()],
            local_cseq: 2,
            remote_cseq: 0,
            peer: Peer { addr: "192.0.2.9:5060".parse().expect("addr"), transport: Transport::Udp },
            state: DialogState::Confirmed,
        };
        let request = LegRequest {
            method: "BYE",
            cseq: 3,
            call_id: "b2b~0001~00",
            via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx",
            contact: "sip:127.0.0.1:5060",
            max_forwards: 70,
            content_type: None,
            body: b"",
        };
        let text = String::from_utf8(write_leg_request(&leg, &request)).expect("utf8");
        assert_eq!(
            text,
            "BYE sip:bob@192.0.2.4:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nMax-Forwards: 70\r\n\
Route: <sip:192.0.2.9;lr>\r\nFrom: <sip:alice@a.test>;tag=ours\r\nTo: <sip:bob@b.test>;tag=theirs\r\n\
Call-ID: b2b~0001~00\r\nCSeq: 3 BYE\r\nContact: <sip:127.0.0.1:5060>\r\nContent-Length: 0\r\n\r\n"
        );
        let mut slots = [sipshard_parser::HeaderSlot::EMPTY; 32];
        sipshard_parser::parse(text.as_bytes(), &mut slots).expect("it parses");
    }
}
