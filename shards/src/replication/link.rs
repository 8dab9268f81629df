//! One replica link, sans-IO: the protocol state between shard k of this node
//! and shard k of one peer node (DESIGN.md §5). The runtime owns the TCP
//! connection and feeds the link what happens (`connected`, `receive`,
//! `disconnected`, `tick`) with the time; the link answers with bytes to write
//! (`take_outbound`), events (`poll_event`) and its next deadline
//! (`poll_timeout`).
//!
//! - **Handshake**: the connecting side sends `Hello` with a fresh challenge;
//!   the accepting side answers `Welcome` with an HMAC-SHA-256 of it under the
//!   cluster's shared secret and its own challenge; the connecting side
//!   answers `Proof`. Cluster id, node and shard must be the expected ones.
//!   Any failure closes the link with the reason; nothing is delivered before
//!   both sides proved the secret.
//! - **Changes** are numbered from 1 within the sender's *incarnation* (a new
//!   one at every start). The receiver delivers them in order exactly once,
//!   acknowledges the last one in order, and ignores a change it already has (a
//!   replay, or a resend after reconnecting). A gap is a protocol error.
//! - **Window and resend**: at most `window` changes are in flight unacked;
//!   the rest wait (at most `max_queued`, then [`LinkError::Full`]). After a
//!   reconnect each side says how far it has received the other's changes, and
//!   the sender resends from there. A peer that says less than it once
//!   acknowledged has restarted: what waits is renumbered from there.
//! - **Liveness**: a `Heartbeat` every `heartbeat_ms`, answered by `Echo`; any
//!   frame counts as heard (a connection alone does not: a relay or a frozen
//!   process's kernel accepts them). Silence for `dead_after_ms` (default 600) reports
//!   [`LinkEvent::PeerDead`] once, and closes the link.

use std::collections::VecDeque;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{CHALLENGE_BYTES, Frame, PROOF_BYTES, decode, encode, encode_change, encode_forward, encode_send};
use crate::stripe::{NodeId, ShardId};
use crate::table::{CallKey, Change, Hints};

/// What a link needs to know.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The cluster's id: links between clusters are refused.
    pub cluster: u64,
    /// The cluster's shared secret (HMAC key).
    pub secret: Vec<u8>,
    /// This node.
    pub node: NodeId,
    /// This shard (both ends of a link are the same shard number).
    pub shard: ShardId,
    /// This node's view epoch, told to the peer.
    pub epoch: u64,
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: u64,
    /// Milliseconds of silence after which the peer is dead.
    pub dead_after_ms: u64,
    /// Most changes in flight unacknowledged.
    pub window: usize,
    /// Most changes waiting (in flight or not); beyond, [`LinkError::Full`].
    pub max_queued: usize,
    /// This start's incarnation (must differ between starts of a node).
    pub incarnation: u64,
    /// Seed of the challenge generator (unpredictable in production).
    pub seed: u64,
}

impl LinkConfig {
    /// Defaults: heartbeat 200 ms, dead after 600 ms, window 1024, 65,536 queued.
    pub fn new(cluster: u64, secret: &[u8], node: NodeId, shard: ShardId, incarnation: u64, seed: u64) -> LinkConfig {
        LinkConfig {
            cluster,
            secret: secret.to_vec(),
            node,
            shard,
            epoch: 0,
            heartbeat_ms: 200,
            dead_after_ms: 600,
            window: 1024,
            max_queued: 65_536,
            incarnation,
            seed,
        }
    }
}

/// Which end of the connection this link is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node opened the connection (it sends `Hello`).
    Connecting,
    /// The peer opened it (this node answers `Welcome`).
    Accepting,
}

/// A change received from the peer, in order, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Its number on the link.
    pub seq: u64,
    /// The change.
    pub change: Change,
}

