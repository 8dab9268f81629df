//! `sipshard`: the shell binary. Thin glue over the library crates: the CLI,
//! the configuration, and the runtime (glommio executors, sockets).

mod config;
mod demo;
mod failover;
mod parse_cmd;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Shards};

#[derive(Parser)]
#[command(name = "sipshard", version, about = "SIP signaling appliance: proxy, B2BUA and registrar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start sipshard on loopback with a callee and a caller (sipbench) for a few seconds; print
    /// the call report and the server's per-shard counters.
    Demo(demo::DemoArgs),
    /// Run the server (embedded defaults: a proxy on 127.0.0.1:5060); SIGINT or SIGTERM stops it.
    Run(RunArgs),
    /// The kill -9 drill: two clustered nodes, calls held through node 1, node 1 killed, every
    /// BYE sent to node 2; ends with `failover: established=N ended_ok=M lost=K`.
    FailoverTest(failover::FailoverArgs),
    /// A clustered node's view of the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Check a configuration file; print every error with its key and why.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Parse one raw SIP message (bytes as on the wire) and print it as JSON.
    Parse {
        /// File holding the message; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print the running node's status (view epoch, stripes per owner, each shard's links:
    /// state, unacknowledged changes, counters) from the file it rewrites every second;
    /// exit 1 when it is missing or older than 5 s (the node is not running).
    Status {
        /// The node's TOML configuration (its `[cluster]` section names the status file).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration (every key has a default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// SIP address to bind and advertise (server.listen), e.g. 127.0.0.1:5060.
    #[arg(long)]
    listen: Option<String>,
    /// Number of shards, or "auto" for one per core (server.shards).
    #[arg(long)]
    shards: Option<Shards>,
    /// Role (server.role): proxy or b2bua.
    #[arg(long)]
    role: Option<String>,
    /// Default route for requests no other rule matches (proxy.default_route), e.g. sip:127.0.0.1:5090.
    #[arg(long)]
    route: Option<String>,
    /// Transport (server.transport): udp, tcp or both.
    #[arg(long)]
    transport: Option<String>,
    /// First of the shards' own UDP ports, shard k on this + k (server.shard_ports; 0: none).
    #[arg(long)]
    shard_ports: Option<u16>,
    /// Let the kernel run each shard on any core instead of pinning it (server.pin_shards = false).
    #[arg(long)]
    no_pin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Parse { file } => parse_cmd::run(file.as_deref()),
        Command::CheckConfig { file } => check_config(&file),
        Command::Cluster(ClusterCommand::Status { config }) => cluster_status(&config),
        Command::Run(args) => run(args),
        Command::Demo(args) => {
            init_logging("warn");
            demo::run(args)
        }
        Command::FailoverTest(args) => {
            init_logging("warn");
            failover::run(args)
        }
    }
}

fn online_cores() -> Vec<usize> {
    core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect()).unwrap_or_else(|| vec![0])
}

fn print_errors(errors: &[ConfigError]) {
    for error in errors {
        eprintln!("error: {error}");
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let checked = Config::read(file).and_then(|config| config.settings(&online_cores()));
    match checked {
        Ok(settings) => {
            println!(
                "{}: ok ({} shards on cores {:?}, listen {})",
                file.display(),
                settings.cores.len(),
                settings.cores,
                settings.listen
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

fn cluster_status(file: &std::path::Path) -> ExitCode {
    let config = match Config::read(file) {
        Ok(config) => config,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    if config.cluster.peers.is_empty() {
        eprintln!("error: {}: no [cluster] peers: this node is not clustered", file.display());
        return ExitCode::from(2);
    }
    let path = config.cluster.status_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {}: {e} (is the node running?)", path.display());
            return ExitCode::FAILURE;
        }
    };
    print!("{text}");
    let written = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("written_unix_s=")))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    #[allow(clippy::disallowed_methods)] // A command, not the sans-IO core.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let age = now.saturating_sub(written);
    if age > 5 {
        eprintln!("stale: written {age} s ago (the node is not running, or stuck)");
        return ExitCode::FAILURE;
    }
    println!("(written {age} s ago)");
    ExitCode::SUCCESS
}

/// Logs to stderr at `default_level` unless RUST_LOG says otherwise.
fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: RunArgs) -> ExitCode {
    init_logging("info");
    let config = match &args.config {
        Some(path) => Config::read(path),
        None => Ok(Config::default()),
    };
    let settings = config.and_then(|mut config| {
        if let Some(listen) = args.listen {
            config.server.listen = listen;
        }
        if let Some(shards) = args.shards {
            config.server.shards = shards;
        }
        if let Some(role) = args.role {
            config.server.role = role;
        }
        if let Some(route) = args.route {
            config.proxy.default_route = Some(route);
        }
        if let Some(transport) = args.transport {
            config.server.transport = transport;
        }
        if let Some(first) = args.shard_ports {
            config.server.shard_ports = first;
        }
        if args.no_pin {
            config.server.pin_shards = false;
        }
        config.settings(&online_cores())
    });
    let settings = match settings {
        Ok(settings) => settings,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    match server::run(settings) {
        Ok(reports) => {
            for report in reports {
                println!("{}", report.line());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
