//! Typed header decoding, on demand: each decoder reads one header value (or
//! one element of a comma-separated list) into a struct that borrows the
//! message. Nothing is decoded until asked, nothing is allocated.

use crate::error::{ErrorKind, ParseError};
use crate::grammar::{
    GrammarError, PResult, class, class1, complete, digits, expect, fail, header_params, is_lws, is_token_char, lws,
    number_at_most, quoted_string, separator, sws, tail_at, token,
};
use crate::header::HeaderName;
use crate::header::HeaderSlot;
use crate::limits::{MAX_MESSAGE_BYTES, MAX_VALUES_PER_HEADER, MAX_VIAS};
use crate::message::{Message, offset_in};
use crate::method::Method;
use crate::params::Params;
use crate::uri::Uri;

/// The transport of a Via (`SIP/2.0/UDP`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Transport<'a> {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS
    Tls,
    /// SCTP
    Sctp,
    /// WebSocket (RFC 7118)
    Ws,
    /// Secure WebSocket (RFC 7118)
    Wss,
    /// Anything else, as written.
    Other(&'a str),
}

impl<'a> Transport<'a> {
    fn from_token(token: &'a str) -> Self {
        match token {
            t if t.eq_ignore_ascii_case("UDP") => Transport::Udp,
            t if t.eq_ignore_ascii_case("TCP") => Transport::Tcp,
            t if t.eq_ignore_ascii_case("TLS") => Transport::Tls,
            t if t.eq_ignore_ascii_case("SCTP") => Transport::Sctp,
            t if t.eq_ignore_ascii_case("WS") => Transport::Ws,
            t if t.eq_ignore_ascii_case("WSS") => Transport::Wss,
            other => Transport::Other(other),
        }
    }

    /// The transport as text, upper-case for the known ones.
    pub fn as_str(&self) -> &'a str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Other(t) => t,
        }
    }

    /// Whether the transport is reliable (RFC 3261 §17: timers differ).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Transport::Udp | Transport::Other(_))
    }
}

/// The branch magic cookie of RFC 3261 §8.1.1.7.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via value: `sent-protocol LWS sent-by *( SEMI via-params )`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name (`SIP`).
    pub protocol_name: &'a str,
    /// Protocol version (`2.0`).
    pub protocol_version: &'a str,
    /// Transport.
    pub transport: Transport<'a>,
    /// sent-by host (IPv6 references keep their brackets).
    pub host: &'a str,
    /// sent-by port, if given.
    pub port: Option<u16>,
    /// `branch` parameter.
    pub branch: Option<&'a str>,
    /// `received` parameter.
    pub received: Option<&'a str>,
    /// `rport` (RFC 3581): `Some(None)` when present without a value.
    pub rport: Option<Option<u16>>,
    /// `maddr` parameter.
    pub maddr: Option<&'a str>,
    /// `ttl` parameter.
    pub ttl: Option<u8>,
    /// All parameters, the ones above included.
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Decodes exactly one via-parm.
    pub fn parse(value: &'a str) -> Result<Via<'a>, ParseError> {
        complete(value, via_parm)
    }

    /// A Via of `protocol/version/transport host[:port]`, no parameters yet.
    fn sent_by(
        protocol_name: &'a str,
        protocol_version: &'a str,
        transport: &'a str,
        host: &'a str,
        port: Option<u16>,
    ) -> Via<'a> {
        Via {
            protocol_name,
            protocol_version,
            transport: Transport::from_token(transport),
            host,
            port,
            branch: None,
            received: None,
            rport: None,
            maddr: None,
            ttl: None,
            params: Params::default(),
        }
    }

    /// Picks out one via-param this struct names (the first occurrence wins; `rport` and
    /// `ttl` must be numbers in range). The raw list is kept in `params` by the caller.
    fn take_param(&mut self, name: &'a str, value: Option<&'a str>) -> Result<(), GrammarError<'a>> {
        match via_param(name.as_bytes(), value.map(str::as_bytes)) {
            Ok(ViaParam::Branch) => self.branch = self.branch.or(value),
            Ok(ViaParam::Received) => self.received = self.received.or(value),
            Ok(ViaParam::Maddr) => self.maddr = self.maddr.or(value),
            Ok(ViaParam::Rport(port)) => self.rport = Some(port),
            Ok(ViaParam::Ttl(ttl)) => self.ttl = Some(ttl),
            Ok(ViaParam::Other) => {}
            Err(kind) => return Err(GrammarError::new(value.unwrap_or(name), kind)),
        }
        Ok(())
    }

    /// Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581): the `received` address
    /// if there is one, else the sent-by host, at the `rport` value if there is one, else the
    /// sent-by port (5060 when absent). IP literals only (an IPv6 reference loses its
    /// brackets): `None` for a host name, which would need DNS.
    pub fn response_address(&self) -> Option<std::net::SocketAddr> {
        let host = self.received.unwrap_or(self.host).trim_matches(['[', ']']);
        let port = self.rport.flatten().or(self.port).unwrap_or(5060);
        Some(std::net::SocketAddr::new(host.parse().ok()?, port))
    }

    /// Whether the branch starts with the RFC 3261 magic cookie (and has more after it),
    /// so §17.2.3 matching applies rather than the RFC 2543 fallback.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch.is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }
}

/// The parts of a Via that §17.2.3 matching reads: [`Message::top_via_branch_sent_by`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ViaBranchSentBy<'a> {
    /// The `branch` parameter, magic cookie first.
    pub branch: &'a [u8],
    /// The sent-by host as written (IPv6 references keep their brackets).
    pub host: &'a [u8],
    /// The sent-by port, if given.
    pub port: Option<u16>,
}

impl<'a> From<Via<'a>> for ViaBranchSentBy<'a> {
    fn from(via: Via<'a>) -> Self {
        ViaBranchSentBy { branch: via.branch.unwrap_or_default().as_bytes(), host: via.host.as_bytes(), port: via.port }
    }
}

