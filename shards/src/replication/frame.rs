//! Replication frames on a replica link, and their byte layout:
//!
//! ```text
//! u32 length (big-endian, of what follows) | u8 version | postcard(Frame) | u32 CRC-32 of version+payload
//! ```
//!
//! A frame that is too long, of an unknown version, fails its checksum or does
//! not decode is an error: the link closes with that reason (it never panics
//! and never hands a half-read frame on).

use serde::{Deserialize, Serialize};

use crate::stripe::{NodeId, ShardId};

/// Largest frame accepted (length field included): a record plus its key fit well under it.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// The layout version written in every frame.
pub const FRAME_VERSION: u8 = 1;

/// Bytes of an authentication proof (HMAC-SHA-256).
pub const PROOF_BYTES: usize = 32;

/// Bytes of a handshake challenge.
pub const CHALLENGE_BYTES: usize = 16;

/// One message between the shard-k ends of two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The connecting side introduces itself and challenges the other.
    Hello {
        /// Cluster id: links between clusters are refused.
        cluster: u64,
        /// The sender's node.
        node: NodeId,
        /// The sender's shard (must equal the receiver's).
        shard: ShardId,
        /// The sender's view epoch.
        epoch: u64,
        /// Changes the sender numbers are of this incarnation (new at every start).
        incarnation: u64,
        /// A fresh challenge the other side must prove the shared secret on.
        challenge: [u8; CHALLENGE_BYTES],
    },
    /// The accepting side's answer: its identity, its proof, its own challenge, and how far
    /// it has received the connecting side's changes.
    Welcome {
        /// Cluster id.
        cluster: u64,
        /// The sender's node.
        node: NodeId,
        /// The sender's shard.
        shard: ShardId,
        /// The sender's view epoch.
        epoch: u64,
        /// The sender's incarnation.
        incarnation: u64,
        /// HMAC of the Hello's challenge.
        proof: [u8; PROOF_BYTES],
        /// A fresh challenge for the connecting side.
        challenge: [u8; CHALLENGE_BYTES],
        /// The last change received in order from the connecting side's incarnation (0: none).
        received: u64,
    },
    /// The connecting side's proof, and how far it has received the other side's changes.
    Proof {
        /// HMAC of the Welcome's challenge.
        proof: [u8; PROOF_BYTES],
        /// The last change received in order from the accepting side's incarnation (0: none).
        received: u64,
    },
    /// A change of a replicated record.
    Change {
        /// Its number on this link (from 1, consecutive within the sender's incarnation).
        seq: u64,
        /// The record's stripe.
        stripe: u32,
        /// The record's key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The record's version after the change.
        version: u64,
        /// The role's hints (bits).
        hints: u8,
        /// The encoded record; empty for a removal.
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// Every change up to `seq` arrived.
    Ack {
        /// The last change received in order.
        seq: u64,
    },
    /// Liveness probe, answered with an [`Frame::Echo`] of the same time.
    Heartbeat {
        /// The sender's clock when sent (ms).
        sent_ms: u64,
    },
    /// Answer to a heartbeat.
    Echo {
        /// The heartbeat's `sent_ms`.
        sent_ms: u64,
    },
    /// A SIP message the sender received for a stripe the receiver owns (not numbered: a
    /// message lost with its link is one the UA retransmits, like a lost datagram).
    Forward {
        /// Who sent it to the sender.
        from: std::net::SocketAddr,
        /// Whether it came over TCP.
        tcp: bool,
        /// The message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// A node owns a stripe but not a record an in-dialog request names: does the receiver
    /// hold a copy (live or dormant)?
    Lookup {
        /// Matches the reply to the question.
        id: u64,
        /// The stripe.
        stripe: u32,
        /// The key (a Call-ID, or a B-leg Call-ID).
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The answer to a Lookup: the record's key, version and encoding, or nothing.
    LookupReply {
        /// The Lookup's id.
        id: u64,
        /// The copy: its key, version and encoded record.
        found: Option<(serde_bytes::ByteBuf, u64, serde_bytes::ByteBuf)>,
    },
    /// The sender's view of the cluster: the receiver takes it if its epoch is newer (a
    /// returning node learns it was dropped; the hand-back gives it its stripes).
    View {
        /// The stripe map.
        map: crate::stripe::StripeMap,
    },
    /// A SIP message for the receiver to send on its TCP connection from `to` (the owner of a
    /// call answers a UA connected to another node through that node).
    Send {
        /// The UA's address: the far end of a connection the receiver holds.
        to: std::net::SocketAddr,
        /// The message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
}

impl Frame {
    /// The frame's kind, for log lines and close reasons.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Proof { .. } => "Proof",
            Frame::Change { .. } => "Change",
            Frame::Ack { .. } => "Ack",
            Frame::Heartbeat { .. } => "Heartbeat",
            Frame::Echo { .. } => "Echo",
            Frame::Forward { .. } => "Forward",
            Frame::View { .. } => "View",
            Frame::Lookup { .. } => "Lookup",
            Frame::LookupReply { .. } => "LookupReply",
            Frame::Send { .. } => "Send",
        }
    }
}

/// Why bytes on a link are not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is above [`MAX_FRAME_BYTES`] or below the smallest frame.
    #[error("frame length {0} out of bounds")]
    Length(usize),
    /// The version byte is not [`FRAME_VERSION`].
    #[error("frame version {0} unknown")]
    Version(u8),
    /// The CRC-32 does not match.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The payload does not decode.
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// Appends `frame`'s bytes to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    encode_with(out, |out| postcard::to_extend(frame, out));
}

