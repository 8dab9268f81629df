//! Header names: the known SIP header fields as an enum, looked up
//! case-insensitively, with RFC 3261 §7.3.3 compact forms (and the later RFCs'
//! one-letter forms) mapped to the same name as the long form.

/// A header field: its name and its raw value, both borrowed from the message.
///
/// The value has leading and trailing LWS removed; a folded value (RFC 3261
/// §7.3.1) keeps its inner CRLF + WSP, which every typed decoder treats as LWS.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The normalised name.
    pub name: HeaderName,
    /// The name as it appeared on the wire.
    pub raw_name: &'a [u8],
    /// The value as it appeared on the wire, trimmed.
    pub value: &'a [u8],
}

/// A caller-provided slot that [`parse`](crate::parse) fills with one header's
/// name and the spans of its raw name and value (offsets into the message).
/// Slots hold no borrow, so one array serves every datagram of a receive loop.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HeaderSlot {
    pub(crate) name: HeaderName,
    pub(crate) name_at: u16,
    pub(crate) name_len: u16,
    pub(crate) value_at: u16,
    pub(crate) value_len: u16,
}

// Offsets into a message fit u16 because a message never exceeds 65,535 bytes.
const _: () = assert!(crate::limits::MAX_MESSAGE_BYTES <= u16::MAX as usize);

impl HeaderSlot {
    /// An unused slot: build the array as `[HeaderSlot::EMPTY; Message::SLOTS]`.
    pub const EMPTY: HeaderSlot =
        HeaderSlot { name: HeaderName::Other, name_at: 0, name_len: 0, value_at: 0, value_len: 0 };

    /// The header this slot describes, borrowing `buf`.
    pub(crate) fn view<'a>(&self, buf: &'a [u8]) -> Header<'a> {
        let span = |at: u16, len: u16| &buf[usize::from(at)..usize::from(at) + usize::from(len)];
        Header {
            name: self.name,
            raw_name: span(self.name_at, self.name_len),
            value: span(self.value_at, self.value_len),
        }
    }
}

impl Header<'_> {
    /// The header's name in its canonical long form, or as written when unknown.
    pub fn name_str(&self) -> &str {
        match self.name {
            HeaderName::Other => core::str::from_utf8(self.raw_name).unwrap_or("?"),
            known => known.as_str(),
        }
    }
}

/// Case-insensitive equality of two token strings, eight octets at a time.
///
/// On token characters `| 0x20` folds exactly the letters: the only other
/// token character it changes is `_` (to 0x7F), which no token character
/// equals, so two tokens are equal ignoring case iff their folded octets are.
#[inline]
fn eq_token_folded(a: &[u8], b: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut a8).zip(&mut b8) {
        let x = u64::from_le_bytes(x.try_into().expect("invariant: chunks of 8"));
        let y = u64::from_le_bytes(y.try_into().expect("invariant: chunks of 8"));
        if x | FOLD != y | FOLD {
            return false;
        }
    }
    a8.remainder().iter().zip(b8.remainder()).all(|(x, y)| x | 0x20 == y | 0x20)
}

macro_rules! header_names {
    ($($variant:ident => $text:literal,)*) => {
        /// A header field name; compact forms map to their long form.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $(#[doc = concat!("`", $text, "`")] $variant,)*
            /// Any header this crate does not know by name.
            Other,
        }

        /// Canonical long forms, indexed by `HeaderName as usize`.
        static NAMES: [&str; HeaderName::COUNT] = [$($text,)* "Other"];

        impl HeaderName {
            /// How many names there are, [`HeaderName::Other`] included.
            pub(crate) const COUNT: usize = [$($text,)*].len() + 1;

            /// The canonical long form (`"Other"` for unknown names).
            pub const fn as_str(self) -> &'static str {
                NAMES[self as usize]
            }
        }
    };
}