/// `host` of a sent-by: hostname, IPv4 address or IPv6 reference (the URI host rule).
fn sent_by_host(input: &str) -> PResult<'_, &str> {
    match crate::uri::host_len(input.as_bytes(), 0) {
        Ok(n) => Ok((&input[n..], &input[..n])),
        Err(_) => fail(input, ErrorKind::ExpectedHost),
    }
}

/// `port = 1*DIGIT` (0-65535).
fn port(input: &str) -> PResult<'_, u16> {
    let (rest, n) = expect(ErrorKind::ExpectedPort, number_at_most(u64::from(u16::MAX)))(input)?;
    Ok((rest, n as u16))
}

/// `via-parm = sent-protocol LWS sent-by *( SEMI via-params )`.
pub(crate) fn via_parm(input: &str) -> PResult<'_, Via<'_>> {
    match via_parm_plain(input) {
        Some(decoded) => Ok(decoded),
        None => via_parm_grammar(input),
    }
}

/// [`via_parm`] by the grammar's combinators: every shape the ABNF allows.
fn via_parm_grammar(input: &str) -> PResult<'_, Via<'_>> {
    let i = sws(input);
    let (i, protocol_name) = expect(ErrorKind::ExpectedSentProtocol, token)(i)?;
    let (i, ()) = expect(ErrorKind::ExpectedSentProtocol, separator('/'))(i)?;
    let (i, protocol_version) = expect(ErrorKind::ExpectedSentProtocol, token)(i)?;
    let (i, ()) = expect(ErrorKind::ExpectedSentProtocol, separator('/'))(i)?;
    let (i, transport) = expect(ErrorKind::ExpectedSentProtocol, token)(i)?;
    let (i, _) = expect(ErrorKind::ExpectedHost, lws)(i)?;
    let (i, host) = sent_by_host(i)?;
    let (i, port) = match separator(':')(i) {
        Ok((after, ())) => {
            let (after, p) = port(after)?;
            (after, Some(p))
        }
        Err(_) => (i, None),
    };
    let mut via = Via::sent_by(protocol_name, protocol_version, transport, host, port);
    let (rest, raw) = header_params(i, |name, value| via.take_param(name, value))?;
    via.params = Params::semicolon(raw);
    Ok((rest, via))
}

/// What one via-param sets, by its name (case-insensitive); both decoders use it.
enum ViaParam {
    Branch,
    Received,
    Maddr,
    /// `rport`, with its value if it has one.
    Rport(Option<u16>),
    Ttl(u8),
    /// A parameter the Via struct does not pick out.
    Other,
}

/// Classifies a via-param: `rport` must have no value or a port, `ttl` a number 0-255
/// (the error names what was expected; its place is the value, or the name when it has none).
fn via_param(name: &[u8], value: Option<&[u8]>) -> Result<ViaParam, ErrorKind> {
    // `str::parse`, as the grammar has always read these (it takes a leading `+`).
    fn number<N: core::str::FromStr>(value: &[u8]) -> Option<N> {
        core::str::from_utf8(value).ok()?.parse().ok()
    }
    Ok(if name.eq_ignore_ascii_case(b"branch") {
        ViaParam::Branch
    } else if name.eq_ignore_ascii_case(b"received") {
        ViaParam::Received
    } else if name.eq_ignore_ascii_case(b"maddr") {
        ViaParam::Maddr
    } else if name.eq_ignore_ascii_case(b"rport") {
        ViaParam::Rport(match value {
            None => None,
            Some(v) => Some(number(v).ok_or(ErrorKind::ExpectedPort)?),
        })
    } else if name.eq_ignore_ascii_case(b"ttl") {
        ViaParam::Ttl(value.and_then(number).ok_or(ErrorKind::ExpectedNumber)?)
    } else {
        ViaParam::Other
    })
}

/// A byte range `start..end` of the text a [`PlainVia`] was scanned from.
type Span = core::ops::Range<usize>;

/// A via-parm of the common shape, as spans of the bytes [`scan_plain_via`] read.
struct PlainVia {
    protocol_name: Span,
    protocol_version: Span,
    transport: Span,
    host: Span,
    port: Option<u16>,
    params: Span,
    branch: Option<Span>,
    received: Option<Span>,
    maddr: Option<Span>,
    rport: Option<Option<u16>>,
    ttl: Option<u8>,
}

