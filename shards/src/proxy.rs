//! The stateful proxy role (RFC 3261 §16), as the shard's transaction user.
//!
//! The shard does the mechanics a proxy shares with every role: server and
//! client transactions, 100 Trying, pushing its Via, Max-Forwards, Record-Route,
//! relaying responses up (§16.7) and statelessly when no transaction matches
//! (§16.11), CANCEL (§16.10), timeouts as 408. This module decides: validate the
//! request (§16.3: 400 naming the broken rule, 483, 420, 482, 481), answer
//! OPTIONS addressed to the server itself (a health check), and pick the next
//! hop (§16.4-16.5: a Route set after our own entry, a Request-URI that is not
//! ours, a registered contact of a user at our address (the location cache
//! the registrar feeds), a static route by user prefix or domain, the default
//! route; else 404).
//!
//! One branch per request today (no forking); the relay is a list of one, so
//! the structure allows parallel forking later. The shard does no DNS: next
//! hops are IP literals (routes name them in config).

use std::net::{IpAddr, SocketAddr};

use sipshard_parser::{HeaderName, Message, Method, Uri};

use crate::dialog::DialogState;
use crate::registrar::{Location, LocationUpdate, aor_key};
use crate::shard::{
    Decision, FinalResponse, Peer, Relay, RequestContext, TransactionUser, Transport, is_local_address,
};

/// The methods the proxy answers for itself or relays, for `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE";

/// A next hop named by a SIP URI whose host is an IP literal (`sip:127.0.0.1:5090;transport=tcp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// The URI as configured.
    pub uri: Box<str>,
    /// Where it points.
    pub peer: Peer,
}

/// Why a route URI was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not a SIP URI.
    #[error("not a SIP URI: {0}")]
    NotSip(String),
    /// The host is a name: the proxy does no DNS.
    #[error("host is not an IP address (sipshard does no DNS): {0}")]
    NotAnIp(String),
    /// `transport=` names something other than udp or tcp.
    #[error("unsupported transport (udp or tcp): {0}")]
    Transport(String),
}

impl RouteTarget {
    /// Decodes a route URI.
    pub fn parse(text: &str) -> Result<RouteTarget, RouteError> {
        let uri = Uri::parse(text).map_err(|_| RouteError::NotSip(text.to_owned()))?;
        if !uri.scheme.is_sip() {
            return Err(RouteError::NotSip(text.to_owned()));
        }
        let peer = peer_of(&uri).map_err(|e| match e {
            PeerError::NotAnIp => RouteError::NotAnIp(text.to_owned()),
            PeerError::Transport => RouteError::Transport(text.to_owned()),
        })?;
        Ok(RouteTarget { uri: text.into(), peer })
    }
}

enum PeerError {
    NotAnIp,
    Transport,
}

/// Where a SIP URI with an IP host points (port 5060 unless given; maddr wins, §19.1.1).
fn peer_of(uri: &Uri<'_>) -> Result<Peer, PeerError> {
    let host = uri.maddr().unwrap_or(uri.host).trim_matches(['[', ']']);
    let ip: IpAddr = host.parse().map_err(|_| PeerError::NotAnIp)?;
    let transport = match uri.transport() {
        None => Transport::Udp,
        Some(t) if t.eq_ignore_ascii_case("udp") => Transport::Udp,
        Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
        Some(_) => return Err(PeerError::Transport),
    };
    Ok(Peer { addr: SocketAddr::new(ip, uri.port.unwrap_or(5060)), transport })
}

/// What a static route matches in the Request-URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// The host part, compared case-insensitively.
    Domain(Box<str>),
    /// The start of the user part (a dialled-number prefix).
    UserPrefix(Box<str>),
}

/// A configured route: requests whose Request-URI matches go to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    /// What it matches.
    pub matches: RouteMatch,
    /// Where they go.
    pub to: RouteTarget,
}

