//! Memory per call record, measured with a counting global allocator: insert
//! 1,000,000 records into one shard's call table and divide the heap growth
//! (record, key, table overhead). Field sizes follow the benchmark corpus's
//! call (parser/benches/corpus/): tags of 10 and 7 characters, Contacts like
//! `<sip:alice@192.0.2.101:5060>`, one Record-Route, 48-byte Call-IDs.
//!
//! `cargo bench -p sipshard-shards --features testing --bench memory`
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait; the impl only forwards to System.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sipshard_shards::StripeId;
use sipshard_shards::dialog::{B2buaCall, CallTimer, Dialog, DialogState, ProxyDialog};
use sipshard_shards::shard::{CallRecord, Peer, ServerFsm, ServerTxn, Transport, TxnTimers};
use sipshard_shards::table::{CallTable, Hints};
use sipshard_shards::transaction::matching::{KeyMethod, ServerKey};
use sipshard_shards::transaction::{ServerNonInvite, TxnTimer};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RECORDS: usize = 1_000_000;

fn peer(port: u16) -> Peer {
    Peer { addr: format!("192.0.2.101:{port}").parse().expect("addr"), transport: Transport::Udp }
}

/// Inserts RECORDS records made by `make` and prints the bytes each one costs.
fn measure<R: Serialize + DeserializeOwned>(name: &str, make: impl Fn(usize) -> R) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    let mut table: CallTable<R> = CallTable::new(RECORDS);
    table.set_feed(false);
    for i in 0..RECORDS {
        let call_id = format!("{i:08x}-a84b4c76e66710@pc33.atlanta.example.com");
        let stripe = StripeId::of_call_id(call_id.as_bytes(), 1024);
        table.get_and_lock(stripe, call_id.as_bytes(), true).expect("room");
        table.put_and_unlock(stripe, call_id.as_bytes(), make(i), Hints::DIALOG_CONFIRMED).expect("checked out");
    }
    let per_record = (LIVE.load(Ordering::SeqCst) - before) as usize / RECORDS;
    println!("{name}: {} records, {per_record} bytes per record (record, key and table overhead)", table.len());
    per_record
}

fn leg(local_tag: String, remote_tag: &str, contact: &str) -> Dialog {
    Dialog {
        local_tag: local_tag.into(),
        remote_tag: remote_tag.into(),
        local_uri: "sip:+15551234567@atlanta.example.com".into(),
        remote_uri: "sip:+15557654321@biloxi.example.com".into(),
        remote_target: contact.into(),
        route_set: Vec::new(),
        local_cseq: 314_160,
        remote_cseq: 314_159,
        peer: peer(5060),
        state: DialogState::Confirmed,
    }
}

fn main() {
    let proxy = measure("proxy dialog (confirmed)", |i| ProxyDialog {
        caller_tag: format!("{i:010}").into(),
        callee_tag: "a6c85cf".into(),
        caller_contact: "<sip:alice@192.0.2.101:5060>".into(),
        callee_contact: "<sip:bob@192.0.2.201:5060>".into(),
        caller: peer(5060),
        callee: peer(5062),
        record_route: vec!["<sip:10.0.0.1;lr>".into()],
        invite_cseq: 314_159,
        state: DialogState::Confirmed,
        timers: vec![(CallTimer::MaxDuration, 7_200_000)],
    });
    let b2bua = measure("B2BUA call (two confirmed legs)", |i| B2buaCall {
        a_leg: leg(format!("{i:010}"), "1928301774", "<sip:alice@192.0.2.101:5060>"),
        b_leg: leg(format!("b{i:09}"), "a6c85cf", "<sip:bob@192.0.2.201:5060>"),
        b_call_id: format!("b2b~0000~{i:016x}").into(),
        ack_cseq: [0, 1],
    });
    let txn = measure("call with one server transaction in Completed", |i| CallRecord {
        transactions: vec![ServerTxn {
            id: i as u64,
            key: ServerKey::Rfc3261 {
                branch_sent_by: format!("z9hG4bK{i:016x} 192.0.2.101:5060").as_bytes().into(),
                method: KeyMethod::Options,
            },
            fsm: ServerFsm::NonInvite(ServerNonInvite::new(false)),
            peer: peer(5060),
            response: vec![b'x'; 330].into(),
            answered: true,
            request: Default::default(),
            timers: {
                let mut timers = TxnTimers::default();
                timers.set(TxnTimer::J, 32_000);
                timers
            },
        }],
        ..CallRecord::default()
    });
    println!("targets: proxy dialog <= 1024 B ({}), B2BUA call <= 2048 B ({})", proxy <= 1024, b2bua <= 2048);
    let _ = txn;
}
