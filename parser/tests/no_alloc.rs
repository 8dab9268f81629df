//! Zero heap allocations: parsing and the typed decode of the benchmark
//! corpus (and writing an edited message) touch no allocator. A counting
//! global allocator proves it, counting only the allocations of the thread
//! being measured (the test harness's own threads may allocate meanwhile).
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait; the impl only forwards to System.

#[path = "../benches/corpus.rs"]
mod corpus;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sipshard_parser::{Editor, HeaderSlot, Message, parse, peek_call_id, stripe_of};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are being counted (a const initialiser: no allocation).
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn parse_decode_and_write_allocate_nothing() {
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let mut out = [0u8; 4096];
    let mut checksum = 0usize;
    // Warm up once (lazy statics of the test harness, if any) before counting.
    let _ = parse(corpus::MESSAGES[0].1, &mut slots).map(|m| corpus::decode_proxy_fields(&m));

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    for _ in 0..100 {
        for (_, bytes) in corpus::MESSAGES {
            let id = peek_call_id(bytes).expect("Call-ID");
            checksum += stripe_of(id, 1024) as usize;
            let msg = parse(bytes, &mut slots).expect("corpus parses");
            checksum += corpus::decode_proxy_fields(&msg);
            checksum += msg.problems().len();
            let mut editor = Editor::new(&msg);
            editor.push_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc").expect("edit");
            editor.decrement_max_forwards().expect("edit");
            checksum += editor.write(&mut out).unwrap_or(0);
        }
    }
    COUNTING.with(|c| c.set(false));
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert!(checksum > 0);
    assert_eq!(after - before, 0, "heap allocations during parse + decode + write");
}
