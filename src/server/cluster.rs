//! Replica links in the runtime (DESIGN.md §5). Shard k of this node keeps one
//! TCP connection to shard k of each peer: the node with the lower id connects
//! to the other's replication address, port + k; the other accepts, reads the
//! first frame (a `Hello`) to learn which peer it is, and hands the connection
//! to that peer's link. The protocol (handshake, numbering, acks, heartbeats,
//! dead peers) is [`ReplicaLink`]'s, sans-IO; here are the sockets, the clock,
//! and what the link's events mean for the shard:
//!
//! - every change the shard makes goes to the stripe's backups; in `sync` mode
//!   the messages that input caused are held until every backup whose link was
//!   up has acknowledged it (or is declared dead); in `async` mode a record's
//!   changes are gathered for 2 ms and its latest version sent
//!   ([`super::coalesce`]);
//! - a change from a peer is installed as a dormant replica (for a stripe this
//!   node owns too, after a partition, the shard keeps the newer copy);
//! - a SIP message for a stripe a peer owns travels in a `Forward` frame on the
//!   link of the stripe's shard; the owner handles it as if it had received it,
//!   and what it sends a UA connected to the peer over TCP goes back in a `Send`
//!   frame, for the peer to write on that connection;
//! - a peer silent for `dead_after_ms` is dead: the shard computes the view
//!   without it, takes it itself and hands it to every other shard of the node,
//!   so the dead node's stripes are processed by their backups here;
//! - a node declared dead that connects again is readmitted: a view makes it a
//!   backup of its stripes again, every shard sends it a snapshot of every
//!   copy it holds of the stripes that node owns or backs up at home (chunked,
//!   half a window ahead of the acks), and once all are acknowledged the node
//!   that took its stripes over hands them back (a view where they are placed
//!   as at home): it makes the records dormant, the returning node activates
//!   them. After a partition both sides do this for each other. Every view a
//!   shard takes goes to its siblings and to the peers on its links (the newest
//!   epoch wins; two of one epoch settle by `StripeMap::supersedes`);
//! - an in-dialog request for a call the owner holds nothing of is parked by
//!   the shard, and every peer is asked for a copy (Lookup); the newest copy
//!   found becomes live here, or the request gets its 481 after every reply
//!   (or 250 ms).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use sipshard_shards::replication::frame::{Frame, decode};
use sipshard_shards::replication::{LinkConfig, LinkEvent, LinkStats, ReplicaLink, Side};
use sipshard_shards::shard::{Input, Peer, SharedBytes, Transport};
use sipshard_shards::table::Change;
use sipshard_shards::{NodeId, StripeId, StripeMap};

use super::{Driver, Hop};
use crate::config::{ClusterSettings, shard_address};

/// How long an outbound link connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between attempts to reach a peer that is not there.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// How long an accepted connection may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait of the link timer task (heartbeats are due more often than this anyway).
const LINK_TICK: Duration = Duration::from_millis(50);

/// How often each shard refreshes its status line, and the status file is written (ms).
const STATUS_EVERY_MS: u64 = 1_000;

/// How long async replication gathers a record's changes before sending its latest.
const COALESCE: Duration = Duration::from_millis(2);

/// How long a lookup waits for the peers' answers before the parked requests get their 481.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

/// Snapshot changes a link may have unacknowledged before the snapshot waits (half the window).
const SNAPSHOT_AHEAD: usize = 512;

/// Bytes read from a link connection at once.
const READ_CHUNK: usize = 64 * 1024;

/// One shard's replication: its links to the same shard of every peer, and the messages
/// waiting for acknowledgements (sync mode).
pub(super) struct Replication {
    node: NodeId,
    /// Async mode: changes waiting to go, the latest per record, oldest record first.
    coalesced: RefCell<super::coalesce::Coalescer>,
    /// The view with every node alive (epoch 1): where stripes live when all is well.
    home: StripeMap,
    /// Lookups asked and not yet answered by every peer, by id.
    lookups: RefCell<std::collections::HashMap<u64, PendingLookup>>,
    next_lookup: Cell<u64>,
    /// Shard 0: for each returning node, the shards that have sent it their snapshot.
    snapshots_sent: RefCell<std::collections::HashMap<NodeId, Vec<usize>>>,
    /// Sync replication (messages wait for the backups' acks); else async, coalesced.
    pub(super) sync: bool,
    /// The shard's clock origin (the cluster's time base): link time is ms since it.
    origin: Instant,
    links: RefCell<Vec<PeerLink>>,
    held: RefCell<Vec<Held>>,
    next_connection: Cell<u64>,
    /// Changes a full link queue refused (the backup misses them).
    changes_refused: Cell<u64>,
    /// Messages held in sync mode, and the most held at once.
    held_messages: Cell<u64>,
    held_max: Cell<usize>,
    /// UAs connected over TCP to another node, by address: which node holds the connection
    /// (what this shard sends them goes there, to be written on it). Bounded.
    tcp_homes: RefCell<std::collections::HashMap<SocketAddr, NodeId>>,
}

