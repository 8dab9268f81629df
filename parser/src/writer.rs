//! Writing messages into caller-provided buffers, without allocation.
//!
//! - [`write_message`] serialises a parsed message canonically: start line,
//!   each header as `Long-Name: value` (compact names expanded), the body,
//!   Content-Length set to the body written.
//! - [`Editor`] writes a parsed message with edits applied, without
//!   re-parsing it: push/pop the top Via, add Record-Route, pop the top Route,
//!   decrement Max-Forwards, rewrite the Request-URI, add/replace/remove
//!   headers, replace the body (Content-Length follows).
//! - [`write_response`] builds a response to a request (RFC 3261 §8.2.6).
//! - Both can mark the top Via of a request as the server that received it
//!   must (RFC 3261 §18.2.1, RFC 3581 §4): `received` with the source address
//!   when the sent-by is not that address or `rport` is present, and `rport`
//!   given the source port ([`Editor::mark_received`],
//!   [`ResponseSpec::received_from`]).

use core::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::grammar::{find_byte, find_either, find_outside_quotes, is_lws, split_first_value, trim_lws};
use crate::header::{Header, HeaderName};
use crate::limits::MAX_EDITS;
use crate::message::{Message, StartLine};

/// Why a write failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// More edits than [`MAX_EDITS`].
    TooManyEdits,
    /// Max-Forwards is already 0 (the proxy must answer 483 instead, RFC 3261 §16.3).
    MaxForwardsExhausted,
    /// Max-Forwards does not decode, so it cannot be decremented.
    InvalidMaxForwards,
    /// A CANCEL or ACK can only be built from a request with a decodable CSeq and Via.
    NotARequest,
    /// Two edits of the same value: popping the top Via and marking it received.
    ConflictingEdits,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteError::BufferTooSmall => "output buffer too small",
            WriteError::TooManyEdits => "too many edits",
            WriteError::MaxForwardsExhausted => "Max-Forwards is 0",
            WriteError::InvalidMaxForwards => "invalid Max-Forwards",
            WriteError::NotARequest => "not a request with a valid CSeq and Via",
            WriteError::ConflictingEdits => "the top Via cannot be both popped and marked received",
        })
    }
}

impl std::error::Error for WriteError {}