/// The borrowed twin of the frames sent in bulk ([`Frame::Change`], [`Frame::Forward`],
/// [`Frame::Send`]):
/// the same variant numbers, so it encodes to the same bytes without copying the record or
/// the message into a [`Frame`] first.
#[derive(Serialize)]
#[allow(dead_code)] // The placeholders only hold their variants' numbers.
enum BulkFrame<'a> {
    Hello,
    Welcome,
    Proof,
    Change {
        seq: u64,
        stripe: u32,
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
        version: u64,
        hints: u8,
        #[serde(with = "serde_bytes")]
        record: &'a [u8],
    },
    Ack,
    Heartbeat,
    Echo,
    Forward {
        from: std::net::SocketAddr,
        tcp: bool,
        #[serde(with = "serde_bytes")]
        message: &'a [u8],
    },
    Lookup,
    LookupReply,
    View,
    Send {
        to: std::net::SocketAddr,
        #[serde(with = "serde_bytes")]
        message: &'a [u8],
    },
}

/// Appends a [`Frame::Change`] built from borrowed parts to `out`.
pub fn encode_change(seq: u64, change: &crate::table::Change, out: &mut Vec<u8>) {
    let frame = BulkFrame::Change {
        seq,
        stripe: change.stripe.0,
        key: &change.key,
        version: change.version,
        hints: change.hints.0,
        record: &change.bytes,
    };
    encode_with(out, |out| postcard::to_extend(&frame, out));
}

/// Appends a [`Frame::Forward`] of a borrowed message to `out`.
pub fn encode_forward(from: std::net::SocketAddr, tcp: bool, message: &[u8], out: &mut Vec<u8>) {
    let frame = BulkFrame::Forward { from, tcp, message };
    encode_with(out, |out| postcard::to_extend(&frame, out));
}

/// Appends a [`Frame::Send`] of a borrowed message to `out`.
pub fn encode_send(to: std::net::SocketAddr, message: &[u8], out: &mut Vec<u8>) {
    let frame = BulkFrame::Send { to, message };
    encode_with(out, |out| postcard::to_extend(&frame, out));
}

/// Frames what `payload` appends: length, version, payload, CRC.
fn encode_with(out: &mut Vec<u8>, payload: impl FnOnce(Vec<u8>) -> postcard::Result<Vec<u8>>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION]);
    let mut buf = payload(std::mem::take(out)).expect("invariant: frames always serialize");
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf.extend_from_slice(&crc.to_be_bytes());
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    *out = buf;
}

