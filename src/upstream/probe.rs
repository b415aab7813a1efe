//! The health checks' probe of a worker: a TCP connect, or an HTTP request answered with the
//! expected status.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;

use tokio::io::AsyncWriteExt;

use super::{dial, proxy_header};
use crate::balance::health::Probe;
use crate::config::{HealthCheckConfig, HealthCheckKind, SendProxy};
use crate::ring::Worker;

/// Probes workers over the network.
pub struct NetworkProbe {
    /// The pool's `send_proxy`: checks start with a `LOCAL` header when it is on.
    pub send_proxy: SendProxy,
}

impl Probe for NetworkProbe {
    fn probe(
        &self,
        worker: Arc<Worker>,
        check: Arc<HealthCheckConfig>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let send_proxy = self.send_proxy;
        Box::pin(async move { probe(&worker, &check, send_proxy).await })
    }
}

async fn probe(worker: &Worker, check: &HealthCheckConfig, send_proxy: SendProxy) -> bool {
    let Ok(mut stream) = dial(&worker.address, check.timeout).await else {
        return false;
    };
    if let Some(header) = proxy_header::local_header(send_proxy)
        && stream.write_all(&header).await.is_err()
    {
        return false;
    }
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
