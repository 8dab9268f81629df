//! One shard: the sans-IO state machine a core runs (STYLE.md rule 1).
//!
//! Run loop (the only one, implemented by the driver in `src/` and by the
//! test `Cluster`): `shard.handle(now, input)`, then `shard.poll_output()`
//! until `None`, then sleep until `shard.poll_timeout()`.
//!
//! What `handle` does with a datagram: find its Call-ID with the parser's
//! fast scan, compute the stripe, and if another shard or node owns the
//! stripe, say so ([`Output::Forward`], [`Output::ForwardToNode`]: the driver
//! moves the buffer it still holds). The owner parses the message, matches it
//! to a server transaction (§17.2.3), checks the call's record out of the
//! table, runs the transaction and its user (the role), checks the record
//! back in, and only then emits the messages and arms the timers the change
//! caused. Timers are stored in the record as deadlines, so a replica or a
//! restarted node can re-arm them.

use core::time::Duration;
use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
pub use sipshard_parser::Message;
use sipshard_parser::{HeaderSlot, Method, ResponseSpec, peek_call_id, write_response};

use crate::stripe::{NodeId, Route, ShardId, StripeId, StripeMap};
use crate::table::{CallTable, Change, Hints, TableError};
use crate::timer::{TimerId, TimerWheel};
use crate::transaction::matching::{ServerKey, server_key, server_key_of_response};
use crate::transaction::{
    Action, Actions, ResponseClass, ServerEvent, ServerInvite, ServerNonInvite, TimerConfig, TxnTimer,
};

/// How a peer reached us.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// UDP: unreliable, retransmissions by the transaction layer.
    Udp,
    /// TCP: reliable; responses go back on the same connection (§18.2.2).
    Tcp,
}

/// The other end of a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The transport.
    pub transport: Transport,
}

/// Something for the shard to handle.
#[derive(Copy, Clone, Debug)]
pub enum Input<'a> {
    /// A datagram (or a framed stream message) received from a peer.
    Datagram {
        /// Who sent it.
        peer: Peer,
        /// The message.
        bytes: &'a [u8],
    },
    /// A message another shard of this node routed here (its stripe is ours).
    Forwarded {
        /// Who sent it originally.
        peer: Peer,
        /// The message.
        bytes: &'a [u8],
    },
    /// A message another node routed here.
    FromNode {
        /// The node that received it.
        node: NodeId,
        /// Who sent it originally.
        peer: Peer,
        /// The message.
        bytes: &'a [u8],
    },
    /// Time passed: fire due timers.
    Timeout,
    /// The driver could not send a message this shard emitted (§17.2.4: ICMP error,
    /// connection refused or reset); the transaction that sent it learns of it.
    TransportError {
        /// Where it was going.
        peer: Peer,
        /// The message that could not be sent.
        bytes: &'a [u8],
    },
}

/// Something for the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send bytes to a peer.
    Transmit {
        /// Destination.
        peer: Peer,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Move the input just handled, unchanged, to another shard of this node.
    Forward {
        /// The owning shard.
        shard: ShardId,
    },
    /// Move the input just handled, unchanged, to another node.
    ForwardToNode {
        /// The owning node.
        node: NodeId,
    },
    /// A change of the call tables, for replication (only when enabled).
    Replicate(Change),
}

/// The final response the transaction user (the role) gives a new request.
///
/// Always final: a server transaction the TU never answers would live
/// forever. Answering later (a proxy waiting for the callee) comes with the
/// roles, together with the timer that bounds the wait (Timer C, 408).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FinalResponse {
    /// Status code, 200-699 (anything else is answered as 500 and counted).
    pub code: u16,
    /// Reason phrase.
    pub reason: &'static str,
}

/// The transaction user: the role above the transaction layer.
pub trait TransactionUser {
    /// A request created a server transaction; the shard that runs it is `(node, shard)`.
    fn on_request(&mut self, node: NodeId, shard: ShardId, request: &Message<'_>) -> FinalResponse;
    /// A server transaction timed out (timer H) or its transport failed.
    fn on_failure(&mut self, _call_id: &[u8]) {}
}

/// A shard's configuration.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This node.
    pub node: NodeId,
    /// This shard.
    pub shard: ShardId,
    /// The initial stripe map.
    pub stripes: StripeMap,
    /// Most live call records (beyond: 503 with Retry-After).
    pub max_calls: usize,
    /// Most armed timers.
    pub max_timers: usize,
    /// T1, T2, T4.
    pub timers: TimerConfig,
    /// Seed of the per-shard generator of tags and branches.
    pub seed: u64,
    /// Whether table changes are emitted as [`Output::Replicate`].
    pub replicate: bool,
    /// Retry-After seconds on 503 when full.
    pub retry_after_s: u32,
}