/// Most UA connections [`Replication::tcp_homes`] remembers (when full, one is forgotten).
const MAX_TCP_HOMES: usize = 65_536;

/// The link to one peer, and its connection when there is one.
struct PeerLink {
    node: NodeId,
    /// The peer's replication address for this shard.
    addr: SocketAddr,
    side: Side,
    link: ReplicaLink,
    connection: Option<LinkConnection>,
    /// Declared dead (its stripes taken over) until it connects again and is readmitted.
    dead: bool,
}

/// A live connection: its id, the writer's wake-up, and the handle that stops its reader.
/// Dropping it closes the connection (both tasks end).
struct LinkConnection {
    id: u64,
    /// Tells the writer task there are bytes: it takes everything the link has by the time it
    /// runs, so the frames of one executor turn leave in one write.
    wake: LocalSender<()>,
    _close: LocalSender<()>,
}

/// A lookup on its way: what was asked, how many peers still owe an answer, the newest copy.
struct PendingLookup {
    stripe: StripeId,
    key: Box<[u8]>,
    waiting: usize,
    best: Option<Change>,
}

/// A change a held message waits for: the link, its renumbering count then, the change number.
type Wait = (usize, u64, u64);

/// Messages an input caused, held until the backups have the changes it made.
struct Held {
    /// Changes still to be acknowledged.
    waits: Vec<Wait>,
    sends: Vec<(Peer, SharedBytes)>,
}

/// A link's state for the report.
#[derive(Clone, Debug)]
pub(crate) struct LinkReport {
    /// The peer.
    pub(crate) node: NodeId,
    /// Whether changes flow.
    pub(crate) up: bool,
    /// Whether the peer was declared dead.
    pub(crate) dead: bool,
    /// Changes not yet acknowledged (the replication lag, in changes).
    pub(crate) unacked: usize,
    /// Its counters.
    pub(crate) stats: LinkStats,
}

impl LinkReport {
    /// `link<N>=<up|down|dead>:unacked=..:sent=..:...`: the link's state, lag and counters, as
    /// the shard's report and the status file print it.
    pub(crate) fn describe(&self) -> String {
        let state = if self.dead {
            "dead"
        } else if self.up {
            "up"
        } else {
            "down"
        };
        let s = &self.stats;
        format!(
            "link{}={state}:unacked={}:sent={}:delivered={}:fwd_out={}:fwd_in={}:fwd_dropped={}:conn_out={}:conn_in={}:\
             conn_dropped={}:closes={}:bytes_out={}:change_bytes={}",
            self.node.0,
            self.unacked,
            s.changes_sent,
            s.changes_delivered,
            s.forwards_sent,
            s.forwards_received,
            s.forwards_dropped,
            s.sends_sent,
            s.sends_received,
            s.sends_dropped,
            s.closes,
            s.bytes_out,
            s.change_bytes_out
        )
    }
}

