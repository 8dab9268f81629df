//! sipbench speaks SIPp's language: `sipbench uac` → `sipp -sn uas` and
//! `sipp -sn uac` → `sipbench uas`, each with zero failed calls, over loopback
//! UDP. Needs `sipp` (sip-tester): under CI=true its absence fails the test.

#[path = "../../tests/it/support.rs"]
#[allow(dead_code)] // Shared with the root crate's tests; not every helper is used here.
mod support;

use std::process::{Command, Stdio};

use support::{Running, free_port, last_stats, sipp_uas, stat, tool, wait_until_bound};

#[test]
fn sipbench_uac_calls_sipp_uas_with_no_failure() {
    sipbench_uac_calls_sipp_uas("udp");
}

#[test]
fn sipbench_uac_calls_sipp_uas_over_tcp_with_no_failure() {
    sipbench_uac_calls_sipp_uas("tcp");
}

#[test]
fn sipp_uac_calls_sipbench_uas_with_no_failure() {
    sipp_uac_calls_sipbench_uas("u1");
}

#[test]
fn sipp_uac_calls_sipbench_uas_over_tcp_with_no_failure() {
    sipp_uac_calls_sipbench_uas("t1");
}

fn sipbench_uac_calls_sipp_uas(transport: &str) {
    let Some(sipp) = tool("sipp") else { return };
    let dir = std::env::temp_dir().join(format!("sipbench-interop-uac-{transport}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let uas_port = free_port();
    let tcp = transport == "tcp";
    let _uas = sipp_uas(&sipp, uas_port, if tcp { "t1" } else { "u1" }, &dir);
    wait_until_bound(uas_port, tcp);
    let json = dir.join("summary.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sipbench"))
        .args(["uac", &format!("127.0.0.1:{uas_port}"), "--rate", "100", "--calls", "300", "--threads", "2"])
        .args(["--transport", transport])
        .args(["--json", json.to_str().expect("utf8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipbench runs");
    assert!(status.success(), "sipbench uac exit {status}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("json");
    assert_eq!(summary["calls_attempted"], 300, "{summary}");
    assert_eq!(summary["calls_ok"], 300, "{summary}");
    assert_eq!(summary["calls_failed"], 0, "{summary}");
    assert_eq!(summary["calls_timed_out"], 0, "{summary}");
    for key in ["setup_ms", "bye_ms"] {
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(summary[key][q].as_f64().is_some_and(|v| v > 0.0), "{key}.{q}: {summary}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sipp_uac_calls_sipbench_uas(transport: &str) {
    let Some(sipp) = tool("sipp") else { return };
    let dir = std::env::temp_dir().join(format!("sipbench-interop-uas-{transport}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (uas_port, uac_port) = (free_port(), free_port());
    let _uas = Running(
        Command::new(env!("CARGO_BIN_EXE_sipbench"))
            .args(["uas", "--listen", &format!("127.0.0.1:{uas_port}"), "--duration", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipbench uas starts"),
    );
    wait_until_bound(uas_port, transport == "t1");
    let stats = dir.join("uac.csv");
    let status = Command::new(&sipp)
        .args(["-sn", "uac", &format!("127.0.0.1:{uas_port}"), "-i", "127.0.0.1", "-p", &uac_port.to_string()])
        .args(["-t", transport, "-r", "100", "-m", "300", "-nostdin", "-timeout", "30", "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-stf", stats.to_str().expect("utf8 path")])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp uac runs");
    let stats = last_stats(&stats);
    assert_eq!(stat(&stats, "SuccessfulCall(C)"), 300, "{stats:?}");
    assert_eq!(stat(&stats, "FailedCall(C)"), 0, "{stats:?}");
    assert!(status.success(), "sipp uac exit {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