/// The proxy's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Static routes, tried in order before the default route.
    pub routes: Vec<StaticRoute>,
    /// Where requests no other rule matches go (`None`: 404).
    pub default_route: Option<RouteTarget>,
    /// Whether to Record-Route dialog-creating requests (so BYE and re-INVITE come back here).
    pub record_route: bool,
    /// B2BUA mode: an INVITE out of dialog is bridged onto a new B leg (topology hiding)
    /// instead of relayed; other requests out of dialog are still relayed.
    pub b2bua: bool,
    /// Other SIP addresses that name this server: the other nodes of its cluster (a request
    /// sent to any of them is routed as if sent to this one, whichever node owns the call).
    pub aliases: Vec<SocketAddr>,
}

/// Counters of the proxy's own answers.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests relayed downstream.
    pub relayed: u64,
    /// Health-check OPTIONS answered.
    pub options_answered: u64,
    /// Requests answered with an error (4xx-6xx) by the proxy itself.
    pub rejected: u64,
}

/// The stateful proxy.
#[derive(Clone, Debug, Default)]
pub struct Proxy {
    config: ProxyConfig,
    stats: ProxyStats,
    /// Where registered users are (fed by the registrar, on every shard).
    location: Location,
}

/// Most AoRs a proxy's location cache holds.
pub const MAX_LOCATION_AORS: usize = 1_000_000;

impl Proxy {
    /// A proxy with this configuration.
    pub fn new(config: ProxyConfig) -> Self {
        Proxy { config, stats: ProxyStats::default(), location: Location::new(MAX_LOCATION_AORS) }
    }

    /// Its counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    fn reject(&mut self, response: FinalResponse) -> Decision {
        self.stats.rejected += 1;
        response.into()
    }

    /// The location cache.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// §16.4-16.5: the next hop, whether our Route entry comes off, and a new Request-URI
    /// (a registered contact, §16.5).
    fn next_hop(&mut self, ctx: &RequestContext, request: &Message<'_>) -> Result<Relay, Hop> {
        let relay = |to, pop_route, request_uri| Relay { to, request_uri, pop_route, record_route: false };
        let mut routes = request.routes();
        let mut pop_route = false;
        let mut next = routes.next().and_then(Result::ok);
        if next.is_some_and(|route| self.names_us(&route.uri, ctx)) {
            pop_route = true;
            next = routes.next().and_then(Result::ok);
        }
        if let Some(route) = next {
            return peer_of(&route.uri).map(|peer| relay(peer, pop_route, None)).map_err(|_| Hop::NotFound);
        }
        let uri = match request.request_uri() {
            Some(Ok(uri)) => uri,
            _ => return Err(Hop::NotFound),
        };
        let local = self.names_us(&uri, ctx);
        if !local {
            // A Contact this proxy aliased (a caller behind a NAT): to the address it came from.
            if let Some((peer, request_uri)) = crate::nat::take_alias(&uri) {
                return Ok(relay(peer, pop_route, Some(request_uri.into())));
            }
            if let Ok(peer) = peer_of(&uri) {
                return Ok(relay(peer, pop_route, None));
            }
        }
        if local && uri.user.is_none() {
            return Err(Hop::Us);
        }
        if local {
            let registered = aor_key(&uri).and_then(|aor| self.location.lookup(&aor, ctx.now_ms).cloned());
            if let Some(binding) = registered {
                let Ok(contact) = Uri::parse(&binding.contact) else { return Err(Hop::NotFound) };
                // A phone registered from behind a NAT: to the address it registered from, its
                // Contact as it wrote it in the Request-URI (crate::nat).
                if let Some((peer, request_uri)) = crate::nat::take_alias(&contact) {
                    return Ok(relay(peer, pop_route, Some(request_uri.into())));
                }
                return peer_of(&contact)
                    .map(|peer| relay(peer, pop_route, Some(binding.contact.clone())))
                    .map_err(|_| Hop::NotFound);
            }
        }
        self.route_by_rules(&uri).map(|peer| relay(peer, pop_route, None)).ok_or(Hop::NotFound)
    }

    /// Whether `uri` names this server or another node of its cluster.
    fn names_us(&self, uri: &Uri<'_>, ctx: &RequestContext) -> bool {
        let named = |local| is_local_address(uri.host, uri.port, local, ctx.shard_ports);
        named(ctx.local) || self.config.aliases.iter().any(|&alias| named(alias))
    }

    fn route_by_rules(&self, uri: &Uri<'_>) -> Option<Peer> {
        let user = uri.user.unwrap_or_default();
        let matched = self.config.routes.iter().find(|route| match &route.matches {
            RouteMatch::Domain(domain) => uri.host.eq_ignore_ascii_case(domain),
            RouteMatch::UserPrefix(prefix) => user.starts_with(&**prefix),
        });
        matched.map(|r| r.to.peer).or(self.config.default_route.as_ref().map(|r| r.peer))
    }
}

