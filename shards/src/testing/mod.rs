//! The deterministic test harness (feature `testing`): a [`Cluster`] of N
//! nodes × M shards driven by a fake clock, with in-memory links that lose,
//! duplicate, reorder and delay datagrams from a seed, and user agents
//! ([`Uac`]) that run real client transactions (figures 5 and 6) against it.
//! The same seed replays the same run, byte for byte. Callees ([`Uas`]) answer
//! what the cluster relays, so calls set up through a proxy or a B2BUA can be
//! killed over ([`Cluster::kill`]), handed back ([`Cluster::rejoin`]) and ended.

mod ua;

pub use ua::{CallSeen, Uas, in_dialog_request};

use core::time::Duration;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use sipshard_parser::{HeaderSlot, Message, Method, parse};

use crate::shard::{Decision, FinalResponse, Input, Output, Peer, RequestContext, Shard, ShardConfig, TransactionUser};
use crate::stripe::{NodeId, ShardId, StripeMap};
use crate::table::Change;
use crate::timer::TimerWheel;
use crate::transaction::matching::client_key;
use crate::transaction::{Action, ClientEvent, ClientInvite, ClientNonInvite, ResponseClass, TimerConfig, TxnTimer};

/// A small seeded generator (xorshift64*), so runs replay exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the links between user agents and the cluster do to datagrams.
#[derive(Copy, Clone, Debug, Default)]
pub struct LinkConfig {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by up to `reorder_ms`, overtaking others.
    pub reorder: f64,
    /// The hold-back of a reordered datagram, at most.
    pub reorder_ms: u64,
    /// Base one-way delay.
    pub delay_ms: u64,
}

/// A transaction user that answers every new request with a fixed response per method
/// and records which shard handled each Call-ID.
#[derive(Debug, Default)]
pub struct Responder {
    /// (node, shard) of every request passed up, by Call-ID.
    pub handled: HashMap<String, Vec<(NodeId, ShardId)>>,
    /// Transactions that failed (timer H or transport).
    pub failures: u64,
}

impl TransactionUser for Responder {
    fn on_request(&mut self, ctx: &RequestContext, request: &Message<'_>) -> Decision {
        if let Ok(Some(call_id)) = request.call_id() {
            self.handled.entry(call_id.to_owned()).or_default().push((ctx.node, ctx.shard));
        }
        match request.method() {
            // A final non-2xx keeps the INVITE inside the transaction layer (ACK, timers G/H/I).
            Some(Method::Invite) => FinalResponse::new(486, "Busy Here").into(),
            _ => FinalResponse::new(200, "OK").into(),
        }
    }

    fn on_failure(&mut self, _call_id: &[u8]) {
        self.failures += 1;
    }
}

#[derive(Clone, Debug)]
enum Dest {
    Shard {
        node: NodeId,
        shard: ShardId,
        from_node: Option<NodeId>,
        forwarded: bool,
    },
    Ua(SocketAddr),
    /// A change for a backup shard, over the replica link.
    Replica {
        node: NodeId,
        shard: ShardId,
        change: Change,
    },
}

/// The peer of a packet that no UA sent (replica changes).
const NO_PEER: Peer = Peer {
    addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    transport: crate::shard::Transport::Tcp,
};

#[derive(Clone, Debug)]
struct Packet {
    dest: Dest,
    peer: Peer,
    bytes: Vec<u8>,
}

/// How a UA transaction ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A final response with this status code.
    Final(u16),
    /// Timer B or F fired.
    TimedOut,
}

#[derive(Clone, Debug)]
enum ClientFsm {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

#[derive(Clone, Debug)]
struct UacTxn {
    fsm: ClientFsm,
    request: Vec<u8>,
    target: (NodeId, ShardId),
    outcome: Option<Outcome>,
    over: bool,
    /// The first 2xx of a dialog-creating INVITE (the dialog it set up).
    ok: Option<Vec<u8>>,
    /// For a request inside a dialog: the dialog's INVITE and 2xx (its route set).
    dialog: Option<(Vec<u8>, Vec<u8>)>,
}

/// A user agent client: sends requests through client transactions, retransmitting per T1.
#[derive(Debug)]
pub struct Uac {
    /// Its address.
    pub peer: Peer,
    txns: BTreeMap<String, UacTxn>,
    wheel: TimerWheel<(u64, TxnTimer)>,
    branch_ids: HashMap<u64, String>,
    next: u64,
}

impl Uac {
    fn new(peer: Peer) -> Self {
        Uac { peer, txns: BTreeMap::new(), wheel: TimerWheel::new(200_000, 0), branch_ids: HashMap::new(), next: 1 }
    }

