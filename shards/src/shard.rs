//! One shard: the sans-IO state machine a core runs (STYLE.md rule 1).
//!
//! Run loop (the only one, implemented by the driver in `src/` and by the
//! test `Cluster`): `shard.handle(now, input)`, then `shard.poll_output()`
//! until `None`, then sleep until `shard.poll_timeout()`.
//!
//! What `handle` does with a datagram: parse it, take its Call-ID (a REGISTER
//! for this registrar: its AoR; a B2BUA's B leg: the A stripe its Call-ID
//! carries), compute the stripe, and if another shard or node owns the stripe,
//! say so ([`Output::Forward`], [`Output::ForwardToNode`]: the driver moves the
//! buffer it still holds). The owner handles the parse it made (nearly every
//! message stays where it lands when shards have their own ports), checks the
//! call's record out of the table, and then:
//!
//! - a request matches a server transaction (§17.2.3) or makes one, and the
//!   transaction user (the role) answers it ([`Decision::Respond`]), relays it
//!   under a client transaction ([`Decision::Relay`], §16.6), or bridges it onto
//!   a B leg ([`Decision::Bridge`]); CANCEL, in-dialog requests of a B2BUA call
//!   and REGISTERs for the registrar are handled here without asking;
//! - a response matches a client transaction (§17.1.3) and goes up through its
//!   server transaction (§16.7), or, matching none, statelessly by Via (§16.11).
//!
//! Then the record is checked back in, and only then are the messages sent and
//! the timers armed. Timers (transaction and call timers) are stored in the
//! record as deadlines, so a replica or a restarted node can re-arm them; each
//! wheel entry names its call (stripe and key), so a timer that fires finds its
//! record with no index of transactions.

use core::time::Duration;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
pub use sipshard_parser::Message;
use sipshard_parser::{Editor, HeaderName, HeaderSlot, Method, ResponseSpec, peek_call_id, write_response};

use crate::b2bua::{LegRequest, Side, b_leg_call_id, without_tag, write_leg_request};
use crate::dialog::{B2buaCall, CallTimer, Dialog, DialogState};
use crate::registrar::{self, Binding, LocationUpdate, RegistrarConfig};

use crate::stripe::{NodeId, Route, ShardId, StripeId, StripeMap};
use crate::table::{CallKey, CallTable, Change, Checkout, Hints, TableError, codec};
use crate::timer::{TimerId, TimerWheel};
use crate::transaction::matching::{ServerKey, server_key, server_key_of_response};
use crate::transaction::{
    Action, Actions, ClientEvent, ClientInvite, ClientInviteState, ClientNonInvite, ClientNonInviteState,
    ResponseClass, ServerEvent, ServerInvite, ServerInviteState, ServerNonInvite, TimerConfig, TxnTimer,
};

/// A message as written once and then shared: a transaction keeps it for retransmission
/// and the output that sends it holds the same bytes (no copy per send). Empty holds nothing:
/// `Arc<[u8]>`'s own empty value is one process-wide allocation whose count every new
/// transaction on every shard would increment and decrement (four atomic operations per
/// transaction on one cache line all cores share).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SharedBytes(Option<std::sync::Arc<[u8]>>);

impl core::ops::Deref for SharedBytes {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl From<&[u8]> for SharedBytes {
    fn from(bytes: &[u8]) -> Self {
        SharedBytes((!bytes.is_empty()).then(|| bytes.into()))
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SharedBytes((!bytes.is_empty()).then(|| bytes.into()))
    }
}

impl core::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// Serde for [`SharedBytes`]: the encoding `serde_bytes` gives a `Vec<u8>`, so a record's
/// wire form does not depend on how the shard holds the bytes.
mod shared_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SharedBytes;

    pub(super) fn serialize<S: Serializer>(bytes: &SharedBytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SharedBytes, D::Error> {
        // An empty one allocates nothing (most kept responses and requests are empty).
        Ok(serde_bytes::ByteBuf::deserialize(deserializer)?.into_vec().into())
    }
}

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
    /// Another shard of this node changed an AoR's bindings (the registrar owns the AoR's stripe).
    Location(&'a LocationUpdate),
    /// A change of a record whose stripe another node owns, from that node's replica link:
    /// kept dormant here (timers stored, not armed) until a view makes this shard the owner.
    Replica(&'a Change),
    /// A new view of the cluster (a node died or came back): stripes this shard now owns are
    /// activated (their records' timers armed, their messages processed here).
    View(&'a StripeMap),
    /// The answer to an [`Output::Lookup`]: the newest copy the peers had, if any. The record
    /// becomes live here and the parked requests are handled (with a 481 when none had it).
    LookupDone {
        /// The stripe asked about.
        stripe: StripeId,
        /// The key asked about (as in the Lookup).
        key: &'a [u8],
        /// The copy found (its key may differ: a B leg's Call-ID finds its call's record).
        found: Option<&'a Change>,
    },
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
        bytes: SharedBytes,
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
        /// The shard of that node that owns the stripe (the same number on every node, so
        /// the replica link of this shard number carries it).
        shard: ShardId,
    },
    /// A change of the call tables, for replication (only when enabled).
    Replicate(Change),
    /// An AoR's bindings changed here: give it to every other shard of the node as
    /// [`Input::Location`] (this shard's own transaction user has it already).
    Location(LocationUpdate),
    /// Ask the other nodes for a copy of a record this shard owns but does not hold (an
    /// in-dialog request for it is parked); answer with [`Input::LookupDone`].
    Lookup {
        /// The record's stripe.
        stripe: StripeId,
        /// Its key (a Call-ID, or a B2BUA's B-leg Call-ID).
        key: Box<[u8]>,
    },
}

/// A final response the transaction user (the role) gives a request.
///
/// Always final: a server transaction the TU never answers would live
/// forever. A role that waits for someone else relays instead ([`Relay`]), and
/// the client transaction bounds the wait (timers B and F become a 408).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalResponse {
    /// Status code, 200-699 (anything else is answered as 500 and counted).
    pub code: u16,
    /// Reason phrase (a 400 names the broken rule in it).
    pub reason: Cow<'static, str>,
    /// Extra headers (Allow, Supported, Retry-After, Min-Expires, Contact, Unsupported, ...).
    pub headers: Vec<(&'static str, String)>,
}

impl FinalResponse {
    /// A response with a fixed reason phrase and no extra header.
    pub fn new(code: u16, reason: &'static str) -> Self {
        FinalResponse { code, reason: Cow::Borrowed(reason), headers: Vec::new() }
    }

    /// The same with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Where and how the role relays a request (RFC 3261 §16.6): the shard pushes its
/// Via with a fresh branch, decrements Max-Forwards, applies these edits, and runs
/// a client transaction toward `to` (an ACK for a 2xx goes statelessly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// The next hop.
    pub to: Peer,
    /// A new Request-URI (a registered Contact), or `None` to keep it.
    pub request_uri: Option<Box<str>>,
    /// Remove the top Route value (it named this proxy, §16.4).
    pub pop_route: bool,
    /// Add this proxy's Record-Route (dialog-creating requests, §16.6 step 4).
    pub record_route: bool,
}

/// What the transaction user does with a new request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer it here.
    Respond(FinalResponse),
    /// Relay it downstream statefully.
    Relay(Relay),
    /// Bridge it as a B2BUA (an INVITE out of dialog): a new B leg toward `to`, with a
    /// fresh Call-ID, tags and Via; the call's record holds both dialogs ([`crate::b2bua`]).
    Bridge(Relay),
}

impl From<FinalResponse> for Decision {
    fn from(response: FinalResponse) -> Self {
        Decision::Respond(response)
    }
}

/// What the shard knows of a request when it asks the transaction user.
#[derive(Copy, Clone, Debug)]
pub struct RequestContext {
    /// This node.
    pub node: NodeId,
    /// This shard.
    pub shard: ShardId,
    /// The shard's clock (ms).
    pub now_ms: u64,
    /// Who sent the request.
    pub peer: Peer,
    /// This server's SIP address (its Via sent-by and Record-Route).
    pub local: SocketAddr,
    /// The shards' own UDP ports, which also name this server.
    pub shard_ports: Option<ShardPorts>,
    /// The call's dialog as this shard tracks it (`None`: no dialog, or the call is new here).
    pub dialog: Option<DialogState>,
}

/// The transaction user: the role above the transaction layer (proxy, B2BUA, registrar).
pub trait TransactionUser {
    /// A request created a server transaction: answer it or relay it.
    fn on_request(&mut self, ctx: &RequestContext, request: &Message<'_>) -> Decision;
    /// An ACK that matches no transaction here (the ACK of a 2xx, §13.2.2.4): where to
    /// relay it end to end, if anywhere.
    fn on_ack(&mut self, _ctx: &RequestContext, _request: &Message<'_>) -> Option<Relay> {
        None
    }
    /// A transaction timed out (timers B, F, H) or its transport failed.
    fn on_failure(&mut self, _call_id: &[u8]) {}
    /// An AoR's bindings changed (here or on another shard): update the location cache.
    fn on_location(&mut self, _update: &LocationUpdate) {}
}

/// A shard's configuration.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This node.
    pub node: NodeId,
    /// This shard.
    pub shard: ShardId,
    /// This server's SIP address: the sent-by of its Via and the host of its Record-Route.
    pub local: SocketAddr,
    /// The shards' own UDP ports at `local`'s IP, when configured ([`ShardPorts`]).
    pub shard_ports: Option<ShardPorts>,
    /// The initial stripe map.
    pub stripes: StripeMap,
    /// Most calls at once (beyond: 503 with Retry-After); ended calls lingering for their
    /// transactions' timers do not count, records in all stop at 4x ([`crate::table`]).
    pub max_calls: usize,
    /// Most armed timers ([`timers_for`] of `max_calls`).
    pub max_timers: usize,
    /// T1, T2, T4.
    pub timers: TimerConfig,
    /// Seed of the per-shard generator of tags and branches.
    pub seed: u64,
    /// Whether table changes are emitted as [`Output::Replicate`].
    pub replicate: bool,
    /// Retry-After seconds on 503 when full.
    pub retry_after_s: u32,
    /// The registrar, when this server is one: REGISTERs addressed to it are answered here.
    pub registrar: Option<RegistrarConfig>,
    /// Largest request handled; a larger one gets 513 Message Too Large.
    pub max_message_bytes: usize,
    /// A relayed or bridged INVITE with no final response by then is CANCELled and answered
    /// 408 (a proxy's Timer C, §16.8, which must exceed 3 minutes; a B2BUA's no-answer timer).
    pub no_answer: Duration,
    /// A call up this long is ended: a B2BUA sends BYE on both legs, a proxy forgets the
    /// dialog (later in-dialog requests get 481).
    pub max_call_duration: Duration,
    /// In a cluster: an in-dialog request for a call this shard holds nothing of is parked
    /// and the stripe's other copies are asked for it ([`Output::Lookup`]) before a 481.
    pub lookup_before_481: bool,
}

impl ShardConfig {
    /// One node of one shard owning all 64 stripes at 127.0.0.1:5060, default timers, no
    /// replication: the shape of unit tests, fuzzing and the core benchmark.
    pub fn standalone(max_calls: usize) -> Self {
        ShardConfig {
            node: NodeId(0),
            shard: ShardId(0),
            local: SocketAddr::from(([127, 0, 0, 1], 5060)),
            shard_ports: None,
            stripes: StripeMap::balanced(1, 64, &[NodeId(0)], 1, 1),
            max_calls,
            max_timers: timers_for(max_calls),
            timers: TimerConfig::default(),
            seed: 1,
            replicate: false,
            retry_after_s: 5,
            registrar: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            no_answer: DEFAULT_NO_ANSWER,
            max_call_duration: DEFAULT_MAX_CALL_DURATION,
            lookup_before_481: false,
        }
    }
}

/// Default of [`ShardConfig::no_answer`]: Timer C's 3 minutes, and a little more.
pub const DEFAULT_NO_ANSWER: Duration = Duration::from_secs(181);

/// Default of [`ShardConfig::max_call_duration`].
pub const DEFAULT_MAX_CALL_DURATION: Duration = Duration::from_secs(4 * 3600);

/// The shards' own UDP ports (`server.shard_ports`): shard k also listens on `first + k` at the
/// node's address and names that port in the Via and Record-Route (and a B2BUA's Contact) it
/// writes toward UDP peers, so responses and in-dialog requests come back to the shard that owns
/// the call instead of to whichever shard the kernel picks for the shared port.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ShardPorts {
    /// Shard 0's port.
    pub first: u16,
    /// How many shards (ports) there are.
    pub count: u16,
}

impl ShardPorts {
    /// Shard `shard`'s own port, if it has one.
    pub fn port_of(&self, shard: ShardId) -> Option<u16> {
        (shard.0 < self.count).then(|| self.first.checked_add(shard.0)).flatten()
    }

    /// Whether `port` is one of the shards' own ports.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.first && u32::from(port) < u32::from(self.first) + u32::from(self.count)
    }
}