impl ShardConfig {
    /// One node of one shard owning all 64 stripes, default timers, no replication:
    /// the shape of unit tests, fuzzing and the core benchmark.
    pub fn standalone(max_calls: usize) -> Self {
        ShardConfig {
            node: NodeId(0),
            shard: ShardId(0),
            stripes: StripeMap::balanced(1, 64, &[NodeId(0)], 1, 1),
            max_calls,
            max_timers: 8 * max_calls,
            timers: TimerConfig::default(),
            seed: 1,
            replicate: false,
            retry_after_s: 5,
        }
    }
}

/// Counters a shard keeps (no locks: the driver copies them out).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Messages handled here because this shard owns their stripe.
    pub local: u64,
    /// Messages moved to another shard of this node.
    pub forwarded_to_shard: u64,
    /// Messages moved to another node.
    pub forwarded_to_node: u64,
    /// Datagrams without a Call-ID, or that did not parse: dropped.
    pub dropped_malformed: u64,
    /// Responses with no transaction here (forwarding them is the proxy's job).
    pub stray_responses: u64,
    /// Server transactions created.
    pub transactions_created: u64,
    /// Server transactions ended.
    pub transactions_ended: u64,
    /// Transactions that timed out (timer H) or whose transport failed.
    pub transaction_failures: u64,
    /// Requests absorbed or answered as retransmissions.
    pub retransmissions_received: u64,
    /// Responses sent, retransmissions included.
    pub responses_sent: u64,
    /// New calls refused with 503 because the table was full.
    pub refused_full: u64,
    /// Non-final answers from the transaction user, replaced by 500.
    pub tu_errors: u64,
}

/// A server transaction as stored in its call's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTxn {
    /// Shard-unique id (names the transaction's timers in the wheel).
    pub id: u64,
    /// §17.2.3 key.
    pub key: ServerKey,
    /// State machine.
    pub fsm: ServerFsm,
    /// Where responses go.
    pub peer: Peer,
    /// The latest response, for retransmission.
    #[serde(with = "serde_bytes")]
    pub response: Vec<u8>,
    /// Armed timers and their deadlines (ms on the shard's clock).
    pub timers: TxnTimers,
}

/// A server transaction's armed timers: never more than two at once (G and H), so a
/// fixed array rather than a vector (one allocation less per transaction).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnTimers([Option<(TxnTimer, u64)>; 3]);

impl TxnTimers {
    /// Arms (or re-arms) `timer` for `deadline_ms`.
    pub fn set(&mut self, timer: TxnTimer, deadline_ms: u64) {
        self.clear(timer);
        let slot =
            self.0.iter_mut().find(|s| s.is_none()).expect("invariant: a server transaction arms at most 3 timers");
        *slot = Some((timer, deadline_ms));
    }

    /// Forgets `timer`.
    pub fn clear(&mut self, timer: TxnTimer) {
        for slot in &mut self.0 {
            if slot.is_some_and(|(t, _)| t == timer) {
                *slot = None;
            }
        }
    }

    /// The armed timers and their deadlines.
    pub fn iter(&self) -> impl Iterator<Item = (TxnTimer, u64)> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// The state machine of a server transaction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFsm {
    /// Figure 7.
    Invite(ServerInvite),
    /// Figure 8.
    NonInvite(ServerNonInvite),
}

impl ServerFsm {
    fn on(&mut self, event: ServerEvent, cfg: &TimerConfig) -> Actions {
        match self {
            ServerFsm::Invite(fsm) => fsm.on(event, cfg),
            ServerFsm::NonInvite(fsm) => fsm.on(event, cfg),
        }
    }
}

/// The record of one call (all state of a Call-ID lives in its stripe).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Live server transactions.
    pub transactions: Vec<ServerTxn>,
}

/// Most transactions one call record holds (a call has few at a time).
pub const MAX_TXNS_PER_CALL: usize = 16;

