//! `sipshard failover-test`: the kill -9 drill of DESIGN.md §5 on loopback.
//! Starts two `sipshard run` processes (this binary) as nodes 1 and 2 of a
//! cluster (`replicas = 2`, sync or async replication, each node its own SIP
//! address, the other's named as an alias), a callee (sipbench uas) as their
//! default route, and a caller (sipbench uac) that sets up `--calls` calls
//! through node 1 and holds them. Once every call is up, node 1 is killed with
//! SIGKILL; the caller then sends each BYE to node 2 (`--bye-target`, as if a
//! floating IP had moved). Node 2 must have taken node 1's stripes over from
//! their replicas and bridge every BYE to the callee.
//!
//! `--partition-ms N` cuts the replica links instead (both nodes live; a relay
//! between them closes every link connection and refuses new ones for N ms,
//! starting halfway through the setup): each node declares the other dead and
//! owns every stripe; when the links come back they must settle on one view
//! and merge their copies, and every call, including those set up during the
//! partition, must still end through node 2.
//!
//! Prints the survivor's counters and ends with one line,
//! `failover: established=N ended_ok=M lost=K` (lost: established calls whose
//! BYE did not get a 200, or did not reach the callee); the exit status is
//! non-zero when a call was lost. Everything it starts it stops (by PID, or in
//! process), and it is bounded in time.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sipshard_bench::uac::{self, UacConfig};
use sipshard_bench::uas::{Uas, UasConfig};

use crate::demo::{free_loopback_port, wait_until_answering};

