//! Framing and indexing: [`parse`] turns one datagram into a [`Message`] that
//! borrows it (start line, header slots, body), and [`frame`] finds where one
//! message ends in a stream buffer. Both share one line scanner, so they agree
//! on every byte.
//!
//! Datagram rules (RFC 3261 §18.3): the body is Content-Length octets; octets
//! after it are ignored (they are not part of the message); without a
//! Content-Length the body is the rest of the datagram. Stream rules: a
//! message without Content-Length is a framing error.

use crate::error::{ErrorKind, ParseError};
use crate::grammar::{find_byte, is_token_char, trim_lws};
use crate::header::{Header, HeaderName, HeaderSlot};
use crate::limits::{MAX_HEADER_VALUE_BYTES, MAX_HEADERS, MAX_LINE_BYTES, MAX_MESSAGE_BYTES};
use crate::method::Method;

/// A SIP version, `SIP/major.minor`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major number (2 for SIP/2.0).
    pub major: u8,
    /// Minor number (0 for SIP/2.0).
    pub minor: u8,
}

impl Version {
    /// SIP/2.0, the only version this crate speaks.
    pub const SIP_2_0: Version = Version { major: 2, minor: 0 };
}

/// `Request-Line = Method SP Request-URI SP SIP-Version CRLF`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// The method.
    pub method: Method<'a>,
    /// The Request-URI as written (decode it with [`Message::request_uri`]).
    pub uri: &'a str,
    /// The SIP version.
    pub version: Version,
}

/// `Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StatusLine<'a> {
    /// The SIP version.
    pub version: Version,
    /// The status code, 100-699.
    pub code: u16,
    /// The reason phrase (UTF-8, may be empty).
    pub reason: &'a str,
}

/// The first line of a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// A request.
    Request(RequestLine<'a>),
    /// A response.
    Response(StatusLine<'a>),
}

/// Framing facts the parser noticed but that do not stop it (reported by
/// [`Message::problems`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FramingNotes {
    /// Two Content-Length values disagree.
    pub(crate) conflicting_content_length: bool,
    /// Content-Length is larger than the octets after the headers.
    pub(crate) declared_body_bytes: Option<u32>,
    /// A Content-Length that is not a usable number (ignored for framing the datagram).
    pub(crate) invalid_content_length: Option<ParseError>,
    /// The request line had extra, leading or trailing whitespace.
    pub(crate) start_line_whitespace: bool,
}

/// A parsed SIP message borrowing its buffer and header slots.
#[derive(Copy, Clone, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
    start_line: StartLine<'a>,
    headers: &'a [HeaderSlot],
    /// Slot index of the first header of each name ([`NO_SLOT`] if absent): O(1) lookups.
    first: [u8; HeaderName::COUNT],
    body: &'a [u8],
    content_length: Option<u32>,
    len: usize,
    pub(crate) notes: FramingNotes,
}

/// The header fields of a [`Message`], in order.
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    slots: core::slice::Iter<'a, HeaderSlot>,
    buf: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        self.slots.next().map(|slot| slot.view(self.buf))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl ExactSizeIterator for Headers<'_> {}

/// Marks a header name absent from [`Message`]'s first-slot index.
const NO_SLOT: u8 = u8::MAX;
const _: () = assert!(MAX_HEADERS < NO_SLOT as usize);

/// One header field as the scanner sees it, before lookup.
struct RawField<'a> {
    name: &'a [u8],
    /// The name looked up.
    header: HeaderName,
    value: &'a [u8],
}

enum Scanned<'a> {
    Field(RawField<'a>),
    /// The empty line: the body starts at this offset.
    End(usize),
}

