//! sipshard's configuration: a TOML file (serde) where every key has a
//! default, so an empty file, or none, runs the embedded default (a registrar
//! and proxy on 127.0.0.1:5060 that routes calls between registered users). [`Config::load`] reports every error at once, each with its
//! key and why; `sipshard check-config FILE` prints them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sipshard_shards::NodeId;
use sipshard_shards::proxy::{ProxyConfig, RouteMatch, RouteTarget, StaticRoute};
use sipshard_shards::registrar::RegistrarConfig;
use sipshard_shards::shard::ShardPorts;
use sipshard_shards::transaction::TimerConfig;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Sockets, shards, limits.
    pub(crate) server: ServerSection,
    /// The proxy role.
    pub(crate) proxy: ProxySection,
    /// RFC 3261 timers.
    pub(crate) timers: TimersSection,
    /// The registrar.
    pub(crate) registrar: RegistrarSection,
    /// Replication between the nodes of a site (off while `peers` is empty).
    pub(crate) cluster: ClusterSection,
}

/// `[cluster]`: this node, its peers, and how stripes are copied between them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClusterSection {
    /// This node's id, unique in the cluster.
    pub(crate) node: u16,
    /// The site this node is in.
    pub(crate) site: u16,
    /// The cluster's name: nodes of another cluster are refused on the links.
    pub(crate) cluster_id: String,
    /// The shared secret the links authenticate with (HMAC-SHA-256), at least 16 bytes.
    pub(crate) secret: String,
    /// Copies of each stripe, the owner's included (1: no backup).
    pub(crate) replicas: usize,
    /// "sync": messages a change causes wait until every live backup has it; "async": they
    /// go at once and the backups follow.
    pub(crate) replication: String,
    /// This node's replication address: shard k listens on this port + k.
    pub(crate) listen: String,
    /// Milliseconds between heartbeats on a quiet link.
    pub(crate) heartbeat_ms: u64,
    /// Milliseconds of silence after which a peer is dead and its stripes are taken over.
    pub(crate) dead_after_ms: u64,
    /// The other nodes of the site.
    pub(crate) peers: Vec<PeerSection>,
    /// Where the node writes its cluster status every second, for `sipshard cluster status`
    /// (empty: /tmp/sipshard-node<N>.status).
    pub(crate) status_file: String,
}

impl ClusterSection {
    /// The status file's path.
    pub(crate) fn status_path(&self) -> std::path::PathBuf {
        match self.status_file.as_str() {
            "" => std::env::temp_dir().join(format!("sipshard-node{}.status", self.node)),
            path => path.into(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            node: 0,
            site: 0,
            cluster_id: "sipshard".into(),
            secret: String::new(),
            replicas: 2,
            replication: "sync".into(),
            listen: "127.0.0.1:7060".into(),
            heartbeat_ms: 200,
            dead_after_ms: 600,
            peers: Vec::new(),
            status_file: String::new(),
        }
    }
}

/// `[[cluster.peers]]`: another node and its replication address (its shard k listens on port + k).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerSection {
    /// Its node id.
    pub(crate) node: u16,
    /// Its replication address.
    pub(crate) address: String,
    /// Its SIP address, when it differs from this node's (each node its own address rather
    /// than one floating address): a request sent to it is treated as sent to this node.
    pub(crate) sip: Option<String>,
}

/// `[registrar]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RegistrarSection {
    /// Answer REGISTERs addressed to this server, and route calls to registered users.
    pub(crate) enabled: bool,
    /// Shorter registrations get 423 Interval Too Brief.
    pub(crate) min_expires_s: u32,
    /// Longer registrations are shortened to this.
    pub(crate) max_expires_s: u32,
    /// When neither the Contact nor the request gives an expiry.
    pub(crate) default_expires_s: u32,
    /// Most contacts per address-of-record.
    pub(crate) max_bindings: usize,
}

