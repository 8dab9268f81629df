//! Memory per call record, measured with a counting global allocator: insert
//! 1,000,000 records into one shard's call table and divide the heap growth.
//! Today's record is the one the shard core stores (a call with one server
//! transaction in Completed, its latest response kept for retransmission);
//! the proxy's and B2BUA's dialog records come with the roles.
//!
//! `cargo bench -p sipshard-shards --features testing --bench memory`
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait; the impl only forwards to System.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sipshard_shards::StripeId;
use sipshard_shards::shard::{CallRecord, Peer, ServerFsm, ServerTxn, Transport};
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

fn main() {
    let response = sipshard_shards::testing::request("OPTIONS", "127.0.0.1:5062".parse().expect("addr"), "x", 1, "y");
    let response = response[..response.len().min(330)].to_vec(); // about a 200 OK's size
    let before = LIVE.load(Ordering::SeqCst);
    let mut table: CallTable<CallRecord> = CallTable::new(RECORDS);
    for i in 0..RECORDS {
        let call_id = format!("{i:016x}-a84b4c76e66710@pc33.atlanta.example.com");
        let stripe = StripeId::of_call_id(call_id.as_bytes(), 1024);
        let txn = ServerTxn {
            id: i as u64,
            key: ServerKey::Rfc3261 {
                branch: format!("z9hG4bK{i:016x}").into(),
                sent_by: "192.0.2.101:5060".into(),
                method: KeyMethod::Other("OPTIONS".into()),
            },
            fsm: ServerFsm::NonInvite(ServerNonInvite::new(false)),
            peer: Peer { addr: "192.0.2.101:5060".parse().expect("addr"), transport: Transport::Udp },
            response: response.clone(),
            timers: vec![(TxnTimer::J, 32_000)],
        };
        table.get_and_lock(stripe, call_id.as_bytes(), true).expect("room");
        table
            .put_and_unlock(stripe, call_id.as_bytes(), CallRecord { transactions: vec![txn] }, Hints::NONE)
            .expect("checked out");
        while table.poll_change().is_some() {}
    }
    let bytes = LIVE.load(Ordering::SeqCst) - before;
    println!(
        "{} records with one server transaction each (response kept: {} B): {:.1} MiB, {} bytes per record",
        table.len(),
        response.len(),
        bytes as f64 / (1024.0 * 1024.0),
        bytes as usize / RECORDS
    );
}
