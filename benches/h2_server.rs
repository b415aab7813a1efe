//! What the proxy's own HTTP/2 server side costs per request, without I/O: h2load's
//! request as it comes on a warm connection (HEADERS, every field indexed, and the
//! WINDOW_UPDATE that gives back what the last response took), its event taken, and a
//! response of head and body written.
//!
//! cargo bench --bench h2_server

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use load_balancer::codec::frame::{self, Settings};
use load_balancer::codec::server::{Config, Event, PREFACE, Server};

/// h2load's first request block (it adds :authority, user-agent and accept-encoding to
/// the table), and the repeat that indexes them.
const FIRST: &str =
    "828486418b089d5c0b8170dc0bc0781f5383f963e7907a8f9c541c722954d3a5358980aed89707";
const REPEAT: &str = "828486c0bf90be";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn server(c: &mut Criterion) {
    let mut conn = Server::new(Config::default());
    let mut buf = BytesMut::from(PREFACE);
    Settings::default().write(&mut buf);
    frame::headers(1, &unhex(FIRST), true, 16384, &mut buf);
    conn.recv(&mut buf).unwrap();
    while conn.event().is_some() {}
    let repeat = unhex(REPEAT);
    let mut stream = 1;
    c.bench_function("codec::server: a request in, its response out", |b| {
        b.iter(|| {
            stream += 2;
            let mut buf = BytesMut::with_capacity(64);
            frame::headers(stream, &repeat, true, 16384, &mut buf);
            // The client gives back the connection window the last body took, as h2load does.
            frame::window_update(0, 3, &mut buf);
            conn.recv(&mut buf).unwrap();
            let Some(Event::Request { stream, head, .. }) = conn.event() else {
                panic!("a request");
            };
            black_box(head.path());
            let fields = [
                (&b"content-type"[..], &b"text/plain"[..]),
                (&b"content-length"[..], &b"3"[..]),
            ];
            conn.send_head(stream, 200, fields, false);
            conn.send_data(stream, &mut Bytes::from_static(b"ok\n"), true);
            conn.out().clear();
            while conn.event().is_some() {}
        })
    });
}

criterion_group!(benches, server);
criterion_main!(benches);
