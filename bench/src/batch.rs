//! Batched UDP: `recvmmsg` takes every queued datagram (up to [`BATCH`]) in one
//! system call, `sendmmsg` sends what a batch produced in one, and `ppoll`
//! waits for the next datagram with sub-millisecond precision (SO_RCVTIMEO
//! ticks in jiffies). At tens of thousands of calls per second the per-call
//! system calls are most of a generator's cost; batching is what lets sipbench
//! load a server harder than SIPp does.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use nix::sys::time::TimeSpec;

/// Most datagrams one system call takes or sends.
pub const BATCH: usize = 64;

/// Receive buffers and headers, reused from batch to batch.
pub struct Datagrams {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: Vec<Vec<u8>>,
    /// Length and sender of each datagram of the last batch (`None`: truncated or no address).
    got: Vec<Option<(usize, SocketAddr)>>,
}

impl Datagrams {
    /// [`BATCH`] buffers of `size` bytes.
    pub fn new(size: usize) -> Datagrams {
        Datagrams {
            headers: MultiHeaders::preallocate(BATCH, None),
            buffers: (0..BATCH).map(|_| vec![0u8; size]).collect(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Takes what is queued on `socket` without waiting; returns how many datagrams came.
    pub fn receive(&mut self, socket: &impl AsRawFd) -> usize {
        self.got.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self.buffers.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        if let Ok(results) = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut().map(|s| &*s),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            for message in results {
                let whole = !message.flags.contains(MsgFlags::MSG_TRUNC);
                let from = message.address.as_ref().and_then(to_std);
                self.got.push(from.filter(|_| whole).map(|from| (message.bytes, from)));
            }
        }
        self.got.len()
    }

    /// Datagram `i` of the last batch: its bytes and sender (`None`: truncated, dropped).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = self.got.get(i).copied().flatten()?;
        Some((&self.buffers[i][..len], from))
    }
}

/// Datagrams waiting to go, packed in one buffer.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    /// End offset in `bytes` and destination of each datagram.
    ends: Vec<(usize, SocketAddr)>,
}

impl Outbox {
    /// Queues `datagram` for `to`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        self.bytes.extend_from_slice(datagram);
        self.ends.push((self.bytes.len(), to));
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Sends everything queued on `socket`, [`BATCH`] datagrams per system call, and empties
    /// the outbox. A datagram the kernel refuses (a full buffer, an ICMP error from an earlier
    /// send) is dropped like a lost one: the sender's timers see to it.
    pub fn send(&mut self, socket: &impl AsRawFd) {
        let mut start = 0;
        for chunk in self.ends.chunks(BATCH) {
            let mut slices = Vec::with_capacity(chunk.len());
            let mut addrs = Vec::with_capacity(chunk.len());
            for &(end, to) in chunk {
                slices.push([IoSlice::new(&self.bytes[start..end])]);
                addrs.push(Some(SockaddrStorage::from(to)));
                start = end;
            }
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
            let mut sent = 0;
            while sent < slices.len() {
                match sendmmsg(socket.as_raw_fd(), &mut headers, &slices[sent..], &addrs[sent..], [], MsgFlags::empty())
                {
                    Ok(results) => sent += results.count().max(1),
                    Err(nix::errno::Errno::EINTR) => {}
                    // Skip the datagram that failed; send the rest.
                    Err(_) => sent += 1,
                }
            }
        }
        self.bytes.clear();
        self.ends.clear();
    }
}

/// Waits until `socket` has something to read or `timeout` has passed; true when readable.
pub fn wait_readable(socket: &impl AsFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(socket, PollFlags::POLLIN)];
    matches!(ppoll(&mut fds, Some(TimeSpec::from_duration(timeout)), None), Ok(n) if n > 0)
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    let v4 = addr.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into()));
    v4.or_else(|| addr.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_of_many_datagrams_arrives_whole_and_in_order() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("addr");
        let mut outbox = Outbox::default();
        for i in 0..100u8 {
            outbox.push(&[i; 20][..usize::from(i % 20) + 1], to);
        }
        outbox.send(&sender);
        assert!(outbox.is_empty());
        let mut datagrams = Datagrams::new(2048);
        let mut seen = Vec::new();
        while seen.len() < 100 {
            assert!(wait_readable(&receiver, Duration::from_secs(5)), "datagrams arrive");
            for i in 0..datagrams.receive(&receiver) {
                let (bytes, from) = datagrams.get(i).expect("whole");
                assert_eq!(from, sender.local_addr().expect("addr"));
                seen.push((bytes[0], bytes.len()));
            }
        }
        let expected: Vec<(u8, usize)> = (0..100u8).map(|i| (i, usize::from(i % 20) + 1)).collect();
        assert_eq!(seen, expected);
        assert!(!wait_readable(&receiver, Duration::from_millis(1)), "nothing more");
    }
}
