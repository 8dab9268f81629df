//! `sipbench stripe` prints the stripe the server computes for each Call-ID.

use std::process::Command;

#[test]
fn stripe_prints_the_servers_stripe_for_each_call_id() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipbench"))
        .args(["stripe", "a84b4c76e66710@pc33.atlanta.com", "1-1234@127.0.0.1"])
        .output()
        .expect("sipbench runs");
    assert!(out.status.success());
    // The same vectors as parser/src/stripe.rs, computed independently in Python.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "521\ta84b4c76e66710@pc33.atlanta.com\n718\t1-1234@127.0.0.1\n");
}

#[test]
fn zero_stripes_is_a_clear_error() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sipbench")).args(["stripe", "--stripes", "0", "x"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stripes must be at least 1"));
}
