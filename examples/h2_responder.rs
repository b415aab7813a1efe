//! An h2c responder for measuring the HTTP/2 server side alone: every request, once it has
//! ended, is answered `200` with the body `ok\n`, on the proxy's own `codec::server` or,
//! with `--h2-crate`, on the h2 crate's server, for comparison. Both run on tokio's
//! single-threaded runtime, as the proxy does on one core. For instruction counts under
//! h2load (README, "Performance") and for h2spec against `codec::server`:
//!
//! cargo run --release --example h2_responder -- 127.0.0.1:18092 [--h2-crate]
//! h2load -n 30000 -c 32 -m 10 http://127.0.0.1:18092/

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use load_balancer::codec::server::{Config, Event, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8] = b"ok\n";

fn main() {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: h2_responder ADDRESS [--h2-crate]");
    let h2_crate = args.next().as_deref() == Some("--h2-crate");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind(address).await.expect("bound");
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            if h2_crate {
                tokio::spawn(on_h2_crate(socket));
            } else {
                tokio::spawn(on_codec(socket));
            }
        }
    });
}

/// One connection on `codec::server`: read, take the events, answer ended requests, write.
async fn on_codec(mut socket: TcpStream) {
    let mut conn = Server::new(Config::default());
    let mut read = BytesMut::with_capacity(16 * 1024);
    // Bodies the client's windows did not take yet, sent again when they open.
    let mut waiting: Vec<(u32, Bytes)> = Vec::new();
    loop {
        if !conn.out().is_empty() {
            let out = conn.out().split();
            if socket.write_all(&out).await.is_err() {
                return;
            }
        }
        read.reserve(4096);
        match socket.read_buf(&mut read).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if conn.recv(&mut read).is_err() {
            // The GOAWAY saying why is in `out`.
            let _ = socket.write_all(&conn.out().split()).await;
            return;
        }
        while let Some(event) = conn.event() {
            match event {
                Event::Request {
                    stream,
                    end_stream: true,
                    ..
                }
                | Event::Trailers { stream, .. } => answer(&mut conn, stream, &mut waiting),
                Event::Data {
                    stream,
                    data,
                    end_stream,
                } => {
                    conn.release(stream, data.len() as u32);
                    if end_stream {
                        answer(&mut conn, stream, &mut waiting);
                    }
                }
                Event::TooLarge { stream, .. } => {
                    conn.send_head(stream, 431, [], true);
                }
                Event::Writable => {
                    for (stream, mut body) in std::mem::take(&mut waiting) {
                        if conn.send_data(stream, &mut body, true) && !body.is_empty() {
                            waiting.push((stream, body));
                        }
                    }
                }
                // A request whose body is still coming, a reset, the client's GOAWAY.
                _ => {}
            }
        }
    }
}

fn answer(conn: &mut Server, stream: u32, waiting: &mut Vec<(u32, Bytes)>) {
    let fields = [
        (&b"content-type"[..], &b"text/plain"[..]),
        (&b"content-length"[..], &b"3"[..]),
    ];
    conn.send_head(stream, 200, fields, false);
    let mut body = Bytes::from_static(BODY);
    if conn.send_data(stream, &mut body, true) && !body.is_empty() {
        waiting.push((stream, body));
    }
}

/// One connection on the h2 crate's server, answering the same way.
async fn on_h2_crate(socket: TcpStream) {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(200)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20);
    let Ok(mut conn) = builder.handshake::<_, Bytes>(socket).await else {
        return;
    };
    while let Some(Ok((request, respond))) = conn.accept().await {
        let mut body = request.into_body();
        if body.is_end_stream() {
            // The cheapest use of h2: answered in the connection's task.
            respond_ok(respond);
            continue;
        }
        tokio::spawn(async move {
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
            }
            respond_ok(respond);
        });
    }
}

fn respond_ok(mut respond: h2::server::SendResponse<Bytes>) {
    let response = hyper::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .header("content-length", "3")
        .body(())
        .expect("a response head");
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from_static(BODY), true);
    }
}
