//! SIP rules checked on a message that parsed: what a proxy, B2BUA or
//! registrar must refuse (usually with 400, sometimes 416, 505) even though
//! the bytes could be framed. [`Message::problems`] lists them without
//! allocating.
//!
//! The rules checked, in order:
//! 1. The start line used single SP separators (RFC 3261 §7.1; RFC 4475 §3.1.2.8-10).
//! 2. The SIP version is 2.0 (→ 505, RFC 3261 §8.2.2 / RFC 4475 §3.1.2.16).
//! 3. The Request-URI decodes as a URI; its scheme is sip, sips or tel (→ 416);
//!    it carries no `?headers` (RFC 3261 §19.1.1, table 1).
//! 4. Via, From, To, Call-ID and CSeq are present (RFC 3261 §8.1.1; Max-Forwards
//!    is not required, for RFC 2543 peers: §16.6 step 3 lets the proxy add it).
//! 5. Call-ID, From, To, CSeq, Max-Forwards and Content-Type appear at most once.
//! 6. Every header this crate decodes (Via, From, To, Call-ID, CSeq, Max-Forwards,
//!    Contact, Route, Record-Route, Content-Type, Expires) decodes.
//! 7. A request's CSeq method equals its method (RFC 3261 §8.1.1.5).
//! 8. Content-Length is a number, values agree, and none is larger than the body
//!    received (§18.3; RFC 4475 §3.1.2.2-3, §3.3.9).
//! 9. Date, if present, is in GMT (RFC 3261 §20.17).

use core::fmt;

use crate::error::ParseError;
use crate::header::HeaderName;
use crate::message::{Message, Version};
use crate::uri::Scheme;

/// One broken rule.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The start line has extra, leading or trailing whitespace, or whitespace inside the Request-URI.
    StartLineWhitespace,
    /// The SIP version is not 2.0.
    UnsupportedVersion(Version),
    /// The Request-URI does not decode.
    InvalidRequestUri(ParseError),
    /// The Request-URI scheme is not sip, sips or tel.
    UnsupportedUriScheme,
    /// The Request-URI carries `?headers`, which a Request-URI may not.
    HeadersInRequestUri,
    /// A mandatory header is absent.
    MissingHeader(HeaderName),
    /// A header that may appear once appears more often.
    DuplicateHeader(HeaderName),
    /// A header's value does not decode.
    InvalidHeader(HeaderName, ParseError),
    /// The CSeq method differs from the request method.
    CSeqMethodMismatch,
    /// Two Content-Length values disagree.
    ConflictingContentLength,
    /// Content-Length is larger than the octets that follow the headers.
    ContentLengthExceedsBody {
        /// The declared Content-Length.
        declared: u32,
        /// The octets actually there.
        available: u32,
    },
    /// The Date header is not in GMT.
    DateNotGmt,
}

impl Problem {
    /// The status code a server answers a request with this problem.
    pub fn status_code(&self) -> u16 {
        match self {
            Problem::UnsupportedVersion(_) => 505,
            Problem::UnsupportedUriScheme => 416,
            _ => 400,
        }
    }

    /// A short machine-friendly name (used in JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::StartLineWhitespace => "start_line_whitespace",
            Problem::UnsupportedVersion(_) => "unsupported_version",
            Problem::InvalidRequestUri(_) => "invalid_request_uri",
            Problem::UnsupportedUriScheme => "unsupported_uri_scheme",
            Problem::HeadersInRequestUri => "headers_in_request_uri",
            Problem::MissingHeader(_) => "missing_header",
            Problem::DuplicateHeader(_) => "duplicate_header",
            Problem::InvalidHeader(..) => "invalid_header",
            Problem::CSeqMethodMismatch => "cseq_method_mismatch",
            Problem::ConflictingContentLength => "conflicting_content_length",
            Problem::ContentLengthExceedsBody { .. } => "content_length_exceeds_body",
            Problem::DateNotGmt => "date_not_gmt",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::StartLineWhitespace => f.write_str("irregular whitespace in start line"),
            Problem::UnsupportedVersion(v) => write!(f, "unsupported version SIP/{}.{}", v.major, v.minor),
            Problem::InvalidRequestUri(e) => write!(f, "invalid Request-URI: {e}"),
            Problem::UnsupportedUriScheme => f.write_str("unsupported URI scheme"),
            Problem::HeadersInRequestUri => f.write_str("headers not allowed in Request-URI"),
            Problem::MissingHeader(h) => write!(f, "missing {} header", h.as_str()),
            Problem::DuplicateHeader(h) => write!(f, "multiple {} headers", h.as_str()),
            Problem::InvalidHeader(h, e) => write!(f, "invalid {} header: {e}", h.as_str()),
            Problem::CSeqMethodMismatch => f.write_str("CSeq method does not match request method"),
            Problem::ConflictingContentLength => f.write_str("conflicting Content-Length values"),
            Problem::ContentLengthExceedsBody { declared, available } => {
                write!(f, "Content-Length {declared} larger than body ({available} octets)")
            }
            Problem::DateNotGmt => f.write_str("Date not in GMT"),
        }
    }
}

