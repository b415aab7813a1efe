//! The health checks' probe of a worker: a TCP connect, or an HTTP request answered with the
//! expected status; over TLS when the pool's workers speak it (the same settings as its
//! traffic, so a worker whose certificate would be refused is not marked healthy).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;

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
    let HealthCheckKind::Http {
        method,
        path,
        expect_status,
    } = &check.kind
    else {
        return true;
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
