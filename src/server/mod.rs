//! The runtime: the only code that does network I/O. One glommio executor per
//! shard, pinned to its core (unless `server.pin_shards = false`); every shard
//! binds the SIP address with SO_REUSEPORT, so the kernel spreads datagrams
//! over them; a datagram whose stripe belongs to another shard moves there over
//! a bounded channel mesh (copied out at its size; what one receive batch moves
//! to a shard goes as one message).
//!
//! Per shard, the driver loop of DESIGN.md §2 runs in three tasks that share
//! the shard (`Rc<RefCell<_>>`, never borrowed across an await): receive
//! datagrams (one awaited through io_uring, then what else is queued in
//! `recvmmsg` batches, [`batch`]), take datagrams forwarded by other shards,
//! fire timers. Each calls `handle`, takes every output at once, then sends.
//!
//! Shutdown (SIGINT, SIGTERM): the shards stop accepting new calls (503 with
//! Retry-After), let live transactions finish up to the drain bound, print their
//! counters and exit.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};
use sipshard_shards::proxy::{Proxy, ProxyStats};
use sipshard_shards::registrar::LocationUpdate;
use sipshard_shards::shard::{Input, Output, Peer, Shard, ShardConfig, ShardStats, SharedBytes, Transport};
use sipshard_shards::{DEFAULT_STRIPES, NodeId, ShardId, StripeMap};

use crate::config::{Settings, TcpLimits};

mod batch;
mod cluster;
mod coalesce;
mod tcp;

pub(crate) use cluster::LinkReport;

/// Largest datagram taken from the socket (a UDP payload's maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Depth of each shard-to-shard channel; a full channel makes the sender wait.
const MESH_DEPTH: usize = 1_024;

/// How often the timer task looks at the wheel when nothing is due sooner, and at the stop flag.
const TICK: Duration = Duration::from_millis(10);

/// A message moving between shards over the mesh.
enum Hop {
    /// To the shard that owns its stripe; `via_shard` received it (and, over TCP, holds
    /// the connection the answer goes back on, §18.2.2).
    Routed { peer: Peer, bytes: Vec<u8>, via_shard: usize },
    /// Several `Routed` messages from one receive batch, in the order they arrived: one
    /// channel send, so one wake-up of a sleeping owner, rather than one per message.
    RoutedBatch { messages: Vec<(Peer, Vec<u8>)>, via_shard: usize },
    /// Test steering: handle as if received from the socket (it may move on again).
    Steered { peer: Peer, bytes: Vec<u8> },
    /// Write on the TCP connection to `peer`, which this shard holds.
    Send { peer: Peer, bytes: SharedBytes },
    /// An AoR's bindings changed on its owner: update this shard's location cache.
    Location(LocationUpdate),
    /// Send to `node`, which owns the message's stripe, on this shard's replica link.
    ToNode { node: NodeId, peer: Peer, bytes: Vec<u8>, via_shard: usize },
    /// A new view of the cluster (a peer died, came back, got its stripes back): take it.
    View(StripeMap),
    /// Shard `shard` has sent its snapshot for returning node `node` (to shard 0, which
    /// hands the stripes back once every shard has).
    SnapshotSent { node: NodeId, shard: usize },
}

/// Where a received message must go when this shard does not own its stripe.
#[derive(Copy, Clone, Debug)]
enum Moved {
    /// Another shard of this node.
    Shard(usize),
    /// Another node, over the link of shard `shard` (the stripe's shard number).
    Node { node: NodeId, shard: usize },
}

/// What a shard reports when it stops.
#[derive(Debug)]
pub(crate) struct ShardReport {
    /// Which shard.
    pub(crate) shard: usize,
    /// The core it ran on.
    pub(crate) core: usize,
    /// Its shard counters.
    pub(crate) stats: ShardStats,
    /// The proxy's counters.
    pub(crate) proxy: ProxyStats,
    /// Datagrams that could not be sent.
    pub(crate) send_errors: u64,
    /// Outputs for a transport this server does not run, dropped.
    pub(crate) unsupported_transport: u64,
    /// TCP connections accepted.
    pub(crate) tcp_accepted: u64,
    /// TCP connections opened to peers.
    pub(crate) tcp_connected: u64,
    /// TCP connections refused (limit) or that failed to connect.
    pub(crate) tcp_refused: u64,
    /// TCP connections closed for idleness.
    pub(crate) tcp_closed_idle: u64,
    /// TCP connections closed because their stream did not frame (RFC 3261 §18.3).
    pub(crate) tcp_framing_errors: u64,
    /// Messages dropped because a connection's send queue was full.
    pub(crate) tcp_queue_full: u64,
    /// `recvmmsg` batches that brought at least one datagram.
    pub(crate) udp_batches: u64,
    /// Datagrams those batches brought.
    pub(crate) udp_batched_datagrams: u64,
    /// Datagrams larger than a receive buffer, dropped.
    pub(crate) udp_truncated: u64,
    /// The replica links, when the node is clustered.
    pub(crate) links: Vec<LinkReport>,
    /// Changes a full link refused, messages held for acknowledgements, most held at once,
    /// changes coalesced away (async).
    pub(crate) replication: (u64, u64, usize, u64),
}