/// Outputs one `handle` can queue before the driver must drain them.
const MAX_OUTPUTS: usize = 1_024;

/// One shard.
pub struct Shard<T> {
    config: ShardConfig,
    stripes: StripeMap,
    table: CallTable<CallRecord>,
    wheel: TimerWheel<(u64, TxnTimer)>,
    /// Timers armed in the wheel, by (transaction id, timer).
    armed: hashbrown::HashMap<(u64, TxnTimer), TimerId>,
    /// Which call each live transaction belongs to.
    txn_calls: hashbrown::HashMap<u64, (StripeId, Box<[u8]>)>,
    outputs: std::collections::VecDeque<Output>,
    /// Header slots, reused by every message (they hold offsets, not borrows).
    slots: Box<[HeaderSlot]>,
    /// Scratch lists of one input's effects, taken and put back so inputs do not allocate them.
    scratch_sends: Vec<(Peer, Vec<u8>)>,
    scratch_timer_ops: Vec<TimerOp>,
    epoch: Instant,
    next_txn: u64,
    rng: u64,
    stats: ShardStats,
    tu: T,
}

impl<T: TransactionUser> Shard<T> {
    /// A shard starting at `now`.
    pub fn new(config: ShardConfig, tu: T, now: Instant) -> Self {
        let mut table = CallTable::new(config.max_calls);
        table.set_feed(config.replicate);
        Shard {
            stripes: config.stripes.clone(),
            table,
            slots: vec![HeaderSlot::EMPTY; Message::SLOTS].into_boxed_slice(),
            scratch_sends: Vec::new(),
            scratch_timer_ops: Vec::new(),
            wheel: TimerWheel::new(config.max_timers, 0),
            armed: hashbrown::HashMap::new(),
            txn_calls: hashbrown::HashMap::new(),
            outputs: std::collections::VecDeque::new(),
            epoch: now,
            next_txn: 1,
            rng: config.seed | 1,
            stats: ShardStats::default(),
            tu,
            config,
        }
    }

    /// The counters.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// The transaction user.
    pub fn tu(&self) -> &T {
        &self.tu
    }

    /// Live call records.
    pub fn calls(&self) -> usize {
        self.table.len()
    }

    /// Armed timers.
    pub fn armed_timers(&self) -> usize {
        self.wheel.len()
    }

    /// Live server transactions.
    pub fn transactions(&self) -> usize {
        self.txn_calls.len()
    }

    /// The stripe map in force.
    pub fn stripe_map(&self) -> &StripeMap {
        &self.stripes
    }

    /// Installs a newer stripe map (stale ones are ignored).
    pub fn update_stripes(&mut self, map: StripeMap) -> bool {
        self.stripes.update(map)
    }

