//! RFC 3261 §25 building blocks shared by the typed decoders: character
//! classes, LWS, tokens, quoted strings, parameters. One function per ABNF
//! rule, named after it, the rule quoted in its doc comment.
//!
//! Values inside a message may contain folded lines; by the time a decoder sees
//! a value the framer has checked that every CR LF in it is followed by WSP,
//! so CR and LF count as LWS here.

use nom::IResult;
use nom::error::ParseError as NomParseError;

use crate::error::{ErrorKind, ParseError};

/// The nom error of the decoders: where it failed and, once known, what was expected.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct GrammarError<'a> {
    pub(crate) at: &'a str,
    pub(crate) kind: Option<ErrorKind>,
}

impl<'a> NomParseError<&'a str> for GrammarError<'a> {
    fn from_error_kind(input: &'a str, _: nom::error::ErrorKind) -> Self {
        GrammarError { at: input, kind: None }
    }

    fn append(_: &'a str, _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

impl<'a> GrammarError<'a> {
    /// A failure at `at` with a known expectation.
    pub(crate) fn new(at: &'a str, kind: ErrorKind) -> Self {
        GrammarError { at, kind: Some(kind) }
    }

    /// Converts to a [`ParseError`] whose offset counts from the start of `base`.
    pub(crate) fn locate(self, base: &[u8]) -> ParseError {
        let offset = (self.at.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        ParseError::new(self.kind.unwrap_or(ErrorKind::ExpectedToken), offset)
    }
}

/// The result type of every grammar rule.
pub(crate) type PResult<'a, O> = IResult<&'a str, O, GrammarError<'a>>;

/// A failure of `kind` at `at`, as a nom error.
pub(crate) fn fail<'a, O>(at: &'a str, kind: ErrorKind) -> PResult<'a, O> {
    Err(nom::Err::Error(GrammarError::new(at, kind)))
}

/// Runs `parser`; on failure, names what was expected unless an inner rule already did.
pub(crate) fn expect<'a, O>(
    kind: ErrorKind,
    mut parser: impl FnMut(&'a str) -> PResult<'a, O>,
) -> impl FnMut(&'a str) -> PResult<'a, O> {
    move |input| {
        parser(input).map_err(|e| e.map(|inner| GrammarError { at: inner.at, kind: Some(inner.kind.unwrap_or(kind)) }))
    }
}

/// Runs a whole-value rule: the value must be consumed entirely (trailing LWS allowed).
pub(crate) fn complete<'a, O>(
    value: &'a str,
    mut parser: impl FnMut(&'a str) -> PResult<'a, O>,
) -> Result<O, ParseError> {
    match parser(value) {
        Ok((rest, out)) => {
            let rest = sws(rest);
            if rest.is_empty() {
                Ok(out)
            } else {
                Err(GrammarError::new(rest, ErrorKind::TrailingData).locate(value.as_bytes()))
            }
        }
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.locate(value.as_bytes())),
        Err(nom::Err::Incomplete(_)) => {
            Err(GrammarError::new(&value[value.len()..], ErrorKind::ExpectedToken).locate(value.as_bytes()))
        }
    }
}

/// Character classes of RFC 3261 §25, one bit each in the class table.
pub(crate) mod class {
    /// `token`: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~"
    pub(crate) const TOKEN: u8 = 1;
    /// `word`: token characters plus ( ) < > : \ DQUOTE / [ ] ? { }
    pub(crate) const WORD: u8 = 2;
    /// `unreserved = alphanum / mark`, `mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"`
    pub(crate) const UNRESERVED: u8 = 4;
    /// URI user: unreserved / `user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"`
    pub(crate) const USER: u8 = 8;
    /// URI password: unreserved / "&" / "=" / "+" / "$" / ","
    pub(crate) const PASSWORD: u8 = 16;
    /// URI `paramchar`: unreserved / `param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"`
    pub(crate) const PARAM: u8 = 32;
    /// URI headers: unreserved / `hnv-unreserved` / "=" / "&"
    pub(crate) const URI_HEADER: u8 = 64;
    /// `uric = reserved / unreserved` (absolute URIs), plus "#"
    pub(crate) const URIC: u8 = 128;
}