impl ShardReport {
    /// One line, `shard N (core C): key=value ...`, as `sipshard run` prints it on exit.
    pub(crate) fn line(&self) -> String {
        let s = &self.stats;
        let counters: [(&str, u64); 29] = [
            ("local", s.local),
            ("forwarded_to_shard", s.forwarded_to_shard),
            ("transactions", s.transactions_created),
            ("client_transactions", s.client_transactions_created),
            ("responses_sent", s.responses_sent),
            ("requests_sent", s.requests_sent),
            ("acks_relayed", s.acks_relayed),
            ("responses_relayed_stateless", s.responses_relayed_stateless),
            ("retransmissions_received", s.retransmissions_received),
            ("failures", s.transaction_failures),
            ("dropped_malformed", s.dropped_malformed),
            ("keepalives", s.keepalives_received),
            ("stray_responses", s.stray_responses),
            ("refused_full", s.refused_full),
            ("refused_draining", s.refused_draining),
            ("refused_too_large", s.refused_too_large),
            ("relayed", self.proxy.relayed),
            ("rejected", self.proxy.rejected),
            ("send_errors", self.send_errors),
            ("unsupported_transport", self.unsupported_transport),
            ("tcp_accepted", self.tcp_accepted),
            ("tcp_connected", self.tcp_connected),
            ("tcp_refused", self.tcp_refused),
            ("tcp_closed_idle", self.tcp_closed_idle),
            ("tcp_framing_errors", self.tcp_framing_errors),
            ("tcp_queue_full", self.tcp_queue_full),
            ("udp_batches", self.udp_batches),
            ("udp_batched_datagrams", self.udp_batched_datagrams),
            ("udp_truncated", self.udp_truncated),
        ];
        let mut line = format!("shard {} (core {}):", self.shard, self.core);
        for (name, value) in counters {
            line.push_str(&format!(" {name}={value}"));
        }
        if !self.links.is_empty() {
            let (refused, held, held_max, coalesced) = self.replication;
            let cluster: [(&str, u64); 15] = [
                ("forwarded_to_node", s.forwarded_to_node),
                ("replicas_installed", s.replicas_installed),
                ("replicas_removed", s.replicas_removed),
                ("replicas_refused", s.replicas_refused),
                ("replicas_merged", s.replicas_merged),
                ("stripes_taken_over", s.stripes_taken_over),
                ("records_activated", s.records_activated),
                ("stripes_handed_over", s.stripes_handed_over),
                ("records_deactivated", s.records_deactivated),
                ("lookups", s.lookups),
                ("lookups_found", s.lookups_found),
                ("changes_refused", refused),
                ("held_messages", held),
                ("held_max", held_max as u64),
                ("changes_coalesced", coalesced),
            ];
            for (name, value) in cluster {
                line.push_str(&format!(" {name}={value}"));
            }
            for l in &self.links {
                line.push(' ');
                line.push_str(&l.describe());
            }
        }
        line
    }
}

/// Runs the server until SIGINT or SIGTERM; returns each shard's counters.
pub(crate) fn run(settings: Settings) -> anyhow::Result<Vec<ShardReport>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    run_until(settings, stop)
}

