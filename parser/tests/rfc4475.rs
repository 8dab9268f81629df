//! Every RFC 4475 torture message behaves as testdata/rfc4475/INDEX.tsv says:
//! valid ones parse with the right fields and no problems; semantically bad
//! ones parse and carry the problem the RFC names; invalid ones are parse
//! errors or carry the problem the RFC names.

use std::path::PathBuf;

use sipshard_parser::{
    Contact, ErrorKind, Frame, HeaderName, HeaderSlot, Message, Method, Problem, Scheme, Transport, frame, parse,
    unescape,
};

/// What one message must do.
#[derive(Debug)]
enum Expect {
    /// Parses with no problems.
    Clean,
    /// Parses and lists (at least) these problem kinds.
    Problems(&'static [&'static str]),
    /// Fails to parse with this error kind.
    Error(ErrorKind),
}

/// The expectation for each INDEX.tsv row, following its `expected_server_behaviour` column.
fn expectation(name: &str) -> Expect {
    use Expect::*;
    match name {
        // 3.1.1 valid messages, 3.3.12-14 and 3.4.1: parse ok.
        "wsinv" | "intmeth" | "esc01" | "escnull" | "esc02" | "lwsdisp" | "longreq" | "dblreq" | "semiuri"
        | "transports" | "mpart01" | "unreason" | "noreason" | "cparam01" | "cparam02" | "regescrt" | "inv2543" => {
            Clean
        }
        // 3.1.2 invalid messages.
        "badinv01" => Problems(&["invalid_header"]),
        "clerr" => Problems(&["content_length_exceeds_body"]),
        "ncl" => Problems(&["invalid_header"]),
        "scalar02" => Problems(&["invalid_header"]),
        "scalarlg" => Problems(&["invalid_header"]),
        "quotbal" => Problems(&["invalid_header"]),
        "ltgtruri" => Problems(&["invalid_request_uri"]),
        "lwsruri" => Problems(&["start_line_whitespace"]),
        "lwsstart" => Problems(&["start_line_whitespace"]),
        "trws" => Problems(&["start_line_whitespace"]),
        "escruri" => Problems(&["headers_in_request_uri"]),
        "baddate" => Problems(&["date_not_gmt"]),
        "regbadct" => Problems(&["invalid_header"]),
        "badaspec" => Problems(&["invalid_header"]),
        "baddn" => Error(ErrorKind::UnterminatedHeaders),
        "badvers" => Problems(&["unsupported_version"]),
        "mismatch01" => Problems(&["cseq_method_mismatch"]),
        "mismatch02" => Problems(&["cseq_method_mismatch"]),
        "bigcode" => Error(ErrorKind::ExpectedStatusCode),
        // 3.2-3.3 valid syntax, bad semantics: the role decides (these parse cleanly).
        "badbranch" | "unksm2" | "bext01" | "invut" | "regaut01" | "bcast" | "zeromf" | "sdp01" => Clean,
        "insuf" => Problems(&["missing_header"]),
        "unkscm" | "novelsc" => Problems(&["unsupported_uri_scheme"]),
        "multi01" => Problems(&["duplicate_header"]),
        "mcl01" => Problems(&["conflicting_content_length"]),
        // Unreferenced: no SIP-Version on the request line.
        "test" => Error(ErrorKind::ExpectedSipVersion),
        other => panic!("INDEX.tsv row {other} has no expectation here"),
    }
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/rfc4475")
}

struct Row {
    name: String,
    class: String,
    bytes: Vec<u8>,
}

fn rows() -> Vec<Row> {
    let index = std::fs::read_to_string(corpus_dir().join("INDEX.tsv")).expect("INDEX.tsv");
    let mut lines = index.lines();
    let header: Vec<&str> = lines.next().expect("header row").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect("column");
    let (name_col, class_col, file_col, bytes_col) = (col("name"), col("class"), col("file"), col("bytes"));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let bytes = std::fs::read(corpus_dir().join(fields[file_col])).expect("corpus file");
            // The byte count guards against a checkout that rewrote line endings (.gitattributes -text).
            assert_eq!(bytes.len().to_string(), fields[bytes_col], "{} is not byte-exact", fields[name_col]);
            Row { name: fields[name_col].to_owned(), class: fields[class_col].to_owned(), bytes }
        })
        .collect()
}