/// A cursor over a caller's buffer.
struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let end = self.len + bytes.len();
        self.buf.get_mut(self.len..end).ok_or(WriteError::BufferTooSmall)?.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn put_u32(&mut self, mut n: u32) -> Result<(), WriteError> {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[i..])
    }

    /// An IP address as the `received` parameter writes it (an IPv6 address without brackets).
    fn put_ip(&mut self, ip: IpAddr) -> Result<(), WriteError> {
        match ip {
            IpAddr::V4(v4) => {
                // Written into a stack buffer first: one copy into the output, not seven.
                let mut text = [0u8; 15];
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    text[len] = b'0' + octet % 10;
                    len += 1;
                }
                self.put(&text[..len])
            }
            IpAddr::V6(v6) => fmt::Write::write_fmt(self, format_args!("{v6}")).map_err(|_| WriteError::BufferTooSmall),
        }
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), WriteError> {
        self.put(name.as_bytes())?;
        self.put(b": ")?;
        self.put(value)?;
        self.put(b"\r\n")
    }

    fn start_line(&mut self, msg: &Message<'_>, uri: Option<&str>) -> Result<(), WriteError> {
        let version = msg.version();
        let put_version = |out: &mut Self| -> Result<(), WriteError> {
            out.put(b"SIP/")?;
            out.put_u32(u32::from(version.major))?;
            out.put(b".")?;
            out.put_u32(u32::from(version.minor))
        };
        match msg.start_line() {
            StartLine::Request(line) => {
                self.put(line.method.as_str().as_bytes())?;
                self.put(b" ")?;
                self.put(uri.unwrap_or(line.uri).as_bytes())?;
                self.put(b" ")?;
                put_version(self)?;
            }
            StartLine::Response(line) => {
                put_version(self)?;
                self.put(b" ")?;
                self.put_u32(u32::from(line.code))?;
                self.put(b" ")?;
                self.put(line.reason.as_bytes())?;
            }
        }
        self.put(b"\r\n")
    }
}

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// Writes the Via header line `value` (the message's first) with its first value marked as
/// the server that received the request from `source` marks it (RFC 3261 §18.2.1, RFC 3581
/// §4): a `received` parameter with the source IP address when the sent-by host is not that
/// address, or whenever `rport` is present; `rport` given the source port; any `received`
/// the value had is replaced. The other parameters and values are copied as they are.
fn put_marked_via(out: &mut Out<'_>, name: &str, value: &[u8], source: SocketAddr) -> Result<(), WriteError> {
    // The usual Via has no quoted string: its values end at a comma, its parameters at a `;`.
    // (A quote after the first comma is in a later value, which is copied as it is.)
    let (first, rest, quoted) = match find_either(b',', b'"', value) {
        None => (value, &b""[..], false),
        Some(comma) if value[comma] == b',' => (trim_lws(&value[..comma]), trim_lws(&value[comma + 1..]), false),
        Some(_) => match core::str::from_utf8(value).map(split_first_value) {
            Ok((first, rest)) => (first.as_bytes(), rest.unwrap_or_default().as_bytes(), true),
            Err(_) => return out.header(name, value),
        },
    };
    // Neither the protocol nor the sent-by holds a `;`: the parameters start at the first one.
    let params_at = find_byte(b';', first).unwrap_or(first.len());
    out.put(name.as_bytes())?;
    out.put(b": ")?;
    let sent = trim_lws(&first[..params_at]);
    out.put(sent)?;
    let mut rport = false;
    let mut params = &first[params_at..];
    while let [b';', after @ ..] = params {
        let end =
            if quoted { find_outside_quotes(after, b';', 0) } else { find_byte(b';', after).unwrap_or(after.len()) };
        let param = trim_lws(&after[..end]);
        params = &after[end..];
        let param_name = trim_lws(&param[..find_byte(b'=', param).unwrap_or(param.len())]);
        if param.is_empty() || param_name.eq_ignore_ascii_case(b"received") {
            continue;
        }
        out.put(b";")?;
        if param_name.eq_ignore_ascii_case(b"rport") {
            rport = true;
            out.put(b"rport=")?;
            out.put_u32(u32::from(source.port()))?;
        } else {
            out.put(param)?;
        }
    }
    let ip = source.ip().to_canonical();
    if rport || sent_by_ip(sent) != Some(ip) {
        out.put(b";received=")?;
        out.put_ip(ip)?;
    }
    if !rest.is_empty() {
        out.put(b", ")?;
        out.put(rest)?;
    }
    out.put(b"\r\n")
}

/// The sent-by host of a Via value's `protocol LWS sent-by` part, as an IP address: the
/// last LWS-separated token, its port cut off. `None` for a host name, or for a form this
/// does not read (LWS around the sent-by's colon): the caller then adds `received`, which
/// changes no answer address where the two agree.
fn sent_by_ip(sent: &[u8]) -> Option<IpAddr> {
    let sent_by = sent.rsplit(|&c| is_lws(c)).next()?;
    let host = match sent_by.strip_prefix(b"[") {
        Some(v6) => &v6[..find_byte(b']', v6)?],
        None => &sent_by[..find_byte(b':', sent_by).unwrap_or(sent_by.len())],
    };
    core::str::from_utf8(host).ok()?.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A header name an edit applies to: a known name, or any other name compared case-insensitively.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Name<'e> {
    Known(HeaderName),
    Other(&'e str),
}

impl<'e> Name<'e> {
    fn new(name: &'e str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            HeaderName::Other => Name::Other(name),
            known => Name::Known(known),
        }
    }

    fn matches(&self, header: &Header<'_>) -> bool {
        match self {
            Name::Known(name) => header.name == *name,
            Name::Other(name) => {
                header.name == HeaderName::Other && header.raw_name.eq_ignore_ascii_case(name.as_bytes())
            }
        }
    }

    fn as_str(&self) -> &'e str {
        match self {
            Name::Known(name) => name.as_str(),
            Name::Other(name) => name,
        }
    }
}

