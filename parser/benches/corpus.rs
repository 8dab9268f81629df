//! The benchmark corpus (one call, a registration, a subscription: realistic
//! messages, byte-exact in benches/corpus/) and the typed decode a proxy,
//! registrar or B2BUA performs on each message. Shared by the criterion bench
//! and the zero-allocation test.
#![allow(dead_code, unreachable_pub)]

use sipshard_parser::{Contact, HeaderName, Message};

/// (name, bytes) of each corpus message.
pub const MESSAGES: &[(&str, &[u8])] = &[
    ("invite+sdp", include_bytes!("corpus/01-invite.sip")),
    ("100", include_bytes!("corpus/02-trying.sip")),
    ("180", include_bytes!("corpus/03-ringing.sip")),
    ("200+sdp", include_bytes!("corpus/04-ok-invite.sip")),
    ("ack", include_bytes!("corpus/05-ack.sip")),
    ("bye", include_bytes!("corpus/06-bye.sip")),
    ("200-bye", include_bytes!("corpus/07-ok-bye.sip")),
    ("register+auth", include_bytes!("corpus/08-register.sip")),
    ("subscribe", include_bytes!("corpus/09-subscribe.sip")),
    ("notify", include_bytes!("corpus/10-notify.sip")),
];

/// Total bytes of the corpus.
pub fn total_bytes() -> usize {
    MESSAGES.iter().map(|(_, m)| m.len()).sum()
}

/// Decodes everything a proxy reads (and a registrar's Contact, Expires and
/// Authorization); returns a number derived from the values so the work is not
/// optimised away. Panics if anything fails to decode: the corpus is valid.
pub fn decode_proxy_fields(msg: &Message<'_>) -> usize {
    let mut sum = 0usize;
    if let Some(uri) = msg.request_uri() {
        let uri = uri.expect("Request-URI");
        sum += uri.host.len() + usize::from(uri.port.unwrap_or(5060));
    }
    for via in msg.vias() {
        let via = via.expect("Via");
        sum += via.branch.map_or(0, str::len) + via.host.len() + usize::from(via.has_rfc3261_branch());
    }
    sum += msg.call_id().expect("Call-ID").expect("present").len();
    sum += msg.cseq().expect("CSeq").expect("present").seq as usize;
    sum += msg.from().expect("From").expect("present").tag().map_or(0, str::len);
    sum += msg.to().expect("To").expect("present").tag().map_or(0, str::len);
    sum += usize::from(msg.max_forwards().expect("Max-Forwards").unwrap_or(70));
    for route in msg.routes().chain(msg.record_routes()) {
        let route = route.expect("Route");
        sum += route.uri.host.len() + usize::from(route.uri.is_loose_router());
    }
    for contact in msg.contacts() {
        if let Contact::Address { addr, expires, .. } = contact.expect("Contact") {
            sum += addr.uri.host.len() + expires.unwrap_or(0) as usize;
        }
    }
    sum += msg.option_tags(HeaderName::ProxyRequire).map(|t| t.expect("Proxy-Require").len()).sum::<usize>();
    sum += msg.content_length().expect("Content-Length").unwrap_or(0) as usize;
    sum += msg.expires().expect("Expires").unwrap_or(0) as usize;
    for auth in msg.auth(HeaderName::Authorization) {
        sum += auth.expect("Authorization").param("response").map_or(0, str::len);
    }
    sum
}
