//! The registrar (RFC 3261 §10.3) and the location service the proxy routes by.
//!
//! Bindings live in the record of their address-of-record, in the AoR's stripe
//! (a REGISTER is routed by its To AoR, not its Call-ID), so they are
//! replicated and restored like calls. Every change is also published as a
//! [`LocationUpdate`] that every shard of the node applies to its
//! [`Location`] cache, so a call's owner finds the callee's contacts without
//! asking another shard.
//!
//! Expired bindings are dropped when their AoR is next registered or looked
//! up; the table's capacity bounds what lingers. Digest authentication is not
//! done yet: [`RegistrarConfig::authenticate`] is the hook where it goes.

use serde::{Deserialize, Serialize};
use sipshard_parser::{Contact, Message, Uri};

use crate::nat::{uri_with_alias, without_alias};
use crate::shard::{FinalResponse, Peer};

/// One binding of an address-of-record to a contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The contact URI (without the angle brackets and header parameters).
    pub contact: Box<str>,
    /// When it expires (ms on the node's shard clock).
    pub expires_at_ms: u64,
    /// Preference, in thousandths (1000 when not given).
    pub q: u16,
    /// Call-ID of the REGISTER that made it (§10.3 step 7 ordering).
    pub call_id: Box<str>,
    /// CSeq of that REGISTER.
    pub cseq: u32,
}

/// The registrar's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Below this (and not 0) a REGISTER gets 423 Interval Too Brief.
    pub min_expires_s: u32,
    /// Longer requests are shortened to this.
    pub max_expires_s: u32,
    /// When neither the contact nor the request says.
    pub default_expires_s: u32,
    /// Most bindings per address-of-record.
    pub max_bindings: usize,
    /// Require digest authentication (not implemented: must stay false).
    pub authenticate: bool,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires_s: 60,
            max_expires_s: 3_600,
            default_expires_s: 3_600,
            max_bindings: 10,
            authenticate: false,
        }
    }
}

/// The bindings of one AoR after a change, for every shard's [`Location`] cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationUpdate {
    /// The address-of-record key ([`aor_key`]).
    pub aor: Box<str>,
    /// Its live bindings (empty: none left).
    pub bindings: Vec<Binding>,
}

/// The canonical key of an address-of-record: `user@host`, host lower-cased, no port or
/// parameters. `None` for a URI without a user part.
pub fn aor_key(uri: &Uri<'_>) -> Option<String> {
    let user = uri.user?;
    let mut key = String::with_capacity(user.len() + 1 + uri.host.len());
    key.push_str(user);
    key.push('@');
    key.push_str(&uri.host.to_ascii_lowercase());
    Some(key)
}

/// The AoR a REGISTER registers: its To URI's key.
pub fn register_aor(request: &Message<'_>) -> Option<String> {
    aor_key(&request.to().ok().flatten()?.uri)
}

/// Applies a REGISTER to `bindings` (§10.3 steps 6-8) and says what to answer. `natted`: the
/// address a REGISTER from behind a NAT came from ([`crate::nat::behind_nat`]); its Contacts
/// are kept aliased to it ([`crate::nat::uri_with_alias`]), and matched and answered as
/// registered.
pub fn register(
    config: &RegistrarConfig,
    now_ms: u64,
    bindings: &mut Vec<Binding>,
    request: &Message<'_>,
    natted: Option<Peer>,
) -> FinalResponse {
    bindings.retain(|b| b.expires_at_ms > now_ms);
    let call_id = request.call_id().ok().flatten().unwrap_or_default();
    let Some(cseq) = request.cseq().ok().flatten().map(|c| c.seq) else {
        return FinalResponse::new(400, "Bad Request (missing CSeq)");
    };
    let header_expires = match request.expires() {
        Ok(expires) => expires,
        Err(_) => return FinalResponse::new(400, "Bad Request (invalid Expires header)"),
    };
    let mut contacts = Vec::new();
    let mut wildcard = false;
    for contact in request.contacts() {
        match contact {
            Ok(Contact::Wildcard) => wildcard = true,
            Ok(Contact::Address { addr, expires, q }) => contacts.push((addr.uri.raw, expires, q)),
            Err(_) => return FinalResponse::new(400, "Bad Request (invalid Contact header)"),
        }
    }
    if wildcard {
        // §10.3 step 6: `*` only alone and with Expires: 0.
        if !contacts.is_empty() || header_expires != Some(0) {
            return FinalResponse::new(400, "Bad Request (Contact * needs Expires: 0 and no other contact)");
        }
        if bindings.iter().any(|b| *b.call_id == *call_id && b.cseq >= cseq) {
            return FinalResponse::new(500, "Server Internal Error (out-of-order REGISTER)");
        }
        bindings.clear();
        return ok_with_bindings(now_ms, bindings);
    }
    for &(_, expires, _) in &contacts {
        let seconds = expires.or(header_expires).unwrap_or(config.default_expires_s);
        if seconds != 0 && seconds < config.min_expires_s {
            return FinalResponse::new(423, "Interval Too Brief")
                .with_header("Min-Expires", config.min_expires_s.to_string());
        }
    }
    for (uri, expires, q) in contacts {
        let seconds = expires.or(header_expires).unwrap_or(config.default_expires_s).min(config.max_expires_s);
        let existing = bindings.iter().position(|b| without_alias(&b.contact) == uri);
        if let Some(i) = existing {
            // §10.3 step 7: an older or repeated REGISTER of the same Call-ID changes nothing.
            if *bindings[i].call_id == *call_id && bindings[i].cseq >= cseq {
                continue;
            }
            if seconds == 0 {
                bindings.remove(i);
                continue;
            }
        } else if seconds == 0 {
            continue;
        } else if bindings.len() >= config.max_bindings {
            return FinalResponse::new(403, "Forbidden (too many bindings)");
        }
        let binding = Binding {
            // A re-registration from another NAT mapping replaces the alias.
            contact: natted
                .and_then(|source| uri_with_alias(uri, source))
                .map_or_else(|| uri.into(), String::into_boxed_str),
            expires_at_ms: now_ms + u64::from(seconds) * 1_000,
            q: q.unwrap_or(1_000),
            call_id: call_id.into(),
            cseq,
        };
        match existing {
            Some(i) => bindings[i] = binding,
            None => bindings.push(binding),
        }
    }
    ok_with_bindings(now_ms, bindings)
}

