//! `sipbench`: the SIPp-style load generator's command line (DESIGN.md §10).
//!
//! - `sipbench uac TARGET`: calls (or registrations, or OPTIONS) on an open-loop
//!   schedule, latency from the intended send time, a progress line every
//!   second, a final table, `--json`, `--csv` and `--hdr-log` outputs.
//! - `sipbench uas --listen ADDR`: a callee that answers at once.
//! - `sipbench relay --listen ADDR --to ADDR`: the least a proxy does on the
//!   wire (requests to one next hop with a Record-Route, responses by Via),
//!   the floor a server's CPU per call is measured against.
//! - `sipbench stripe CALL-ID...`: the stripe each Call-ID falls in, with the
//!   same function the server uses, so load can be aimed at a stripe.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sipshard_bench::digest::Credentials;
use sipshard_bench::relay::RelayConfig;
use sipshard_bench::transport::TransportKind;
use sipshard_bench::uac::{Scenario, UacConfig};
use sipshard_bench::uas::UasConfig;
use sipshard_bench::{relay, uac, uas};
use sipshard_parser::stripe_of;

#[derive(Parser)]
#[command(name = "sipbench", version, about = "SIPp-style load generator for sipshard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario against TARGET on an open-loop schedule.
    Uac(Box<UacArgs>),
    /// Answer on --listen (UDP and TCP): 180 and 200 to INVITE, 200 to the rest.
    Uas {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5090")]
        listen: SocketAddr,
        /// Stop after this many seconds (default: until killed).
        #[arg(long)]
        duration: Option<f64>,
        /// UDP receiver threads (SO_REUSEPORT on one address).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Challenge REGISTERs (401, MD5 digest) and accept only USER:PASSWORD.
        #[arg(long)]
        auth: Option<Credentials>,
    },
    /// Relay requests to --to (an INVITE with a Record-Route to the relay) and responses by
    /// their top Via: the least a proxy does on the wire, over UDP.
    Relay {
        /// Address to listen on (UDP).
        #[arg(long, default_value = "127.0.0.1:5060")]
        listen: SocketAddr,
        /// Where every request goes.
        #[arg(long)]
        to: SocketAddr,
        /// Stop after this many seconds (default: until killed).
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Print the stripe of each Call-ID.
    Stripe {
        /// Number of stripes in the cluster (a power of two).
        #[arg(long, default_value_t = 1024)]
        stripes: u32,
        /// Call-IDs.
        #[arg(required = true)]
        call_ids: Vec<String>,
    },
}