header_names! {
    Accept => "Accept",
    AcceptContact => "Accept-Contact",
    AcceptEncoding => "Accept-Encoding",
    AcceptLanguage => "Accept-Language",
    AlertInfo => "Alert-Info",
    Allow => "Allow",
    AllowEvents => "Allow-Events",
    AuthenticationInfo => "Authentication-Info",
    Authorization => "Authorization",
    CallId => "Call-ID",
    CallInfo => "Call-Info",
    Contact => "Contact",
    ContentDisposition => "Content-Disposition",
    ContentEncoding => "Content-Encoding",
    ContentLanguage => "Content-Language",
    ContentLength => "Content-Length",
    ContentType => "Content-Type",
    CSeq => "CSeq",
    Date => "Date",
    ErrorInfo => "Error-Info",
    Event => "Event",
    Expires => "Expires",
    From => "From",
    Identity => "Identity",
    IdentityInfo => "Identity-Info",
    InReplyTo => "In-Reply-To",
    MaxForwards => "Max-Forwards",
    MimeVersion => "MIME-Version",
    MinExpires => "Min-Expires",
    MinSe => "Min-SE",
    Organization => "Organization",
    Path => "Path",
    Priority => "Priority",
    ProxyAuthenticate => "Proxy-Authenticate",
    ProxyAuthorization => "Proxy-Authorization",
    ProxyRequire => "Proxy-Require",
    RAck => "RAck",
    RecordRoute => "Record-Route",
    ReferTo => "Refer-To",
    ReferredBy => "Referred-By",
    RejectContact => "Reject-Contact",
    ReplyTo => "Reply-To",
    RequestDisposition => "Request-Disposition",
    Require => "Require",
    RetryAfter => "Retry-After",
    Route => "Route",
    RSeq => "RSeq",
    Server => "Server",
    SessionExpires => "Session-Expires",
    Subject => "Subject",
    SubscriptionState => "Subscription-State",
    Supported => "Supported",
    Timestamp => "Timestamp",
    To => "To",
    Unsupported => "Unsupported",
    UserAgent => "User-Agent",
    Via => "Via",
    Warning => "Warning",
    WwwAuthenticate => "WWW-Authenticate",
}

impl HeaderName {
    /// Looks a wire name up, case-insensitively, compact forms included.
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        let Some(&first) = name.first() else { return Other };
        if name.len() == 1 {
            return Self::from_compact(first);
        }
        // Dispatch on the first letter so a lookup compares two or three names, not sixty.
        // Dispatch on (length, first letter): almost always one candidate to compare.
        let candidates: &[HeaderName] = match (name.len(), first | 0x20) {
            (2, b't') => &[To],
            (3, b'v') => &[Via],
            (4, b'c') => &[CSeq],
            (4, b'd') => &[Date],
            (4, b'f') => &[From],
            (4, b'p') => &[Path],
            (4, b'r') => &[RAck, RSeq],
            (5, b'a') => &[Allow],
            (5, b'e') => &[Event],
            (5, b'r') => &[Route],
            (6, b'a') => &[Accept],
            (6, b'm') => &[MinSe],
            (6, b's') => &[Server],
            (7, b'c') => &[CallId, Contact],
            (7, b'e') => &[Expires],
            (7, b'r') => &[Require],
            (7, b's') => &[Subject],
            (7, b'w') => &[Warning],
            (8, b'i') => &[Identity],
            (8, b'p') => &[Priority],
            (8, b'r') => &[ReferTo, ReplyTo],
            (9, b'c') => &[CallInfo],
            (9, b's') => &[Supported],
            (9, b't') => &[Timestamp],
            (10, b'a') => &[AlertInfo],
            (10, b'e') => &[ErrorInfo],
            (10, b'u') => &[UserAgent],
            (11, b'i') => &[InReplyTo],
            (11, b'm') => &[MinExpires],
            (11, b'r') => &[ReferredBy, RetryAfter],
            (11, b'u') => &[Unsupported],
            (12, b'a') => &[AllowEvents],
            (12, b'c') => &[ContentType],
            (12, b'm') => &[MaxForwards, MimeVersion],
            (12, b'o') => &[Organization],
            (12, b'r') => &[RecordRoute],
            (13, b'a') => &[Authorization],
            (13, b'i') => &[IdentityInfo],
            (13, b'p') => &[ProxyRequire],
            (14, b'a') => &[AcceptContact],
            (14, b'c') => &[ContentLength],
            (14, b'r') => &[RejectContact],
            (15, b'a') => &[AcceptEncoding, AcceptLanguage],
            (15, b's') => &[SessionExpires],
            (16, b'c') => &[ContentEncoding, ContentLanguage],
            (16, b'w') => &[WwwAuthenticate],
            (18, b'p') => &[ProxyAuthenticate],
            (18, b's') => &[SubscriptionState],
            (19, b'a') => &[AuthenticationInfo],
            (19, b'c') => &[ContentDisposition],
            (19, b'p') => &[ProxyAuthorization],
            (19, b'r') => &[RequestDisposition],
            _ => &[],
        };
        for &candidate in candidates {
            if eq_token_folded(name, NAMES[candidate as usize].as_bytes()) {
                return candidate;
            }
        }
        Other
    }

    /// The long form of a one-letter compact name (RFC 3261 §7.3.3 and later RFCs).
    pub fn from_compact(letter: u8) -> HeaderName {
        use HeaderName::*;
        match letter | 0x20 {
            b'a' => AcceptContact,
            b'b' => ReferredBy,
            b'c' => ContentType,
            b'd' => RequestDisposition,
            b'e' => ContentEncoding,
            b'f' => From,
            b'i' => CallId,
            b'j' => RejectContact,
            b'k' => Supported,
            b'l' => ContentLength,
            b'm' => Contact,
            b'n' => IdentityInfo,
            b'o' => Event,
            b'r' => ReferTo,
            b's' => Subject,
            b't' => To,
            b'u' => AllowEvents,
            b'v' => Via,
            b'x' => SessionExpires,
            b'y' => Identity,
            _ => Other,
        }
    }
}

