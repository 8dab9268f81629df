//! The parser's one error type: a small `Copy` value saying where (byte offset
//! from the start of the buffer) and what was expected there.

use core::fmt;

/// What the parser expected, or which limit was exceeded.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The message is larger than [`MAX_MESSAGE_BYTES`](crate::limits::MAX_MESSAGE_BYTES).
    MessageTooLarge,
    /// A line is longer than [`MAX_LINE_BYTES`](crate::limits::MAX_LINE_BYTES).
    LineTooLong,
    /// A header value is longer than [`MAX_HEADER_VALUE_BYTES`](crate::limits::MAX_HEADER_VALUE_BYTES).
    HeaderValueTooLong,
    /// More header fields than slots (or than [`MAX_HEADERS`](crate::limits::MAX_HEADERS)).
    TooManyHeaders,
    /// More Via values than [`MAX_VIAS`](crate::limits::MAX_VIAS).
    TooManyVias,
    /// More values or parameters in one header than the limits allow.
    TooManyValues,
    /// The buffer is empty or holds only CRLFs.
    EmptyMessage,
    /// A request method (a token) was expected.
    ExpectedMethod,
    /// A Request-URI was expected between the method and the SIP version.
    ExpectedRequestUri,
    /// `SIP/` followed by a version number (`2.0`) was expected.
    ExpectedSipVersion,
    /// A three-digit status code was expected.
    ExpectedStatusCode,
    /// A single SP was expected.
    ExpectedSpace,
    /// CRLF was expected at the end of a line.
    ExpectedCrlf,
    /// A header name (a token) was expected.
    ExpectedHeaderName,
    /// `:` was expected after the header name.
    ExpectedColon,
    /// The empty line that ends the headers never came.
    UnterminatedHeaders,
    /// Content-Length is not a decimal number that fits the limits.
    InvalidContentLength,
    /// Two Content-Length headers disagree (a framing error on a stream).
    ConflictingContentLength,
    /// A message on a stream transport has no Content-Length (RFC 3261 §18.3).
    MissingContentLength,
    /// A token was expected.
    ExpectedToken,
    /// A quoted string was expected, or its closing quote is missing.
    ExpectedQuotedString,
    /// A URI was expected.
    ExpectedUri,
    /// A host name, IPv4 address or IPv6 reference was expected.
    ExpectedHost,
    /// A port number (0-65535) was expected.
    ExpectedPort,
    /// A Via sent-protocol (`SIP/2.0/UDP`) was expected.
    ExpectedSentProtocol,
    /// `<` or `>` around a name-addr was expected.
    ExpectedAngleBracket,
    /// A parameter (`;name[=value]`) was expected.
    ExpectedParam,
    /// A decimal number was expected.
    ExpectedNumber,
    /// A number is larger than its field allows.
    NumberTooLarge,
    /// The value has bytes after its end.
    TrailingData,
    /// The value is not valid UTF-8.
    InvalidUtf8,
    /// A header that this decoder needs is absent.
    MissingHeader,
    /// An escape sequence (`%` HEX HEX) is broken.
    InvalidEscape,
    /// The output buffer is too small for what the writer must write.
    BufferTooSmall,
}

impl ErrorKind {
    /// A short phrase for logs, JSON and 400 reason phrases.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MessageTooLarge => "message too large",
            ErrorKind::LineTooLong => "line too long",
            ErrorKind::HeaderValueTooLong => "header value too long",
            ErrorKind::TooManyHeaders => "too many headers",
            ErrorKind::TooManyVias => "too many Via values",
            ErrorKind::TooManyValues => "too many values",
            ErrorKind::EmptyMessage => "empty message",
            ErrorKind::ExpectedMethod => "expected method",
            ErrorKind::ExpectedRequestUri => "expected Request-URI",
            ErrorKind::ExpectedSipVersion => "expected SIP version",
            ErrorKind::ExpectedStatusCode => "expected 3-digit status code",
            ErrorKind::ExpectedSpace => "expected SP",
            ErrorKind::ExpectedCrlf => "expected CRLF",
            ErrorKind::ExpectedHeaderName => "expected header name",
            ErrorKind::ExpectedColon => "expected ':'",
            ErrorKind::UnterminatedHeaders => "headers not terminated by an empty line",
            ErrorKind::InvalidContentLength => "invalid Content-Length",
            ErrorKind::ConflictingContentLength => "conflicting Content-Length values",
            ErrorKind::MissingContentLength => "missing Content-Length on a stream",
            ErrorKind::ExpectedToken => "expected token",
            ErrorKind::ExpectedQuotedString => "expected quoted string",
            ErrorKind::ExpectedUri => "expected URI",
            ErrorKind::ExpectedHost => "expected host",
            ErrorKind::ExpectedPort => "expected port",
            ErrorKind::ExpectedSentProtocol => "expected sent-protocol",
            ErrorKind::ExpectedAngleBracket => "expected '<' or '>'",
            ErrorKind::ExpectedParam => "expected parameter",
            ErrorKind::ExpectedNumber => "expected number",
            ErrorKind::NumberTooLarge => "number too large",
            ErrorKind::TrailingData => "unexpected data after value",
            ErrorKind::InvalidUtf8 => "invalid UTF-8",
            ErrorKind::MissingHeader => "missing header",
            ErrorKind::InvalidEscape => "invalid %-escape",
            ErrorKind::BufferTooSmall => "output buffer too small",
        }
    }
}

/// A parse failure: what was expected and at which byte offset.
///
/// The offset counts from the start of the buffer handed to [`parse`](crate::parse)
/// or [`frame`](crate::frame); typed decoders called on a bare value count from
/// the start of that value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParseError {
    /// What was expected.
    pub kind: ErrorKind,
    /// Byte offset of the failure.
    pub offset: u32,
}

impl ParseError {
    /// An error of `kind` at `offset`.
    pub const fn new(kind: ErrorKind, offset: usize) -> Self {
        // Offsets are bounded by MAX_MESSAGE_BYTES, which fits u32 (see limits.rs).
        ParseError { kind, offset: offset as u32 }
    }

    /// The same error, moved `by` bytes later (rebases a value-relative offset).
    pub const fn shifted(self, by: usize) -> Self {
        ParseError { kind: self.kind, offset: self.offset + by as u32 }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind.as_str(), self.offset)
    }
}

impl std::error::Error for ParseError {}
