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

mod h2load;
use h2load::{FIRST_REQUEST, REPEATED_REQUEST, unhex};

fn server(c: &mut Criterion) {
    let mut conn = Server::new(Config::default());
    let mut buf = BytesMut::from(PREFACE);
    Settings::default().write(&mut buf);
    frame::headers(1, &unhex(FIRST_REQUEST), true, 16384, &mut buf);
    conn.recv(&mut buf).unwrap();
    while conn.event().is_some() {}
    let repeat = unhex(REPEATED_REQUEST);
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