/// Walks header lines from `pos`, joining folded continuation lines.
struct FieldScanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> FieldScanner<'a> {
    /// Finds the next line: (content end without CR LF, offset after LF).
    /// `UnterminatedHeaders` means "need more bytes".
    fn line_at(&self, start: usize) -> Result<(usize, usize), ParseError> {
        self.line_from(start, start)
    }

    /// Like [`Self::line_at`] for a line that starts at `start`, searching from `from`.
    fn line_from(&self, start: usize, from: usize) -> Result<(usize, usize), ParseError> {
        // The search runs on to the end of the buffer rather than stopping at the line limit:
        // a line in the middle ends within whole eight-byte words, with no byte-by-byte tail
        // (the limit is checked on what it finds; the buffer is bounded, the scan linear).
        let too_long = |len: usize| len > MAX_LINE_BYTES + 1;
        match find_byte(b'\n', &self.buf[from.min(self.buf.len())..]).map(|i| from + i) {
            Some(nl) if !too_long(nl - start) => {
                let end = if nl > start && self.buf[nl - 1] == b'\r' { nl - 1 } else { nl };
                Ok((end, nl + 1))
            }
            Some(_) => Err(ParseError::new(ErrorKind::LineTooLong, start)),
            None if too_long(self.buf.len() - start) => Err(ParseError::new(ErrorKind::LineTooLong, start)),
            None => Err(ParseError::new(ErrorKind::UnterminatedHeaders, self.buf.len())),
        }
    }

    #[inline(always)]
    fn next_field(&mut self) -> Result<Scanned<'a>, ParseError> {
        let buf = self.buf;
        let start = self.pos;
        let unterminated = ParseError::new(ErrorKind::UnterminatedHeaders, buf.len());
        match (buf.get(start), buf.get(start + 1)) {
            (None, _) | (Some(b'\r'), None) => return Err(unterminated),
            (Some(b'\r'), Some(b'\n')) => {
                self.pos = start + 2;
                return Ok(Scanned::End(start + 2));
            }
            (Some(b'\n'), _) => {
                self.pos = start + 1;
                return Ok(Scanned::End(start + 1));
            }
            _ => {}
        }
        // `header-name HCOLON`, with `HCOLON = *( SP / HTAB ) ":" SWS`: a usual name written
        // right before its colon is recognised by two word compares; any other, by one pass
        // over the name and a lookup.
        let (header, name_len, colon) = match HeaderName::at_line_start(&buf[start..]) {
            Some((header, name_len)) => (header, name_len, start + name_len),
            None => {
                let window = &buf[start..buf.len().min(start + MAX_LINE_BYTES)];
                let name_len = window.iter().position(|&c| !is_token_char(c)).unwrap_or(window.len());
                if name_len == window.len() {
                    return Err(if window.len() == MAX_LINE_BYTES {
                        ParseError::new(ErrorKind::LineTooLong, start)
                    } else {
                        unterminated
                    });
                }
                if name_len == 0 {
                    return Err(ParseError::new(ErrorKind::ExpectedHeaderName, start));
                }
                let mut colon = start + name_len;
                while matches!(buf.get(colon), Some(b' ' | b'\t')) {
                    colon += 1;
                }
                match buf.get(colon) {
                    Some(b':') => {}
                    Some(_) => return Err(ParseError::new(ErrorKind::ExpectedColon, colon)),
                    None => return Err(unterminated),
                }
                (HeaderName::from_bytes(&buf[start..start + name_len]), name_len, colon)
            }
        };
        let value_start = colon + 1;
        let (mut value_end, mut after) = self.line_from(start, value_start)?;
        // Folded lines (RFC 3261 §7.3.1): a line starting with WSP continues the value.
        loop {
            match buf.get(after) {
                Some(b' ' | b'\t') => {
                    let (cont_end, cont_next) = self.line_at(after)?;
                    value_end = cont_end;
                    after = cont_next;
                    if value_end - value_start > MAX_HEADER_VALUE_BYTES {
                        return Err(ParseError::new(ErrorKind::HeaderValueTooLong, value_start));
                    }
                }
                Some(_) => break,
                None => return Err(unterminated),
            }
        }
        self.pos = after;
        Ok(Scanned::Field(RawField {
            name: &buf[start..start + name_len],
            header,
            value: trim_lws(&buf[value_start..value_end]),
        }))
    }
}

/// Skips CRLFs before a start line (RFC 3261 §7.5).
pub(crate) fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter().take_while(|&&c| c == b'\r' || c == b'\n').count()
}

