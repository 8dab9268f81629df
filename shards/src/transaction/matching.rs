//! Which transaction a message belongs to.
//!
//! - A response matches a client transaction by its top Via branch and its
//!   CSeq method (RFC 3261 §17.1.3): [`ClientKey`].
//! - A request matches a server transaction (§17.2.3) by the top Via branch,
//!   the sent-by and the method, an ACK matching its INVITE, when the branch
//!   carries the magic cookie `z9hG4bK`; otherwise by the RFC 2543 fields
//!   (Request-URI, From tag, Call-ID, CSeq number, top Via, and for everything
//!   but ACK the To tag): [`ServerKey`].
//!
//! Keys own their text: they outlive the datagram, in the shard's tables.

use serde::{Deserialize, Serialize};
use sipshard_parser::{Message, Method, ParseError, ViaBranchSentBy};

/// The method part of a key: ACK and CANCEL are distinguished from the rest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyMethod {
    /// INVITE (and, for server matching, the ACK of a non-2xx).
    Invite,
    /// CANCEL: its own transaction, same branch as the INVITE (§9.2).
    Cancel,
    /// ACK, in a client key (never a client transaction of its own).
    Ack,
    /// BYE.
    Bye,
    /// OPTIONS.
    Options,
    /// REGISTER.
    Register,
    /// Any other method.
    Other(Box<str>),
}

impl KeyMethod {
    fn of(method: Method<'_>) -> KeyMethod {
        match method {
            Method::Invite => KeyMethod::Invite,
            Method::Cancel => KeyMethod::Cancel,
            Method::Ack => KeyMethod::Ack,
            Method::Bye => KeyMethod::Bye,
            Method::Options => KeyMethod::Options,
            Method::Register => KeyMethod::Register,
            other => KeyMethod::Other(other.as_str().into()),
        }
    }
}

/// Identifies a client transaction; responses carry it back (§17.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientKey {
    /// The branch this element put in its Via.
    pub branch: Box<str>,
    /// The request's method.
    pub method: KeyMethod,
}

/// Bytes a key's text holds inline (a usual branch and sent-by fit; longer ones go to the heap).
pub const INLINE_KEY_TEXT: usize = 56;

/// A key's text: inline up to [`INLINE_KEY_TEXT`] bytes, so most transactions allocate
/// nothing for their key.
pub type KeyText = smallvec::SmallVec<[u8; INLINE_KEY_TEXT]>;

/// Identifies a server transaction (§17.2.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServerKey {
    /// The branch has the magic cookie.
    Rfc3261 {
        /// Top Via branch and sent-by (`host[:port]`, host lower-cased), joined by a
        /// space (neither can contain one).
        branch_sent_by: KeyText,
        /// Method, ACK folded into INVITE.
        method: KeyMethod,
    },
    /// RFC 2543 peers: no magic cookie (boxed: rare, and large).
    Rfc2543(Box<Rfc2543Key>),
}

/// The fields an RFC 2543 request is matched by (§17.2.3's fallback).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rfc2543Key {
    /// Request-URI as written.
    pub request_uri: Box<str>,
    /// From tag.
    pub from_tag: Box<str>,
    /// Call-ID.
    pub call_id: Box<str>,
    /// CSeq number.
    pub cseq: u32,
    /// Method, ACK folded into INVITE.
    pub method: KeyMethod,
    /// The top Via value as written.
    pub top_via: Box<str>,
}

/// Why a message has no transaction key.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// A header the key needs is missing.
    Missing(&'static str),
    /// A header the key needs does not decode.
    Invalid(ParseError),
}

impl From<ParseError> for KeyError {
    fn from(e: ParseError) -> Self {
        KeyError::Invalid(e)
    }
}

/// The client transaction a response belongs to.
pub fn client_key(response: &Message<'_>) -> Result<ClientKey, KeyError> {
    let via = response.top_via()?.ok_or(KeyError::Missing("Via"))?;
    let branch = via.branch.ok_or(KeyError::Missing("branch"))?;
    let cseq = response.cseq()?.ok_or(KeyError::Missing("CSeq"))?;
    Ok(ClientKey { branch: branch.into(), method: KeyMethod::of(cseq.method) })
}

