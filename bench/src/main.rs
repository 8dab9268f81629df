//! `sipbench`: the SIPp-style load generator (DESIGN.md §10).
//!
//! - `sipbench uac TARGET`: calls at a constant rate (open loop), latency from
//!   the intended send time into HdrHistograms, a progress line every second,
//!   a final table and a `--json` summary ([`uac`]).
//! - `sipbench uas --listen ADDR`: a callee that answers at once ([`uas`]).
//! - `sipbench stripe CALL-ID...`: the stripe each Call-ID falls in, with the
//!   same function the server uses, so load can be aimed at a stripe.
//!
//! UDP only so far; TCP, the register and options scenarios, CSV and
//! HdrHistogram log output are the rest of the sipbench issue.

mod uac;
mod uas;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sipshard_parser::stripe_of;

#[derive(Parser)]
#[command(name = "sipbench", version, about = "SIPp-style load generator for sipshard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Call TARGET: INVITE, 1xx, 200, ACK, hold, BYE, 200, at a constant rate.
    Uac {
        /// The server (ip:port).
        target: SocketAddr,
        /// Local address to bind (port 0: any; with several threads, consecutive ports from it).
        #[arg(long, default_value = "127.0.0.1:0")]
        local: SocketAddr,
        /// Calls started per second (all threads together).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
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
        /// User part of the Request-URI.
        #[arg(long, default_value = "service")]
        service: String,
        /// Write the summary as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Exit 1 when failed + timed-out calls exceed this share of the attempted ones.
        #[arg(long, default_value_t = 0.0)]
        max_failed_ratio: f64,
        /// Most calls in progress at once (all threads together); due calls wait beyond it.
        #[arg(long, default_value_t = 100_000)]
        max_concurrent: usize,
    },
    /// Answer calls on --listen: 180 and 200 to INVITE, 200 to BYE and the rest.
    Uas {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5090")]
        listen: SocketAddr,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Uas { listen, duration } => {
            uas::run(listen, duration.map(Duration::from_secs_f64))?;
        }
        Command::Uac {
            target,
            local,
            rate,
            calls,
            duration,
            hold_ms,
            threads,
            service,
            json,
            max_failed_ratio,
            max_concurrent,
        } => {
            anyhow::ensure!(max_concurrent >= threads, "--max-concurrent must be at least --threads");
            anyhow::ensure!(rate > 0.0, "--rate must be above 0");
            anyhow::ensure!(threads >= 1, "--threads must be at least 1");
            let report = run_uac(threads, |k| uac::UacConfig {
                target,
                local: if local.port() == 0 { local } else { SocketAddr::new(local.ip(), local.port() + k as u16) },
                rate: rate / threads as f64,
                calls: calls / threads as u64 + u64::from((k as u64) < calls % threads as u64),
                duration: duration.map(Duration::from_secs_f64),
                hold: Duration::from_millis(hold_ms),
                service: service.clone(),
                thread: k,
                max_concurrent: max_concurrent / threads,
            })?;
            print_table(&report);
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report.json())?;
                std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
            }
            let bad = (report.failed + report.timed_out) as f64;
            if bad > max_failed_ratio * report.attempted as f64 {
                anyhow::bail!(
                    "{} of {} calls failed or timed out (allowed: {:.3} %)",
                    report.failed + report.timed_out,
                    report.attempted,
                    max_failed_ratio * 100.0
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

/// Runs one generator per thread and merges their reports.
fn run_uac(threads: usize, config: impl Fn(usize) -> uac::UacConfig) -> Result<uac::Report> {
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let config = config(k);
            std::thread::spawn(move || uac::run(&config))
        })
        .collect();
    let mut merged: Option<uac::Report> = None;
    for handle in handles {
        let report = handle.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        merged = Some(match merged {
            None => report,
            Some(mut m) => {
                m.attempted += report.attempted;
                m.ok += report.ok;
                m.failed += report.failed;
                m.timed_out += report.timed_out;
                m.retransmissions += report.retransmissions;
                for (code, n) in report.failures_by_code {
                    *m.failures_by_code.entry(code).or_default() += n;
                }
                m.elapsed = m.elapsed.max(report.elapsed);
                m.setup.add(&report.setup).context("merging histograms")?;
                m.ringing.add(&report.ringing).context("merging histograms")?;
                m.bye.add(&report.bye).context("merging histograms")?;
                m
            }
        });
    }
    merged.context("no generator ran")
}

fn print_table(report: &uac::Report) {
    println!(
        "calls: attempted {}  ok {}  failed {}  timed out {}  retransmissions {}  {:.1} calls/s over {:.1} s",
        report.attempted,
        report.ok,
        report.failed,
        report.timed_out,
        report.retransmissions,
        report.calls_per_s(),
        report.elapsed.as_secs_f64()
    );
    for (code, n) in &report.failures_by_code {
        println!("  failed with {code}: {n}");
    }
    println!("{:<14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}", "ms", "count", "p50", "p90", "p99", "p99.9", "max");
    for (name, h) in [("INVITE->180", &report.ringing), ("INVITE->200", &report.setup), ("BYE->200", &report.bye)] {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{name:<14} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            h.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1000.0
        );
    }
}
