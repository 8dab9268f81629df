//! `sipshard parse` end to end: real files in, JSON (or an error and exit 1) out.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn corpus(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/rfc4475");
    ["valid", "invalid", "unreferenced"]
        .iter()
        .map(|dir| root.join(dir).join(format!("{name}.sip")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no corpus file {name}"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn sipshard_parse(arg: &str, stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["parse", arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipshard starts");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("sipshard exits");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn parse_json(name: &str) -> Value {
    let run = sipshard_parse(corpus(name).to_str().expect("utf8 path"), None);
    assert_eq!(run.code, 0, "{name}: stderr {}", run.stderr);
    serde_json::from_str(&run.stdout).expect("stdout is JSON")
}

fn problem_kinds(json: &Value) -> Vec<&str> {
    json["problems"].as_array().expect("problems list").iter().map(|p| p["kind"].as_str().expect("kind")).collect()
}

#[test]
fn prints_start_line_headers_and_typed_fields() {
    let json = parse_json("wsinv");
    assert_eq!(json["type"], "request");
    assert_eq!(json["start_line"]["method"], "INVITE");
    assert_eq!(json["start_line"]["request_uri"]["host"], "chair-dnrc.example.com");
    assert_eq!(json["headers"][0]["name"], "To");
    assert_eq!(json["headers"][0]["raw_name"], "TO");
    assert_eq!(json["call_id"], "wsinv.ndaksdj@192.0.2.1");
    assert_eq!(json["cseq"]["seq"], 9);
    assert_eq!(json["cseq"]["method"], "INVITE");
    assert_eq!(json["max_forwards"], 68);
    assert_eq!(json["to"]["tag"], "1918181833n");
    assert_eq!(json["from"]["tag"], "98asjd8");
    assert_eq!(json["from"]["uri"]["user"], "jdrosen");
    let vias = json["via"].as_array().expect("via list");
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0]["transport"], "UDP");
    assert_eq!(vias[0]["host"], "192.0.2.2");
    assert_eq!(vias[1]["transport"], "TCP");
    assert_eq!(vias[1]["branch"], "z9hG4bK9ikj8");
    assert_eq!(vias[2]["host"], "192.168.255.111");
    assert_eq!(vias[2]["branch"], "z9hG4bK30239");
    assert_eq!(json["contact"][0]["q"], 0.33);
    assert_eq!(json["route"][0]["uri"]["host"], "services.example.com");
    assert_eq!(json["content_length"], 150);
    assert_eq!(json["body_length"], 150);
    assert!(problem_kinds(&json).is_empty());
}

#[test]
fn responses_print_status_code_and_reason() {
    let json = parse_json("unreason");
    assert_eq!(json["type"], "response");
    assert_eq!(json["start_line"]["status_code"], 200);
    assert_eq!(json["start_line"]["reason"], "= 2**3 * 5**2 но сто девяносто девять - простое");
    let json = parse_json("noreason");
    assert_eq!(json["start_line"]["reason"], "");
}

#[test]
fn rule_violations_are_listed_as_problems_with_exit_0() {
    let cases: &[(&str, &str)] = &[
        ("clerr", "content_length_exceeds_body"),
        ("insuf", "missing_header"),
        ("unkscm", "unsupported_uri_scheme"),
        ("mismatch01", "cseq_method_mismatch"),
        ("badvers", "unsupported_version"),
        ("escruri", "headers_in_request_uri"),
        ("multi01", "duplicate_header"),
        ("mcl01", "conflicting_content_length"),
        ("ncl", "invalid_header"),
    ];
    for (name, kind) in cases {
        let json = parse_json(name);
        assert!(problem_kinds(&json).contains(kind), "{name}: {:?}", json["problems"]);
    }
}

#[test]
fn unparseable_messages_exit_1_with_kind_and_offset() {
    let run = sipshard_parse(corpus("bigcode").to_str().expect("utf8"), None);
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.trim(), "error: expected 3-digit status code at byte 8");
    let run = sipshard_parse(corpus("test").to_str().expect("utf8"), None);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: expected SIP version at byte 26");
}

#[test]
fn reads_stdin_and_reports_unreadable_files() {
    let run = sipshard_parse("-", Some(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(json["call_id"], "x");
    assert!(problem_kinds(&json).contains(&"missing_header"));
    let run = sipshard_parse("/nonexistent/message.sip", None);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot read input"));
}