const fn build_class_table() -> [u8; 256] {
    use class::*;
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mut bits = 0;
        if alnum || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~') {
            bits |= TOKEN | WORD;
        }
        if matches!(b, b'(' | b')' | b'<' | b'>' | b':' | b'\\' | b'"' | b'/' | b'[' | b']' | b'?' | b'{' | b'}') {
            bits |= WORD;
        }
        if alnum || matches!(b, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')') {
            bits |= UNRESERVED | USER | PASSWORD | PARAM | URI_HEADER | URIC;
        }
        if matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/') {
            bits |= USER;
        }
        if matches!(b, b'&' | b'=' | b'+' | b'$' | b',') {
            bits |= PASSWORD;
        }
        if matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
            bits |= PARAM;
        }
        if matches!(b, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'=' | b'&') {
            bits |= URI_HEADER;
        }
        if matches!(b, b';' | b'/' | b'?' | b':' | b'@' | b'&' | b'=' | b'+' | b'$' | b',' | b'#') {
            bits |= URIC;
        }
        table[c] = bits;
        c += 1;
    }
    table
}

/// The class bits of every octet (non-ASCII octets belong to no class).
static CLASS: [u8; 256] = build_class_table();

/// Whether octet `c` belongs to any of the classes in `mask`.
#[inline(always)]
pub(crate) fn is(c: u8, mask: u8) -> bool {
    CLASS[usize::from(c)] & mask != 0
}

/// Splits `input` after its longest prefix of octets in `mask`. Every class is
/// ASCII, so the split is a char boundary. Returns (prefix, rest).
#[inline]
pub(crate) fn take_class(input: &str, mask: u8) -> (&str, &str) {
    let n = input.bytes().position(|c| !is(c, mask)).unwrap_or(input.len());
    input.split_at(n)
}

/// A non-empty run of octets in `mask`, or `kind` expected.
#[inline]
pub(crate) fn class1(mask: u8, kind: ErrorKind) -> impl Fn(&str) -> PResult<'_, &str> {
    move |input| match take_class(input, mask) {
        ("", _) => fail(input, kind),
        (taken, rest) => Ok((rest, taken)),
    }
}

/// Token characters.
#[inline(always)]
pub(crate) fn is_token_char(c: u8) -> bool {
    is(c, class::TOKEN)
}

/// The first `needle` in `bytes`, eight bytes at a time (SWAR). SIP's lines are 20-60
/// bytes, where `memchr`'s vectorised search spends more on its set-up (about 100
/// instructions a call) than on the scan; this costs about one instruction a byte.
#[inline]
pub(crate) fn find_byte(needle: u8, bytes: &[u8]) -> Option<usize> {
    find_either(needle, needle, bytes)
}

/// The first `a` or `b` in `bytes`, as [`find_byte`] finds one.
#[inline]
pub(crate) fn find_either(a: u8, b: u8, bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // A zero byte of `word ^ pattern` is a match; the lowest flagged byte is exact (higher ones
    // may be borrows), and little-endian puts the earliest byte lowest.
    let zero_bytes = |word: u64| word.wrapping_sub(LO) & !word & HI;
    let (pattern_a, pattern_b) = (LO * u64::from(a), LO * u64::from(b));
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else { break };
        let word = u64::from_le_bytes(word);
        let found = zero_bytes(word ^ pattern_a) | zero_bytes(word ^ pattern_b);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&c| c == a || c == b).map(|i| at + i)
}

/// Whitespace inside a (possibly folded) value: SP, HTAB, CR, LF.
#[inline(always)]
pub(crate) const fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims LWS (folds included) from both ends of raw bytes.
#[inline]
pub(crate) fn trim_lws(value: &[u8]) -> &[u8] {
    // Nearly every header value is written after one space and ends in a visible octet.
    match value {
        [b' ', only] if !is_lws(*only) => &value[1..],
        [b' ', first, .., last] if !is_lws(*first) && !is_lws(*last) => &value[1..],
        _ => trim_lws_loop(value),
    }
}

/// [`trim_lws`] for any value.
fn trim_lws_loop(mut value: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = value {
        if !is_lws(*first) {
            break;
        }
        value = rest;
    }
    while let [rest @ .., last] = value {
        if !is_lws(*last) {
            break;
        }
        value = rest;
    }
    value
}

/// `SWS = [LWS]`: skips optional whitespace, folds included.
#[inline]
pub(crate) fn sws(input: &str) -> &str {
    let n = input.bytes().position(|c| !is_lws(c)).unwrap_or(input.len());
    &input[n..]
}

/// `LWS = [*WSP CRLF] 1*WSP`: at least one whitespace character.
pub(crate) fn lws(input: &str) -> PResult<'_, &str> {
    match input.bytes().position(|c| !is_lws(c)).unwrap_or(input.len()) {
        0 => fail(input, ErrorKind::ExpectedToken),
        n => Ok((&input[n..], &input[..n])),
    }
}