/// What the drill runs.
#[derive(clap::Args)]
pub(crate) struct FailoverArgs {
    /// Calls set up and held through node 1 (at most 100,000).
    #[arg(long, default_value_t = 2000)]
    calls: u64,
    /// "sync" or "async" replication.
    #[arg(long, default_value = "sync")]
    replication: String,
    /// Calls set up per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Role of both nodes: b2bua or proxy.
    #[arg(long, default_value = "b2bua")]
    role: String,
    /// Shards per node (each node pins them to the first cores).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Start node 1 again after the kill: it must get its stripes back (snapshot, hand-back)
    /// before the BYEs, which node 2 then forwards to it.
    #[arg(long)]
    rejoin: bool,
    /// Instead of killing node 1, freeze it (SIGSTOP) for this many ms, then let it go on
    /// (SIGCONT): a partition that heals. Each node finds the other silent and takes its
    /// stripes; once they hear each other again, the views must agree and the stripes go home.
    #[arg(long, conflicts_with = "rejoin")]
    pause_ms: Option<u64>,
    /// Cut the replica links for this many ms, from halfway through the setup (both nodes
    /// keep running: a network partition between them), then let them reconnect.
    #[arg(long, conflicts_with_all = ["rejoin", "pause_ms"])]
    partition_ms: Option<u64>,
    /// With --rejoin: how long node 1 stays dead (below the 600 ms dead time, node 2 never
    /// declares it dead: node 1 comes back owning its stripes with no record of its calls,
    /// and takes its calls back from the copies node 2 sends it when it sees the new life, or
    /// by Lookup for a BYE that comes first).
    #[arg(long, default_value_t = 1500, requires = "rejoin")]
    rejoin_after_ms: u64,
    /// Where the nodes' configurations and logs go (default: a fresh directory under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A node process, killed when dropped (so an error path leaves nothing running).
struct Node {
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the drill; prints the summary line.
pub(crate) fn run(args: FailoverArgs) -> ExitCode {
    match drill(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn drill(args: &FailoverArgs) -> Result<bool> {
    anyhow::ensure!((1..=100_000).contains(&args.calls), "--calls must be between 1 and 100000");
    anyhow::ensure!((1..=10_000).contains(&args.rate), "--rate must be between 1 and 10000");
    anyhow::ensure!(
        args.replication == "sync" || args.replication == "async",
        "--replication must be sync or async, not {:?}",
        args.replication
    );
    anyhow::ensure!((1..=64).contains(&args.shards), "--shards must be between 1 and 64");
    anyhow::ensure!(
        args.partition_ms.is_none_or(|ms| (1..=60_000).contains(&ms)),
        "--partition-ms must be between 1 and 60000"
    );
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("sipshard-failover-{}", std::process::id())),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut callee_config = UasConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    callee_config.progress = false;
    let callee = Uas::start(&callee_config).context("starting the callee")?;
    let sip = [free_loopback_port()?, free_loopback_port()?];
    let replication = [free_port_range(args.shards)?, free_port_range(args.shards)?];
    // Node 1 (the lower id) opens the links; with --partition-ms it reaches node 2 through a
    // relay that can cut them.
    let relay = match args.partition_ms {
        Some(_) => Some(LinkRelay::start(free_port_range(args.shards)?, replication[1], args.shards)?),
        None => None,
    };
    let mut nodes = Vec::new();
    for (i, id) in [1u16, 2].into_iter().enumerate() {
        let other = 1 - i;
        let peer_address = match (&relay, id) {
            (Some(relay), 1) => relay.listen,
            _ => replication[other],
        };
        let config = format!(
            "[server]\nlisten = \"{}\"\nshards = {}\nrole = \"{}\"\n\n[proxy]\ndefault_route = \"sip:{}\"\n\n\
             [cluster]\nnode = {id}\nsecret = \"failover-drill-secret\"\nreplicas = 2\nreplication = \"{}\"\n\
             listen = \"{}\"\nstatus_file = \"{}\"\n\n[[cluster.peers]]\nnode = {}\naddress = \"{}\"\nsip = \"{}\"\n",
            sip[i],
            args.shards,
            args.role,
            callee.local,
            args.replication,
            replication[i],
            dir.join(format!("node{id}.status")).display(),
            3 - id,
            peer_address,
            sip[other],
        );
        let path = dir.join(format!("node{id}.toml"));
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        nodes.push(start_node(&path, &dir.join(format!("node{id}.log")))?);
    }
    for (node, &address) in nodes.iter().zip(&sip) {
        wait_until_answering(address, Duration::from_secs(10))
            .with_context(|| format!("node log: {}", node.log.display()))?;
    }
    for node in &nodes {
        wait_for_links(&node.log, args.shards, Duration::from_secs(10))?;
    }
    println!(
        "failover drill: nodes 1 ({}) and 2 ({}), {} shards each, {} replication, {}; {} calls at {}/s through \
         node 1; logs in {}",
        sip[0],
        sip[1],
        args.shards,
        args.replication,
        args.role,
        args.calls,
        args.rate,
        dir.display()
    );

    // Every call is up ~1 s after the last INVITE; node 1 dies then; the first BYE goes 3 s
    // later (with --rejoin, 10 s later: node 1 comes back and gets its stripes back first).
    let setup = Duration::from_millis(args.calls * 1000 / args.rate);
    let kill_at = setup + Duration::from_secs(1);
    let mut caller = UacConfig::new(sip[0]);
    caller.rate = args.rate as f64;
    caller.calls = args.calls;
    let long = args.rejoin || args.pause_ms.is_some() || args.partition_ms.is_some();
    caller.hold = setup + Duration::from_secs(if long { 10 } else { 4 });
    caller.bye_target = Some(sip[1]);
    // One floating address: ACKs go to node 1 too, whichever node's Contact or Record-Route.
    caller.stay_on_target = true;
    caller.progress = false;
    let load = std::thread::spawn(move || uac::run(&caller));
    if let (Some(cut), Some(relay)) = (args.partition_ms, &relay) {
        std::thread::sleep(setup / 2);
        relay.cut(true);
        println!(
            "replica links cut {:.1} s into the run (a partition; both nodes keep running)",
            (setup / 2).as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(cut));
        relay.cut(false);
        report_agreement(&dir, &format!("links back after {cut} ms"));
    } else {
        std::thread::sleep(kill_at);
    }
    let mut node1 = nodes.remove(0);
    let mut returned = None;
    if args.partition_ms.is_some() {
        returned = Some(node1);
    } else if let Some(pause) = args.pause_ms {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(node1.child.id()).context("a pid")?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).context("freezing node 1")?;
        println!("node 1 frozen (SIGSTOP) {:.1} s into the run", kill_at.as_secs_f64());
        std::thread::sleep(Duration::from_millis(pause));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).context("thawing node 1")?;
        report_agreement(&dir, &format!("node 1 thawed after {pause} ms"));
        returned = Some(node1);
    } else {
        node1.child.kill().context("killing node 1")?;
        let _ = node1.child.wait();
        println!("node 1 killed (SIGKILL) {:.1} s into the run", kill_at.as_secs_f64());
        drop(node1);
    }
    if args.rejoin {
        // Dead after 600 ms; then node 1 starts again, on its old configuration.
        std::thread::sleep(Duration::from_millis(args.rejoin_after_ms));
        let _ = fs::remove_file(dir.join("node1.status"));
        let node = start_node(&dir.join("node1.toml"), &dir.join("node1-restarted.log"))?;
        #[allow(clippy::disallowed_methods)] // A runtime, not the sans-IO core.
        let restarted = Instant::now();
        // Back within the dead time (600 ms, the drill's default): never dropped from the view.
        let dropped = args.rejoin_after_ms > 600;
        let owned = if dropped { wait_for_handback(&dir.join("node1.status"), Duration::from_secs(8)) } else { None };
        #[allow(clippy::disallowed_methods)] // A runtime, not the sans-IO core.
        let took = restarted.elapsed();
        match owned {
            None if !dropped => println!(
                "node 1 restarted {} ms after the kill, before node 2 declared it dead: it owns its stripes \
                 and takes its calls from node 2's copies (or by Lookup)",
                args.rejoin_after_ms
            ),
            Some(stripes) => println!(
                "node 1 restarted; it owns {stripes} stripes again {:.1} s later (snapshot and hand-back)",
                took.as_secs_f64()
            ),
            None => println!("node 1 restarted; it did not get its stripes back within 8 s"),
        }
        returned = Some(node);
    }
    let report = load.join().map_err(|_| anyhow::anyhow!("the caller panicked"))??;
    if args.rejoin {
        // A BYE for a call nobody holds: node 2 asks node 1 (Lookup) before its 481.
        match stray_bye(sip[1]) {
            Ok((code, took)) => println!("stray BYE to node 2: {code} after {:.1} ms", took.as_secs_f64() * 1e3),
            Err(e) => println!("stray BYE to node 2: no answer ({e})"),
        }
    }
    // What an operator sees: the view without node 1 (or with it back), node 1's link.
    let status = Command::new(std::env::current_exe()?)
        .args(["cluster", "status", "--config"])
        .arg(dir.join("node2.toml"))
        .output()
        .context("running sipshard cluster status")?;
    println!("\n== sipshard cluster status (node 2)\n{}", String::from_utf8_lossy(&status.stdout).trim_end());
    let survivor = stop_node(nodes.remove(0))?;
    let returned = returned.map(stop_node).transpose()?;
    let callee_stats = callee.stop()?;