/// 200 OK listing every current binding with its remaining time (§10.3 step 8).
fn ok_with_bindings(now_ms: u64, bindings: &[Binding]) -> FinalResponse {
    let mut response = FinalResponse::new(200, "OK");
    for b in bindings {
        let left = b.expires_at_ms.saturating_sub(now_ms).div_ceil(1_000);
        response = response.with_header("Contact", format!("<{}>;expires={left}", without_alias(&b.contact)));
    }
    response
}

/// A shard's copy of every AoR's bindings, for routing (bounded by `capacity` AoRs).
#[derive(Clone, Debug, Default)]
pub struct Location {
    bindings: hashbrown::HashMap<Box<str>, Vec<Binding>>,
    capacity: usize,
}

impl Location {
    /// An empty cache holding at most `capacity` AoRs.
    pub fn new(capacity: usize) -> Self {
        Location { bindings: hashbrown::HashMap::new(), capacity }
    }

    /// Applies an update from the AoR's owner (a new AoR beyond capacity is ignored).
    pub fn apply(&mut self, update: &LocationUpdate) {
        if update.bindings.is_empty() {
            self.bindings.remove(&update.aor);
        } else if self.bindings.len() < self.capacity || self.bindings.contains_key(&update.aor) {
            self.bindings.insert(update.aor.clone(), update.bindings.clone());
        }
    }

    /// The preferred live contact of an AoR (highest q, then the most recent).
    pub fn lookup(&mut self, aor: &str, now_ms: u64) -> Option<&Binding> {
        let list = self.bindings.get_mut(aor)?;
        list.retain(|b| b.expires_at_ms > now_ms);
        if list.is_empty() {
            self.bindings.remove(aor);
            return None;
        }
        self.bindings.get(aor)?.iter().max_by_key(|b| (b.q, b.expires_at_ms))
    }

    /// AoRs held.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Transport;
    use sipshard_parser::{HeaderSlot, parse};
    use std::net::SocketAddr;

