//! sipbench speaks SIPp's language: `sipbench uac` → `sipp -sn uas` and
//! `sipp -sn uac` → `sipbench uas`, each with zero failed calls, over loopback
//! UDP. Needs `sipp` (sip-tester): under CI=true its absence fails the test.

#[path = "../../tests/it/support.rs"]
#[allow(dead_code)] // Shared with the root crate's tests; not every helper is used here.
mod support;

use std::process::{Command, Stdio};

use support::{Running, free_port, tool, wait_until_bound};

#[test]
fn sipbench_uac_calls_sipp_uas_with_no_failure() {
    let Some(sipp) = tool("sipp") else { return };
    let dir = std::env::temp_dir().join(format!("sipbench-interop-uac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let uas_port = free_port();
    let _uas = Running(
        Command::new(&sipp)
            .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string(), "-nostdin"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp uas starts"),
    );
    wait_until_bound(uas_port, false);
    let json = dir.join("summary.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sipbench"))
        .args(["uac", &format!("127.0.0.1:{uas_port}"), "--rate", "100", "--calls", "300", "--threads", "2"])
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

#[test]
fn sipp_uac_calls_sipbench_uas_with_no_failure() {
    let Some(sipp) = tool("sipp") else { return };
    let dir = std::env::temp_dir().join(format!("sipbench-interop-uas-{}", std::process::id()));
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
    wait_until_bound(uas_port, false);
    let stats = dir.join("uac.csv");
    let status = Command::new(&sipp)
        .args(["-sn", "uac", &format!("127.0.0.1:{uas_port}"), "-i", "127.0.0.1", "-p", &uac_port.to_string()])
        .args(["-r", "100", "-m", "300", "-nostdin", "-timeout", "30", "-timeout_error"])
        .args(["-trace_stat", "-fd", "1", "-stf", stats.to_str().expect("utf8 path")])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp uac runs");
    let text = std::fs::read_to_string(&stats).expect("SIPp statistics");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header").split(';').collect();
    let last: Vec<&str> = lines.next_back().expect("a row").split(';').collect();
    let stat = |name: &str| -> u64 {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}"));
        last[i].parse().unwrap_or_else(|_| panic!("{name} is not a count"))
    };
    assert_eq!(stat("SuccessfulCall(C)"), 300);
    assert_eq!(stat("FailedCall(C)"), 0);
    assert!(status.success(), "sipp uac exit {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