/// Decodes the first frame in `buf`: `Ok(None)` when more bytes are needed, else the frame
/// and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(6..=MAX_FRAME_BYTES - 4).contains(&len) {
        return Err(FrameError::Length(len));
    }
    let Some(body) = buf.get(4..4 + len) else { return Ok(None) };
    let (checked, crc) = body.split_at(len - 4);
    if crc32fast::hash(checked).to_be_bytes() != crc {
        return Err(FrameError::Checksum);
    }
    if checked[0] != FRAME_VERSION {
        return Err(FrameError::Version(checked[0]));
    }
    let frame = postcard::from_bytes(&checked[1..]).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok(Some((frame, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64) -> Frame {
        change_frame(seq)
    }

    fn change_frame(seq: u64) -> Frame {
        Frame::Change { seq, stripe: 7, key: b"call-1".to_vec(), version: 3, hints: 1, record: vec![9; 40] }
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let frames = vec![
            change(1),
            Frame::Ack { seq: 1 },
            Frame::Heartbeat { sent_ms: 12 },
            Frame::Forward { from: "127.0.0.1:5060".parse().expect("addr"), tcp: false, message: b"BYE".to_vec() },
            Frame::Hello {
                cluster: 5,
                node: NodeId(1),
                shard: ShardId(0),
                epoch: 2,
                incarnation: 77,
                challenge: [3; CHALLENGE_BYTES],
            },
        ];
        let mut bytes = Vec::new();
        for frame in &frames {
            encode(frame, &mut bytes);
        }
        // Fed a byte at a time, the decoder waits, then yields each frame whole.
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for &b in &bytes {
            buf.push(b);
            while let Some((frame, used)) = decode(&buf).expect("valid") {
                buf.drain(..used);
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn bulk_frames_encode_as_their_owned_twins() {
        let change = crate::table::Change {
            stripe: crate::stripe::StripeId(7),
            key: b"call-1"[..].into(),
            version: 3,
            hints: crate::table::Hints(1),
            bytes: vec![9; 40],
        };
        let (mut borrowed, mut owned) = (vec![1, 2], vec![1, 2]);
        encode_change(1, &change, &mut borrowed);
        encode(&change_frame(1), &mut owned);
        assert_eq!(borrowed, owned);
        let from = "127.0.0.1:5060".parse().expect("addr");
        let (mut borrowed, mut owned) = (Vec::new(), Vec::new());
        encode_forward(from, true, b"BYE", &mut borrowed);
        encode(&Frame::Forward { from, tcp: true, message: b"BYE".to_vec() }, &mut owned);
        assert_eq!(borrowed, owned);
        let (mut borrowed, mut owned) = (Vec::new(), Vec::new());
        encode_send(from, b"SIP/2.0 200 OK", &mut borrowed);
        encode(&Frame::Send { to: from, message: b"SIP/2.0 200 OK".to_vec() }, &mut owned);
        assert_eq!(borrowed, owned);
        assert_eq!(decode(&borrowed).ok().flatten().map(|(f, _)| f.name()), Some("Send"));
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut bytes = Vec::new();
        encode(&change(1), &mut bytes);
        for i in 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad), Err(FrameError::Checksum), "byte {i}");
        }
    }

    #[test]
    fn lengths_out_of_bounds_and_unknown_versions_are_errors() {
        assert_eq!(decode(&[0, 0, 0, 1, 0]), Err(FrameError::Length(1)));
        assert_eq!(decode(&[0x7f, 0, 0, 0]), Err(FrameError::Length(0x7f00_0000)));
        let mut bytes = Vec::new();
        encode(&Frame::Ack { seq: 9 }, &mut bytes);
        bytes[4] = 2;
        let crc = crc32fast::hash(&bytes[4..bytes.len() - 4]).to_be_bytes();
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&crc);
        assert_eq!(decode(&bytes), Err(FrameError::Version(2)));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = decode(&bytes);
        }
    }
}