    /// Outcomes of finished transactions, by branch.
    pub fn outcomes(&self) -> impl Iterator<Item = (&str, Option<Outcome>)> {
        self.txns.iter().map(|(b, t)| (b.as_str(), t.outcome))
    }

    /// Transactions not yet terminated.
    pub fn live(&self) -> usize {
        self.txns.values().filter(|t| !t.over).count()
    }

    /// The outcome of the transaction with this branch (as sent, `z9hG4bK...`).
    pub fn outcome(&self, branch: &str) -> Option<Outcome> {
        self.txns.get(branch).and_then(|t| t.outcome)
    }

    /// The dialogs set up: (INVITE branch, the INVITE, its first 2xx), in branch order.
    pub fn dialogs(&self) -> impl Iterator<Item = (&str, &[u8], &[u8])> {
        self.txns.iter().filter_map(|(b, t)| Some((b.as_str(), t.request.as_slice(), t.ok.as_deref()?)))
    }
}

/// N nodes × M shards on a fake clock.
pub struct Cluster<T> {
    /// Shards, by node then shard.
    pub nodes: Vec<Vec<Shard<T>>>,
    /// User agents.
    pub uas: Vec<Uac>,
    map: StripeMap,
    base: Instant,
    now_ms: u64,
    rng: Rng,
    link: LinkConfig,
    queue: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    timers: TimerConfig,
    /// Datagrams dropped by the links.
    pub lost: u64,
    /// Nodes killed, and the survivor their address moved to (a floating IP).
    dead: HashMap<NodeId, NodeId>,
    /// Callees.
    pub callees: Vec<Uas>,
    /// The map of the full cluster (where every stripe lives when every node is up).
    home: StripeMap,
    shards: u16,
    seed: u64,
    replicate: bool,
    make_tu: Box<dyn FnMut() -> T>,
    /// A node cut off from the others ([`Cluster::partition`]): no replica changes or
    /// forwarded messages cross between it and them.
    island: Option<NodeId>,
    /// Addresses of live nodes served by another node (a floating IP moved away from an island).
    moved: HashMap<NodeId, NodeId>,
}

impl<T: TransactionUser + 'static> Cluster<T> {
    /// `nodes` × `shards` shards, each with a transaction user from `tu`, links per `link`.
    pub fn new(nodes: u16, shards: u16, seed: u64, link: LinkConfig, tu: impl FnMut() -> T + 'static) -> Self {
        Self::build(nodes, shards, seed, link, tu, false)
    }

    /// As [`Cluster::new`], with replication on: every change of a record reaches the stripe's
    /// backup shards at once (a reliable replica link), where it is kept dormant until
    /// [`Cluster::kill`] makes them owners.
    pub fn replicated(nodes: u16, shards: u16, seed: u64, link: LinkConfig, tu: impl FnMut() -> T + 'static) -> Self {
        Self::build(nodes, shards, seed, link, tu, true)
    }