fn with_message<R>(name: &str, f: impl FnOnce(&Message<'_>) -> R) -> R {
    let row = rows().into_iter().find(|r| r.name == name).expect("row");
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let msg = parse(&row.bytes, &mut slots).unwrap_or_else(|e| panic!("{name}: {e}"));
    f(&msg)
}

#[test]
fn every_message_behaves_as_the_index_says() {
    let rows = rows();
    assert_eq!(rows.len(), 50);
    for row in &rows {
        let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
        let result = parse(&row.bytes, &mut slots);
        let expect = expectation(&row.name);
        match (&expect, &result) {
            (Expect::Clean, Ok(msg)) => {
                let problems: Vec<Problem> = msg.problems().iter().collect();
                assert!(problems.is_empty(), "{}: unexpected problems {problems:?}", row.name);
            }
            (Expect::Problems(kinds), Ok(msg)) => {
                let found: Vec<&str> = msg.problems().iter().map(|p| p.kind()).collect();
                for kind in *kinds {
                    assert!(found.contains(kind), "{}: expected {kind}, found {found:?}", row.name);
                }
            }
            (Expect::Error(kind), Err(e)) => assert_eq!(e.kind, *kind, "{}", row.name),
            _ => panic!("{}: expected {expect:?}, got {result:?}", row.name),
        }
        // The classes agree with the expectations: a valid-parse message never fails to parse.
        if row.class.starts_with("valid") {
            assert!(result.is_ok(), "{} is {} but failed: {result:?}", row.name, row.class);
        }
    }
}

#[test]
fn intmeth_keeps_its_unusual_method_and_quoted_pairs() {
    with_message("intmeth", |msg| {
        let method = Method::Extension("!interesting-Method0123456789_*+`.%indeed'~");
        assert_eq!(msg.method(), Some(method));
        assert_eq!(msg.cseq().unwrap().unwrap().method, method);
        assert_eq!(msg.cseq().unwrap().unwrap().seq, 139122385);
        let uri = msg.request_uri().unwrap().unwrap();
        assert_eq!(uri.user, Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
        assert_eq!(uri.password, Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
        assert_eq!(uri.host, "example.com");
        let to = msg.to().unwrap().unwrap();
        assert_eq!(to.display_name, Some("BEL:\\\u{7} NUL:\\\u{0} DEL:\\\u{7f}"));
        assert_eq!(msg.call_id().unwrap(), Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"));
        let from = msg.from().unwrap().unwrap();
        assert_eq!(from.display_name, Some("token1~` token2'+_ token3*%!.-"));
        assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
        assert_eq!(
            from.params.value("fromParam''~+*_!.-%"),
            Some("\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\u{44e}\u{449}\u{438}\u{439}")
        );
        assert_eq!(msg.max_forwards().unwrap(), Some(255));
    });
}

#[test]
fn esc01_unescapes_the_user_only_where_escapes_are_allowed() {
    with_message("esc01", |msg| {
        let uri = msg.request_uri().unwrap().unwrap();
        assert!(uri.user_unescaped().unwrap().eq_bytes(b"sips:user@example.com"));
        assert_eq!(uri.host, "example.net");
        let to = msg.to().unwrap().unwrap();
        assert!(to.uri.user_unescaped().unwrap().eq_bytes(b"user"));
        let from = msg.from().unwrap().unwrap();
        assert!(from.uri.user_unescaped().unwrap().eq_bytes(b"I have spaces"));
        let Some(Ok(Contact::Address { addr, .. })) = msg.contacts().next() else { panic!("contact") };
        assert!(addr.uri.user_unescaped().unwrap().eq_bytes(b"caller"));
        // name=value%41 decodes once: value%41, not valueA.
        let param = addr.uri.params.iter().find(|p| unescape(p.name).eq_bytes(b"name")).expect("n%61me param");
        assert!(unescape(param.value.unwrap()).eq_bytes(b"value%41"));
        assert_eq!(msg.body().len(), 150);
    });
}

#[test]
fn escnull_keeps_escaped_nulls_and_two_contacts() {
    with_message("escnull", |msg| {
        let to = msg.to().unwrap().unwrap();
        assert!(to.uri.user_unescaped().unwrap().eq_bytes(b"null-\0-null"));
        let contacts: Vec<_> = msg.contacts().map(Result::unwrap).collect();
        assert_eq!(contacts.len(), 2);
        let users: Vec<Vec<u8>> = contacts
            .iter()
            .map(|c| match c {
                Contact::Address { addr, .. } => addr.uri.user_unescaped().unwrap().collect(),
                Contact::Wildcard => panic!("not a wildcard"),
            })
            .collect();
        assert_eq!(users, vec![b"\0".to_vec(), b"\0\0".to_vec()]);
    });
}

#[test]
fn esc02_method_and_header_names_are_not_unescaped() {
    with_message("esc02", |msg| {
        assert_eq!(msg.method(), Some(Method::Extension("RE%47IST%45R")));
        assert_eq!(msg.to().unwrap().unwrap().display_name, Some("%Z%45"));
        assert_eq!(msg.contacts().count(), 2);
        let other = msg.headers().find(|h| h.raw_name == b"C%6Fntact").expect("C%6Fntact header");
        assert_eq!(other.name, HeaderName::Other);
    });
}

#[test]
fn longreq_keeps_its_long_values() {
    with_message("longreq", |msg| {
        let to = msg.to().unwrap().unwrap();
        assert!(to.display_name.unwrap().starts_with("I have a user name of extremeextreme"));
        assert_eq!(to.uri.port, Some(6000));
        assert!(
            to.uri.params.iter().any(|p| p.name.starts_with("longparamnamenamename") && p.value == Some("shortvalue"))
        );
        let from = msg.from().unwrap().unwrap();
        assert_eq!(from.uri.user.unwrap().len(), 115);
        assert_eq!(from.tag().unwrap().len(), 155);
        assert_eq!(msg.vias().count(), 34);
        assert!(msg.vias().all(|v| v.is_ok()));
        assert_eq!(msg.call_id().unwrap().unwrap().len(), 141);
        assert_eq!(msg.declared_content_length(), Some(150));
        assert_eq!(msg.body().len(), 150);
    });
}

#[test]
fn dblreq_is_one_register_in_a_datagram_and_two_messages_on_a_stream() {
    let row = rows().into_iter().find(|r| r.name == "dblreq").expect("row");
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let first = parse(&row.bytes, &mut slots).unwrap();
    assert_eq!(first.method(), Some(Method::Register));
    assert_eq!(first.body(), b"");
    let first_len = first.len();
    assert!(first_len < row.bytes.len(), "the trailing INVITE is not part of the REGISTER");

    // On a stream, frame() splits the bytes into the REGISTER, the CRLF that follows
    // it (a keep-alive, RFC 5626 §3.5.1) and the INVITE.
    let Ok(Frame::Message { len }) = frame(&row.bytes) else { panic!("first frame") };
    assert_eq!(len, first_len);
    let rest = &row.bytes[len..];
    assert_eq!(frame(rest), Ok(Frame::KeepAlive { len: 2, ping: false }));
    let rest = &rest[2..];
    let Ok(Frame::Message { len: second_len }) = frame(rest) else { panic!("second frame: {:?}", frame(rest)) };
    // The INVITE declares 150 octets but 155 follow: the last 5 ("C" CRLF CRLF) frame as a
    // message without Content-Length, a stream framing error (the reader closes the connection).
    assert_eq!(&rest[second_len..], b"C\r\n\r\n");
    assert_eq!(frame(&rest[second_len..]).map_err(|e| e.kind), Err(ErrorKind::MissingContentLength));
    let second = parse(&rest[..second_len], &mut slots).unwrap();
    assert_eq!(second.method(), Some(Method::Invite));
    assert_eq!(second.call_id().unwrap(), Some("dblreq.0ha0isnda977644900765@192.0.2.15"));
    assert_eq!(second.body().len(), 150);
    assert!(second.problems().is_empty());
}

#[test]
fn transports_and_branches_are_typed() {
    with_message("transports", |msg| {
        let transports: Vec<Transport<'_>> = msg.vias().map(|v| v.unwrap().transport).collect();
        assert_eq!(transports[0], Transport::Udp);
        assert!(transports.contains(&Transport::Other("UNKNOWN")), "{transports:?}");
    });
    with_message("badbranch", |msg| {
        let via = msg.top_via().unwrap().unwrap();
        assert_eq!(via.branch, Some("z9hG4bK"));
        assert!(!via.has_rfc3261_branch(), "a bare magic cookie means RFC 2543 matching");
    });
    with_message("bcast", |msg| {
        let vias: Vec<_> = msg.vias().map(Result::unwrap).collect();
        assert_eq!(vias[1].host, "255.255.255.255");
    });
}

#[test]
fn semantically_odd_requests_expose_what_the_role_needs() {
    with_message("semiuri", |msg| {
        assert_eq!(msg.request_uri().unwrap().unwrap().user, Some("user;par=u%40example.net"));
    });
    with_message("zeromf", |msg| assert_eq!(msg.max_forwards().unwrap(), Some(0)));
    with_message("bext01", |msg| {
        let proxy_require: Vec<_> = msg.option_tags(HeaderName::ProxyRequire).map(Result::unwrap).collect();
        let require: Vec<_> = msg.option_tags(HeaderName::Require).map(Result::unwrap).collect();
        assert_eq!(proxy_require, vec!["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]);
        assert_eq!(require, vec!["nothingSupportsThis", "nothingSupportsThisEither"]);
    });
    with_message("regaut01", |msg| {
        let auth = msg.auth(HeaderName::Authorization).next().unwrap().unwrap();
        assert_eq!(auth.scheme, "NoOneKnowsThisScheme");
        assert!(!auth.is_digest());
        assert_eq!(auth.param("opaque-data"), Some("here"));
    });
    with_message("unksm2", |msg| {
        assert_eq!(msg.to().unwrap().unwrap().uri.scheme, Scheme::Other("isbn"));
        assert_eq!(msg.from().unwrap().unwrap().uri.scheme, Scheme::Other("http"));
    });
    with_message("cparam01", |msg| {
        let Some(Ok(Contact::Address { addr, .. })) = msg.contacts().next() else { panic!("contact") };
        assert!(addr.uri.params.is_empty());
        assert!(addr.params.contains("unknownparam"));
    });
    with_message("cparam02", |msg| {
        let Some(Ok(Contact::Address { addr, .. })) = msg.contacts().next() else { panic!("contact") };
        assert!(addr.uri.params.contains("unknownparam"));
    });
    with_message("regescrt", |msg| {
        let Some(Ok(Contact::Address { addr, .. })) = msg.contacts().next() else { panic!("contact") };
        assert_eq!(addr.uri.headers, Some("Route=%3Csip:sip.example.com%3E"));
    });
    with_message("inv2543", |msg| {
        assert_eq!(msg.declared_content_length(), None);
        assert_eq!(msg.body().len(), 105);
        assert_eq!(msg.max_forwards().unwrap(), None);
        assert_eq!(msg.top_via().unwrap().unwrap().branch, None);
    });
    with_message("mpart01", |msg| {
        assert_eq!(msg.body().len(), msg.declared_content_length().unwrap() as usize);
        let ct = msg.content_type().unwrap().unwrap();
        assert_eq!((ct.kind, ct.subtype), ("multipart", "mixed"));
        assert!(ct.params.value("boundary").is_some());
    });
}

#[test]
fn invalid_messages_point_at_the_broken_bytes() {
    for (name, header) in [("quotbal", HeaderName::To), ("badaspec", HeaderName::To), ("regbadct", HeaderName::Contact)]
    {
        with_message(name, |msg| {
            let problem = msg
                .problems()
                .iter()
                .find_map(|p| match p {
                    Problem::InvalidHeader(h, e) if h == header => Some(e),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{name}: no invalid {header:?}"));
            let header_value = msg.header(header).unwrap();
            let start = msg.offset_of(header_value);
            let offset = problem.offset as usize;
            assert!(
                (start..=start + header_value.len()).contains(&offset),
                "{name}: offset {offset} outside {header:?}"
            );
        });
    }
}