/// The server transaction that sent `response` (to report a failed send, §17.2.4):
/// the response carries the request's top Via and CSeq method. Only RFC 3261 keys can
/// be rebuilt from a response.
pub fn server_key_of_response(response: &Message<'_>) -> Result<ServerKey, KeyError> {
    let cseq = response.cseq()?.ok_or(KeyError::Missing("CSeq"))?;
    let via = response.top_via()?.ok_or(KeyError::Missing("Via"))?;
    if !via.has_rfc3261_branch() {
        return Err(KeyError::Missing("RFC 3261 branch"));
    }
    Ok(rfc3261_key(&via.into(), KeyMethod::of(cseq.method)))
}

fn rfc3261_key(via: &ViaBranchSentBy<'_>, method: KeyMethod) -> ServerKey {
    // Port digits written backwards into a stack buffer, not through fmt: this runs for every
    // request, and fmt costs more than the rest of the key.
    let mut digits = [0u8; 6];
    let mut port_at = digits.len();
    if let Some(mut port) = via.port {
        loop {
            port_at -= 1;
            digits[port_at] = b'0' + (port % 10) as u8;
            port /= 10;
            if port == 0 {
                break;
            }
        }
        port_at -= 1;
        digits[port_at] = b':';
    }
    let port = &digits[port_at..];
    let len = via.branch.len() + 1 + via.host.len() + port.len();
    let text = if len <= INLINE_KEY_TEXT {
        // Written in place and moved in whole: the branch and the port copied, the host
        // lower-cased as it is copied, one pass each.
        let mut inline = [0u8; INLINE_KEY_TEXT];
        let (branch, rest) = inline.split_at_mut(via.branch.len());
        branch.copy_from_slice(via.branch);
        rest[0] = b' ';
        for (to, from) in rest[1..].iter_mut().zip(via.host) {
            *to = from.to_ascii_lowercase();
        }
        rest[1 + via.host.len()..1 + via.host.len() + port.len()].copy_from_slice(port);
        KeyText::from_buf_and_len(inline, len)
    } else {
        let mut text = KeyText::from_vec([via.branch, b" ", via.host, port].concat());
        text[via.branch.len() + 1..via.branch.len() + 1 + via.host.len()].make_ascii_lowercase();
        text
    };
    ServerKey::Rfc3261 { branch_sent_by: text, method }
}

impl ServerKey {
    /// The key of the INVITE transaction a CANCEL with this key cancels (§9.2: same
    /// branch and sent-by, or the same RFC 2543 fields).
    pub fn cancelled_invite(&self) -> ServerKey {
        let mut key = self.clone();
        match &mut key {
            ServerKey::Rfc3261 { method, .. } => *method = KeyMethod::Invite,
            ServerKey::Rfc2543(fields) => fields.method = KeyMethod::Invite,
        }
        key
    }
}

/// The server transaction a request belongs to.
pub fn server_key(request: &Message<'_>) -> Result<ServerKey, KeyError> {
    let method = request.method().ok_or(KeyError::Missing("request line"))?;
    // An ACK for a non-2xx final response belongs to the INVITE's transaction.
    let method = match method {
        Method::Ack => KeyMethod::Invite,
        other => KeyMethod::of(other),
    };
    // The usual top Via, read without decoding it (what the decode would give: the parser's
    // property test); any other is decoded.
    if let Some(via) = request.top_via_branch_sent_by() {
        return Ok(rfc3261_key(&via, method));
    }
    let via = request.top_via()?.ok_or(KeyError::Missing("Via"))?;
    if via.has_rfc3261_branch() {
        return Ok(rfc3261_key(&via.into(), method));
    }
    let line = request.request_line().ok_or(KeyError::Missing("request line"))?;
    let from = request.from()?.ok_or(KeyError::Missing("From"))?;
    let call_id = request.call_id()?.ok_or(KeyError::Missing("Call-ID"))?;
    let cseq = request.cseq()?.ok_or(KeyError::Missing("CSeq"))?;
    let top_via = request.header(sipshard_parser::HeaderName::Via).ok_or(KeyError::Missing("Via"))?;
    let (top_via, _) = split_first(top_via);
    Ok(ServerKey::Rfc2543(Box::new(Rfc2543Key {
        request_uri: line.uri.into(),
        from_tag: from.tag().unwrap_or_default().into(),
        call_id: call_id.into(),
        cseq: cseq.seq,
        method,
        top_via: String::from_utf8_lossy(top_via).into(),
    })))
}