/// Where a request goes when it has no next hop.
enum Hop {
    /// Addressed to this server itself (no user part).
    Us,
    /// No rule matches.
    NotFound,
}

impl TransactionUser for Proxy {
    fn on_request(&mut self, ctx: &RequestContext, request: &Message<'_>) -> Decision {
        let Some(method) = request.method() else { return FinalResponse::new(400, "Bad Request").into() };
        if let Some(problem) = request.problems().first() {
            let reason = format!("Bad Request ({problem})");
            let code = problem.status_code();
            let reason = if code == 400 { reason } else { problem.to_string() };
            return self.reject(FinalResponse { code, reason: reason.into(), headers: Vec::new() });
        }
        let hop = self.next_hop(ctx, request);
        if method == Method::Options && matches!(hop, Err(Hop::Us)) {
            self.stats.options_answered += 1;
            return FinalResponse::new(200, "OK").with_header("Allow", ALLOW).with_header("Supported", "").into();
        }
        if request.max_forwards().ok().flatten() == Some(0) {
            return self.reject(FinalResponse::new(483, "Too Many Hops"));
        }
        let required: Vec<&str> = request.option_tags(HeaderName::ProxyRequire).filter_map(Result::ok).collect();
        if !required.is_empty() {
            let unsupported = FinalResponse::new(420, "Bad Extension").with_header("Unsupported", required.join(", "));
            return self.reject(unsupported);
        }
        if request
            .vias()
            .filter_map(Result::ok)
            .any(|via| is_local_address(via.host, via.port, ctx.local, ctx.shard_ports))
        {
            // sipshard never routes to itself, so a request that already carries our Via is a loop (§16.3 step 4).
            return self.reject(FinalResponse::new(482, "Loop Detected"));
        }
        let in_dialog = request.to().ok().flatten().is_some_and(|to| to.tag().is_some());
        if in_dialog
            && method != Method::Cancel
            && !matches!(ctx.dialog, Some(DialogState::Early | DialogState::Confirmed))
        {
            return self.reject(FinalResponse::new(481, "Call/Transaction Does Not Exist"));
        }
        match hop {
            Ok(relay) if self.config.b2bua && !in_dialog && method == Method::Invite => {
                self.stats.relayed += 1;
                Decision::Bridge(relay)
            }
            Ok(mut relay) => {
                self.stats.relayed += 1;
                relay.record_route = self.config.record_route && !in_dialog && method == Method::Invite;
                Decision::Relay(relay)
            }
            Err(Hop::Us) if method == Method::Register => {
                self.reject(FinalResponse::new(501, "Not Implemented").with_header("Allow", ALLOW))
            }
            Err(Hop::Us) | Err(Hop::NotFound) => self.reject(FinalResponse::new(404, "Not Found")),
        }
    }

    fn on_ack(&mut self, ctx: &RequestContext, request: &Message<'_>) -> Option<Relay> {
        if request.max_forwards().ok().flatten() == Some(0) {
            return None;
        }
        self.next_hop(ctx, request).ok()
    }

    fn on_location(&mut self, update: &LocationUpdate) {
        self.location.apply(update);
    }
}
