//! NAT traversal: a phone's Contact aliased to the address its request came
//! from (as Kamailio's nathelper `add_contact_alias` / `handle_ruri_alias`
//! do).
//!
//! A phone behind a NAT writes its private address in its Via and Contact
//! (`<sip:alice@192.168.1.10:5060>`); its requests arrive from the NAT's public
//! address. That is the test for a NAT ([`behind_nat`]): the top Via's sent-by
//! host is not the address the request came from (RFC 3261 §18.2.1's
//! `received` case), or its port is not the source port of a UDP request that
//! asks for `rport`. Two places then keep the source with the Contact, as
//! `;alias=IP~PORT~T` on its URI (T: 1 for UDP, 2 for TCP):
//!
//! - the proxy relaying a dialog-creating INVITE it Record-Routes: the callee's
//!   in-dialog requests (BYE, re-INVITE) come back through it to that Contact;
//! - the registrar keeping a binding: calls to the AoR go to the NAT's address,
//!   and the phone's answer, whose Contact is the one the INVITE was addressed
//!   to, is aliased to where the INVITE went, for the caller's ACK and BYE.
//!
//! A request whose Request-URI (or whose registered Contact) carries an alias
//! goes to that address, the alias taken off, so the phone gets its own Contact
//! as the Request-URI. A Contact that names its source is left as it is, and so
//! is every Contact of a request whose Via names its source (no NAT between: a
//! third-party registration, §10.2, keeps routing where it says).

use std::net::{IpAddr, SocketAddr};

use sipshard_parser::{Message, Uri};

use crate::shard::{Peer, Transport};

/// The URI parameter that carries the address a Contact was reached from.
pub const ALIAS: &str = "alias";

/// Whether `request` came through a NAT: its top Via's sent-by host is not the address it came
/// from, or (over UDP, with `rport`: RFC 3581's symmetric UA) its port is not the source port
/// (5060 if none). A port alone differing without `rport` is a UA that sends from one port and
/// listens on another, and over TCP the source port is the connection's: neither is a NAT. A
/// request with no readable Via: no.
pub fn behind_nat(request: &Message<'_>, source: Peer) -> bool {
    let Ok(Some(via)) = request.top_via() else { return false };
    let port_moved =
        source.transport == Transport::Udp && via.rport.is_some() && via.port.unwrap_or(5060) != source.addr.port();
    !is_ip(via.host, source.addr.ip()) || port_moved
}

/// The Contact header value `contact` of a dialog-creating request from `source` (behind a NAT),
/// with an `alias` parameter naming `source` added to its URI. `None` when the Contact names
/// `source` already, carries an alias, or is not one SIP URI this rewrites (several values, `*`,
/// another scheme): the request is then relayed with its Contact as it is.
pub fn contact_with_alias(contact: &[u8], source: Peer) -> Option<String> {
    let (head, uri, tail) = split_contact(contact)?;
    aliased_contact(head, uri, tail, source)
}

/// The Contact of a dialog-creating response to an INVITE this proxy sent to `peer` addressed
/// to `request_uri`, aliased to `peer` when it is that very URI yet does not name `peer`: a phone
/// registered from behind a NAT, called at its alias ([`take_alias`]), answering with the Contact
/// it registered. The caller's ACK, BYE and re-INVITE then reach it too. `None` otherwise (a
/// trunk reached by a route answers with a Contact of its own: left alone).
pub fn answer_contact_with_alias(contact: &[u8], request_uri: &str, peer: Peer) -> Option<String> {
    let (head, uri, tail) = split_contact(contact)?;
    (uri == request_uri).then(|| aliased_contact(head, uri, tail, peer)).flatten()
}