impl Default for RegistrarSection {
    fn default() -> Self {
        let d = RegistrarConfig::default();
        RegistrarSection {
            enabled: true,
            min_expires_s: d.min_expires_s,
            max_expires_s: d.max_expires_s,
            default_expires_s: d.default_expires_s,
            max_bindings: d.max_bindings,
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerSection {
    /// The SIP address every shard binds (SO_REUSEPORT), and the address this server
    /// puts in its Via and Record-Route, so it must be reachable (not 0.0.0.0).
    pub(crate) listen: String,
    /// Number of shards: a number or "auto" (one per core in `cores`, or per online core).
    pub(crate) shards: Shards,
    /// Cores to pin shards to, in order (empty: every online core).
    pub(crate) cores: Vec<usize>,
    /// Pin each shard's thread to its core (true, the default, for cores the server has to
    /// itself); false lets the kernel run a shard on any core, for boxes where other busy
    /// processes share the cores (tuning.md: 2-8 % less CPU per call there, p99 no better).
    pub(crate) pin_shards: bool,
    /// The role: "proxy" or "b2bua".
    pub(crate) role: String,
    /// "udp", "tcp" or "both".
    pub(crate) transport: String,
    /// Most calls at once per shard (beyond: 503 with Retry-After). Ended calls whose
    /// transactions wait out their timers do not count; records in all are bounded at 4x.
    pub(crate) max_calls_per_shard: usize,
    /// Retry-After seconds on 503.
    pub(crate) retry_after_s: u32,
    /// io_uring buffer memory per shard (locked memory: all shards together must fit the
    /// memlock limit, `ulimit -l`).
    pub(crate) io_memory_kib: usize,
    /// How long a graceful shutdown lets live transactions finish.
    pub(crate) drain_s: u64,
    /// Socket receive and send buffer asked for on each shard's UDP socket, KiB (the kernel
    /// caps it at `net.core.rmem_max`/`wmem_max`; 0: leave the system default).
    pub(crate) udp_buffer_kib: usize,
    /// Microseconds a shard with nothing to do spins before it sleeps (0: sleep at once).
    /// Spinning spares the wake-up (and glommio's process-wide memory barrier on every
    /// sleep) under load, at the price of CPU time when traffic is light: tuning.md.
    pub(crate) spin_before_park_us: u64,
    /// First of the shards' own UDP ports (0: none). Shard k also listens on this port + k and
    /// names it in the Via and Record-Route it writes toward UDP peers, so answers and in-dialog
    /// requests reach the shard that owns the call without a hop between shards (tuning.md).
    /// Peers must accept responses from another port than the one they sent to.
    pub(crate) shard_ports: u16,
    /// Largest request handled; larger ones get 513 Message Too Large.
    pub(crate) max_message_bytes: usize,
    /// Seconds an INVITE may ring before it is CANCELled and answered 408 (Timer C: over 180).
    pub(crate) no_answer_s: u64,
    /// Seconds a call may last (a B2BUA then sends BYE on both legs).
    pub(crate) max_call_duration_s: u64,
    /// Most TCP connections per shard (accepted and opened together).
    pub(crate) tcp_max_connections: usize,
    /// Seconds a TCP connection may stay silent before it is closed.
    pub(crate) tcp_idle_s: u64,
    /// Messages queued per TCP connection before new ones are dropped (and counted).
    pub(crate) tcp_queue: usize,
    /// For tests: hand every received datagram to a shard that does not own its stripe
    /// first, as if the kernel always picked the wrong socket.
    pub(crate) steer_to_wrong_shard: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:5060".into(),
            shards: Shards::Auto,
            cores: Vec::new(),
            pin_shards: true,
            role: "proxy".into(),
            transport: "udp".into(),
            max_calls_per_shard: 100_000,
            retry_after_s: 5,
            io_memory_kib: 512,
            drain_s: 32,
            spin_before_park_us: 0,
            shard_ports: 0,
            udp_buffer_kib: 4096,
            max_message_bytes: sipshard_shards::shard::DEFAULT_MAX_MESSAGE_BYTES,
            no_answer_s: sipshard_shards::shard::DEFAULT_NO_ANSWER.as_secs(),
            max_call_duration_s: sipshard_shards::shard::DEFAULT_MAX_CALL_DURATION.as_secs(),
            tcp_max_connections: 4_096,
            tcp_idle_s: 300,
            tcp_queue: 1_024,
            steer_to_wrong_shard: false,
        }
    }
}

/// A shard count.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Shards {
    /// A fixed number.
    Count(usize),
    /// `"auto"`.
    #[serde(deserialize_with = "auto")]
    Auto,
}