    println!("\n== caller\n{}", report.table());
    println!("== callee\n{}\n", callee_stats.line());
    println!("== node 2 (the survivor)");
    for line in survivor.lines().filter(|l| l.starts_with("shard ")) {
        println!("{line}");
    }
    if let Some(log) = returned {
        let how = if args.rejoin {
            "restarted"
        } else if args.pause_ms.is_some() {
            "thawed"
        } else {
            "across the partition"
        };
        println!("== node 1 ({how})");
        for line in log.lines().filter(|l| l.starts_with("shard ")) {
            println!("{line}");
        }
    }
    let established = report.measures.setup.len();
    let ended_ok = report.counts.ok;
    let byes_seen = callee_stats.byes.load(Ordering::Relaxed);
    let lost = established.saturating_sub(ended_ok.min(byes_seen));
    if byes_seen != ended_ok {
        println!("the callee saw {byes_seen} BYEs for {ended_ok} calls that ended well");
    }
    println!("failover: established={established} ended_ok={ended_ok} lost={lost}");
    Ok(lost == 0 && established == args.calls)
}

/// A TCP relay in front of node 2's replication ports (one per shard) that can cut every
/// connection through it and refuse new ones: a partition between the nodes, on loopback.
struct LinkRelay {
    listen: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl LinkRelay {
    /// Listens on `listen` + k for k in 0..shards, relaying to `to` + k.
    fn start(listen: SocketAddr, to: SocketAddr, shards: usize) -> Result<LinkRelay> {
        let relay = LinkRelay { listen, cut: Default::default(), stop: Default::default(), open: Default::default() };
        for k in 0..shards {
            let port = |base: SocketAddr| SocketAddr::new(base.ip(), base.port() + k as u16);
            let listener = std::net::TcpListener::bind(port(listen)).context("binding the link relay")?;
            listener.set_nonblocking(true)?;
            let (target, cut, stop, open) = (port(to), relay.cut.clone(), relay.stop.clone(), relay.open.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((inbound, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue; // Dropped: closed at once.
                    }
                    let Ok(outbound) = std::net::TcpStream::connect(target) else { continue };
                    let _ = inbound.set_nonblocking(false);
                    let pipes =
                        [(inbound.try_clone(), outbound.try_clone()), (outbound.try_clone(), inbound.try_clone())];
                    if let Ok(mut open) = open.lock() {
                        open.extend([inbound, outbound]);
                    }
                    for pipe in pipes {
                        if let (Ok(mut from), Ok(mut to)) = pipe {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                }
            });
        }
        Ok(relay)
    }

    /// Cuts (every connection closed, new ones refused) or heals the links.
    fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
        if cut {
            if let Ok(mut open) = self.open.lock() {
                for stream in open.drain(..) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }
}

impl Drop for LinkRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut(true);
    }
}

/// Starts `sipshard run --config CONFIG`, its output to `log`.
fn start_node(config: &Path, log: &Path) -> Result<Node> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let exe = std::env::current_exe().context("finding the sipshard binary")?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting a node")?;
    Ok(Node { child, log: log.to_owned() })
}

/// Stops a node with SIGTERM (it drains and prints its counters); returns its log.
fn stop_node(mut node: Node) -> Result<String> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(node.child.id()).context("a pid")?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("stopping a node")?;
    let stopped =
        poll_until(Duration::from_secs(40), Duration::from_millis(50), || node.child.try_wait().ok().flatten());
    if stopped.is_none() {
        anyhow::bail!("a node did not stop within 40 s of SIGTERM (log: {})", node.log.display());
    }
    fs::read_to_string(&node.log).with_context(|| format!("reading {}", node.log.display()))
}