/// `Content-Length = 1*DIGIT`, bounded by the message size limit.
fn content_length_value(value: &[u8], offset: usize) -> Result<u32, ParseError> {
    let invalid = ParseError::new(ErrorKind::InvalidContentLength, offset);
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid);
    }
    let n = value.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    if n > MAX_MESSAGE_BYTES as u64 {
        return Err(ParseError::new(ErrorKind::MessageTooLarge, offset));
    }
    Ok(n as u32)
}

/// Byte offset of `part` within `buf` (a sub-slice of it).
pub(crate) fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}

/// `SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT`.
fn sip_version(text: &[u8], offset: usize) -> Result<Version, ParseError> {
    let err = ParseError::new(ErrorKind::ExpectedSipVersion, offset);
    if text.len() < 7 || !text[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(err);
    }
    let rest = &text[4..];
    // Every message has one: "2.0" without the search (memchr's set-up alone cost about
    // 100 instructions) and the digit folding.
    if rest == b"2.0" {
        return Ok(Version { major: 2, minor: 0 });
    }
    let dot = find_byte(b'.', rest).ok_or(err)?;
    let number = |digits: &[u8]| -> Result<u8, ParseError> {
        if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(err);
        }
        let n = digits.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        u8::try_from(n).map_err(|_| err)
    };
    Ok(Version { major: number(&rest[..dot])?, minor: number(&rest[dot + 1..])? })
}

fn utf8(bytes: &[u8], offset: usize) -> Result<&str, ParseError> {
    core::str::from_utf8(bytes).map_err(|e| ParseError::new(ErrorKind::InvalidUtf8, offset + e.valid_up_to()))
}

/// Parses a start line; `notes` learns about tolerated whitespace irregularities.
fn start_line<'a>(buf: &'a [u8], line: &'a [u8], notes: &mut FramingNotes) -> Result<StartLine<'a>, ParseError> {
    let at = offset_in(buf, line);
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return status_line(buf, line).map(StartLine::Response);
    }
    // Method SP Request-URI SP SIP-Version. Tolerate extra SP (RFC 4475 §3.1.2.8-10 allow a
    // liberal element to) but note it, so the role can still answer 400 with the right Via.
    let method_end = find_byte(b' ', line).ok_or(ParseError::new(ErrorKind::ExpectedSpace, at + line.len()))?;
    let method_bytes = &line[..method_end];
    if method_bytes.is_empty() || !method_bytes.iter().all(|&c| is_token_char(c)) {
        return Err(ParseError::new(ErrorKind::ExpectedMethod, at));
    }
    // Nearly every request line ends in " SIP/2.0": no search back for the space before it.
    let usual_end = line
        .len()
        .checked_sub(8)
        .map(|i| &line[i..])
        .is_some_and(|tail| tail[0] == b' ' && tail[1..5].eq_ignore_ascii_case(b"SIP/") && &tail[5..] == b"2.0");
    let (version_start, version) = if usual_end {
        let version_start = line.len() - 7;
        if version_start <= method_end + 1 {
            return Err(ParseError::new(ErrorKind::ExpectedSipVersion, at + line.len()));
        }
        (version_start, Version { major: 2, minor: 0 })
    } else {
        let mut rest_end = line.len();
        while rest_end > method_end && matches!(line[rest_end - 1], b' ' | b'\t') {
            rest_end -= 1;
            notes.start_line_whitespace = true;
        }
        let version_start = line[..rest_end].iter().rposition(|&c| c == b' ').map_or(method_end, |p| p + 1);
        if version_start <= method_end + 1 {
            return Err(ParseError::new(ErrorKind::ExpectedSipVersion, at + rest_end));
        }
        (version_start, sip_version(&line[version_start..rest_end], at + version_start)?)
    };
    let uri_raw = &line[method_end + 1..version_start - 1];
    let uri = trim_lws(uri_raw);
    if uri.is_empty() {
        return Err(ParseError::new(ErrorKind::ExpectedRequestUri, at + method_end + 1));
    }
    if uri.len() != uri_raw.len() || crate::grammar::find_either(b' ', b'\t', uri).is_some() {
        notes.start_line_whitespace = true;
    }
    let method = match Method::known(method_bytes) {
        Some(known) => known,
        None => Method::from_token(utf8(method_bytes, at)?),
    };
    Ok(StartLine::Request(RequestLine { method, uri: utf8(uri, offset_in(buf, uri))?, version }))
}

