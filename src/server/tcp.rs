//! TCP for the shard driver (RFC 3261 §18.2.2, §18.3): each shard accepts on
//! its own SO_REUSEPORT listener and frames each stream with the parser
//! (Content-Length required; CRLF keep-alives answered, RFC 5626 §3.5.1).
//! Responses go back on the connection the request came in on: the shard that
//! owns a call may not hold that connection, so it learns which shard does
//! from the routed message and hands the bytes there; in a cluster, the node that
//! owns a call may not hold it either, and hands the bytes to the node that does
//! over the replica link (`Frame::Send`). Outbound connections are
//! opened on demand and reused per destination. Bounded: connections per
//! shard, queued messages per connection, one message's size (the framer's
//! limit), idle time.

use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use sipshard_parser::{Frame, frame};
use sipshard_shards::shard::{Input, Peer, SharedBytes, Transport};

use super::{Driver, Hop, bump};

/// A connection this shard holds: its id (so a late close does not remove a newer one)
/// and the queue its writer task drains.
pub(super) struct Connection {
    id: u64,
    queue: Rc<LocalSender<SharedBytes>>,
}

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// How long an outbound connection may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Driver {
    /// Accepts connections until the shard stops (the task is dropped then). An accept is never
    /// raced against a timer: a cancelled accept can lose a connection the kernel handed over.
    pub(super) async fn accept_loop(self: Rc<Self>, listener: TcpListener, done: Rc<std::cell::Cell<bool>>) {
        while !done.get() {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    continue;
                }
            };
            let Ok(addr) = stream.peer_addr() else { continue };
            if self.tcp.borrow().len() >= self.tcp_limits.max_connections {
                bump(&self.counters.tcp_refused);
                continue;
            }
            bump(&self.counters.tcp_accepted);
            self.start_connection(addr, Some(stream));
        }
    }

    /// Queues `bytes` on the connection to `peer`: one this shard holds, one another shard
    /// holds, or a new one. Gives the bytes back when they cannot even be queued.
    pub(super) async fn tcp_send(self: &Rc<Self>, peer: Peer, bytes: SharedBytes) -> Result<(), SharedBytes> {
        let queue = self.tcp.borrow().get(&peer.addr).map(|c| Rc::clone(&c.queue));
        if let Some(queue) = queue {
            return queue.try_send(bytes).map_err(|e| {
                bump(&self.counters.tcp_queue_full);
                match e {
                    glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(bytes))
                    | glommio::GlommioError::Closed(glommio::ResourceType::Channel(bytes)) => bytes,
                    _ => SharedBytes::default(),
                }
            });
        }
        let holder = self.tcp_routes.borrow().get(&peer.addr).copied();
        if let Some(shard) = holder {
            self.hop(shard, Hop::Send { peer, bytes }).await;
            return Ok(());
        }
        // The UA is connected to another node of the cluster: that node writes it.
        match self.send_via_tcp_home(peer.addr, &bytes) {
            Some(Ok(())) => return Ok(()),
            Some(Err(())) => return Err(bytes),
            None => {}
        }
        if self.tcp.borrow().len() >= self.tcp_limits.max_connections {
            bump(&self.counters.tcp_refused);
            return Err(bytes);
        }
        let queue = self.start_connection(peer.addr, None);
        queue.try_send(bytes).map_err(|_| SharedBytes::default())
    }

    /// Registers a connection to `addr` and starts its tasks; without a stream it connects first.
    fn start_connection(self: &Rc<Self>, addr: SocketAddr, stream: Option<TcpStream>) -> Rc<LocalSender<SharedBytes>> {
        let (queue, pending) = local_channel::new_bounded::<SharedBytes>(self.tcp_limits.queue);
        let queue = Rc::new(queue);
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        self.tcp.borrow_mut().insert(addr, Connection { id, queue: Rc::clone(&queue) });
        let driver = Rc::clone(self);
        glommio::spawn_local(async move {
            let peer = Peer { addr, transport: Transport::Tcp };
            let stream = match stream {
                Some(stream) => stream,
                None => match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
                    Ok(stream) => {
                        bump(&driver.counters.tcp_connected);
                        stream
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, to = %addr, "TCP connect failed");
                        bump(&driver.counters.tcp_refused);
                        driver.forget_connection(addr, id);
                        while let Some(bytes) = pending.recv().await {
                            driver.report_failure(peer, &bytes).await;
                        }
                        return;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (reader, mut writer) = futures_lite::io::split(stream);
            glommio::spawn_local(Rc::clone(&driver).read_loop(peer, id, reader)).detach();
            while let Some(bytes) = pending.recv().await {
                if let Err(e) = writer.write_all(&bytes).await {
                    tracing::debug!(error = %e, to = %addr, "TCP write failed");
                    bump(&driver.counters.send_errors);
                    driver.forget_connection(addr, id);
                    driver.report_failure(peer, &bytes).await;
                    break;
                }
            }
            let _ = writer.close().await;
        })
        .detach();
        queue
    }

    /// Forgets connection `id` to `addr` (a newer one to the same address stays).
    fn forget_connection(&self, addr: SocketAddr, id: u64) {
        let mut connections = self.tcp.borrow_mut();
        if connections.get(&addr).is_some_and(|c| c.id == id) {
            connections.remove(&addr);
        }
    }

    /// Reads and frames one connection until it closes, fails to frame, or idles out.
    async fn read_loop(self: Rc<Self>, peer: Peer, id: u64, mut reader: futures_lite::io::ReadHalf<TcpStream>) {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut chunk = vec![0u8; READ_CHUNK];
        let idle = self.tcp_limits.idle;
        loop {
            loop {
                match frame(&buf) {
                    Ok(Frame::Partial) => break,
                    Ok(Frame::KeepAlive { len, ping }) => {
                        buf.drain(..len);
                        if ping {
                            let _ = self.tcp_send(peer, self.pong.clone()).await;
                        }
                    }
                    Ok(Frame::Message { len }) => {
                        if let Some(moved) = self.process(Input::Datagram { peer, bytes: &buf[..len] }).await {
                            self.pass_on(moved, peer, buf[..len].to_vec()).await;
                        }
                        buf.drain(..len);
                    }
                    Err(e) => {
                        // A stream that does not frame cannot be resynchronised (§18.3): close it.
                        tracing::debug!(error = %e, from = %peer.addr, "TCP stream does not frame");
                        bump(&self.counters.tcp_framing_errors);
                        self.forget_connection(peer.addr, id);
                        return;
                    }
                }
            }
            let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
                glommio::timer::sleep(idle).await;
                None
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                None => {
                    bump(&self.counters.tcp_closed_idle);
                    self.forget_connection(peer.addr, id);
                    return;
                }
                Some(_) => {
                    self.forget_connection(peer.addr, id);
                    return;
                }
            }
        }
    }
}
