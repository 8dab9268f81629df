//! `sipbench uas`: a callee that answers everything at once, like
//! `sipp -sn uas`, on UDP and TCP at the same address: an INVITE gets 180 and
//! 200 with a small SDP body (and the same again when it is retransmitted), a
//! REGISTER 200 (or, with `--auth`, a 401 digest challenge first), a BYE,
//! OPTIONS or anything else 200, an ACK nothing.
//!
//! Stateless: the To tag and the digest nonce are derived from the Call-ID, so
//! a retransmission gets the same answer without remembering the call. UDP runs
//! `--threads` receivers on one SO_REUSEPORT address; TCP a thread per
//! connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sipshard_parser::{Frame, HeaderName, HeaderSlot, Message, Method, ResponseSpec, frame, parse, write_response};

use crate::batch::{BATCH, Datagrams, Outbox, wait_readable};
use crate::digest::{self, Credentials};
use crate::transport::udp_socket;

/// The SDP answer every 200 to an INVITE carries.
const SDP: &[u8] = b"v=0\r\no=sipbench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// The realm of the digest challenges.
const REALM: &str = "sipbench";

/// What the UAS is asked to do.
#[derive(Clone, Debug)]
pub struct UasConfig {
    /// Address to listen on, UDP and TCP.
    pub listen: SocketAddr,
    /// UDP receiver threads.
    pub threads: usize,
    /// Stop after this long (`None`: until `stop` is set or the process is killed).
    pub duration: Option<Duration>,
    /// Challenge REGISTERs and accept only these credentials.
    pub auth: Option<Credentials>,
    /// Print a line of counts every second.
    pub progress: bool,
}

impl UasConfig {
    /// Defaults: one UDP thread on `listen`, no digest, no time limit.
    pub fn new(listen: SocketAddr) -> UasConfig {
        UasConfig { listen, threads: 1, duration: None, auth: None, progress: true }
    }
}

/// What the UAS saw.
#[derive(Debug, Default)]
pub struct UasStats {
    /// INVITEs (retransmissions included).
    pub invites: AtomicU64,
    /// ACKs.
    pub acks: AtomicU64,
    /// BYEs.
    pub byes: AtomicU64,
    /// REGISTERs answered 200.
    pub registers: AtomicU64,
    /// REGISTERs challenged (401) or refused (403).
    pub challenges: AtomicU64,
    /// Other requests answered 200.
    pub others: AtomicU64,
    /// Datagrams or stream messages that did not parse.
    pub malformed: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
}

impl UasStats {
    /// One line of counts.
    pub fn line(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "invites {}  acks {}  byes {}  registers {}  challenges {}  other {}  malformed {}  tcp connections {}",
            n(&self.invites),
            n(&self.acks),
            n(&self.byes),
            n(&self.registers),
            n(&self.challenges),
            n(&self.others),
            n(&self.malformed),
            n(&self.connections)
        )
    }
}

/// A running UAS: its address, its counts, and a way to stop it.
pub struct Uas {
    /// The bound address (UDP and TCP).
    pub local: SocketAddr,
    /// Counts so far.
    pub stats: Arc<UasStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

/// Attempts at a port free for both UDP and TCP when the system picks it.
const PICK_PORT_ATTEMPTS: usize = 50;

/// The UDP socket and the TCP listener on one address. With port 0 the system picks the UDP
/// port, which may be in use for TCP (another process's connection): then another is picked.
fn bind_udp_and_tcp(listen: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    for _ in 0..PICK_PORT_ATTEMPTS {
        let udp = udp_socket(listen, true)?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local) {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) if listen.port() == 0 && e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding TCP {local}")),
        }
    }
    anyhow::bail!("no port free for both UDP and TCP at {} after {PICK_PORT_ATTEMPTS} tries", listen.ip())
}

