//! The health checks' probe of a worker: a TCP connect, an HTTP request answered with the
//! expected status, or a gRPC `grpc.health.v1.Health/Check` call answered `SERVING`; over TLS
//! when the pool's workers speak it (the same settings as its traffic, so a worker whose
//! certificate would be refused is not marked healthy).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use tokio::io::AsyncWriteExt;

use super::stream::UpstreamStream;
use super::tls::{UpstreamTls, connect_by};
use super::{dial, proxy_header};
use crate::balance::health::Probe;
use crate::config::{HealthCheckConfig, HealthCheckKind, SendProxy};
use crate::ring::Worker;

/// Probes workers over the network.
#[derive(Default)]
pub struct NetworkProbe {
    /// The pool's `[pools.NAME.tls]`: the handshake is part of the check.
    pub tls: Option<Arc<UpstreamTls>>,
    /// The pool's `send_proxy`: checks start with a `LOCAL` header when it is on.
    pub send_proxy: SendProxy,
}

impl Probe for NetworkProbe {
    fn probe(
        &self,
        worker: Arc<Worker>,
        check: Arc<HealthCheckConfig>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let tls = self.tls.clone();
        let send_proxy = self.send_proxy;
        Box::pin(async move { probe(&worker, &check, tls.as_deref(), send_proxy).await })
    }
}

async fn probe(
    worker: &Worker,
    check: &HealthCheckConfig,
    tls: Option<&UpstreamTls>,
    send_proxy: SendProxy,
) -> bool {
    let deadline = tokio::time::Instant::now() + check.timeout;
    let Ok(mut tcp) = dial(&worker.address, check.timeout).await else {
        return false;
    };
    // The header first, the TLS handshake after it, as on the pool's real connections.
    if let Some(header) = proxy_header::local_header(send_proxy)
        && tcp.write_all(&header).await.is_err()
    {
        return false;
    }
    let stream = match tls {
        None => UpstreamStream::Plain(tcp),
        Some(tls) => match connect_by(deadline, tls, tcp, &worker.address).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(backend = %worker.address.text, error = %e, "health check: TLS failed");
                return false;
            }
        },
    };
    let (method, path, expect_status) = match &check.kind {
        HealthCheckKind::Tcp => return true,
        HealthCheckKind::Grpc { service } => {
            let tls = tls.is_some();
            return tokio::time::timeout_at(deadline, grpc_check(stream, worker, tls, service))
                .await
                .unwrap_or(false);
        }
        HealthCheckKind::Http {
            method,
            path,
            expect_status,
        } => (method, path, expect_status),
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method.clone();
    *request.uri_mut() = path.parse().expect("validated by config");
    if let Ok(host) = HeaderValue::from_str(&worker.address.text) {
        request.headers_mut().insert(header::HOST, host);
    }
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("load_balancer-health-check"),
    );
    let passed = match sender.send_request(request).await {
        Ok(response) => response.status().as_u16() == *expect_status,
        Err(_) => false,
    };
    driver.abort();
    passed
}

/// The longest answer a gRPC health check reads: a `HealthCheckResponse` is a few bytes.
const GRPC_ANSWER_LIMIT: usize = 16 * 1024;

/// `grpc.health.v1.Health/Check` for `service` on `stream`, over HTTP/2 with prior
/// knowledge (over TLS, the pool's TLS offered ALPN "h2"). Passes on HTTP 200, a
/// `HealthCheckResponse` whose status is `SERVING`, and `grpc-status` 0. The caller bounds it
/// in time.
async fn grpc_check(stream: UpstreamStream, worker: &Worker, tls: bool, service: &str) -> bool {
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await;
    let (mut sender, conn) = match handshake {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(backend = %worker.address.text, error = %e, "gRPC health check: no HTTP/2");
            return false;
        }
    };
    let driver = tokio::spawn(conn);
    let scheme = if tls { "https" } else { "http" };
    let uri = format!(
        "{scheme}://{}/grpc.health.v1.Health/Check",
        worker.address.text
    );
    let Ok(uri) = uri.parse::<hyper::Uri>() else {
        driver.abort();
        return false;
    };
    let mut request = Request::new(Full::new(grpc_frame(&health_check_request(service))));
    *request.method_mut() = hyper::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("load_balancer-health-check"),
    );
    let verdict = match sender.send_request(request).await {
        Ok(response) => grpc_verdict(response).await,
        Err(e) => Err(format!("the call failed: {e}")),
    };
    driver.abort();
    match verdict {
        Ok(()) => true,
        Err(why) => {
            tracing::debug!(backend = %worker.address.text, why, "gRPC health check failed");
            false
        }
    }
}