impl Replication {
    /// The links of shard `shard` to every peer in `cluster`, all down.
    pub(super) fn new(
        cluster: &ClusterSettings,
        shard: usize,
        origin: Instant,
        seed: u64,
        home: &StripeMap,
    ) -> Replication {
        let links = cluster
            .peers
            .iter()
            .map(|&(node, base)| {
                let mut config = LinkConfig::new(
                    cluster.cluster,
                    &cluster.secret,
                    cluster.node,
                    sipshard_shards::ShardId(shard as u16),
                    seed,
                    seed ^ u64::from(node.0) << 32,
                );
                config.heartbeat_ms = cluster.heartbeat_ms;
                config.dead_after_ms = cluster.dead_after_ms;
                let side = if cluster.node < node { Side::Connecting } else { Side::Accepting };
                PeerLink {
                    node,
                    addr: shard_address(base, shard),
                    side,
                    link: ReplicaLink::new(config, side, node),
                    connection: None,
                    dead: false,
                }
            })
            .collect();
        Replication {
            node: cluster.node,
            coalesced: RefCell::default(),
            home: home.clone(),
            snapshots_sent: RefCell::default(),
            lookups: RefCell::default(),
            next_lookup: Cell::new(1),
            sync: cluster.sync,
            origin,
            links: RefCell::new(links),
            held: RefCell::default(),
            next_connection: Cell::new(0),
            changes_refused: Cell::new(0),
            held_messages: Cell::new(0),
            held_max: Cell::new(0),
            tcp_homes: RefCell::default(),
        }
    }

    /// Remembers that the UA at `addr` is connected to `node` over TCP.
    fn remember_tcp_home(&self, addr: SocketAddr, node: NodeId) {
        let mut homes = self.tcp_homes.borrow_mut();
        if homes.len() >= MAX_TCP_HOMES && !homes.contains_key(&addr) {
            if let Some(any) = homes.keys().next().copied() {
                homes.remove(&any);
            }
        }
        homes.insert(addr, node);
    }

    fn now_ms(&self) -> u64 {
        #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
        let now = Instant::now();
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.links.borrow().iter().position(|l| l.node == node)
    }

    /// Queues `change` for each of `backups`; returns what a sync hold waits for.
    pub(super) fn replicate(&self, change: &Change, backups: impl Iterator<Item = NodeId>) -> Vec<Wait> {
        let mut waits = Vec::new();
        let mut links = self.links.borrow_mut();
        for backup in backups.filter(|&b| b != self.node) {
            let Some(i) = links.iter().position(|l| l.node == backup) else { continue };
            let peer = &mut links[i];
            if peer.dead {
                continue;
            }
            let up = peer.link.is_up();
            match peer.link.replicate(change) {
                Ok(seq) if self.sync && up => waits.push((i, peer.link.renumberings(), seq)),
                Ok(_) => {}
                Err(e) => {
                    self.changes_refused.set(self.changes_refused.get() + 1);
                    tracing::warn!(node = backup.0, error = %e, "replica link refused a change");
                }
            }
        }
        waits
    }

    /// Keeps `sends` until `waits` are acknowledged.
    pub(super) fn hold(&self, waits: Vec<Wait>, sends: Vec<(Peer, SharedBytes)>) {
        self.held_messages.set(self.held_messages.get() + sends.len() as u64);
        let mut held = self.held.borrow_mut();
        held.push(Held { waits, sends });
        self.held_max.set(self.held_max.get().max(held.len()));
    }

    /// Takes the held messages whose changes every waited-for backup has (or that wait for a
    /// dead one, or for a change numbered before its peer restarted: that peer gets a snapshot).
    fn releasable(&self) -> Vec<(Peer, SharedBytes)> {
        let links = self.links.borrow();
        let mut held = self.held.borrow_mut();
        let mut out = Vec::new();
        held.retain_mut(|h| {
            h.waits.retain(|&(i, life, seq)| {
                let link = &links[i].link;
                !links[i].dead && link.renumberings() == life && link.acked() < seq
            });
            if h.waits.is_empty() {
                out.append(&mut h.sends);
                false
            } else {
                true
            }
        });
        out
    }

    /// Writes what link `i` has to send; returns its events.
    fn flush(&self, i: usize) -> Vec<LinkEvent> {
        let mut links = self.links.borrow_mut();
        let peer = &mut links[i];
        write(peer);
        std::iter::from_fn(|| peer.link.poll_event()).collect()
    }

    /// Writes what every link has to send (queuing changes and forwarding raise no event).
    pub(super) fn write_outbound(&self) {
        self.links.borrow_mut().iter_mut().for_each(write);
    }

    /// Each link's state.
    pub(crate) fn report(&self) -> Vec<LinkReport> {
        self.links
            .borrow()
            .iter()
            .map(|l| LinkReport {
                node: l.node,
                up: l.link.is_up(),
                dead: l.dead,
                unacked: l.link.unacked(),
                stats: l.link.stats().clone(),
            })
            .collect()
    }

