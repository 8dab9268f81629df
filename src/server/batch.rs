//! Batched UDP receive: once a datagram has woken the shard, one `recvmmsg`
//! (non-blocking) takes up to [`BATCH`] more that are already queued, so a
//! busy socket costs one system call per batch rather than per datagram.
//! Through nix's safe wrapper; the buffers are the shard's, reused.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};

/// Most datagrams taken by one `recvmmsg`.
pub(super) const BATCH: usize = 32;

/// The shard's receive buffers and headers.
pub(super) struct Batch {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: Vec<Vec<u8>>,
    /// Length and sender of each datagram of the last batch (`None`: truncated or no address).
    got: Vec<Option<(usize, SocketAddr)>>,
}

impl Batch {
    /// `BATCH` buffers of `size` bytes.
    pub(super) fn new(size: usize) -> Batch {
        Batch {
            headers: MultiHeaders::preallocate(BATCH, None),
            buffers: (0..BATCH).map(|_| vec![0u8; size]).collect(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Takes what is queued on `fd` without waiting; returns how many datagrams came.
    pub(super) fn receive(&mut self, fd: RawFd) -> usize {
        self.got.clear();
        let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = {
            let mut buffers = self.buffers.iter_mut();
            std::array::from_fn(|_| [IoSliceMut::new(buffers.next().expect("invariant: BATCH buffers"))])
        };
        if let Ok(results) =
            recvmmsg(fd, &mut self.headers, slices.iter_mut().map(|s| &*s), MsgFlags::MSG_DONTWAIT, None)
        {
            for message in results {
                let whole = !message.flags.contains(MsgFlags::MSG_TRUNC);
                let from = message.address.as_ref().and_then(to_std);
                self.got.push(from.filter(|_| whole).map(|from| (message.bytes, from)));
            }
        }
        self.got.len()
    }

    /// Datagram `i` of the last batch: its bytes and sender (`None`: truncated, dropped).
    pub(super) fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = self.got.get(i).copied().flatten()?;
        Some((&self.buffers[i][..len], from))
    }

    /// A copy of datagram `i` (one that moves to another shard); empty if it was truncated.
    pub(super) fn take(&mut self, i: usize) -> Vec<u8> {
        // A copy at the datagram's size: replacing the buffer would zero a fresh 64 KiB one per
        // datagram that moves to another shard, and send 64 KiB of capacity along with it.
        let len = self.got.get(i).copied().flatten().map_or(0, |(len, _)| len);
        self.buffers[i][..len].to_vec()
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    let v4 = addr.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into()));
    v4.or_else(|| addr.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_takes_every_queued_datagram_in_order_and_never_waits() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut batch = Batch::new(1024);
        assert_eq!(batch.receive(socket.as_raw_fd()), 0, "nothing queued: no wait, nothing taken");
        for i in 0..40u8 {
            sender.send_to(&[i; 10], socket.local_addr().expect("addr")).expect("send");
        }
        sender.send_to(&[9; 2000], socket.local_addr().expect("addr")).expect("send");
        assert_eq!(batch.receive(socket.as_raw_fd()), BATCH);
        let (bytes, from) = batch.datagram(31).expect("datagram");
        assert_eq!((bytes, from), (&[31u8; 10][..], sender.local_addr().expect("addr")));
        assert_eq!(batch.take(0), vec![0u8; 10], "a taken buffer keeps its datagram");
        assert_eq!(batch.receive(socket.as_raw_fd()), 9);
        assert!(batch.datagram(8).is_none(), "a datagram larger than the buffer is dropped, not cut");
        assert_eq!(batch.datagram(7).map(|(b, _)| b[0]), Some(39));
    }
}