/// Whether a `Health/Check` answer says `SERVING`; if not, why.
async fn grpc_verdict(response: hyper::Response<hyper::body::Incoming>) -> Result<(), String> {
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    // A trailers-only answer (an error, as gRPC sends them) carries its status in the head.
    let head_status = grpc_status(response.headers());
    let body = Limited::new(response.into_body(), GRPC_ANSWER_LIMIT)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let status = body
        .trailers()
        .and_then(grpc_status)
        .or(head_status)
        .ok_or("no grpc-status")?;
    if status != "0" {
        return Err(format!("grpc-status {status}"));
    }
    let body = body.to_bytes();
    let message = grpc_unframe(&body).ok_or("not one uncompressed gRPC message")?;
    match health_check_status(message) {
        Some(SERVING) => Ok(()),
        Some(other) => Err(format!("serving status {other}, not SERVING (1)")),
        None => Err("not a HealthCheckResponse".into()),
    }
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<String> {
    Some(headers.get("grpc-status")?.to_str().ok()?.to_string())
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// The protobuf encoding of `grpc.health.v1.HealthCheckRequest { string service = 1; }`:
/// nothing for "" (proto3 leaves default values out), else tag 0x0a (field 1, length-
/// delimited), the length as a varint, the UTF-8 bytes.
fn health_check_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// A gRPC length-prefixed message: flag 0 (not compressed), the length in 4 big-endian
/// bytes, the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The one uncompressed message of a gRPC body, or `None` if the body is anything else
/// (compressed, cut short, trailing bytes).
fn grpc_unframe(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let (length, message) = rest.split_first_chunk::<4>()?;
    (flag == 0 && message.len() == u32::from_be_bytes(*length) as usize).then_some(message)
}

/// `status` (field 1, a varint) of a `grpc.health.v1.HealthCheckResponse`: 0 (UNKNOWN) when
/// left out, as proto3 does for defaults; the last one wins, as protobuf says; unknown
/// fields are skipped. `None` when the bytes are not a valid message.
fn health_check_status(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let value = take_varint(&mut message)?;
                if field == 1 {
                    status = value;
                }
            }
            1 => message = message.get(8..)?,
            2 => {
                let length = usize::try_from(take_varint(&mut message)?).ok()?;
                message = message.get(length..)?;
            }
            5 => message = message.get(4..)?,
            _ => return None,
        }
        if field == 1 && wire_type != 0 {
            return None;
        }
    }
    Some(status)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one varint (at most 10 bytes) off the front of `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_check_request_is_encoded_by_hand_as_protobuf_does() {
        assert_eq!(health_check_request(""), b"");
        assert_eq!(
            health_check_request("test.Echo"),
            b"\x0a\x09test.Echo".to_vec()
        );
        // A length of 200 takes a two-byte varint: 0xc8 0x01.
        let long = "s".repeat(200);
        let encoded = health_check_request(&long);
        assert_eq!(&encoded[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(&encoded[3..], long.as_bytes());
    }

    #[test]
    fn grpc_frames_are_flag_length_message() {
        assert_eq!(&grpc_frame(b"")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_frame(&health_check_request("a"))[..],
            &[0, 0, 0, 0, 3, 0x0a, 0x01, b'a']
        );
        assert_eq!(
            grpc_unframe(&[0, 0, 0, 0, 2, 0x08, 0x01]),
            Some(&[0x08, 0x01][..])
        );
        assert_eq!(grpc_unframe(&[0, 0, 0, 0, 0]), Some(&[][..]));
        assert_eq!(
            grpc_unframe(&[1, 0, 0, 0, 2, 0x08, 0x01]),
            None,
            "compressed"
        );
        assert_eq!(
            grpc_unframe(&[0, 0, 0, 0, 3, 0x08, 0x01]),
            None,
            "cut short"
        );
        assert_eq!(
            grpc_unframe(&[0, 0, 0, 0, 1, 0x08, 0x01]),
            None,
            "trailing bytes"
        );
        assert_eq!(grpc_unframe(&[0, 0, 0]), None, "no prefix");
        assert_eq!(grpc_unframe(&[]), None, "no message");
    }

    #[test]
    fn health_check_responses_decode_to_their_status() {
        assert_eq!(health_check_status(&[0x08, 0x01]), Some(SERVING));
        assert_eq!(health_check_status(&[0x08, 0x02]), Some(2), "NOT_SERVING");
        assert_eq!(
            health_check_status(&[0x08, 0x03]),
            Some(3),
            "SERVICE_UNKNOWN"
        );
        assert_eq!(health_check_status(&[]), Some(0), "UNKNOWN, left out");
        assert_eq!(
            health_check_status(&[0x08, 0x02, 0x08, 0x01]),
            Some(1),
            "last wins"
        );
        // Unknown fields of every wire type are skipped: 2 varint, 3 bytes, 4 fixed64,
        // 5 fixed32.
        let with_unknown = [
            0x10, 0x96, 0x01, 0x1a, 0x02, b'h', b'i', 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2d, 1, 2, 3,
            4, 0x08, 0x01,
        ];
        assert_eq!(health_check_status(&with_unknown), Some(SERVING));
        assert_eq!(health_check_status(&[0x08]), None, "value missing");
        assert_eq!(health_check_status(&[0x08, 0x81]), None, "varint cut");
        assert_eq!(health_check_status(&[0x1a, 0x05, b'h']), None, "bytes cut");
        assert_eq!(
            health_check_status(&[0x0a, 0x01, 0x01]),
            None,
            "status as bytes"
        );
        assert_eq!(health_check_status(&[0x0b]), None, "group wire type");
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut bytes = &out[..];
            assert_eq!(take_varint(&mut bytes), Some(value));
            assert!(bytes.is_empty());
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