    /// Counters of the shard's replication: (changes refused, messages held, most held at
    /// once, changes coalesced away).
    pub(crate) fn counters(&self) -> (u64, u64, usize, u64) {
        (self.changes_refused.get(), self.held_messages.get(), self.held_max.get(), self.coalesced.borrow().replaced())
    }
}

impl Driver {
    fn replication(&self) -> &Replication {
        self.replication.as_ref().expect("invariant: only a clustered shard runs link tasks")
    }

    /// Starts the link tasks: the listener for lower-numbered peers, a connector per
    /// higher-numbered one, and the timer that beats hearts and finds dead peers.
    pub(super) fn start_replication(
        self: &Rc<Self>,
        listen: SocketAddr,
        done: Rc<Cell<bool>>,
        status: Arc<Mutex<Vec<String>>>,
    ) -> anyhow::Result<()> {
        let replication = self.replication();
        let address = shard_address(listen, self.index);
        let accepts = replication.links.borrow().iter().any(|l| l.side == Side::Accepting);
        if accepts {
            let listener = TcpListener::bind(address)
                .map_err(|e| anyhow::anyhow!("binding the replication port {address}: {e} (cluster.listen)"))?;
            let (driver, done) = (Rc::clone(self), Rc::clone(&done));
            glommio::spawn_local(async move { driver.accept_links(listener, done).await }).detach();
        }
        let connecting: Vec<usize> = replication
            .links
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.side == Side::Connecting)
            .map(|(i, _)| i)
            .collect();
        for i in connecting {
            let (driver, done) = (Rc::clone(self), Rc::clone(&done));
            glommio::spawn_local(async move { driver.connect_link(i, done).await }).detach();
        }
        let driver = Rc::clone(self);
        glommio::spawn_local(async move {
            let mut next_status = 0;
            while !done.get() {
                let r = driver.replication();
                if r.now_ms() >= next_status {
                    next_status = r.now_ms() + STATUS_EVERY_MS;
                    let line = driver.status_line();
                    if let Ok(mut lines) = status.lock() {
                        lines[driver.index] = line;
                    }
                }
                let now = r.now_ms();
                let next = r.links.borrow().iter().filter_map(|l| l.link.poll_timeout()).min();
                let wait = next.map_or(LINK_TICK, |at| Duration::from_millis(at.saturating_sub(now)).min(LINK_TICK));
                glommio::timer::sleep(wait).await;
                let now = r.now_ms();
                let count = r.links.borrow().len();
                for i in 0..count {
                    r.links.borrow_mut()[i].link.tick(now);
                    driver.pump_link(i).await;
                }
            }
        })
        .detach();
        Ok(())
    }

    /// This shard's part of the status file: view epoch, calls, the view's owner counts
    /// (shard 0), and each link's state, lag and counters.
    fn status_line(&self) -> String {
        let shard = self.shard.borrow();
        let view = shard.stripe_map();
        let mut line = format!("shard {}: epoch={} calls={}", self.index, view.epoch(), shard.calls());
        if self.index == 0 {
            let mut owners = std::collections::BTreeMap::new();
            for s in 0..view.stripe_count() {
                *owners.entry(view.owner(sipshard_shards::StripeId(s)).node.0).or_insert(0u32) += 1;
            }
            for (node, stripes) in owners {
                line.push_str(&format!(" owner{node}={stripes}"));
            }
        }
        for l in self.replication().report() {
            line.push(' ');
            line.push_str(&l.describe());
        }
        line
    }

    /// Accepts link connections until the shard stops; each must open with a Hello from a
    /// peer this shard expects to accept from.
    async fn accept_links(self: Rc<Self>, listener: TcpListener, done: Rc<Cell<bool>>) {
        while !done.get() {
            let mut stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "replication accept failed");
                    continue;
                }
            };
            let driver = Rc::clone(&self);
            glommio::spawn_local(async move {
                let hello = futures_lite::future::or(read_hello(&mut stream), async {
                    glommio::timer::sleep(HELLO_TIMEOUT).await;
                    Err("no Hello in time".to_owned())
                })
                .await;
                let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                match hello {
                    Ok((node, bytes)) => {
                        let r = driver.replication();
                        let index = r.index_of(node).filter(|&i| r.links.borrow()[i].side == Side::Accepting);
                        match index {
                            // A live link is not displaced by a newcomer (which may be anyone).
                            Some(i) if r.links.borrow()[i].link.is_up() => {
                                tracing::warn!(node = node.0, %from, "a second connection while the link is up, refused")
                            }
                            Some(i) => driver.run_connection(i, stream, bytes).await,
                            None => tracing::warn!(node = node.0, %from, "replica link from an unexpected node"),
                        }
                    }
                    Err(why) => tracing::warn!(%from, why, "replica link refused"),
                }
            })
            .detach();
        }
    }

    /// Keeps a connection to a higher-numbered peer open, reconnecting while the shard runs.
    async fn connect_link(self: Rc<Self>, i: usize, done: Rc<Cell<bool>>) {
        let addr = self.replication().links.borrow()[i].addr;
        while !done.get() {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
                Ok(stream) => self.run_connection(i, stream, Vec::new()).await,
                Err(e) => tracing::trace!(error = %e, %addr, "replica peer not reachable"),
            }
            glommio::timer::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Runs one connection of link `i` until it closes: a writer task drains the link's
    /// outbound bytes, this task reads. `first` is what was read before (the Hello).
    async fn run_connection(self: &Rc<Self>, i: usize, stream: TcpStream, first: Vec<u8>) {
        let _ = stream.set_nodelay(true);
        let r = self.replication();
        let (wake, woken) = local_channel::new_bounded::<()>(1);
        let (close, closed) = local_channel::new_bounded::<()>(1);
        let id = r.next_connection.get();
        r.next_connection.set(id + 1);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let driver = Rc::clone(self);
        glommio::spawn_local(async move {
            while woken.recv().await.is_some() {
                let bytes = {
                    let mut links = driver.replication().links.borrow_mut();
                    if links[i].connection.as_ref().is_none_or(|c| c.id != id) {
                        break;
                    }
                    links[i].link.take_outbound()
                };
                if !bytes.is_empty() && writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = writer.close().await;
        })
        .detach();
        {
            let mut links = r.links.borrow_mut();
            let peer = &mut links[i];
            // A newer connection replaces an older one (dropping it closes it).
            peer.connection = Some(LinkConnection { id, wake, _close: close });
            peer.link.connected(r.now_ms());
            if !first.is_empty() {
                peer.link.receive(r.now_ms(), &first);
            }
        }
        self.pump_link(i).await;
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
                let _ = closed.recv().await;
                None
            })
            .await;
            let current = r.links.borrow()[i].connection.as_ref().is_some_and(|c| c.id == id);
            match read {
                Some(Ok(n)) if n > 0 && current => {
                    r.links.borrow_mut()[i].link.receive(r.now_ms(), &chunk[..n]);
                    self.pump_link(i).await;
                }
                _ => {
                    if current {
                        let mut links = r.links.borrow_mut();
                        links[i].connection = None;
                        links[i].link.disconnected(r.now_ms());
                    }
                    return;
                }
            }
        }
    }

    /// Writes link `i`'s outbound bytes and acts on its events.
    async fn pump_link(self: &Rc<Self>, i: usize) {
        let r = self.replication();
        let node = r.links.borrow()[i].node;
        for event in r.flush(i) {
            match event {
                LinkEvent::Up { epoch, restarted } => {
                    tracing::info!(node = node.0, shard = self.index, peer_epoch = epoch, restarted, "replica link up");
                    // The peer learns our view: a returning node, that it was dropped.
                    let view = self.shard.borrow().stripe_map().clone();
                    {
                        let mut links = r.links.borrow_mut();
                        links[i].link.send_view(&view);
                        write(&mut links[i]);
                    }
                    // Back after being declared dead, or restarted before that: either way it
                    // holds nothing, and gets its copies again.
                    if std::mem::take(&mut r.links.borrow_mut()[i].dead) || restarted {
                        self.readmit(i, node).await;
                    }
                }
                LinkEvent::View(view) => {
                    if self.adopt_view(&view).await {
                        tracing::info!(node = node.0, shard = self.index, epoch = view.epoch(), "took a peer's view");
                        self.tell_siblings(&view).await;
                    }
                }
                LinkEvent::Delivered(replica) => drop(self.handle(Input::Replica(&replica.change))),
                LinkEvent::Forwarded { from, tcp, message } => {
                    if tcp {
                        // Its answers go back through the node that holds the UA's connection.
                        r.remember_tcp_home(from, node);
                    }
                    let transport = if tcp { Transport::Tcp } else { Transport::Udp };
                    let peer = Peer { addr: from, transport };
                    self.process(Input::FromNode { node, peer, bytes: &message }).await;
                }
                LinkEvent::Send { to, message } => {
                    let peer = Peer { addr: to, transport: Transport::Tcp };
                    if self.tcp_send(peer, message.into()).await.is_err() {
                        tracing::debug!(node = node.0, to = %to, "message for a UA connection this node lacks, dropped");
                    }
                }
                LinkEvent::Acked { .. } => self.release_held().await,
                LinkEvent::Lookup { id, stripe, key } => {
                    let found = self.shard.borrow().lookup(stripe, &key);
                    let mut links = r.links.borrow_mut();
                    links[i].link.send_lookup_reply(id, found.as_ref());
                    write(&mut links[i]);
                }
                LinkEvent::LookupReply { id, found } => {
                    let done = {
                        let mut lookups = r.lookups.borrow_mut();
                        let Some(pending) = lookups.get_mut(&id) else { continue };
                        pending.waiting -= 1;
                        if let Some(mut copy) = found
                            && pending.best.as_ref().is_none_or(|b| copy.version > b.version)
                        {
                            copy.stripe = pending.stripe;
                            pending.best = Some(copy);
                        }
                        pending.waiting == 0
                    };
                    if done {
                        self.finish_lookup(id).await;
                    }
                }
                LinkEvent::PeerDead => {
                    r.links.borrow_mut()[i].dead = true;
                    self.release_held().await;
                    let current = self.shard.borrow().stripe_map().clone();
                    if !current.has_node(node) {
                        continue; // Another shard of this node saw it first: its view is ours.
                    }
                    let view = current.without(node);
                    tracing::warn!(node = node.0, shard = self.index, epoch = view.epoch(), "peer dead: taking over");
                    self.adopt_view(&view).await;
                    self.tell_siblings(&view).await;
                }
                LinkEvent::Closed { reason } => {
                    tracing::warn!(node = node.0, shard = self.index, reason, "replica link closed");
                    r.links.borrow_mut()[i].connection = None;
                }
            }
        }
    }

    /// Sends the held messages whose changes the backups now have.
    async fn release_held(self: &Rc<Self>) {
        for (peer, bytes) in self.replication().releasable() {
            self.transmit(peer, bytes).await;
        }
    }

    /// Takes `view` if it is newer than the one in force (activating stripes gained, making
    /// stripes lost dormant) and tells every peer on this shard's links; returns whether taken.
    pub(super) async fn adopt_view(self: &Rc<Self>, view: &StripeMap) -> bool {
        if !view.supersedes(self.shard.borrow().stripe_map()) {
            return false;
        }
        self.process(Input::View(view)).await;
        if let Some(r) = &self.replication {
            let mut links = r.links.borrow_mut();
            for peer in links.iter_mut() {
                peer.link.send_view(view);
                write(peer);
            }
        }
        true
    }

    /// Hands a view this shard made or learned to every other shard of the node.
    async fn tell_siblings(self: &Rc<Self>, view: &StripeMap) {
        for shard in (0..self.shards).filter(|&s| s != self.index) {
            self.hop(shard, Hop::View(view.clone())).await;
        }
    }

    /// A node this shard had declared dead is back (or restarted before it was): make it a
    /// backup again of the stripes it held (a new view, unless another shard made it already
    /// or it was never dropped), then send it a snapshot of this shard's records of them.
    async fn readmit(self: &Rc<Self>, i: usize, node: NodeId) {
        let r = self.replication();
        let current = self.shard.borrow().stripe_map().clone();
        let readmitted = current.readmit(node, &r.home);
        if readmitted.placements_differ(&current) {
            tracing::warn!(node = node.0, epoch = readmitted.epoch(), "a dead node is back: readmitted as backup");
            self.adopt_view(&readmitted).await;
            self.tell_siblings(&readmitted).await;
        }
        let driver = Rc::clone(self);
        glommio::spawn_local(async move { driver.send_snapshot(i, node).await }).detach();
    }

    /// Sends returning `node` every record this shard holds (live or dormant) of the stripes
    /// `node` owns or backs up at home, in chunks, at most half a window ahead of its
    /// acknowledgements (live traffic shares the link); then tells shard 0. Dormant copies
    /// go too: after a partition both sides may have changed calls, and the receiver keeps the
    /// newer copy of each (see `Shard`'s merge of copies), whoever owns what by then.
    async fn send_snapshot(self: Rc<Self>, i: usize, node: NodeId) {
        let r = self.replication();
        let stripes: Vec<StripeId> = (0..r.home.stripe_count())
            .map(StripeId)
            .filter(|&s| {
                let home = r.home.placement(s);
                usize::from(home.shard().0) == self.index
                    && (home.owner_node() == node || home.backups().any(|b| b == node))
            })
            .collect();
        let mut records = 0usize;
        for stripe in stripes {
            let changes = self.shard.borrow().snapshot(stripe);
            for change in &changes {
                loop {
                    let (up, backlog) = {
                        let links = r.links.borrow();
                        (links[i].link.is_up(), links[i].link.unacked())
                    };
                    if !up {
                        tracing::warn!(node = node.0, shard = self.index, records, "snapshot cut short: link down");
                        return;
                    }
                    if backlog < SNAPSHOT_AHEAD {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
                let mut links = r.links.borrow_mut();
                if links[i].link.replicate(change).is_ok() {
                    records += 1;
                }
                write(&mut links[i]);
            }
            glommio::yield_if_needed().await;
        }
        // Every copy acknowledged before the hand-back: a view overtakes queued changes.
        while r.links.borrow()[i].link.unacked() > 0 {
            if !r.links.borrow()[i].link.is_up() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        tracing::info!(node = node.0, shard = self.index, records, "snapshot sent");
        self.snapshot_sent(node, self.index).await;
    }

    /// Shard 0 counts the shards that sent `node` their snapshot; when all have, and this
    /// node holds stripes that are `node`'s at home, it hands them back (a new view).
    pub(super) async fn snapshot_sent(self: &Rc<Self>, node: NodeId, shard: usize) {
        if self.index != 0 {
            self.hop(0, Hop::SnapshotSent { node, shard }).await;
            return;
        }
        let r = self.replication();
        let complete = {
            let mut sent = r.snapshots_sent.borrow_mut();
            let shards = sent.entry(node).or_default();
            if !shards.contains(&shard) {
                shards.push(shard);
            }
            shards.len() == self.shards
        };
        if !complete {
            return;
        }
        r.snapshots_sent.borrow_mut().remove(&node);
        let current = self.shard.borrow().stripe_map().clone();
        let holding = (0..current.stripe_count())
            .map(StripeId)
            .any(|s| r.home.owner(s).node == node && current.owner(s).node == r.node);
        if !holding {
            return; // Not the node that took them over: that one hands them back.
        }
        let restored = current.restore(node, &r.home);
        tracing::warn!(node = node.0, epoch = restored.epoch(), "handing stripes back");
        self.adopt_view(&restored).await;
        self.tell_siblings(&restored).await;
    }

    /// Asks every peer whose link is up for a copy of a record this shard owns but lacks; the
    /// answer (the newest copy, or none after every reply or [`LOOKUP_TIMEOUT`]) goes back to
    /// the shard, which then handles the requests it parked.
    pub(super) fn start_lookup(self: &Rc<Self>, stripe: StripeId, key: Box<[u8]>) {
        let r = self.replication();
        let id = r.next_lookup.get();
        r.next_lookup.set(id + 1);
        let mut asked = 0;
        for peer in r.links.borrow_mut().iter_mut().filter(|l| !l.dead) {
            if peer.link.send_lookup(id, stripe, &key) {
                asked += 1;
                write(peer);
            }
        }
        r.lookups.borrow_mut().insert(id, PendingLookup { stripe, key, waiting: asked, best: None });
        // Answered in a task of its own (the shard is busy with the input that asked).
        let driver = Rc::clone(self);
        glommio::spawn_local(async move {
            if asked > 0 {
                glommio::timer::sleep(LOOKUP_TIMEOUT).await;
            }
            driver.finish_lookup(id).await;
        })
        .detach();
    }

    /// Gives the shard a lookup's answer (once: a late reply or timeout finds nothing).
    async fn finish_lookup(self: &Rc<Self>, id: u64) {
        let Some(pending) = self.replication().lookups.borrow_mut().remove(&id) else { return };
        let input = Input::LookupDone { stripe: pending.stripe, key: &pending.key, found: pending.best.as_ref() };
        self.process(input).await;
    }

    /// Async replication: keeps `change` for [`COALESCE`] in place of an older change of the
    /// same record (the backup only keeps the latest version anyway), then sends them all.
    pub(super) fn coalesce(self: &Rc<Self>, change: Change) {
        let r = self.replication();
        let (removal, first) = r.coalesced.borrow_mut().put(change);
        if let Some(removal) = removal {
            self.replicate_now(&removal);
        }
        // No borrow held: glommio may run a new task at once, and its timer may be due already.
        if first {
            let driver = Rc::clone(self);
            glommio::spawn_local(async move {
                glommio::timer::sleep(COALESCE).await;
                driver.send_coalesced();
            })
            .detach();
        }
    }

    /// Queues one change for its stripe's backups, waiting for nothing.
    fn replicate_now(&self, change: &Change) {
        let placement = *self.shard.borrow().stripe_map().placement(change.stripe);
        self.replication().replicate(change, placement.backups());
    }

    /// Sends the coalesced changes to their stripes' backups.
    fn send_coalesced(&self) {
        let r = self.replication();
        let changes = r.coalesced.borrow_mut().take();
        let view = self.shard.borrow().stripe_map().clone();
        for change in &changes {
            r.replicate(change, view.placement(change.stripe).backups());
        }
        r.write_outbound();
    }

    /// Hands `bytes` for the UA at `addr` to the node that holds its TCP connection, when
    /// another node does (the UA sent the call's messages there). `None`: no node is known to;
    /// `Some(Err)`: one does, but its link is down.
    pub(super) fn send_via_tcp_home(&self, addr: SocketAddr, bytes: &[u8]) -> Option<Result<(), ()>> {
        let r = self.replication.as_ref()?;
        let node = r.tcp_homes.borrow().get(&addr).copied()?;
        let i = r.index_of(node)?;
        let mut links = r.links.borrow_mut();
        if !links[i].link.send_to_connection(addr, bytes) {
            return Some(Err(()));
        }
        write(&mut links[i]);
        Some(Ok(()))
    }

    /// Sends a message received here to `node`, which owns its stripe, on this shard's link.
    pub(super) fn forward_to_node(&self, node: NodeId, peer: Peer, bytes: &[u8]) {
        let Some(r) = self.replication.as_ref() else { return };
        let Some(i) = r.index_of(node) else {
            tracing::debug!(node = node.0, "message for a node this one has no link to, dropped");
            return;
        };
        let mut links = r.links.borrow_mut();
        links[i].link.forward(peer.addr, peer.transport == Transport::Tcp, bytes);
        write(&mut links[i]);
    }
}

/// Wakes the connection's writer when the link has bytes to send (a link without a
/// connection is down and keeps none: it resends changes after reconnecting).
fn write(peer: &mut PeerLink) {
    if peer.link.has_outbound()
        && let Some(c) = &peer.connection
    {
        // Full: a wake-up is pending already, and that writer run takes these bytes too.
        let _ = c.wake.try_send(());
    }
}

/// Writes the node's status file every second until `stop`: a header line, then each
/// shard's line (written whole: to a temporary file, then renamed).
pub(super) fn write_status_file(cluster: ClusterSettings, status: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("cluster-status".into()).spawn(move || {
        let path = cluster.status_file.clone();
        let temporary = path.with_extension("tmp");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(STATUS_EVERY_MS));
            #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
            let written = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut text = format!(
                "node {} site {} sync={} replicas={} written_unix_s={written}\n",
                cluster.node.0, cluster.site, cluster.sync, cluster.replicas
            );
            if let Ok(lines) = status.lock() {
                for line in lines.iter().filter(|l| !l.is_empty()) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            let wrote = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &path));
            if let Err(e) = wrote {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the cluster status file");
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the cluster status writer");
    }
}

/// Reads an accepted connection's first frame; it must be a Hello. Returns the peer it names
/// and every byte read (the link reads the Hello again).
async fn read_hello(stream: &mut TcpStream) -> Result<(NodeId, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match decode(&buf) {
            Ok(Some((Frame::Hello { node, .. }, _))) => return Ok((node, buf)),
            Ok(Some((frame, _))) => return Err(format!("opened with {} instead of Hello", frame.name())),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err("closed before Hello".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