/// `token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )`.
pub(crate) fn token(input: &str) -> PResult<'_, &str> {
    class1(class::TOKEN, ErrorKind::ExpectedToken)(input)
}

/// A separator with optional LWS around it: `SEMI`, `COMMA`, `EQUAL`, `SLASH`, `COLON`.
pub(crate) fn separator(sep: char) -> impl Fn(&str) -> PResult<'_, ()> {
    move |input| {
        let rest = sws(input);
        match rest.strip_prefix(sep) {
            Some(rest) => Ok((sws(rest), ())),
            None => fail(input, ErrorKind::ExpectedToken),
        }
    }
}

/// `quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE`; returns the text between
/// the quotes with quoted-pairs left escaped (zero-copy).
///
/// `qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII`;
/// `quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)`.
pub(crate) fn quoted_string(input: &str) -> PResult<'_, &str> {
    let start = sws(input);
    let Some(body) = start.strip_prefix('"') else {
        return fail(start, ErrorKind::ExpectedQuotedString);
    };
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok((&body[i + 1..], &body[..i])),
            b'\\' => {
                // quoted-pair: any octet but CR and LF may be escaped.
                match bytes.get(i + 1) {
                    Some(b'\r' | b'\n') | None => return fail(&body[i..], ErrorKind::ExpectedQuotedString),
                    Some(_) => i += 2,
                }
            }
            0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f => {
                return fail(&body[i..], ErrorKind::ExpectedQuotedString);
            }
            _ => i += 1,
        }
    }
    fail(start, ErrorKind::ExpectedQuotedString)
}

/// `gen-value = token / host / quoted-string` (host covers IPv6 references).
pub(crate) fn gen_value(input: &str) -> PResult<'_, &str> {
    if input.starts_with('"') {
        let (rest, _) = quoted_string(input)?;
        // Keep the quotes in the raw value so callers can tell a quoted value apart.
        let consumed = input.len() - rest.len();
        return Ok((rest, &input[..consumed]));
    }
    match input.bytes().position(|c| !(is_token_char(c) || matches!(c, b':' | b'[' | b']'))).unwrap_or(input.len()) {
        0 => fail(input, ErrorKind::ExpectedParam),
        n => Ok((&input[n..], &input[..n])),
    }
}

/// `generic-param = token [ EQUAL gen-value ]`.
pub(crate) fn generic_param(input: &str) -> PResult<'_, (&str, Option<&str>)> {
    let (rest, name) = expect(ErrorKind::ExpectedParam, token)(input)?;
    match separator('=')(rest) {
        Ok((after_eq, ())) => {
            let (rest, value) = expect(ErrorKind::ExpectedParam, gen_value)(after_eq)?;
            Ok((rest, (name, Some(value))))
        }
        Err(_) => Ok((rest, (name, None))),
    }
}

/// `*( SEMI generic-param )`: validates the parameters and returns their raw span,
/// calling `each` for every parameter (at most [`MAX_PARAMS`](crate::limits::MAX_PARAMS)).
pub(crate) fn header_params<'a>(
    input: &'a str,
    mut each: impl FnMut(&'a str, Option<&'a str>) -> Result<(), GrammarError<'a>>,
) -> PResult<'a, &'a str> {
    let mut rest = input;
    let mut count = 0;
    loop {
        let Ok((after_semi, ())) = separator(';')(rest) else { break };
        count += 1;
        if count > crate::limits::MAX_PARAMS {
            return fail(rest, ErrorKind::TooManyValues);
        }
        let (after, (name, value)) = generic_param(after_semi)?;
        each(name, value).map_err(nom::Err::Error)?;
        rest = after;
    }
    let consumed = input.len() - rest.len();
    Ok((rest, input[..consumed].trim_end_matches([' ', '\t', '\r', '\n'])))
}

/// `1*DIGIT` parsed into a `u64`, refusing values that overflow it.
pub(crate) fn digits(input: &str) -> PResult<'_, u64> {
    let n = input.bytes().position(|c| !c.is_ascii_digit()).unwrap_or(input.len());
    if n == 0 {
        return fail(input, ErrorKind::ExpectedNumber);
    }
    let (text, rest) = input.split_at(n);
    let mut value: u64 = 0;
    for b in text.bytes() {
        value = match value.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
            Some(v) => v,
            None => return fail(input, ErrorKind::NumberTooLarge),
        };
    }
    Ok((rest, value))
}