/// Runs the server until `stop` is set.
pub(crate) fn run_until(settings: Settings, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<ShardReport>> {
    let shards = settings.cores.len();
    if shards == 0 {
        bail!("no shard to run: no core available");
    }
    let settings = fit_io_memory(settings, memlock_limit())?;
    let mesh = MeshBuilder::<Hop, Full>::full(shards, MESH_DEPTH);
    // Every node computes the same map from the same member list (DESIGN.md §5).
    let stripes = match &settings.cluster {
        Some(c) => StripeMap::balanced(1, DEFAULT_STRIPES, &c.nodes(), shards as u16, c.replicas),
        None => StripeMap::balanced(1, DEFAULT_STRIPES, &[NodeId(0)], shards as u16, 1),
    };
    let mut handles = Vec::with_capacity(shards);
    // Each shard's count of transactions still waiting for a final response, for a
    // graceful stop (usize::MAX until the shard has counted).
    let pending: Arc<[AtomicUsize]> = (0..shards).map(|_| AtomicUsize::new(usize::MAX / shards)).collect();
    // One clock origin for the node, and for the cluster: records carry their timers'
    // deadlines in ms since it, so a backup arms them where the owner would have.
    let epoch = cluster_time_origin();
    let status: Arc<std::sync::Mutex<Vec<String>>> = Arc::new(std::sync::Mutex::new(vec![String::new(); shards]));
    let node = NodeShared { stripes, stop: Arc::clone(&stop), epoch, pending, status: Arc::clone(&status) };
    if let Some(cluster) = &settings.cluster {
        cluster::write_status_file(cluster.clone(), status, stop);
    }
    for (index, &core) in settings.cores.iter().enumerate() {
        let (mesh, settings, node) = (mesh.clone(), settings.clone(), node.clone());
        // Unpinned, `core` still names the shard (its counters, its report line).
        let placement = if settings.pin_shards { Placement::Fixed(core) } else { Placement::Unbound };
        let mut builder =
            LocalExecutorBuilder::new(placement).name(&format!("shard-{index}")).io_memory(settings.io_memory);
        if let Some(spin) = settings.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let handle = builder
            .spawn(move || async move { shard_main(index, core, settings, mesh, node).await })
            .map_err(|e| anyhow::anyhow!("starting shard {index} on core {core}: {e}"))?;
        handles.push(handle);
    }
    tracing::info!(shards, listen = %settings.listen, cores = ?settings.cores, "sipshard running");
    if let Some(hint) = shard_ports_hint(shards, settings.transports.udp, settings.shard_ports.is_some()) {
        tracing::info!(shards, "{hint}");
    }
    if let Some(c) = &settings.cluster {
        let peers: Vec<String> = c.peers.iter().map(|(n, a)| format!("{}@{a}", n.0)).collect();
        tracing::info!(
            node = c.node.0,
            site = c.site,
            replicas = c.replicas,
            sync = c.sync,
            replication = %c.listen,
            ?peers,
            "clustered"
        );
    }
    let mut reports = Vec::with_capacity(shards);
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => return Err(e.context(format!("shard {index}"))),
            Err(e) => return Err(executor_error(e, &settings, index)),
        }
    }
    Ok(reports)
}

/// The cluster's time base: the wall-clock instant 2026-01-01T00:00:00Z as an `Instant` of
/// this process. Nodes whose clocks agree (NTP) count shard time from the same moment.
fn cluster_time_origin() -> Instant {
    #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    let origin = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let since = wall.duration_since(origin).unwrap_or_default();
    now.checked_sub(since).unwrap_or(now)
}

/// glommio needs at least this much locked memory per executor for its rings.
const MIN_MEMLOCK_PER_SHARD: u64 = 512 * 1024;

/// The locked-memory limit (`ulimit -l`) in bytes, from /proc/self/limits; `None` if unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max locked memory"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Sizes io_memory so that every shard's buffers fit half the locked-memory limit (the
/// rings take the rest); fails with what to change when even the minimum does not fit.
fn fit_io_memory(mut settings: Settings, limit: Option<u64>) -> anyhow::Result<Settings> {
    let Some(limit) = limit else { return Ok(settings) };
    let shards = settings.cores.len() as u64;
    if limit < MIN_MEMLOCK_PER_SHARD {
        bail!(
            "the locked-memory limit is {} KiB; io_uring needs at least {} KiB per process. Raise it \
             (`ulimit -l`, LimitMEMLOCK= in the systemd unit, memlock in /etc/security/limits.conf); see tuning.md",
            limit / 1024,
            MIN_MEMLOCK_PER_SHARD / 1024
        );
    }
    let fits = (limit / 2 / shards) as usize & !4095;
    if settings.io_memory > fits {
        if fits < 64 * 1024 {
            bail!(
                "{shards} shards do not fit the locked-memory limit of {} KiB (each needs at least 128 KiB): \
                 lower server.shards or raise the limit (`ulimit -l`); see tuning.md",
                limit / 1024
            );
        }
        tracing::info!(
            configured_kib = settings.io_memory / 1024,
            used_kib = fits / 1024,
            memlock_kib = limit / 1024,
            "io_memory lowered to fit the locked-memory limit"
        );
        settings.io_memory = fits;
    }
    Ok(settings)
}

/// Turns glommio's start-up failure into an error that says what to change.
fn executor_error(e: glommio::GlommioError<()>, settings: &Settings, index: usize) -> anyhow::Error {
    let text = e.to_string();
    let hint = if text.contains("Cannot allocate memory") || text.contains("ENOMEM") || text.contains("memlock") {
        format!(
            "io_uring could not lock its memory: {} shards x {} KiB of io_memory plus ring memory exceed the \
             locked-memory limit (`ulimit -l`). Lower server.io_memory_kib or server.shards, or raise the \
             limit (LimitMEMLOCK= in the systemd unit, memlock in /etc/security/limits.conf); see tuning.md",
            settings.cores.len(),
            settings.io_memory / 1024
        )
    } else if text.contains("Operation not permitted") || text.contains("Function not implemented") {
        "io_uring is not available: a kernel of 5.8 or later with io_uring enabled is needed \
         (sysctl kernel.io_uring_disabled=0; containers may need a seccomp profile that allows it); see tuning.md"
            .to_owned()
    } else {
        "see tuning.md".to_owned()
    };
    anyhow::anyhow!("shard {index} could not start its executor: {text}. {hint}")
}