/// What the link tells the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Both sides proved the secret; changes flow.
    Up {
        /// The peer's view epoch.
        epoch: u64,
        /// The peer started again since the link was last up (a new incarnation): it holds
        /// nothing of what it had, and wants a snapshot.
        restarted: bool,
    },
    /// A change from the peer, to install as a backup copy.
    Delivered(Replica),
    /// The peer has every change up to `seq`.
    Acked {
        /// The last change acknowledged.
        seq: u64,
    },
    /// A SIP message the peer received for a stripe this node owns.
    Forwarded {
        /// Who sent it to the peer.
        from: std::net::SocketAddr,
        /// Whether it came over TCP.
        tcp: bool,
        /// The message.
        message: Vec<u8>,
    },
    /// The peer's view of the cluster (take it if newer).
    View(crate::stripe::StripeMap),
    /// A SIP message to send on this node's TCP connection from `to`.
    Send {
        /// The UA's address.
        to: std::net::SocketAddr,
        /// The message.
        message: Vec<u8>,
    },
    /// The peer asks for a copy of a record (answer with [`ReplicaLink::send_lookup_reply`]).
    Lookup {
        /// The question's id.
        id: u64,
        /// The stripe.
        stripe: crate::stripe::StripeId,
        /// The key.
        key: Vec<u8>,
    },
    /// The peer's answer to a lookup.
    LookupReply {
        /// The question's id.
        id: u64,
        /// The copy it holds, if any (its `stripe` is left 0: the asker knows it).
        found: Option<Change>,
    },
    /// Nothing heard from the peer for `dead_after_ms`.
    PeerDead,
    /// The link closed; the runtime closes the connection and may reconnect.
    Closed {
        /// Why.
        reason: String,
    },
}

/// Why a change was not queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// `max_queued` changes already wait.
    #[error("replication queue full ({0} changes waiting)")]
    Full(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Down,
    AwaitHello,
    AwaitWelcome { challenge: [u8; CHALLENGE_BYTES] },
    AwaitProof { challenge: [u8; CHALLENGE_BYTES] },
    Up,
}

/// Counters of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Changes sent (resends included).
    pub changes_sent: u64,
    /// Changes sent again after a reconnect.
    pub changes_resent: u64,
    /// Changes delivered.
    pub changes_delivered: u64,
    /// Changes received again and ignored (replays, resends).
    pub duplicates_ignored: u64,
    /// Times the link closed.
    pub closes: u64,
    /// Bytes produced for the connection.
    pub bytes_out: u64,
    /// Of those, bytes of Change frames (what replication costs on the wire).
    pub change_bytes_out: u64,
    /// SIP messages forwarded to the peer.
    pub forwards_sent: u64,
    /// SIP messages not forwarded because the link was down.
    pub forwards_dropped: u64,
    /// SIP messages the peer forwarded here.
    pub forwards_received: u64,
    /// SIP messages sent to the peer for its TCP connection to a UA.
    pub sends_sent: u64,
    /// Of those, not sent because the link was down.
    pub sends_dropped: u64,
    /// SIP messages the peer sent here for a connection this node holds.
    pub sends_received: u64,
}

/// The protocol state of one link.
#[derive(Debug)]
pub struct ReplicaLink {
    config: LinkConfig,
    side: Side,
    peer: NodeId,
    state: State,
    /// Changes not yet acknowledged, oldest first (sent or not).
    queue: VecDeque<(u64, Change)>,
    next_seq: u64,
    /// Highest seq written on the current connection.
    sent_upto: u64,
    /// Highest seq ever written (to count resends).
    ever_sent: u64,
    /// Highest seq the peer acknowledged.
    acked: u64,
    /// The peer's incarnation whose changes `received` counts.
    peer_incarnation: Option<u64>,
    /// The peer's view epoch from its Hello (accepting side).
    peer_epoch: u64,
    /// The peer's incarnation changed since the link was last up (reported once, with Up).
    peer_restarted: bool,
    received: u64,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
    last_heard: Option<u64>,
    next_heartbeat: u64,
    dead_reported: bool,
    events: VecDeque<LinkEvent>,
    rng: u64,
    renumberings: u64,
    stats: LinkStats,
}

type HmacSha256 = Hmac<Sha256>;

