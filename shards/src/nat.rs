//! NAT traversal for the record-routing proxy: the caller's Contact aliased
//! to the address its INVITE came from (as Kamailio's nathelper
//! `add_contact_alias` / `handle_ruri_alias` do).
//!
//! A phone behind a NAT writes its private address in its Contact
//! (`<sip:alice@192.168.1.10:5060>`). The callee sends its in-dialog requests
//! (BYE, re-INVITE) to that Contact, through this proxy's Record-Route; relayed
//! there as written they would go nowhere. So when the proxy relays a
//! dialog-creating INVITE whose Contact does not name the address the INVITE
//! came from, it appends `;alias=IP~PORT~T` to the Contact's URI (T: 1 for UDP,
//! 2 for TCP). A request whose Request-URI carries an alias is relayed to that
//! address, the alias taken off the Request-URI, so the phone gets its own
//! Contact back. A Contact that names its source already is left as it is.

use std::net::{IpAddr, SocketAddr};

use sipshard_parser::Uri;

use crate::shard::{Peer, Transport};

/// The URI parameter that carries the address a Contact was reached from.
pub const ALIAS: &str = "alias";

/// The Contact header value `contact` of a dialog-creating request from `source`, with an
/// `alias` parameter naming `source` added to its URI. `None` when the Contact names `source`
/// already, carries an alias, or is not one SIP URI this rewrites (several values, `*`, another
/// scheme): the request is then relayed with its Contact as it is.
pub fn contact_with_alias(contact: &[u8], source: Peer) -> Option<String> {
    let text = core::str::from_utf8(contact).ok()?.trim();
    if text.contains(',') {
        // Several values (or a quoted comma): not a dialog's one remote target; left alone.
        return None;
    }
    // `name-addr` (the URI in angle brackets) or `addr-spec` (a bare URI: its `;` parameters
    // are the header's, so the rewritten form puts the URI in brackets before them).
    let (head, uri, tail) = match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => (&text[..=open], &text[open + 1..close], &text[close..]),
        (None, None) => {
            let end = text.find(';').unwrap_or(text.len());
            ("<", &text[..end], &text[end..])
        }
        _ => return None,
    };
    let parsed = Uri::parse(uri).ok()?;
    if !parsed.scheme.is_sip() || parsed.params.value(ALIAS).is_some() || names(&parsed, source.addr) {
        return None;
    }
    let (uri, headers) = uri.split_at(uri.find('?').unwrap_or(uri.len()));
    let close = if tail.starts_with('>') { "" } else { ">" };
    let ip = match source.addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let proto = if source.transport == Transport::Tcp { 2 } else { 1 };
    Some(format!("{head}{uri};{ALIAS}={ip}~{}~{proto}{headers}{close}{tail}", source.addr.port()))
}

/// Whether `uri`'s host and port (5060 if none) are `addr`.
fn names(uri: &Uri<'_>, addr: SocketAddr) -> bool {
    let host = uri.host.trim_matches(['[', ']']).parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    host == Some(addr.ip().to_canonical()) && uri.port.unwrap_or(5060) == addr.port()
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
