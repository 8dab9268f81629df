//! `sipbench relay`: the least a SIP proxy can do on the wire, as a floor to
//! measure servers against. Requests go to one fixed next hop, an INVITE with
//! a `Record-Route` to the relay inserted after its request line (so the
//! caller sends the dialog's ACK and BYE through it as well); responses go to
//! the address in their top Via. No Via of its own, no Max-Forwards, no
//! transaction, no dialog, no timer: one blocking `recvfrom` and one `sendto`
//! per datagram, on one thread and one UDP socket.
//!
//! It relays the same datagrams of a call as a proxy does (the proxy's
//! 100 Trying aside), so its CPU time per call is what the kernel charges for
//! moving a call's messages through a process on this box. Most of it is the
//! kernel's (101 of 118 µs per call at 3,000 calls/s on the 2-vCPU test box,
//! tuning.md "The floor"), which a server that receives and sends each
//! message with a system call of its own, sleeping when nothing is queued,
//! pays as well. UDP only.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sipshard_parser::{HeaderSlot, Message, Method, parse};

/// How often the relay thread looks at its stop flag while no datagram comes.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What the relay is asked to do.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Address to listen on (UDP).
    pub listen: SocketAddr,
    /// Where every request goes.
    pub next_hop: SocketAddr,
    /// Stop after this long (`None`: until stopped or killed).
    pub duration: Option<Duration>,
    /// Print a line of counts every second.
    pub progress: bool,
}

/// What the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Requests sent on to the next hop.
    pub requests: AtomicU64,
    /// INVITEs among them, each given the relay's Record-Route.
    pub invites: AtomicU64,
    /// Responses sent back by their top Via.
    pub responses: AtomicU64,
    /// Datagrams dropped: not SIP, no usable top Via, or refused by the kernel.
    pub dropped: AtomicU64,
}

impl RelayStats {
    /// One line of counts.
    pub fn line(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "requests {} (INVITE {})  responses {}  dropped {}",
            n(&self.requests),
            n(&self.invites),
            n(&self.responses),
            n(&self.dropped)
        )
    }
}

/// A running relay: its address, its counts, and a way to stop it.
pub struct Relay {
    /// The bound address.
    pub local: SocketAddr,
    /// Counts so far.
    pub stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Relay {
    /// Binds and starts relaying in a background thread.
    pub fn start(config: &RelayConfig) -> Result<Relay> {
        let socket = UdpSocket::bind(config.listen).with_context(|| format!("binding UDP {}", config.listen))?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        let local = socket.local_addr()?;
        let record_route = format!("Record-Route: <sip:{local};lr>\r\n").into_bytes();
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_stats, thread_stop, next_hop) = (stats.clone(), stop.clone(), config.next_hop);
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || relay(&socket, next_hop, &record_route, &thread_stats, &thread_stop))?;
        Ok(Relay { local, stats, stop, thread })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) -> Result<Arc<RelayStats>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the relay thread panicked"))??;
        Ok(self.stats)
    }
}

/// Relays on `config.listen` until `config.duration` has passed (or forever), printing the
/// counts every second and at the end.
pub fn run(config: &RelayConfig) -> Result<Arc<RelayStats>> {
    let relay = Relay::start(config)?;
    eprintln!("sipbench relay listening on {} (UDP), requests to {}", relay.local, config.next_hop);
    let started = Instant::now();
    while config.duration.is_none_or(|d| started.elapsed() < d) && !relay.thread.is_finished() {
        std::thread::sleep(Duration::from_secs(1).min(config.duration.unwrap_or(Duration::MAX)));
        if config.progress {
            eprintln!("relay {:>5.1}s  {}", started.elapsed().as_secs_f64(), relay.stats.line());
        }
    }
    let stats = relay.stop()?;
    eprintln!("relay done: {}", stats.line());
    Ok(stats)
}

/// Where a datagram goes, and whether it gets the Record-Route.
enum Route {
    /// To the next hop; an INVITE gets the Record-Route at `headers_at`, where its first header
    /// line starts (after the request line and any CRLFs before it, RFC 3261 §7.5).
    Request {
        invite: bool,
        headers_at: usize,
    },
    Response(SocketAddr),
}

/// Reads the start line and, for a response, the top Via; `None` drops the datagram.
fn route_of(datagram: &[u8], slots: &mut [HeaderSlot]) -> Option<Route> {
    let message = parse(datagram, slots).ok()?;
    if message.is_request() {
        // A request without headers: its request line is its first line.
        let first_line_end = || datagram.iter().position(|&c| c == b'\n').map_or(datagram.len(), |i| i + 1);
        let headers_at = message.headers().next().map_or_else(first_line_end, |h| message.offset_of(h.raw_name));
        return Some(Route::Request { invite: message.method() == Some(Method::Invite), headers_at });
    }
    Some(Route::Response(message.top_via().ok()??.response_address()?))
}

fn relay(
    socket: &UdpSocket,
    next_hop: SocketAddr,
    record_route: &[u8],
    stats: &RelayStats,
    stop: &AtomicBool,
) -> Result<()> {
    let mut buf = vec![0u8; 65_535];
    let mut rewritten = Vec::with_capacity(4096);
    let mut slots = vec![HeaderSlot::EMPTY; Message::SLOTS];
    while !stop.load(Ordering::Relaxed) {
        let (len, _) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            // An ICMP error from an earlier send: that datagram is lost, the relay goes on.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e).context("receiving"),
        };
        let datagram = &buf[..len];
        let (bytes, to, counter) = match route_of(datagram, &mut slots) {
            Some(Route::Request { invite: true, headers_at }) => {
                // A splice before the first header line, not the parser's `Editor`, which
                // writes every header line anew: the floor does the least.
                rewritten.clear();
                rewritten.extend_from_slice(&datagram[..headers_at]);
                rewritten.extend_from_slice(record_route);
                rewritten.extend_from_slice(&datagram[headers_at..]);
                stats.invites.fetch_add(1, Ordering::Relaxed);
                (&rewritten[..], next_hop, &stats.requests)
            }
            Some(Route::Request { invite: false, .. }) => (datagram, next_hop, &stats.requests),
            Some(Route::Response(to)) => (datagram, to, &stats.responses),
            None => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match socket.send_to(bytes, to) {
            Ok(_) => counter.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}