/// The common shape of a via-parm, scanned as bytes without the grammar's combinators: no
/// LWS except the one run between sent-protocol and sent-by, a port of at most five digits,
/// parameters `;token[=value]` with unquoted values. Anything else (folds, spaces around
/// separators, quoted values, a bad `rport` or `ttl`, too many parameters) returns `None`
/// and the grammar decodes it, so both give the same answer where this one answers (a
/// property test checks it). Every span is ASCII, so it is a char boundary of the text.
/// Every request's top Via is read for §17.2.3 matching: this took the shard's top-Via
/// decode from 1.8 k to 1.3 k instructions (callgrind), and
/// [`Message::top_via_branch_sent_by`] reads it without decoding a [`Via`] at all.
#[inline(always)]
fn scan_plain_via(bytes: &[u8]) -> Option<PlainVia> {
    let token_end =
        |from: usize| from + bytes[from..].iter().position(|&c| !is_token_char(c)).unwrap_or(bytes.len() - from);
    let name_end = token_end(0);
    let version_at = name_end + 1;
    let version_end = (name_end > 0 && bytes.get(name_end) == Some(&b'/')).then(|| token_end(version_at))?;
    let transport_at = version_end + 1;
    let transport_end =
        (version_end > version_at && bytes.get(version_end) == Some(&b'/')).then(|| token_end(transport_at))?;
    let lws_len = bytes[transport_end..].iter().position(|&c| !is_lws(c)).unwrap_or(bytes.len() - transport_end);
    if transport_end == transport_at || lws_len == 0 {
        return None;
    }
    let host_at = transport_end + lws_len;
    let host_end = host_at + crate::uri::host_len(&bytes[host_at..], 0).ok()?;
    let mut at = host_end;
    let port = if bytes.get(at) == Some(&b':') {
        let digits = bytes[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u32 = bytes[at + 1..at + 1 + digits].iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'));
        at += 1 + digits;
        Some(u16::try_from(value).ok()?)
    } else {
        None
    };
    let mut via = PlainVia {
        protocol_name: 0..name_end,
        protocol_version: version_at..version_end,
        transport: transport_at..transport_end,
        host: host_at..host_end,
        port,
        params: at..at,
        branch: None,
        received: None,
        maddr: None,
        rport: None,
        ttl: None,
    };
    let mut count = 0;
    while bytes.get(at) == Some(&b';') {
        count += 1;
        let name_at = at + 1;
        let name_end = token_end(name_at);
        if name_end == name_at || count > crate::limits::MAX_PARAMS {
            return None;
        }
        let value = if bytes.get(name_end) == Some(&b'=') {
            let value_at = name_end + 1;
            let len = bytes[value_at..]
                .iter()
                .position(|&c| !(is_token_char(c) || matches!(c, b':' | b'[' | b']')))
                .unwrap_or(bytes.len() - value_at);
            if len == 0 {
                return None;
            }
            at = value_at + len;
            Some(value_at..at)
        } else {
            at = name_end;
            None
        };
        match via_param(&bytes[name_at..name_end], value.clone().map(|v| &bytes[v])).ok()? {
            ViaParam::Branch => via.branch = via.branch.or(value),
            ViaParam::Received => via.received = via.received.or(value),
            ViaParam::Maddr => via.maddr = via.maddr.or(value),
            ViaParam::Rport(port) => via.rport = Some(port),
            ViaParam::Ttl(ttl) => via.ttl = Some(ttl),
            ViaParam::Other => {}
        }
    }
    // The long way reads LWS after the last parameter as the start of another separator.
    if bytes.get(at).is_some_and(|&c| is_lws(c)) {
        return None;
    }
    via.params.end = at;
    Some(via)
}

/// [`via_parm`] for the common shape ([`scan_plain_via`]); `None` for anything else.
fn via_parm_plain(input: &str) -> Option<(&str, Via<'_>)> {
    let plain = scan_plain_via(input.as_bytes())?;
    let text = |span: Span| &input[span];
    let via = Via {
        protocol_name: text(plain.protocol_name),
        protocol_version: text(plain.protocol_version),
        transport: Transport::from_token(text(plain.transport)),
        host: text(plain.host),
        port: plain.port,
        branch: plain.branch.map(text),
        received: plain.received.map(text),
        rport: plain.rport,
        maddr: plain.maddr.map(text),
        ttl: plain.ttl,
        params: Params::semicolon(text(plain.params.clone())),
    };
    Some((&input[plain.params.end..], via))
}

/// `name-addr / addr-spec` followed by header parameters, as in From, To, Contact,
/// Route and Record-Route.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name: a quoted string's content (quoted-pairs still escaped) or the tokens.
    pub display_name: Option<&'a str>,
    /// The URI.
    pub uri: Uri<'a>,
    /// Whether the URI was written in `<>` (name-addr form).
    pub bracketed: bool,
    /// Header parameters after the address (`;tag=...;expires=...`).
    pub params: Params<'a>,
    /// The `tag` parameter (From and To), picked out while the parameters were validated.
    tag: Option<&'a str>,
    /// The raw `expires` and `q` parameters (Contact), picked out the same way.
    expires_q: (Option<&'a str>, Option<&'a str>),
}

impl<'a> NameAddr<'a> {
    /// Decodes one value: `( name-addr / addr-spec ) *( SEMI generic-param )`.
    pub fn parse(value: &'a str) -> Result<NameAddr<'a>, ParseError> {
        complete(value, name_addr_params)
    }

    /// The `tag` parameter (From and To).
    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }
}

/// `name-addr = [ display-name ] LAQUOT addr-spec RAQUOT` or a bare `addr-spec`.
fn name_addr_or_spec(input: &str) -> PResult<'_, (Option<&str>, &str, bool)> {
    let i = sws(input);
    let (display, after_lt) = if i.starts_with('"') {
        let (rest, display) = quoted_string(i)?;
        let rest = sws(rest);
        match rest.strip_prefix('<') {
            Some(after) => (Some(display), after),
            None => return fail(rest, ErrorKind::ExpectedAngleBracket),
        }
    } else {
        // `display-name = *(token LWS)`; RFC 4475 §3.1.1.6 accepts no LWS before '<'.
        let words = i.bytes().take_while(|&c| is_token_char(c) || is_lws(c)).count();
        match i[words..].strip_prefix('<') {
            Some(after) => {
                let name = i[..words].trim_end_matches([' ', '\t', '\r', '\n']);
                (if name.is_empty() { None } else { Some(name) }, after)
            }
            None => {
                // addr-spec: the URI ends where header parameters or the next value begin.
                let len =
                    i.bytes().take_while(|&c| !matches!(c, b';' | b',' | b'<' | b'>' | b'"') && !is_lws(c)).count();
                if len == 0 {
                    return fail(i, ErrorKind::ExpectedUri);
                }
                return Ok((&i[len..], (None, &i[..len], false)));
            }
        }
    };
    let Some(close) = after_lt.find('>') else { return fail(after_lt, ErrorKind::ExpectedAngleBracket) };
    Ok((&after_lt[close + 1..], (display, &after_lt[..close], true)))
}

fn uri_in<'a>(text: &'a str) -> Result<Uri<'a>, nom::Err<GrammarError<'a>>> {
    Uri::parse(text).map_err(|e| nom::Err::Error(GrammarError::new(tail_at(text, e.offset as usize), e.kind)))
}

