//! Helpers for the end-to-end tests: finding real tools (failing under CI=true
//! when one is missing), free loopback ports, child processes that die with the
//! test, and readiness probes.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of a tool, or `None` (and a note) when it is missing outside CI.
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{name} is required under CI=true (.ci/run installs it)");
        eprintln!("SKIPPED: {name} is not installed (.ci/run shows how to install it)");
    }
    found
}

/// A port free right now on 127.0.0.1 for both UDP and TCP.
pub(crate) fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Two consecutive loopback ports free right now for both UDP and TCP (a 2-shard node's
/// replication ports, or its shards' own UDP ports).
pub(crate) fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX
            && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
        {
            return port;
        }
    }
}

/// A child process killed when dropped (a failed assertion leaves nothing running).
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends OPTIONS to the server itself until it answers 200 (its health check), up to 10 s.
pub(crate) fn wait_until_healthy(server: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let local = socket.local_addr().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        assert!(Instant::now() < deadline, "sipshard did not answer OPTIONS within 10 s");
        let options = format!(
            "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKhealth{n}\r\nMax-Forwards: 70\r\n\
From: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:{server}>\r\nCall-ID: health-{n}@{local}\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        );
        socket.send_to(options.as_bytes(), server).expect("send");
        let mut buf = [0u8; 2048];
        if let Ok(n) = socket.recv(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..n]);
            assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
            assert!(reply.contains("\r\nAllow: "), "{reply}");
            return;
        }
    }
}

/// Waits (up to 10 s) until something listens on 127.0.0.1:`port` (TCP when `tcp`, else UDP),
/// from /proc/net: probing with a message would disturb the callee's statistics.
pub(crate) fn wait_until_bound(port: u16, tcp: bool) {
    let (table, state) = if tcp { ("/proc/net/tcp", " 0A ") } else { ("/proc/net/udp", " 07 ") };
    let local = format!("0100007F:{port:04X} ");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        if text.lines().any(|l| l.contains(&local) && l.contains(state)) {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port} after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last row of a SIPp `-trace_stat` file, as (column, value) pairs.
pub(crate) fn last_stats(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("SIPp wrote its statistics file");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("a header row").split(';').collect();
    let last: Vec<&str> = lines.next_back().expect("a data row").split(';').collect();
    header.iter().zip(last).map(|(h, v)| (h.to_string(), v.to_string())).collect()
}

pub(crate) fn stat(stats: &[(String, String)], name: &str) -> u64 {
    let value = stats.iter().find(|(h, _)| h == name).map(|(_, v)| v.clone());
    value.unwrap_or_else(|| panic!("no {name} column")).parse().unwrap_or_else(|_| panic!("{name} is not a count"))
}

/// `sipp -sn uas` on 127.0.0.1:`port` over `transport` (`u1` or `t1`), working in `dir`.
pub(crate) fn sipp_uas(sipp: &Path, port: u16, transport: &str, dir: &Path) -> Running {
    let child = Command::new(sipp)
        .args(["-sn", "uas", "-t", transport, "-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp uas starts");
    Running(child)
}
