//! `sipshard`: the shell binary. Thin glue over the library crates (CLI, and
//! later config, executors and sockets).

mod parse_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sipshard", version, about = "SIP signaling appliance: proxy, B2BUA and registrar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse one raw SIP message (bytes as on the wire) and print it as JSON.
    Parse {
        /// File holding the message; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Parse { file } => parse_cmd::run(file.as_deref()),
    }
}
