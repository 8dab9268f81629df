//! Stripes and who owns them. Every node keeps a [`StripeMap`]: for each
//! stripe, the owner (node, shard) that processes it now and the replicas
//! that hold copies, stamped with an epoch. A map with an older epoch than the
//! one held is ignored (Seastar/Redpanda style), so updates can arrive in any
//! order. Routing is a pure function of the map and the Call-ID.

use serde::{Deserialize, Serialize};
use sipshard_parser::stripe_of;

/// Default number of stripes per cluster (a power of two, fixed per cluster).
pub const DEFAULT_STRIPES: u32 = 1024;

/// Most replicas (owner included) a stripe can have.
pub const MAX_REPLICAS: usize = 4;

/// A stripe: a fixed slice of the Call-ID space.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StripeId(pub u32);

impl StripeId {
    /// The stripe of a Call-ID among `stripe_count` stripes: the parser's stable hash, except
    /// for the B-leg Call-IDs a B2BUA makes, which carry their A leg's stripe in the clear
    /// (`b2b~SSSS~...`, SSSS in hex: see [`crate::b2bua::b_leg_call_id`]), so that both legs
    /// of a call land on the same owner without a lookup.
    pub fn of_call_id(call_id: &[u8], stripe_count: u32) -> StripeId {
        match call_id {
            [b'b', b'2', b'b', b'~', a, b, c, d, b'~', ..] => {
                let hex = [*a, *b, *c, *d];
                match core::str::from_utf8(&hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok()) {
                    Some(stripe) => StripeId(stripe % stripe_count.max(1)),
                    None => StripeId(stripe_of(call_id, stripe_count)),
                }
            }
            _ => StripeId(stripe_of(call_id, stripe_count)),
        }
    }
}

/// A node of the cluster.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u16);

/// A shard (core) of a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

/// Where a stripe is processed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The node.
    pub node: NodeId,
    /// The shard on that node.
    pub shard: ShardId,
}

/// One stripe's placement: the owner first, then the backups.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    replicas: [Option<NodeId>; MAX_REPLICAS],
    shard: ShardId,
}

impl Placement {
    /// The node processing the stripe.
    pub fn owner_node(&self) -> NodeId {
        self.replicas[0].expect("invariant: a placement has an owner")
    }

    /// The backups, in takeover order.
    pub fn backups(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas[1..].iter().flatten().copied()
    }

    /// The shard (the same number on every node) that processes or keeps the stripe.
    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

/// Where an input must go.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This shard owns the stripe.
    Local,
    /// Another shard of this node owns it.
    Shard(ShardId),
    /// Another node owns it.
    Node(NodeId),
}

/// The versioned stripe → owner map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeMap {
    epoch: u64,
    placements: Vec<Placement>,
}

impl StripeMap {
    /// The map for `nodes` nodes of `shards` shards each with `replicas` copies of every stripe,
    /// computed the same way on every node: stripe `s` lives on node `s % nodes`, shard
    /// `(s / nodes) % shards`, backed up on the next `replicas - 1` nodes in ring order.
    pub fn balanced(epoch: u64, stripes: u32, nodes: &[NodeId], shards: u16, replicas: usize) -> StripeMap {
        assert!(stripes > 0 && !nodes.is_empty() && shards > 0, "invariant: non-empty cluster");
        let copies = replicas.clamp(1, MAX_REPLICAS).min(nodes.len());
        let placements = (0..stripes)
            .map(|s| {
                let mut replicas = [None; MAX_REPLICAS];
                for (i, slot) in replicas.iter_mut().take(copies).enumerate() {
                    *slot = Some(nodes[(s as usize + i) % nodes.len()]);
                }
                Placement { replicas, shard: ShardId(((s / nodes.len() as u32) % u32::from(shards)) as u16) }
            })
            .collect();
        StripeMap { epoch, placements }
    }

    /// The map's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many stripes.
    pub fn stripe_count(&self) -> u32 {
        self.placements.len() as u32
    }

    /// Installs `newer` if it [supersedes](StripeMap::supersedes) this map; returns whether
    /// it was installed.
    pub fn update(&mut self, newer: StripeMap) -> bool {
        if !newer.supersedes(self) {
            return false;
        }
        *self = newer;
        true
    }

    /// Whether this map replaces `current`: a higher epoch, or the same epoch with other
    /// placements and a higher [fingerprint](StripeMap::fingerprint). Two nodes that each
    /// made a map of the same epoch (both sides of a healed partition readmitting the other)
    /// thus settle on the same one, whichever they saw first.
    pub fn supersedes(&self, current: &StripeMap) -> bool {
        if self.placements.len() != current.placements.len() {
            return false;
        }
        self.epoch > current.epoch
            || (self.epoch == current.epoch
                && self.placements != current.placements
                && self.fingerprint() > current.fingerprint())
    }