    /// The next output, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call `handle(_, Input::Timeout)` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.next_deadline_ms().map(|ms| self.epoch + Duration::from_millis(ms))
    }

    /// A fresh token for tags and branches, from the seeded per-shard generator.
    pub fn next_token(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, so tests replay exactly.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Handles one input; then drain [`Self::poll_output`].
    pub fn handle(&mut self, now: Instant, input: Input<'_>) {
        assert!(self.outputs.len() < MAX_OUTPUTS, "invariant: the driver drains outputs after every input");
        let now_ms = self.now_ms(now);
        match input {
            Input::Timeout => self.fire_timers(now_ms),
            Input::Datagram { peer, bytes } => self.receive(now_ms, peer, bytes, true),
            Input::Forwarded { peer, bytes } | Input::FromNode { peer, bytes, .. } => {
                self.receive(now_ms, peer, bytes, false)
            }
            Input::TransportError { bytes, .. } => self.transport_error(now_ms, bytes),
        }
        while let Some(change) = self.table.poll_change() {
            if self.config.replicate {
                self.outputs.push_back(Output::Replicate(change));
            }
        }
    }

    fn receive(&mut self, now_ms: u64, peer: Peer, bytes: &[u8], may_forward: bool) {
        let Some(call_id) = peek_call_id(bytes) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let stripe = StripeId::of_call_id(call_id, self.stripes.stripe_count());
        match self.stripes.route(stripe, self.config.node, self.config.shard) {
            Route::Local => {}
            // A message routed here by a peer with an older map is processed anyway: the
            // sender believed we own it, and bouncing it could loop until the maps agree.
            _ if !may_forward => {}
            Route::Shard(shard) => {
                self.stats.forwarded_to_shard += 1;
                self.outputs.push_back(Output::Forward { shard });
                return;
            }
            Route::Node(node) => {
                self.stats.forwarded_to_node += 1;
                self.outputs.push_back(Output::ForwardToNode { node });
                return;
            }
        }
        self.stats.local += 1;
        // Borrow the slots out of self while the message lives (taking an empty box allocates nothing).
        let mut slots = std::mem::take(&mut self.slots);
        match sipshard_parser::parse(bytes, &mut slots) {
            Err(_) => self.stats.dropped_malformed += 1,
            Ok(msg) if !msg.is_request() => self.stats.stray_responses += 1,
            Ok(msg) => match server_key(&msg) {
                Ok(key) => self.on_request(now_ms, stripe, call_id, peer, &msg, key),
                Err(_) => self.stats.dropped_malformed += 1,
            },
        }
        self.slots = slots;
    }

    /// A To tag from the per-shard generator, as 16 hex digits in a stack buffer.
    fn tag(&mut self) -> [u8; 16] {
        let token = self.next_token();
        let mut tag = [0u8; 16];
        for (i, digit) in tag.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((token >> (60 - 4 * i)) & 0xf) as usize];
        }
        tag
    }

    fn on_request(
        &mut self,
        now_ms: u64,
        stripe: StripeId,
        call_id: &[u8],
        peer: Peer,
        msg: &Message<'_>,
        key: ServerKey,
    ) {
        let is_ack = msg.method() == Some(Method::Ack);
        let mut record = match self.table.get_and_lock(stripe, call_id, !is_ack) {
            Ok(checkout) => checkout.record.unwrap_or_default(),
            // An ACK for a call we hold nothing of: for a 2xx it is the TU's business (§17.1.1.3).
            Err(TableError::NotFound) => return,
            Err(TableError::Full) => {
                self.stats.refused_full += 1;
                self.respond_stateless(msg, peer, 503, "Service Unavailable");
                return;
            }
            Err(e) => panic!("invariant: a shard never holds a checkout across inputs ({e:?})"),
        };
        let mut sends = std::mem::take(&mut self.scratch_sends);
        let mut timer_ops = std::mem::take(&mut self.scratch_timer_ops);
        let existing = record.transactions.iter().position(|t| t.key == key);
        match existing {
            Some(i) => {
                self.stats.retransmissions_received += u64::from(!is_ack);
                let event = if is_ack { ServerEvent::Ack } else { ServerEvent::Request };
                let actions = record.transactions[i].fsm.on(event, &self.config.timers);
                self.apply(now_ms, &mut record, i, call_id, actions, &mut sends, &mut timer_ops);
            }
            None if is_ack => {
                // An ACK for a 2xx (its own transaction, §17.1.1.3): the TU's business. The record
                // exists (the ACK created nothing), so it goes back unchanged.
                self.table.unlock(stripe, call_id, Some(record)).expect("invariant: checked out above");
                self.scratch_sends = sends;
                self.scratch_timer_ops = timer_ops;
                return;
            }
            None if record.transactions.len() >= MAX_TXNS_PER_CALL => {
                // Nothing changed: the record goes back without a new version or change.
                self.table.unlock(stripe, call_id, Some(record)).expect("invariant: checked out above");
                self.scratch_sends = sends;
                self.scratch_timer_ops = timer_ops;
                self.respond_stateless(msg, peer, 503, "Service Unavailable");
                return;
            }
            None => {
                let id = self.next_txn;
                self.next_txn += 1;
                let reliable = peer.transport == Transport::Tcp;
                let fsm = if msg.method() == Some(Method::Invite) {
                    ServerFsm::Invite(ServerInvite::new(reliable, &self.config.timers))
                } else {
                    ServerFsm::NonInvite(ServerNonInvite::new(reliable))
                };
                // Most calls hold one transaction at a time: grow by one, not by Vec's default four.
                record.transactions.reserve_exact(1);
                record.transactions.push(ServerTxn {
                    id,
                    key,
                    fsm,
                    peer,
                    response: Vec::new(),
                    timers: TxnTimers::default(),
                });
                self.txn_calls.insert(id, (stripe, call_id.into()));
                self.stats.transactions_created += 1;
                let i = record.transactions.len() - 1;
                let mut answer = self.tu.on_request(self.config.node, self.config.shard, msg);
                if !(200..=699).contains(&answer.code) {
                    self.stats.tu_errors += 1;
                    answer = FinalResponse { code: 500, reason: "Server Internal Error" };
                }
                let tag = self.tag();
                let tag = core::str::from_utf8(&tag).expect("invariant: hex digits");
                let spec = ResponseSpec {
                    code: answer.code,
                    reason: answer.reason,
                    to_tag: Some(tag),
                    headers: &[],
                    body: b"",
                };
                let mut out = vec![0u8; msg.len() + 256];
                match write_response(msg, &spec, &mut out) {
                    Ok(n) => {
                        out.truncate(n);
                        record.transactions[i].response = out;
                        let event = ServerEvent::TuResponse(ResponseClass::of(answer.code));
                        let actions = record.transactions[i].fsm.on(event, &self.config.timers);
                        self.apply(now_ms, &mut record, i, call_id, actions, &mut sends, &mut timer_ops);
                    }
                    Err(_) => {
                        // The request parsed but its response cannot be written: end the transaction.
                        self.stats.dropped_malformed += 1;
                        let txn = record.transactions.swap_remove(i);
                        self.txn_calls.remove(&txn.id);
                        self.stats.transactions_ended += 1;
                    }
                }
            }
        }
        self.finish(stripe, call_id, record, sends, timer_ops);
    }

    /// Carries out a transition's actions on the record; sends and timer changes are
    /// collected, to happen after the check-in.
    #[allow(clippy::too_many_arguments)] // The pieces of one transition; a struct would only rename them.
    fn apply(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        i: usize,
        call_id: &[u8],
        actions: Actions,
        sends: &mut Vec<(Peer, Vec<u8>)>,
        timer_ops: &mut Vec<TimerOp>,
    ) {
        let txn = &mut record.transactions[i];
        let mut ended = false;
        for action in actions.iter() {
            match action {
                Action::SendResponse => sends.push((txn.peer, txn.response.clone())),
                Action::Arm(timer, after) => {
                    let deadline = now_ms + after.as_millis() as u64;
                    txn.timers.set(timer, deadline);
                    timer_ops.push(TimerOp::Arm(txn.id, timer, deadline));
                }
                Action::Cancel(timer) => {
                    txn.timers.clear(timer);
                    timer_ops.push(TimerOp::Cancel(txn.id, timer));
                }
                Action::Timeout(_) | Action::TransportError => {
                    self.stats.transaction_failures += 1;
                    self.tu.on_failure(call_id);
                }
                Action::Terminated => ended = true,
                // Server transactions never send requests or ACKs, and pass nothing up after creation.
                Action::SendRequest | Action::SendAck | Action::PassToTu => {}
            }
        }
        if ended {
            let txn = record.transactions.swap_remove(i);
            for (timer, _) in txn.timers.iter() {
                timer_ops.push(TimerOp::Cancel(txn.id, timer));
            }
            self.txn_calls.remove(&txn.id);
            self.stats.transactions_ended += 1;
        }
    }

    /// Check-in first, then the messages and timers the change caused (DESIGN.md §3 step 6).
    fn finish(
        &mut self,
        stripe: StripeId,
        call_id: &[u8],
        record: CallRecord,
        mut sends: Vec<(Peer, Vec<u8>)>,
        mut timer_ops: Vec<TimerOp>,
    ) {
        self.check_in(stripe, call_id, record, Hints::NONE);
        for (peer, bytes) in sends.drain(..) {
            self.stats.responses_sent += 1;
            self.outputs.push_back(Output::Transmit { peer, bytes });
        }
        for op in timer_ops.drain(..) {
            match op {
                TimerOp::Arm(id, timer, deadline) => {
                    let handle =
                        self.wheel.arm(deadline, (id, timer)).expect("invariant: max_timers sized for max_calls");
                    if let Some(old) = self.armed.insert((id, timer), handle) {
                        self.wheel.cancel(old);
                    }
                }
                TimerOp::Cancel(id, timer) => {
                    if let Some(handle) = self.armed.remove(&(id, timer)) {
                        self.wheel.cancel(handle);
                    }
                }
            }
        }
        self.scratch_sends = sends;
        self.scratch_timer_ops = timer_ops;
    }

    fn check_in(&mut self, stripe: StripeId, call_id: &[u8], record: CallRecord, hints: Hints) {
        if record.transactions.is_empty() {
            self.table.remove(stripe, call_id, hints | Hints::CALL_ENDED);
        } else {
            self.table.put_and_unlock(stripe, call_id, record, hints).expect("invariant: checked out by this input");
        }
    }

    /// Checks out the record of a call that should exist; `None` if it is gone.
    fn checkout_existing(&mut self, stripe: StripeId, call_id: &[u8]) -> Option<CallRecord> {
        match self.table.get_and_lock(stripe, call_id, false) {
            Ok(checkout) => Some(checkout.record.expect("invariant: a stored record is never empty")),
            Err(TableError::NotFound) => None,
            Err(e) => panic!("invariant: a shard never holds a checkout across inputs ({e:?})"),
        }
    }

    /// Feeds a failed send to the server transaction that made it.
    fn transport_error(&mut self, now_ms: u64, bytes: &[u8]) {
        let Some(call_id) = peek_call_id(bytes) else { return };
        let stripe = StripeId::of_call_id(call_id, self.stripes.stripe_count());
        let mut slots = std::mem::take(&mut self.slots);
        let key = sipshard_parser::parse(bytes, &mut slots).ok().and_then(|m| server_key_of_response(&m).ok());
        self.slots = slots;
        let Some(key) = key else { return };
        let Some(mut record) = self.checkout_existing(stripe, call_id) else { return };
        let mut sends = std::mem::take(&mut self.scratch_sends);
        let mut timer_ops = std::mem::take(&mut self.scratch_timer_ops);
        if let Some(i) = record.transactions.iter().position(|t| t.key == key) {
            let actions = record.transactions[i].fsm.on(ServerEvent::TransportError, &self.config.timers);
            self.apply(now_ms, &mut record, i, call_id, actions, &mut sends, &mut timer_ops);
        }
        self.finish(stripe, call_id, record, sends, timer_ops);
    }

    fn fire_timers(&mut self, now_ms: u64) {
        while let Some((_, (id, timer))) = self.wheel.poll_expired(now_ms) {
            self.armed.remove(&(id, timer));
            // Take the call's key out rather than clone it; it goes back if the transaction lives on.
            let Some((stripe, call_id)) = self.txn_calls.remove(&id) else { continue };
            let Some(mut record) = self.checkout_existing(stripe, &call_id) else { continue };
            let mut sends = std::mem::take(&mut self.scratch_sends);
            let mut timer_ops = std::mem::take(&mut self.scratch_timer_ops);
            if let Some(i) = record.transactions.iter().position(|t| t.id == id) {
                record.transactions[i].timers.clear(timer);
                let actions = record.transactions[i].fsm.on(ServerEvent::Timer(timer), &self.config.timers);
                if !actions.contains(Action::Terminated) {
                    self.txn_calls.insert(id, (stripe, call_id.clone()));
                }
                self.apply(now_ms, &mut record, i, &call_id, actions, &mut sends, &mut timer_ops);
            }
            self.finish(stripe, &call_id, record, sends, timer_ops);
        }
    }

    fn respond_stateless(&mut self, msg: &Message<'_>, peer: Peer, code: u16, reason: &'static str) {
        if msg.method() == Some(Method::Ack) {
            return;
        }
        let retry_after = self.config.retry_after_s.to_string();
        let headers: [(&str, &[u8]); 1] = [("Retry-After", retry_after.as_bytes())];
        let tag = self.tag();
        let tag = core::str::from_utf8(&tag).expect("invariant: hex digits");
        let spec = ResponseSpec { code, reason, to_tag: Some(tag), headers: &headers, body: b"" };
        let mut out = vec![0u8; msg.len() + 256];
        if let Ok(n) = write_response(msg, &spec, &mut out) {
            out.truncate(n);
            self.stats.responses_sent += 1;
            self.outputs.push_back(Output::Transmit { peer, bytes: out });
        }
    }
}

#[derive(Copy, Clone, Debug)]
enum TimerOp {
    Arm(u64, TxnTimer, u64),
    Cancel(u64, TxnTimer),
}