/// Which of a shard's UDP ports a receive loop reads.
#[derive(Copy, Clone, Debug)]
enum UdpPort {
    /// The SIP port every shard shares (SO_REUSEPORT).
    Shared,
    /// The shard's own port (`server.shard_ports`).
    Own,
}

/// Test steering (`server.steer_to_wrong_shard`): picks, for a datagram, a shard that
/// does not own its stripe, with the same pure routing functions the shards use.
#[derive(Clone)]
struct Steer {
    me: usize,
    shards: usize,
    map: StripeMap,
}

impl Steer {
    /// The shard to hand `bytes` to first, or `None` to handle it here (it is not ours).
    fn wrong_shard(&self, bytes: &[u8]) -> Option<usize> {
        let call_id = sipshard_parser::peek_call_id(bytes)?;
        let stripe = sipshard_shards::StripeId::of_call_id(call_id, self.map.stripe_count());
        let owner = usize::from(self.map.owner(stripe).shard.0);
        let wrong = (owner + 1) % self.shards;
        (wrong != owner && wrong != self.me).then_some(wrong)
    }
}

/// One shard's sockets, channels and state.
struct Driver {
    /// This shard's index.
    index: usize,
    /// How many shards the node runs.
    shards: usize,
    shard: RefCell<Shard<Proxy>>,
    /// The UDP socket (`None` when the server runs TCP only).
    udp: Option<UdpSocket>,
    /// This shard's own UDP port (`server.shard_ports`): requests go out from it, so that
    /// their answers come back to it.
    own_udp: Option<UdpSocket>,
    mesh: Senders<Hop>,
    /// TCP connections this shard holds, by peer address: the writer task's queue.
    tcp: RefCell<std::collections::HashMap<SocketAddr, tcp::Connection>>,
    /// Peers whose TCP connection another shard holds (learned from routed messages).
    tcp_routes: RefCell<std::collections::HashMap<SocketAddr, usize>>,
    /// TCP limits.
    tcp_limits: TcpLimits,
    /// Connection ids.
    next_connection: Cell<u64>,
    /// The CRLF that answers a TCP keep-alive ping (RFC 5626 §3.5.1), shared, not allocated
    /// per ping.
    pong: SharedBytes,
    counters: Counters,
    /// The replica links, when the node has peers.
    replication: Option<cluster::Replication>,
}

/// The runtime's own counters, per shard.
#[derive(Default)]
struct Counters {
    send_errors: Cell<u64>,
    unsupported_transport: Cell<u64>,
    tcp_accepted: Cell<u64>,
    tcp_connected: Cell<u64>,
    tcp_refused: Cell<u64>,
    tcp_closed_idle: Cell<u64>,
    tcp_framing_errors: Cell<u64>,
    tcp_queue_full: Cell<u64>,
    udp_batches: Cell<u64>,
    udp_batched_datagrams: Cell<u64>,
    udp_truncated: Cell<u64>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// What every shard of the node shares at start: the stripe map, the stop flag, the clock
/// origin, each shard's count of unanswered transactions (for a graceful stop), and its
/// cluster status line (written to the status file by a thread of its own).
#[derive(Clone)]
struct NodeShared {
    stripes: StripeMap,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    pending: Arc<[AtomicUsize]>,
    /// Each shard's cluster status line, refreshed every second (clustered nodes only).
    status: Arc<std::sync::Mutex<Vec<String>>>,
}

/// A UDP socket on `listen`, shared by the shards (SO_REUSEPORT) when `shared`, with `buffer`
/// bytes of receive and send buffer asked for (bursts beyond the kernel's default 208 KiB are
/// dropped otherwise).
fn bind_udp(listen: SocketAddr, buffer: usize, shared: bool) -> std::io::Result<UdpSocket> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_port(shared)?;
    if buffer > 0 {
        socket.set_recv_buffer_size(buffer)?;
        socket.set_send_buffer_size(buffer)?;
        let got = socket.recv_buffer_size()?;
        if got < buffer {
            tracing::debug!(asked = buffer, got, "UDP receive buffer capped by net.core.rmem_max");
        }
    }
    socket.bind(&listen.into())?;
    Ok(UdpSocket::from(socket))
}

