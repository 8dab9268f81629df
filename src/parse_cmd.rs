//! `sipshard parse [FILE|-]`: one raw message in, JSON out.
//!
//! Exit 0 when the message parses (rule violations are listed under
//! `"problems"`, see `sipshard_parser::problems`); exit 1 with the error kind
//! and byte offset on stderr when it cannot be parsed; exit 2 when the input
//! cannot be read or the output cannot be written (a reader that closes the
//! pipe early, as `| head` does, is not an error).

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Map, Value, json};
use sipshard_parser::{
    Auth, Contact, HeaderName, HeaderSlot, Message, NameAddr, Params, ParseError, StartLine, Uri, Via, parse,
};

/// Runs the subcommand.
pub(crate) fn run(file: Option<&Path>) -> ExitCode {
    let input = match read_input(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read input: {e}");
            return ExitCode::from(2);
        }
    };
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    match parse(&input, &mut slots) {
        Ok(msg) => {
            let text = serde_json::to_string_pretty(&message_json(&msg)).expect("invariant: JSON values serialise");
            match writeln!(std::io::stdout().lock(), "{text}") {
                // A reader that stopped early (`| head`) is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: cannot write output: {e}");
                    ExitCode::from(2)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("error: {} at byte {}", e.kind.as_str(), e.offset);
            ExitCode::from(1)
        }
    }
}

fn read_input(file: Option<&Path>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        Some(path) if path != Path::new("-") => {
            bytes = std::fs::read(path)?;
        }
        _ => {
            std::io::stdin().read_to_end(&mut bytes)?;
        }
    }
    Ok(bytes)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn params_json(params: &Params<'_>) -> Value {
    Value::Array(params.iter().map(|p| json!({"name": p.name, "value": p.value})).collect())
}

fn uri_json(uri: &Uri<'_>) -> Value {
    json!({
        "raw": uri.raw,
        "scheme": uri.scheme.as_str(),
        "user": uri.user,
        "user_unescaped": uri.user_unescaped().map(|u| text(&u.collect::<Vec<u8>>())),
        "password": uri.password,
        "host": uri.host,
        "port": uri.port,
        "params": params_json(&uri.params),
        "headers": uri.headers,
    })
}

fn name_addr_json(addr: &NameAddr<'_>) -> Value {
    json!({
        "display_name": addr.display_name,
        "uri": uri_json(&addr.uri),
        "tag": addr.tag(),
        "params": params_json(&addr.params),
    })
}

fn via_json(via: &Via<'_>) -> Value {
    json!({
        "protocol": format!("{}/{}", via.protocol_name, via.protocol_version),
        "transport": via.transport.as_str(),
        "host": via.host,
        "port": via.port,
        "branch": via.branch,
        "received": via.received,
        "rport": via.rport.map(|port| port.map_or(Value::Bool(true), Value::from)),
        "maddr": via.maddr,
        "ttl": via.ttl,
        "params": params_json(&via.params),
    })
}

fn contact_json(contact: &Contact<'_>) -> Value {
    match contact {
        Contact::Wildcard => json!("*"),
        Contact::Address { addr, expires, q } => {
            let mut value = name_addr_json(addr);
            value["expires"] = json!(expires);
            value["q"] = json!(q.map(|q| f64::from(q) / 1000.0));
            value
        }
    }
}

fn auth_json(auth: &Auth<'_>) -> Value {
    json!({"scheme": auth.scheme, "params": params_json(&auth.params)})
}

/// Inserts `key` when the typed value decoded (absent or broken headers are left out:
/// broken ones are listed under "problems").
fn put<T>(
    map: &mut Map<String, Value>,
    key: &str,
    value: Result<Option<T>, ParseError>,
    to_json: impl Fn(&T) -> Value,
) {
    if let Ok(Some(v)) = value {
        map.insert(key.to_owned(), to_json(&v));
    }
}