/// One From/To/Contact/Route element with its parameters.
pub(crate) fn name_addr_params(input: &str) -> PResult<'_, NameAddr<'_>> {
    let (rest, (display_name, uri_text, bracketed)) = name_addr_or_spec(input)?;
    let uri = uri_in(uri_text)?;
    if !bracketed && uri.headers.is_some() {
        // RFC 3261 §20: a URI with '?', ';' or ',' must be enclosed in <>.
        return fail(uri_text, ErrorKind::ExpectedAngleBracket);
    }
    let (mut tag, mut expires, mut q) = (None, None, None);
    let (rest, raw) = header_params(rest, |name, value| {
        // The first occurrence wins; the three are the parameters the roles read on every message.
        let slot = match name.len() {
            3 if name.eq_ignore_ascii_case("tag") => &mut tag,
            7 if name.eq_ignore_ascii_case("expires") => &mut expires,
            1 if name.eq_ignore_ascii_case("q") => &mut q,
            _ => return Ok(()),
        };
        if slot.is_none() {
            *slot = Some(value.map(crate::params::unquote));
        }
        Ok(())
    })?;
    let params = Params::semicolon(raw);
    Ok((
        rest,
        NameAddr {
            display_name,
            uri,
            bracketed,
            params,
            tag: tag.flatten(),
            expires_q: (expires.flatten(), q.flatten()),
        },
    ))
}

/// One Contact value: `*` or an address with `expires` and `q`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // Boxing the address would allocate; values live briefly on the stack.
pub enum Contact<'a> {
    /// `Contact: *` (remove all bindings, with Expires: 0).
    Wildcard,
    /// An address.
    Address {
        /// The address and all its parameters.
        addr: NameAddr<'a>,
        /// `expires` parameter in seconds (overlarge values saturate).
        expires: Option<u32>,
        /// `q` parameter in thousandths (0-1000).
        q: Option<u16>,
    },
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let thousandths =
        frac.bytes().chain(core::iter::repeat(b'0')).take(3).fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn contact_value(input: &str) -> PResult<'_, Contact<'_>> {
    let i = sws(input);
    if let Some(rest) = i.strip_prefix('*') {
        return Ok((rest, Contact::Wildcard));
    }
    let (rest, addr) = name_addr_params(i)?;
    let expires = match addr.expires_q.0 {
        None => None,
        Some(v) => match digits(v) {
            Ok(("", n)) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(_) => return fail(v, ErrorKind::ExpectedNumber),
            Err(nom::Err::Error(GrammarError { kind: Some(ErrorKind::NumberTooLarge), .. })) => Some(u32::MAX),
            Err(_) => return fail(v, ErrorKind::ExpectedNumber),
        },
    };
    let q = match addr.expires_q.1 {
        None => None,
        Some(v) => Some(qvalue(v).ok_or(nom::Err::Error(GrammarError::new(v, ErrorKind::ExpectedParam)))?),
    };
    Ok((rest, Contact::Address { addr, expires, q }))
}

/// `CSeq = 1*DIGIT LWS Method`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Method.
    pub method: Method<'a>,
}

impl<'a> CSeq<'a> {
    /// Decodes a CSeq value.
    pub fn parse(value: &'a str) -> Result<CSeq<'a>, ParseError> {
        complete(value, cseq)
    }
}

fn cseq(input: &str) -> PResult<'_, CSeq<'_>> {
    let (i, seq) = number_at_most(u64::from(u32::MAX))(sws(input))?;
    let (i, _) = expect(ErrorKind::ExpectedToken, lws)(i)?;
    let (i, method) = expect(ErrorKind::ExpectedMethod, token)(i)?;
    Ok((i, CSeq { seq: seq as u32, method: Method::from_token(method) }))
}

/// `callid = word [ "@" word ]`.
fn call_id(input: &str) -> PResult<'_, &str> {
    let word = class1(class::WORD, ErrorKind::ExpectedToken);
    let (rest, _) = word(input)?;
    let rest = match rest.strip_prefix('@') {
        Some(after) => word(after)?.0,
        None => rest,
    };
    Ok((rest, &input[..input.len() - rest.len()]))
}

/// `media-type = m-type SLASH m-subtype *(SEMI m-parameter)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// Type (`application`).
    pub kind: &'a str,
    /// Subtype (`sdp`).
    pub subtype: &'a str,
    /// Parameters.
    pub params: Params<'a>,
}

fn media_type(input: &str) -> PResult<'_, MediaType<'_>> {
    let (i, kind) = token(sws(input))?;
    let (i, ()) = separator('/')(i)?;
    let (i, subtype) = token(i)?;
    let (i, raw) = header_params(i, |_, _| Ok(()))?;
    Ok((i, MediaType { kind, subtype, params: Params::semicolon(raw) }))
}

/// A token with parameters: `Event` (event-type) and `Subscription-State` (substate-value).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TokenParams<'a> {
    /// The token (event package, or subscription state).
    pub value: &'a str,
    /// Parameters (`id`, `expires`, `reason`, `retry-after`, ...).
    pub params: Params<'a>,
}

fn token_params(input: &str) -> PResult<'_, TokenParams<'_>> {
    let (i, value) = token(sws(input))?;
    let (i, raw) = header_params(i, |_, _| Ok(()))?;
    Ok((i, TokenParams { value, params: Params::semicolon(raw) }))
}

/// Credentials or a challenge: `auth-scheme LWS auth-param *(COMMA auth-param)`
/// (Authorization, Proxy-Authorization, WWW-Authenticate, Proxy-Authenticate).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Auth<'a> {
    /// The scheme (`Digest`).
    pub scheme: &'a str,
    /// The auth-params, comma-separated.
    pub params: Params<'a>,
}

impl<'a> Auth<'a> {
    /// Decodes credentials or a challenge.
    pub fn parse(value: &'a str) -> Result<Auth<'a>, ParseError> {
        complete(value, auth)
    }

    /// Whether the scheme is Digest (RFC 3261 §22.4).
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Digest")
    }

    /// The value of a digest parameter, unquoted (`username`, `realm`, `nonce`, `uri`,
    /// `response`, `algorithm`, `cnonce`, `opaque`, `qop`, `nc`, `stale`, `domain`).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.value(name)
    }
}