async fn shard_main(
    spawned: usize,
    core: usize,
    settings: Settings,
    mesh: MeshBuilder<Hop, Full>,
    node: NodeShared,
) -> anyhow::Result<ShardReport> {
    let NodeShared { stripes, stop, epoch, pending, status } = node;
    let udp =
        match settings.transports.udp {
            true => Some(bind_udp(settings.listen, settings.udp_buffer, true).map_err(|e| {
                anyhow::anyhow!("binding UDP {}: {e} (is another process on that port?)", settings.listen)
            })?),
            false => None,
        };
    let listener =
        match settings.transports.tcp {
            true => Some(glommio::net::TcpListener::bind(settings.listen).map_err(|e| {
                anyhow::anyhow!("binding TCP {}: {e} (is another process on that port?)", settings.listen)
            })?),
            false => None,
        };
    let (senders, mut receivers) = mesh.join().await.map_err(|e| anyhow::anyhow!("joining the shard mesh: {e}"))?;
    // The shard's number is its place in the mesh (the order shards joined it), not the order
    // they were spawned in: messages for shard k go to mesh peer k.
    let index = senders.peer_id();
    tracing::debug!(shard = index, spawned, core, "shard joined the mesh");
    let own_udp = match settings.shard_ports.and_then(|p| p.port_of(ShardId(index as u16))) {
        Some(port) => {
            let addr = SocketAddr::new(settings.listen.ip(), port);
            let socket = bind_udp(addr, settings.udp_buffer, false).map_err(|e| {
                anyhow::anyhow!("binding shard {index}'s own UDP port {addr} (server.shard_ports): {e}")
            })?;
            Some(socket)
        }
        None => None,
    };
    let stripes_home = stripes.clone();
    let seed = 0x5eed_0000 ^ index as u64 ^ (std::process::id() as u64) << 20;
    let node_id = settings.cluster.as_ref().map_or(NodeId(0), |c| c.node);
    let config = ShardConfig {
        node: node_id,
        shard: ShardId(index as u16),
        local: settings.listen,
        shard_ports: settings.shard_ports,
        stripes,
        max_calls: settings.max_calls_per_shard,
        max_timers: sipshard_shards::shard::timers_for(settings.max_calls_per_shard),
        timers: settings.timers,
        seed,
        replicate: settings.cluster.is_some(),
        retry_after_s: settings.retry_after_s,
        registrar: settings.registrar.clone(),
        max_message_bytes: settings.max_message_bytes,
        no_answer: settings.no_answer,
        max_call_duration: settings.max_call_duration,
        lookup_before_481: settings.cluster.is_some(),
    };
    #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
    let shard = Shard::with_clock(config, Proxy::new(settings.proxy.clone()), epoch, Instant::now());
    // The incarnation: a new one at every start (the time in ms), so peers renumber.
    let incarnation = Instant::now().saturating_duration_since(epoch).as_millis() as u64 ^ seed << 40;
    let replication =
        settings.cluster.as_ref().map(|c| cluster::Replication::new(c, index, epoch, incarnation, &stripes_home));
    let driver = Rc::new(Driver {
        index,
        shards: settings.cores.len(),
        shard: RefCell::new(shard),
        udp,
        own_udp,
        mesh: senders,
        tcp: RefCell::default(),
        tcp_routes: RefCell::default(),
        tcp_limits: settings.tcp,
        next_connection: Cell::new(0),
        pong: SharedBytes::from(&b"\r\n"[..]),
        counters: Counters::default(),
        replication,
    });
    let done = Rc::new(Cell::new(false));
    if let Some(cluster) = &settings.cluster {
        driver.start_replication(cluster.listen, Rc::clone(&done), status)?;
    }
    for (_, mut stream) in receivers.streams() {
        let (driver, done) = (Rc::clone(&driver), Rc::clone(&done));
        glommio::spawn_local(async move {
            while !done.get() {
                let Some(hop) = stream.next().await else { break };
                match hop {
                    Hop::Routed { peer, bytes, via_shard } => {
                        driver.learn_tcp_route(peer, via_shard);
                        driver.process(Input::Forwarded { peer, bytes: &bytes }).await;
                    }
                    Hop::RoutedBatch { messages, via_shard } => {
                        for (peer, bytes) in messages {
                            driver.learn_tcp_route(peer, via_shard);
                            driver.process(Input::Forwarded { peer, bytes: &bytes }).await;
                        }
                    }
                    Hop::Steered { peer, bytes } => {
                        if let Some(moved) = driver.process(Input::Datagram { peer, bytes: &bytes }).await {
                            driver.pass_on(moved, peer, bytes).await;
                        }
                    }
                    Hop::Send { peer, bytes } => driver.transmit(peer, bytes).await,
                    Hop::Location(update) => drop(driver.handle(Input::Location(&update))),
                    Hop::ToNode { node, peer, bytes, via_shard } => {
                        // Answers come back on this shard's link; the connection is on `via_shard`.
                        driver.learn_tcp_route(peer, via_shard);
                        driver.forward_to_node(node, peer, &bytes)
                    }
                    Hop::View(view) => drop(driver.adopt_view(&view).await),
                    Hop::SnapshotSent { node, shard } => driver.snapshot_sent(node, shard).await,
                }
            }
        })
        .detach();
    }
    if let Some(listener) = listener {
        let (driver, done) = (Rc::clone(&driver), Rc::clone(&done));
        glommio::spawn_local(async move { driver.accept_loop(listener, done).await }).detach();
    }
    let timers = {
        let (driver, done, stop, pending) =
            (Rc::clone(&driver), Rc::clone(&done), Arc::clone(&stop), Arc::clone(&pending));
        let drain = settings.drain;
        glommio::spawn_local(async move {
            let mut stopping_since: Option<Instant> = None;
            loop {
                #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
                let now = Instant::now();
                let due = driver.shard.borrow().poll_timeout();
                let wait = due.map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
                glommio::timer::sleep(wait).await;
                driver.process(Input::Timeout).await;
                if stop.load(Ordering::Relaxed) {
                    let since = *stopping_since.get_or_insert_with(|| {
                        driver.shard.borrow_mut().set_draining(true);
                        now
                    });
                    // Every shard keeps reading until the whole node is quiet: a message for a
                    // transaction on another shard may still arrive on this one's socket.
                    let mine = driver.shard.borrow().unanswered_transactions();
                    pending[index].store(mine, Ordering::Relaxed);
                    let node: usize = pending.iter().map(|p| p.load(Ordering::Relaxed)).sum();
                    if node == 0 || now.duration_since(since) >= drain {
                        done.set(true);
                        break;
                    }
                }
            }
        })
    };
    let steer = settings.steer_to_wrong_shard.then(|| Steer {
        me: index,
        shards: settings.cores.len(),
        map: driver.shard.borrow().stripe_map().clone(),
    });
    let receive =
        glommio::spawn_local(Rc::clone(&driver).receive_udp(UdpPort::Shared, steer.clone(), Rc::clone(&done)));
    let receive_own = glommio::spawn_local(Rc::clone(&driver).receive_udp(UdpPort::Own, steer, Rc::clone(&done)));
    timers.await;
    drop(receive);
    drop(receive_own);
    let shard = driver.shard.borrow();
    let c = &driver.counters;
    Ok(ShardReport {
        shard: index,
        core,
        stats: shard.stats(),
        proxy: shard.tu().stats(),
        send_errors: c.send_errors.get(),
        unsupported_transport: c.unsupported_transport.get(),
        tcp_accepted: c.tcp_accepted.get(),
        tcp_connected: c.tcp_connected.get(),
        tcp_refused: c.tcp_refused.get(),
        tcp_closed_idle: c.tcp_closed_idle.get(),
        tcp_framing_errors: c.tcp_framing_errors.get(),
        tcp_queue_full: c.tcp_queue_full.get(),
        udp_batches: c.udp_batches.get(),
        udp_batched_datagrams: c.udp_batched_datagrams.get(),
        udp_truncated: c.udp_truncated.get(),
        links: driver.replication.as_ref().map(|r| r.report()).unwrap_or_default(),
        replication: driver.replication.as_ref().map_or((0, 0, 0, 0), |r| r.counters()),
    })
}

