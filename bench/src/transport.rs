//! The generator's side of the wire: one UDP socket, or one TCP connection with
//! stream framing, both non-blocking so one thread sends on schedule and reads
//! what came in between.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};
use sipshard_parser::{Frame, frame};

use crate::batch::{BATCH, Datagrams, Outbox, wait_readable};

/// Which transport a run uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// UDP: requests retransmitted on timers A and E.
    Udp,
    /// TCP: one connection per generator thread, no retransmissions.
    Tcp,
}

impl TransportKind {
    /// The Via transport token.
    pub fn via(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
        }
    }

    /// Whether requests are retransmitted (only over unreliable transports).
    pub fn retransmits(self) -> bool {
        self == TransportKind::Udp
    }
}

/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`/`wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Most bytes buffered for a TCP peer that does not read; beyond it the run fails.
const MAX_PENDING_BYTES: usize = 64 << 20;

/// A bound, non-blocking UDP socket with large buffers.
pub fn udp_socket(local: SocketAddr, reuse_port: bool) -> Result<UdpSocket> {
    let domain = socket2::Domain::for_address(local);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&local.into()).with_context(|| format!("binding UDP {local}"))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One generator's connection to the target.
pub enum Link {
    /// UDP: datagrams to the target.
    Udp {
        /// The socket.
        socket: UdpSocket,
        /// Where requests go.
        target: SocketAddr,
        /// Receive buffers.
        datagrams: Datagrams,
        /// Datagrams not yet sent.
        outbox: Outbox,
    },
    /// TCP: a stream to the target.
    Tcp {
        /// The connection.
        stream: TcpStream,
        /// Bytes read and not yet framed.
        inbound: Vec<u8>,
        /// Bytes not yet accepted by the kernel.
        outbound: Vec<u8>,
    },
}

impl Link {
    /// Opens a link to `target` from `local` (over UDP, [`Link::send_to`] reaches others too).
    pub fn open(kind: TransportKind, local: SocketAddr, target: SocketAddr) -> Result<Link> {
        Ok(match kind {
            TransportKind::Udp => Link::Udp {
                socket: udp_socket(local, false)?,
                target,
                datagrams: Datagrams::new(65_535),
                outbox: Outbox::default(),
            },
            TransportKind::Tcp => {
                let socket = socket2::Socket::new(socket2::Domain::for_address(local), socket2::Type::STREAM, None)?;
                if local.port() != 0 {
                    socket.set_reuse_address(true)?;
                }
                socket.bind(&local.into()).with_context(|| format!("binding TCP {local}"))?;
                socket.connect(&target.into()).with_context(|| format!("connecting to {target} over TCP"))?;
                socket.set_nodelay(true)?;
                let stream: TcpStream = socket.into();
                stream.set_nonblocking(true)?;
                Link::Tcp { stream, inbound: Vec::with_capacity(1 << 16), outbound: Vec::new() }
            }
        })
    }

    /// The local address requests name in Via and Contact.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(match self {
            Link::Udp { socket, .. } => socket.local_addr()?,
            Link::Tcp { stream, .. } => stream.local_addr()?,
        })
    }

    /// Queues one message; [`Link::flush`] sends it. A UDP send that fails (an ICMP error
    /// from an earlier datagram) is dropped like a lost datagram, for the timers to handle.
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        match self {
            Link::Udp { target, outbox, .. } => {
                outbox.push(message, *target);
                Ok(())
            }
            Link::Tcp { outbound, .. } => {
                anyhow::ensure!(
                    outbound.len() + message.len() <= MAX_PENDING_BYTES,
                    "the server has not read {} bytes on the TCP connection",
                    outbound.len()
                );
                outbound.extend_from_slice(message);
                Ok(())
            }
        }
    }

    /// Queues one message for `to` (over TCP: on the one connection, whatever `to` says).
    pub fn send_to(&mut self, message: &[u8], to: SocketAddr) {
        match self {
            Link::Udp { outbox, .. } => outbox.push(message, to),
            Link::Tcp { outbound, .. } => outbound.extend_from_slice(message),
        }
    }

    /// Sends the queued datagrams, or writes what the kernel takes of the pending TCP bytes.
    pub fn flush(&mut self) -> Result<()> {
        if let Link::Udp { socket, outbox, .. } = self {
            outbox.send(socket);
        }
        if let Link::Tcp { stream, outbound, .. } = self {
            let mut written = 0;
            while written < outbound.len() {
                match stream.write(&outbound[written..]) {
                    Ok(0) => anyhow::bail!("the server closed the TCP connection"),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("writing to the server over TCP"),
                }
            }
            outbound.drain(..written);
        }
        Ok(())
    }

    /// Waits until something arrives or `timeout` has passed.
    pub fn wait(&self, timeout: Duration) {
        match self {
            Link::Udp { socket, .. } => wait_readable(socket, timeout),
            Link::Tcp { stream, .. } => wait_readable(stream, timeout),
        };
    }

    /// Reads what has arrived and hands each message to `on_message`; returns how
    /// many messages there were (0: nothing waiting).
    pub fn receive(&mut self, buf: &mut [u8], mut on_message: impl FnMut(&[u8]) -> Result<()>) -> Result<usize> {
        match self {
            Link::Udp { socket, datagrams, .. } => {
                let mut got = 0;
                loop {
                    let n = datagrams.receive(socket);
                    for i in 0..n {
                        if let Some((bytes, _)) = datagrams.get(i) {
                            on_message(bytes)?;
                        }
                    }
                    got += n;
                    if n < BATCH || got >= 4 * BATCH {
                        break;
                    }
                }
                Ok(got)
            }
            Link::Tcp { stream, inbound, .. } => {
                loop {
                    match stream.read(buf) {
                        Ok(0) => anyhow::bail!("the server closed the TCP connection"),
                        Ok(n) => inbound.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e).context("reading from the server over TCP"),
                    }
                }
                let mut used = 0;
                let mut got = 0;
                loop {
                    match frame(&inbound[used..]).context("the server sent a stream that does not frame")? {
                        Frame::Partial => break,
                        Frame::KeepAlive { len, .. } => used += len,
                        Frame::Message { len } => {
                            on_message(&inbound[used..used + len])?;
                            used += len;
                            got += 1;
                        }
                    }
                }
                inbound.drain(..used);
                Ok(got)
            }
        }
    }
}
