//! What the HTTP/1 path spends on heads per request: parsing and rewriting a typical
//! browser request for the backend, and a typical response for the client, and walking a
//! chunked body. Everything else per request is system calls and the ring pick.
//!
//! cargo bench --bench http1_heads

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use load_balancer::proxy::forward::headers::Client;
use load_balancer::proxy::http1::chunked::Chunked;
use load_balancer::proxy::http1::request::rewrite_request;
use load_balancer::proxy::http1::response::rewrite_response;

const REQUEST: &[u8] = b"GET /api/v1/items?page=2 HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://shop.example.com/items\r\n\
Cookie: session=8f2c1e0b9a7d4c3e; theme=dark\r\n\
Connection: keep-alive\r\n\
X-Forwarded-For: 203.0.113.9\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Fri, 27 Nov 2026 09:00:00 GMT\r\n\
Content-Type: application/json\r\n\
Content-Length: 1234\r\n\
Connection: keep-alive\r\n\
Cache-Control: no-store\r\n\r\n";

fn heads(c: &mut Criterion) {
    let client = Client::new("10.1.2.3:5555".parse().unwrap());
    let mut out = Vec::with_capacity(1024);
    let request = rewrite_request(REQUEST, &client, &mut out)
        .unwrap()
        .unwrap();
    c.bench_function("rewrite_request (10 fields)", |b| {
        b.iter(|| rewrite_request(black_box(REQUEST), &client, &mut out))
    });
    c.bench_function("rewrite_response (6 fields)", |b| {
        b.iter(|| rewrite_response(black_box(RESPONSE), &request, false, &mut out))
    });
    let body: Vec<u8> = (0..64)
        .flat_map(|_| {
            b"400\r\n"
                .iter()
                .copied()
                .chain([b'x'; 1024])
                .chain(*b"\r\n")
        })
        .chain(*b"0\r\n\r\n")
        .collect();
    c.bench_function(
        "chunked body checked and forwarded (64 KiB in 64 chunks)",
        |b| {
            let mut out = Vec::with_capacity(body.len());
            b.iter(|| {
                let mut chunked = Chunked::new();
                out.clear();
                let mut at = 0;
                while !chunked.is_done() {
                    at += chunked.forward(black_box(&body[at..]), &mut out).unwrap();
                }
                at
            })
        },
    );
}

criterion_group!(benches, heads);
criterion_main!(benches);