impl Driver {
    /// Reads datagrams from one of the shard's UDP sockets until the shard stops: the first
    /// through io_uring, then what else is queued in `recvmmsg` batches.
    async fn receive_udp(self: Rc<Self>, which: UdpPort, steer: Option<Steer>, done: Rc<Cell<bool>>) {
        let driver = &self;
        let socket = match which {
            UdpPort::Shared => driver.udp.as_ref(),
            UdpPort::Own => driver.own_udp.as_ref(),
        };
        let Some(udp) = socket else { return };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut batch = batch::Batch::new(MAX_DATAGRAM);
        let mut moving: Vec<Vec<(Peer, Vec<u8>)>> = vec![Vec::new(); driver.shards];
        // Never raced against a timer: dropping a receive whose io_uring completion is
        // already posted loses that datagram. The task is dropped when the shard stops.
        while !done.get() {
            let received = udp.recv_from(&mut buf).await;
            let (n, from) = match received {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            };
            let peer = Peer { addr: from, transport: Transport::Udp };
            if let Some(wrong) = steer.as_ref().and_then(|s| s.wrong_shard(&buf[..n])) {
                driver.hop(wrong, Hop::Steered { peer, bytes: buf[..n].to_vec() }).await;
                continue;
            }
            // A datagram that moves to another shard goes as a copy at its size.
            if let Some(moved) = driver.process(Input::Datagram { peer, bytes: &buf[..n] }).await
                && !driver.sent_on_own_link(moved, peer, &buf[..n])
            {
                driver.pass_on(moved, peer, buf[..n].to_vec()).await;
            }
            // The socket is awake: take what else is queued, a batch per system call.
            // What moves to other shards goes at the end of each batch, a send per shard.
            loop {
                let n = batch.receive(udp.as_raw_fd());
                if n > 0 {
                    bump(&driver.counters.udp_batches);
                    let c = &driver.counters.udp_batched_datagrams;
                    c.set(c.get() + n as u64);
                }
                for i in 0..n {
                    let Some((bytes, from)) = batch.datagram(i) else {
                        bump(&driver.counters.udp_truncated);
                        continue;
                    };
                    let peer = Peer { addr: from, transport: Transport::Udp };
                    if let Some(wrong) = steer.as_ref().and_then(|s| s.wrong_shard(bytes)) {
                        driver.hop(wrong, Hop::Steered { peer, bytes: batch.take(i) }).await;
                        continue;
                    }
                    if let Some(moved) = driver.process(Input::Datagram { peer, bytes }).await
                        && !driver.sent_on_own_link(moved, peer, bytes)
                    {
                        match moved {
                            Moved::Shard(shard) => moving[shard].push((peer, batch.take(i))),
                            moved => driver.pass_on(moved, peer, batch.take(i)).await,
                        }
                    }
                }
                driver.pass_on_batches(&mut moving).await;
                if n < batch::BATCH {
                    break;
                }
            }
        }
    }