/// Most problems reported for one message (later ones are dropped).
pub const MAX_PROBLEMS: usize = 16;

/// A bounded list of problems.
#[derive(Copy, Clone, Debug)]
pub struct Problems {
    items: [Option<Problem>; MAX_PROBLEMS],
    len: usize,
}

impl Problems {
    fn push(&mut self, problem: Problem) {
        if self.len < MAX_PROBLEMS {
            self.items[self.len] = Some(problem);
            self.len += 1;
        }
    }

    /// Whether no rule is broken.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The problems, in the order of the rules above.
    pub fn iter(&self) -> impl Iterator<Item = Problem> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }

    /// The first problem, the one a 4xx reason phrase should name.
    pub fn first(&self) -> Option<Problem> {
        self.items[0]
    }
}

impl<'a> Message<'a> {
    /// Checks the SIP rules listed in the [module docs](crate::problems).
    pub fn problems(&self) -> Problems {
        let mut out = Problems { items: [None; MAX_PROBLEMS], len: 0 };
        if self.notes.start_line_whitespace {
            out.push(Problem::StartLineWhitespace);
        }
        if self.version() != Version::SIP_2_0 {
            out.push(Problem::UnsupportedVersion(self.version()));
        }
        if let Some(uri) = self.request_uri() {
            match uri {
                Err(e) => out.push(Problem::InvalidRequestUri(e)),
                Ok(uri) => {
                    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
                        out.push(Problem::UnsupportedUriScheme);
                    }
                    if uri.headers.is_some() {
                        out.push(Problem::HeadersInRequestUri);
                    }
                }
            }
        }
        use HeaderName::*;
        for name in [Via, From, To, CallId, CSeq] {
            if self.header(name).is_none() {
                out.push(Problem::MissingHeader(name));
            }
        }
        for name in [CallId, From, To, CSeq, MaxForwards, ContentType] {
            if self.count(name) > 1 {
                out.push(Problem::DuplicateHeader(name));
            }
        }
        self.check_decodes(&mut out);
        if let (Some(method), Ok(Some(cseq))) = (self.method(), self.cseq()) {
            if cseq.method != method {
                out.push(Problem::CSeqMethodMismatch);
            }
        }
        if let Some(e) = self.notes.invalid_content_length {
            out.push(Problem::InvalidHeader(ContentLength, e));
        }
        if self.notes.conflicting_content_length {
            out.push(Problem::ConflictingContentLength);
        }
        if let Some(declared) = self.notes.declared_body_bytes {
            out.push(Problem::ContentLengthExceedsBody { declared, available: self.body().len() as u32 });
        }
        if let Some(date) = self.header(Date) {
            if !date.trim_ascii_end().ends_with(b"GMT") {
                out.push(Problem::DateNotGmt);
            }
        }
        out
    }

    fn check_decodes(&self, out: &mut Problems) {
        use HeaderName::*;
        let mut note = |name: HeaderName, result: Result<(), ParseError>| {
            if let Err(e) = result {
                out.push(Problem::InvalidHeader(name, e));
            }
        };
        note(Via, self.vias().try_for_each(|v| v.map(drop)));
        note(From, self.from().map(drop));
        note(To, self.to().map(drop));
        note(CallId, self.call_id().map(drop));
        note(CSeq, self.cseq().map(drop));
        note(MaxForwards, self.max_forwards().map(drop));
        note(Contact, self.contacts().try_for_each(|v| v.map(drop)));
        note(Route, self.routes().try_for_each(|v| v.map(drop)));
        note(RecordRoute, self.record_routes().try_for_each(|v| v.map(drop)));
        note(ContentType, self.content_type().map(drop));
        note(Expires, self.expires().map(drop));
    }
}