fn auto<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    let text = String::deserialize(d)?;
    if text == "auto" { Ok(()) } else { Err(serde::de::Error::custom("expected a number or \"auto\"")) }
}

impl std::str::FromStr for Shards {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Shards::Auto),
            n => n.parse().map(Shards::Count).map_err(|_| format!("expected a number or \"auto\", got {n:?}")),
        }
    }
}

/// `[proxy]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ProxySection {
    /// Where requests no other rule matches go (a SIP URI with an IP host).
    pub(crate) default_route: Option<String>,
    /// Record-Route dialog-creating requests.
    pub(crate) record_route: bool,
    /// Static routes, tried in order.
    pub(crate) routes: Vec<RouteSection>,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection { default_route: None, record_route: true, routes: Vec::new() }
    }
}

/// `[[proxy.routes]]`: exactly one of `domain` and `user_prefix`, and `to`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSection {
    /// Request-URI host to match.
    pub(crate) domain: Option<String>,
    /// Request-URI user prefix to match.
    pub(crate) user_prefix: Option<String>,
    /// Where matching requests go.
    pub(crate) to: String,
}

/// `[timers]`, in milliseconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TimersSection {
    /// T1 (RTT estimate).
    pub(crate) t1_ms: u64,
    /// T2 (maximum retransmit interval).
    pub(crate) t2_ms: u64,
    /// T4 (maximum message lifetime).
    pub(crate) t4_ms: u64,
}

impl Default for TimersSection {
    fn default() -> Self {
        TimersSection { t1_ms: 500, t2_ms: 4_000, t4_ms: 5_000 }
    }
}

/// Which sockets a shard opens.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transports {
    /// UDP.
    pub(crate) udp: bool,
    /// TCP.
    pub(crate) tcp: bool,
}

/// A configuration checked and turned into what the runtime uses.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The listen address.
    pub(crate) listen: SocketAddr,
    /// Cores, one per shard.
    pub(crate) cores: Vec<usize>,
    /// Whether each shard's thread is pinned to its core.
    pub(crate) pin_shards: bool,
    /// Sockets.
    pub(crate) transports: Transports,
    /// Proxy role.
    pub(crate) proxy: ProxyConfig,
    /// Timers.
    pub(crate) timers: TimerConfig,
    /// Per-shard call limit.
    pub(crate) max_calls_per_shard: usize,
    /// Retry-After seconds.
    pub(crate) retry_after_s: u32,
    /// io_uring memory per shard, bytes.
    pub(crate) io_memory: usize,
    /// Graceful shutdown bound.
    pub(crate) drain: Duration,
    /// UDP socket buffer size asked for, bytes (0: the system default).
    pub(crate) udp_buffer: usize,
    /// How long an idle shard spins before it sleeps (`None`: not at all).
    pub(crate) spin_before_park: Option<Duration>,
    /// The shards' own UDP ports, if configured.
    pub(crate) shard_ports: Option<ShardPorts>,
    /// Test steering: every datagram first reaches a shard that does not own it.
    pub(crate) steer_to_wrong_shard: bool,
    /// TCP limits.
    pub(crate) tcp: TcpLimits,
    /// Largest request handled.
    pub(crate) max_message_bytes: usize,
    /// No-answer bound (Timer C).
    pub(crate) no_answer: Duration,
    /// Maximum call duration.
    pub(crate) max_call_duration: Duration,
    /// The registrar, if enabled.
    pub(crate) registrar: Option<RegistrarConfig>,
    /// Replication, when the node has peers.
    pub(crate) cluster: Option<ClusterSettings>,
}

