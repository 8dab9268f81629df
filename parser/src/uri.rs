//! URIs (RFC 3261 §19.1 and §25.1): `sip:` and `sips:` decoded into user,
//! password, host, port, parameters and headers; `tel:` (RFC 3966) into the
//! number and its parameters; any other scheme kept as an absolute URI.
//! Everything borrows the message; `%HEX HEX` escapes stay escaped until
//! [`unescape`] is asked.

use crate::error::{ErrorKind, ParseError};
use crate::grammar::{class, is};
use crate::params::Params;

/// A URI scheme.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scheme<'a> {
    /// `sip`
    Sip,
    /// `sips`
    Sips,
    /// `tel` (RFC 3966)
    Tel,
    /// Any other scheme (an absolute URI).
    Other(&'a str),
}

impl<'a> Scheme<'a> {
    /// The scheme as text, lower-case for the known ones.
    pub fn as_str(&self) -> &'a str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
            Scheme::Other(s) => s,
        }
    }

    /// Whether this is `sip` or `sips`.
    pub fn is_sip(&self) -> bool {
        matches!(self, Scheme::Sip | Scheme::Sips)
    }
}

/// A decoded URI, borrowing the message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// The scheme.
    pub scheme: Scheme<'a>,
    /// User part (SIP/SIPS) or the subscriber number (tel), still escaped.
    pub user: Option<&'a str>,
    /// Password after `user:`, still escaped.
    pub password: Option<&'a str>,
    /// Host name, IPv4 address or IPv6 reference with its brackets; empty for tel and absolute URIs.
    pub host: &'a str,
    /// Port, if given.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp;lr`).
    pub params: Params<'a>,
    /// The headers part after `?`, still escaped.
    pub headers: Option<&'a str>,
}

/// `escaped = "%" HEXDIG HEXDIG`; checks every `%` in `text` starts one.
fn escapes_valid(text: &str, pos: &mut usize, allowed: u8) -> bool {
    let bytes = text.as_bytes();
    while *pos < bytes.len() {
        match bytes[*pos] {
            b'%' => {
                if bytes.len() < *pos + 3
                    || !bytes[*pos + 1].is_ascii_hexdigit()
                    || !bytes[*pos + 2].is_ascii_hexdigit()
                {
                    return false;
                }
                *pos += 3;
            }
            c if is(c, allowed) => *pos += 1,
            _ => return false,
        }
    }
    true
}

fn check(text: &str, base: usize, kind: ErrorKind, allowed: u8) -> Result<(), ParseError> {
    let mut pos = 0;
    if escapes_valid(text, &mut pos, allowed) {
        Ok(())
    } else {
        let kind = if text.as_bytes().get(pos) == Some(&b'%') { ErrorKind::InvalidEscape } else { kind };
        Err(ParseError::new(kind, base + pos))
    }
}

/// The octets of a hostname or IPv4 address (alphanum, "-", ".", "_"), one lookup each: every
/// request's top Via and Request-URI host is scanned with it.
static HOST_OCTET: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        c += 1;
    }
    table
};

/// `hostname / IPv4address / IPv6reference`; returns the host's length.
pub(crate) fn host_len(bytes: &[u8], base: usize) -> Result<usize, ParseError> {
    let err = ParseError::new(ErrorKind::ExpectedHost, base);
    if bytes.first() == Some(&b'[') {
        let close = crate::grammar::find_byte(b']', bytes).ok_or(err)?;
        let inner = &bytes[1..close];
        if inner.is_empty() || !inner.iter().all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return Err(err);
        }
        return Ok(close + 1);
    }
    let len = bytes.iter().take_while(|&&c| HOST_OCTET[usize::from(c)]).count();
    if len == 0 { Err(err) } else { Ok(len) }
}