    /// `handle`, then every output taken at once (no borrow across an await), then the sends.
    /// Changes go to the backups first; in sync mode the messages wait for their acks.
    /// Returns where a received message must move to, if another shard or node owns it.
    async fn process(self: &Rc<Self>, input: Input<'_>) -> Option<Moved> {
        let outputs = self.handle(input);
        let mut waits = Vec::new();
        if let Some(r) = self.replication.as_ref().filter(|r| r.sync) {
            for output in &outputs {
                if let Output::Replicate(change) = output {
                    let placement = *self.shard.borrow().stripe_map().placement(change.stripe);
                    waits.extend(r.replicate(change, placement.backups()));
                }
            }
            if outputs.iter().any(|o| matches!(o, Output::Replicate(_))) {
                r.write_outbound();
            }
        }
        let mut held = Vec::new();
        let mut moved = None;
        for output in outputs {
            match output {
                // Async: a record's changes within a few ms go as one (its latest version).
                Output::Replicate(change) if self.replication.as_ref().is_some_and(|r| !r.sync) => {
                    self.coalesce(change);
                }
                Output::Transmit { peer, bytes } if !waits.is_empty() => held.push((peer, bytes)),
                Output::Transmit { peer, bytes } => self.transmit(peer, bytes).await,
                Output::Forward { shard } => moved = Some(Moved::Shard(usize::from(shard.0))),
                Output::ForwardToNode { node, shard } => {
                    moved = Some(Moved::Node { node, shard: usize::from(shard.0) })
                }
                Output::Location(update) => {
                    for shard in (0..self.shards).filter(|&s| s != self.index) {
                        self.hop(shard, Hop::Location(update.clone())).await;
                    }
                }
                Output::Replicate(_) => {}
                Output::Lookup { stripe, key } if self.replication.is_some() => self.start_lookup(stripe, key),
                // Lookups are only turned on in a cluster.
                Output::Lookup { .. } => {}
            }
        }
        if let Some(r) = self.replication.as_ref().filter(|_| !waits.is_empty()) {
            r.hold(waits, held);
        }
        moved
    }

    /// Remembers that shard `via_shard` holds the TCP connection to `peer` (a message from it
    /// moved here), so that what this shard sends `peer` goes back through that shard.
    fn learn_tcp_route(&self, peer: Peer, via_shard: usize) {
        if peer.transport == Transport::Tcp && via_shard != self.index {
            self.tcp_routes.borrow_mut().insert(peer.addr, via_shard);
        }
    }

    /// Sends a message for another node on this shard's own link, straight from the receive
    /// buffer; false when it must move to another shard first (which takes the buffer).
    fn sent_on_own_link(&self, moved: Moved, peer: Peer, bytes: &[u8]) -> bool {
        match moved {
            Moved::Node { node, shard } if shard == self.index => {
                self.forward_to_node(node, peer, bytes);
                true
            }
            _ => false,
        }
    }

    /// Moves a received message on to the shard or node that owns its stripe.
    async fn pass_on(self: &Rc<Self>, moved: Moved, peer: Peer, bytes: Vec<u8>) {
        match moved {
            Moved::Shard(shard) => self.hop(shard, Hop::Routed { peer, bytes, via_shard: self.index }).await,
            Moved::Node { node, shard } if shard == self.index => self.forward_to_node(node, peer, &bytes),
            Moved::Node { node, shard } => {
                self.hop(shard, Hop::ToNode { node, peer, bytes, via_shard: self.index }).await
            }
        }
    }

