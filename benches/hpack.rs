//! What HPACK costs per request on the proxy's own codec: decoding a client's request
//! block (the first, which fills the dynamic table, and a repeat, which indexes it),
//! decoding a worker's response block of Huffman literals, and encoding a response.
//!
//! cargo bench --bench hpack

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use load_balancer::codec::hpack::{self, Decoder};

mod h2load;
use h2load::{FIRST_REQUEST, REPEATED_REQUEST, unhex};

/// An nginx response: `:status 200` indexed, then server, date, content-type and
/// content-length as Huffman literals without indexing, names from the static table.
const RESPONSE: &str = "880f2789aa6355e580ae212e1f0f1296e4593e940094be52282009c500d5c641700053168dff0f1087497ca58ae819aa0f0d8167";

fn hpack(c: &mut Criterion) {
    let first = unhex(FIRST_REQUEST);
    let repeated = unhex(REPEATED_REQUEST);
    let response = unhex(RESPONSE);
    let mut count = 0usize;
    let mut check = Decoder::new(4096);
    check.decode(&response, |_| count += 1).unwrap();
    assert_eq!(count, 5);

    c.bench_function("decode a first request (7 fields, 4 added)", |b| {
        b.iter(|| {
            let mut d = Decoder::new(4096);
            let mut n = 0;
            d.decode(black_box(&first), |f| n += f.value.len()).unwrap();
            n
        })
    });
    let mut d = Decoder::new(4096);
    d.decode(&first, |_| {}).unwrap();
    c.bench_function("decode a repeated request (7 fields indexed)", |b| {
        b.iter(|| {
            let mut n = 0;
            d.decode(black_box(&repeated), |f| n += f.value.len())
                .unwrap();
            n
        })
    });
    let mut d = Decoder::new(4096);
    c.bench_function("decode an nginx response (5 fields, Huffman)", |b| {
        b.iter(|| {
            let mut n = 0;
            d.decode(black_box(&response), |f| n += f.value.len())
                .unwrap();
            n
        })
    });
    let mut out = Vec::with_capacity(256);
    c.bench_function("encode a response (5 fields)", |b| {
        b.iter(|| {
            out.clear();
            hpack::status(200, &mut out);
            hpack::field(b"server", black_box(b"nginx/1.22.1"), false, &mut out);
            hpack::field(b"date", b"Wed, 02 Dec 2026 04:30:00 GMT", false, &mut out);
            hpack::field(b"content-type", b"text/plain", false, &mut out);
            hpack::field(b"content-length", b"3", false, &mut out);
            out.len()
        })
    });
}

criterion_group!(benches, hpack);
criterion_main!(benches);