/// `[cluster]` checked.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSettings {
    /// This node.
    pub(crate) node: NodeId,
    /// Its site.
    pub(crate) site: u16,
    /// The cluster id (a stable hash of `cluster_id`).
    pub(crate) cluster: u64,
    /// The shared secret.
    pub(crate) secret: Vec<u8>,
    /// Copies of each stripe.
    pub(crate) replicas: usize,
    /// Synchronous replication.
    pub(crate) sync: bool,
    /// This node's replication address (shard k: port + k).
    pub(crate) listen: SocketAddr,
    /// Heartbeat interval, ms.
    pub(crate) heartbeat_ms: u64,
    /// Dead-peer silence, ms.
    pub(crate) dead_after_ms: u64,
    /// The other nodes and their replication addresses, by node id.
    pub(crate) peers: Vec<(NodeId, SocketAddr)>,
    /// The other nodes' SIP addresses (where given).
    pub(crate) peer_sip: Vec<SocketAddr>,
    /// Where the status goes.
    pub(crate) status_file: std::path::PathBuf,
}

impl ClusterSettings {
    /// Every node of the cluster, in id order: what the stripe map is computed from.
    pub(crate) fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.peers.iter().map(|(n, _)| *n).chain([self.node]).collect();
        nodes.sort();
        nodes
    }
}

/// The address shard `shard` of a node whose replication address is `base` listens on.
pub(crate) fn shard_address(base: SocketAddr, shard: usize) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port() + shard as u16)
}

/// FNV-1a, 64 bits: a cluster name's id, the same on every node and build.
fn cluster_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// TCP limits per shard.
#[derive(Copy, Clone, Debug)]
pub(crate) struct TcpLimits {
    /// Most connections.
    pub(crate) max_connections: usize,
    /// Idle time before a connection is closed.
    pub(crate) idle: Duration,
    /// Messages queued per connection.
    pub(crate) queue: usize,
}

/// One problem in a configuration: the key and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// Dotted key (`server.listen`, `proxy.routes[2].to`).
    pub(crate) key: String,
    /// What is wrong.
    pub(crate) why: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.why)
    }
}