impl ReplicaLink {
    /// A link to `peer`, down until [`ReplicaLink::connected`].
    pub fn new(config: LinkConfig, side: Side, peer: NodeId) -> ReplicaLink {
        let rng = config.seed | 1;
        ReplicaLink {
            config,
            side,
            peer,
            state: State::Down,
            queue: VecDeque::new(),
            next_seq: 1,
            sent_upto: 0,
            ever_sent: 0,
            acked: 0,
            peer_incarnation: None,
            peer_epoch: 0,
            peer_restarted: false,
            received: 0,
            inbound: Vec::new(),
            outbound: Vec::new(),
            last_heard: None,
            next_heartbeat: 0,
            dead_reported: false,
            events: VecDeque::new(),
            rng,
            renumberings: 0,
            stats: LinkStats::default(),
        }
    }

    /// Whether changes flow.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The peer node.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Changes waiting for the peer's acknowledgement.
    pub fn unacked(&self) -> usize {
        self.queue.len()
    }

    /// The last change the peer acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// How many times the peer restarted and what waited was renumbered: a change number
    /// taken before a renumbering means nothing after it.
    pub fn renumberings(&self) -> u64 {
        self.renumberings
    }

    /// Counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The transport connected at `now`: the connecting side says Hello.
    pub fn connected(&mut self, now: u64) {
        self.inbound.clear();
        self.outbound.clear();
        self.sent_upto = self.acked;
        // A connection is not the peer: only its frames count as heard (a relay, a load
        // balancer or a frozen process's kernel accepts connections for a silent peer).
        if self.last_heard.is_none() {
            self.last_heard = Some(now);
        }
        self.state = match self.side {
            Side::Connecting => {
                let challenge = self.challenge();
                self.send(&Frame::Hello {
                    cluster: self.config.cluster,
                    node: self.config.node,
                    shard: self.config.shard,
                    epoch: self.config.epoch,
                    incarnation: self.config.incarnation,
                    challenge,
                });
                State::AwaitWelcome { challenge }
            }
            Side::Accepting => State::AwaitHello,
        };
    }

    /// The transport closed (by the peer, or an error).
    pub fn disconnected(&mut self, _now: u64) {
        self.down();
    }

    /// Bytes arrived on the connection at `now`.
    pub fn receive(&mut self, now: u64, bytes: &[u8]) {
        if self.state == State::Down {
            return;
        }
        self.inbound.extend_from_slice(bytes);
        let mut used = 0;
        let mut ack = false;
        while self.state != State::Down {
            match decode(&self.inbound[used..]) {
                Ok(None) => break,
                Ok(Some((frame, len))) => {
                    used += len;
                    self.last_heard = Some(now);
                    ack |= self.on_frame(now, frame);
                }
                Err(e) => {
                    self.close(format!("bad frame from node {}: {e}", self.peer.0));
                    return;
                }
            }
        }
        if self.state == State::Down {
            return;
        }
        self.inbound.drain(..used);
        if ack {
            self.send(&Frame::Ack { seq: self.received });
        }
    }

    /// Time passed: heartbeats and the dead-peer check.
    pub fn tick(&mut self, now: u64) {
        if !self.dead_reported && self.last_heard.is_some_and(|h| now >= h + self.config.dead_after_ms) {
            self.dead_reported = true;
            self.events.push_back(LinkEvent::PeerDead);
            if self.state != State::Down {
                self.close(format!("node {} silent for {} ms", self.peer.0, self.config.dead_after_ms));
            }
            return;
        }
        if self.state == State::Up && now >= self.next_heartbeat {
            self.send(&Frame::Heartbeat { sent_ms: now });
            self.next_heartbeat = now + self.config.heartbeat_ms;
        }
    }

