//! `sipbench stripe` prints the stripe the server computes for each Call-ID;
//! `sipbench relay` names what is missing or wrong in its arguments.

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

#[test]
fn the_relay_needs_a_next_hop_and_a_free_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipbench")).args(["relay"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"), "{}", String::from_utf8_lossy(&out.stderr));
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("addr").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_sipbench"))
        .args(["relay", "--listen", &address, "--to", "127.0.0.1:5090", "--duration", "1"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("binding UDP {address}")), "{stderr}");
}