/// A header name and its colon as two words to compare a line's first sixteen octets with:
/// `want` where `keep` has its octets, letters folded by `fold` (so case-insensitive on
/// letters and exact on `-` and `:`).
#[derive(Copy, Clone, Debug)]
struct NamePrefix {
    name: HeaderName,
    /// Octets of the name, without the colon.
    name_len: usize,
    want: [u64; 2],
    keep: [u64; 2],
    fold: [u64; 2],
}

impl NamePrefix {
    /// The prefix `text:` for `name` (`text` at most fifteen octets: a compact form or the long one).
    const fn new(name: HeaderName, text: &str) -> NamePrefix {
        let bytes = text.as_bytes();
        assert!(bytes.len() < 16, "a prefix and its colon fit two words");
        let (mut want, mut keep, mut fold) = ([0u64; 2], [0u64; 2], [0u64; 2]);
        let mut i = 0;
        while i <= bytes.len() {
            let c = if i < bytes.len() { bytes[i].to_ascii_lowercase() } else { b':' };
            let (word, shift) = (i / 8, (i % 8) * 8);
            want[word] |= (c as u64) << shift;
            keep[word] |= 0xff << shift;
            if c.is_ascii_lowercase() {
                fold[word] |= 0x20 << shift;
            }
            i += 1;
        }
        NamePrefix { name, name_len: bytes.len(), want, keep, fold }
    }

    fn matches(&self, words: [u64; 2]) -> bool {
        (words[0] & self.keep[0]) | self.fold[0] == self.want[0]
            && (words[1] & self.keep[1]) | self.fold[1] == self.want[1]
    }
}

/// The names nearly every request and response carries, by first letter (lower case).
const fn common_names(first: u8) -> &'static [NamePrefix] {
    use HeaderName::*;
    const V: &[NamePrefix] = &[NamePrefix::new(Via, "Via"), NamePrefix::new(Via, "v")];
    const C: &[NamePrefix] = &[
        NamePrefix::new(CallId, "Call-ID"),
        NamePrefix::new(CSeq, "CSeq"),
        NamePrefix::new(ContentLength, "Content-Length"),
        NamePrefix::new(Contact, "Contact"),
        NamePrefix::new(ContentType, "Content-Type"),
    ];
    const F: &[NamePrefix] = &[NamePrefix::new(From, "From"), NamePrefix::new(From, "f")];
    const T: &[NamePrefix] = &[NamePrefix::new(To, "To"), NamePrefix::new(To, "t")];
    const M: &[NamePrefix] = &[NamePrefix::new(MaxForwards, "Max-Forwards"), NamePrefix::new(Contact, "m")];
    const R: &[NamePrefix] = &[NamePrefix::new(RecordRoute, "Record-Route"), NamePrefix::new(Route, "Route")];
    const I: &[NamePrefix] = &[NamePrefix::new(CallId, "i")];
    const L: &[NamePrefix] = &[NamePrefix::new(ContentLength, "l")];
    match first {
        b'v' => V,
        b'c' => C,
        b'f' => F,
        b't' => T,
        b'm' => M,
        b'r' => R,
        b'i' => I,
        b'l' => L,
        _ => &[],
    }
}