impl Config {
    /// Reads and decodes a file (syntax and type errors are reported here, one at a time:
    /// the TOML decoder stops at the first).
    pub(crate) fn read(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![ConfigError { key: path.display().to_string(), why: format!("cannot read: {e}") }])?;
        Config::parse(&text)
    }

    /// Decodes TOML text.
    pub(crate) fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let key = e.span().map(|span| key_at(text, span.start)).unwrap_or_else(|| "(file)".into());
            vec![ConfigError { key, why: e.message().to_owned() }]
        })
    }

    /// Checks every value; all errors at once.
    pub(crate) fn settings(&self, online_cores: &[usize]) -> Result<Settings, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut error = |key: &str, why: String| errors.push(ConfigError { key: key.into(), why });
        let server = &self.server;
        let listen = match server.listen.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => {
                error("server.listen", format!("{addr} is not reachable: give the address peers send to"));
                None
            }
            Ok(addr) => Some(addr),
            Err(e) => {
                error("server.listen", format!("{:?} is not an ip:port ({e})", server.listen));
                None
            }
        };
        for core in &server.cores {
            if !online_cores.contains(core) {
                error("server.cores", format!("core {core} is not online (online: {online_cores:?})"));
            }
        }
        let pool: Vec<usize> = if server.cores.is_empty() { online_cores.to_vec() } else { server.cores.clone() };
        let cores = match server.shards {
            Shards::Auto => pool.clone(),
            Shards::Count(0) => {
                error("server.shards", "must be at least 1".into());
                Vec::new()
            }
            Shards::Count(n) if n > pool.len() => {
                error("server.shards", format!("{n} shards but only {} cores to pin them to", pool.len()));
                Vec::new()
            }
            Shards::Count(n) => pool[..n].to_vec(),
        };
        let b2bua = match server.role.as_str() {
            "proxy" => false,
            "b2bua" => true,
            other => {
                error("server.role", format!("{other:?}: expected \"proxy\" or \"b2bua\""));
                false
            }
        };
        let transports = match server.transport.as_str() {
            "udp" => Transports { udp: true, tcp: false },
            "tcp" => Transports { udp: false, tcp: true },
            "both" => Transports { udp: true, tcp: true },
            other => {
                error("server.transport", format!("{other:?}: expected \"udp\", \"tcp\" or \"both\""));
                Transports { udp: true, tcp: false }
            }
        };
        if server.udp_buffer_kib > 1 << 20 {
            error("server.udp_buffer_kib", "at most 1048576 (1 GiB)".into());
        }
        if server.spin_before_park_us > 100_000 {
            error("server.spin_before_park_us", "at most 100000 (0.1 s): a longer spin only burns CPU".into());
        }
        let shard_ports = (server.shard_ports > 0)
            .then_some(ShardPorts { first: server.shard_ports, count: u16::try_from(cores.len()).unwrap_or(u16::MAX) });
        if let Some(ports) = shard_ports {
            let last = u32::from(ports.first) + u32::from(ports.count).saturating_sub(1);
            if last > u32::from(u16::MAX) {
                error("server.shard_ports", format!("{} shards from port {} run past 65535", ports.count, ports.first));
            } else if listen.is_some_and(|l| ports.contains(l.port())) {
                error("server.shard_ports", format!("ports {}-{last} include server.listen's port", ports.first));
            }
            if !transports.udp {
                error(
                    "server.shard_ports",
                    "the shards' own ports are UDP: set server.transport to udp or both".into(),
                );
            }
        }
        if server.tcp_max_connections == 0 || server.tcp_queue == 0 || server.tcp_idle_s == 0 {
            error("server.tcp_*", "tcp_max_connections, tcp_queue and tcp_idle_s must be at least 1".into());
        }
        if server.max_calls_per_shard == 0 {
            error("server.max_calls_per_shard", "must be at least 1".into());
        }
        if !(1_024..=65_535).contains(&server.max_message_bytes) {
            error("server.max_message_bytes", "must lie between 1024 and 65535".into());
        }
        if server.no_answer_s == 0 || server.max_call_duration_s == 0 {
            error("server.no_answer_s", "no_answer_s and max_call_duration_s must be at least 1".into());
        }
        if server.io_memory_kib < 64 {
            error("server.io_memory_kib", "must be at least 64".into());
        }
        let route = |text: &str, key: &str, errors: &mut Vec<ConfigError>| match RouteTarget::parse(text) {
            Ok(target) => Some(target),
            Err(e) => {
                errors.push(ConfigError { key: key.into(), why: e.to_string() });
                None
            }
        };
        let default_route =
            self.proxy.default_route.as_deref().and_then(|t| route(t, "proxy.default_route", &mut errors));
        let mut routes = Vec::new();
        for (i, r) in self.proxy.routes.iter().enumerate() {
            let to = route(&r.to, &format!("proxy.routes[{i}].to"), &mut errors);
            let matches = match (&r.domain, &r.user_prefix) {
                (Some(d), None) => Some(RouteMatch::Domain(d.as_str().into())),
                (None, Some(p)) => Some(RouteMatch::UserPrefix(p.as_str().into())),
                _ => {
                    errors.push(ConfigError {
                        key: format!("proxy.routes[{i}]"),
                        why: "give exactly one of domain and user_prefix".into(),
                    });
                    None
                }
            };
            if let (Some(matches), Some(to)) = (matches, to) {
                routes.push(StaticRoute { matches, to });
            }
        }
        let t = &self.timers;
        let mut error = |key: &str, why: String| errors.push(ConfigError { key: key.into(), why });
        if t.t1_ms == 0 {
            error("timers.t1_ms", "must be at least 1".into());
        }
        if t.t2_ms < t.t1_ms {
            error("timers.t2_ms", format!("{} is below T1 ({})", t.t2_ms, t.t1_ms));
        }
        if t.t4_ms == 0 {
            error("timers.t4_ms", "must be at least 1".into());
        }
        let r = &self.registrar;
        if r.min_expires_s > r.max_expires_s {
            error(
                "registrar.min_expires_s",
                format!("{} is above max_expires_s ({})", r.min_expires_s, r.max_expires_s),
            );
        }
        if !(r.min_expires_s..=r.max_expires_s).contains(&r.default_expires_s) {
            error("registrar.default_expires_s", "must lie between min_expires_s and max_expires_s".into());
        }
        if r.max_bindings == 0 {
            error("registrar.max_bindings", "must be at least 1".into());
        }
        let cluster = self.cluster.settings(cores.len(), &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            listen: listen.expect("invariant: no error means the address parsed"),
            cores,
            pin_shards: server.pin_shards,
            transports,
            proxy: ProxyConfig {
                routes,
                default_route,
                record_route: self.proxy.record_route,
                b2bua,
                aliases: cluster.as_ref().map(|c| c.peer_sip.clone()).unwrap_or_default(),
            },
            timers: TimerConfig {
                t1: Duration::from_millis(t.t1_ms),
                t2: Duration::from_millis(t.t2_ms),
                t4: Duration::from_millis(t.t4_ms),
            },
            max_calls_per_shard: server.max_calls_per_shard,
            retry_after_s: server.retry_after_s,
            io_memory: server.io_memory_kib * 1024,
            drain: Duration::from_secs(server.drain_s),
            udp_buffer: server.udp_buffer_kib * 1024,
            spin_before_park: (server.spin_before_park_us > 0)
                .then(|| Duration::from_micros(server.spin_before_park_us)),
            shard_ports,
            steer_to_wrong_shard: server.steer_to_wrong_shard,
            tcp: TcpLimits {
                max_connections: server.tcp_max_connections,
                idle: Duration::from_secs(server.tcp_idle_s),
                queue: server.tcp_queue,
            },
            max_message_bytes: server.max_message_bytes,
            no_answer: Duration::from_secs(server.no_answer_s),
            max_call_duration: Duration::from_secs(server.max_call_duration_s),
            registrar: self.registrar.enabled.then_some(RegistrarConfig {
                min_expires_s: self.registrar.min_expires_s,
                max_expires_s: self.registrar.max_expires_s,
                default_expires_s: self.registrar.default_expires_s,
                max_bindings: self.registrar.max_bindings,
                authenticate: false,
            }),
            cluster,
        })
    }
}