/// One Contact value as (what precedes its URI, the URI, what follows): `name-addr` (the URI in
/// angle brackets) or `addr-spec` (a bare URI, whose `;` parameters are the header's: the
/// rewritten form puts the URI in brackets before them). `None` for several values.
fn split_contact(contact: &[u8]) -> Option<(&str, &str, &str)> {
    let text = core::str::from_utf8(contact).ok()?.trim();
    if text.contains(',') {
        // Several values (or a quoted comma): not a dialog's one remote target; left alone.
        return None;
    }
    match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => Some((&text[..=open], &text[open + 1..close], &text[close..])),
        (None, None) => {
            let end = text.find(';').unwrap_or(text.len());
            Some(("<", &text[..end], &text[end..]))
        }
        _ => None,
    }
}

/// The Contact value of [`split_contact`]'s parts with its URI aliased to `source`, unless it
/// names `source` already.
fn aliased_contact(head: &str, uri: &str, tail: &str, source: Peer) -> Option<String> {
    let aliased = uri_with_alias(uri, source)?;
    let close = if tail.starts_with('>') { "" } else { ">" };
    Some(format!("{head}{aliased}{close}{tail}"))
}

/// A Contact URI (bare, as the registrar keeps a binding's) of a request from `source` (behind a
/// NAT), aliased to `source`; `None` when it names `source` already or is not a `sip:` URI without
/// an alias. The registrar answers with the URI as registered ([`without_alias`]); the proxy
/// routes to the alias ([`take_alias`]).
pub fn uri_with_alias(uri: &str, source: Peer) -> Option<String> {
    let parsed = Uri::parse(uri).ok()?;
    if names(&parsed, source.addr) {
        return None;
    }
    with_alias(&parsed, source)
}

/// `uri` with `;alias=` naming `source` (before its `?` headers); `None` for a URI that is not
/// `sip:` or has an alias already.
fn with_alias(uri: &Uri<'_>, source: Peer) -> Option<String> {
    if !uri.scheme.is_sip() || uri.params.contains(ALIAS) {
        return None;
    }
    let raw = uri.raw;
    let (uri, headers) = raw.split_at(raw.find('?').unwrap_or(raw.len()));
    let ip = match source.addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let proto = if source.transport == Transport::Tcp { 2 } else { 1 };
    Some(format!("{uri};{ALIAS}={ip}~{}~{proto}{headers}", source.addr.port()))
}

/// `uri` without the alias this server added (the URI as its UA wrote it); `uri` itself when it
/// has none.
pub fn without_alias(uri: &str) -> std::borrow::Cow<'_, str> {
    match Uri::parse(uri).ok().and_then(|parsed| take_alias(&parsed)) {
        Some((_, stripped)) => stripped.into(),
        None => uri.into(),
    }
}

/// Whether `uri`'s host and port (5060 if none) are `addr`.
fn names(uri: &Uri<'_>, addr: SocketAddr) -> bool {
    is_ip(uri.host, addr.ip()) && uri.port.unwrap_or(5060) == addr.port()
}

/// Whether a sent-by or URI host (an IPv6 reference in brackets) is the address `ip`, an
/// IPv4-mapped IPv6 form counting as its IPv4 address.
fn is_ip(host: &str, ip: IpAddr) -> bool {
    host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|h| h.to_canonical() == ip.to_canonical())
}