impl HeaderName {
    /// The name a header line starts with, and its length, when it is one of the names nearly
    /// every message carries written right before its colon (`Via:`, `call-id:`, `l:`):
    /// two word compares instead of a scan and a lookup. `None` otherwise (another name,
    /// whitespace before the colon, fewer than sixteen octets left), and the caller scans the
    /// name: where this answers, the scan finds the same name and length (a test holds it).
    #[inline]
    pub(crate) fn at_line_start(line: &[u8]) -> Option<(HeaderName, usize)> {
        let head: &[u8; 16] = line.first_chunk()?;
        let (lo, hi) = head.split_at(8);
        let word = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("invariant: eight octets"));
        let words = [word(lo), word(hi)];
        common_names(head[0] | 0x20).iter().find(|p| p.matches(words)).map(|p| (p.name, p.name_len))
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    #[test]
    fn names_match_case_insensitively_and_compact_forms_map_to_long_names() {
        let cases: &[(&[u8], HeaderName)] = &[
            (b"Via", Via),
            (b"v", Via),
            (b"V", Via),
            (b"MaX-fOrWaRdS", MaxForwards),
            (b"call-id", CallId),
            (b"i", CallId),
            (b"l", ContentLength),
            (b"m", Contact),
            (b"k", Supported),
            (b"CSEQ", CSeq),
            (b"www-authenticate", WwwAuthenticate),
            (b"X-Custom", Other),
            (b"", Other),
            (b"C%6Fntact", Other),
            (b"Call_ID", Other),
            (b"Content-Lengt", Other),
            (b"Content-Length_", Other),
            (b"CONTENT-LENGTH", ContentLength),
            (b"proxy-authorization", ProxyAuthorization),
            (b"Proxy-Authorizatioo", Other),
        ];
        for &(wire, expected) in cases {
            assert_eq!(HeaderName::from_bytes(wire), expected, "{:?}", core::str::from_utf8(wire));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 20_000, ..Default::default() })]

        /// `at_line_start` answers exactly for a usual name written right before its colon,
        /// with what the scan and the lookup give; letters in any case, other octets flipped to
        /// their near misses (`-` to CR, `:` to SUB).
        #[test]
        fn a_usual_name_at_a_line_start_is_what_the_scan_finds(
            name in proptest::sample::select(vec![
                "Via", "v", "Call-ID", "i", "CSeq", "Content-Length", "l", "Contact", "m", "Content-Type",
                "From", "f", "To", "t", "Max-Forwards", "Record-Route", "Route", "Call-Info", "Contacts",
                "Vias", "c", "k", "X-Via", "Content-Lengt", "Max_Forwards",
            ]),
            flips in proptest::collection::vec(proptest::prelude::any::<bool>(), 16),
            separator in proptest::sample::select(vec![":", " :", "\t:", ";", "", ": ", "::"]),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        ) {
            let mut line: Vec<u8> = format!("{name}{separator}").into_bytes();
            for (c, _) in line.iter_mut().zip(&flips).filter(|(_, flip)| **flip) {
                *c ^= 0x20;
            }
            line.extend_from_slice(&tail);
            let scanned = line.iter().position(|&c| !crate::grammar::is_token_char(c)).filter(|&n| n > 0);
            let usual = [Via, CallId, CSeq, ContentLength, Contact, ContentType, From, To, MaxForwards, RecordRoute, Route];
            let expected = scanned.filter(|&n| line.len() >= 16 && line[n] == b':').and_then(|n| {
                let found = HeaderName::from_bytes(&line[..n]);
                let compact_known = n > 1 || b"vilmft".contains(&(line[0] | 0x20));
                (usual.contains(&found) && compact_known).then_some((found, n))
            });
            proptest::prop_assert_eq!(HeaderName::at_line_start(&line), expected, "{:?}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn the_usual_names_are_recognised_at_a_line_start() {
        for (line, expected) in [
            (&b"Via: SIP/2.0/UDP 192.0.2.1"[..], Some((Via, 3))),
            (b"CALL-ID: a84b4c76e66710@pc33", Some((CallId, 7))),
            (b"content-length: 0\r\n\r\n", Some((ContentLength, 14))),
            (b"l: 0\r\n\r\n1234567890", Some((ContentLength, 1))),
            (b"Via : SIP/2.0/UDP 192.0.2.1", None),
            (b"Via: SIP/2.0", None),
            (b"Call\rID: a84b4c76e66710@pc33", None),
        ] {
            assert_eq!(HeaderName::at_line_start(line), expected, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn every_long_name_round_trips_through_lookup() {
        for letter in b'a'..=b'z' {
            let name = HeaderName::from_compact(letter);
            if name != Other {
                assert_eq!(HeaderName::from_bytes(name.as_str().as_bytes()), name);
            }
        }
        for name in [Accept, AuthenticationInfo, ContentLanguage, MinSe, MimeVersion, RSeq, RAck, ReplyTo, Warning] {
            assert_eq!(HeaderName::from_bytes(name.as_str().as_bytes()), name);
        }
    }
}