impl ClusterSection {
    /// Checks `[cluster]` for a node of `shards` shards; `None` when it has no peers.
    fn settings(&self, shards: usize, errors: &mut Vec<ConfigError>) -> Option<ClusterSettings> {
        if self.peers.is_empty() {
            return None;
        }
        let before = errors.len();
        let mut error = |key: &str, why: String| errors.push(ConfigError { key: key.into(), why });
        let address = |text: &str, key: &str, error: &mut dyn FnMut(&str, String)| match text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => {
                error(key, format!("{addr} is not reachable: give the address peers connect to"));
                None
            }
            Ok(addr) if usize::from(addr.port()) + shards > 65_536 => {
                error(key, format!("port {} + {shards} shards runs past 65535", addr.port()));
                None
            }
            Ok(addr) => Some(addr),
            Err(e) => {
                error(key, format!("{text:?} is not an ip:port ({e})"));
                None
            }
        };
        let listen = address(&self.listen, "cluster.listen", &mut error);
        let mut peers = Vec::new();
        let mut peer_sip = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}]");
            if peer.node == self.node {
                error(&key, format!("node {} is this node (cluster.node)", peer.node));
            } else if peers.iter().any(|(n, _)| *n == NodeId(peer.node)) {
                error(&key, format!("node {} is listed twice", peer.node));
            }
            if let Some(addr) = address(&peer.address, &format!("{key}.address"), &mut error) {
                peers.push((NodeId(peer.node), addr));
            }
            if let Some(sip) = &peer.sip {
                match sip.parse::<SocketAddr>() {
                    Ok(addr) => peer_sip.push(addr),
                    Err(e) => error(&format!("{key}.sip"), format!("{sip:?} is not an ip:port ({e})")),
                }
            }
        }
        if self.secret.len() < 16 {
            error("cluster.secret", "at least 16 bytes: the links authenticate with it".into());
        }
        if self.cluster_id.is_empty() {
            error("cluster.cluster_id", "must not be empty".into());
        }
        if !(1..=sipshard_shards::MAX_REPLICAS).contains(&self.replicas) {
            error("cluster.replicas", format!("must lie between 1 and {}", sipshard_shards::MAX_REPLICAS));
        }
        let sync = match self.replication.as_str() {
            "sync" => true,
            "async" => false,
            other => {
                error("cluster.replication", format!("{other:?}: expected \"sync\" or \"async\""));
                true
            }
        };
        if self.heartbeat_ms == 0 || self.dead_after_ms < 2 * self.heartbeat_ms {
            error(
                "cluster.dead_after_ms",
                "heartbeat_ms must be at least 1 and dead_after_ms at least twice it".into(),
            );
        }
        if errors.len() > before {
            return None;
        }
        Some(ClusterSettings {
            node: NodeId(self.node),
            site: self.site,
            cluster: cluster_hash(&self.cluster_id),
            secret: self.secret.as_bytes().to_vec(),
            replicas: self.replicas,
            sync,
            listen: listen.expect("invariant: no error means the address parsed"),
            heartbeat_ms: self.heartbeat_ms,
            dead_after_ms: self.dead_after_ms,
            peers,
            peer_sip,
            status_file: self.status_path(),
        })
    }
}