/// The address an aliased Request-URI names, and the Request-URI without its alias: where an
/// in-dialog request toward a NATed caller goes, and what it carries there. `None` when the URI
/// has no alias or a malformed one (the request is then routed by the URI as written).
pub fn take_alias(uri: &Uri<'_>) -> Option<(Peer, String)> {
    let value = uri.params.get(ALIAS)?.value?;
    let mut parts = value.split('~');
    let (ip, port, proto) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let ip: IpAddr = ip.trim_matches(['[', ']']).parse().ok()?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let transport = match proto {
        "1" => Transport::Udp,
        "2" => Transport::Tcp,
        _ => return None,
    };
    // The parameter as written, `;alias=value`: the value is a slice of the URI's text (checked
    // slicing all the same: a URI that is not its own text gives no alias, never a panic).
    let raw = uri.raw;
    let value_at = (value.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let param_at = raw.get(..value_at)?.rfind(';')?;
    let stripped = format!("{}{}", raw.get(..param_at)?, raw.get(value_at + value.len()..)?);
    Some((Peer { addr: SocketAddr::new(ip, port), transport }, stripped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str, transport: Transport) -> Peer {
        Peer { addr: addr.parse().unwrap(), transport }
    }

    #[test]
    fn a_contact_naming_another_address_gets_the_source_as_its_alias() {
        let udp = peer("203.0.113.5:40000", Transport::Udp);
        let cases = [
            ("<sip:alice@192.168.1.10:5060>", "<sip:alice@192.168.1.10:5060;alias=203.0.113.5~40000~1>"),
            (
                "\"Alice\" <sip:alice@192.168.1.10;transport=udp>;expires=60",
                "\"Alice\" <sip:alice@192.168.1.10;transport=udp;alias=203.0.113.5~40000~1>;expires=60",
            ),
            ("sip:alice@10.0.0.1;expires=60", "<sip:alice@10.0.0.1;alias=203.0.113.5~40000~1>;expires=60"),
            ("<sip:alice@10.0.0.1?Subject=x>", "<sip:alice@10.0.0.1;alias=203.0.113.5~40000~1?Subject=x>"),
            // The right address on another port (a NAT that kept the address): aliased too.
            ("<sip:alice@203.0.113.5:5060>", "<sip:alice@203.0.113.5:5060;alias=203.0.113.5~40000~1>"),
        ];
        for (contact, aliased) in cases {
            assert_eq!(contact_with_alias(contact.as_bytes(), udp).as_deref(), Some(aliased), "{contact}");
        }
        let tcp = peer("[2001:db8::1]:5070", Transport::Tcp);
        assert_eq!(
            contact_with_alias(b"<sip:alice@[fd00::1]:5060>", tcp).as_deref(),
            Some("<sip:alice@[fd00::1]:5060;alias=[2001:db8::1]~5070~2>")
        );
    }

    #[test]
    fn a_contact_naming_its_source_or_not_rewritable_is_left_alone() {
        let source = peer("203.0.113.5:5060", Transport::Udp);
        for contact in [
            "<sip:alice@203.0.113.5>",
            "<sip:alice@203.0.113.5:5060;transport=udp>",
            "<sip:alice@10.0.0.1;alias=203.0.113.5~5060~1>",
            "<sip:a@10.0.0.1>, <sip:b@10.0.0.2>",
            "*",
            "<tel:+15551234>",
            "<sip:alice@10.0.0.1",
        ] {
            assert_eq!(contact_with_alias(contact.as_bytes(), source), None, "{contact}");
        }
    }

    #[test]
    fn an_answer_with_the_contact_the_invite_was_addressed_to_is_aliased_to_where_it_was_sent() {
        let phone = peer("203.0.113.5:40000", Transport::Udp);
        let contact = b"<sip:alice@192.168.1.10:5060>;expires=60";
        assert_eq!(
            answer_contact_with_alias(contact, "sip:alice@192.168.1.10:5060", phone).as_deref(),
            Some("<sip:alice@192.168.1.10:5060;alias=203.0.113.5~40000~1>;expires=60")
        );
        // A trunk reached by a route (another Request-URI), or a phone reached where its Contact says.
        assert_eq!(answer_contact_with_alias(contact, "sip:alice@carrier.test", phone), None);
        let direct = peer("192.168.1.10:5060", Transport::Udp);
        assert_eq!(answer_contact_with_alias(contact, "sip:alice@192.168.1.10:5060", direct), None);
    }

    #[test]
    fn a_request_is_behind_a_nat_when_its_via_does_not_name_its_source() {
        let udp = peer("203.0.113.5:40000", Transport::Udp);
        let tcp = peer("203.0.113.5:40000", Transport::Tcp);
        let request = |via: &str| {
            format!("REGISTER sip:r.test SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKn\r\nCall-ID: n\r\n\r\n")
        };
        for (via, source, natted) in [
            ("192.168.1.10:5060;rport", udp, true),
            ("192.168.1.10:5060", tcp, true),
            ("203.0.113.5;rport", udp, true),
            ("203.0.113.5", udp, false),
            ("203.0.113.5;rport", tcp, false),
            ("203.0.113.5:40000;rport", udp, false),
            ("[::ffff:203.0.113.5]:40000;rport", udp, false),
            ("phone.test:40000;rport", udp, true),
        ] {
            let text = request(via);
            let mut slots = vec![sipshard_parser::HeaderSlot::EMPTY; Message::SLOTS];
            let msg = sipshard_parser::parse(text.as_bytes(), &mut slots).unwrap();
            assert_eq!(behind_nat(&msg, source), natted, "{via} from {source:?}");
        }
    }

    #[test]
    fn a_registered_contact_is_aliased_unless_it_names_its_source() {
        let source = peer("203.0.113.5:40000", Transport::Udp);
        for contact in ["10.1.2.3", "192.168.1.10:5062", "127.0.0.9:5999", "198.51.100.7"] {
            let uri = format!("sip:alice@{contact}");
            let aliased = uri_with_alias(&uri, source).unwrap_or_else(|| panic!("{uri} not aliased"));
            assert_eq!(aliased, format!("{uri};alias=203.0.113.5~40000~1"));
            assert_eq!(without_alias(&aliased), uri, "the registrar answers with the URI as registered");
        }
        assert_eq!(
            uri_with_alias("sip:alice@[fd00::1]:5060;ob", peer("[2001:db8::1]:5070", Transport::Tcp)).as_deref(),
            Some("sip:alice@[fd00::1]:5060;ob;alias=[2001:db8::1]~5070~2")
        );
        for uri in ["sip:alice@203.0.113.5:40000", "sip:alice@10.0.0.1;alias=203.0.113.5~40000~1", "tel:+1555"] {
            assert_eq!(uri_with_alias(uri, source), None, "{uri}");
        }
        assert_eq!(without_alias("sip:alice@10.0.0.1"), "sip:alice@10.0.0.1");
    }

    #[test]
    fn an_aliased_request_uri_names_the_alias_and_loses_it() {
        let uri = Uri::parse("sip:alice@192.168.1.10:5060;alias=203.0.113.5~40000~1;transport=udp").unwrap();
        assert_eq!(
            take_alias(&uri),
            Some((peer("203.0.113.5:40000", Transport::Udp), "sip:alice@192.168.1.10:5060;transport=udp".into()))
        );
        let uri = Uri::parse("sip:alice@[fd00::1];alias=[2001:db8::1]~5070~2").unwrap();
        assert_eq!(take_alias(&uri), Some((peer("[2001:db8::1]:5070", Transport::Tcp), "sip:alice@[fd00::1]".into())));
        for bad in [
            "sip:a@h",
            "sip:a@h;alias=1.2.3.4~5060",
            "sip:a@h;alias=x~5060~1",
            "sip:a@h;alias=1.2.3.4~0~1",
            "sip:a@h;alias",
        ] {
            assert_eq!(take_alias(&Uri::parse(bad).unwrap()), None, "{bad}");
        }
        // What contact_with_alias writes, take_alias reads back.
        let source = peer("198.51.100.7:31000", Transport::Udp);
        let aliased = contact_with_alias(b"<sip:bob@10.1.2.3:5062;ob>", source).unwrap();
        let uri = Uri::parse(aliased.trim_matches(['<', '>'])).unwrap();
        assert_eq!(take_alias(&uri), Some((source, "sip:bob@10.1.2.3:5062;ob".into())));
    }
}
