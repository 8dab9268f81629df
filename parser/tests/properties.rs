//! Properties: the writer reproduces any canonical message byte for byte, the
//! typed decoders read back what was generated, and no mutation of a real
//! message makes any part of the crate panic.

use proptest::prelude::*;
use sipshard_parser::{
    Editor, Frame, HeaderName, HeaderSlot, Message, ResponseSpec, frame, parse, peek_call_id, stripe_of, write_message,
    write_response,
};

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9.!%*_+`'~-]{0,15}"
}

fn uri_user() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._~!*'()+-]{0,15}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
        (1u8..=254, 0u8..=255, 0u8..=255, 1u8..=254).prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[2001:db8::1]".to_owned()),
    ]
}

/// A Via parameter other than branch and rport: a token, maybe a value (a token, or a
/// quoted string holding separators); sometimes a stale `received`.
fn via_param() -> impl Strategy<Value = String> {
    prop_oneof![
        "x[a-z]{0,6}".prop_map(|name| name),
        ("x[a-z]{0,6}", token()).prop_map(|(name, value)| format!("{name}={value}")),
        ("x[a-z]{0,6}", "[a-z ;,]{0,8}").prop_map(|(name, value)| format!("{name}=\"{value}\"")),
        Just("received=10.1.2.3".to_owned()),
    ]
}

/// A canonical message: long header names, `Name: value`, Content-Length last-but-body.
#[derive(Debug, Clone)]
struct Canonical {
    bytes: Vec<u8>,
    call_id: String,
    cseq: u32,
    method: &'static str,
    branches: Vec<String>,
    from_tag: String,
    max_forwards: u8,
    body_len: usize,
}

fn canonical() -> impl Strategy<Value = Canonical> {
    (
        prop::sample::select(vec!["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY"]),
        uri_user(),
        host(),
        prop::option::of(1u16..=65535),
        prop::collection::vec((host(), "[a-zA-Z0-9]{1,12}"), 1..4),
        (token(), uri_user(), "[a-zA-Z0-9]{1,20}(@[a-z0-9.]{1,20})?"),
        (any::<u32>(), any::<u8>()),
        prop::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,30}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(
            |(method, user, uri_host, port, vias, (from_tag, to_user, call_id), (cseq, mf), extra, body, response)| {
                let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
                let mut text = if response {
                    "SIP/2.0 200 OK\r\n".to_owned()
                } else {
                    format!("{method} sip:{user}@{uri_host}{port_text};transport=udp SIP/2.0\r\n")
                };
                let mut branches = Vec::new();
                for (via_host, branch) in &vias {
                    let branch = format!("z9hG4bK{branch}");
                    text += &format!("Via: SIP/2.0/UDP {via_host}:5060;branch={branch};rport\r\n");
                    branches.push(branch);
                }
                text += &format!("Max-Forwards: {mf}\r\n");
                text += &format!("From: \"Alice\" <sip:alice@{uri_host}>;tag={from_tag}\r\n");
                text += &format!("To: <sip:{to_user}@example.com>\r\n");
                text += &format!("Call-ID: {call_id}\r\n");
                text += &format!("CSeq: {cseq} {method}\r\n");
                text += "Contact: <sip:alice@127.0.0.1:5070>;expires=3600\r\n";
                for (name, value) in &extra {
                    text += &format!("{name}: {}\r\n", value.trim());
                }
                text += &format!("Content-Length: {}\r\n\r\n", body.len());
                let mut bytes = text.into_bytes();
                bytes.extend_from_slice(&body);
                Canonical { bytes, call_id, cseq, method, branches, from_tag, max_forwards: mf, body_len: body.len() }
            },
        )
}

/// Exercises every surface of the crate on `data`; returns whether it parsed.
fn exercise(data: &[u8]) -> bool {
    if let Some(id) = peek_call_id(data) {
        assert!(stripe_of(id, 1024) < 1024);
    }
    let _ = frame(data);
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let Ok(msg) = parse(data, &mut slots) else { return false };
    assert!(msg.len() <= data.len());
    // The shard routes a parsed message by its parsed Call-ID, the steering and sipbench by the
    // scan: the two must give the same octets (the stripe hash is a wire contract).
    assert_eq!(msg.header(HeaderName::CallId), peek_call_id(data), "parsed and scanned Call-ID differ");
    let _ = msg.request_uri();
    let _ = (msg.call_id(), msg.cseq(), msg.from(), msg.to(), msg.max_forwards(), msg.content_length());
    let _ = (msg.expires(), msg.content_type(), msg.event(), msg.subscription_state());
    msg.vias().for_each(drop);
    msg.contacts().for_each(drop);
    msg.routes().for_each(drop);
    msg.record_routes().for_each(drop);
    msg.allow().for_each(drop);
    msg.option_tags(HeaderName::Supported).for_each(drop);
    msg.auth(HeaderName::Authorization).for_each(drop);
    msg.problems().iter().for_each(|p| drop(p.to_string()));
    let mut out = vec![0u8; 70_000];
    let _ = write_message(&msg, &mut out);
    let mut editor = Editor::new(&msg);
    editor.push_via(b"SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKp").expect("edit fits");
    editor.pop_via().expect("edit fits");
    editor.pop_route().expect("edit fits");
    editor.decrement_max_forwards().expect("edit fits");
    editor.push_record_route(b"<sip:127.0.0.1;lr>").expect("edit fits");
    let _ = editor.write(&mut out);
    let mut editor = Editor::new(&msg);
    editor.mark_received(([192, 0, 2, 9], 5999).into()).expect("edit fits");
    let _ = editor.write(&mut out);
    let spec = ResponseSpec {
        code: 486,
        reason: "Busy Here",
        to_tag: Some("x"),
        headers: &[],
        body: b"",
        received_from: Some(([192, 0, 2, 9], 5999).into()),
    };
    let _ = write_response(&msg, &spec, &mut out);
    true
}

fn corpus() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/rfc4475");
    ["valid", "invalid", "unreferenced"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).expect("corpus dir"))
        .map(|entry| std::fs::read(entry.expect("entry").path()).expect("corpus file"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn writer_reproduces_canonical_messages(msg in canonical()) {
        let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
        let parsed = parse(&msg.bytes, &mut slots).expect("canonical message parses");
        let mut out = vec![0u8; msg.bytes.len() + 64];
        let n = write_message(&parsed, &mut out).expect("fits");
        prop_assert_eq!(&out[..n], &msg.bytes[..]);

        prop_assert_eq!(parsed.call_id().unwrap(), Some(msg.call_id.as_str()));
        let cseq = parsed.cseq().unwrap().unwrap();
        prop_assert_eq!((cseq.seq, cseq.method.as_str()), (msg.cseq, msg.method));
        let branches: Vec<&str> = parsed.vias().map(|v| v.unwrap().branch.unwrap()).collect();
        prop_assert_eq!(branches, msg.branches.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(parsed.from().unwrap().unwrap().tag(), Some(msg.from_tag.as_str()));
        prop_assert_eq!(parsed.max_forwards().unwrap(), Some(msg.max_forwards));
        prop_assert_eq!(parsed.body().len(), msg.body_len);
        prop_assert!(parsed.problems().is_empty(), "{:?}", parsed.problems());
        prop_assert_eq!(peek_call_id(&msg.bytes), Some(msg.call_id.as_bytes()));
    }

    #[test]
    fn stream_framing_finds_every_message_in_any_chunking(msgs in prop::collection::vec(canonical(), 1..4), chunk in 1usize..200) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.bytes.iter().copied()).collect();
        let mut buffered = Vec::new();
        let mut fed = 0;
        let mut found = Vec::new();
        loop {
            match frame(&buffered).expect("canonical stream frames") {
                Frame::Partial if fed == stream.len() => break,
                Frame::Partial => {
                    let end = (fed + chunk).min(stream.len());
                    buffered.extend_from_slice(&stream[fed..end]);
                    fed = end;
                }
                Frame::Message { len } => {
                    found.push(buffered[..len].to_vec());
                    buffered.drain(..len);
                }
                Frame::KeepAlive { .. } => prop_assert!(false, "no keep-alives were sent"),
            }
        }
        prop_assert!(buffered.is_empty());
        prop_assert_eq!(found, msgs.iter().map(|m| m.bytes.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn mutated_corpus_messages_never_panic(
        index in 0usize..50,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..12),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let corpus = corpus();
        let mut data = corpus[index % corpus.len()].clone();
        for (at, byte, op) in edits {
            if data.is_empty() { break; }
            let i = at.index(data.len());
            match op {
                0 => data[i] = byte,
                1 => data.insert(i, byte),
                2 => { data.remove(i); }
                _ => data.insert(i, [b'\r', b'\n', b' ', b',', b';', b'"', b'<', b':'][usize::from(byte) % 8]),
            }
        }
        if let Some(cut) = cut {
            let keep = cut.index(data.len() + 1);
            data.truncate(keep);
        }
        exercise(&data);
    }

    #[test]
    fn a_marked_via_leads_back_to_the_source_and_keeps_every_other_parameter(
        sent_by in (host(), prop::option::of(1u16..)),
        params in prop::collection::vec(via_param(), 0..5),
        rport_at in prop::option::of(any::<prop::sample::Index>()),
        more in prop::option::of(("[ ]{0,2}", "[ ]{0,2}")),
        source in (any::<[u8; 4]>(), 1u16..),
    ) {
        // A Via value as UAs write it, rport (valueless) anywhere among its parameters, maybe a
        // second value after a comma; answered to a request from `source`.
        let mut params: Vec<String> = params;
        params.insert(0, "branch=z9hG4bKprop".to_owned());
        if let Some(at) = rport_at {
            params.insert(at.index(params.len() + 1), "rport".to_owned());
        }
        let (host, port) = &sent_by;
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let first = format!("SIP/2.0/UDP {host}{port};{}", params.join(";"));
        let line = match &more {
            Some((before, after)) => format!("{first}{before},{after}SIP/2.0/TCP p.example;branch=z9hG4bKnext"),
            None => first.clone(),
        };
        let request = format!("OPTIONS sip:b@b.example SIP/2.0\r\nVia: {line}\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
        let source = std::net::SocketAddr::from(source);
        let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
        let msg = parse(request.as_bytes(), &mut slots).expect("parses");
        let spec = ResponseSpec { code: 200, reason: "OK", to_tag: None, headers: &[], body: b"", received_from: Some(source) };
        let mut out = vec![0u8; 1024];
        let n = write_response(&msg, &spec, &mut out).expect("fits");
        let mut response_slots = [HeaderSlot::EMPTY; Message::SLOTS];
        let response = parse(&out[..n], &mut response_slots).expect("the response parses");
        let marked = response.top_via().expect("decodes").expect("a Via");
        let back = marked.response_address().expect("an IP address to answer to");
        prop_assert_eq!(back.ip(), source.ip());
        if rport_at.is_some() {
            prop_assert_eq!(back.port(), source.port());
            prop_assert_eq!(marked.rport, Some(Some(source.port())));
        }
        // Every other parameter is there, in order, as written.
        let kept: Vec<String> = marked
            .params
            .iter()
            .filter(|p| !p.name.eq_ignore_ascii_case("received") && !p.name.eq_ignore_ascii_case("rport"))
            .map(|p| match p.value { Some(v) => format!("{}={v}", p.name), None => p.name.to_owned() })
            .collect();
        let written: Vec<&String> = params.iter().filter(|p| *p != "rport" && !p.starts_with("received=")).collect();
        prop_assert_eq!(kept.iter().collect::<Vec<_>>(), written);
        prop_assert_eq!(response.vias().count(), 1 + usize::from(more.is_some()));
        if more.is_some() {
            let next = response.vias().nth(1).expect("two values").expect("decodes");
            prop_assert_eq!(next.branch, Some("z9hG4bKnext"));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        exercise(&data);
    }
}

#[test]
fn every_corpus_message_survives_the_whole_api() {
    let parsed = corpus().iter().filter(|m| exercise(m)).count();
    assert_eq!(parsed, 47, "47 of the 50 torture messages parse (baddn, bigcode and test do not)");
}
