//! `sipshard demo`: the one-command tour. Starts sipshard on loopback with its
//! embedded defaults (a proxy, one shard per core, on a free port), a callee
//! (`sipbench uas`) behind it as the default route, and a caller (`sipbench
//! uac`) offering calls at a fixed rate for a short, bounded time; then prints
//! sipbench's report (calls/s, setup latency percentiles, failures) and the
//! server's per-shard counters. Everything runs in this process and stops by
//! itself; the exit status is non-zero when a call failed.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sipshard_bench::uac::{self, UacConfig};
use sipshard_bench::uas::{Uas, UasConfig};

use crate::config::{Config, Shards};
use crate::server;

/// What the demo runs.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Seconds of load (bounded: at most 600).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Calls started per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Milliseconds each call is held between the ACK and the BYE.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Role: proxy or b2bua.
    #[arg(long, default_value = "proxy")]
    role: String,
    /// Number of shards, or "auto" for one per core.
    #[arg(long)]
    shards: Option<Shards>,
}

/// Runs the demo; prints the reports.
pub(crate) fn run(args: DemoArgs) -> ExitCode {
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool> {
    anyhow::ensure!((1..=600).contains(&args.seconds), "--seconds must be between 1 and 600");
    anyhow::ensure!(args.rate >= 1, "--rate must be at least 1");
    let mut callee_config = UasConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    callee_config.progress = false;
    let callee = Uas::start(&callee_config).context("starting the callee")?;
    let listen = free_loopback_port()?;
    let mut config = Config::default();
    config.server.listen = listen.to_string();
    config.server.role = args.role.clone();
    if let Some(shards) = args.shards {
        config.server.shards = shards;
    }
    config.proxy.default_route = Some(format!("sip:{}", callee.local));
    let settings = config.settings(&crate::online_cores()).map_err(|errors| {
        anyhow::anyhow!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;
    let shards = settings.cores.len();
    println!(
        "sipshard demo: {} on {listen} ({shards} shards), callee on {}, {} calls/s for {} s",
        args.role, callee.local, args.rate, args.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || server::run_until(settings, server_stop));
    if let Err(e) = wait_until_answering(listen, Duration::from_secs(10)) {
        stop.store(true, Ordering::Relaxed);
        let _ = server.join();
        return Err(e);
    }
    let mut caller = UacConfig::new(listen);
    caller.rate = args.rate as f64;
    caller.calls = args.rate * args.seconds;
    caller.duration = Some(Duration::from_secs(args.seconds));
    caller.hold = Duration::from_millis(args.hold_ms);
    let report = uac::run(&caller);
    stop.store(true, Ordering::Relaxed);
    let shard_reports = server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    let callee_stats = callee.stop()?;
    let report = report?;
    println!("\n== sipbench (caller)\n{}", report.table());
    println!("== sipbench (callee)\n{}\n", callee_stats.line());
    println!("== sipshard (per shard)");
    for shard in shard_reports {
        println!("{}", shard.line());
    }
    let c = &report.counts;
    Ok(c.failed == 0 && c.timed_out == 0 && c.ok == c.attempted)
}

/// A loopback address free for UDP and TCP right now.
pub(crate) fn free_loopback_port() -> Result<SocketAddr> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").context("binding a loopback UDP port")?;
        let address = udp.local_addr()?;
        if std::net::TcpListener::bind(address).is_ok() {
            return Ok(address);
        }
    }
    anyhow::bail!("no free loopback port for the server")
}

/// Sends OPTIONS to the server itself until it answers (its health check), up to `timeout`.
pub(crate) fn wait_until_answering(server: SocketAddr, timeout: Duration) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let local = socket.local_addr()?;
    #[allow(clippy::disallowed_methods)] // The demo is a runtime, not the sans-IO core.
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    for n in 0u32.. {
        #[allow(clippy::disallowed_methods)] // The demo is a runtime, not the sans-IO core.
        let now = Instant::now();
        anyhow::ensure!(now < deadline, "sipshard did not answer OPTIONS on {server} within {timeout:?}");
        let options = format!(
            "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdemo{n}\r\nMax-Forwards: 70\r\n\
From: <sip:demo@{local}>;tag=d{n}\r\nTo: <sip:{server}>\r\nCall-ID: demo-health-{n}@{local}\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        );
        socket.send_to(options.as_bytes(), server)?;
        if let Ok(len) = socket.recv(&mut buf) {
            if buf[..len].starts_with(b"SIP/2.0 200") {
                return Ok(());
            }
        }
    }
    unreachable!("the loop returns or fails at the deadline")
}