/// `1*DIGIT` that must fit in `max`.
pub(crate) fn number_at_most(max: u64) -> impl Fn(&str) -> PResult<'_, u64> {
    move |input| {
        let (rest, value) = digits(input)?;
        if value > max { fail(input, ErrorKind::NumberTooLarge) } else { Ok((rest, value)) }
    }
}

/// Where `bytes` first holds `separator` outside a quoted string (quoted-pairs skipped), at
/// index `from` or later (quotes before `from` still count); `bytes.len()` if nowhere.
#[inline]
pub(crate) fn find_outside_quotes(bytes: &[u8], separator: u8, from: usize) -> usize {
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            c if c == separator && !in_quotes && i >= from => return i,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Splits a list value at its first top-level comma (outside quotes and `<>`).
/// Returns (first value, rest after the comma) or (whole, None).
pub(crate) fn split_first_value(value: &str) -> (&str, Option<&str>) {
    let bytes = value.as_bytes();
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                return (value[..i].trim_end_matches([' ', '\t', '\r', '\n']), Some(sws(&value[i + 1..])));
            }
            _ => {}
        }
        i += 1;
    }
    (value, None)
}

/// The tail of `text` from byte `offset` (or its empty end), to point an error into it.
pub(crate) fn tail_at(text: &str, offset: usize) -> &str {
    match text.get(offset..) {
        Some(tail) => tail,
        None => &text[text.len()..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// The one-space shortcut trims what the loop trims.
        #[test]
        fn trim_lws_shortcut_agrees_with_the_loop(
            bytes in proptest::collection::vec(prop_oneof![Just(b' '), Just(b'\t'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..6),
        ) {
            prop_assert_eq!(trim_lws(&bytes), trim_lws_loop(&bytes));
        }

        /// The word-at-a-time search finds the first match, as a byte-by-byte one does.
        #[test]
        fn find_byte_finds_the_first_match(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b':'), Just(0x8a), Just(0x0b), any::<u8>()], 0..40),
            needle in prop_oneof![Just(b'\n'), Just(b':'), any::<u8>()],
        ) {
            prop_assert_eq!(find_byte(needle, &bytes), bytes.iter().position(|&c| c == needle));
        }

        /// The two-needle search finds the first of either, as a byte-by-byte one does.
        #[test]
        fn find_either_finds_the_first_of_either(
            bytes in proptest::collection::vec(prop_oneof![Just(b','), Just(b'"'), Just(0xac), Just(0xa2), any::<u8>()], 0..40),
            a in prop_oneof![Just(b','), any::<u8>()],
            b in prop_oneof![Just(b'"'), any::<u8>()],
        ) {
            prop_assert_eq!(find_either(a, b, &bytes), bytes.iter().position(|&c| c == a || c == b));
        }
    }

    #[test]
    fn quoted_string_keeps_quoted_pairs_and_stops_at_the_closing_quote() {
        assert_eq!(quoted_string(r#""J Rosenberg \\\""  <x>"#), Ok(("  <x>", r#"J Rosenberg \\\""#)));
        assert_eq!(quoted_string("\"a\\\u{0}b\" rest"), Ok((" rest", "a\\\u{0}b")));
        assert!(quoted_string("\"Mr. J. User <sip:j.user@example.com>").is_err());
    }

    #[test]
    fn header_params_validate_and_report_each_parameter() {
        let mut seen = Vec::new();
        let (rest, raw) = header_params(" ;   tag    = 1918181833n ;lr, next", |n, v| {
            seen.push((n, v));
            Ok(())
        })
        .expect("params parse");
        assert_eq!(rest, ", next");
        assert_eq!(raw, " ;   tag    = 1918181833n ;lr");
        assert_eq!(seen, vec![("tag", Some("1918181833n")), ("lr", None)]);
        assert!(header_params(";;", |_, _| Ok(())).is_err());
    }

    #[test]
    fn numbers_refuse_overflow() {
        assert_eq!(number_at_most(u64::from(u32::MAX))("4294967295 x"), Ok((" x", 4_294_967_295)));
        let err = number_at_most(u64::from(u32::MAX))("9292394834772304023312").unwrap_err();
        assert!(matches!(err, nom::Err::Error(GrammarError { kind: Some(ErrorKind::NumberTooLarge), .. })));
    }

    #[test]
    fn list_values_split_outside_quotes_and_brackets() {
        assert_eq!(
            split_first_value(r#""a, b" <sip:x,y>;p=1 , <sip:z>"#),
            (r#""a, b" <sip:x,y>;p=1"#, Some("<sip:z>"))
        );
        assert_eq!(split_first_value("one"), ("one", None));
    }
}
