//! Fuzz target: feed a byte stream through `frame` in arbitrary chunk sizes,
//! the way a TCP reader would, and parse every framed message. Nothing may
//! panic, `frame` must make progress or ask for more, and a framed length
//! must never exceed the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard_parser::{Frame, HeaderSlot, Message, frame, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut buffered: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    loop {
        match frame(&buffered) {
            Ok(Frame::Partial) => {
                if fed == stream.len() {
                    return;
                }
                let end = (fed + chunk).min(stream.len());
                buffered.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Ok(Frame::KeepAlive { len, .. }) => {
                assert!(len > 0 && len <= buffered.len());
                buffered.drain(..len);
            }
            Ok(Frame::Message { len }) => {
                assert!(len > 0 && len <= buffered.len());
                if let Ok(msg) = parse(&buffered[..len], &mut slots) {
                    assert!(msg.len() <= len);
                    let _ = msg.problems();
                }
                buffered.drain(..len);
            }
            Err(_) => return,
        }
    }
});