    fn register(extra: &str, call_id: &str, cseq: u32) -> String {
        format!(
            "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr{cseq}\r\n\
From: <sip:alice@127.0.0.1:5060>;tag=a\r\nTo: <sip:alice@127.0.0.1:5060>\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    fn apply(bindings: &mut Vec<Binding>, now_ms: u64, text: &str) -> FinalResponse {
        let mut slots = [HeaderSlot::EMPTY; 64];
        let msg = parse(text.as_bytes(), &mut slots).expect("parses");
        assert_eq!(register_aor(&msg).as_deref(), Some("alice@127.0.0.1"));
        // Not from behind a NAT: every binding kept as registered.
        super::register(&RegistrarConfig::default(), now_ms, bindings, &msg, None)
    }

    #[test]
    fn add_refresh_query_and_remove_bindings() {
        let mut bindings = Vec::new();
        let ok = apply(&mut bindings, 0, &register("Contact: <sip:alice@127.0.0.1:5070>\r\nExpires: 120\r\n", "c1", 1));
        assert_eq!(
            (ok.code, ok.headers.clone()),
            (200, vec![("Contact", "<sip:alice@127.0.0.1:5070>;expires=120".into())])
        );
        // A contact's own expires wins over the header; a second contact is added.
        let ok = apply(
            &mut bindings,
            1_000,
            &register("Contact: <sip:alice@127.0.0.1:5071>;expires=300\r\nExpires: 120\r\n", "c1", 2),
        );
        assert_eq!(ok.headers.len(), 2);
        assert_eq!(bindings[1].expires_at_ms, 301_000);
        // A query (no Contact) lists them; an older CSeq of the same Call-ID changes nothing.
        assert_eq!(apply(&mut bindings, 2_000, &register("", "c1", 3)).headers.len(), 2);
        apply(&mut bindings, 2_000, &register("Contact: <sip:alice@127.0.0.1:5070>;expires=0\r\n", "c1", 1));
        assert_eq!(bindings.len(), 2, "out-of-order REGISTER ignored");
        apply(&mut bindings, 2_000, &register("Contact: <sip:alice@127.0.0.1:5070>;expires=0\r\n", "c1", 4));
        assert_eq!(bindings.len(), 1);
        // Expired bindings go at the next touch; `*` with Expires: 0 removes all.
        assert_eq!(apply(&mut bindings, 302_000, &register("", "c1", 5)).headers.len(), 0);
        apply(&mut bindings, 302_000, &register("Contact: <sip:alice@127.0.0.1:5070>\r\n", "c2", 1));
        assert_eq!(bindings[0].expires_at_ms, 302_000 + 3_600_000, "default expiry");
        apply(&mut bindings, 303_000, &register("Contact: *\r\nExpires: 0\r\n", "c3", 1));
        assert!(bindings.is_empty());
    }

    #[test]
    fn a_binding_from_behind_a_nat_keeps_its_source_and_answers_as_registered() {
        let from =
            |port: u16| Some(Peer { addr: SocketAddr::from(([203, 0, 113, 5], port)), transport: Transport::Udp });
        let natted = |bindings: &mut Vec<Binding>, now_ms, text: &str, source| {
            let mut slots = [HeaderSlot::EMPTY; 64];
            let msg = parse(text.as_bytes(), &mut slots).expect("parses");
            super::register(&RegistrarConfig::default(), now_ms, bindings, &msg, source)
        };
        let mut bindings = Vec::new();
        let contact = "Contact: <sip:alice@192.168.1.10:5060>\r\nExpires: 120\r\n";
        let ok = natted(&mut bindings, 0, &register(contact, "n1", 1), from(40000));
        assert_eq!(ok.headers, vec![("Contact", "<sip:alice@192.168.1.10:5060>;expires=120".into())]);
        assert_eq!(&*bindings[0].contact, "sip:alice@192.168.1.10:5060;alias=203.0.113.5~40000~1");
        // A refresh through a new NAT mapping: the same binding, the new source.
        let ok = natted(&mut bindings, 1_000, &register(contact, "n1", 2), from(40002));
        assert_eq!(ok.headers, vec![("Contact", "<sip:alice@192.168.1.10:5060>;expires=120".into())]);
        assert_eq!(&*bindings[0].contact, "sip:alice@192.168.1.10:5060;alias=203.0.113.5~40002~1");
        // Removed by the Contact as registered.
        natted(
            &mut bindings,
            2_000,
            &register("Contact: <sip:alice@192.168.1.10:5060>;expires=0\r\n", "n1", 3),
            from(40002),
        );
        assert!(bindings.is_empty());
    }

    #[test]
    fn too_brief_too_long_and_malformed_registrations() {
        let mut bindings = Vec::new();
        let brief = apply(&mut bindings, 0, &register("Contact: <sip:alice@127.0.0.1:5070>;expires=10\r\n", "c1", 1));
        assert_eq!((brief.code, brief.headers), (423, vec![("Min-Expires", "60".into())]));
        assert!(bindings.is_empty());
        apply(&mut bindings, 0, &register("Contact: <sip:alice@127.0.0.1:5070>;expires=99999\r\n", "c1", 2));
        assert_eq!(bindings[0].expires_at_ms, 3_600_000, "clamped to max_expires");
        let star = apply(&mut bindings, 0, &register("Contact: *\r\nExpires: 60\r\n", "c1", 3));
        assert_eq!(star.code, 400);
        assert!(star.reason.contains("Contact *"), "{}", star.reason);
    }

    #[test]
    fn the_location_cache_picks_the_preferred_live_contact() {
        let binding = |contact: &str, expires_at_ms, q| Binding {
            contact: contact.into(),
            expires_at_ms,
            q,
            call_id: "c".into(),
            cseq: 1,
        };
        let mut location = Location::new(1);
        let update = LocationUpdate {
            aor: "alice@127.0.0.1".into(),
            bindings: vec![binding("sip:a@127.0.0.1:1", 10_000, 500), binding("sip:a@127.0.0.1:2", 5_000, 900)],
        };
        location.apply(&update);
        assert_eq!(location.lookup("alice@127.0.0.1", 0).map(|b| &*b.contact), Some("sip:a@127.0.0.1:2"));
        assert_eq!(location.lookup("alice@127.0.0.1", 6_000).map(|b| &*b.contact), Some("sip:a@127.0.0.1:1"));
        assert!(location.lookup("alice@127.0.0.1", 10_000).is_none());
        assert!(location.is_empty(), "expired AoRs leave the cache");
        location.apply(&update);
        location.apply(&LocationUpdate { aor: "bob@127.0.0.1".into(), bindings: update.bindings.clone() });
        assert_eq!(location.len(), 1, "capacity bounds the cache");
    }
}
