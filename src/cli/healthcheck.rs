//! `load_balancer healthcheck`: asks a running proxy whether it is ready (`GET /readyz` on
//! its admin endpoint) and turns the answer into an exit status, so a container healthcheck
//! needs no curl in the image. What to ask comes from `[admin]` (bind and token) or from
//! `--url`; every failure is one line saying why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// The whole exchange (connect, request, answer) must fit in this: an orchestrator runs
/// the check on its own timer, and a hung proxy is not a ready one.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// An answer's body longer than this is cut in the message: one line is what is wanted.
const MAX_REASON: usize = 200;

/// Why the proxy is not ready, or could not be asked. Each is one line.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum HealthcheckError {
    #[error(
        "healthcheck needs [admin] in {config}: the proxy answers /readyz only on its admin endpoint (or pass --url)"
    )]
    #[diagnostic(code(healthcheck::no_admin))]
    NoAdmin { config: String },
    #[error("--url {url:?}: {reason}")]
    #[diagnostic(code(healthcheck::url))]
    Url { url: String, reason: String },
    #[error(
        "nothing accepts connections at {authority} (connection refused): is the proxy running?"
    )]
    #[diagnostic(code(healthcheck::refused))]
    Refused { authority: String },
    #[error("cannot connect to {authority}: {reason}")]
    #[diagnostic(code(healthcheck::connect))]
    Connect { authority: String, reason: String },
    #[error("no answer from {url} within {TIMEOUT:?}")]
    #[diagnostic(code(healthcheck::timeout))]
    Timeout { url: String },
    #[error("{url} answered 401: {reason}")]
    #[diagnostic(code(healthcheck::unauthorized))]
    Unauthorized { url: String, reason: &'static str },
    #[error("{url} answered {status}: {reason}")]
    #[diagnostic(code(healthcheck::not_ready))]
    NotReady {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("{url}: {reason}")]
    #[diagnostic(code(healthcheck::http))]
    Http { url: String, reason: String },
}

/// One readiness question: where to send it and with which token.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `host:port` to connect to, also sent as `Host`.
    authority: String,
    /// Path (and query) of the request.
    path: String,
    /// The whole URL, for messages.
    url: String,
    token: Option<String>,
}

impl Probe {
    /// The probe for `--url` if given, else for `config`'s `[admin]`. `token` (from
    /// `LB_ADMIN_TOKEN`) wins over `[admin] token`; `config_name` names the file in the
    /// message when it has no `[admin]`.
    pub fn new(
        url: Option<&str>,
        config: Option<&Config>,
        token: Option<String>,
        config_name: &str,
    ) -> Result<Probe, HealthcheckError> {
        let admin = config.and_then(|c| c.admin.as_ref());
        let token = token.or_else(|| admin.and_then(|a| a.token.clone()));
        match url {
            Some(url) => Probe::for_url(url, token),
            None => match admin {
                Some(a) => Ok(Probe::for_bind(a.bind, token)),
                None => Err(HealthcheckError::NoAdmin {
                    config: config_name.to_string(),
                }),
            },
        }
    }

    /// `GET /readyz` on the admin endpoint bound to `bind`. An unspecified address (listening
    /// on every interface) is reached through the loopback of its family.
    pub fn for_bind(bind: SocketAddr, token: Option<String>) -> Probe {
        let ip = match bind.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let authority = SocketAddr::new(ip, bind.port()).to_string();
        Probe {
            url: format!("http://{authority}/readyz"),
            authority,
            path: "/readyz".to_string(),
            token,
        }
    }