impl<'a> Uri<'a> {
    /// Decodes a URI that spans exactly `text`. Error offsets count from `text`.
    pub fn parse(text: &'a str) -> Result<Uri<'a>, ParseError> {
        let bytes = text.as_bytes();
        let colon = text.find(':').ok_or(ParseError::new(ErrorKind::ExpectedUri, 0))?;
        let scheme_text = &text[..colon];
        let scheme_ok = bytes.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme_text.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err(ParseError::new(ErrorKind::ExpectedUri, 0));
        }
        let scheme = if scheme_text.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme_text.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme_text.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else {
            Scheme::Other(scheme_text)
        };
        let rest_at = colon + 1;
        let rest = &text[rest_at..];
        let mut uri = Uri {
            raw: text,
            scheme,
            user: None,
            password: None,
            host: "",
            port: None,
            params: Params::default(),
            headers: None,
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => uri.parse_sip(rest, rest_at)?,
            Scheme::Tel => {
                let end = rest.find(';').unwrap_or(rest.len());
                if end == 0 {
                    return Err(ParseError::new(ErrorKind::ExpectedUri, rest_at));
                }
                check(&rest[..end], rest_at, ErrorKind::ExpectedUri, class::URIC)?;
                uri.user = Some(&rest[..end]);
                uri.parse_uri_params(&rest[end..], rest_at + end)?;
            }
            Scheme::Other(_) => {
                if rest.is_empty() {
                    return Err(ParseError::new(ErrorKind::ExpectedUri, rest_at));
                }
                check(rest, rest_at, ErrorKind::ExpectedUri, class::URIC)?;
            }
        }
        Ok(uri)
    }

    /// `[ userinfo ] hostport uri-parameters [ headers ]` after `sip:`.
    fn parse_sip(&mut self, rest: &'a str, base: usize) -> Result<(), ParseError> {
        let mut at = 0;
        // userinfo ends at the '@'; no other part of a SIP URI may hold a bare '@'.
        if let Some(amp) = rest.find('@') {
            let userinfo = &rest[..amp];
            let (user, password) = match userinfo.find(':') {
                Some(c) => (&userinfo[..c], Some((&userinfo[c + 1..], c + 1))),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(ParseError::new(ErrorKind::ExpectedUri, base));
            }
            check(user, base, ErrorKind::ExpectedUri, class::USER)?;
            self.user = Some(user);
            if let Some((password, p_at)) = password {
                check(password, base + p_at, ErrorKind::ExpectedUri, class::PASSWORD)?;
                self.password = Some(password);
            }
            at = amp + 1;
        }
        let host_len = host_len(&rest.as_bytes()[at..], base + at)?;
        self.host = &rest[at..at + host_len];
        at += host_len;
        if let Some(port_text) = rest[at..].strip_prefix(':') {
            let digits = port_text.bytes().take_while(u8::is_ascii_digit).count();
            let port = port_text[..digits]
                .parse::<u16>()
                .map_err(|_| ParseError::new(ErrorKind::ExpectedPort, base + at + 1))?;
            self.port = Some(port);
            at += 1 + digits;
        }
        let after_params = self.parse_uri_params(&rest[at..], base + at)?;
        at += after_params;
        if let Some(headers) = rest[at..].strip_prefix('?') {
            check(headers, base + at + 1, ErrorKind::ExpectedUri, class::URI_HEADER)?;
            self.headers = Some(headers);
            at = rest.len();
        }
        if at != rest.len() {
            return Err(ParseError::new(ErrorKind::TrailingData, base + at));
        }
        Ok(())
    }

    /// `*( ";" uri-parameter )`; returns the bytes consumed.
    fn parse_uri_params(&mut self, text: &'a str, base: usize) -> Result<usize, ParseError> {
        let mut at = 0;
        let mut count = 0;
        while text[at..].starts_with(';') {
            count += 1;
            if count > crate::limits::MAX_PARAMS {
                return Err(ParseError::new(ErrorKind::TooManyValues, base + at));
            }
            let start = at + 1;
            let len = text[start..].bytes().take_while(|&c| is(c, class::PARAM) || c == b'%' || c == b'=').count();
            let param = &text[start..start + len];
            let (name, value) = match param.find('=') {
                Some(eq) => (&param[..eq], Some((&param[eq + 1..], eq + 1))),
                None => (param, None),
            };
            if name.is_empty() {
                return Err(ParseError::new(ErrorKind::ExpectedParam, base + start));
            }
            check(name, base + start, ErrorKind::ExpectedParam, class::PARAM)?;
            if let Some((value, v_at)) = value {
                if value.is_empty() {
                    return Err(ParseError::new(ErrorKind::ExpectedParam, base + start + v_at));
                }
                check(value, base + start + v_at, ErrorKind::ExpectedParam, class::PARAM)?;
            }
            at = start + len;
        }
        self.params = Params::semicolon(&text[..at]);
        Ok(at)
    }