    fn build(
        nodes: u16,
        shards: u16,
        seed: u64,
        link: LinkConfig,
        tu: impl FnMut() -> T + 'static,
        replicate: bool,
    ) -> Self {
        let node_ids: Vec<NodeId> = (0..nodes).map(NodeId).collect();
        let map = StripeMap::balanced(1, crate::stripe::DEFAULT_STRIPES, &node_ids, shards, 2);
        // The fake clock needs one anchor Instant (std offers no other constructor);
        // no real time is read after it: every later instant is base + simulated ms.
        #[allow(clippy::disallowed_methods)]
        let base = Instant::now();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            uas: Vec::new(),
            map: map.clone(),
            base,
            now_ms: 0,
            rng: Rng::new(seed),
            link,
            queue: BTreeMap::new(),
            seq: 0,
            timers: TimerConfig::default(),
            lost: 0,
            dead: HashMap::new(),
            callees: Vec::new(),
            home: map,
            shards,
            seed,
            replicate,
            make_tu: Box::new(tu),
            island: None,
            moved: HashMap::new(),
        };
        cluster.nodes = node_ids.iter().map(|&node| cluster.start_node(node)).collect();
        cluster
    }

    /// The shards of `node` as a fresh process starts them: empty tables, the current map,
    /// the cluster's time base (records carry deadlines on it).
    fn start_node(&mut self, node: NodeId) -> Vec<Shard<T>> {
        let now = self.now();
        (0..self.shards)
            .map(|s| {
                let config = ShardConfig {
                    node,
                    shard: ShardId(s),
                    local: Self::address_of(node),
                    shard_ports: None,
                    stripes: self.map.clone(),
                    max_calls: 100_000,
                    max_timers: 400_000,
                    timers: self.timers,
                    seed: self.seed ^ (u64::from(node.0) << 32) ^ u64::from(s) ^ (self.now_ms << 40),
                    replicate: self.replicate,
                    retry_after_s: 5,
                    registrar: None,
                    max_message_bytes: crate::shard::DEFAULT_MAX_MESSAGE_BYTES,
                    no_answer: crate::shard::DEFAULT_NO_ANSWER,
                    max_call_duration: crate::shard::DEFAULT_MAX_CALL_DURATION,
                    lookup_before_481: false,
                };
                Shard::with_clock(config, (self.make_tu)(), self.base, now)
            })
            .collect()
    }

    /// The SIP address of `node` (10.0.n.1:5060).
    pub fn address_of(node: NodeId) -> SocketAddr {
        SocketAddr::from(([10, 0, node.0 as u8, 1], 5060))
    }

    /// The node whose address this is, if any (where a datagram sent to it lands: the node,
    /// or the survivor its address moved to).
    fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        let node = NodeId((0..self.nodes.len() as u16).find(|&n| Self::address_of(NodeId(n)) == addr)?);
        Some(self.alive(node))
    }

    /// Gives every live shard `view` (the map after a kill, a readmit or a restore).
    fn adopt(&mut self, view: StripeMap) {
        self.map = view;
        let now = self.now();
        for n in 0..self.nodes.len() {
            if self.dead.contains_key(&NodeId(n as u16)) {
                continue;
            }
            for s in 0..self.nodes[n].len() {
                let view = self.map.clone();
                self.nodes[n][s].handle(now, Input::View(&view));
                self.drain(NodeId(n as u16), ShardId(s as u16), None);
            }
        }
    }

    /// Kills `node` (kill -9: its state is gone, nothing more from it) and moves its address to
    /// `survivor`; every live shard gets the view without `node`, so the stripes it owned move
    /// to their backups.
    pub fn kill(&mut self, node: NodeId, survivor: NodeId) {
        assert!(node != survivor && !self.dead.contains_key(&survivor), "the survivor must live");
        self.dead.insert(node, survivor);
        let view = self.map.without(node);
        self.adopt(view);
    }

    /// Restarts a killed `node` as the runtime's rejoin does: a fresh process (empty tables)
    /// gets its address back and is readmitted as a backup of its stripes
    /// ([`StripeMap::readmit`]); every other node sends it a snapshot of those stripes; then
    /// the stripes it owns at home move back to it ([`StripeMap::restore`]): their records go
    /// dormant where they were and live on `node`, transactions in flight included.
    pub fn rejoin(&mut self, node: NodeId) {
        assert!(self.dead.remove(&node).is_some(), "only a killed node rejoins");
        let fresh = self.start_node(node);
        self.nodes[node.0 as usize] = fresh;
        let readmitted = self.map.readmit(node, &self.home);
        self.adopt(readmitted);
        for from in self.live_nodes().filter(|&n| n != node).collect::<Vec<_>>() {
            self.send_snapshot(from, node);
        }
        self.hand_back(node);
    }

    /// Cuts `island` off from the other nodes (a partition: both sides keep running): each side
    /// finds the other silent and takes a view without it, so the island owns every stripe it
    /// holds a copy of, and the others every stripe they do. The island's SIP address moves to
    /// `address_to` (the floating IP goes where the majority is): the UAs reach that side only.
    pub fn partition(&mut self, island: NodeId, address_to: NodeId) {
        assert!(self.island.is_none() && island != address_to, "one partition at a time");
        self.island = Some(island);
        self.moved.insert(island, address_to);
        let others: Vec<NodeId> = self.live_nodes().filter(|&n| n != island).collect();
        let island_view = others.iter().fold(self.map.clone(), |view, &o| view.without(o));
        let rest_view = self.map.without(island);
        self.give(island, &island_view);
        for node in others {
            self.give(node, &rest_view);
        }
    }

    /// Heals the partition as the runtime does when the links come back: each side readmits
    /// the other (both made views of their own), the views settle on the one that supersedes
    /// the rest, each node sends each node across every copy it holds of that node's home
    /// stripes (the owner keeps the newer copy of each call), and the stripes go home.
    pub fn heal(&mut self) {
        let island = self.island.take().expect("a partition to heal");
        self.moved.remove(&island);
        let others: Vec<NodeId> = self.live_nodes().filter(|&n| n != island).collect();
        let island_view = others.iter().fold(self.view_of(island), |view, &o| view.readmit(o, &self.home));
        self.give(island, &island_view);
        let rest_view = self.view_of(others[0]).readmit(island, &self.home);
        for &node in &others {
            self.give(node, &rest_view);
        }
        self.converge();
        for &node in &others {
            self.send_snapshot(island, node);
            self.send_snapshot(node, island);
        }
        for node in self.live_nodes().collect::<Vec<_>>() {
            self.hand_back(node);
        }
    }

    fn live_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len() as u16).map(NodeId).filter(|n| !self.dead.contains_key(n))
    }

    /// The view `node` holds (its shards share one).
    fn view_of(&self, node: NodeId) -> StripeMap {
        self.nodes[node.0 as usize][0].stripe_map().clone()
    }

    /// Gives `view` to every shard of `node` (taken if it supersedes theirs).
    fn give(&mut self, node: NodeId, view: &StripeMap) {
        let now = self.now();
        for s in 0..self.nodes[node.0 as usize].len() {
            self.nodes[node.0 as usize][s].handle(now, Input::View(view));
            self.drain(node, ShardId(s as u16), None);
        }
    }

    /// Views travel on the links until every node holds the one that supersedes the others.
    fn converge(&mut self) {
        let nodes: Vec<NodeId> = self.live_nodes().collect();
        let mut best = self.view_of(nodes[0]);
        for &node in &nodes[1..] {
            let view = self.view_of(node);
            if view.supersedes(&best) {
                best = view;
            }
        }
        self.adopt(best);
    }

    /// Node `from` sends node `to` every copy it holds (live or dormant) of the stripes `to`
    /// owns or backs up at home, shard by shard.
    fn send_snapshot(&mut self, from: NodeId, to: NodeId) {
        let now = self.now();
        for stripe in (0..self.home.stripe_count()).map(crate::StripeId) {
            let home = *self.home.placement(stripe);
            if home.owner_node() != to && !home.backups().any(|b| b == to) {
                continue;
            }
            let shard = home.shard();
            for change in self.nodes[from.0 as usize][shard.0 as usize].snapshot(stripe) {
                self.nodes[to.0 as usize][shard.0 as usize].handle(now, Input::Replica(&change));
                self.drain(to, shard, None);
            }
        }
    }

    /// The node holding stripes that are `node`'s at home gives them back (a new view).
    fn hand_back(&mut self, node: NodeId) {
        let current = self.view_of(node);
        let away = (0..current.stripe_count())
            .map(crate::StripeId)
            .any(|s| self.home.owner(s).node == node && current.owner(s).node != node);
        if away {
            let restored = current.restore(node, &self.home);
            self.adopt(restored);
        }
    }

    /// Where a packet for `node` goes now: the node itself, or the survivor its address moved to.
    fn alive(&self, node: NodeId) -> NodeId {
        let mut node = node;
        while let Some(&to) = self.dead.get(&node).or(self.moved.get(&node)) {
            node = to;
        }
        node
    }

    /// Whether the partition separates `a` and `b`.
    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.island.is_some_and(|i| a != b && (a == i || b == i))
    }

    /// Adds a UA at 10.0.0.x:5060 over `transport`; returns its index.
    pub fn add_uac(&mut self, transport: crate::shard::Transport) -> usize {
        let addr: SocketAddr =
            format!("10.1.{}.{}:5060", self.uas.len() / 250, self.uas.len() % 250 + 1).parse().expect("valid address");
        self.uas.push(Uac::new(Peer { addr, transport }));
        self.uas.len() - 1
    }

    /// Adds a callee at 10.2.0.x:5060 (UDP); returns its index.
    pub fn add_uas(&mut self) -> usize {
        let addr = SocketAddr::from(([10, 2, 0, self.callees.len() as u8 + 1], 5060));
        let peer = Peer { addr, transport: crate::shard::Transport::Udp };
        self.callees.push(Uas::new(peer, self.timers));
        self.callees.len() - 1
    }

    /// Sends a request inside a dialog UA `ua` set up (see [`in_dialog_request`]) as a new
    /// client transaction, to the node its first hop names (any shard: SO_REUSEPORT picks).
    /// Returns false when the dialog's messages lack what the request needs.
    pub fn send_in_dialog(
        &mut self,
        ua: usize,
        invite: &[u8],
        ok: &[u8],
        method: &str,
        cseq: u32,
        branch: &str,
    ) -> bool {
        let from = self.uas[ua].peer.addr;
        let Some((request, hop)) = in_dialog_request(method, invite, ok, cseq, branch, from) else { return false };
        let Some(node) = self.node_at(hop) else { return false };
        let shard = ShardId(self.rng.below(u64::from(self.shards)) as u16);
        self.start_request(ua, node, shard, request);
        if let Some(txn) = self.uas[ua].txns.get_mut(&format!("z9hG4bK{branch}")) {
            txn.dialog = Some((invite.to_vec(), ok.to_vec()));
        }
        true
    }

    /// Sends `bytes` from `from` to the cluster address `to` (any shard of the node that holds
    /// it); dropped when no node holds it.
    fn send_to_cluster(&mut self, from: Peer, to: SocketAddr, bytes: Vec<u8>) {
        let Some(node) = self.node_at(to) else { return };
        let shard = ShardId(self.rng.below(u64::from(self.shards)) as u16);
        self.inject(from, node, shard, bytes);
    }

    /// The fake clock, in ms since the start.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The cluster's stripe map.
    pub fn stripe_map(&self) -> &StripeMap {
        &self.map
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn schedule(&mut self, at: u64, packet: Packet) {
        self.seq += 1;
        self.queue.insert((at, self.seq), packet);
    }

    /// Sends a datagram over a lossy link (UA ↔ cluster).
    fn send_lossy(&mut self, packet: Packet) {
        if self.rng.chance(self.link.loss) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.link.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = self.now_ms + self.link.delay_ms;
            if self.rng.chance(self.link.reorder) {
                at += self.rng.below(self.link.reorder_ms + 1);
            }
            self.schedule(at, packet.clone());
        }
    }

    /// Injects a datagram as a UA at `from` would send it, to (`node`, `shard`).
    pub fn inject(&mut self, from: Peer, node: NodeId, shard: ShardId, bytes: Vec<u8>) {
        self.send_lossy(Packet {
            dest: Dest::Shard { node, shard, from_node: None, forwarded: false },
            peer: from,
            bytes,
        });
    }

    /// Starts a client transaction at UA `ua`: `request` (with a Via branch the UA chose) to (`node`, `shard`).
    pub fn start_request(&mut self, ua: usize, node: NodeId, shard: ShardId, request: Vec<u8>) {
        let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
        let msg = parse(&request, &mut slots).expect("test requests parse");
        let branch =
            msg.top_via().ok().flatten().and_then(|v| v.branch).expect("test requests have a branch").to_owned();
        let invite = msg.method() == Some(Method::Invite);
        let reliable = self.uas[ua].peer.transport == crate::shard::Transport::Tcp;
        let mut fsm = if invite {
            ClientFsm::Invite(ClientInvite::new(reliable, &self.timers))
        } else {
            ClientFsm::NonInvite(ClientNonInvite::new(reliable, &self.timers))
        };
        let actions = match &mut fsm {
            ClientFsm::Invite(f) => f.on(ClientEvent::Send, &self.timers),
            ClientFsm::NonInvite(f) => f.on(ClientEvent::Send, &self.timers),
        };
        let uac = &mut self.uas[ua];
        let txn = UacTxn { fsm, request, target: (node, shard), outcome: None, over: false, ok: None, dialog: None };
        uac.txns.insert(branch.clone(), txn);
        self.apply_uac(ua, &branch, actions.iter().collect(), None);
    }

    fn apply_uac(&mut self, ua: usize, branch: &str, actions: Vec<Action>, response: Option<(u16, &[u8])>) {
        let now_ms = self.now_ms;
        let peer = self.uas[ua].peer;
        for action in actions {
            let uac = &mut self.uas[ua];
            let Some(txn) = uac.txns.get_mut(branch) else { return };
            let (node, shard) = txn.target;
            match action {
                Action::SendRequest => {
                    let bytes = txn.request.clone();
                    self.inject(peer, node, shard, bytes);
                }
                Action::SendAck => {
                    let ack = ack_for(&txn.request, response.map(|r| r.1).unwrap_or_default());
                    self.inject(peer, node, shard, ack);
                }
                Action::PassToTu => {
                    if let Some((code, _)) = response {
                        if code >= 200 && txn.outcome.is_none() {
                            txn.outcome = Some(Outcome::Final(code));
                        }
                    }
                }
                Action::Timeout(_) | Action::TransportError => txn.outcome = Some(Outcome::TimedOut),
                Action::Arm(timer, after) => {
                    let id = uac.next;
                    uac.next += 1;
                    uac.branch_ids.insert(id, branch.to_owned());
                    uac.wheel.arm(now_ms + after.as_millis() as u64, (id, timer)).expect("UA wheel room");
                }
                // Cancelled timers fire into a transaction that ignores them.
                Action::Cancel(_) => {}
                Action::Terminated => txn.over = true,
                Action::SendResponse => {}
            }
        }
    }

    fn deliver(&mut self, packet: Packet) {
        match packet.dest {
            Dest::Ua(addr) => {
                if let Some(callee) = self.callees.iter().position(|u| u.peer.addr == addr) {
                    let sends = self.callees[callee].on_request(self.now_ms, &packet.bytes);
                    let from = self.callees[callee].peer;
                    for (to, bytes) in sends {
                        self.send_to_cluster(from, to, bytes);
                    }
                    return;
                }
                let Some(ua) = self.uas.iter().position(|u| u.peer.addr == addr) else { return };
                let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
                let Ok(msg) = parse(&packet.bytes, &mut slots) else { return };
                let (Some(code), Ok(key)) = (msg.status_code(), client_key(&msg)) else { return };
                let branch = key.branch.to_string();
                let timers = self.timers;
                let peer = self.uas[ua].peer;
                let Some(txn) = self.uas[ua].txns.get_mut(&branch) else { return };
                let cseq = msg.cseq().ok().flatten();
                if let Some(cseq) = cseq.filter(|c| (200..300).contains(&code) && c.method == Method::Invite) {
                    // §13.2.2.4: the caller ACKs every 2xx of its INVITE (retransmissions too).
                    if txn.ok.is_none() && !has_to_tag(&txn.request) {
                        txn.ok = Some(packet.bytes.clone());
                    }
                    let ack_branch = format!("{branch}-ack");
                    // A re-INVITE's 2xx carries no Record-Route: its ACK follows the dialog's route set.
                    let (invite, ok) = txn.dialog.as_ref().map_or((&txn.request, &packet.bytes), |(i, o)| (i, o));
                    if let Some((ack, hop)) = in_dialog_request("ACK", invite, ok, cseq.seq, &ack_branch, peer.addr) {
                        self.send_to_cluster(peer, hop, ack);
                    }
                }
                let Some(txn) = self.uas[ua].txns.get_mut(&branch) else { return };
                let event = ClientEvent::Response(ResponseClass::of(code));
                let actions = match &mut txn.fsm {
                    ClientFsm::Invite(f) => f.on(event, &timers),
                    ClientFsm::NonInvite(f) => f.on(event, &timers),
                };
                self.apply_uac(ua, &branch, actions.iter().collect(), Some((code, &packet.bytes)));
            }
            Dest::Replica { node, shard, change } => {
                if self.dead.contains_key(&node) {
                    return;
                }
                let now = self.now();
                self.nodes[node.0 as usize][shard.0 as usize].handle(now, Input::Replica(&change));
                self.drain(node, shard, None);
            }
            Dest::Shard { node, shard, from_node, forwarded } => {
                let node = self.alive(node);
                let now = self.now();
                let input = match (from_node, forwarded) {
                    (Some(from), _) => Input::FromNode { node: from, peer: packet.peer, bytes: &packet.bytes },
                    (None, true) => Input::Forwarded { peer: packet.peer, bytes: &packet.bytes },
                    (None, false) => Input::Datagram { peer: packet.peer, bytes: &packet.bytes },
                };
                self.nodes[node.0 as usize][shard.0 as usize].handle(now, input);
                self.drain(node, shard, Some(&packet));
            }
        }
    }

    /// Carries out a shard's outputs (STYLE.md: drain all output before the next input).
    fn drain(&mut self, node: NodeId, shard: ShardId, input: Option<&Packet>) {
        while let Some(output) = self.nodes[node.0 as usize][shard.0 as usize].poll_output() {
            match output {
                Output::Transmit { peer, bytes } => {
                    self.send_lossy(Packet { dest: Dest::Ua(peer.addr), peer, bytes: bytes.to_vec() });
                }
                Output::Forward { shard: to } => {
                    let input = input.expect("invariant: only an input is forwarded");
                    // The channel mesh: same node, no loss, no delay.
                    let dest = Dest::Shard { node, shard: to, from_node: None, forwarded: true };
                    self.schedule(self.now_ms, Packet { dest, peer: input.peer, bytes: input.bytes.clone() });
                }
                Output::ForwardToNode { node: to, shard: owner } => {
                    let input = input.expect("invariant: only an input is forwarded");
                    if self.cut(node, to) {
                        continue; // The link is down: dropped (the UA retransmits).
                    }
                    // Node links are TCP: reliable, 1 ms (the runtime first moves the message to
                    // shard `owner` of this node, whose link joins it to shard `owner` there).
                    let dest = Dest::Shard { node: to, shard: owner, from_node: Some(node), forwarded: true };
                    self.schedule(self.now_ms + 1, Packet { dest, peer: input.peer, bytes: input.bytes.clone() });
                }
                // The replica link: reliable, in order, delivered in the same step.
                Output::Replicate(change) => {
                    let placement =
                        *self.nodes[node.0 as usize][shard.0 as usize].stripe_map().placement(change.stripe);
                    let backups: Vec<NodeId> =
                        placement.backups().filter(|&b| b != node && !self.cut(node, b)).collect();
                    for backup in backups {
                        let dest = Dest::Replica { node: backup, shard: placement.shard(), change: change.clone() };
                        self.schedule(self.now_ms, Packet { dest, peer: NO_PEER, bytes: Vec::new() });
                    }
                }
                // The test TUs keep no location cache; the harness's shards never look up.
                Output::Location(_) | Output::Lookup { .. } => {}
            }
        }
    }

    fn next_event_ms(&self) -> Option<u64> {
        let packets = self.queue.keys().next().map(|k| k.0);
        let shards = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(n, _)| !self.dead.contains_key(&NodeId(*n as u16)))
            .flat_map(|(_, shards)| shards)
            .filter_map(|s| s.poll_timeout())
            .map(|t| t.saturating_duration_since(self.base).as_millis() as u64)
            .min();
        let uas = self.uas.iter().filter_map(|u| u.wheel.next_deadline_ms()).min();
        let callees = self.callees.iter().filter_map(Uas::next_deadline_ms).min();
        [packets, shards, uas, callees].into_iter().flatten().min()
    }

    /// Delivers everything due now and fires due timers; returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let mut progressed = false;
        while let Some((&key, _)) = self.queue.first_key_value() {
            if key.0 > self.now_ms {
                break;
            }
            let packet = self.queue.remove(&key).expect("key just seen");
            self.deliver(packet);
            progressed = true;
        }
        let now = self.now();
        for n in 0..self.nodes.len() {
            if self.dead.contains_key(&NodeId(n as u16)) {
                continue;
            }
            for s in 0..self.nodes[n].len() {
                if self.nodes[n][s].poll_timeout().is_some_and(|t| t <= now) {
                    self.nodes[n][s].handle(now, Input::Timeout);
                    self.drain(NodeId(n as u16), ShardId(s as u16), None);
                    progressed = true;
                }
            }
        }
        for callee in 0..self.callees.len() {
            let sends = self.callees[callee].on_timers(self.now_ms);
            let from = self.callees[callee].peer;
            for (to, bytes) in sends {
                self.send_to_cluster(from, to, bytes);
                progressed = true;
            }
        }
        for ua in 0..self.uas.len() {
            while let Some((_, (id, timer))) = self.uas[ua].wheel.poll_expired(self.now_ms) {
                let Some(branch) = self.uas[ua].branch_ids.remove(&id) else { continue };
                let timers = self.timers;
                let Some(txn) = self.uas[ua].txns.get_mut(&branch) else { continue };
                let actions = match &mut txn.fsm {
                    ClientFsm::Invite(f) => f.on(ClientEvent::Timer(timer), &timers),
                    ClientFsm::NonInvite(f) => f.on(ClientEvent::Timer(timer), &timers),
                };
                self.apply_uac(ua, &branch, actions.iter().collect(), None);
                progressed = true;
            }
        }
        progressed
    }

    /// Runs until nothing is scheduled before `until_ms`; the clock ends at `until_ms`.
    pub fn drive(&mut self, until_ms: u64) {
        loop {
            self.step();
            match self.next_event_ms() {
                Some(at) if at <= until_ms => self.now_ms = at.max(self.now_ms),
                _ => break,
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
        self.step();
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

/// Whether a request's To carries a tag (it is sent inside a dialog).
fn has_to_tag(request: &[u8]) -> bool {
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    parse(request, &mut slots).ok().and_then(|m| m.to().ok().flatten()).is_some_and(|to| to.tag().is_some())
}

/// An ACK for a non-2xx final response (§17.1.1.3), as the parser's [`sipshard_parser::write_ack`]
/// builds it; empty when either message does not parse.
pub fn ack_for(request: &[u8], response: &[u8]) -> Vec<u8> {
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let mut rslots = [HeaderSlot::EMPTY; Message::SLOTS];
    let (Ok(req), Ok(resp)) = (parse(request, &mut slots), parse(response, &mut rslots)) else { return Vec::new() };
    let mut out = vec![0u8; request.len() + response.len()];
    match sipshard_parser::write_ack(&req, &resp, &mut out) {
        Ok(n) => {
            out.truncate(n);
            out
        }
        Err(_) => Vec::new(),
    }
}

/// A request as a UA at `from` sends it: method, Call-ID, CSeq number and branch chosen by the caller.
pub fn request(method: &str, from: SocketAddr, call_id: &str, cseq: u32, branch: &str) -> Vec<u8> {
    format!(
        "{method} sip:service@sipshard.test SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:ua@client.test>;tag=t{branch}\r\nTo: <sip:service@sipshard.test>\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The cheapest transaction user: 486 Busy Here to an INVITE, 200 OK to anything else (the
/// benches and the tests that time or count the core's own work).
#[derive(Debug, Default)]
pub struct BusyInvites;

impl TransactionUser for BusyInvites {
    fn on_request(&mut self, _: &RequestContext, request: &Message<'_>) -> Decision {
        if request.method() == Some(Method::Invite) {
            FinalResponse::new(486, "Busy Here").into()
        } else {
            FinalResponse::new(200, "OK").into()
        }
    }
}

/// A transaction user for fuzzing: answers, relays or bridges by header count, including
/// a non-final code the shard must replace with 500.
#[derive(Debug, Default)]
pub struct FuzzAnswer;

impl TransactionUser for FuzzAnswer {
    fn on_request(&mut self, _: &RequestContext, request: &Message<'_>) -> Decision {
        let relay = crate::shard::Relay {
            to: Peer { addr: SocketAddr::from(([127, 0, 0, 1], 5090)), transport: crate::shard::Transport::Udp },
            request_uri: None,
            pop_route: request.header_count() % 2 == 0,
            record_route: true,
        };
        match request.header_count() % 6 {
            4 => Decision::Relay(relay),
            5 if request.method() == Some(Method::Invite) => Decision::Bridge(relay),
            n => FinalResponse::new([200, 486, 180, 302, 200, 603][n], "Fuzz").into(),
        }
    }
}

/// Feeds `data`, split into datagrams at 0xFF bytes, to one shard that owns every
/// stripe, from UDP and TCP peers, advancing the clock and firing timers in between,
/// reporting some sends back as failed, and draining outputs after every input; then waits out every transaction (70 s) and checks
/// that nothing is left. Panics on any broken invariant: the fuzz target and the
/// regression tests both run this.
pub fn replay_datagrams(base: Instant, data: &[u8]) {
    let config = ShardConfig { replicate: true, ..ShardConfig::standalone(64) };
    let mut shard = Shard::new(config, FuzzAnswer, base);
    let mut now = base;
    for (i, datagram) in data.split(|&b| b == 0xff).enumerate() {
        let addr: SocketAddr = if i % 2 == 0 { "127.0.0.1:5060" } else { "[::1]:5070" }.parse().expect("addr");
        let transport = if i % 3 == 0 { crate::shard::Transport::Tcp } else { crate::shard::Transport::Udp };
        shard.handle(now, Input::Datagram { peer: Peer { addr, transport }, bytes: datagram });
        let mut failed_send = None;
        while let Some(output) = shard.poll_output() {
            if let (Output::Transmit { peer, bytes }, 4) = (output, i % 5) {
                failed_send = Some((peer, bytes));
            }
        }
        // Every fifth input's last send is reported back as failed (§17.2.4).
        if let Some((peer, bytes)) = failed_send {
            shard.handle(now, Input::TransportError { peer, bytes: &bytes });
            while shard.poll_output().is_some() {}
        }
        now += Duration::from_millis(u64::from(datagram.first().copied().unwrap_or(0)) * 250);
        shard.handle(now, Input::Timeout);
        while shard.poll_output().is_some() {}
    }
    // Every transaction ends once input stops: a relayed INVITE nobody answers takes
    // timer B (64*T1) for its 408 and then timer H (64*T1) waiting for the ACK. Time moves
    // in steps, as a driver's would, so timers armed by a firing timer fire in turn.
    for _ in 0..70 {
        now += Duration::from_secs(1);
        shard.handle(now, Input::Timeout);
        while shard.poll_output().is_some() {}
    }
    assert_eq!(shard.transactions(), 0, "a server transaction outlived its timers");
    assert_eq!(shard.calls(), 0, "a call record outlived its transactions");
    assert_eq!(shard.armed_timers(), 0, "a timer outlived its transaction");
}