/// The first comma-separated value of a Via header line.
fn split_first(value: &[u8]) -> (&[u8], &[u8]) {
    match value.iter().position(|&c| c == b',') {
        Some(i) => (value[..i].trim_ascii(), &value[i + 1..]),
        None => (value.trim_ascii(), &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipshard_parser::{HeaderSlot, parse};

    fn with<R>(bytes: &[u8], f: impl FnOnce(&Message<'_>) -> R) -> R {
        let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
        f(&parse(bytes, &mut slots).expect("parses"))
    }

    const INVITE: &[u8] =
        b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP PC33.example:5060;branch=z9hG4bK776\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    const ACK: &[u8] = b"ACK sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP pc33.example:5060;branch=z9hG4bK776\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>;tag=x\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    const CANCEL: &[u8] =
        b"CANCEL sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP pc33.example:5060;branch=z9hG4bK776\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>\r\nCall-ID: c1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn ack_matches_its_invite_and_cancel_does_not() {
        let invite = with(INVITE, |m| server_key(m).unwrap());
        let ack = with(ACK, |m| server_key(m).unwrap());
        let cancel = with(CANCEL, |m| server_key(m).unwrap());
        assert_eq!(invite, ack, "sent-by host compares case-insensitively; ACK folds into INVITE");
        assert_ne!(invite, cancel);
    }

    #[test]
    fn a_key_is_branch_space_lower_case_sent_by_inline_or_not() {
        let key_of = |via: &str| {
            let text = format!("BYE sip:b@b.example SIP/2.0\r\nVia: {via}\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n");
            match with(text.as_bytes(), |m| server_key(m).unwrap()) {
                ServerKey::Rfc3261 { branch_sent_by, method } => {
                    (String::from_utf8(branch_sent_by.to_vec()).unwrap(), branch_sent_by.spilled(), method)
                }
                other => panic!("an RFC 3261 key expected: {other:?}"),
            }
        };
        let long = format!("z9hG4bK{}", "7".repeat(60));
        for (via, text, spilled) in [
            ("SIP/2.0/UDP PC33.Example:05060;branch=z9hG4bK776", "z9hG4bK776 pc33.example:5060".to_owned(), false),
            ("SIP/2.0/UDP [2001:DB8::1];branch=z9hG4bKa", "z9hG4bKa [2001:db8::1]".to_owned(), false),
            // Not the plain shape (a space before a parameter): decoded, the same key.
            ("SIP/2.0/UDP Host.Test:5070 ;branch=z9hG4bKb", "z9hG4bKb host.test:5070".to_owned(), false),
            (&format!("SIP/2.0/TCP HOST.test:5070;branch={long}"), format!("{long} host.test:5070"), true),
        ] {
            assert_eq!(key_of(via), (text, spilled, KeyMethod::Bye), "{via}");
        }
    }

    #[test]
    fn rfc2543_requests_match_on_dialog_fields() {
        let old = b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nFrom: <sip:a@a>\r\n\
To: <sip:b@b>\r\nCall-ID: x@y\r\nCSeq: 4 INVITE\r\n\r\n";
        let key = with(old, |m| server_key(m).unwrap());
        let ServerKey::Rfc2543(fields) = &key else { panic!("fallback key expected") };
        assert_eq!((&*fields.call_id, fields.cseq, &*fields.top_via), ("x@y", 4, "SIP/2.0/UDP 192.0.2.1"));
        let bare_cookie = b"OPTIONS sip:b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK\r\nFrom: <sip:a@a>;tag=2\r\n\
To: <sip:b@b>\r\nCall-ID: q\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert!(matches!(with(bare_cookie, |m| server_key(m).unwrap()), ServerKey::Rfc2543(_)));
    }

    #[test]
    fn a_response_names_the_server_transaction_that_sent_it() {
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP PC33.example:5060;branch=z9hG4bK776\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let invite = with(INVITE, |m| server_key(m).unwrap());
        assert_eq!(with(response, |m| server_key_of_response(m).unwrap()), invite);
    }

    #[test]
    fn responses_match_by_branch_and_cseq_method() {
        let ok =
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKabc\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            with(ok, |m| client_key(m).unwrap()),
            ClientKey { branch: "z9hG4bKabc".into(), method: KeyMethod::Cancel }
        );
        let no_via = b"SIP/2.0 200 OK\r\nCSeq: 1 BYE\r\n\r\n";
        assert_eq!(with(no_via, client_key), Err(KeyError::Missing("Via")));
    }
}
