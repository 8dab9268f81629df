//! `sipbench`: the SIPp-style load generator (DESIGN.md §10).
//!
//! It starts small: `sipbench stripe CALL-ID...` prints the stripe each
//! Call-ID falls in, with the same function the server uses, so load can be
//! aimed at a stripe. The UAC/UAS roles are the subject of the sipbench issue.

use std::io::Write;

use anyhow::Result;
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