/// Inserts a list when at least one value exists and all of them decoded.
fn put_list<T>(
    map: &mut Map<String, Value>,
    key: &str,
    values: impl Iterator<Item = Result<T, ParseError>>,
    to_json: impl Fn(&T) -> Value,
) {
    if let Ok(list) = values.map(|v| v.map(|v| to_json(&v))).collect::<Result<Vec<_>, _>>() {
        if !list.is_empty() {
            map.insert(key.to_owned(), Value::Array(list));
        }
    }
}

fn message_json(msg: &Message<'_>) -> Value {
    let mut map = Map::new();
    let version = msg.version();
    let version = format!("SIP/{}.{}", version.major, version.minor);
    match msg.start_line() {
        StartLine::Request(line) => {
            map.insert("type".into(), json!("request"));
            let uri = match msg.request_uri() {
                Some(Ok(uri)) => uri_json(&uri),
                _ => json!({"raw": line.uri}),
            };
            map.insert(
                "start_line".into(),
                json!({"method": line.method.as_str(), "request_uri": uri, "version": version}),
            );
        }
        StartLine::Response(line) => {
            map.insert("type".into(), json!("response"));
            map.insert(
                "start_line".into(),
                json!({"version": version, "status_code": line.code, "reason": line.reason}),
            );
        }
    }
    let headers: Vec<Value> = msg
        .headers()
        .map(|h| json!({"name": h.name_str(), "raw_name": text(h.raw_name), "value": text(h.value)}))
        .collect();
    map.insert("headers".into(), Value::Array(headers));
    put(&mut map, "call_id", msg.call_id(), |id| json!(id));
    put(&mut map, "cseq", msg.cseq(), |c| json!({"seq": c.seq, "method": c.method.as_str()}));
    put(&mut map, "from", msg.from(), name_addr_json);
    put(&mut map, "to", msg.to(), name_addr_json);
    put_list(&mut map, "via", msg.vias(), via_json);
    put(&mut map, "max_forwards", msg.max_forwards(), |n| json!(n));
    put_list(&mut map, "contact", msg.contacts(), contact_json);
    put_list(&mut map, "route", msg.routes(), name_addr_json);
    put_list(&mut map, "record_route", msg.record_routes(), name_addr_json);
    put(&mut map, "content_length", msg.content_length(), |n| json!(n));
    put(
        &mut map,
        "content_type",
        msg.content_type(),
        |m| json!({"type": m.kind, "subtype": m.subtype, "params": params_json(&m.params)}),
    );
    put(&mut map, "expires", msg.expires(), |n| json!(n));
    for (key, name) in [
        ("require", HeaderName::Require),
        ("supported", HeaderName::Supported),
        ("proxy_require", HeaderName::ProxyRequire),
        ("unsupported", HeaderName::Unsupported),
    ] {
        put_list(&mut map, key, msg.option_tags(name), |t| json!(t));
    }
    put_list(&mut map, "allow", msg.allow(), |m| json!(m.as_str()));
    put(&mut map, "event", msg.event(), |e| json!({"type": e.value, "params": params_json(&e.params)}));
    put(
        &mut map,
        "subscription_state",
        msg.subscription_state(),
        |s| json!({"state": s.value, "params": params_json(&s.params)}),
    );
    for (key, name) in [
        ("authorization", HeaderName::Authorization),
        ("proxy_authorization", HeaderName::ProxyAuthorization),
        ("www_authenticate", HeaderName::WwwAuthenticate),
        ("proxy_authenticate", HeaderName::ProxyAuthenticate),
    ] {
        put_list(&mut map, key, msg.auth(name), auth_json);
    }
    map.insert("body_length".into(), json!(msg.body().len()));
    let problems: Vec<Value> = msg
        .problems()
        .iter()
        .map(|p| json!({"kind": p.kind(), "message": p.to_string(), "status_code": p.status_code()}))
        .collect();
    map.insert("problems".into(), Value::Array(problems));
    Value::Object(map)
}