    /// FNV-1a over the placements: the same on every node for the same map.
    pub fn fingerprint(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for p in &self.placements {
            let nodes = p.replicas.iter().map(|r| r.map_or(0xffff, |n| n.0));
            for half in nodes.chain([p.shard.0]).flat_map(u16::to_le_bytes) {
                hash = (hash ^ u64::from(half)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// A stripe's placement.
    pub fn placement(&self, stripe: StripeId) -> &Placement {
        &self.placements[stripe.0 as usize]
    }

    /// The owner of a stripe.
    pub fn owner(&self, stripe: StripeId) -> Owner {
        let placement = self.placement(stripe);
        Owner { node: placement.owner_node(), shard: placement.shard }
    }

    /// Where an input for `stripe` received by (`node`, `shard`) must go.
    pub fn route(&self, stripe: StripeId, node: NodeId, shard: ShardId) -> Route {
        let owner = self.owner(stripe);
        if owner.node != node {
            Route::Node(owner.node)
        } else if owner.shard != shard {
            Route::Shard(owner.shard)
        } else {
            Route::Local
        }
    }

    /// A new map (epoch + 1) where `node`, back after being dropped, is a backup again of
    /// every stripe `balanced` gives it (as owner or backup): the owners stay, and start
    /// copying to it. The first step of a rejoin; [`StripeMap::restore`] is the last.
    pub fn readmit(&self, node: NodeId, balanced: &StripeMap) -> StripeMap {
        let placements = self
            .placements
            .iter()
            .zip(&balanced.placements)
            .map(|(p, home)| {
                let mut p = *p;
                let wanted = home.replicas.contains(&Some(node));
                if wanted && !p.replicas.contains(&Some(node)) {
                    if let Some(slot) = p.replicas.iter_mut().find(|r| r.is_none()) {
                        *slot = Some(node);
                    }
                }
                p
            })
            .collect();
        StripeMap { epoch: self.epoch + 1, placements }
    }

    /// A new map (epoch + 1) where every stripe `balanced` gives to `node` as owner is placed
    /// as `balanced` places it again (its nodes that this map has dropped left out): the
    /// hand-back once `node` holds copies of its stripes.
    pub fn restore(&self, node: NodeId, balanced: &StripeMap) -> StripeMap {
        let present = |n: &NodeId| *n == node || self.has_node(*n);
        let placements = self
            .placements
            .iter()
            .zip(&balanced.placements)
            .map(|(p, home)| {
                if home.owner_node() != node {
                    return *p;
                }
                let mut replicas = [None; MAX_REPLICAS];
                for (slot, n) in replicas.iter_mut().zip(home.replicas.iter().flatten().filter(|n| present(n))) {
                    *slot = Some(*n);
                }
                Placement { replicas, shard: home.shard }
            })
            .collect();
        StripeMap { epoch: self.epoch + 1, placements }
    }

    /// Whether the two maps place any stripe differently (epochs aside).
    pub fn placements_differ(&self, other: &StripeMap) -> bool {
        self.placements != other.placements
    }

    /// Whether `node` owns or backs up any stripe in this map.
    pub fn has_node(&self, node: NodeId) -> bool {
        self.placements.iter().any(|p| p.replicas.contains(&Some(node)))
    }

    /// A new map (epoch + 1) where every stripe owned by `dead` moves to its first live backup.
    pub fn without(&self, dead: NodeId) -> StripeMap {
        let placements = self
            .placements
            .iter()
            .map(|p| {
                let mut replicas = [None; MAX_REPLICAS];
                let live = p.replicas.iter().flatten().copied().filter(|&n| n != dead);
                for (slot, node) in replicas.iter_mut().zip(live) {
                    *slot = Some(node);
                }
                // A stripe whose every copy was on the dead node stays put: nobody can take it.
                if replicas[0].is_none() {
                    return *p;
                }
                Placement { replicas, shard: p.shard }
            })
            .collect();
        StripeMap { epoch: self.epoch + 1, placements }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u16) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    #[test]
    fn stripe_id_agrees_with_the_parser_hash() {
        let id = b"3848276298220188511@atlanta.example.com";
        assert_eq!(StripeId::of_call_id(id, DEFAULT_STRIPES).0, stripe_of(id, DEFAULT_STRIPES));
        assert_eq!(StripeId::of_call_id(b"a84b4c76e66710@pc33.atlanta.com", 1024), StripeId(521));
    }

    #[test]
    fn balanced_maps_spread_owners_and_backups() {
        let map = StripeMap::balanced(1, 1024, &nodes(3), 2, 2);
        let mut per_owner = std::collections::HashMap::new();
        for s in 0..1024 {
            let placement = map.placement(StripeId(s));
            let backups: Vec<_> = placement.backups().collect();
            assert_eq!(backups.len(), 1);
            assert_ne!(backups[0], placement.owner_node());
            *per_owner.entry(map.owner(StripeId(s))).or_insert(0) += 1;
        }
        assert_eq!(per_owner.len(), 6, "3 nodes x 2 shards all own stripes");
        assert!(per_owner.values().all(|&n| (160..=180).contains(&n)), "{per_owner:?}");
    }

    #[test]
    fn every_shard_of_every_node_owns_stripes_whatever_the_shape() {
        for (n, shards) in [(1u16, 1u16), (1, 4), (2, 2), (2, 4), (3, 3), (4, 2), (4, 16)] {
            let map = StripeMap::balanced(1, 1024, &nodes(n), shards, 2);
            let owners: std::collections::HashSet<Owner> = (0..1024).map(|s| map.owner(StripeId(s))).collect();
            assert_eq!(owners.len(), usize::from(n * shards), "{n} nodes x {shards} shards");
        }
    }

    #[test]
    fn stale_updates_are_ignored() {
        let mut map = StripeMap::balanced(5, 64, &nodes(3), 2, 2);
        assert!(!map.update(StripeMap::balanced(4, 64, &nodes(2), 2, 2)));
        assert!(!map.update(map.clone()), "the same map again");
        // The same epoch with other placements (two nodes each made one): both settle on one.
        let other = StripeMap::balanced(5, 64, &nodes(2), 2, 2);
        let (mut mine, mut theirs) = (map.clone(), other.clone());
        let (i_took, they_took) = (mine.update(other), theirs.update(map.clone()));
        assert_ne!(i_took, they_took, "exactly one side takes the other's map");
        assert_eq!(mine, theirs);
        assert_eq!(map.epoch(), 5);
        assert!(map.update(map.without(NodeId(1))));
        assert_eq!(map.epoch(), 6);
    }

    #[test]
    fn a_dead_nodes_stripes_move_to_their_backup() {
        let map = StripeMap::balanced(1, 64, &nodes(3), 2, 2);
        let after = map.without(NodeId(2));
        for s in (0..64).map(StripeId) {
            let before = map.placement(s);
            let now = after.owner(s);
            assert_ne!(now.node, NodeId(2));
            if before.owner_node() == NodeId(2) {
                assert_eq!(Some(now.node), before.backups().next(), "backup takes over");
            } else {
                assert_eq!(now, map.owner(s), "other stripes do not move");
            }
        }
        assert!(map.has_node(NodeId(2)) && !after.has_node(NodeId(2)), "a second death changes nothing");
    }

    #[test]
    fn a_returning_node_is_readmitted_as_backup_then_given_its_stripes_back() {
        let home = StripeMap::balanced(1, 64, &nodes(3), 2, 2);
        let without = home.without(NodeId(1));
        let readmitted = without.readmit(NodeId(1), &home);
        assert_eq!(readmitted.epoch(), 3);
        for s in (0..64).map(StripeId) {
            assert_eq!(readmitted.owner(s), without.owner(s), "owners stay while it catches up");
            let wanted =
                home.placement(s).owner_node() == NodeId(1) || home.placement(s).backups().any(|b| b == NodeId(1));
            assert_eq!(readmitted.placement(s).backups().any(|b| b == NodeId(1)), wanted, "stripe {s:?}");
        }
        let restored = readmitted.restore(NodeId(1), &home);
        assert_eq!(restored.epoch(), 4);
        for s in (0..64).map(StripeId) {
            assert_eq!(restored.owner(s), home.owner(s), "every stripe is home again");
        }
        // Backups are restored too: node 1's stripes are backed up where they were at home.
        for s in (0..64).map(StripeId).filter(|&s| home.owner(s).node == NodeId(1)) {
            assert_eq!(restored.placement(s), home.placement(s));
        }
    }

    #[test]
    fn routing_is_local_shard_or_node() {
        let map = StripeMap::balanced(1, 8, &nodes(2), 2, 2);
        let stripe = StripeId(3); // node 1, shard 1
        assert_eq!(map.route(stripe, NodeId(1), ShardId(1)), Route::Local);
        assert_eq!(map.route(stripe, NodeId(1), ShardId(0)), Route::Shard(ShardId(1)));
        assert_eq!(map.route(stripe, NodeId(0), ShardId(1)), Route::Node(NodeId(1)));
    }
}
