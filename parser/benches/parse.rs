//! Parser throughput on the realistic corpus (benches/corpus/), in one run:
//! (a) frame + index all headers, (b) (a) plus the typed decode of everything
//! a proxy reads, and the same corpus through the `rsip` crate (parse + typed
//! headers). Each iteration handles the whole corpus (10 messages); criterion
//! reports bytes/s, and messages/s = 10 / time per iteration.
//!
//! `cargo bench -p sipshard-parser --bench parse`

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn.

mod corpus;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rsip::prelude::*;
use sipshard_parser::{HeaderSlot, Message, parse};

fn frame_and_index(slots: &mut [HeaderSlot]) -> usize {
    let mut headers = 0;
    for (_, bytes) in corpus::MESSAGES {
        let msg = parse(black_box(bytes), slots).expect("corpus parses");
        headers += msg.header_count() + msg.body().len();
    }
    headers
}

fn typed_decode(slots: &mut [HeaderSlot]) -> usize {
    let mut sum = 0;
    for (_, bytes) in corpus::MESSAGES {
        let msg = parse(black_box(bytes), slots).expect("corpus parses");
        sum += corpus::decode_proxy_fields(&msg);
    }
    sum
}

/// rsip's equivalent: parse the message (it tokenises every header into owned
/// strings), then convert the headers a proxy reads to their typed forms.
fn rsip_typed(bytes: &[u8]) -> usize {
    let msg = rsip::SipMessage::try_from(bytes).expect("rsip parses the corpus");
    let mut sum = 0usize;
    if let rsip::SipMessage::Request(req) = &msg {
        sum += req.uri.host_with_port.to_string().len();
    }
    for header in msg.headers().iter() {
        sum += match header {
            rsip::Header::Via(v) => v.typed().map(|v| v.branch().map_or(0, |b| b.to_string().len())).unwrap_or(0),
            rsip::Header::From(f) => f.typed().map(|f| f.tag().map_or(0, |t| t.to_string().len())).unwrap_or(0),
            rsip::Header::To(t) => t.typed().map(|t| t.tag().map_or(0, |t| t.to_string().len())).unwrap_or(0),
            rsip::Header::CallId(c) => c.value().len(),
            rsip::Header::CSeq(c) => c.typed().map(|c| c.seq as usize).unwrap_or(0),
            rsip::Header::MaxForwards(m) => m.num().unwrap_or(0) as usize,
            rsip::Header::Route(r) => r.typed().map(|r| r.uris().len()).unwrap_or(0),
            rsip::Header::RecordRoute(r) => r.typed().map(|r| r.uris().len()).unwrap_or(0),
            rsip::Header::Contact(c) => c.typed().map(|c| c.uri.to_string().len()).unwrap_or(0),
            rsip::Header::ContentLength(c) => c.length().unwrap_or(0) as usize,
            rsip::Header::Expires(e) => e.seconds().unwrap_or(0) as usize,
            rsip::Header::Authorization(a) => a.typed().map(|a| a.response.len()).unwrap_or(0),
            _ => 0,
        };
    }
    sum
}

fn benches(c: &mut Criterion) {
    // rsip must accept the whole corpus, or the comparison is not like for like.
    for (name, bytes) in corpus::MESSAGES {
        assert!(rsip::SipMessage::try_from(*bytes).is_ok(), "rsip rejects {name}");
    }
    let mut slots = [HeaderSlot::EMPTY; Message::SLOTS];
    let mut group = c.benchmark_group("corpus");
    group.throughput(Throughput::Bytes(corpus::total_bytes() as u64));
    group.bench_function("sipshard/frame_index", |b| b.iter(|| frame_and_index(&mut slots)));
    group.bench_function("sipshard/typed_decode", |b| b.iter(|| typed_decode(&mut slots)));
    group.bench_function("rsip/parse", |b| {
        b.iter(|| {
            corpus::MESSAGES
                .iter()
                .map(|(_, m)| rsip::SipMessage::try_from(black_box(*m)).map_or(0, |m| m.body().len()))
                .sum::<usize>()
        })
    });
    group.bench_function("rsip/typed_decode", |b| {
        b.iter(|| corpus::MESSAGES.iter().map(|(_, m)| rsip_typed(black_box(m))).sum::<usize>())
    });
    group.finish();

    let mut per_message = c.benchmark_group("message");
    for (name, bytes) in corpus::MESSAGES {
        per_message.throughput(Throughput::Bytes(bytes.len() as u64));
        per_message.bench_function(format!("typed_decode/{name}"), |b| {
            b.iter(|| {
                let msg = parse(black_box(bytes), &mut slots).expect("parses");
                corpus::decode_proxy_fields(&msg)
            })
        });
    }
    per_message.finish();
}

criterion_group!(parser_benches, benches);
criterion_main!(parser_benches);
