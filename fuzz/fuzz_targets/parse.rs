//! Fuzz target: parse a datagram, decode every typed header, check the rules,
//! write it back (canonically and with proxy edits) and re-parse what was
//! written. Nothing may panic; what the writer produces must parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard_parser::{
    Editor, HeaderName, HeaderSlot, Message, ResponseSpec, ViaBranchSentBy, parse, peek_call_id, stripe_of,
    write_message, write_response,
};

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
    if msg.is_request() {
        let spec = ResponseSpec { code: 200, reason: "OK", to_tag: Some("t"), headers: &[], body: b"" };
        let _ = write_response(&msg, &spec, &mut out);
    }
});