#[derive(clap::Args)]
struct UacArgs {
    /// The server (ip:port).
    target: SocketAddr,
    /// Send each BYE (and its retransmissions) here instead of TARGET, as if a floating IP had
    /// moved to another node during the hold (UDP only).
    #[arg(long)]
    bye_target: Option<SocketAddr>,
    /// Send each call to one of these addresses instead of TARGET: the one at the call's
    /// stripe (of its Call-ID, over --stripes) modulo their number, as an upstream proxy that
    /// hashes Call-IDs onto a sipshard cluster's nodes would (list the nodes by node id; UDP).
    #[arg(long, value_delimiter = ',')]
    spread: Vec<SocketAddr>,
    /// The cluster's stripe count (for --spread).
    #[arg(long, default_value_t = 1024)]
    stripes: u32,
    /// Send a dialog's ACK and BYE to TARGET (or --spread's pick) as SIPp does, instead of to
    /// its first Route or the callee's Contact (§8.1.2), as if every address were one floating IP.
    #[arg(long)]
    stay_on_target: bool,
    /// Local address to bind (port 0: any; with several threads, consecutive ports from it).
    #[arg(long, default_value = "127.0.0.1:0")]
    local: SocketAddr,
    /// What each call does.
    #[arg(long, value_enum, default_value_t = Scenario::Call)]
    scenario: Scenario,
    /// UDP (with retransmissions) or TCP (one connection per thread).
    #[arg(long, value_enum, default_value_t = TransportKind::Udp)]
    transport: TransportKind,
    /// Calls started per second at first (all threads together).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Calls per second added every --step-seconds (like SIPp's -rate_increase).
    #[arg(long, default_value_t = 0.0)]
    rate_step: f64,
    /// Seconds between rate steps (like SIPp's -fd with -rate_increase).
    #[arg(long, default_value_t = 1.0)]
    step_seconds: f64,
    /// The ramp stops at this rate (like SIPp's -rate_max).
    #[arg(long)]
    rate_max: Option<f64>,
    /// Calls to start in all.
    #[arg(long, default_value_t = 100)]
    calls: u64,
    /// Stop starting calls after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Milliseconds between the ACK and the BYE.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Generator threads, each with its own socket and a share of the rate.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// User part of the Request-URI (and prefix of the users registered).
    #[arg(long, default_value = "service")]
    service: String,
    /// The register scenario cycles through this many users (SERVICE0, SERVICE1, ...).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Expires of each REGISTER, seconds.
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// Answer digest challenges with USER:PASSWORD.
    #[arg(long)]
    auth: Option<Credentials>,
    /// Most calls in progress at once (all threads together); due calls wait beyond it.
    #[arg(long, default_value_t = 100_000)]
    max_concurrent: usize,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write per-second and cumulative counts here, `;`-separated like SIPp's -trace_stat.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one tagged histogram per measure and second) here.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Exit 1 when failed + timed-out calls exceed this share of the attempted ones.
    #[arg(long, default_value_t = 0.0)]
    max_failed_ratio: f64,
    /// No progress line every second.
    #[arg(long)]
    quiet: bool,
}

impl UacArgs {
    fn config(&self) -> UacConfig {
        UacConfig {
            target: self.target,
            bye_target: self.bye_target,
            spread: self.spread.clone(),
            stripes: self.stripes,
            stay_on_target: self.stay_on_target,
            local: self.local,
            transport: self.transport,
            scenario: self.scenario,
            rate: self.rate,
            rate_step: self.rate_step,
            step_seconds: self.step_seconds,
            rate_max: self.rate_max,
            calls: self.calls,
            duration: self.duration.map(Duration::from_secs_f64),
            hold: Duration::from_millis(self.hold_ms),
            threads: self.threads,
            service: self.service.clone(),
            users: self.users,
            expires: self.expires,
            auth: self.auth.clone(),
            max_concurrent: self.max_concurrent,
            csv: self.csv.clone(),
            hdr_log: self.hdr_log.clone(),
            progress: !self.quiet,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Uas { listen, duration, threads, auth } => {
            let config =
                UasConfig { listen, threads, duration: duration.map(Duration::from_secs_f64), auth, progress: true };
            uas::run(&config)?;
        }
        Command::Relay { listen, to, duration } => {
            let config =
                RelayConfig { listen, next_hop: to, duration: duration.map(Duration::from_secs_f64), progress: true };
            relay::run(&config)?;
        }
        Command::Uac(args) => {
            anyhow::ensure!((0.0..=1.0).contains(&args.max_failed_ratio), "--max-failed-ratio must be between 0 and 1");
            let report = uac::run(&args.config())?;
            print!("{}", report.table());
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&report.json())?;
                std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
            }
            let c = &report.counts;
            if (c.failed + c.timed_out) as f64 > args.max_failed_ratio * c.attempted as f64 {
                anyhow::bail!(
                    "{} of {} calls failed or timed out (allowed: {:.3} %)",
                    c.failed + c.timed_out,
                    c.attempted,
                    args.max_failed_ratio * 100.0
                );
            }
        }
        Command::Stripe { stripes, call_ids } => {
            anyhow::ensure!(stripes > 0, "--stripes must be at least 1");
            let mut out = std::io::stdout().lock();
            for id in call_ids {
                match writeln!(out, "{}\t{}", stripe_of(id.as_bytes(), stripes), id) {
                    // A reader that stopped early (`| head`) is not an error.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    other => other?,
                }
            }
        }
    }
    Ok(())
}