impl Uas {
    /// Binds and starts answering in background threads.
    pub fn start(config: &UasConfig) -> Result<Uas> {
        anyhow::ensure!(config.threads >= 1, "--threads must be at least 1");
        let (first, listener) = bind_udp_and_tcp(config.listen)?;
        let local = first.local_addr()?;
        listener.set_nonblocking(true)?;
        let stats = Arc::new(UasStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut sockets = vec![first];
        for _ in 1..config.threads {
            sockets.push(udp_socket(local, true)?);
        }
        for (k, socket) in sockets.into_iter().enumerate() {
            let answerer = Answerer::new(config, local, "");
            let (stats, stop) = (stats.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("uas-udp-{k}"))
                    .spawn(move || serve_udp(&socket, answerer, &stats, &stop))?,
            );
        }
        let answerer = Answerer::new(config, local, ";transport=tcp");
        let (tcp_stats, tcp_stop) = (stats.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("uas-tcp".into())
                .spawn(move || serve_tcp(&listener, &answerer, &tcp_stats, &tcp_stop))?,
        );
        Ok(Uas { local, stats, stop, threads })
    }

    /// Stops the threads and waits for them.
    pub fn stop(self) -> Result<Arc<UasStats>> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().map_err(|_| anyhow::anyhow!("a UAS thread panicked"))??;
        }
        Ok(self.stats)
    }
}

/// Answers on `config.listen` until `config.duration` has passed (or forever), printing the
/// counts every second and at the end.
pub fn run(config: &UasConfig) -> Result<Arc<UasStats>> {
    let uas = Uas::start(config)?;
    eprintln!("sipbench uas listening on {} (UDP and TCP)", uas.local);
    let started = Instant::now();
    while config.duration.is_none_or(|d| started.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(1000).min(config.duration.unwrap_or(Duration::MAX)));
        if config.progress {
            eprintln!("uas {:>5.1}s  {}", started.elapsed().as_secs_f64(), uas.stats.line());
        }
        if uas.threads.iter().any(|t| t.is_finished()) {
            break; // A thread failed: stop() reports why.
        }
    }
    let stats = uas.stop()?;
    eprintln!("uas done: {}", stats.line());
    Ok(stats)
}

/// Builds the answers; one per thread.
#[derive(Clone)]
struct Answerer {
    contact: String,
    auth: Option<Credentials>,
    slots: Vec<HeaderSlot>,
    out: Vec<u8>,
}

impl Answerer {
    fn new(config: &UasConfig, local: SocketAddr, contact_params: &str) -> Answerer {
        Answerer {
            contact: format!("<sip:sipbench@{local}{contact_params}>"),
            auth: config.auth.clone(),
            slots: vec![HeaderSlot::EMPTY; Message::SLOTS],
            out: vec![0u8; 65_535],
        }
    }

    /// Answers `bytes`, handing each response to `send`.
    fn answer(&mut self, bytes: &[u8], stats: &UasStats, mut send: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let Ok(msg) = parse(bytes, &mut self.slots) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let Some(method) = msg.method() else { return Ok(()) };
        let call_id = msg.call_id().ok().flatten().unwrap_or_default();
        let tag = format!("{:016x}", fnv1a(call_id));
        let contact = self.contact.as_bytes();
        let mut respond = |code: u16, reason: &str, headers: &[(&str, &[u8])], body: &[u8]| -> Result<()> {
            // Answered to the source address; the Via is copied as SIPp's uas copies it.
            let spec = ResponseSpec { code, reason, to_tag: Some(&tag), headers, body, received_from: None };
            if let Ok(len) = write_response(&msg, &spec, &mut self.out) {
                send(&self.out[..len])?;
            }
            Ok(())
        };
        match method {
            Method::Invite => {
                stats.invites.fetch_add(1, Ordering::Relaxed);
                // A response that makes a dialog copies the Record-Route (§12.1.1): the caller's
                // in-dialog requests then go through the proxies that asked.
                let mut headers: Vec<(&str, &[u8])> =
                    msg.headers_named(HeaderName::RecordRoute).map(|h| ("Record-Route", h.value)).collect();
                headers.push(("Contact", contact));
                respond(180, "Ringing", &headers, b"")?;
                headers.push(("Content-Type", b"application/sdp"));
                respond(200, "OK", &headers, SDP)?;
            }
            Method::Ack => {
                stats.acks.fetch_add(1, Ordering::Relaxed);
            }
            Method::Bye => {
                stats.byes.fetch_add(1, Ordering::Relaxed);
                respond(200, "OK", &[("Contact", contact)], b"")?;
            }
            Method::Register => {
                let nonce = format!("{:016x}", fnv1a(call_id).rotate_left(17));
                let proof = msg.header(HeaderName::Authorization).and_then(|v| std::str::from_utf8(v).ok());
                let granted = match (&self.auth, proof) {
                    (None, _) => true,
                    (Some(auth), Some(proof)) => digest::verify(proof, auth, REALM, &nonce, "REGISTER"),
                    (Some(_), None) => {
                        stats.challenges.fetch_add(1, Ordering::Relaxed);
                        let challenge =
                            format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", qop=\"auth\", algorithm=MD5");
                        return respond(401, "Unauthorized", &[("WWW-Authenticate", challenge.as_bytes())], b"");
                    }
                };
                if granted {
                    stats.registers.fetch_add(1, Ordering::Relaxed);
                    let expires = msg.header(HeaderName::Expires).unwrap_or(b"3600");
                    let binding = msg.header(HeaderName::Contact).unwrap_or(contact);
                    let binding = [binding, b";expires=", expires].concat();
                    respond(200, "OK", &[("Contact", &binding)], b"")?;
                } else {
                    stats.challenges.fetch_add(1, Ordering::Relaxed);
                    respond(403, "Forbidden", &[], b"")?;
                }
            }
            _ => {
                stats.others.fetch_add(1, Ordering::Relaxed);
                respond(200, "OK", &[("Contact", contact)], b"")?;
            }
        }
        Ok(())
    }
}