/// `auth-param = auth-param-name EQUAL ( token / quoted-string )`.
fn auth_param(input: &str) -> PResult<'_, ()> {
    let (i, _) = expect(ErrorKind::ExpectedParam, token)(sws(input))?;
    let (i, ()) = expect(ErrorKind::ExpectedParam, separator('='))(i)?;
    let i = sws(i);
    let (i, _) = if i.starts_with('"') { quoted_string(i)? } else { expect(ErrorKind::ExpectedParam, token)(i)? };
    Ok((i, ()))
}

fn auth(input: &str) -> PResult<'_, Auth<'_>> {
    let (i, scheme) = token(sws(input))?;
    let (i, _) = expect(ErrorKind::ExpectedParam, lws)(i)?;
    let start = i;
    let (mut i, ()) = auth_param(i)?;
    let mut count = 1;
    while let Ok((after, ())) = separator(',')(i) {
        count += 1;
        if count > crate::limits::MAX_PARAMS {
            return fail(i, ErrorKind::TooManyValues);
        }
        i = auth_param(after)?.0;
    }
    let raw = &start[..start.len() - i.len()];
    Ok((i, Auth { scheme, params: Params::comma(raw) }))
}

/// Decoded values of every header field with one name, in order, comma-separated
/// lists flattened. Yields an error (and then stops) at the first bad value.
#[derive(Clone)]
pub struct Values<'a, T> {
    slots: core::slice::Iter<'a, HeaderSlot>,
    name: HeaderName,
    buf: &'a [u8],
    current: Option<&'a str>,
    decode: fn(&'a str) -> PResult<'a, T>,
    count: usize,
    limit: (usize, ErrorKind),
    done: bool,
}

impl<'a, T> Values<'a, T> {
    fn new(msg: &Message<'a>, name: HeaderName, decode: fn(&'a str) -> PResult<'a, T>) -> Self {
        Values {
            slots: msg.slots_from_first(name).iter(),
            name,
            buf: msg.buffer(),
            current: None,
            decode,
            count: 0,
            limit: (MAX_VALUES_PER_HEADER, ErrorKind::TooManyValues),
            done: false,
        }
    }

    fn stop(&mut self, error: ParseError) -> Option<Result<T, ParseError>> {
        self.done = true;
        Some(Err(error))
    }
}

/// A header value as text: its octets checked as UTF-8 (an error names the first bad one).
fn value_text<'a>(buf: &'a [u8], value: &'a [u8]) -> Result<&'a str, ParseError> {
    core::str::from_utf8(value)
        .map_err(|e| ParseError::new(ErrorKind::InvalidUtf8, offset_in(buf, value) + e.valid_up_to()))
}

/// Whether what follows a value (SWS skipped) ends it: nothing, or the comma before the next one.
#[inline]
fn ends_value(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with(',')
}

/// Decodes the first of the comma-separated values in `text` (part of `buf`): the value, and
/// what follows it, empty or starting with the comma before the next value (anything else
/// after a value is an error).
#[inline]
fn first_value<'a, T>(
    buf: &'a [u8],
    text: &'a str,
    decode: impl FnOnce(&'a str) -> PResult<'a, T>,
) -> Result<(T, &'a str), ParseError> {
    match decode(text) {
        Ok((rest, value)) => {
            let rest = sws(rest);
            if ends_value(rest) {
                Ok((value, rest))
            } else {
                Err(GrammarError::new(rest, ErrorKind::TrailingData).locate(buf))
            }
        }
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.locate(buf)),
        Err(nom::Err::Incomplete(_)) => Err(ParseError::new(ErrorKind::ExpectedToken, offset_in(buf, text.as_bytes()))),
    }
}

impl<'a, T> Iterator for Values<'a, T> {
    type Item = Result<T, ParseError>;

    fn next(&mut self) -> Option<Result<T, ParseError>> {
        if self.done {
            return None;
        }
        loop {
            let Some(text) = self.current else {
                let header = self.slots.find(|s| s.name == self.name)?.view(self.buf);
                match value_text(self.buf, header.value) {
                    Ok(text) => self.current = Some(text),
                    Err(e) => return self.stop(e),
                }
                continue;
            };
            if self.count == self.limit.0 {
                return self.stop(GrammarError::new(text, self.limit.1).locate(self.buf));
            }
            self.count += 1;
            return match first_value(self.buf, text, self.decode) {
                Ok((value, rest)) => {
                    self.current = rest.strip_prefix(',').map(sws);
                    Some(Ok(value))
                }
                Err(e) => self.stop(e),
            };
        }
    }
}

fn method_token(input: &str) -> PResult<'_, Method<'_>> {
    let (rest, t) = token(sws(input))?;
    Ok((rest, Method::from_token(t)))
}

fn option_tag(input: &str) -> PResult<'_, &str> {
    token(sws(input))
}

/// Typed accessors. Each returns `Ok(None)` when the header is absent and an
/// error (offset from the start of the message) when it is present but broken.
impl<'a> Message<'a> {
    fn single<T>(&self, name: HeaderName, decode: fn(&'a str) -> PResult<'a, T>) -> Result<Option<T>, ParseError> {
        let Some(value) = self.header(name) else { return Ok(None) };
        let at = self.offset_of(value);
        let text =
            core::str::from_utf8(value).map_err(|e| ParseError::new(ErrorKind::InvalidUtf8, at + e.valid_up_to()))?;
        complete(text, decode).map(Some).map_err(|e| e.shifted(at))
    }

    /// The Request-URI, decoded (requests only).
    pub fn request_uri(&self) -> Option<Result<Uri<'a>, ParseError>> {
        let line = self.request_line()?;
        let at = self.offset_of(line.uri.as_bytes());
        Some(Uri::parse(line.uri).map_err(|e| e.shifted(at)))
    }

    /// Every Via value, top first (at most [`MAX_VIAS`]).
    pub fn vias(&self) -> Values<'a, Via<'a>> {
        let mut values = Values::new(self, HeaderName::Via, via_parm);
        values.limit = (MAX_VIAS, ErrorKind::TooManyVias);
        values
    }