/// Default of [`ShardConfig::max_message_bytes`]: generous for SDP, far below a UDP datagram's maximum.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024;

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
    /// Keep-alive datagrams (CRLFs, empty, NUL: what phones behind a NAT send to keep their
    /// binding open): dropped, not counted as malformed.
    pub keepalives_received: u64,
    /// Responses that matched no client transaction and could not be relayed by their Via.
    pub stray_responses: u64,
    /// Replica records installed or updated (dormant).
    pub replicas_installed: u64,
    /// Replica records removed (the call ended on its owner).
    pub replicas_removed: u64,
    /// Replica changes refused (older than what is held, undecodable, or the table full).
    pub replicas_refused: u64,
    /// Copies from another owner of a stripe this shard owns (a partition healing, a frozen
    /// node waking) that were newer than this shard's, or of calls it did not know: taken.
    pub replicas_merged: u64,
    /// Stripes this shard took over (from a dead node, or handed back to it).
    pub stripes_taken_over: u64,
    /// Records activated when their stripe was taken over.
    pub records_activated: u64,
    /// Stripes this shard handed back to a returning node.
    pub stripes_handed_over: u64,
    /// Records made dormant when their stripe was handed back.
    pub records_deactivated: u64,
    /// Lookups asked (an in-dialog request for a call held nowhere here).
    pub lookups: u64,
    /// Lookups a peer answered with a copy.
    pub lookups_found: u64,
    /// Responses relayed statelessly by their Via (§16.11: no transaction matched).
    pub responses_relayed_stateless: u64,
    /// Server transactions created.
    pub transactions_created: u64,
    /// Server transactions ended.
    pub transactions_ended: u64,
    /// Client transactions created (requests relayed downstream).
    pub client_transactions_created: u64,
    /// Client transactions ended.
    pub client_transactions_ended: u64,
    /// Transactions that timed out (timers B, F, H) or whose transport failed.
    pub transaction_failures: u64,
    /// Requests absorbed or answered as retransmissions.
    pub retransmissions_received: u64,
    /// Responses sent, retransmissions included.
    pub responses_sent: u64,
    /// Requests sent downstream (relayed requests, their retransmissions, CANCELs, ACKs).
    pub requests_sent: u64,
    /// ACKs of 2xx relayed end to end.
    pub acks_relayed: u64,
    /// New calls refused with 503 because the table was full.
    pub refused_full: u64,
    /// New calls refused with 503 because the shard is shutting down.
    pub refused_draining: u64,
    /// Requests refused with 513 because they exceed the configured message size.
    pub refused_too_large: u64,
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
    #[serde(with = "shared_bytes")]
    pub response: SharedBytes,
    /// Whether a final response was sent (a late client timeout must not add a second one).
    pub answered: bool,
    /// The request, kept only on a B2BUA call: its responses are rebuilt from it.
    #[serde(with = "shared_bytes")]
    pub request: SharedBytes,
    /// Armed timers and their deadlines (ms on the shard's clock).
    pub timers: TxnTimers,
}

/// A client transaction (a request this shard relayed downstream), stored in its call's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTxn {
    /// Shard-unique id (same space as server transactions).
    pub id: u64,
    /// The server transaction it relays for (its responses go up through it).
    pub server: u64,
    /// The branch of this shard's Via on the request (§17.1.3).
    pub branch: Box<str>,
    /// Whether it is a CANCEL (which shares its INVITE's branch).
    pub cancel: bool,
    /// State machine.
    pub fsm: ClientFsm,
    /// The next hop.
    pub peer: Peer,
    /// The request as sent, for retransmission and to build its CANCEL or ACK.
    #[serde(with = "shared_bytes")]
    pub request: SharedBytes,
    /// Armed timers and their deadlines (ms on the shard's clock).
    pub timers: TxnTimers,
}

/// A transaction's armed timers: never more than two at once (G and H), so a
/// fixed array rather than a vector (one allocation less per transaction). On the
/// shard that runs the transaction each also keeps its wheel handle, so arming and
/// cancelling need no index of their own; the handles are not part of the record (a
/// copy on another node arms its own) and take no part in comparisons.
#[derive(Copy, Clone, Debug, Default, Serialize, Deserialize)]
pub struct TxnTimers {
    armed: [Option<(TxnTimer, u64)>; 3],
    #[serde(skip)]
    handles: [Option<TimerId>; 3],
}

impl PartialEq for TxnTimers {
    fn eq(&self, other: &Self) -> bool {
        self.armed == other.armed
    }
}

impl Eq for TxnTimers {}

/// The shard's timer wheel: each entry names a transaction (or a call's timers), the timer and
/// the call, so a timer that fires finds its record with no index of transactions.
type Wheel = TimerWheel<TimerKey>;

/// The call whose record an input has checked out: its stripe and its key as the table stores it
/// (a clone copies at most the inline bytes, or counts a shared key: never allocates).
#[derive(Clone, Debug)]
struct CallRef {
    stripe: StripeId,
    key: CallKey,
}

/// What a wheel entry names.
#[derive(Clone, Debug)]
struct TimerKey {
    /// The transaction's id (or the call's timer id, for a call timer).
    id: u64,
    timer: WheelTimer,
    call: CallRef,
}

impl TxnTimers {
    /// Records `timer` for `deadline_ms` in a record no wheel holds (one being built, a dormant copy).
    pub fn set(&mut self, timer: TxnTimer, deadline_ms: u64) {
        let old = self.clear(timer);
        debug_assert!(old.is_none(), "invariant: set() is for timers no wheel holds");
        let i = self.free_slot();
        self.armed[i] = Some((timer, deadline_ms));
    }

    /// Forgets `timer`; returns its wheel handle, if it had one.
    pub fn clear(&mut self, timer: TxnTimer) -> Option<TimerId> {
        let i = self.armed.iter().position(|s| s.is_some_and(|(t, _)| t == timer))?;
        self.armed[i] = None;
        self.handles[i].take()
    }

    /// A free slot (the callers clear the timer's old one first).
    fn free_slot(&self) -> usize {
        self.armed.iter().position(Option::is_none).expect("invariant: a transaction arms at most 3 timers")
    }

    /// Arms `timer` of transaction `id` of `call` for `deadline_ms`, in the record and in the wheel.
    fn arm(&mut self, wheel: &mut Wheel, id: u64, call: &CallRef, timer: TxnTimer, deadline_ms: u64) {
        if let Some(old) = self.clear(timer) {
            wheel.cancel(old);
        }
        let handle = wheel
            .arm(deadline_ms, TimerKey { id, timer: WheelTimer::Txn(timer), call: call.clone() })
            .expect("invariant: new transactions keep TIMER_HEADROOM free");
        let i = self.free_slot();
        self.armed[i] = Some((timer, deadline_ms));
        self.handles[i] = Some(handle);
    }

    /// Takes every timer out of the wheel; the deadlines stay (a dormant record keeps them).
    fn disarm(&mut self, wheel: &mut Wheel) {
        for handle in self.handles.iter_mut().filter_map(Option::take) {
            wheel.cancel(handle);
        }
    }

    /// Arms every stored deadline in the wheel, for transaction `id` of `call` (a record made live here).
    fn rearm(&mut self, wheel: &mut Wheel, id: u64, call: &CallRef) {
        self.disarm(wheel);
        for (armed, handle) in self.armed.iter().zip(self.handles.iter_mut()) {
            if let Some((timer, deadline)) = *armed {
                let key = TimerKey { id, timer: WheelTimer::Txn(timer), call: call.clone() };
                *handle = Some(wheel.arm(deadline, key).expect("invariant: the wheel is sized for every record"));
            }
        }
    }

    /// Carries out an `Arm` or `Cancel` action of transaction `id` of `call` (record and wheel alike).
    fn apply(&mut self, wheel: &mut Wheel, id: u64, call: &CallRef, now_ms: u64, action: Action) {
        match action {
            Action::Arm(timer, after) => self.arm(wheel, id, call, timer, now_ms + after.as_millis() as u64),
            Action::Cancel(timer) => {
                if let Some(handle) = self.clear(timer) {
                    wheel.cancel(handle);
                }
            }
            _ => {}
        }
    }

    /// The armed timers and their deadlines.
    pub fn iter(&self) -> impl Iterator<Item = (TxnTimer, u64)> + '_ {
        self.armed.iter().flatten().copied()
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

/// The state machine of a client transaction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFsm {
    /// Figure 5.
    Invite(ClientInvite),
    /// Figure 6.
    NonInvite(ClientNonInvite),
}

impl ClientFsm {
    fn on(&mut self, event: ClientEvent, cfg: &TimerConfig) -> Actions {
        match self {
            ClientFsm::Invite(fsm) => fsm.on(event, cfg),
            ClientFsm::NonInvite(fsm) => fsm.on(event, cfg),
        }
    }

    /// Whether a final response has arrived (nothing left to CANCEL, §9.1).
    fn has_final(&self) -> bool {
        match self {
            ClientFsm::Invite(fsm) => !matches!(fsm.state, ClientInviteState::Calling | ClientInviteState::Proceeding),
            ClientFsm::NonInvite(_) => true,
        }
    }

    /// Whether a final response has arrived, for either kind (unlike [`Self::has_final`], which
    /// answers "nothing left to CANCEL" and so is true for every non-INVITE).
    fn final_received(&self) -> bool {
        match self {
            ClientFsm::Invite(_) => self.has_final(),
            ClientFsm::NonInvite(fsm) => {
                matches!(fsm.state, ClientNonInviteState::Completed | ClientNonInviteState::Terminated)
            }
        }
    }
}

/// The record of one call (all state of a Call-ID lives in its stripe).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Live server transactions.
    pub transactions: Vec<ServerTxn>,
    /// Live client transactions.
    pub clients: Vec<ClientTxn>,
    /// The dialog the INVITE created, as far as this element tracks it (a record-routing
    /// proxy routes in-dialog requests by their Route set, so the state is all it needs).
    pub dialog: Option<DialogState>,
    /// An AoR's bindings, when the record's key is an address-of-record (registrar).
    pub bindings: Vec<Binding>,
    /// Both dialogs of a B2BUA call (boxed: proxied calls do not pay for it).
    pub bridge: Option<Box<B2buaCall>>,
    /// Call timers (no answer / Timer C, maximum duration) and their deadlines (ms).
    pub call_timers: Vec<(CallTimer, u64)>,
    /// The id the call timers go by in the wheel (0: none yet).
    pub call_timer_id: u64,
}

impl CallRecord {
    /// Whether nothing is left to keep: no transaction, no confirmed dialog, no binding.
    fn is_idle(&self) -> bool {
        self.transactions.is_empty()
            && self.clients.is_empty()
            // An early dialog lives only as long as its INVITE's transactions.
            && self.dialog != Some(DialogState::Confirmed)
            && self.bindings.is_empty()
    }

    /// Whether the call is over and only finished transactions are left, waiting out their
    /// timers (J, K, L, H) to absorb retransmissions: every request answered with a final
    /// response, every relayed one has its final response, no dialog going on, no binding.
    /// The table does not count such a record as a call ([`Hints::LINGERING`]).
    fn is_lingering(&self) -> bool {
        matches!(self.dialog, None | Some(DialogState::Terminated))
            && self.bindings.is_empty()
            && self.transactions.iter().all(|t| t.answered)
            && self.clients.iter().all(|c| c.fsm.final_received())
    }
}

/// Most transactions (server and client together) one call record holds.
pub const MAX_TXNS_PER_CALL: usize = 16;

/// Free timer-wheel entries below which a new transaction is refused (503): more than one
/// input arms (a request's server and client transactions and call timers, a CANCEL's), so
/// responses and firing timers, which arm no more than they end, always find room.
const TIMER_HEADROOM: usize = 64;

/// Timer-wheel entries per call of `max_calls`, counting the ended calls the table may also
/// hold ([`crate::table::LINGERING_ROOM`]).
const TIMERS_PER_CALL: usize = 8 * crate::table::LINGERING_ROOM;

/// The timer wheel for a shard of `max_calls` calls ([`ShardConfig::max_timers`]): sized so
/// that in any usual mix the table, not the wheel, is what refuses a call.
pub const fn timers_for(max_calls: usize) -> usize {
    TIMERS_PER_CALL * max_calls + TIMER_HEADROOM
}

/// Outputs one `handle` can queue before the driver must drain them.
const MAX_OUTPUTS: usize = 1_024;

/// The generator's first state from a seed (splitmix64's finalizer): seeds that differ in one
/// bit (shard 0 and shard 1 of a node) start far apart, never at the same state.
fn spread_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// Room added to a message's length for the headers a relay adds (Via, Record-Route).
const RELAY_ROOM: usize = 512;

/// What one input does, collected while the record is checked out and carried
/// out after the check-in (DESIGN.md §3 step 6).
#[derive(Default)]
struct Effects {
    /// The call checked out (`None` between inputs): what its timers name in the wheel.
    call: Option<CallRef>,
    sends: Vec<(Peer, SharedBytes)>,
    timer_ops: Vec<TimerOp>,
    hints: Hints,
    responses: u64,
    requests: u64,
}

/// How far an input's effects had got: taken just before an INVITE's 100 Trying.
#[derive(Copy, Clone)]
struct Mark {
    sends: usize,
    responses: u64,
}

impl Effects {
    /// What has been sent so far.
    fn mark(&self) -> Mark {
        Mark { sends: self.sends.len(), responses: self.responses }
    }