    /// A plain `http://host[:port][/path]` URL; without a path, `/readyz`.
    pub fn for_url(url: &str, token: Option<String>) -> Result<Probe, HealthcheckError> {
        let bad = |reason: &str| HealthcheckError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            bad(&format!(
                "not a URL ({e}); e.g. http://127.0.0.1:9901/readyz"
            ))
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported: the admin endpoint speaks plain HTTP",
                ));
            }
            _ => {
                return Err(bad(
                    "needs http://host:port, e.g. http://127.0.0.1:9901/readyz",
                ));
            }
        }
        let Some(host) = uri.host() else {
            return Err(bad("names no host"));
        };
        let port = uri.port_u16().unwrap_or(80);
        // `host()` keeps an IPv6 address's brackets, which is how it must be written here.
        let authority = format!("{host}:{port}");
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/readyz");
        // hyper writes a bare `http://host:port` as path "/": that means the default too.
        let path = if path == "/" && !url.trim_end().ends_with('/') {
            "/readyz"
        } else {
            path
        };
        Ok(Probe {
            url: format!("http://{authority}{path}"),
            authority,
            path: path.to_string(),
            token,
        })
    }

    /// Where the probe goes, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks; `Ok` (what to print) on a 200, the reason otherwise, all within [`TIMEOUT`].
    pub async fn run(&self) -> Result<String, HealthcheckError> {
        match tokio::time::timeout(TIMEOUT, self.ask()).await {
            Ok(answer) => answer,
            Err(_) => Err(HealthcheckError::Timeout {
                url: self.url.clone(),
            }),
        }
    }

    async fn ask(&self) -> Result<String, HealthcheckError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => HealthcheckError::Refused {
                    authority: self.authority.clone(),
                },
                _ => HealthcheckError::Connect {
                    authority: self.authority.clone(),
                    reason: e.to_string(),
                },
            })?;
        let http = |e: hyper::Error| HealthcheckError::Http {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(http)?;
        tokio::spawn(connection);
        let mut request = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::USER_AGENT, "load_balancer-healthcheck");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| HealthcheckError::Http {
                url: self.url.clone(),
                reason: format!("cannot build the request: {e}"),
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(http)?;
        let text = one_line(&String::from_utf8_lossy(&body.to_bytes()));
        match status {
            StatusCode::OK => Ok(format!("ready: {} answered 200", self.url)),
            StatusCode::UNAUTHORIZED => Err(HealthcheckError::Unauthorized {
                url: self.url.clone(),
                reason: if self.token.is_some() {
                    "the token was refused; check LB_ADMIN_TOKEN or [admin] token"
                } else {
                    "a token is required; set LB_ADMIN_TOKEN (or [admin] token)"
                },
            }),
            _ => Err(HealthcheckError::NotReady {
                url: self.url.clone(),
                status: status.as_u16(),
                reason: if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no reason given")
                        .to_string()
                } else {
                    text
                },
            }),
        }
    }
}

/// A body as one line of at most [`MAX_REASON`] characters.
fn one_line(body: &str) -> String {
    let joined = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(MAX_REASON) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_binds_are_reached_on_loopback() {
        let v4 = Probe::for_bind("0.0.0.0:9901".parse().unwrap(), None);
        assert_eq!(v4.url(), "http://127.0.0.1:9901/readyz");
        let v6 = Probe::for_bind("[::]:9901".parse().unwrap(), None);
        assert_eq!(v6.url(), "http://[::1]:9901/readyz");
        let given = Probe::for_bind("10.0.0.7:9901".parse().unwrap(), None);
        assert_eq!(given.url(), "http://10.0.0.7:9901/readyz");
    }

    #[test]
    fn urls_default_to_readyz_and_port_80() {
        let p = Probe::for_url("http://127.0.0.1:9901", None).unwrap();
        assert_eq!(
            (p.url(), p.path.as_str()),
            ("http://127.0.0.1:9901/readyz", "/readyz")
        );
        let p = Probe::for_url("http://localhost/livez", None).unwrap();
        assert_eq!(p.url(), "http://localhost:80/livez");
        let p = Probe::for_url("http://[::1]:9901/readyz", None).unwrap();
        assert_eq!(p.authority, "[::1]:9901");
        let e = Probe::for_url("https://127.0.0.1:9901/readyz", None).unwrap_err();
        assert!(e.to_string().contains("https is not supported"), "{e}");
        let e = Probe::for_url("127.0.0.1:9901", None).unwrap_err();
        assert!(e.to_string().contains("needs http://"), "{e}");
    }

    #[test]
    fn bodies_become_one_short_line() {
        assert_eq!(
            one_line("not ready: shutting down\n"),
            "not ready: shutting down"
        );
        assert_eq!(one_line(&"x".repeat(500)).chars().count(), MAX_REASON + 1);
    }
}