    /// Whether the URI carries `;lr` (a loose router, RFC 3261 §16.4).
    pub fn is_loose_router(&self) -> bool {
        self.params.contains("lr")
    }

    /// The `transport` URI parameter, if any.
    pub fn transport(&self) -> Option<&'a str> {
        self.params.value("transport")
    }

    /// The `maddr` URI parameter, if any.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.value("maddr")
    }

    /// The user part with escapes decoded.
    pub fn user_unescaped(&self) -> Option<Unescape<'a>> {
        self.user.map(unescape)
    }
}

/// Decodes `%HEX HEX` escapes lazily, byte by byte (no allocation).
pub fn unescape(text: &str) -> Unescape<'_> {
    Unescape { bytes: text.as_bytes(), pos: 0 }
}

/// Iterator returned by [`unescape`]; a broken escape is passed through as written.
#[derive(Clone, Debug)]
pub struct Unescape<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Unescape<'_> {
    /// Writes the decoded bytes into `out`; returns how many, or `BufferTooSmall`.
    pub fn write_to(self, out: &mut [u8]) -> Result<usize, ParseError> {
        let mut n = 0;
        for b in self {
            *out.get_mut(n).ok_or(ParseError::new(ErrorKind::BufferTooSmall, n))? = b;
            n += 1;
        }
        Ok(n)
    }

    /// Whether the decoded bytes equal `expected`.
    pub fn eq_bytes(self, expected: &[u8]) -> bool {
        self.eq(expected.iter().copied())
    }
}

impl Iterator for Unescape<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        if b == b'%' && self.pos + 2 < self.bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(self.bytes[self.pos + 1]), hex(self.bytes[self.pos + 2])) {
                self.pos += 3;
                return Some((hi * 16 + lo) as u8);
            }
        }
        self.pos += 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let uri = Uri::parse("sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?Subject=hi&Priority=urgent")
            .expect("parses");
        assert_eq!(uri.scheme, Scheme::Sips);
        assert_eq!(uri.user, Some("alice"));
        assert_eq!(uri.password, Some("secret"));
        assert_eq!(uri.host, "[2001:db8::10]");
        assert_eq!(uri.port, Some(5061));
        assert_eq!(uri.transport(), Some("tcp"));
        assert!(uri.is_loose_router());
        assert_eq!(uri.headers, Some("Subject=hi&Priority=urgent"));
    }

    #[test]
    fn tel_and_absolute_uris() {
        let tel = Uri::parse("tel:+1-201-555-0123;phone-context=example.com").expect("tel parses");
        assert_eq!(tel.scheme, Scheme::Tel);
        assert_eq!(tel.user, Some("+1-201-555-0123"));
        assert_eq!(tel.params.value("phone-context"), Some("example.com"));
        let other = Uri::parse("soap.beep://192.0.2.103:3002").expect("absolute parses");
        assert_eq!(other.scheme, Scheme::Other("soap.beep"));
    }

    #[test]
    fn broken_uris_are_errors_with_offsets() {
        assert_eq!(Uri::parse("<sip:user@example.com>").unwrap_err().kind, ErrorKind::ExpectedUri);
        assert_eq!(Uri::parse("sip:user@").unwrap_err(), ParseError::new(ErrorKind::ExpectedHost, 9));
        assert_eq!(Uri::parse("sip:a@b:99999").unwrap_err().kind, ErrorKind::ExpectedPort);
        assert_eq!(Uri::parse("sip:%zz@b").unwrap_err(), ParseError::new(ErrorKind::InvalidEscape, 4));
        assert_eq!(Uri::parse("sip:a@b c").unwrap_err().kind, ErrorKind::TrailingData);
    }

    #[test]
    fn unescape_decodes_hex_pairs_once() {
        let out: Vec<u8> = unescape("sips%3Auser%40example.com").collect();
        assert_eq!(out, b"sips:user@example.com");
        let out: Vec<u8> = unescape("v%61lue%25%34%31").collect();
        assert_eq!(out, b"value%41");
        let out: Vec<u8> = unescape("50%").collect();
        assert_eq!(out, b"50%");
    }
}