    /// When [`ReplicaLink::tick`] has something to do next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let dead = self.last_heard.filter(|_| !self.dead_reported).map(|h| h + self.config.dead_after_ms);
        let heartbeat = (self.state == State::Up).then_some(self.next_heartbeat);
        match (dead, heartbeat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues `change` for the peer; returns its number. Sent at once when the link is up and
    /// the window allows, else when it does.
    pub fn replicate(&mut self, change: &Change) -> Result<u64, LinkError> {
        if self.queue.len() >= self.config.max_queued {
            return Err(LinkError::Full(self.queue.len()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back((seq, change.clone()));
        self.pump();
        Ok(seq)
    }

    /// Sends a SIP message `from` a UA to the peer, which owns its stripe; returns false (and
    /// counts it) when the link is down: the message is dropped, and the UA's retransmission
    /// finds the stripe's owner once the link is back or the view has changed.
    pub fn forward(&mut self, from: std::net::SocketAddr, tcp: bool, message: &[u8]) -> bool {
        if self.state != State::Up {
            self.stats.forwards_dropped += 1;
            return false;
        }
        let before = self.outbound.len();
        encode_forward(from, tcp, message, &mut self.outbound);
        self.stats.bytes_out += (self.outbound.len() - before) as u64;
        self.stats.forwards_sent += 1;
        true
    }

    /// Gives the peer a message to send on its TCP connection from `to` (a UA connected there);
    /// false (and counted) when the link is down.
    pub fn send_to_connection(&mut self, to: std::net::SocketAddr, message: &[u8]) -> bool {
        if self.state != State::Up {
            self.stats.sends_dropped += 1;
            return false;
        }
        let before = self.outbound.len();
        encode_send(to, message, &mut self.outbound);
        self.stats.bytes_out += (self.outbound.len() - before) as u64;
        self.stats.sends_sent += 1;
        true
    }

    /// Sends this node's view to the peer; false when the link is down.
    pub fn send_view(&mut self, map: &crate::stripe::StripeMap) -> bool {
        if self.state != State::Up {
            return false;
        }
        self.send(&Frame::View { map: map.clone() });
        true
    }

    /// Asks the peer for a copy of the record of `key` in `stripe`; false when the link is down.
    pub fn send_lookup(&mut self, id: u64, stripe: crate::stripe::StripeId, key: &[u8]) -> bool {
        if self.state != State::Up {
            return false;
        }
        self.send(&Frame::Lookup { id, stripe: stripe.0, key: key.to_vec() });
        true
    }

    /// Answers the peer's lookup `id`.
    pub fn send_lookup_reply(&mut self, id: u64, found: Option<&Change>) {
        if self.state != State::Up {
            return;
        }
        let found = found.map(|c| {
            (serde_bytes::ByteBuf::from(c.key.to_vec()), c.version, serde_bytes::ByteBuf::from(c.bytes.clone()))
        });
        self.send(&Frame::LookupReply { id, found });
    }

    /// Whether there are bytes to write.
    pub fn has_outbound(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// The bytes to write on the connection (taken: the next call returns only new ones).
    pub fn take_outbound(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbound)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn challenge(&mut self) -> [u8; CHALLENGE_BYTES] {
        let mut out = [0u8; CHALLENGE_BYTES];
        for chunk in out.chunks_mut(8) {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let word = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        out
    }

    /// The proof that `prover` knows the secret, over `challenge` from `verifier`.
    fn proof(&self, challenge: &[u8; CHALLENGE_BYTES], prover: NodeId, verifier: NodeId) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.config.secret).expect("invariant: HMAC takes any key length");
        mac.update(b"sipshard replica link v1");
        mac.update(&self.config.cluster.to_be_bytes());
        mac.update(&self.config.shard.0.to_be_bytes());
        mac.update(&prover.0.to_be_bytes());
        mac.update(&verifier.0.to_be_bytes());
        mac.update(challenge);
        mac
    }

    fn my_proof(&self, challenge: &[u8; CHALLENGE_BYTES]) -> [u8; PROOF_BYTES] {
        self.proof(challenge, self.config.node, self.peer).finalize().into_bytes().into()
    }

    fn proof_holds(&self, challenge: &[u8; CHALLENGE_BYTES], proof: &[u8; PROOF_BYTES]) -> bool {
        self.proof(challenge, self.peer, self.config.node).verify_slice(proof).is_ok()
    }

    /// Checks the peer's identity; closes the link and returns false when it is not the one.
    fn identity_holds(&mut self, cluster: u64, node: NodeId, shard: ShardId) -> bool {
        let why = if cluster != self.config.cluster {
            format!("cluster id {cluster} is not ours ({})", self.config.cluster)
        } else if node != self.peer {
            format!("node {} answered where node {} was expected", node.0, self.peer.0)
        } else if shard != self.config.shard {
            format!("shard {} linked to shard {}", shard.0, self.config.shard.0)
        } else {
            return true;
        };
        self.close(why);
        false
    }

    /// Notes the peer's incarnation: a new one numbers its changes from 1 again.
    fn peer_incarnation(&mut self, incarnation: u64) {
        if self.peer_incarnation != Some(incarnation) {
            self.peer_restarted = self.peer_incarnation.is_some();
            self.peer_incarnation = Some(incarnation);
            self.received = 0;
        }
    }

    /// Handles one frame; returns whether an Ack is due.
    fn on_frame(&mut self, now: u64, frame: Frame) -> bool {
        match (&self.state, frame) {
            (State::AwaitHello, Frame::Hello { cluster, node, shard, epoch, incarnation, challenge }) => {
                if self.identity_holds(cluster, node, shard) {
                    self.peer_incarnation(incarnation);
                    self.peer_epoch = epoch;
                    let mine = self.challenge();
                    self.send(&Frame::Welcome {
                        cluster: self.config.cluster,
                        node: self.config.node,
                        shard: self.config.shard,
                        epoch: self.config.epoch,
                        incarnation: self.config.incarnation,
                        proof: self.my_proof(&challenge),
                        challenge: mine,
                        received: self.received,
                    });
                    self.state = State::AwaitProof { challenge: mine };
                }
                false
            }
            (
                &State::AwaitWelcome { challenge },
                Frame::Welcome { cluster, node, shard, epoch, incarnation, proof, challenge: theirs, received },
            ) => {
                if !self.identity_holds(cluster, node, shard) {
                    return false;
                }
                if !self.proof_holds(&challenge, &proof) {
                    self.close(format!("node {} failed authentication (shared secret?)", node.0));
                    return false;
                }
                self.peer_incarnation(incarnation);
                self.send(&Frame::Proof { proof: self.my_proof(&theirs), received: self.received });
                self.up(now, epoch, received);
                false
            }
            (&State::AwaitProof { challenge }, Frame::Proof { proof, received }) => {
                if !self.proof_holds(&challenge, &proof) {
                    self.close(format!("node {} failed authentication (shared secret?)", self.peer.0));
                    return false;
                }
                self.up(now, self.peer_epoch, received);
                false
            }
            (State::Up, Frame::Change { seq, stripe, key, version, hints, record }) => {
                if seq <= self.received {
                    self.stats.duplicates_ignored += 1;
                } else if seq == self.received + 1 {
                    self.received = seq;
                    self.stats.changes_delivered += 1;
                    let change = Change {
                        stripe: crate::stripe::StripeId(stripe),
                        key: CallKey::from(&key[..]),
                        version,
                        hints: Hints(hints),
                        bytes: record,
                    };
                    self.events.push_back(LinkEvent::Delivered(Replica { seq, change }));
                } else {
                    self.close(format!("change {seq} from node {} after {}: a gap", self.peer.0, self.received));
                    return false;
                }
                true
            }
            (State::Up, Frame::Ack { seq }) => {
                if seq > self.sent_upto {
                    self.close(format!("node {} acknowledged change {seq}, never sent", self.peer.0));
                    return false;
                }
                self.acknowledged(seq);
                self.pump();
                false
            }
            (State::Up, Frame::Heartbeat { sent_ms }) => {
                self.send(&Frame::Echo { sent_ms });
                false
            }
            (State::Up, Frame::Echo { .. }) => false,
            (State::Up, Frame::Lookup { id, stripe, key }) => {
                self.events.push_back(LinkEvent::Lookup { id, stripe: crate::stripe::StripeId(stripe), key });
                false
            }
            (State::Up, Frame::LookupReply { id, found }) => {
                let found = found.map(|(key, version, record)| Change {
                    stripe: crate::stripe::StripeId(0),
                    key: CallKey::from(&key[..]),
                    version,
                    hints: Hints::NONE,
                    bytes: record.into_vec(),
                });
                self.events.push_back(LinkEvent::LookupReply { id, found });
                false
            }
            (State::Up, Frame::View { map }) => {
                self.events.push_back(LinkEvent::View(map));
                false
            }
            (State::Up, Frame::Forward { from, tcp, message }) => {
                self.stats.forwards_received += 1;
                self.events.push_back(LinkEvent::Forwarded { from, tcp, message });
                false
            }
            (State::Up, Frame::Send { to, message }) => {
                self.stats.sends_received += 1;
                self.events.push_back(LinkEvent::Send { to, message });
                false
            }
            (state, frame) => {
                let why = format!("unexpected {} from node {} in state {state:?}", frame.name(), self.peer.0);
                self.close(why);
                false
            }
        }
    }

    fn up(&mut self, now: u64, epoch: u64, peer_received: u64) {
        if peer_received < self.acked {
            // The peer acknowledged more than it now has: it restarted (a new life numbers from
            // what it says). What waits is renumbered to follow on; what it had is gone with
            // its old life (a returning node gets a snapshot).
            let mut seq = peer_received;
            for (s, _) in self.queue.iter_mut() {
                seq += 1;
                *s = seq;
            }
            self.next_seq = seq + 1;
            self.acked = peer_received;
            self.ever_sent = peer_received;
            self.renumberings += 1;
        }
        self.state = State::Up;
        self.dead_reported = false;
        self.next_heartbeat = now + self.config.heartbeat_ms;
        // The peer has what it says it has: no need to send that again.
        let peer_received = peer_received.min(self.next_seq - 1);
        self.acknowledged(peer_received.max(self.acked));
        self.sent_upto = self.acked;
        let restarted = std::mem::take(&mut self.peer_restarted);
        self.events.push_back(LinkEvent::Up { epoch, restarted });
        self.pump();
    }

    fn acknowledged(&mut self, seq: u64) {
        while self.queue.front().is_some_and(|(s, _)| *s <= seq) {
            self.queue.pop_front();
        }
        if seq > self.acked {
            self.acked = seq;
            self.events.push_back(LinkEvent::Acked { seq });
        }
    }

    /// Sends queued changes the window allows.
    fn pump(&mut self) {
        if self.state != State::Up {
            return;
        }
        let window_end = self.acked + self.config.window as u64;
        let first = (self.sent_upto + 1).saturating_sub(self.queue.front().map_or(0, |(s, _)| *s)) as usize;
        for k in first..self.queue.len() {
            let (seq, change) = &self.queue[k];
            let seq = *seq;
            if seq > window_end {
                break;
            }
            let before = self.outbound.len();
            encode_change(seq, change, &mut self.outbound);
            let bytes = (self.outbound.len() - before) as u64;
            self.stats.bytes_out += bytes;
            self.stats.change_bytes_out += bytes;
            self.sent_upto = seq;
            self.stats.changes_sent += 1;
            if seq <= self.ever_sent {
                self.stats.changes_resent += 1;
            }
            self.ever_sent = self.ever_sent.max(seq);
        }
    }

    fn send(&mut self, frame: &Frame) {
        let before = self.outbound.len();
        encode(frame, &mut self.outbound);
        self.stats.bytes_out += (self.outbound.len() - before) as u64;
    }

    fn down(&mut self) {
        self.state = State::Down;
        self.inbound.clear();
        self.outbound.clear();
        self.sent_upto = self.acked;
    }

    fn close(&mut self, reason: String) {
        self.down();
        self.stats.closes += 1;
        self.events.push_back(LinkEvent::Closed { reason });
    }
}
