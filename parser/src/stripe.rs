//! Call-ID routing shared by the server and the bench: a fast scan that finds
//! the Call-ID without a full parse, and the stable hash that maps a Call-ID to
//! its stripe.
//!
//! **The stripe hash is a wire contract**: every node of a cluster and every
//! sipbench instance must compute the same stripe for the same Call-ID, so the
//! function below never changes. It is 64-bit FNV-1a over the Call-ID's octets
//! exactly as they appear (Call-IDs compare case-sensitively, RFC 3261 §20.8),
//! followed by the murmur3 `fmix64` finaliser (so that the low bits used by
//! the modulo are well mixed), taken modulo the stripe count.

use crate::grammar::{find_byte, trim_lws};
use crate::header::HeaderName;
use crate::limits::MAX_HEADERS;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stripe of a Call-ID: `fmix64(fnv1a64(call_id)) % stripe_count`.
///
/// # Panics
/// If `stripe_count` is zero (a configuration invariant, checked at start-up).
pub fn stripe_of(call_id: &[u8], stripe_count: u32) -> u32 {
    assert!(stripe_count > 0, "invariant: stripe_count > 0");
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in call_id {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash % u64::from(stripe_count)) as u32
}

/// Finds the Call-ID value in a datagram without parsing it fully: skips CRLFs
/// before the start line, walks the header lines (folded lines joined), matches `Call-ID` or `i`
/// case-insensitively, and returns the value with LWS trimmed. Stops at the
/// end of the headers; returns `None` when there is no Call-ID.
pub fn peek_call_id(datagram: &[u8]) -> Option<&[u8]> {
    peek_call_id_with(datagram, find_byte)
}

/// [`peek_call_id`] with the byte search given (the tests hold the word-at-a-time search to
/// `memchr`'s answers).
fn peek_call_id_with(datagram: &[u8], find_byte: impl Fn(u8, &[u8]) -> Option<usize>) -> Option<&[u8]> {
    // CRLFs before the start line are skipped, as the parser does (RFC 3261 §7.5).
    let begin = crate::message::skip_leading_crlf(datagram);
    let mut pos = begin + find_byte(b'\n', &datagram[begin..])? + 1;
    for _ in 0..MAX_HEADERS {
        let line_end = pos + find_byte(b'\n', datagram.get(pos..)?)?;
        let line = &datagram[pos..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        let mut next = line_end + 1;
        let is_call_id = match line.first() {
            Some(b'i' | b'I') | Some(b'c' | b'C') => {
                let colon = find_byte(b':', line)?;
                let name = line[..colon].trim_ascii_end();
                HeaderName::from_bytes(name) == HeaderName::CallId
            }
            _ => false,
        };
        // Join continuation lines (RFC 3261 §7.3.1) so the scan stays aligned.
        let mut value_end = line_end;
        while matches!(datagram.get(next), Some(b' ' | b'\t')) {
            value_end = next + find_byte(b'\n', &datagram[next..])?;
            next = value_end + 1;
        }
        if is_call_id {
            let colon = pos + find_byte(b':', line)?;
            return Some(trim_lws(&datagram[colon + 1..value_end]));
        }
        pos = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINES: &[&str] = &[
        "INVITE sip:a SIP/2.0",
        "Via: x",
        "Call-ID: abc@h",
        "i: short",
        "CALL-ID :",
        "  folded",
        "\tmore",
        "c",
        "Cseq: 1",
        "Contact: <sip:i@x>",
        "",
        "call-id:",
        "i",
        "I:x",
        "body",
        " ",
        "Content-Length: 0",
        ":",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// The word-at-a-time scan finds what `memchr` found, on any arrangement of lines.
        #[test]
        fn word_at_a_time_peek_agrees_with_memchr(
            lines in proptest::collection::vec((0..LINES.len(), 0..3usize), 0..12),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut datagram = Vec::new();
            for (line, ending) in lines {
                datagram.extend_from_slice(LINES[line].as_bytes());
                datagram.extend_from_slice(["\r\n", "\n", "\r"][ending].as_bytes());
            }
            datagram.extend_from_slice(&tail);
            let by_memchr = peek_call_id_with(&datagram, memchr::memchr);
            prop_assert_eq!(peek_call_id(&datagram), by_memchr, "{:?}", String::from_utf8_lossy(&datagram));
        }
    }

    #[test]
    fn stripe_hash_is_stable() {
        // The contract between nodes and sipbench: never change these. They were
        // computed independently (a 6-line Python FNV-1a + fmix64), not read back from Rust.
        assert_eq!(stripe_of(b"", 1024), 294);
        assert_eq!(stripe_of(b"a84b4c76e66710@pc33.atlanta.com", 1024), 521);
        assert_eq!(stripe_of(b"1-1234@127.0.0.1", 1024), 718);
        assert_eq!(stripe_of(b"a84b4c76e66710@pc33.atlanta.com", 7), 0);
        assert_eq!(stripe_of(b"x", 1), 0);
    }

    #[test]
    fn stripes_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let id = format!("{i}-bench@127.0.0.1");
            counts[stripe_of(id.as_bytes(), 16) as usize] += 1;
        }
        for (stripe, &count) in counts.iter().enumerate() {
            assert!((850..1150).contains(&count), "stripe {stripe} got {count} of 16000");
        }
    }

    #[test]
    fn peek_finds_long_compact_and_folded_call_ids() {
        assert_eq!(peek_call_id(b"INVITE sip:a SIP/2.0\r\nVia: x\r\nCall-ID: abc@h\r\n\r\n"), Some(&b"abc@h"[..]));
        assert_eq!(peek_call_id(b"BYE sip:a SIP/2.0\r\ni:  x1 \r\n\r\n"), Some(&b"x1"[..]));
        assert_eq!(peek_call_id(b"BYE sip:a SIP/2.0\r\nCALL-ID :\r\n  folded\r\n\r\n"), Some(&b"folded"[..]));
        assert_eq!(peek_call_id(b"BYE sip:a SIP/2.0\r\nContact: <sip:i@x>\r\n\r\ni: body\r\n"), None);
        assert_eq!(peek_call_id(b"garbage"), None);
    }

    #[test]
    fn peek_skips_crlfs_before_the_start_line_as_the_parser_does() {
        // Found by the parse fuzz target once the shard routed by the parsed Call-ID: the scan
        // took the empty first line for the start line and the real one for a header.
        let message = b"\r\n\nCALL sip:a SIP/2.0\r\nVia: x\r\nCall-ID: c1\r\n\r\n";
        assert_eq!(peek_call_id(message), Some(&b"c1"[..]));
        let mut slots = [crate::HeaderSlot::EMPTY; crate::Message::SLOTS];
        let parsed = crate::parse(message, &mut slots).expect("parses");
        assert_eq!(parsed.header(HeaderName::CallId), Some(&b"c1"[..]));
    }
}