#[derive(Copy, Clone, Debug)]
enum Edit<'e> {
    RequestUri(&'e str),
    PushVia(&'e [u8]),
    PopVia,
    PushRecordRoute(&'e [u8]),
    PopRoute,
    DecrementMaxForwards,
    Add(Name<'e>, &'e [u8]),
    Replace(Name<'e>, &'e [u8]),
    Remove(Name<'e>),
    Body(&'e [u8]),
    MarkReceived(SocketAddr),
}

/// Edits to apply while writing a parsed message; the message is not re-parsed.
///
/// Values given to the editor are written as they are: the caller formats them
/// (a Via with a fresh branch, a Record-Route with `;lr`).
pub struct Editor<'m, 'e> {
    msg: &'m Message<'m>,
    edits: [Option<Edit<'e>>; MAX_EDITS],
    len: usize,
}

impl<'m, 'e> Editor<'m, 'e> {
    /// An editor with no edits: writing it gives the canonical form of `msg`.
    pub fn new(msg: &'m Message<'m>) -> Self {
        Editor { msg, edits: [None; MAX_EDITS], len: 0 }
    }

    fn push(&mut self, edit: Edit<'e>) -> Result<&mut Self, WriteError> {
        let slot = self.edits.get_mut(self.len).ok_or(WriteError::TooManyEdits)?;
        *slot = Some(edit);
        self.len += 1;
        Ok(self)
    }

    fn edits(&self) -> impl Iterator<Item = Edit<'e>> + '_ {
        self.edits[..self.len].iter().flatten().copied()
    }

    /// Rewrites the Request-URI (requests only).
    pub fn set_request_uri(&mut self, uri: &'e str) -> Result<&mut Self, WriteError> {
        self.push(Edit::RequestUri(uri))
    }

    /// Adds a Via value on top (`SIP/2.0/UDP host:port;branch=z9hG4bK...`).
    pub fn push_via(&mut self, via: &'e [u8]) -> Result<&mut Self, WriteError> {
        self.push(Edit::PushVia(via))
    }

    /// Removes the top Via value (a response going upstream, RFC 3261 §16.7 step 3).
    pub fn pop_via(&mut self) -> Result<&mut Self, WriteError> {
        self.push(Edit::PopVia)
    }

    /// Marks the message's top Via value as received from `source` (RFC 3261 §18.2.1, RFC
    /// 3581 §4): what a proxy does to a request it relays, so that the responses carry it.
    pub fn mark_received(&mut self, source: SocketAddr) -> Result<&mut Self, WriteError> {
        self.push(Edit::MarkReceived(source))
    }

    /// Adds a Record-Route value above the existing ones (RFC 3261 §16.6 step 4).
    pub fn push_record_route(&mut self, value: &'e [u8]) -> Result<&mut Self, WriteError> {
        self.push(Edit::PushRecordRoute(value))
    }

    /// Removes the top Route value (loose routing, RFC 3261 §16.4).
    pub fn pop_route(&mut self) -> Result<&mut Self, WriteError> {
        self.push(Edit::PopRoute)
    }

    /// Decrements Max-Forwards, or adds `Max-Forwards: 70` when absent (RFC 3261 §16.6 step 3).
    pub fn decrement_max_forwards(&mut self) -> Result<&mut Self, WriteError> {
        self.push(Edit::DecrementMaxForwards)
    }

    /// Appends a header after the existing ones.
    pub fn add_header(&mut self, name: &'e str, value: &'e [u8]) -> Result<&mut Self, WriteError> {
        self.push(Edit::Add(Name::new(name), value))
    }

    /// Replaces every header of this name by one with `value` (added if absent).
    pub fn replace_header(&mut self, name: &'e str, value: &'e [u8]) -> Result<&mut Self, WriteError> {
        self.push(Edit::Replace(Name::new(name), value))
    }

    /// Removes every header of this name.
    pub fn remove_header(&mut self, name: &'e str) -> Result<&mut Self, WriteError> {
        self.push(Edit::Remove(Name::new(name)))
    }

    /// Replaces the body; Content-Length follows it.
    pub fn set_body(&mut self, body: &'e [u8]) -> Result<&mut Self, WriteError> {
        self.push(Edit::Body(body))
    }

    /// Writes the edited message into `out`; returns the bytes written.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, WriteError> {
        let msg = self.msg;
        let mut out = Out { buf: out, len: 0 };
        let mut request_uri = None;
        let mut body = msg.body();
        let mut pop_via = false;
        let mut pop_route = false;
        let mut record_route: Option<&[u8]> = None;
        let mut decrement = false;
        let mut mark = None;
        for edit in self.edits() {
            match edit {
                Edit::MarkReceived(source) => mark = Some(source),
                Edit::RequestUri(uri) => request_uri = Some(uri),
                Edit::Body(b) => body = b,
                Edit::PopVia => pop_via = true,
                Edit::PopRoute => pop_route = true,
                Edit::PushRecordRoute(v) => record_route = Some(v),
                Edit::DecrementMaxForwards => decrement = true,
                Edit::PushVia(_) | Edit::Add(..) | Edit::Replace(..) | Edit::Remove(_) => {}
            }
        }
        if pop_via && mark.is_some() {
            return Err(WriteError::ConflictingEdits);
        }
        out.start_line(msg, request_uri)?;
        for edit in self.edits() {
            if let Edit::PushVia(via) = edit {
                out.header("Via", via)?;
            }
        }
        let mut wrote_length = false;
        let mut replaced = [false; MAX_EDITS];
        for header in msg.headers() {
            if self.edits().any(|e| matches!(e, Edit::Remove(name) if name.matches(&header))) {
                continue;
            }
            if let Some(i) = self.edits().position(|e| matches!(e, Edit::Replace(name, _) if name.matches(&header))) {
                if !replaced[i] {
                    replaced[i] = true;
                    if let Some(Edit::Replace(name, value)) = self.edits[i] {
                        out.header(name.as_str(), value)?;
                    }
                }
                continue;
            }
            let name = header.name_str();
            match header.name {
                HeaderName::ContentLength => {
                    if !wrote_length {
                        wrote_length = true;
                        out.put(b"Content-Length: ")?;
                        out.put_u32(body.len() as u32)?;
                        out.put(b"\r\n")?;
                    }
                }
                HeaderName::Via if pop_via => {
                    pop_via = false;
                    write_rest_of_list(&mut out, name, header.value)?;
                }
                HeaderName::Via if mark.is_some() => {
                    let source = mark.take().expect("invariant: matched Some");
                    put_marked_via(&mut out, name, header.value, source)?;
                }
                HeaderName::Route if pop_route => {
                    pop_route = false;
                    write_rest_of_list(&mut out, name, header.value)?;
                }
                HeaderName::RecordRoute if record_route.is_some() => {
                    out.header(name, record_route.take().unwrap_or_default())?;
                    out.header(name, header.value)?;
                }
                HeaderName::MaxForwards if decrement => {
                    decrement = false;
                    let hops = msg.max_forwards().map_err(|_| WriteError::InvalidMaxForwards)?.unwrap_or(70);
                    let hops = hops.checked_sub(1).ok_or(WriteError::MaxForwardsExhausted)?;
                    out.put(b"Max-Forwards: ")?;
                    out.put_u32(u32::from(hops))?;
                    out.put(b"\r\n")?;
                }
                _ => out.header(name, header.value)?,
            }
        }
        if decrement {
            out.header("Max-Forwards", b"70")?;
        }
        if let Some(value) = record_route {
            out.header("Record-Route", value)?;
        }
        for (i, edit) in self.edits().enumerate() {
            match edit {
                Edit::Add(name, value) => out.header(name.as_str(), value)?,
                Edit::Replace(name, value) if !replaced[i] => out.header(name.as_str(), value)?,
                _ => {}
            }
        }
        if !wrote_length {
            out.put(b"Content-Length: ")?;
            out.put_u32(body.len() as u32)?;
            out.put(b"\r\n")?;
        }
        out.put(b"\r\n")?;
        out.put(body)?;
        Ok(out.len)
    }
}

/// Writes a list header without its first value (nothing if it had one value).
fn write_rest_of_list(out: &mut Out<'_>, name: &str, value: &[u8]) -> Result<(), WriteError> {
    // Values are ASCII in practice; a non-UTF-8 list is written without its whole line.
    let Ok(text) = core::str::from_utf8(value) else { return Ok(()) };
    match split_first_value(text) {
        (_, Some(rest)) if !rest.is_empty() => out.header(name, rest.as_bytes()),
        _ => Ok(()),
    }
}

/// Whether a To value carries a `tag` parameter, without decoding its URI: the
/// header parameters follow the last `>` (name-addr) or the first `;` (addr-spec).
fn to_has_tag(value: &[u8]) -> bool {
    let params_at = match value.iter().rposition(|&c| c == b'>') {
        Some(gt) => gt + 1,
        None => value.iter().position(|&c| c == b';').unwrap_or(value.len()),
    };
    core::str::from_utf8(&value[params_at..])
        .is_ok_and(|params| crate::params::Params::semicolon(params).contains("tag"))
}

/// Writes `msg` canonically into `out` (see the module docs); returns the bytes written.
pub fn write_message(msg: &Message<'_>, out: &mut [u8]) -> Result<usize, WriteError> {
    Editor::new(msg).write(out)
}

/// What [`write_response`] needs besides the request.
#[derive(Copy, Clone, Debug)]
pub struct ResponseSpec<'e> {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'e str,
    /// Tag to add to To when the request's To has none (RFC 3261 §8.2.6.2).
    pub to_tag: Option<&'e str>,
    /// Extra headers, written after the copied ones.
    pub headers: &'e [(&'e str, &'e [u8])],
    /// Body (Content-Length follows it).
    pub body: &'e [u8],
    /// Where the request came from, if the top Via is to be marked with it (`received`,
    /// `rport`: RFC 3261 §18.2.1, RFC 3581 §4); `None` copies it as it is.
    pub received_from: Option<SocketAddr>,
}

/// Builds a response to `request` (RFC 3261 §8.2.6): status line; Via (all, in
/// order), From, To (with `to_tag` added if it has no tag), Call-ID and CSeq
/// copied (the top one marked, with [`ResponseSpec::received_from`]); Timestamp copied on
/// 100; then the extra headers and the body.
pub fn write_response(request: &Message<'_>, spec: &ResponseSpec<'_>, out: &mut [u8]) -> Result<usize, WriteError> {
    let mut out = Out { buf: out, len: 0 };
    let mut mark = spec.received_from;
    out.put(b"SIP/2.0 ")?;
    out.put_u32(u32::from(spec.code))?;
    out.put(b" ")?;
    out.put(spec.reason.as_bytes())?;
    out.put(b"\r\n")?;
    for header in request.headers() {
        match header.name {
            HeaderName::Via if mark.is_some() => {
                let source = mark.take().expect("invariant: matched Some");
                put_marked_via(&mut out, "Via", header.value, source)?;
            }
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.header(header.name.as_str(), header.value)?;
            }
            HeaderName::Timestamp if spec.code == 100 => out.header("Timestamp", header.value)?,
            HeaderName::To => {
                out.put(b"To: ")?;
                out.put(header.value)?;
                let has_tag = to_has_tag(header.value);
                if let (Some(tag), false) = (spec.to_tag, has_tag) {
                    out.put(b";tag=")?;
                    out.put(tag.as_bytes())?;
                }
                out.put(b"\r\n")?;
            }
            _ => {}
        }
    }
    for (name, value) in spec.headers {
        out.header(name, value)?;
    }
    out.put(b"Content-Length: ")?;
    out.put_u32(spec.body.len() as u32)?;
    out.put(b"\r\n\r\n")?;
    out.put(spec.body)?;
    Ok(out.len)
}

/// Writes the headers a request built from another one copies (§9.1, §17.1.1.3): the top Via
/// value only, Route, From, Call-ID and Max-Forwards of `request`; To from `to` (the response's
/// To for an ACK, so it carries the tag); CSeq with `request`'s number and `method`.
fn write_derived_request(
    request: &Message<'_>,
    method: &str,
    to: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, WriteError> {
    let line = request.request_line().ok_or(WriteError::NotARequest)?;
    let cseq = request.cseq().ok().flatten().ok_or(WriteError::NotARequest)?;
    let mut out = Out { buf: out, len: 0 };
    out.put(method.as_bytes())?;
    out.put(b" ")?;
    out.put(line.uri.as_bytes())?;
    out.put(b" SIP/2.0\r\n")?;
    let mut via_written = false;
    for header in request.headers() {
        match header.name {
            HeaderName::Via if !via_written => {
                let text = core::str::from_utf8(header.value).map_err(|_| WriteError::NotARequest)?;
                out.header("Via", split_first_value(text).0.as_bytes())?;
                via_written = true;
            }
            HeaderName::Route | HeaderName::From | HeaderName::CallId | HeaderName::MaxForwards => {
                out.header(header.name.as_str(), header.value)?;
            }
            HeaderName::To => out.header("To", to.unwrap_or(header.value))?,
            _ => {}
        }
    }
    out.put(b"CSeq: ")?;
    out.put_u32(cseq.seq)?;
    out.put(b" ")?;
    out.put(method.as_bytes())?;
    out.put(b"\r\nContent-Length: 0\r\n\r\n")?;
    Ok(out.len)
}

/// Builds the CANCEL for a request this element sent (RFC 3261 §9.1): same Request-URI,
/// Call-ID, From, To, CSeq number and Route, only the top Via (so it carries the branch).
pub fn write_cancel(request: &Message<'_>, out: &mut [u8]) -> Result<usize, WriteError> {
    write_derived_request(request, "CANCEL", None, out)
}

/// Builds the ACK a client INVITE transaction sends for a non-2xx final `response`
/// (RFC 3261 §17.1.1.3): as [`write_cancel`], with the response's To (and its tag).
pub fn write_ack(request: &Message<'_>, response: &Message<'_>, out: &mut [u8]) -> Result<usize, WriteError> {
    write_derived_request(request, "ACK", response.header(HeaderName::To), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HeaderSlot;
    use crate::message::parse;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9, SIP/2.0/UDP proxy.example.com;branch=z9hG4bKx\r\n\
Max-Forwards: 70\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Record-Route: <sip:p0.example.com;lr>\r\n\
X-Drop: me\r\n\
l: 4\r\n\
\r\n\
v=0\r";

    fn edited(edit: impl FnOnce(&mut Editor<'_, '_>)) -> String {
        let mut slots = [HeaderSlot::EMPTY; 16];
        let msg = parse(INVITE, &mut slots).expect("parses");
        let mut editor = Editor::new(&msg);
        edit(&mut editor);
        let mut out = [0u8; 2048];
        let n = editor.write(&mut out).expect("writes");
        String::from_utf8(out[..n].to_vec()).expect("utf8")
    }

    #[test]
    fn proxy_edits_apply_in_one_pass() {
        let text = edited(|e| {
            e.push_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew").unwrap();
            e.decrement_max_forwards().unwrap();
            e.push_record_route(b"<sip:127.0.0.1:5060;lr>").unwrap();
            e.pop_route().unwrap();
            e.set_request_uri("sip:bob@192.0.2.4:5062").unwrap();
            e.remove_header("x-drop").unwrap();
            e.replace_header("Subject", b"hello").unwrap();
        });
        assert!(text.starts_with("INVITE sip:bob@192.0.2.4:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew\r\nVia: SIP/2.0/UDP client"));
        assert!(text.contains("Max-Forwards: 69\r\n"));
        assert!(text.contains("Route: <sip:p2.example.com;lr>\r\n"));
        assert!(!text.contains("p1.example.com"));
        assert!(text.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\nRecord-Route: <sip:p0.example.com;lr>\r\n"));
        assert!(!text.contains("X-Drop"));
        assert!(text.contains("Subject: hello\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\nv=0\r"));
    }

    #[test]
    fn pop_via_keeps_the_rest_of_the_list() {
        let text = edited(|e| {
            e.pop_via().unwrap();
        });
        assert!(text.contains("\r\nVia: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKx\r\n"));
        assert!(!text.contains("client.atlanta"));
    }

    #[test]
    fn response_copies_the_dialog_headers_and_adds_a_to_tag() {
        let mut slots = [HeaderSlot::EMPTY; 16];
        let msg = parse(INVITE, &mut slots).expect("parses");
        let mut out = [0u8; 1024];
        let spec = ResponseSpec {
            code: 180,
            reason: "Ringing",
            to_tag: Some("a6c85cf"),
            headers: &[("Contact", b"<sip:bob@192.0.2.4>")],
            body: b"",
            received_from: None,
        };
        let n = write_response(&msg, &spec, &mut out).expect("writes");
        let text = core::str::from_utf8(&out[..n]).expect("utf8");
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9, SIP/2.0/UDP proxy"));
        assert!(text.contains("To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"));
        assert!(text.contains("CSeq: 1 INVITE\r\n"));
        assert!(text.ends_with("Contact: <sip:bob@192.0.2.4>\r\nContent-Length: 0\r\n\r\n"));
        assert!(!text.contains("Route"));
        let mut tiny = [0u8; 10];
        assert_eq!(write_response(&msg, &spec, &mut tiny), Err(WriteError::BufferTooSmall));
    }

    /// The top Via line of a 200 to a request with Via line `via`, marked as received from `source`.
    fn marked_via(via: &str, source: &str) -> String {
        let text = format!("OPTIONS sip:b@b.example SIP/2.0\r\nVia: {via}\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
        let mut slots = [HeaderSlot::EMPTY; 8];
        let msg = parse(text.as_bytes(), &mut slots).expect("parses");
        let spec = ResponseSpec {
            code: 200,
            reason: "OK",
            to_tag: None,
            headers: &[],
            body: b"",
            received_from: Some(source.parse().expect("a socket address")),
        };
        let mut out = [0u8; 1024];
        let n = write_response(&msg, &spec, &mut out).expect("writes");
        let response = core::str::from_utf8(&out[..n]).expect("utf8");
        response.lines().find(|l| l.starts_with("Via: ")).expect("a Via").to_owned()
    }

    #[test]
    fn the_top_via_is_marked_received_and_its_rport_filled() {
        // RFC 3581 §4: rport gets the source port, and received is added even where the
        // sent-by is the source address.
        assert_eq!(
            marked_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport", "192.0.2.1:9988"),
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=9988;received=192.0.2.1"
        );
        // §18.2.1: a host name, or an address other than the source, gets received.
        assert_eq!(
            marked_via("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK2", "192.0.2.7:5060"),
            "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK2;received=192.0.2.7"
        );
        assert_eq!(
            marked_via("SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bK3", "192.0.2.7:40000"),
            "Via: SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bK3;received=192.0.2.7"
        );
        // The sent-by is the source and there is no rport: nothing to add.
        assert_eq!(
            marked_via("SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK4", "192.0.2.7:5062"),
            "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK4"
        );
        // Only the first value is marked; a received it had is replaced; a quoted `;` and
        // the case of names are kept.
        assert_eq!(
            marked_via(
                "SIP/2.0/UDP h.example;RECEIVED=1.2.3.4;x=\"a;b\";RPort ;branch=z9hG4bK5, SIP/2.0/UDP p.example;branch=z9hG4bKp",
                "192.0.2.7:7"
            ),
            "Via: SIP/2.0/UDP h.example;x=\"a;b\";rport=7;branch=z9hG4bK5;received=192.0.2.7, SIP/2.0/UDP p.example;branch=z9hG4bKp"
        );
        // IPv6: the sent-by reference compares without its brackets; received has none.
        assert_eq!(
            marked_via("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK6", "[2001:db8::9]:5060"),
            "Via: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK6"
        );
        assert_eq!(
            marked_via("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK7;rport", "[2001:db8::1]:6000"),
            "Via: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK7;rport=6000;received=2001:db8::1"
        );
        // A sent-by this does not read as an address (LWS around its colon) gets received
        // even where it names the source: the answer address is the same.
        assert_eq!(
            marked_via("SIP/2.0/UDP 192.0.2.7 : 5062;branch=z9hG4bK9", "192.0.2.7:5062"),
            "Via: SIP/2.0/UDP 192.0.2.7 : 5062;branch=z9hG4bK9;received=192.0.2.7"
        );
        // A v4-mapped source (a dual-stack socket) is the IPv4 address.
        assert_eq!(
            marked_via("SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK8", "[::ffff:192.0.2.7]:5062"),
            "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK8"
        );
    }

    #[test]
    fn a_relayed_request_carries_its_top_via_marked_under_ours() {
        let text = edited(|e| {
            e.push_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew").unwrap();
            e.mark_received("192.0.2.99:5070".parse().unwrap()).unwrap();
        });
        assert!(text.contains(
            "\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew\r\nVia: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.99, SIP/2.0/UDP proxy.example.com;branch=z9hG4bKx\r\n"
        ));
        let mut slots = [HeaderSlot::EMPTY; 16];
        let msg = parse(INVITE, &mut slots).expect("parses");
        let mut editor = Editor::new(&msg);
        editor.pop_via().unwrap().mark_received("192.0.2.99:5070".parse().unwrap()).unwrap();
        assert_eq!(editor.write(&mut [0u8; 2048]), Err(WriteError::ConflictingEdits));
    }

    #[test]
    fn to_tags_are_found_in_every_form() {
        assert!(to_has_tag(b"<sip:bob@b>;tag=1"));
        assert!(to_has_tag(b"\"Bob\" <sip:bob@b;transport=tcp> ; TAG = x"));
        assert!(to_has_tag(b"sip:bob@b;tag=2"));
        assert!(!to_has_tag(b"<sip:bob@b;tag=inside-the-uri>"));
        assert!(!to_has_tag(b"sip:bob@b"));
        assert!(!to_has_tag(b"\"tag=\" <sip:x@y>;other=1"));
    }

    #[test]
    fn max_forwards_at_zero_cannot_be_decremented() {
        let zero = b"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n";
        let mut slots = [HeaderSlot::EMPTY; 4];
        let msg = parse(zero, &mut slots).expect("parses");
        let mut editor = Editor::new(&msg);
        editor.decrement_max_forwards().unwrap();
        assert_eq!(editor.write(&mut [0u8; 256]), Err(WriteError::MaxForwardsExhausted));
    }

    #[test]
    fn cancel_and_ack_copy_what_section_9_1_and_17_1_1_3_name() {
        let mut slots = [HeaderSlot::EMPTY; 64];
        let invite = parse(INVITE, &mut slots).expect("parses");
        let mut out = [0u8; 1024];
        let n = write_cancel(&invite, &mut out).expect("writes");
        let text = core::str::from_utf8(&out[..n]).expect("utf8");
        assert!(text.starts_with("CANCEL sip:bob@biloxi.example.com SIP/2.0\r\n"), "{text}");
        assert!(text.contains("Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n"));
        assert!(!text.contains("proxy.example.com;branch"), "only the top Via: {text}");
        assert!(text.contains("Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"));
        assert!(text.contains("CSeq: 1 CANCEL\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        let mut again = [HeaderSlot::EMPTY; 64];
        parse(&out[..n], &mut again).expect("the CANCEL parses");

        let response =
            b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\nTo: Bob <sip:bob@biloxi.example.com>;tag=8321234356\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut rslots = [HeaderSlot::EMPTY; 64];
        let response = parse(response, &mut rslots).expect("parses");
        let n = write_ack(&invite, &response, &mut out).expect("writes");
        let text = core::str::from_utf8(&out[..n]).expect("utf8");
        assert!(text.starts_with("ACK sip:bob@biloxi.example.com SIP/2.0\r\n"), "{text}");
        assert!(text.contains("To: Bob <sip:bob@biloxi.example.com>;tag=8321234356\r\n"), "{text}");
        assert!(text.contains("CSeq: 1 ACK\r\n"), "{text}");
    }
}