/// The dotted key of the TOML entry around byte `at` (for decoder errors, which give a span).
fn key_at(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let table = before
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').map(|t| t.trim_matches(['[', ']']).to_owned()))
        .unwrap_or_default();
    let line = text[before.rfind('\n').map_or(0, |i| i + 1)..].lines().next().unwrap_or_default();
    let key = line.split('=').next().unwrap_or_default().trim();
    match (table.is_empty(), key.is_empty() || key.starts_with('[')) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_embedded_default() {
        let settings = Config::parse("").expect("parses").settings(&[0, 1]).expect("valid");
        assert_eq!(settings.listen, "127.0.0.1:5060".parse().expect("addr"));
        assert_eq!(settings.cores, vec![0, 1]);
        assert_eq!(settings.timers, TimerConfig::default());
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
[server]
listen = "0.0.0.0:5060"
shards = 9
role = "b2bb"

[proxy]
default_route = "sip:proxy.example.com"

[[proxy.routes]]
to = "sip:10.0.0.1"

[timers]
t1_ms = 500
t2_ms = 100
"#;
        let errors = Config::parse(text).expect("parses").settings(&[0, 1]).expect_err("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["server.listen", "server.shards", "server.role", "proxy.default_route", "proxy.routes[0]", "timers.t2_ms"]
        );
        assert!(errors[3].why.contains("does no DNS"), "{}", errors[3]);
    }

    #[test]
    fn socket_buffers_and_spinning_are_bounded_and_reach_the_settings() {
        let text = "[server]\nudp_buffer_kib = 2048\nspin_before_park_us = 50\n";
        let settings = Config::parse(text).expect("parses").settings(&[0]).expect("valid");
        assert_eq!((settings.udp_buffer, settings.spin_before_park), (2 << 20, Some(Duration::from_micros(50))));
        let text = "[server]\nudp_buffer_kib = 2000000\nspin_before_park_us = 200000\n";
        let errors = Config::parse(text).expect("parses").settings(&[0]).expect_err("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["server.udp_buffer_kib", "server.spin_before_park_us"]);
        let defaults = Config::parse("").expect("parses").settings(&[0]).expect("valid");
        assert_eq!((defaults.udp_buffer, defaults.spin_before_park), (4 << 20, None));
    }

    #[test]
    fn shards_are_pinned_unless_told_not_to() {
        let pinned = Config::parse("").expect("parses").settings(&[0, 1]).expect("valid");
        assert!(pinned.pin_shards);
        let text = "[server]\npin_shards = false\n";
        let free = Config::parse(text).expect("parses").settings(&[0, 1]).expect("valid");
        assert!(!free.pin_shards);
        assert_eq!(free.cores, [0, 1], "an unpinned shard still names its core");
    }

    #[test]
    fn shard_ports_cover_every_shard_and_clash_with_nothing() {
        let text = "[server]\nlisten = \"127.0.0.1:5060\"\nshards = 2\nshard_ports = 5070\n";
        let settings = Config::parse(text).expect("parses").settings(&[0, 1]).expect("valid");
        assert_eq!(settings.shard_ports, Some(ShardPorts { first: 5070, count: 2 }));
        assert_eq!(Config::parse("").expect("parses").settings(&[0]).expect("valid").shard_ports, None);
        for bad in [
            "[server]\nlisten = \"127.0.0.1:5060\"\nshards = 2\nshard_ports = 5059\n",
            "[server]\nshards = 2\nshard_ports = 65535\n",
            "[server]\ntransport = \"tcp\"\nshard_ports = 5070\n",
        ] {
            let errors = Config::parse(bad).expect("parses").settings(&[0, 1]).expect_err("invalid");
            let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(keys, ["server.shard_ports"], "{bad}: {errors:?}");
        }
    }

    #[test]
    fn a_cluster_is_checked_and_every_node_computes_the_same_members() {
        let text = r#"
[cluster]
node = 2
secret = "0123456789abcdef"
replication = "async"
listen = "127.0.0.2:7060"
[[cluster.peers]]
node = 1
address = "127.0.0.1:7060"
sip = "127.0.0.1:5060"
"#;
        let settings = Config::parse(text).expect("parses").settings(&[0, 1]).expect("valid");
        let cluster = settings.cluster.expect("peers make a cluster");
        assert_eq!(cluster.nodes(), [NodeId(1), NodeId(2)]);
        assert!(!cluster.sync);
        assert_eq!((cluster.replicas, cluster.dead_after_ms), (2, 600));
        assert_eq!(cluster.cluster, cluster_hash("sipshard"));
        assert_eq!(settings.proxy.aliases, ["127.0.0.1:5060".parse().expect("addr")], "requests to node 1 are ours");
        assert_eq!(shard_address(cluster.listen, 1), "127.0.0.2:7061".parse().expect("addr"));
        assert!(Config::parse("").expect("parses").settings(&[0]).expect("valid").cluster.is_none());

        let text = r#"
[cluster]
node = 1
secret = "short"
replicas = 5
replication = "semi"
listen = "0.0.0.0:7060"
dead_after_ms = 100
[[cluster.peers]]
node = 1
address = "127.0.0.1:65535"
"#;
        let errors = Config::parse(text).expect("parses").settings(&[0, 1]).expect_err("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.listen",
                "cluster.peers[0]",
                "cluster.peers[0].address",
                "cluster.secret",
                "cluster.replicas",
                "cluster.replication",
                "cluster.dead_after_ms"
            ]
        );
    }

    #[test]
    fn a_decoder_error_names_its_key() {
        let errors = Config::parse("[server]\nlisten = 5060\n").expect_err("type error");
        assert_eq!(errors[0].key, "server.listen");
        let errors = Config::parse("[server]\nlisten_on = \"x\"\n").expect_err("unknown key");
        assert!(errors[0].why.contains("unknown field"), "{}", errors[0]);
    }
}