    /// The topmost Via value: what `vias().next()` gives, without the iterator (every request's
    /// top Via is decoded for §17.2.3 matching, so this path is the hot one).
    pub fn top_via(&self) -> Result<Option<Via<'a>>, ParseError> {
        let buf = self.buffer();
        let Some(value) = self.header(HeaderName::Via) else { return Ok(None) };
        let (via, _) = first_value(buf, value_text(buf, value)?, via_parm)?;
        Ok(Some(via))
    }

    /// The top Via's branch and sent-by, what §17.2.3 matches a request to its transaction by,
    /// read by one byte scan without decoding a [`Via`] (nor checking the octets it scanned as
    /// UTF-8: they are ASCII). `None` unless the top Via has the common shape (see
    /// [`Self::top_via`]'s plain path) and a branch with the magic cookie: the caller then
    /// decodes it with [`Self::top_via`]. Where this answers, [`Self::top_via`] gives a Via
    /// with the same branch, host and port (a property test holds the two to it).
    #[inline]
    pub fn top_via_branch_sent_by(&self) -> Option<ViaBranchSentBy<'a>> {
        let value = self.header(HeaderName::Via)?;
        let plain = scan_plain_via(value)?;
        let branch = &value[plain.branch?];
        if branch.len() <= MAGIC_COOKIE.len() || !branch.starts_with(MAGIC_COOKIE.as_bytes()) {
            return None;
        }
        // What follows the via-parm: nothing, or the comma before the next value. The rest of
        // the line must be text, as for top_via, which reads the whole line as a str.
        let rest = &value[plain.params.end..];
        if !rest.is_empty() && !core::str::from_utf8(rest).is_ok_and(|rest| ends_value(sws(rest))) {
            return None;
        }
        Some(ViaBranchSentBy { branch, host: &value[plain.host], port: plain.port })
    }

    /// `Call-ID`.
    pub fn call_id(&self) -> Result<Option<&'a str>, ParseError> {
        self.single(HeaderName::CallId, call_id)
    }

    /// `CSeq`.
    pub fn cseq(&self) -> Result<Option<CSeq<'a>>, ParseError> {
        self.single(HeaderName::CSeq, cseq)
    }

    /// `From`.
    pub fn from(&self) -> Result<Option<NameAddr<'a>>, ParseError> {
        self.single(HeaderName::From, name_addr_params)
    }

    /// `To`.
    pub fn to(&self) -> Result<Option<NameAddr<'a>>, ParseError> {
        self.single(HeaderName::To, name_addr_params)
    }

    /// `Max-Forwards` (0-255).
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        self.single(HeaderName::MaxForwards, |i| {
            let (rest, n) = number_at_most(255)(sws(i))?;
            Ok((rest, n as u8))
        })
    }

    /// `Content-Length`.
    pub fn content_length(&self) -> Result<Option<u32>, ParseError> {
        self.single(HeaderName::ContentLength, |i| {
            let (rest, n) = number_at_most(MAX_MESSAGE_BYTES as u64)(sws(i))?;
            Ok((rest, n as u32))
        })
    }

    /// `Expires` in seconds.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        self.single(HeaderName::Expires, |i| {
            let (rest, n) = number_at_most(u64::from(u32::MAX))(sws(i))?;
            Ok((rest, n as u32))
        })
    }

    /// `Content-Type`.
    pub fn content_type(&self) -> Result<Option<MediaType<'a>>, ParseError> {
        self.single(HeaderName::ContentType, media_type)
    }

    /// `Event` (RFC 6665).
    pub fn event(&self) -> Result<Option<TokenParams<'a>>, ParseError> {
        self.single(HeaderName::Event, token_params)
    }

    /// `Subscription-State` (RFC 6665).
    pub fn subscription_state(&self) -> Result<Option<TokenParams<'a>>, ParseError> {
        self.single(HeaderName::SubscriptionState, token_params)
    }

    /// Every Contact value (`*` included).
    pub fn contacts(&self) -> Values<'a, Contact<'a>> {
        Values::new(self, HeaderName::Contact, contact_value)
    }

    /// Every Route value, top first.
    pub fn routes(&self) -> Values<'a, NameAddr<'a>> {
        Values::new(self, HeaderName::Route, name_addr_params)
    }

    /// Every Record-Route value, top first.
    pub fn record_routes(&self) -> Values<'a, NameAddr<'a>> {
        Values::new(self, HeaderName::RecordRoute, name_addr_params)
    }

    /// Option tags of `Require`, `Supported`, `Proxy-Require` or `Unsupported`.
    pub fn option_tags(&self, name: HeaderName) -> Values<'a, &'a str> {
        Values::new(self, name, option_tag)
    }

    /// Methods listed in `Allow`.
    pub fn allow(&self) -> Values<'a, Method<'a>> {
        Values::new(self, HeaderName::Allow, method_token)
    }

    /// Credentials or challenges of an auth header (`Authorization`,
    /// `Proxy-Authorization`, `WWW-Authenticate`, `Proxy-Authenticate`), one per header field.
    pub fn auth(&self, name: HeaderName) -> impl Iterator<Item = Result<Auth<'a>, ParseError>> + 'a {
        let buf = self.buffer();
        self.headers_named(name).map(move |h| {
            let at = offset_in(buf, h.value);
            let text = core::str::from_utf8(h.value)
                .map_err(|e| ParseError::new(ErrorKind::InvalidUtf8, at + e.valid_up_to()))?;
            Auth::parse(text).map_err(|e| e.shifted(at))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of Via values, well and badly formed, for the plain/grammar comparison.
    const VIA_PIECES: &[&str] = &[
        "SIP",
        "/",
        "2.0",
        "UDP",
        "tcp",
        "WSS",
        " ",
        "  ",
        "\t",
        "\r\n ",
        "host.example",
        "192.0.2.1",
        "[::1]",
        "[",
        ":",
        "5060",
        "65536",
        "0005060",
        ";",
        "branch",
        "BRANCH",
        "=",
        "z9hG4bK74b",
        "rport",
        "received",
        "ttl",
        "maddr",
        "1",
        "300",
        "\"q\"",
        ",",
        "x!",
        "+5",
        "%",
        "é",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Where the plain decoder answers, the grammar gives the same Via and the same rest.
        #[test]
        fn plain_via_decoding_agrees_with_the_grammar(
            start in 0..3usize,
            pieces in proptest::collection::vec(0..VIA_PIECES.len(), 0..24),
        ) {
            // Most inputs start well (so the plain path gets far), some with arbitrary pieces.
            let head = ["SIP/2.0/UDP host.test", "SIP/2.0/TCP 192.0.2.1:5060", ""][start];
            let text: String = core::iter::once(head).chain(pieces.iter().map(|&i| VIA_PIECES[i])).collect();
            if let Some(plain) = via_parm_plain(&text) {
                prop_assert_eq!(via_parm_grammar(&text).ok(), Some(plain), "{:?}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// The same with Vias built as sent-protocol, sent-by and a parameter list, mostly
        /// well formed: repeated, invalid and oddly spaced parameters.
        #[test]
        fn plain_via_parameters_agree_with_the_grammar(
            head in 0..5usize,
            params in proptest::collection::vec((0..4usize, 0..8usize, 0..10usize), 0..8),
            tail in 0..5usize,
        ) {
            let mut text = String::from(
                ["SIP/2.0/UDP host.test", "SIP/2.0/TCP 192.0.2.1:5060", "SIP/2.0/UDP [::1]:70000", "sip/2.0/tls a_b", "SIP/2.0/UDP h:0"][head],
            );
            for (separator, name, value) in params {
                text.push_str([";", ";", " ;", "; "][separator]);
                text.push_str(["branch", "BRANCH", "rport", "received", "ttl", "maddr", "x", "Rport"][name]);
                text.push_str(["", "=z9hG4bK74b", "=1", "=300", "=5060", "=65536", "=[::1]", "=\"q\"", "=+5", "="][value]);
            }
            text.push_str(["", ",SIP/2.0/UDP b", " ", "\r\n ", "!"][tail]);
            if let Some(plain) = via_parm_plain(&text) {
                prop_assert_eq!(via_parm_grammar(&text).ok(), Some(plain), "{:?}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// `top_via` (the hot path, no iterator) answers what the first of `vias()` does: the
        /// same Via, or the same error at the same offset, or none.
        #[test]
        fn top_via_is_the_first_of_vias(
            start in 0..4usize,
            pieces in proptest::collection::vec(0..VIA_PIECES.len(), 0..16),
            second in proptest::option::of(0..3usize),
        ) {
            let head = ["SIP/2.0/UDP host.test", "SIP/2.0/TCP 192.0.2.1:5060", "", "SIP/2.0/UDP h;branch=z9hG4bKa"][start];
            let value: String = core::iter::once(head).chain(pieces.iter().map(|&i| VIA_PIECES[i])).collect();
            let mut text = format!("OPTIONS sip:a@b.test SIP/2.0\r\nMax-Forwards: 70\r\nVia: {value}\r\n");
            if let Some(i) = second {
                text.push_str(["Via: SIP/2.0/UDP c.test\r\n", "v: x\r\n", "Via: \r\n"][i]);
            }
            text.push_str("Call-ID: c\r\nContent-Length: 0\r\n\r\n");
            let mut slots = vec![crate::header::HeaderSlot::EMPTY; 64];
            if let Ok(msg) = crate::message::parse(text.as_bytes(), &mut slots) {
                prop_assert_eq!(msg.top_via(), msg.vias().next().transpose(), "{:?}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Where `top_via_branch_sent_by` answers, `top_via` decodes a Via with a magic-cookie
        /// branch and the same branch, host and port; what follows the first value on the line
        /// includes bytes that are not UTF-8.
        #[test]
        fn the_branch_and_sent_by_are_the_decoded_top_vias(
            start in 0..5usize,
            pieces in proptest::collection::vec(0..VIA_PIECES.len(), 0..16),
            tail in 0..5usize,
        ) {
            let head = [
                "SIP/2.0/UDP host.test",
                "SIP/2.0/TCP 192.0.2.1:5060",
                "",
                "SIP/2.0/UDP h;branch=z9hG4bKa",
                "SIP/2.0/UDP [::1]:5070;branch=z9hG4bKb",
            ][start];
            let mut text = b"OPTIONS sip:a@b.test SIP/2.0\r\nVia: ".to_vec();
            text.extend(core::iter::once(head).chain(pieces.iter().map(|&i| VIA_PIECES[i])).flat_map(str::bytes));
            let tails: [&[u8]; 5] = [b"", b", SIP/2.0/UDP c", b",\xff", b" \xff", b"\t, x"];
            text.extend_from_slice(tails[tail]);
            text.extend_from_slice(b"\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n");
            let mut slots = vec![crate::header::HeaderSlot::EMPTY; 64];
            if let Ok(msg) = crate::message::parse(&text, &mut slots) {
                if let Some(parts) = msg.top_via_branch_sent_by() {
                    let via = msg.top_via();
                    prop_assert!(matches!(via, Ok(Some(v)) if v.has_rfc3261_branch()), "{:?} {:?}", text, via);
                    let via = via.ok().flatten().map(ViaBranchSentBy::from);
                    prop_assert_eq!(via, Some(parts), "{:?}", text);
                }
            }
        }
    }

    #[test]
    fn the_usual_top_vias_are_read_without_a_decode() {
        for (via, branch, host, port) in [
            ("SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKo1;rport", "z9hG4bKo1", "127.0.0.1", Some(5062)),
            (
                "SIP/2.0/TCP Client.Example.com;received=192.0.2.4;rport=5070;branch=z9hG4bK7",
                "z9hG4bK7",
                "Client.Example.com",
                None,
            ),
            (
                "SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx, SIP/2.0/UDP b.test",
                "z9hG4bKx",
                "[2001:db8::9]",
                Some(5060),
            ),
        ] {
            let text = format!("BYE sip:a@b.test SIP/2.0\r\nVia: {via}\r\nCall-ID: c\r\n\r\n");
            let mut slots = vec![crate::header::HeaderSlot::EMPTY; 8];
            let msg = crate::message::parse(text.as_bytes(), &mut slots).expect("parses");
            let parts = ViaBranchSentBy { branch: branch.as_bytes(), host: host.as_bytes(), port };
            assert_eq!(msg.top_via_branch_sent_by(), Some(parts), "{via}");
        }
        for via in ["SIP/2.0/UDP h;branch=1234", "SIP/2.0/UDP h ;branch=z9hG4bKa", "SIP/2.0/UDP h;branch=\"z9hG4bKa\""]
        {
            let text = format!("BYE sip:a@b.test SIP/2.0\r\nVia: {via}\r\nCall-ID: c\r\n\r\n");
            let mut slots = vec![crate::header::HeaderSlot::EMPTY; 8];
            let msg = crate::message::parse(text.as_bytes(), &mut slots).expect("parses");
            assert_eq!(msg.top_via_branch_sent_by(), None, "{via}: no cookie, or not the plain shape");
        }
    }

    #[test]
    fn a_response_goes_to_received_and_rport_when_the_via_has_them() {
        let at = |via: &str| Via::parse(via).expect("a Via").response_address();
        let addr = |a: &str| Some(a.parse::<std::net::SocketAddr>().expect("addr"));
        assert_eq!(at("SIP/2.0/UDP 192.0.2.1"), addr("192.0.2.1:5060"));
        assert_eq!(at("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKa"), addr("192.0.2.1:5070"));
        assert_eq!(at("SIP/2.0/UDP 192.0.2.1:5070;rport=6000;received=198.51.100.7"), addr("198.51.100.7:6000"));
        assert_eq!(at("SIP/2.0/UDP 192.0.2.1:5070;rport"), addr("192.0.2.1:5070"), "an rport not filled in");
        assert_eq!(at("SIP/2.0/UDP [2001:db8::1]:5080"), addr("[2001:db8::1]:5080"));
        assert_eq!(at("SIP/2.0/UDP host.test:5080"), None, "a name needs DNS");
        assert_eq!(at("SIP/2.0/UDP host.test;received=192.0.2.9"), addr("192.0.2.9:5060"));
    }

    #[test]
    fn usual_vias_take_the_plain_path() {
        for text in [
            "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKo1;rport",
            "SIP/2.0/TCP client.example.com;branch=z9hG4bK776asdhds;received=192.0.2.4;rport=5070",
            "SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx;ttl=16;maddr=224.2.0.1, SIP/2.0/UDP b.test",
        ] {
            let (rest, via) = via_parm_plain(text).expect("plain shape");
            assert_eq!(via_parm_grammar(text).expect("grammar"), (rest, via), "{text}");
        }
        assert_eq!(via_parm_plain("SIP/2.0/UDP h;branch=\"q\""), None, "quoted values go the long way");
    }

    #[test]
    fn via_with_folding_and_spaces_around_slashes() {
        let via = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").expect("parses");
        assert_eq!((via.protocol_name, via.protocol_version, via.transport), ("SIP", "2.0", Transport::Udp));
        assert_eq!(via.host, "192.0.2.2");
        assert_eq!(via.branch, Some("390skdjuw"));
        assert!(!via.has_rfc3261_branch());
    }

    #[test]
    fn via_params_are_typed() {
        let via =
            Via::parse("SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx;rport;received=10.0.0.1;ttl=16;maddr=224.2.0.1")
                .expect("parses");
        assert_eq!(via.host, "[2001:db8::1]");
        assert_eq!(via.port, Some(5070));
        assert_eq!(via.rport, Some(None));
        assert_eq!(via.received, Some("10.0.0.1"));
        assert_eq!(via.ttl, Some(16));
        assert_eq!(via.maddr, Some("224.2.0.1"));
        assert!(via.has_rfc3261_branch());
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let quoted =
            NameAddr::parse(r#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#).expect("parses");
        assert_eq!(quoted.display_name, Some(r#"J Rosenberg \\\""#));
        assert_eq!(quoted.tag(), Some("98asjd8"));
        let no_space = NameAddr::parse("caller<sip:caller@example.com>;tag=323").expect("parses");
        assert_eq!(no_space.display_name, Some("caller"));
        let spec = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").expect("parses");
        assert!(!spec.bracketed);
        assert!(spec.uri.params.is_empty());
        assert!(spec.params.contains("unknownparam"));
        assert_eq!(
            NameAddr::parse(r#""Watson, Thomas" < sip:t.watson@example.org >"#).unwrap_err().kind,
            ErrorKind::ExpectedUri
        );
        assert_eq!(
            NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").unwrap_err().kind,
            ErrorKind::ExpectedAngleBracket
        );
    }

    #[test]
    fn cseq_and_qvalues() {
        assert_eq!(CSeq::parse("0009\r\n  INVITE"), Ok(CSeq { seq: 9, method: Method::Invite }));
        assert_eq!(CSeq::parse("9292394834772304023312 OPTIONS").unwrap_err().kind, ErrorKind::NumberTooLarge);
        assert_eq!(qvalue("0.33"), Some(330));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.5"), None);
    }

    #[test]
    fn digest_credentials() {
        let auth = Auth::parse(
            r#"Digest username="bob", realm="atlanta.example.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", uri="sip:ss2.biloxi.example.com", response="dfe56131d1958046689d83306477ecc", algorithm=MD5, nc=00000001"#,
        )
        .expect("parses");
        assert!(auth.is_digest());
        assert_eq!(auth.param("username"), Some("bob"));
        assert_eq!(auth.param("uri"), Some("sip:ss2.biloxi.example.com"));
        assert_eq!(auth.param("nc"), Some("00000001"));
        assert_eq!(
            Auth::parse("NoOneKnowsThisScheme opaque-data=here").expect("parses").scheme,
            "NoOneKnowsThisScheme"
        );
    }
}