    /// Sends the messages one receive batch moves to each other shard: a lone one as it is,
    /// several as one [`Hop::RoutedBatch`].
    async fn pass_on_batches(&self, moving: &mut [Vec<(Peer, Vec<u8>)>]) {
        for (shard, messages) in moving.iter_mut().enumerate() {
            let hop = match messages.len() {
                0 => continue,
                1 => match messages.pop() {
                    Some((peer, bytes)) => Hop::Routed { peer, bytes, via_shard: self.index },
                    None => continue,
                },
                _ => Hop::RoutedBatch { messages: std::mem::take(messages), via_shard: self.index },
            };
            self.hop(shard, hop).await;
        }
    }

    fn handle(&self, input: Input<'_>) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut shard = self.shard.borrow_mut();
        #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
        shard.handle(Instant::now(), input);
        while let Some(output) = shard.poll_output() {
            outputs.push(output);
        }
        outputs
    }

    /// Moves a message to another shard (waits while its channel is full).
    async fn hop(&self, shard: usize, hop: Hop) {
        if self.mesh.send_to(shard, hop).await.is_err() {
            tracing::warn!(shard, "shard mesh closed");
        }
    }

    /// Sends a message; a failed UDP send goes back to its transaction.
    async fn transmit(self: &Rc<Self>, peer: Peer, bytes: SharedBytes) {
        match peer.transport {
            Transport::Tcp => {
                if let Err(bytes) = self.tcp_send(peer, bytes).await {
                    self.report_failure(peer, &bytes).await;
                }
            }
            Transport::Udp => {
                if let Err(e) = self.send_udp(peer, &bytes).await {
                    tracing::debug!(error = %e, to = %peer.addr, "UDP send failed");
                    self.report_failure(peer, &bytes).await;
                }
            }
        }
    }

    async fn send_udp(&self, peer: Peer, bytes: &[u8]) -> std::io::Result<()> {
        // Requests leave from the shard's own port, where their Via sends the answers; responses
        // from the shared port the requests they answer were (mostly) sent to.
        let own = self.own_udp.as_ref().filter(|_| !bytes.starts_with(b"SIP/2.0 "));
        let Some(udp) = own.or(self.udp.as_ref()) else {
            bump(&self.counters.unsupported_transport);
            return Ok(());
        };
        udp.send_to(bytes, peer.addr).await.map(drop).map_err(|e| {
            bump(&self.counters.send_errors);
            std::io::Error::other(e.to_string())
        })
    }

    /// §17.1.4, §17.2.4: a message could not be sent; its transaction learns of it. What the
    /// failure causes (a 408 or 503 upstream) is sent once, a second failure only counted.
    async fn report_failure(self: &Rc<Self>, peer: Peer, bytes: &[u8]) {
        for output in self.handle(Input::TransportError { peer, bytes }) {
            if let Output::Transmit { peer, bytes } = output {
                match peer.transport {
                    Transport::Udp => drop(self.send_udp(peer, &bytes).await),
                    Transport::Tcp => drop(self.tcp_send(peer, bytes).await),
                }
            }
        }
    }
}

/// A note for the log when a UDP server runs more than two shards without their own ports:
/// measured on 16 cores (tuning.md, "Scaling with cores"), 32,000 calls/s at 4 and at 8
/// shards without them, 48,000 and 96,000 with them.
fn shard_ports_hint(shards: usize, udp: bool, shard_ports: bool) -> Option<&'static str> {
    (shards > 2 && udp && !shard_ports).then_some(
        "without server.shard_ports most UDP messages move between shards and more than two shards \
         add little; set it where peers accept requests from the shards' ports (tuning.md)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn more_than_two_udp_shards_without_their_own_ports_get_a_note() {
        assert!(shard_ports_hint(4, true, false).is_some_and(|note| note.contains("server.shard_ports")));
        assert_eq!(shard_ports_hint(2, true, false), None, "two shards lose little");
        assert_eq!(shard_ports_hint(8, true, true), None, "the ports are on");
        assert_eq!(shard_ports_hint(8, false, false), None, "TCP only: the ports are UDP's");
    }

    #[test]
    fn io_memory_is_lowered_to_fit_the_memlock_limit_or_refused() {
        let settings = Config::default().settings(&[0, 1]).expect("defaults");
        assert_eq!(settings.io_memory, 512 * 1024);
        let fitted = fit_io_memory(settings.clone(), Some(1024 * 1024)).expect("fits");
        assert_eq!(fitted.io_memory, 256 * 1024, "half of 1 MiB over two shards");
        assert_eq!(fit_io_memory(settings.clone(), Some(8 << 20)).expect("fits").io_memory, 512 * 1024);
        let error = fit_io_memory(settings.clone(), Some(256 * 1024)).expect_err("below glommio's minimum");
        assert!(error.to_string().contains("ulimit -l"), "{error}");
        assert_eq!(fit_io_memory(settings, None).expect("unlimited").io_memory, 512 * 1024);
    }
}