/// `Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF`.
fn status_line<'a>(buf: &'a [u8], line: &'a [u8]) -> Result<StatusLine<'a>, ParseError> {
    let at = offset_in(buf, line);
    let sp = find_byte(b' ', line).ok_or(ParseError::new(ErrorKind::ExpectedSpace, at + line.len()))?;
    let version = sip_version(&line[..sp], at)?;
    let code_at = at + sp + 1;
    let code_text = &line[sp + 1..];
    let bad_code = ParseError::new(ErrorKind::ExpectedStatusCode, code_at);
    if code_text.len() < 3 || !code_text[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad_code);
    }
    let code = code_text[..3].iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&code) {
        return Err(bad_code);
    }
    match code_text.get(3) {
        Some(b' ') => {}
        Some(_) => return Err(bad_code),
        None => return Err(ParseError::new(ErrorKind::ExpectedSpace, code_at + 3)),
    }
    let reason = utf8(&code_text[4..], code_at + 4)?;
    Ok(StatusLine { version, code, reason })
}

/// Parses one datagram (or one message that [`frame`] delimited) into a
/// [`Message`], filling `slots` with its headers in order.
///
/// Fails on what makes the message unusable: limits, a broken start line, a
/// header line without a name or colon, headers not ended by an empty line.
/// Rule violations that still leave a usable message (a Content-Length that is
/// not a number among them: the body is then the rest of the datagram) are
/// reported by [`Message::problems`] instead.
pub fn parse<'a>(buf: &'a [u8], slots: &'a mut [HeaderSlot]) -> Result<Message<'a>, ParseError> {
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::new(ErrorKind::MessageTooLarge, MAX_MESSAGE_BYTES));
    }
    let begin = skip_leading_crlf(buf);
    if begin == buf.len() {
        return Err(ParseError::new(ErrorKind::EmptyMessage, begin));
    }
    let mut scanner = FieldScanner { buf, pos: begin };
    let (line_end, after_line) = scanner.line_at(begin).map_err(|e| match e.kind {
        ErrorKind::UnterminatedHeaders => ParseError::new(ErrorKind::ExpectedCrlf, buf.len()),
        _ => e,
    })?;
    let mut notes = FramingNotes::default();
    let start_line = start_line(buf, &buf[begin..line_end], &mut notes)?;
    scanner.pos = after_line;

    let slot_limit = slots.len().min(MAX_HEADERS);
    let mut count = 0;
    let mut first = [NO_SLOT; HeaderName::COUNT];
    let mut content_length: Option<u32> = None;
    let body_start = loop {
        match scanner.next_field()? {
            Scanned::End(body_start) => break body_start,
            Scanned::Field(field) => {
                if count == slot_limit {
                    return Err(ParseError::new(ErrorKind::TooManyHeaders, offset_in(buf, field.name)));
                }
                let name = field.header;
                if name == HeaderName::ContentLength {
                    // In a datagram the body can still be framed without a usable value (the
                    // rest of the datagram), so a bad one is a problem the role answers with
                    // 400 (RFC 4475 §3.1.2.3), not a message it must drop.
                    match content_length_value(field.value, offset_in(buf, field.value)) {
                        Ok(n) => match content_length {
                            Some(previous) if previous != n => notes.conflicting_content_length = true,
                            Some(_) => {}
                            None => content_length = Some(n),
                        },
                        Err(e) => {
                            notes.invalid_content_length.get_or_insert(e);
                        }
                    }
                }
                let first_of_name = &mut first[name as usize];
                if *first_of_name == NO_SLOT {
                    *first_of_name = count as u8;
                }
                // Offsets fit u16: the buffer is at most MAX_MESSAGE_BYTES (checked above).
                slots[count] = HeaderSlot {
                    name,
                    name_at: offset_in(buf, field.name) as u16,
                    name_len: field.name.len() as u16,
                    value_at: offset_in(buf, field.value) as u16,
                    value_len: field.value.len() as u16,
                };
                count += 1;
            }
        }
    };

    let available = buf.len() - body_start;
    let (body, len) = match content_length {
        Some(declared) if declared as usize <= available => {
            (&buf[body_start..body_start + declared as usize], body_start + declared as usize)
        }
        Some(declared) => {
            notes.declared_body_bytes = Some(declared);
            (&buf[body_start..], buf.len())
        }
        None => (&buf[body_start..], buf.len()),
    };
    Ok(Message { buf, start_line, headers: &slots[..count], first, body, content_length, len, notes })
}

