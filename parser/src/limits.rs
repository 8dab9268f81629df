//! Hard limits on what the parser accepts. Every loop in the crate is bounded
//! by one of these; exceeding one is a precise [`ErrorKind`](crate::ErrorKind),
//! never a panic or unbounded work.

/// Largest message accepted, start line to end of body: the largest UDP payload.
pub const MAX_MESSAGE_BYTES: usize = 65_535;

/// Most header fields (lines, after unfolding) in one message; also the slot
/// count that [`Message::SLOTS`](crate::Message::SLOTS) recommends.
pub const MAX_HEADERS: usize = 128;

/// Most Via values (over all Via header lines) in one message: one per hop, and
/// a request starts with Max-Forwards 70 (RFC 3261 §8.1.1.6). RFC 4475's
/// longreq carries 34.
pub const MAX_VIAS: usize = 70;

/// Longest physical line (start line or one header line, CRLF excluded).
pub const MAX_LINE_BYTES: usize = 4_096;

/// Longest header value after unfolding continuation lines.
pub const MAX_HEADER_VALUE_BYTES: usize = 8_192;

/// Most comma-separated values read from one header field.
pub const MAX_VALUES_PER_HEADER: usize = 64;

/// Most parameters read from one URI or header value.
pub const MAX_PARAMS: usize = 64;

/// Most edits one [`Editor`](crate::Editor) can hold.
pub const MAX_EDITS: usize = 16;

const _: () = assert!(MAX_LINE_BYTES <= MAX_HEADER_VALUE_BYTES);
const _: () = assert!(MAX_HEADER_VALUE_BYTES < MAX_MESSAGE_BYTES);
const _: () = assert!(MAX_VIAS <= MAX_HEADERS * MAX_VALUES_PER_HEADER);
const _: () = assert!(MAX_MESSAGE_BYTES <= u32::MAX as usize);