/// Sends node `to` a BYE in a dialog nobody holds; returns the status code and how long it took.
fn stray_bye(to: SocketAddr) -> Result<(u16, Duration)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let local = socket.local_addr()?;
    let bye = format!(
        "BYE sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKstray1\r\nMax-Forwards: 70\r\n\
From: <sip:stray@{local}>;tag=s1\r\nTo: <sip:{to}>;tag=s2\r\nCall-ID: stray-{}@{local}\r\nCSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n",
        std::process::id()
    );
    #[allow(clippy::disallowed_methods)] // A runtime, not the sans-IO core.
    let sent = Instant::now();
    socket.send_to(bye.as_bytes(), to)?;
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf)?;
    let code = std::str::from_utf8(&buf[..len])?
        .strip_prefix("SIP/2.0 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|c| c.parse().ok())
        .context("not a SIP response")?;
    Ok((code, sent.elapsed()))
}

/// Calls `probe` every `every` until it gives a value or `timeout` has passed.
fn poll_until<T>(timeout: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    #[allow(clippy::disallowed_methods)] // A runtime, not the sans-IO core.
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        #[allow(clippy::disallowed_methods)] // A runtime, not the sans-IO core.
        let late = Instant::now() > deadline;
        if late {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A `key=N` field of a status file's text (the first: shard 0's line for `epoch=`).
fn status_field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace().find_map(|kv| kv.strip_prefix(key))?.parse().ok()
}

/// Waits until both nodes' status files show one view (same epoch, past the first) with
/// stripes on both; returns the epoch and node 1's stripes.
fn wait_for_agreement(dir: &Path, timeout: Duration) -> Option<(u64, u64)> {
    let read = |node: u16| -> Option<(u64, u64, u64)> {
        let text = fs::read_to_string(dir.join(format!("node{node}.status"))).ok()?;
        let field = |key| status_field(&text, key);
        Some((field("epoch=")?, field("owner1=").unwrap_or(0), field("owner2=").unwrap_or(0)))
    };
    poll_until(timeout, Duration::from_millis(100), || {
        let (one, two) = (read(1)?, read(2)?);
        (one == two && one.0 > 1 && one.1 > 0 && one.2 > 0).then_some((one.0, one.1))
    })
}

/// After `event` (both nodes live again): waits up to 8 s for one view and prints how long it took.
fn report_agreement(dir: &Path, event: &str) {
    #[allow(clippy::disallowed_methods)] // A runtime, not the sans-IO core.
    let since = Instant::now();
    match wait_for_agreement(dir, Duration::from_secs(8)) {
        Some((epoch, stripes)) => println!(
            "{event}; both nodes at epoch {epoch}, node 1 owning {stripes} stripes, {:.1} s later",
            since.elapsed().as_secs_f64()
        ),
        None => println!("{event}; the views did not agree within 8 s"),
    }
}

/// Waits until a node's status file shows it owning stripes; returns how many.
fn wait_for_handback(status: &Path, timeout: Duration) -> Option<u32> {
    poll_until(timeout, Duration::from_millis(100), || {
        let text = fs::read_to_string(status).ok()?;
        // At start (epoch 1) it believes it owns its share; the survivors' view (epoch 2 or
        // more) gives it nothing until the hand-back gives its share back.
        let (epoch, stripes) = (status_field(&text, "epoch=")?, status_field(&text, "owner1=")?);
        (epoch > 1 && stripes > 0).then_some(stripes as u32)
    })
}

/// Waits until a node's log says every shard's replica link is up.
fn wait_for_links(log: &Path, shards: usize, timeout: Duration) -> Result<()> {
    let up = poll_until(timeout, Duration::from_millis(50), || {
        let text = fs::read_to_string(log).unwrap_or_default();
        (text.matches("replica link up").count() >= shards).then_some(())
    });
    up.with_context(|| format!("the replica links did not come up within {timeout:?} (log: {})", log.display()))
}

/// A loopback address whose port and the next `count - 1` are free for TCP (a node's
/// replication ports: one per shard).
fn free_port_range(count: usize) -> Result<SocketAddr> {
    for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        let base = probe.local_addr()?;
        drop(probe);
        let free = (0..count).all(|k| {
            let port = usize::from(base.port()) + k;
            port <= 65_535 && std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no {count} consecutive free loopback ports")
}
