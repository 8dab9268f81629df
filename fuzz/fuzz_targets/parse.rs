//! Fuzz target: parse a datagram, decode every typed header, check the rules,
//! write it back (canonically and with proxy edits) and re-parse what was
//! written. Nothing may panic; what the writer produces must parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard_parser::{
    Editor, HeaderName, HeaderSlot, Message, ResponseSpec, ViaBranchSentBy, parse, peek_call_id, stripe_of,
    write_message, write_response,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The address the fuzzed request came from, as the server's responses mark it.
const SOURCE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77)), 40404);

fuzz_target!(|data: &[u8]| {
    if let Some(id) = peek_call_id(data) {
        let _ = stripe_of(id, 1024);
    }
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let Ok(msg) = parse(data, &mut slots) else { return };
    // The shard routes by the parsed Call-ID, the steering and sipbench by the scan: same octets.
    assert_eq!(msg.header(HeaderName::CallId), peek_call_id(data), "parsed and scanned Call-ID differ");
    // A name recognised at the line's start (the usual ones) is what the lookup gives.
    for header in msg.headers() {
        assert_eq!(header.name, HeaderName::from_bytes(header.raw_name), "header name {:?}", header.raw_name);
    }
    // Matching's byte scan of the top Via agrees with the decode wherever it answers.
    if let Some(parts) = msg.top_via_branch_sent_by() {
        let via = msg.top_via().expect("the scanned top Via decodes").expect("a top Via");
        assert!(via.has_rfc3261_branch(), "the scan saw the magic cookie");
        assert_eq!(ViaBranchSentBy::from(via), parts, "scanned and decoded top Via differ");
    }
    let _ = msg.request_uri();
    let _ = (msg.call_id(), msg.cseq(), msg.from(), msg.to(), msg.max_forwards(), msg.content_length());
    let _ = (msg.expires(), msg.content_type(), msg.event(), msg.subscription_state());
    msg.vias().for_each(drop);
    msg.contacts().for_each(drop);
    msg.routes().for_each(drop);
    msg.record_routes().for_each(drop);
    msg.allow().for_each(drop);
    msg.option_tags(HeaderName::Require).for_each(drop);
    msg.auth(HeaderName::Authorization).for_each(drop);
    let _ = msg.problems();

    let mut out = vec![0u8; 70_000];
    if let Ok(n) = write_message(&msg, &mut out) {
        let mut again = [HeaderSlot::EMPTY; Message::SLOTS];
        // A canonical rewrite of a well-formed message stays parseable.
        if msg.problems().is_empty() && n <= sipshard_parser::limits::MAX_MESSAGE_BYTES {
            let reparsed = parse(&out[..n], &mut again).expect("canonical output of a clean message parses");
            let others = |m: &Message<'_>| m.headers().filter(|h| h.name != HeaderName::ContentLength).count();
            assert_eq!(others(&reparsed), others(&msg));
            assert_eq!(reparsed.body(), msg.body());
            assert_eq!(reparsed.call_id(), msg.call_id());
        }
    }
    let mut editor = Editor::new(&msg);
    let _ = editor.push_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfuzz");
    let _ = editor.pop_route();
    let _ = editor.decrement_max_forwards();
    let _ = editor.push_record_route(b"<sip:127.0.0.1;lr>");
    let _ = editor.write(&mut out);
    let _ = editor.mark_received(SOURCE);
    let _ = editor.write(&mut out);
    if msg.is_request() {
        let spec = ResponseSpec {
            code: 200,
            reason: "OK",
            to_tag: Some("t"),
            headers: &[],
            body: b"",
            received_from: Some(SOURCE),
        };
        // Marked received (RFC 3581): wherever the response's top Via decodes, it leads back to
        // the source address (and to its port, given rport).
        if let Ok(n) = write_response(&msg, &spec, &mut out) {
            let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
            if let Ok(Ok(Some(via))) = parse(&out[..n], &mut slots).map(|response| response.top_via()) {
                let back = via.response_address().expect("received is an IP address");
                assert_eq!(back.ip().to_canonical(), SOURCE.ip());
                if via.rport.is_some() {
                    assert_eq!(back.port(), SOURCE.port());
                }
            }
        }
    }
});