/// What [`frame`] found at the start of a stream buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet: read more and call again.
    Partial,
    /// A CRLF keep-alive (RFC 5626 §3.5.1) of `len` bytes: a "ping" is CRLF CRLF,
    /// a "pong" is one CRLF.
    KeepAlive {
        /// Bytes to consume.
        len: usize,
        /// Whether it is a ping (which asks for a pong) rather than a pong.
        ping: bool,
    },
    /// A whole message occupies the first `len` bytes.
    Message {
        /// Bytes of the message, headers and body.
        len: usize,
    },
}

/// Finds the first message (or keep-alive) in a stream buffer. Content-Length
/// is required (RFC 3261 §18.3); a message that cannot fit in
/// [`MAX_MESSAGE_BYTES`] is an error, so a peer cannot make the reader buffer
/// without bound.
pub fn frame(buf: &[u8]) -> Result<Frame, ParseError> {
    match buf {
        [] | [b'\r'] | [b'\r', b'\n', b'\r'] => return Ok(Frame::Partial),
        [b'\r', b'\n', b'\r', b'\n', ..] => return Ok(Frame::KeepAlive { len: 4, ping: true }),
        [b'\r', b'\n', ..] => return Ok(Frame::KeepAlive { len: 2, ping: false }),
        _ => {}
    }
    let partial_or = |e: ParseError| -> Result<Frame, ParseError> {
        if e.kind != ErrorKind::UnterminatedHeaders {
            Err(e)
        } else if buf.len() >= MAX_MESSAGE_BYTES {
            Err(ParseError::new(ErrorKind::MessageTooLarge, MAX_MESSAGE_BYTES))
        } else {
            Ok(Frame::Partial)
        }
    };
    let mut scanner = FieldScanner { buf, pos: 0 };
    match scanner.line_at(0) {
        Ok((_, after)) => scanner.pos = after,
        Err(e) => return partial_or(e),
    }
    let mut content_length: Option<u32> = None;
    let body_start = loop {
        match scanner.next_field() {
            Ok(Scanned::End(body_start)) => break body_start,
            Ok(Scanned::Field(field)) => {
                if field.header == HeaderName::ContentLength {
                    let at = offset_in(buf, field.value);
                    let n = content_length_value(field.value, at)?;
                    if content_length.is_some_and(|previous| previous != n) {
                        return Err(ParseError::new(ErrorKind::ConflictingContentLength, at));
                    }
                    content_length = Some(n);
                }
            }
            Err(e) => return partial_or(e),
        }
    };
    let declared = content_length.ok_or(ParseError::new(ErrorKind::MissingContentLength, body_start))?;
    let len = body_start + declared as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(ParseError::new(ErrorKind::MessageTooLarge, body_start));
    }
    Ok(if buf.len() < len { Frame::Partial } else { Frame::Message { len } })
}

impl<'a> Message<'a> {
    /// Header slots to hand to [`parse`]: `[Header::EMPTY; Message::SLOTS]`.
    pub const SLOTS: usize = MAX_HEADERS;