    /// Puts what an INVITE's handling sent after its 100 Trying (the send right after
    /// `before_trying`) ahead of it: the relayed INVITE leaves first. Every send is a system
    /// call that may wake its receiver (tens of µs on a VM), and the call waits on the INVITE,
    /// not on the 100, which only stops the caller's retransmissions (T1 = 500 ms away). Only
    /// when the 100 is the one response since the mark (a 500 for an INVITE that could not be
    /// relayed stays after it).
    fn relayed_first(&mut self, before_trying: Mark) {
        if self.responses == before_trying.responses + 1 && self.sends.len() > before_trying.sends + 1 {
            self.sends[before_trying.sends..].rotate_left(1);
        }
    }
}

/// One shard.
pub struct Shard<T> {
    config: ShardConfig,
    stripes: StripeMap,
    table: CallTable<CallRecord>,
    wheel: Wheel,
    /// Call timers armed in the wheel, by (call-timer id, timer) (a transaction's timers keep
    /// their handles in the record: [`TxnTimers`]).
    armed: hashbrown::HashMap<(u64, WheelTimer), TimerId>,
    /// Live transactions, server and client (of records live here; a dormant copy's do not count).
    live_transactions: usize,
    /// B2BUA calls: the A leg's Call-ID (the record key) of each B leg's Call-ID.
    b_index: hashbrown::HashMap<Box<[u8]>, Box<[u8]>>,
    outputs: std::collections::VecDeque<Output>,
    /// Header slots, reused by every message (they hold offsets, not borrows).
    slots: Box<[HeaderSlot]>,
    /// Slots for a second message read while the first is open (a stored request).
    spare_slots: Box<[HeaderSlot]>,
    /// One input's effects, taken and put back so inputs do not allocate their lists.
    scratch: Effects,
    /// Where messages are written before an exact-size copy is taken ([`written`]).
    write_buf: Vec<u8>,
    /// `SIP/2.0/UDP host:port;branch=` and the TCP twin, written once (UDP names the shard's
    /// own port when it has one).
    via_prefix: [String; 2],
    /// `<sip:host:port;lr>` for a request relayed from UDP to UDP (the shard's own port when it
    /// has one), and for any other (the shared port: TCP peers connect there).
    record_route: [String; 2],
    /// `sip:host:port` toward UDP peers (the shard's own port when it has one).
    udp_contact: String,
    epoch: Instant,
    next_txn: u64,
    rng: u64,
    stats: ShardStats,
    /// Shutting down: new calls get 503.
    draining: bool,
    /// In-dialog requests waiting for a lookup, by key.
    parked: hashbrown::HashMap<Box<[u8]>, Vec<Parked>>,
    /// Handling parked requests after their lookup: no second lookup.
    replaying: bool,
    /// Check records in without a new version or a change (a record made live or dormant
    /// here keeps its version, so the versions of two owners' copies stay comparable).
    quiet: bool,
    tu: T,
}

impl<T: TransactionUser> Shard<T> {
    /// A shard starting at `now`, counting time from there.
    pub fn new(config: ShardConfig, tu: T, now: Instant) -> Self {
        Self::with_clock(config, tu, now, now)
    }

    /// A shard starting at `now` whose clock counts milliseconds from `origin`. Records keep
    /// their timers' deadlines in this clock, so the nodes of a cluster give every shard the
    /// same origin (a wall-clock instant): a backup that takes a record over arms its timers
    /// at the deadlines the dead owner set.
    pub fn with_clock(config: ShardConfig, tu: T, origin: Instant, now: Instant) -> Self {
        let start_ms = now.saturating_duration_since(origin).as_millis() as u64;
        let mut table = CallTable::new(config.max_calls);
        table.set_feed(config.replicate);
        let local = config.local;
        let own = config.shard_ports.and_then(|p| p.port_of(config.shard)).map_or(local, |port| {
            let mut own = local;
            own.set_port(port);
            own
        });
        Shard {
            stripes: config.stripes.clone(),
            table,
            slots: vec![HeaderSlot::EMPTY; Message::SLOTS].into_boxed_slice(),
            spare_slots: vec![HeaderSlot::EMPTY; Message::SLOTS].into_boxed_slice(),
            scratch: Effects::default(),
            write_buf: Vec::new(),
            via_prefix: [format!("SIP/2.0/UDP {own};branch="), format!("SIP/2.0/TCP {local};branch=")],
            record_route: [format!("<sip:{own};lr>"), format!("<sip:{local};lr>")],
            udp_contact: format!("sip:{own}"),
            wheel: TimerWheel::new(config.max_timers, start_ms),
            armed: hashbrown::HashMap::new(),
            live_transactions: 0,
            b_index: hashbrown::HashMap::new(),
            outputs: std::collections::VecDeque::new(),
            epoch: origin,
            next_txn: 1,
            rng: spread_seed(config.seed),
            stats: ShardStats::default(),
            draining: false,
            parked: hashbrown::HashMap::new(),
            replaying: false,
            quiet: false,
            tu,
            config,
        }
    }

    /// Starts (or stops) refusing new calls with 503, for a graceful shutdown.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// The counters.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// The transaction user.
    pub fn tu(&self) -> &T {
        &self.tu
    }

    /// The transaction user, to change its configuration or read its state.
    pub fn tu_mut(&mut self) -> &mut T {
        &mut self.tu
    }

    /// Live call records.
    pub fn calls(&self) -> usize {
        self.table.len()
    }

    /// Armed timers.
    pub fn armed_timers(&self) -> usize {
        self.wheel.len()
    }

    /// Live transactions, server and client.
    pub fn transactions(&self) -> usize {
        self.live_transactions
    }