/// FNV-1a of a Call-ID: the To tag and nonce, the same for every retransmission.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn serve_udp(socket: &UdpSocket, mut answerer: Answerer, stats: &UasStats, stop: &AtomicBool) -> Result<()> {
    let mut datagrams = Datagrams::new(65_535);
    let mut outbox = Outbox::default();
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(socket, Duration::from_millis(100)) {
            continue;
        }
        // Everything queued, a batch at a time; the answers to a batch go out together.
        loop {
            let n = datagrams.receive(socket);
            for i in 0..n {
                if let Some((bytes, from)) = datagrams.get(i) {
                    answerer.answer(bytes, stats, |response| {
                        outbox.push(response, from);
                        Ok(())
                    })?;
                }
            }
            outbox.send(socket);
            if n < BATCH {
                break;
            }
        }
    }
    Ok(())
}

fn serve_tcp(listener: &TcpListener, answerer: &Answerer, stats: &Arc<UasStats>, stop: &Arc<AtomicBool>) -> Result<()> {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let (answerer, stats, stop) = (answerer.clone(), stats.clone(), stop.clone());
                connections.push(std::thread::spawn(move || serve_connection(stream, answerer, &stats, &stop)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e).context("accepting a TCP connection"),
        }
        connections.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
    Ok(())
}

/// Answers one TCP connection until the peer closes it, it stops framing, or the UAS stops.
fn serve_connection(mut stream: TcpStream, mut answerer: Answerer, stats: &UasStats, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut inbound = Vec::with_capacity(1 << 16);
    let mut buf = vec![0u8; 1 << 16];
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => inbound.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue;
            }
            Err(_) => return,
        }
        let mut used = 0;
        loop {
            match frame(&inbound[used..]) {
                Ok(Frame::Partial) => break,
                Ok(Frame::KeepAlive { len, ping }) => {
                    if ping && writer.write_all(b"\r\n").is_err() {
                        return;
                    }
                    used += len;
                }
                Ok(Frame::Message { len }) => {
                    let message = &inbound[used..used + len];
                    if answerer.answer(message, stats, |r| Ok(writer.write_all(r)?)).is_err() {
                        return;
                    }
                    used += len;
                }
                Err(_) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        inbound.drain(..used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_port_whose_tcp_side_is_taken_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("address");
        let error = bind_udp_and_tcp(addr).expect_err("the TCP side is taken");
        assert!(format!("{error:#}").contains(&format!("binding TCP {addr}")), "{error:#}");
    }

    #[test]
    fn a_picked_port_serves_udp_and_tcp_alike() {
        for _ in 0..20 {
            let (udp, tcp) = bind_udp_and_tcp("127.0.0.1:0".parse().expect("address")).expect("binds");
            assert_eq!(udp.local_addr().expect("udp"), tcp.local_addr().expect("tcp"));
        }
    }
}