    /// The start line.
    pub fn start_line(&self) -> &StartLine<'a> {
        &self.start_line
    }

    /// The request line, if this is a request.
    pub fn request_line(&self) -> Option<&RequestLine<'a>> {
        match &self.start_line {
            StartLine::Request(line) => Some(line),
            StartLine::Response(_) => None,
        }
    }

    /// The status line, if this is a response.
    pub fn status_line(&self) -> Option<&StatusLine<'a>> {
        match &self.start_line {
            StartLine::Response(line) => Some(line),
            StartLine::Request(_) => None,
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request(_))
    }

    /// The request method, if this is a request.
    pub fn method(&self) -> Option<Method<'a>> {
        self.request_line().map(|line| line.method)
    }

    /// The status code, if this is a response.
    pub fn status_code(&self) -> Option<u16> {
        self.status_line().map(|line| line.code)
    }

    /// The SIP version of the start line.
    pub fn version(&self) -> Version {
        match &self.start_line {
            StartLine::Request(line) => line.version,
            StartLine::Response(line) => line.version,
        }
    }

    /// All header fields in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers { slots: self.headers.iter(), buf: self.buf }
    }

    /// How many header fields the message has.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// The slots from the first header with this name on (empty if there is none).
    pub(crate) fn slots_from_first(&self, name: HeaderName) -> &'a [HeaderSlot] {
        match self.first[name as usize] {
            NO_SLOT => &[],
            i => &self.headers[usize::from(i)..],
        }
    }

    /// The message buffer (the whole datagram, trailing octets included).
    pub(crate) fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.slots_from_first(name).first().map(|slot| slot.view(self.buf).value)
    }

    /// Every header field with this name, in order.
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = Header<'a>> + 'a {
        let buf = self.buf;
        self.slots_from_first(name).iter().filter(move |s| s.name == name).map(move |s| s.view(buf))
    }

    /// How many header fields carry this name.
    pub fn count(&self, name: HeaderName) -> usize {
        self.slots_from_first(name).iter().filter(|s| s.name == name).count()
    }

    /// The body: Content-Length octets, or the rest of the datagram without one.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The Content-Length the framer used (the first one), if present.
    pub fn declared_content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// Bytes of the buffer this message occupies (octets after it are not part of it).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message occupies no bytes (never true for a parsed message).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message's bytes as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        &self.buf[..self.len]
    }

    /// Byte offset of a slice of this message's buffer.
    pub fn offset_of(&self, part: &[u8]) -> usize {
        offset_in(self.buf, part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
Call-ID: abc\r\nContent-Length: 4\r\n\r\nbodyEXTRA";

    #[test]
    fn datagram_body_is_content_length_octets_and_the_rest_is_ignored() {
        let mut slots = [HeaderSlot::EMPTY; 8];
        let msg = parse(OPTIONS, &mut slots).expect("parses");
        assert_eq!(msg.body(), b"body");
        assert_eq!(msg.len(), OPTIONS.len() - 5);
        assert_eq!(msg.header_count(), 3);
        assert_eq!(msg.header(HeaderName::CallId), Some(&b"abc"[..]));
    }

    #[test]
    fn too_few_slots_is_a_precise_error() {
        let mut slots = [HeaderSlot::EMPTY; 2];
        let err = parse(OPTIONS, &mut slots).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooManyHeaders);
        assert_eq!(&OPTIONS[err.offset as usize..err.offset as usize + 14], b"Content-Length");
    }

    #[test]
    fn stream_framing_waits_for_the_whole_body_and_recognises_keepalives() {
        for cut in 0..OPTIONS.len() - 5 {
            assert_eq!(frame(&OPTIONS[..cut]), Ok(Frame::Partial), "cut at {cut}");
        }
        assert_eq!(frame(OPTIONS), Ok(Frame::Message { len: OPTIONS.len() - 5 }));
        assert_eq!(frame(b"\r\n\r\nINVITE"), Ok(Frame::KeepAlive { len: 4, ping: true }));
        assert_eq!(frame(b"\r\nINVITE"), Ok(Frame::KeepAlive { len: 2, ping: false }));
        let no_length = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n";
        assert_eq!(frame(no_length).unwrap_err().kind, ErrorKind::MissingContentLength);
        // On a stream a bad Content-Length cannot be framed around: it stays an error.
        let bad_length = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\n";
        assert_eq!(frame(bad_length).unwrap_err().kind, ErrorKind::InvalidContentLength);
    }

    #[test]
    fn a_stream_that_never_ends_its_headers_hits_a_limit() {
        let mut endless = b"OPTIONS sip:a SIP/2.0\r\n".to_vec();
        while endless.len() <= MAX_MESSAGE_BYTES {
            endless.extend_from_slice(b"X-Filler: 0123456789\r\n");
        }
        assert_eq!(frame(&endless).unwrap_err().kind, ErrorKind::MessageTooLarge);
        let long_line = vec![b'a'; MAX_LINE_BYTES + 10];
        assert_eq!(frame(&long_line).unwrap_err().kind, ErrorKind::LineTooLong);
    }

    #[test]
    fn a_header_line_may_hold_the_line_limit_and_not_one_octet_more() {
        let head = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: c\r\n";
        let line_at = head.len();
        let message = |content: usize, end: &[u8]| {
            let mut text = head.to_vec();
            text.extend_from_slice(b"X: ");
            text.resize(line_at + content, b'v');
            text.extend_from_slice(end);
            text
        };
        let mut slots = [HeaderSlot::EMPTY; 4];
        let fits = message(MAX_LINE_BYTES, b"\r\nMax-Forwards: 70\r\n\r\n");
        let msg = parse(&fits, &mut slots).expect("a line of exactly the limit");
        assert_eq!(msg.headers().nth(1).map(|h| h.value.len()), Some(MAX_LINE_BYTES - 3));
        for end in [&b"\r\nMax-Forwards: 70\r\n\r\n"[..], b"", b"\r"] {
            let over = message(MAX_LINE_BYTES + 2, end);
            let error = parse(&over, &mut slots).expect_err("a line over the limit");
            assert_eq!((error.kind, error.offset as usize), (ErrorKind::LineTooLong, line_at), "ending {end:?}");
        }
        let cut = message(100, b"");
        assert_eq!(parse(&cut, &mut slots).unwrap_err().kind, ErrorKind::UnterminatedHeaders);
    }

    #[test]
    fn request_lines_ending_in_the_usual_version_and_not() {
        let mut slots = [HeaderSlot::EMPTY; 4];
        let mut line_of = |line: &str| {
            let text = format!("{line}\r\nCall-ID: c\r\n\r\n");
            match parse(text.as_bytes(), &mut slots) {
                Ok(msg) => {
                    let request = msg.request_line().expect("a request");
                    Ok((request.uri.to_owned(), request.version, msg.problems().len()))
                }
                Err(e) => Err((e.kind, e.offset)),
            }
        };
        let v20 = Version { major: 2, minor: 0 };
        // The message lacks mandatory headers (problems of its own); a trailing space adds one.
        let usual = line_of("INVITE sip:a@b SIP/2.0");
        let problems = usual.as_ref().map_or(0, |(_, _, n)| *n);
        assert_eq!(usual, Ok(("sip:a@b".to_owned(), v20, problems)));
        assert_eq!(line_of("INVITE sip:a@b sip/2.0"), Ok(("sip:a@b".to_owned(), v20, problems)));
        assert_eq!(
            line_of("INVITE sip:a@b SIP/2.0 "),
            Ok(("sip:a@b".to_owned(), v20, problems + 1)),
            "trailing space noted"
        );
        assert_eq!(line_of("INVITE sip:a@b SIP/7.0").map(|(_, v, _)| v), Ok(Version { major: 7, minor: 0 }));
        assert_eq!(line_of("INVITE SIP/2.0"), Err((ErrorKind::ExpectedSipVersion, 14)));
        assert_eq!(line_of("INVITE  SIP/2.0"), Err((ErrorKind::ExpectedRequestUri, 7)));
        assert_eq!(line_of("INVITE sip:a@b XSIP/2.0"), Err((ErrorKind::ExpectedSipVersion, 15)));
    }

    #[test]
    fn status_codes_outside_100_to_699_are_errors() {
        let mut slots = [HeaderSlot::EMPTY; 4];
        for line in [&b"SIP/2.0 4294967301 Huge\r\n\r\n"[..], b"SIP/2.0 099 Low\r\n\r\n", b"SIP/2.0 700 High\r\n\r\n"] {
            assert_eq!(parse(line, &mut slots).unwrap_err().kind, ErrorKind::ExpectedStatusCode);
        }
    }
}