    /// Transactions still waiting for a final response (a graceful shutdown waits for these;
    /// the others only absorb retransmissions). Walks the table: not for the hot path.
    pub fn unanswered_transactions(&self) -> usize {
        self.table
            .records()
            .map(|record| {
                record.transactions.iter().filter(|t| !t.answered).count()
                    + record.clients.iter().filter(|c| !c.fsm.final_received()).count()
            })
            .sum()
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
            Input::TransportError { peer, bytes } => self.transport_error(now_ms, peer, bytes),
            Input::Location(update) => self.tu.on_location(update),
            Input::Replica(change) => self.install_replica(change),
            Input::View(view) => self.take_view(view),
            Input::LookupDone { stripe, key, found } => self.lookup_done(now_ms, stripe, key, found),
        }
        while let Some(change) = self.table.poll_change() {
            if self.config.replicate {
                self.outputs.push_back(Output::Replicate(change));
            }
        }
    }

    /// Keeps a replica of a record another node owns, dormant: no timer armed, no transaction
    /// indexed. A removal removes it. Changes are idempotent (older versions are ignored).
    fn install_replica(&mut self, change: &Change) {
        if self.stripes.route(change.stripe, self.config.node, self.config.shard) == Route::Local {
            self.merge_copy(change);
            return;
        }
        if change.bytes.is_empty() {
            self.table.forget(change.stripe, &change.key);
            self.stats.replicas_removed += 1;
            return;
        }
        let installed = codec::decode::<CallRecord>(&change.bytes).ok().and_then(|(_, record)| {
            self.table.install(change.stripe, &change.key, change.version, record, change.hints).ok()
        });
        match installed {
            Some(true) => self.stats.replicas_installed += 1,
            _ => self.stats.replicas_refused += 1,
        }
    }

    /// A copy from a node that also owns the stripe (a partition healed, or a node frozen past
    /// the dead time woke up): the copy with the higher version wins (its side changed the
    /// call more; a tie keeps ours), a call only the sender knew is adopted, and a newer
    /// removal ends ours. A copy taken is made live here with the version it came with, and
    /// no change goes out for it (the sender has it; echoing it back would bounce forever).
    /// Taking a stripe over does not bump versions either ([`Shard::finish_quietly`]).
    fn merge_copy(&mut self, change: &Change) {
        let (stripe, key) = (change.stripe, &change.key[..]);
        let ours = self.table.version(stripe, key);
        if ours.is_some_and(|v| v >= change.version) {
            self.stats.replicas_refused += 1;
            return;
        }
        let record = if change.bytes.is_empty() {
            None
        } else {
            match codec::decode::<CallRecord>(&change.bytes) {
                Ok((_, record)) => Some(record),
                Err(_) => {
                    self.stats.replicas_refused += 1;
                    return;
                }
            }
        };
        if ours.is_some() {
            self.deactivate(stripe, key);
            self.table.forget(stripe, key);
        }
        match record {
            None if ours.is_some() => self.stats.replicas_removed += 1,
            None => {}
            Some(record) => match self.table.install(stripe, key, change.version, record, change.hints) {
                Ok(true) => {
                    self.stats.replicas_merged += 1;
                    self.activate(stripe, key);
                }
                _ => self.stats.replicas_refused += 1,
            },
        }
    }

    /// Adopts a newer view; activates the records of every stripe it gives this shard.
    fn take_view(&mut self, view: &StripeMap) {
        let (node, shard) = (self.config.node, self.config.shard);
        let ours = |map: &StripeMap, s| map.route(s, node, shard) == Route::Local;
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        for s in (0..view.stripe_count()).map(StripeId) {
            match (ours(&self.stripes, s), ours(view, s)) {
                (false, true) => gained.push(s),
                (true, false) => lost.push(s),
                _ => {}
            }
        }
        if !self.stripes.update(view.clone()) {
            return; // Stale: an older or equal epoch.
        }
        for stripe in lost {
            self.stats.stripes_handed_over += 1;
            let keys: Vec<Box<[u8]>> = self.table.stripe_records(stripe).map(|(k, _, _)| k.into()).collect();
            for key in keys {
                self.deactivate(stripe, &key);
            }
        }
        for stripe in gained {
            self.stats.stripes_taken_over += 1;
            let keys: Vec<Box<[u8]>> = self.table.stripe_records(stripe).map(|(k, _, _)| k.into()).collect();
            for key in keys {
                self.activate(stripe, &key);
            }
        }
    }

    /// Makes a dormant record live here: fresh shard-local ids for its transactions and call
    /// timers (the old owner's could collide with ours), the indexes rebuilt, every timer armed
    /// at its stored deadline (those already past fire at the next timeout).
    fn activate(&mut self, stripe: StripeId, key: &[u8]) {
        let Some((mut record, stored)) = self.checkout_existing(stripe, key) else { return };
        let mut fx = self.take_effects(stripe, stored);
        let call = fx.call.as_ref().expect("invariant: set by take_effects");
        let mut renamed: Vec<(u64, u64)> = Vec::with_capacity(record.transactions.len());
        for txn in &mut record.transactions {
            let id = self.new_txn_id();
            renamed.push((txn.id, id));
            txn.id = id;
            txn.timers.rearm(&mut self.wheel, id, call);
        }
        for client in &mut record.clients {
            let id = self.new_txn_id();
            client.id = id;
            client.server = renamed.iter().find(|(old, _)| *old == client.server).map_or(0, |(_, new)| *new);
            client.timers.rearm(&mut self.wheel, id, call);
        }
        self.live_transactions += record.transactions.len() + record.clients.len();
        if !record.call_timers.is_empty() {
            record.call_timer_id = self.new_txn_id();
            for &(timer, deadline) in &record.call_timers {
                fx.timer_ops.push(TimerOp::Arm(record.call_timer_id, WheelTimer::Call(timer), deadline));
            }
        }
        if let Some(bridge) = &record.bridge {
            self.b_index.insert(bridge.b_call_id.as_bytes().into(), key.into());
        }
        self.stats.records_activated += 1;
        self.finish_quietly(stripe, key, record, fx);
    }

    /// Makes a live record dormant, its stripe now another node's: its timers are cancelled
    /// (they stay stored in the record, for the new owner to arm) and it leaves the indexes.
    fn deactivate(&mut self, stripe: StripeId, key: &[u8]) {
        let Some((mut record, stored)) = self.checkout_existing(stripe, key) else { return };
        let mut fx = self.take_effects(stripe, stored);
        let timers = record.transactions.iter_mut().map(|t| &mut t.timers);
        for timers in timers.chain(record.clients.iter_mut().map(|c| &mut c.timers)) {
            timers.disarm(&mut self.wheel);
        }
        self.live_transactions -= record.transactions.len() + record.clients.len();
        if record.call_timer_id != 0 {
            for &(timer, _) in &record.call_timers {
                fx.timer_ops.push(TimerOp::Cancel(record.call_timer_id, WheelTimer::Call(timer)));
            }
        }
        if let Some(bridge) = &record.bridge {
            self.b_index.remove(bridge.b_call_id.as_bytes());
        }
        self.stats.records_deactivated += 1;
        self.finish_quietly(stripe, key, record, fx);
    }

    /// Checks a record in that only changed hands (made live or dormant here) or did not change
    /// (a retransmission answered from its transaction): its version stays, and no change goes
    /// out. Versions then compare across the nodes that held the record (a copy changed
    /// elsewhere after a takeover is newer than ours by its own changes).
    fn finish_quietly(&mut self, stripe: StripeId, key: &[u8], record: CallRecord, fx: Effects) {
        self.quiet = true;
        self.finish(stripe, key, record, fx);
        self.quiet = false;
    }

    /// Copies of every record of `stripe`, as changes (a snapshot for a returning backup).
    pub fn snapshot(&self, stripe: StripeId) -> Vec<Change> {
        self.table.stripe_records(stripe).map(|(key, record, version)| copy_of(stripe, key, record, version)).collect()
    }

    /// A copy of the record of `key` in `stripe`, live or dormant: by its key, or by the B-leg
    /// Call-ID of the call it bridges (a peer's answer to a Lookup). Scans the stripe.
    pub fn lookup(&self, stripe: StripeId, key: &[u8]) -> Option<Change> {
        self.table
            .stripe_records(stripe)
            .find(|(k, record, _)| *k == key || record.bridge.as_ref().is_some_and(|b| b.b_call_id.as_bytes() == key))
            .map(|(k, record, version)| copy_of(stripe, k, record, version))
    }

    /// Parks an in-dialog request for a call held nowhere here and asks the peers (once per
    /// key); false when too many wait already (the request gets its 481 at once).
    fn park(&mut self, stripe: StripeId, key: &[u8], peer: Peer, bytes: &[u8]) -> bool {
        if let Some(waiting) = self.parked.get_mut(key) {
            // Beyond a few, retransmissions: the UA sends them again if the lookup succeeds.
            if waiting.len() < MAX_PARKED_PER_KEY {
                waiting.push((peer, bytes.to_vec()));
            }
            return true;
        }
        if self.parked.len() >= MAX_PARKED_KEYS {
            return false;
        }
        self.parked.insert(key.into(), vec![(peer, bytes.to_vec())]);
        self.stats.lookups += 1;
        self.outputs.push_back(Output::Lookup { stripe, key: key.into() });
        true
    }

    /// A lookup came back: the copy found becomes live here, then the parked requests run.
    fn lookup_done(&mut self, now_ms: u64, stripe: StripeId, key: &[u8], found: Option<&Change>) {
        let Some(waiting) = self.parked.remove(key) else { return };
        if let Some(change) = found {
            let installed = codec::decode::<CallRecord>(&change.bytes).ok().and_then(|(_, record)| {
                self.table.install(stripe, &change.key, change.version, record, change.hints).ok()
            });
            if installed == Some(true) {
                self.stats.lookups_found += 1;
                self.activate(stripe, &change.key);
            }
        }
        self.replaying = true;
        for (peer, bytes) in waiting {
            self.receive(now_ms, peer, &bytes, false);
        }
        self.replaying = false;
    }

    fn receive(&mut self, now_ms: u64, peer: Peer, bytes: &[u8], may_forward: bool) {
        // Borrow the slots out of self while the message lives (taking an empty box allocates nothing).
        let mut slots = std::mem::take(&mut self.slots);
        // Parsed before routing, and the parse is the one handled: with shard ports nearly every
        // message stays here, so a separate Call-ID scan first would be paid twice for nothing.
        // A message that does not parse is dropped here rather than moved to fail at its owner.
        match sipshard_parser::parse(bytes, &mut slots) {
            Ok(msg) => self.route_parsed(now_ms, peer, &msg, may_forward),
            // A phone behind a NAT keeps its binding open with a datagram of CRLFs (or nothing,
            // or a NUL): not a message, and not an error either.
            Err(_) if bytes.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\0')) => {
                self.stats.keepalives_received += 1;
            }
            Err(_) => self.stats.dropped_malformed += 1,
        }
        self.slots = slots;
    }

    /// Routes a parsed message by its Call-ID (a registrar's REGISTER by its AoR) and handles
    /// it here when this shard owns it.
    fn route_parsed(&mut self, now_ms: u64, peer: Peer, msg: &Message<'_>, may_forward: bool) {
        // The octets peek_call_id finds (the stripe hash is a wire contract with the steering
        // and other nodes); the parser's tests hold the two to the same answer.
        let Some(call_id) = msg.header(HeaderName::CallId) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if self.config.registrar.is_some() && msg.method() == Some(Method::Register) {
            // A REGISTER for this registrar lives in its AoR's record: it is routed by the AoR.
            let aor = self.registration_aor(msg);
            let key = aor.as_deref().map_or(call_id, str::as_bytes);
            let stripe = StripeId::of_call_id(key, self.stripes.stripe_count());
            if self.stays_here(stripe, may_forward) {
                self.dispatch(now_ms, stripe, key, peer, msg, aor.is_some());
            }
        } else {
            let stripe = StripeId::of_call_id(call_id, self.stripes.stripe_count());
            // A B2BUA's B leg: the record is under the A leg's Call-ID (same stripe by construction).
            let a_key = if call_id.starts_with(b"b2b~") { self.b_index.get(call_id).cloned() } else { None };
            let key = a_key.as_deref().unwrap_or(call_id);
            if self.stays_here(stripe, may_forward) {
                self.dispatch(now_ms, stripe, key, peer, msg, false);
            }
        }
    }

    /// Whether this shard handles a message of `stripe`; if another shard or node owns it, the
    /// forward is queued (unless a peer routed it here: `may_forward` false) and the answer is no.
    fn stays_here(&mut self, stripe: StripeId, may_forward: bool) -> bool {
        match self.stripes.route(stripe, self.config.node, self.config.shard) {
            Route::Local => {}
            // A message routed here by a peer with an older map is processed anyway: the
            // sender believed we own it, and bouncing it could loop until the maps agree.
            _ if !may_forward => {}
            Route::Shard(shard) => {
                self.stats.forwarded_to_shard += 1;
                self.outputs.push_back(Output::Forward { shard });
                return false;
            }
            Route::Node(node) => {
                self.stats.forwarded_to_node += 1;
                let shard = self.stripes.placement(stripe).shard();
                self.outputs.push_back(Output::ForwardToNode { node, shard });
                return false;
            }
        }
        self.stats.local += 1;
        true
    }

    /// A parsed message this shard handles: a response to its transaction, a request to one.
    #[allow(clippy::too_many_arguments)] // The pieces of one message; a struct would only rename them.
    fn dispatch(
        &mut self,
        now_ms: u64,
        stripe: StripeId,
        key: &[u8],
        peer: Peer,
        msg: &Message<'_>,
        registering: bool,
    ) {
        if !msg.is_request() {
            self.on_response(now_ms, stripe, key, msg);
        } else if msg.len() > self.config.max_message_bytes {
            self.stats.refused_too_large += 1;
            self.respond_stateless(msg, peer, 513, "Message Too Large");
        } else {
            match server_key(msg) {
                Ok(txn_key) => self.on_request(now_ms, stripe, key, peer, msg, txn_key, registering),
                Err(_) => self.stats.dropped_malformed += 1,
            }
        }
    }

    /// The AoR key of a REGISTER addressed to this server (a registrar).
    fn registration_aor(&self, msg: &Message<'_>) -> Option<String> {
        let uri = msg.request_uri()?.ok()?;
        let ours =
            uri.user.is_none() && is_local_address(uri.host, uri.port, self.config.local, self.config.shard_ports);
        if ours { registrar::register_aor(msg) } else { None }
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

    fn context(&self, now_ms: u64, peer: Peer, dialog: Option<DialogState>) -> RequestContext {
        RequestContext {
            node: self.config.node,
            shard: self.config.shard,
            now_ms,
            peer,
            local: self.config.local,
            shard_ports: self.config.shard_ports,
            dialog,
        }
    }

    /// The input's effects list, for the call just checked out (`key` as the table stores it).
    fn take_effects(&mut self, stripe: StripeId, key: CallKey) -> Effects {
        let mut fx = std::mem::take(&mut self.scratch);
        fx.call = Some(CallRef { stripe, key });
        fx
    }

    fn new_txn_id(&mut self) -> u64 {
        let id = self.next_txn;
        self.next_txn += 1;
        id
    }

    #[allow(clippy::too_many_arguments)] // The pieces of one request; a struct would only rename them.
    fn on_request(
        &mut self,
        now_ms: u64,
        stripe: StripeId,
        call_id: &[u8],
        peer: Peer,
        msg: &Message<'_>,
        key: ServerKey,
        registering: bool,
    ) {
        let method = msg.method();
        let is_ack = method == Some(Method::Ack);
        let (mut record, stored_key, fresh) = match self.table.get_and_lock(stripe, call_id, !is_ack) {
            Ok(Checkout { record: None, .. }) if self.draining => {
                // Shutting down: no new call (§21.5.4 with Retry-After); existing calls go on.
                self.table.unlock(stripe, call_id, None).expect("invariant: checked out above");
                self.stats.refused_draining += 1;
                self.respond_stateless(msg, peer, 503, "Service Unavailable");
                return;
            }
            Ok(Checkout { record: None, .. })
                if self.config.lookup_before_481
                    && !self.replaying
                    && method != Some(Method::Cancel)
                    && msg.to().ok().flatten().is_some_and(|to| to.tag().is_some())
                    && self.park(stripe, call_id, peer, msg.as_bytes()) =>
            {
                // In a dialog we hold nothing of: another copy may exist (Lookup before 481).
                self.table.unlock(stripe, call_id, None).expect("invariant: checked out above");
                return;
            }
            Ok(checkout) => (checkout.record.unwrap_or_default(), checkout.key, checkout.version == 0),
            // An ACK for a call we hold nothing of: the ACK of a 2xx (§17.1.1.3), relayed if the role says so.
            Err(TableError::NotFound) => return self.relay_ack(now_ms, peer, None, msg),
            Err(TableError::Full) => {
                self.stats.refused_full += 1;
                self.respond_stateless(msg, peer, 503, "Service Unavailable");
                return;
            }
            Err(e) => panic!("invariant: a shard never holds a checkout across inputs ({e:?})"),
        };
        let mut fx = self.take_effects(stripe, stored_key);
        let side = record.bridge.as_ref().map(|bridge| side_of(bridge, msg));
        if let Some(i) = record.transactions.iter().position(|t| t.key == key) {
            self.stats.retransmissions_received += u64::from(!is_ack);
            let event = if is_ack { ServerEvent::Ack } else { ServerEvent::Request };
            let before = record.transactions[i].fsm;
            let actions = record.transactions[i].fsm.on(event, &self.config.timers);
            if actions.contains(Action::PassToTu) {
                // RFC 6026 §7.1: an ACK of a 2xx that reused the INVITE's branch goes on end to end.
                self.relay_ack(now_ms, peer, record.dialog, msg);
            }
            // A retransmission absorbed or answered from the transaction changes nothing: the
            // record goes back without a new version, and no change goes to the backups.
            let unchanged =
                record.transactions[i].fsm == before && actions.iter().all(|action| action == Action::SendResponse);
            self.apply_server(now_ms, &mut record, i, call_id, actions, &mut fx);
            return if unchanged {
                self.finish_quietly(stripe, call_id, record, fx)
            } else {
                self.finish(stripe, call_id, record, fx)
            };
        }
        if let (true, Some(side)) = (is_ack, side) {
            // A B2BUA's ACK of a 2xx: the other leg gets its own.
            self.bridge_ack(&mut record, side, call_id, msg, &mut fx);
            return self.finish(stripe, call_id, record, fx);
        }
        if is_ack {
            // The ACK of a 2xx (its own transaction, §17.1.1.3): nothing of the record changes.
            let dialog = record.dialog;
            self.table.unlock(stripe, call_id, Some(record)).expect("invariant: checked out above");
            self.scratch = fx;
            return self.relay_ack(now_ms, peer, dialog, msg);
        }
        if self.wheel.len() + TIMER_HEADROOM > self.wheel.capacity() {
            // No room to arm a new transaction's timers: refused like a call over capacity.
            self.table.unlock(stripe, call_id, (!fresh).then_some(record)).expect("invariant: checked out above");
            self.scratch = fx;
            self.stats.refused_full += 1;
            self.respond_stateless(msg, peer, 503, "Service Unavailable");
            return;
        }
        if record.transactions.len() + record.clients.len() >= MAX_TXNS_PER_CALL {
            // Nothing changed: the record goes back without a new version or change.
            self.table.unlock(stripe, call_id, Some(record)).expect("invariant: checked out above");
            self.scratch = fx;
            self.respond_stateless(msg, peer, 503, "Service Unavailable");
            return;
        }
        let id = self.new_txn_id();
        let reliable = peer.transport == Transport::Tcp;
        let is_invite = method == Some(Method::Invite);
        let fsm = if is_invite {
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
            response: SharedBytes::default(),
            answered: false,
            request: SharedBytes::default(),
            timers: TxnTimers::default(),
        });
        self.live_transactions += 1;
        self.stats.transactions_created += 1;
        let mut location = None;
        let decision = if method == Some(Method::Cancel) {
            self.cancel(now_ms, &mut record, &mut fx)
        } else if let Some(side) = side {
            // In a B2BUA call: the request goes on to the other leg, rebuilt from its dialog.
            self.keep_request(&mut record, id, msg);
            self.bridge_request(now_ms, &mut record, id, side, call_id, msg, &mut fx);
            return self.finish(stripe, call_id, record, fx);
        } else if let (true, Some(registrar)) = (registering, self.config.registrar.as_ref()) {
            let before = record.bindings.clone();
            let natted = crate::nat::behind_nat(msg, peer).then_some(peer);
            let answer = registrar::register(registrar, now_ms, &mut record.bindings, msg, natted);
            if record.bindings != before {
                let aor = core::str::from_utf8(call_id).expect("invariant: AoR keys are text");
                location = Some(LocationUpdate { aor: aor.into(), bindings: record.bindings.clone() });
            }
            answer.into()
        } else {
            let ctx = self.context(now_ms, peer, record.dialog);
            self.tu.on_request(&ctx, msg)
        };
        match decision {
            Decision::Respond(answer) => self.answer(now_ms, &mut record, id, call_id, msg, answer, &mut fx),
            Decision::Relay(relay) => {
                let before_trying = fx.mark();
                if is_invite {
                    // §16.2: a stateful proxy answers an INVITE with 100 Trying at once.
                    self.answer_with(now_ms, &mut record, id, call_id, msg, 100, "Trying", &[], &mut fx);
                }
                if is_invite && relay.record_route && record.dialog.is_none() {
                    record.dialog = Some(DialogState::Early);
                }
                self.relay_request(now_ms, &mut record, id, call_id, (peer, msg), &relay, &mut fx);
                if is_invite {
                    fx.relayed_first(before_trying);
                    // §16.8: the proxy's Timer C bounds how long the INVITE may ring.
                    let deadline = now_ms + self.config.no_answer.as_millis() as u64;
                    self.arm_call_timer(&mut record, CallTimer::C, deadline, &mut fx);
                }
            }
            Decision::Bridge(relay) => {
                let before_trying = fx.mark();
                self.answer_with(now_ms, &mut record, id, call_id, msg, 100, "Trying", &[], &mut fx);
                self.keep_request(&mut record, id, msg);
                self.bridge_call(now_ms, &mut record, id, stripe, call_id, peer, msg, &relay, &mut fx);
                fx.relayed_first(before_trying);
                let deadline = now_ms + self.config.no_answer.as_millis() as u64;
                self.arm_call_timer(&mut record, CallTimer::NoAnswer, deadline, &mut fx);
            }
        }
        self.finish(stripe, call_id, record, fx);
        if let Some(update) = location {
            // After the check-in, like every effect: this shard's cache, then the others'.
            self.tu.on_location(&update);
            self.outputs.push_back(Output::Location(update));
        }
    }

    /// §9.2, §16.10: a CANCEL is answered here (200, or 481 when its INVITE is unknown)
    /// and, when the INVITE was relayed and has no final response yet, sent on downstream.
    fn cancel(&mut self, now_ms: u64, record: &mut CallRecord, fx: &mut Effects) -> Decision {
        let cancel = record.transactions.last().expect("invariant: the CANCEL's transaction was just added");
        let invite_key = cancel.key.cancelled_invite();
        let Some(invite) = record.transactions.iter().find(|t| t.key == invite_key) else {
            return FinalResponse::new(481, "Call/Transaction Does Not Exist").into();
        };
        let invite_id = invite.id;
        let pending = record.clients.iter().find(|c| c.server == invite_id && !c.cancel && !c.fsm.has_final());
        if let Some(client) = pending {
            let (peer, branch) = (client.peer, client.branch.clone());
            if let Some(out) = self.cancel_of(&client.request) {
                self.start_client(now_ms, record, invite_id, branch, true, peer, out, fx);
            }
        }
        FinalResponse::new(200, "OK").into()
    }

    /// The CANCEL of a relayed INVITE (§9.1), built from the request as it was sent.
    fn cancel_of(&mut self, invite: &[u8]) -> Option<SharedBytes> {
        let mut slots = std::mem::take(&mut self.spare_slots);
        let cancel = written(&mut self.write_buf, invite.len() + 64, |out| {
            sipshard_parser::parse(invite, &mut slots)
                .ok()
                .and_then(|sent| sipshard_parser::write_cancel(&sent, out).ok())
        });
        self.spare_slots = slots;
        cancel
    }

    /// Answers server transaction `id` with the TU's final response.
    #[allow(clippy::too_many_arguments)] // The pieces of one answer; a struct would only rename them.
    fn answer(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        id: u64,
        call_id: &[u8],
        msg: &Message<'_>,
        mut answer: FinalResponse,
        fx: &mut Effects,
    ) {
        if !(200..=699).contains(&answer.code) {
            self.stats.tu_errors += 1;
            answer = FinalResponse::new(500, "Server Internal Error");
        }
        let headers: Vec<(&str, &[u8])> = answer.headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let reason = answer.reason.as_ref();
        self.answer_with(now_ms, record, id, call_id, msg, answer.code, reason, &headers, fx);
    }

    /// Writes a response to `msg` and sends it through server transaction `id`.
    #[allow(clippy::too_many_arguments)] // The pieces of one answer; a struct would only rename them.
    fn answer_with(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        id: u64,
        call_id: &[u8],
        msg: &Message<'_>,
        code: u16,
        reason: &str,
        headers: &[(&str, &[u8])],
        fx: &mut Effects,
    ) {
        let tag = self.tag();
        let tag = core::str::from_utf8(&tag).expect("invariant: hex digits");
        let to_tag = if code == 100 { None } else { Some(tag) };
        let received_from = record.transactions.iter().find(|t| t.id == id).map(|t| t.peer.addr);
        let spec = ResponseSpec { code, reason, to_tag, headers, body: b"", received_from };
        let room: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        match written(&mut self.write_buf, msg.len() + 256 + room, |out| write_response(msg, &spec, out).ok()) {
            Some(out) => self.server_respond(now_ms, record, id, call_id, out, code, fx),
            // The request parsed but its response cannot be written: end the transaction.
            None => self.drop_server_txn(record, id),
        }
    }

    /// Ends a server transaction that cannot be answered (its response cannot be written):
    /// counted, never left to live without a timer.
    fn drop_server_txn(&mut self, record: &mut CallRecord, id: u64) {
        self.stats.dropped_malformed += 1;
        if let Some(i) = record.transactions.iter().position(|t| t.id == id) {
            let mut txn = record.transactions.swap_remove(i);
            self.forget_txn(&mut txn.timers);
            self.stats.transactions_ended += 1;
        }
    }

    /// A transaction is over: its timers are cancelled, and it no longer counts as live.
    fn forget_txn(&mut self, timers: &mut TxnTimers) {
        timers.disarm(&mut self.wheel);
        self.live_transactions -= 1;
    }

    /// Hands `response` to server transaction `id` as the TU's response.
    #[allow(clippy::too_many_arguments)] // The pieces of one response; a struct would only rename them.
    fn server_respond(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        id: u64,
        call_id: &[u8],
        response: SharedBytes,
        code: u16,
        fx: &mut Effects,
    ) {
        let Some(i) = record.transactions.iter().position(|t| t.id == id) else { return };
        let txn = &mut record.transactions[i];
        let class = ResponseClass::of(code);
        if class != ResponseClass::Provisional {
            txn.answered = true;
        }
        if class == ResponseClass::Failure
            && matches!(txn.fsm, ServerFsm::Invite(_))
            && record.dialog == Some(DialogState::Early)
        {
            // The INVITE failed: the early dialog it opened is gone (§12.1, §13.2.2.3).
            record.dialog = None;
        }
        txn.response = response;
        let actions = txn.fsm.on(ServerEvent::TuResponse(class), &self.config.timers);
        self.apply_server(now_ms, record, i, call_id, actions, fx);
    }

    /// §16.6: builds the relayed request and starts its client transaction.
    #[allow(clippy::too_many_arguments)] // The pieces of one relay; a struct would only rename them.
    fn relay_request(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        server: u64,
        call_id: &[u8],
        (from, msg): (Peer, &Message<'_>),
        relay: &Relay,
        fx: &mut Effects,
    ) {
        let branch = self.branch();
        match self.write_relayed(from, msg, relay, &branch) {
            Some(out) => self.start_client(now_ms, record, server, branch.into(), false, relay.to, out, fx),
            None => {
                // Max-Forwards the role let through but the writer refused, or no room: a 500 is honest.
                self.stats.tu_errors += 1;
                self.answer_with(now_ms, record, server, call_id, msg, 500, "Server Internal Error", &[], fx);
            }
        }
    }

    /// A fresh branch with the magic cookie.
    fn branch(&mut self) -> String {
        let tag = self.tag();
        let mut branch = String::with_capacity(7 + tag.len());
        branch.push_str(sipshard_parser::MAGIC_COOKIE);
        branch.push_str(core::str::from_utf8(&tag).expect("invariant: hex digits"));
        branch
    }

    /// The relayed form of `msg` (which came from `from`): our Via on top of its own, marked
    /// received (§18.2.1, RFC 3581), Max-Forwards decremented, the role's edits.
    fn write_relayed(&mut self, from: Peer, msg: &Message<'_>, relay: &Relay, branch: &str) -> Option<SharedBytes> {
        let prefix = &self.via_prefix[usize::from(relay.to.transport == Transport::Tcp)];
        let mut via = String::with_capacity(prefix.len() + branch.len());
        via.push_str(prefix);
        via.push_str(branch);
        // The Contact of a dialog-creating request from behind a NAT, aliased to where it came
        // from: in-dialog requests then reach the caller (crate::nat).
        let aliased = (relay.record_route && crate::nat::behind_nat(msg, from))
            .then(|| msg.header(HeaderName::Contact))
            .flatten()
            .and_then(|contact| crate::nat::contact_with_alias(contact, from));
        let mut editor = Editor::new(msg);
        editor.push_via(via.as_bytes()).ok()?.mark_received(from.addr).ok()?.decrement_max_forwards().ok()?;
        if let Some(contact) = &aliased {
            editor.replace_header("Contact", contact.as_bytes()).ok()?;
        }
        if relay.record_route {
            // Both sides send in-dialog requests to it: the shard's own port only if both use UDP.
            let udp_both_ways = from.transport == Transport::Udp && relay.to.transport == Transport::Udp;
            editor.push_record_route(self.record_route[usize::from(!udp_both_ways)].as_bytes()).ok()?;
        }
        if relay.pop_route {
            editor.pop_route().ok()?;
        }
        if let Some(uri) = &relay.request_uri {
            editor.set_request_uri(uri).ok()?;
        }
        let need = msg.len()
            + RELAY_ROOM
            + relay.request_uri.as_ref().map_or(0, |u| u.len())
            + aliased.as_ref().map_or(0, String::len);
        written(&mut self.write_buf, need, |out| editor.write(out).ok())
    }

    #[allow(clippy::too_many_arguments)] // The fields of the new transaction.
    fn start_client(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        server: u64,
        branch: Box<str>,
        cancel: bool,
        peer: Peer,
        request: SharedBytes,
        fx: &mut Effects,
    ) {
        let id = self.new_txn_id();
        let reliable = peer.transport == Transport::Tcp;
        let is_invite = request.starts_with(b"INVITE ");
        let fsm = if is_invite {
            ClientFsm::Invite(ClientInvite::new(reliable, &self.config.timers))
        } else {
            ClientFsm::NonInvite(ClientNonInvite::new(reliable, &self.config.timers))
        };
        record.clients.reserve_exact(1);
        record.clients.push(ClientTxn { id, server, branch, cancel, fsm, peer, request, timers: TxnTimers::default() });
        let call = fx.call.clone().expect("invariant: set by take_effects");
        self.live_transactions += 1;
        self.stats.client_transactions_created += 1;
        let i = record.clients.len() - 1;
        let actions = record.clients[i].fsm.on(ClientEvent::Send, &self.config.timers);
        self.apply_client(now_ms, record, i, &call.key, actions, None, fx);
    }

    /// Carries out a server transition's actions on the record; sends and timer changes
    /// are collected, to happen after the check-in.
    fn apply_server(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        i: usize,
        call_id: &[u8],
        actions: Actions,
        fx: &mut Effects,
    ) {
        let txn = &mut record.transactions[i];
        let mut ended = false;
        for action in actions.iter() {
            match action {
                Action::SendResponse => {
                    fx.responses += 1;
                    fx.sends.push((txn.peer, txn.response.clone()));
                }
                Action::Arm(..) | Action::Cancel(_) => {
                    let call = fx.call.as_ref().expect("invariant: set by take_effects");
                    txn.timers.apply(&mut self.wheel, txn.id, call, now_ms, action);
                }
                Action::Timeout(_) | Action::TransportError => {
                    self.stats.transaction_failures += 1;
                    self.tu.on_failure(call_id);
                }
                Action::Terminated => ended = true,
                // Server transactions never send requests or ACKs; an ACK passed up was relayed by the caller.
                Action::SendRequest | Action::SendAck | Action::PassToTu => {}
            }
        }
        if ended {
            let mut txn = record.transactions.swap_remove(i);
            self.forget_txn(&mut txn.timers);
            self.stats.transactions_ended += 1;
        } else if matches!(txn.fsm, ServerFsm::Invite(ServerInvite { state: ServerInviteState::Accepted, .. })) {
            // RFC 6026: in Accepted the transaction only sends a 2xx the TU hands it again, and
            // absorbs retransmitted INVITEs: the kept copy of the 2xx is dead weight in every
            // later change of the record (a B2BUA rebuilds its 2xx from the kept request).
            txn.response = SharedBytes::default();
        }
    }

    /// Carries out a client transition's actions; `response` is the message that caused it.
    #[allow(clippy::too_many_arguments)] // The pieces of one transition; a struct would only rename them.
    fn apply_client(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        i: usize,
        call_id: &[u8],
        actions: Actions,
        response: Option<&Message<'_>>,
        fx: &mut Effects,
    ) {
        let mut ended = false;
        for action in actions.iter() {
            let txn = &mut record.clients[i];
            match action {
                Action::SendRequest => {
                    fx.requests += 1;
                    fx.sends.push((txn.peer, txn.request.clone()));
                }
                Action::SendAck => {
                    let Some(response) = response else { continue };
                    let mut slots = std::mem::take(&mut self.spare_slots);
                    let ack = written(&mut self.write_buf, txn.request.len() + 128, |out| {
                        sipshard_parser::parse(&txn.request, &mut slots)
                            .ok()
                            .and_then(|sent| sipshard_parser::write_ack(&sent, response, out).ok())
                    });
                    self.spare_slots = slots;
                    if let Some(out) = ack {
                        fx.requests += 1;
                        fx.sends.push((txn.peer, out));
                    }
                }
                Action::Arm(..) | Action::Cancel(_) => {
                    let call = fx.call.as_ref().expect("invariant: set by take_effects");
                    txn.timers.apply(&mut self.wheel, txn.id, call, now_ms, action);
                }
                Action::PassToTu => {
                    if let Some(response) = response {
                        self.relay_response(now_ms, record, i, call_id, response, fx);
                    }
                }
                Action::Timeout(_) | Action::TransportError => {
                    self.stats.transaction_failures += 1;
                    self.tu.on_failure(call_id);
                    let (server, cancel) = (txn.server, txn.cancel);
                    let code = if action == Action::TransportError { 503 } else { 408 };
                    if !cancel {
                        self.answer_from_client(now_ms, record, i, server, call_id, code, fx);
                    }
                }
                Action::Terminated => ended = true,
                Action::SendResponse => {}
            }
        }
        if ended {
            let mut txn = record.clients.swap_remove(i);
            self.forget_txn(&mut txn.timers);
            self.stats.client_transactions_ended += 1;
        } else if let ClientFsm::Invite(ClientInvite { state: ClientInviteState::Accepted, .. }) = record.clients[i].fsm
        {
            // A 2xx came: no retransmission, CANCEL or ACK is built from the request any more
            // (the ACK of a 2xx goes end to end, or from the B2BUA's dialog).
            record.clients[i].request = SharedBytes::default();
        }
    }

    /// §16.7 step 6 for a timeout or transport error: the server transaction gets a 408 or
    /// 503 of its own, unless a final response went up already. Built from the relayed request
    /// with this shard's Via removed.
    #[allow(clippy::too_many_arguments)] // The pieces of one answer; a struct would only rename them.
    fn answer_from_client(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        i: usize,
        server: u64,
        call_id: &[u8],
        code: u16,
        fx: &mut Effects,
    ) {
        if record.transactions.iter().find(|t| t.id == server).is_none_or(|t| t.answered) {
            return;
        }
        let reason = if code == 408 { "Request Timeout" } else { "Service Unavailable" };
        if record.bridge.is_some() {
            // A B2BUA answers from the request it received, not from the one it sent.
            return self.answer_kept(now_ms, record, server, call_id, code, reason, fx);
        }
        let request = record.clients[i].request.clone();
        let mut slots = std::mem::take(&mut self.spare_slots);
        let mut first = vec![0u8; request.len() + 256];
        let tag = self.tag();
        let tag = core::str::from_utf8(&tag).expect("invariant: hex digits");
        // Our Via is popped below; the one under it was marked when the request was relayed.
        let spec = ResponseSpec { code, reason, to_tag: Some(tag), headers: &[], body: b"", received_from: None };
        let answer = sipshard_parser::parse(&request, &mut slots)
            .ok()
            .and_then(|sent| write_response(&sent, &spec, &mut first).ok())
            .and_then(|n| {
                let mut inner = std::mem::take(&mut self.slots);
                let popped = sipshard_parser::parse(&first[..n], &mut inner).ok().and_then(|ours| {
                    written(&mut self.write_buf, n, |out| Editor::new(&ours).pop_via().ok()?.write(out).ok())
                });
                self.slots = inner;
                popped
            });
        self.spare_slots = slots;
        match answer {
            Some(answer) => self.server_respond(now_ms, record, server, call_id, answer, code, fx),
            None => self.drop_server_txn(record, server),
        }
    }

    /// §16.7: a response of client transaction `i` goes up through its server transaction
    /// with this shard's Via removed (100 Trying stops here, step 3).
    fn relay_response(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        i: usize,
        call_id: &[u8],
        response: &Message<'_>,
        fx: &mut Effects,
    ) {
        let Some(code) = response.status_code() else { return };
        let client = &record.clients[i];
        if code == 100 || client.cancel {
            return;
        }
        let server = client.server;
        let is_invite = matches!(client.fsm, ClientFsm::Invite(_));
        if record.bridge.is_some() {
            return self.bridge_response(now_ms, record, server, is_invite, call_id, response, code, fx);
        }
        // A NATed phone called at its alias answers with the Contact it registered: aliased too,
        // when this proxy Record-Routes the dialog (crate::nat).
        let aliased = (is_invite && code < 300 && record.dialog.is_some())
            .then(|| Some((response.header(HeaderName::Contact)?, request_uri_of(&client.request)?)))
            .flatten()
            .and_then(|(contact, uri)| crate::nat::answer_contact_with_alias(contact, uri, client.peer));
        let need = response.len() + aliased.as_ref().map_or(0, String::len);
        let popped = written(&mut self.write_buf, need, |out| {
            let mut editor = Editor::new(response);
            editor.pop_via().ok()?;
            if let Some(contact) = &aliased {
                editor.replace_header("Contact", contact.as_bytes()).ok()?;
            }
            editor.write(out).ok()
        });
        let Some(out) = popped else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if is_invite && code >= 200 {
            self.invite_answered(now_ms, record, code, fx);
        }
        if is_invite && (200..300).contains(&code) && record.dialog != Some(DialogState::Confirmed) {
            record.dialog = Some(DialogState::Confirmed);
            fx.hints = fx.hints | Hints::DIALOG_CONFIRMED;
        }
        if response.cseq().ok().flatten().is_some_and(|c| c.method == Method::Bye) && code >= 200 {
            record.dialog = Some(DialogState::Terminated);
        }
        if record.transactions.iter().any(|t| t.id == server) {
            self.server_respond(now_ms, record, server, call_id, out, code, fx);
        } else if let Some(peer) = upstream_of(response) {
            // The server transaction is gone (a 2xx retransmitted after timer L): §16.7 still relays it.
            fx.responses += 1;
            fx.sends.push((peer, out));
        }
    }

    fn on_response(&mut self, now_ms: u64, stripe: StripeId, call_id: &[u8], msg: &Message<'_>) {
        let Some(code) = msg.status_code() else { return };
        let Some(branch) = msg.top_via().ok().flatten().and_then(|v| v.branch) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let cancel = msg.cseq().ok().flatten().is_some_and(|c| c.method == Method::Cancel);
        let Some((mut record, stored)) = self.checkout_existing(stripe, call_id) else {
            return self.relay_stateless(msg);
        };
        let Some(i) = record.clients.iter().position(|c| *c.branch == *branch && c.cancel == cancel) else {
            self.table.unlock(stripe, call_id, Some(record)).expect("invariant: checked out above");
            return self.relay_stateless(msg);
        };
        let mut fx = self.take_effects(stripe, stored);
        let actions = record.clients[i].fsm.on(ClientEvent::Response(ResponseClass::of(code)), &self.config.timers);
        self.apply_client(now_ms, &mut record, i, call_id, actions, Some(msg), &mut fx);
        self.finish(stripe, call_id, record, fx);
    }

    /// §16.11: a response no transaction here knows goes to the next Via, if the top one is ours.
    fn relay_stateless(&mut self, msg: &Message<'_>) {
        let ours = msg.top_via().ok().flatten().is_some_and(|v| self.is_local(v.host, v.port));
        let peer = if ours { upstream_of(msg) } else { None };
        let Some(peer) = peer else {
            self.stats.stray_responses += 1;
            return;
        };
        if let Some(out) =
            written(&mut self.write_buf, msg.len(), |out| Editor::new(msg).pop_via().ok()?.write(out).ok())
        {
            self.stats.responses_relayed_stateless += 1;
            self.stats.responses_sent += 1;
            self.outputs.push_back(Output::Transmit { peer, bytes: out });
        }
    }

    /// Whether `host:port` is this server's address.
    fn is_local(&self, host: &str, port: Option<u16>) -> bool {
        is_local_address(host, port, self.config.local, self.config.shard_ports)
    }

    /// The ACK of a 2xx: relayed end to end where the role says (§16.6 with no transaction).
    fn relay_ack(&mut self, now_ms: u64, peer: Peer, dialog: Option<DialogState>, msg: &Message<'_>) {
        let ctx = self.context(now_ms, peer, dialog);
        let Some(relay) = self.tu.on_ack(&ctx, msg) else { return };
        let branch = self.branch();
        if let Some(out) = self.write_relayed(peer, msg, &relay, &branch) {
            self.stats.acks_relayed += 1;
            self.stats.requests_sent += 1;
            self.outputs.push_back(Output::Transmit { peer: relay.to, bytes: out });
        }
    }

    /// Check-in first, then the messages and timers the change caused (DESIGN.md §3 step 6).
    fn finish(&mut self, stripe: StripeId, call_id: &[u8], record: CallRecord, mut fx: Effects) {
        if record.is_idle() {
            if let Some(bridge) = &record.bridge {
                self.b_index.remove(bridge.b_call_id.as_bytes());
            }
            if record.call_timer_id != 0 {
                for (timer, _) in &record.call_timers {
                    fx.timer_ops.push(TimerOp::Cancel(record.call_timer_id, WheelTimer::Call(*timer)));
                }
            }
            let ended = if record.dialog == Some(DialogState::Terminated) { Hints::CALL_ENDED } else { Hints::NONE };
            self.table.remove(stripe, call_id, fx.hints | ended);
        } else if self.quiet {
            self.table.unlock(stripe, call_id, Some(record)).expect("invariant: checked out by this input");
        } else {
            let lingering = if record.is_lingering() { Hints::LINGERING } else { Hints::NONE };
            self.table
                .put_and_unlock(stripe, call_id, record, fx.hints | lingering)
                .expect("invariant: checked out by this input");
        }
        self.stats.responses_sent += fx.responses;
        self.stats.requests_sent += fx.requests;
        for (peer, bytes) in fx.sends.drain(..) {
            self.outputs.push_back(Output::Transmit { peer, bytes });
        }
        for op in fx.timer_ops.drain(..) {
            match op {
                TimerOp::Arm(id, timer, deadline) => {
                    let call = fx.call.clone().expect("invariant: set by take_effects");
                    let handle = self
                        .wheel
                        .arm(deadline, TimerKey { id, timer, call })
                        .expect("invariant: new transactions keep TIMER_HEADROOM free");
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
        fx.call = None;
        fx.hints = Hints::NONE;
        fx.responses = 0;
        fx.requests = 0;
        self.scratch = fx;
    }

    /// Checks out the record of a call that should exist, with its key as the table stores it;
    /// `None` if it is gone.
    fn checkout_existing(&mut self, stripe: StripeId, call_id: &[u8]) -> Option<(CallRecord, CallKey)> {
        match self.table.get_and_lock(stripe, call_id, false) {
            Ok(checkout) => Some((checkout.record.expect("invariant: a stored record is never empty"), checkout.key)),
            Err(TableError::NotFound) => None,
            Err(e) => panic!("invariant: a shard never holds a checkout across inputs ({e:?})"),
        }
    }

    /// Feeds a failed send to the transaction that made it: a response of a server
    /// transaction (§17.2.4) or a request of a client transaction (§17.1.4).
    fn transport_error(&mut self, now_ms: u64, peer: Peer, bytes: &[u8]) {
        let Some(call_id) = peek_call_id(bytes) else { return };
        let stripe = StripeId::of_call_id(call_id, self.stripes.stripe_count());
        let mut slots = std::mem::take(&mut self.slots);
        let target = sipshard_parser::parse(bytes, &mut slots).ok().and_then(|m| {
            if m.is_request() {
                let branch = m.top_via().ok().flatten()?.branch?;
                Some(Err((Box::<str>::from(branch), m.method() == Some(Method::Cancel))))
            } else {
                server_key_of_response(&m).ok().map(Ok)
            }
        });
        self.slots = slots;
        let Some(target) = target else { return };
        let Some((mut record, stored)) = self.checkout_existing(stripe, call_id) else { return };
        let mut fx = self.take_effects(stripe, stored);
        match target {
            Ok(key) => {
                if let Some(i) = record.transactions.iter().position(|t| t.key == key) {
                    let actions = record.transactions[i].fsm.on(ServerEvent::TransportError, &self.config.timers);
                    self.apply_server(now_ms, &mut record, i, call_id, actions, &mut fx);
                }
            }
            Err((branch, cancel)) => {
                let found = record.clients.iter().position(|c| c.branch == branch && c.cancel == cancel);
                if let Some(i) = found.filter(|&i| record.clients[i].peer == peer) {
                    let actions = record.clients[i].fsm.on(ClientEvent::TransportError, &self.config.timers);
                    self.apply_client(now_ms, &mut record, i, call_id, actions, None, &mut fx);
                }
            }
        }
        self.finish(stripe, call_id, record, fx);
    }

    fn fire_timers(&mut self, now_ms: u64) {
        while let Some((_, TimerKey { id, timer, call })) = self.wheel.poll_expired(now_ms) {
            // A call timer's handle is indexed here; a transaction's is in its record (cleared as it fires).
            if matches!(timer, WheelTimer::Call(_)) {
                self.armed.remove(&(id, timer));
            }
            self.fire_timer(now_ms, call, id, timer);
        }
    }

    /// One expired timer of transaction (or call-timer id) `id` in `call`.
    fn fire_timer(&mut self, now_ms: u64, call: CallRef, id: u64, wheel_timer: WheelTimer) {
        let (stripe, call_id) = (call.stripe, &call.key[..]);
        if let WheelTimer::Txn(timer) = wheel_timer
            && self.end_lone_transaction(stripe, call_id, id, timer)
        {
            return;
        }
        let Some((mut record, _)) = self.checkout_existing(stripe, call_id) else { return };
        let mut fx = self.take_effects(stripe, call.key.clone());
        let timer = match wheel_timer {
            WheelTimer::Txn(timer) => timer,
            WheelTimer::Call(timer) => {
                record.call_timers.retain(|(t, _)| *t != timer);
                self.call_timer_fired(now_ms, &mut record, call_id, timer, &mut fx);
                return self.finish(stripe, call_id, record, fx);
            }
        };
        if let Some(i) = record.transactions.iter().position(|t| t.id == id) {
            record.transactions[i].timers.clear(timer);
            let actions = record.transactions[i].fsm.on(ServerEvent::Timer(timer), &self.config.timers);
            self.apply_server(now_ms, &mut record, i, call_id, actions, &mut fx);
        } else if let Some(i) = record.clients.iter().position(|c| c.id == id) {
            record.clients[i].timers.clear(timer);
            let actions = record.clients[i].fsm.on(ClientEvent::Timer(timer), &self.config.timers);
            self.apply_client(now_ms, &mut record, i, call_id, actions, None, &mut fx);
        }
        self.finish(stripe, call_id, record, fx);
    }

    /// The usual end of a call's record: the last timer (J, I or L) of the server transaction
    /// that is all the record holds. The record is removed without a checkout, as the general
    /// path would remove it (same change, same counters), reading only what decides that.
    /// Returns whether it was; anything else takes the general path.
    fn end_lone_transaction(&mut self, stripe: StripeId, call_id: &[u8], id: u64, timer: TxnTimer) -> bool {
        let Some((record, _)) = self.table.peek(stripe, call_id) else { return false };
        let [txn] = record.transactions.as_slice() else { return false };
        let lone = txn.id == id
            && record.clients.is_empty()
            && record.bindings.is_empty()
            && record.bridge.is_none()
            && record.call_timers.is_empty()
            && matches!(record.dialog, None | Some(DialogState::Terminated))
            && txn.timers.iter().all(|(armed, _)| armed == timer);
        if !lone {
            return false;
        }
        // The transition on a copy of the state machine: it must end the transaction and do nothing else.
        let mut fsm = txn.fsm;
        let transition = fsm.on(ServerEvent::Timer(timer), &self.config.timers);
        let mut actions = transition.iter();
        if actions.next() != Some(Action::Terminated) || actions.next().is_some() {
            return false;
        }
        let ended = if record.dialog == Some(DialogState::Terminated) { Hints::CALL_ENDED } else { Hints::NONE };
        self.live_transactions -= 1;
        self.table.remove(stripe, call_id, ended);
        self.stats.transactions_ended += 1;
        true
    }

    /// Arms a call timer (the record's wheel id is made on first use).
    fn arm_call_timer(&mut self, record: &mut CallRecord, timer: CallTimer, deadline: u64, fx: &mut Effects) {
        if record.call_timer_id == 0 {
            record.call_timer_id = self.new_txn_id();
        }
        record.call_timers.retain(|(t, _)| *t != timer);
        record.call_timers.push((timer, deadline));
        fx.timer_ops.push(TimerOp::Arm(record.call_timer_id, WheelTimer::Call(timer), deadline));
    }

    fn cancel_call_timer(&mut self, record: &mut CallRecord, timer: CallTimer, fx: &mut Effects) {
        if record.call_timers.iter().any(|(t, _)| *t == timer) {
            record.call_timers.retain(|(t, _)| *t != timer);
            fx.timer_ops.push(TimerOp::Cancel(record.call_timer_id, WheelTimer::Call(timer)));
        }
    }

    /// A final response to an INVITE: no more waiting for an answer; a 2xx of the first
    /// INVITE starts the call's maximum duration.
    fn invite_answered(&mut self, now_ms: u64, record: &mut CallRecord, code: u16, fx: &mut Effects) {
        self.cancel_call_timer(record, CallTimer::NoAnswer, fx);
        self.cancel_call_timer(record, CallTimer::C, fx);
        let first_answer = !matches!(record.dialog, Some(DialogState::Confirmed | DialogState::Terminated));
        if (200..300).contains(&code) && first_answer && record.call_timer_id != 0 {
            let deadline = now_ms + self.config.max_call_duration.as_millis() as u64;
            self.arm_call_timer(record, CallTimer::MaxDuration, deadline, fx);
        }
    }

    /// A call timer fired.
    fn call_timer_fired(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        call_id: &[u8],
        timer: CallTimer,
        fx: &mut Effects,
    ) {
        match timer {
            CallTimer::NoAnswer | CallTimer::C => {
                // §16.8: CANCEL what still rings, and answer the caller 408 ourselves.
                let pending = record
                    .clients
                    .iter()
                    .position(|c| !c.cancel && !c.fsm.has_final() && matches!(c.fsm, ClientFsm::Invite(_)));
                let Some(i) = pending else { return };
                let c = &record.clients[i];
                let (peer, branch, server) = (c.peer, c.branch.clone(), c.server);
                let cancel = self.cancel_of(&c.request);
                self.answer_from_client(now_ms, record, i, server, call_id, 408, fx);
                if let Some(out) = cancel {
                    self.start_client(now_ms, record, server, branch, true, peer, out, fx);
                }
            }
            // A call already hung up (its BYE's transactions still finishing) is left alone.
            CallTimer::MaxDuration if record.dialog == Some(DialogState::Terminated) => {}
            CallTimer::MaxDuration => {
                record.dialog = Some(DialogState::Terminated);
                if record.bridge.is_some() {
                    // A B2BUA ends the call itself: BYE on both legs.
                    for side in [Side::A, Side::B] {
                        self.bridge_bye(now_ms, record, side, call_id, fx);
                    }
                }
            }
            CallTimer::SessionExpires => {}
        }
    }

    /// B2BUA: a BYE of our own on one leg (maximum duration), with no server transaction.
    fn bridge_bye(&mut self, now_ms: u64, record: &mut CallRecord, side: Side, call_id: &[u8], fx: &mut Effects) {
        let leg = record.bridge.as_mut().expect("invariant: a bridged record").leg_mut(side);
        leg.local_cseq += 1;
        let cseq = leg.local_cseq;
        let (peer, branch, bye) = self.write_on_leg(record, side, call_id, "BYE", cseq, None, b"");
        self.start_client(now_ms, record, 0, branch.into(), false, peer, bye, fx);
    }

    /// B2BUA: a request on one leg's dialog, with a fresh Via; returns where it goes, its
    /// branch and its bytes.
    #[allow(clippy::too_many_arguments)] // The parts of one request; a struct would only rename them.
    fn write_on_leg(
        &mut self,
        record: &CallRecord,
        side: Side,
        call_id: &[u8],
        method: &str,
        cseq: u32,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> (Peer, String, SharedBytes) {
        let bridge = record.bridge.as_ref().expect("invariant: a bridged record");
        let peer = bridge.leg(side).peer;
        let leg_call_id: String = match side {
            Side::A => String::from_utf8_lossy(call_id).into_owned(),
            Side::B => bridge.b_call_id.to_string(),
        };
        let (via, branch) = self.via_for(peer);
        let contact = self.contact_for(peer);
        let request = LegRequest {
            method,
            cseq,
            call_id: &leg_call_id,
            via: &via,
            contact: &contact,
            max_forwards: 70,
            content_type,
            body,
        };
        (peer, branch, write_leg_request(bridge.leg(side), &request).into())
    }

    /// Keeps a B2BUA server transaction's request, to build its responses from.
    fn keep_request(&mut self, record: &mut CallRecord, id: u64, msg: &Message<'_>) {
        if let Some(txn) = record.transactions.iter_mut().find(|t| t.id == id) {
            txn.request = msg.as_bytes().into();
        }
    }

    /// Our Contact URI toward a peer.
    fn contact_for(&self, peer: Peer) -> String {
        match peer.transport {
            Transport::Udp => self.udp_contact.clone(),
            Transport::Tcp => format!("sip:{};transport=tcp", self.config.local),
        }
    }

    /// A Via value with a fresh branch toward `peer`, and the branch.
    fn via_for(&mut self, peer: Peer) -> (String, String) {
        let branch = self.branch();
        let prefix = &self.via_prefix[usize::from(peer.transport == Transport::Tcp)];
        (format!("{prefix}{branch}"), branch)
    }

    /// B2BUA, a new call: both dialogs into the record, the B leg's INVITE out.
    #[allow(clippy::too_many_arguments)] // The pieces of one call; a struct would only rename them.
    fn bridge_call(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        server: u64,
        stripe: StripeId,
        call_id: &[u8],
        peer: Peer,
        msg: &Message<'_>,
        relay: &Relay,
        fx: &mut Effects,
    ) {
        let text = |name| msg.header(name).and_then(|v| core::str::from_utf8(v).ok()).unwrap_or_default();
        let (from, to) = (text(HeaderName::From), text(HeaderName::To));
        let from_tag = msg.from().ok().flatten().and_then(|f| f.tag()).unwrap_or_default();
        let a_contact = msg.contacts().find_map(|c| match c {
            Ok(sipshard_parser::Contact::Address { addr, .. }) => Some(addr.uri.raw),
            _ => None,
        });
        let request_uri = msg.request_line().map(|l| l.uri).unwrap_or_default();
        let cseq = msg.cseq().ok().flatten().map_or(1, |c| c.seq);
        let a_tag = self.tag();
        let b_tag = self.tag();
        let b_call_id = b_leg_call_id(stripe, self.next_token());
        let as_text = |tag: [u8; 16]| -> Box<str> { core::str::from_utf8(&tag).expect("invariant: hex digits").into() };
        let a_leg = Dialog {
            local_tag: as_text(a_tag),
            remote_tag: from_tag.into(),
            local_uri: without_tag(to).into(),
            remote_uri: without_tag(from).into(),
            remote_target: a_contact.unwrap_or(request_uri).into(),
            route_set: msg.record_routes().filter_map(Result::ok).map(|r| format!("<{}>", r.uri.raw).into()).collect(),
            local_cseq: 0,
            remote_cseq: cseq,
            peer,
            state: DialogState::Early,
        };
        let b_leg = Dialog {
            local_tag: as_text(b_tag),
            remote_tag: "".into(),
            local_uri: without_tag(from).into(),
            remote_uri: without_tag(to).into(),
            remote_target: relay.request_uri.as_deref().unwrap_or(request_uri).into(),
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: 0,
            peer: relay.to,
            state: DialogState::Early,
        };
        let (via, branch) = self.via_for(relay.to);
        let contact = self.contact_for(relay.to);
        let max_forwards = msg.max_forwards().ok().flatten().unwrap_or(70).saturating_sub(1);
        let invite = write_leg_request(
            &b_leg,
            &LegRequest {
                method: "INVITE",
                cseq: 1,
                call_id: &b_call_id,
                via: &via,
                contact: &contact,
                max_forwards,
                content_type: msg.header(HeaderName::ContentType),
                body: msg.body(),
            },
        );
        self.b_index.insert(b_call_id.as_bytes().into(), call_id.into());
        record.bridge = Some(Box::new(B2buaCall { a_leg, b_leg, b_call_id: b_call_id.into(), ack_cseq: [0, 1] }));
        record.dialog = Some(DialogState::Early);
        self.start_client(now_ms, record, server, branch.into(), false, relay.to, invite.into(), fx);
    }

    /// B2BUA, a request inside the call from `side`: rebuilt on the other leg.
    #[allow(clippy::too_many_arguments)] // The pieces of one request; a struct would only rename them.
    fn bridge_request(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        server: u64,
        side: Side,
        call_id: &[u8],
        msg: &Message<'_>,
        fx: &mut Effects,
    ) {
        let method = msg.method().map(|m| m.as_str()).unwrap_or_default();
        let other = side.other();
        let bridge = record.bridge.as_mut().expect("invariant: a bridged record");
        if let Some(cseq) = msg.cseq().ok().flatten() {
            bridge.leg_mut(side).remote_cseq = cseq.seq;
        }
        let leg = bridge.leg_mut(other);
        leg.local_cseq += 1;
        let cseq = leg.local_cseq;
        if method == "INVITE" {
            bridge.ack_cseq[other as usize] = cseq;
        }
        let (peer, branch, request) =
            self.write_on_leg(record, other, call_id, method, cseq, msg.header(HeaderName::ContentType), msg.body());
        self.start_client(now_ms, record, server, branch.into(), false, peer, request, fx);
    }

    /// B2BUA, the ACK of a 2xx from `side`: the other leg gets its own ACK (no transaction).
    fn bridge_ack(&mut self, record: &mut CallRecord, side: Side, call_id: &[u8], msg: &Message<'_>, fx: &mut Effects) {
        let other = side.other();
        let bridge = record.bridge.as_ref().expect("invariant: a bridged record");
        let cseq = bridge.ack_cseq[other as usize];
        if cseq == 0 || bridge.leg(other).remote_tag.is_empty() {
            return;
        }
        let (peer, _, ack) =
            self.write_on_leg(record, other, call_id, "ACK", cseq, msg.header(HeaderName::ContentType), msg.body());
        self.stats.acks_relayed += 1;
        fx.requests += 1;
        fx.sends.push((peer, ack));
    }

    /// B2BUA, a response from one leg: the dialog learns from it, and the server transaction
    /// on the other leg answers with a response rebuilt from its own request.
    #[allow(clippy::too_many_arguments)] // The pieces of one response; a struct would only rename them.
    fn bridge_response(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        server: u64,
        is_invite: bool,
        call_id: &[u8],
        response: &Message<'_>,
        code: u16,
        fx: &mut Effects,
    ) {
        if is_invite && code >= 200 {
            self.invite_answered(now_ms, record, code, fx);
        }
        let bridge = record.bridge.as_mut().expect("invariant: a bridged record");
        let side = side_of(bridge, response);
        let leg = bridge.leg_mut(side);
        if is_invite && code > 100 && leg.remote_tag.is_empty() {
            if let Some(tag) = response.to().ok().flatten().and_then(|to| to.tag()) {
                leg.remote_tag = tag.into();
            }
        }
        if is_invite && (200..300).contains(&code) {
            if let Some(Ok(sipshard_parser::Contact::Address { addr, .. })) = response.contacts().next() {
                leg.remote_target = addr.uri.raw.into();
            }
            if leg.state != DialogState::Confirmed {
                // §12.1.2: the UAC's route set is the Record-Route of the 2xx, reversed.
                let mut routes: Vec<Box<str>> = response
                    .record_routes()
                    .filter_map(Result::ok)
                    .map(|r| format!("<{}>", r.uri.raw).into())
                    .collect();
                routes.reverse();
                leg.route_set = routes;
                leg.state = DialogState::Confirmed;
                bridge.leg_mut(side.other()).state = DialogState::Confirmed;
                record.dialog = Some(DialogState::Confirmed);
                fx.hints = fx.hints | Hints::DIALOG_CONFIRMED;
            }
        }
        if response.cseq().ok().flatten().is_some_and(|c| c.method == Method::Bye) && code >= 200 {
            record.dialog = Some(DialogState::Terminated);
        }
        let bridge = record.bridge.as_ref().expect("invariant: a bridged record");
        let to_tag = bridge.leg(side.other()).local_tag.clone();
        let contact = format!("<{}>", self.contact_for(bridge.leg(side.other()).peer));
        let Some(txn) = record.transactions.iter().find(|t| t.id == server) else { return };
        let (request, received_from) = (txn.request.clone(), Some(txn.peer.addr));
        let reason = response.status_line().map(|l| l.reason).unwrap_or_default();
        let mut headers: Vec<(&str, &[u8])> = vec![("Contact", contact.as_bytes())];
        if let Some(content_type) = response.header(HeaderName::ContentType) {
            headers.push(("Content-Type", content_type));
        }
        let spec = ResponseSpec {
            code,
            reason,
            to_tag: Some(&to_tag),
            headers: &headers,
            body: response.body(),
            received_from,
        };
        let mut slots = std::mem::take(&mut self.spare_slots);
        let answer = written(&mut self.write_buf, request.len() + response.len() + 256, |out| {
            sipshard_parser::parse(&request, &mut slots).ok().and_then(|req| write_response(&req, &spec, out).ok())
        });
        self.spare_slots = slots;
        if let Some(out) = answer {
            self.server_respond(now_ms, record, server, call_id, out, code, fx);
        }
    }

    /// Answers a B2BUA server transaction from its kept request (a timeout or transport error).
    #[allow(clippy::too_many_arguments)] // The pieces of one answer; a struct would only rename them.
    fn answer_kept(
        &mut self,
        now_ms: u64,
        record: &mut CallRecord,
        server: u64,
        call_id: &[u8],
        code: u16,
        reason: &str,
        fx: &mut Effects,
    ) {
        let Some(txn) = record.transactions.iter().find(|t| t.id == server) else { return };
        let (request, received_from) = (txn.request.clone(), Some(txn.peer.addr));
        let mut slots = std::mem::take(&mut self.spare_slots);
        let answer = sipshard_parser::parse(&request, &mut slots).ok().and_then(|req| {
            let tag = self.tag();
            let tag = core::str::from_utf8(&tag).expect("invariant: hex digits");
            let spec = ResponseSpec { code, reason, to_tag: Some(tag), headers: &[], body: b"", received_from };
            written(&mut self.write_buf, request.len() + 256, |out| write_response(&req, &spec, out).ok())
        });
        self.spare_slots = slots;
        match answer {
            Some(answer) => self.server_respond(now_ms, record, server, call_id, answer, code, fx),
            None => self.drop_server_txn(record, server),
        }
    }

    fn respond_stateless(&mut self, msg: &Message<'_>, peer: Peer, code: u16, reason: &'static str) {
        if msg.method() == Some(Method::Ack) {
            return;
        }
        let retry_after = self.config.retry_after_s.to_string();
        let retry: [(&str, &[u8]); 1] = [("Retry-After", retry_after.as_bytes())];
        let headers: &[(&str, &[u8])] = if code == 503 { &retry } else { &[] };
        let tag = self.tag();
        let tag = core::str::from_utf8(&tag).expect("invariant: hex digits");
        let spec = ResponseSpec { code, reason, to_tag: Some(tag), headers, body: b"", received_from: Some(peer.addr) };
        if let Some(bytes) = written(&mut self.write_buf, msg.len() + 256, |out| write_response(msg, &spec, out).ok()) {
            self.stats.responses_sent += 1;
            self.outputs.push_back(Output::Transmit { peer, bytes });
        }
    }
}

/// A request waiting for a lookup: who sent it, and its bytes.
type Parked = (Peer, Vec<u8>);

/// Keys with parked requests at most (beyond, a request for an unknown call gets its 481).
const MAX_PARKED_KEYS: usize = 1024;

/// Requests parked per key at most.
const MAX_PARKED_PER_KEY: usize = 4;

/// A record as a change: what a snapshot or a lookup answer carries.
/// Writes a message of at most `need` bytes with `write` into `buf` (the shard's reused write
/// buffer, grown to fit) and returns an exact-size copy: no zeroed buffer per message, and
/// what a record keeps holds no slack.
fn written(buf: &mut Vec<u8>, need: usize, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> Option<SharedBytes> {
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let n = write(&mut buf[..need])?;
    Some(SharedBytes::from(&buf[..n]))
}

/// A stored record as a change (for a snapshot or a lookup), lingering if it is.
fn copy_of(stripe: StripeId, key: &[u8], record: &CallRecord, version: u64) -> Change {
    let hints = if record.is_lingering() { Hints::LINGERING } else { Hints::NONE };
    Change { stripe, key: key.into(), version, hints, bytes: codec::encode(stripe, version, record) }
}

/// Whether a URI's or Via's `host` and `port` (5060 when absent) name `local` or one of the
/// shards' own ports at its IP: an IP literal, IPv6 with or without brackets. The one rule for
/// "addressed to this server".
pub(crate) fn is_local_address(
    host: &str,
    port: Option<u16>,
    local: SocketAddr,
    shard_ports: Option<ShardPorts>,
) -> bool {
    let port = port.unwrap_or(5060);
    (port == local.port() || shard_ports.is_some_and(|p| p.contains(port)))
        && host.trim_matches(['[', ']']).parse() == Ok(local.ip())
}

/// Which leg of a B2BUA call a message belongs to: the B leg has its own Call-ID.
fn side_of(bridge: &B2buaCall, msg: &Message<'_>) -> Side {
    match msg.call_id() {
        Ok(Some(id)) if *id == *bridge.b_call_id => Side::B,
        _ => Side::A,
    }
}

/// Where a response goes upstream (§18.2.2): the second Via (the first is this
/// server's), at its `received` address and `rport` when present. Only IP
/// literals: the shard does no DNS.
fn upstream_of(response: &Message<'_>) -> Option<Peer> {
    let via = response.vias().nth(1)?.ok()?;
    let transport = if via.transport.is_reliable() { Transport::Tcp } else { Transport::Udp };
    Some(Peer { addr: via.response_address()?, transport })
}

/// The Request-URI of a request as written (its first line's middle), if it reads as text.
fn request_uri_of(request: &[u8]) -> Option<&str> {
    let line = &request[..request.iter().position(|&c| c == b'\r').unwrap_or(request.len())];
    let mut parts = line.split(|&c| c == b' ');
    let (_, uri) = (parts.next()?, parts.next()?);
    core::str::from_utf8(uri).ok()
}

#[derive(Copy, Clone, Debug)]
enum TimerOp {
    Arm(u64, WheelTimer, u64),
    Cancel(u64, WheelTimer),
}

/// What the wheel holds under an id: a transaction's timer, or a call's.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum WheelTimer {
    Txn(TxnTimer),
    Call(CallTimer),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `text` to the port; a response counts as one.
    fn send(fx: &mut Effects, port: u16, text: &str) {
        let peer = Peer { addr: SocketAddr::from(([127, 0, 0, 1], port)), transport: Transport::Udp };
        fx.sends.push((peer, SharedBytes::from(text.as_bytes())));
        fx.responses += u64::from(text.starts_with("SIP/2.0 "));
    }

    fn sent(fx: &Effects) -> Vec<&str> {
        fx.sends.iter().map(|(_, b)| core::str::from_utf8(b).expect("text")).collect()
    }

    /// `then` sent after a 100 Trying, `relayed_first` applied.
    fn after_trying(then: &[(u16, &str)]) -> Vec<String> {
        let mut fx = Effects::default();
        send(&mut fx, 5061, "SIP/2.0 180 earlier");
        let before_trying = fx.mark();
        send(&mut fx, 5061, "SIP/2.0 100 Trying");
        then.iter().for_each(|&(port, text)| send(&mut fx, port, text));
        fx.relayed_first(before_trying);
        sent(&fx).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn empty_shared_bytes_hold_no_allocation_and_a_record_keeps_its_wire_form() {
        // No shared empty value: a new transaction's empty response and request touch no count.
        assert!(SharedBytes::default().0.is_none());
        assert!(SharedBytes::from(&b""[..]).0.is_none() && SharedBytes::from(Vec::new()).0.is_none());
        let bytes = SharedBytes::from(&b"SIP/2.0 486 Busy Here\r\n"[..]);
        assert_eq!(&*bytes, b"SIP/2.0 486 Busy Here\r\n");
        assert_eq!(&*bytes.clone(), &*bytes);
        assert_eq!(&*SharedBytes::default(), b"");
        // Empty and kept bytes encode as serde bytes (empty, or the message) and decode back.
        let mut record = CallRecord::default();
        record.clients.push(ClientTxn {
            id: 1,
            server: 0,
            branch: "z9hG4bKc".into(),
            cancel: false,
            fsm: ClientFsm::NonInvite(ClientNonInvite::new(false, &TimerConfig::default())),
            peer: Peer { addr: SocketAddr::from(([127, 0, 0, 1], 5090)), transport: Transport::Udp },
            request: bytes.clone(),
            timers: TxnTimers::default(),
        });
        let mut emptied = record.clients[0].clone();
        (emptied.id, emptied.request) = (2, SharedBytes::default());
        record.clients.push(emptied);
        let (_, decoded) = codec::decode::<CallRecord>(&codec::encode(StripeId(3), 1, &record)).expect("decodes");
        assert_eq!(decoded, record);
        assert_eq!(&*decoded.clients[0].request, &*bytes);
        assert!(decoded.clients[1].request.0.is_none(), "an empty message decodes to no allocation");
    }

    #[test]
    fn a_relayed_invite_leaves_before_its_100_trying_but_a_response_stays_after_it() {
        assert_eq!(after_trying(&[(5090, "INVITE")]), ["SIP/2.0 180 earlier", "INVITE", "SIP/2.0 100 Trying"]);
        assert_eq!(
            after_trying(&[(5090, "INVITE"), (5090, "CANCEL")]),
            ["SIP/2.0 180 earlier", "INVITE", "CANCEL", "SIP/2.0 100 Trying"]
        );
        // The INVITE could not be relayed: its 500 must not overtake the 100.
        assert_eq!(
            after_trying(&[(5061, "SIP/2.0 500 Server Internal Error")]),
            ["SIP/2.0 180 earlier", "SIP/2.0 100 Trying", "SIP/2.0 500 Server Internal Error"]
        );
        assert_eq!(after_trying(&[]), ["SIP/2.0 180 earlier", "SIP/2.0 100 Trying"]);
        // No 100 Trying went out (it could not be written): the requests keep their order.
        let mut fx = Effects::default();
        let before_trying = fx.mark();
        send(&mut fx, 5090, "INVITE");
        send(&mut fx, 5090, "CANCEL");
        fx.relayed_first(before_trying);
        assert_eq!(sent(&fx), ["INVITE", "CANCEL"]);
    }
}
