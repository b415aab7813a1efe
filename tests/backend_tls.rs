//! TLS from the proxy to a pool's workers (`[pools.NAME.tls]`): real rustls workers on
//! 127.0.0.1:0 with certificates made here (rcgen), verification, SNI, mTLS, pooling, health
//! checks over TLS, TCP listeners, and the config's diagnostics for bad files.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Backend, TestDb, WAIT, client, eventually_within, get, status, worker_status};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use load_balancer::config::{AlgorithmKind, Config, Protocol};
use load_balancer::ring::{Address, Worker};
use load_balancer::upstream::Connector;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// Certificate files written for one test: a CA with a server and a client certificate,
/// and a server certificate from another CA (same names), to be refused.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb_backend_tls_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let ca = pki.ca("ca", "test CA");
        let other = pki.ca("other-ca", "another CA");
        pki.leaf("server", &ca, &["localhost", "127.0.0.1"]);
        pki.leaf("client", &ca, &["load-balancer"]);
        pki.leaf("other", &other, &["localhost", "127.0.0.1"]);
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn ca(&self, name: &str, common_name: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Issuer::new(params, key)
    }

    fn leaf(&self, name: &str, issuer: &Issuer<'static, KeyPair>, names: &[&str]) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS worker answering every request with its name, counting what it saw.
struct TlsBackend {
    addr: SocketAddr,
    /// Completed TLS handshakes (= connections that got past TLS).
    handshakes: Arc<AtomicUsize>,
    /// The SNI of each completed handshake.
    sni: Arc<Mutex<Vec<Option<String>>>>,
    /// Handshakes in which the client presented a certificate.
    client_certs: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    /// Serves `cert`/`key` (file stems in `pki`); with `client_ca`, a client certificate
    /// signed by it is required.
    async fn start(name: &str, pki: &Pki, cert: &str, client_ca: Option<&str>) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.path(&format!("{cert}.pem")))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{cert}.key"))).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(pki.path(&format!("{ca}.pem"))).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let sni = Arc::new(Mutex::new(Vec::new()));
        let client_certs = Arc::new(AtomicUsize::new(0));
        let (h, s, c, name) = (
            handshakes.clone(),
            sni.clone(),
            client_certs.clone(),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, h, s, c, name) = (
                    acceptor.clone(),
                    h.clone(),
                    s.clone(),
                    c.clone(),
                    name.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    s.lock()
                        .unwrap()
                        .push(session.server_name().map(str::to_string));
                    if session.peer_certificates().is_some() {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |_: Request<hyper::body::Incoming>| {
                        let body = Bytes::from(name.clone());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend {
            addr,
            handshakes,
            sni,
            client_certs,
            task,
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `[pools.default]` settings of `pool_toml` (which names its own tables), parsed as
/// the config file would be.
// A diagnostic carries the file's text: large, as in the config module itself.
#[allow(clippy::result_large_err)]
fn pools(pool_toml: &str) -> Result<Config, load_balancer::config::ConfigError> {
    let text = format!(
        "[database]\nurl = \"postgres://x@127.0.0.1/x\"\n\n[[listeners]]\nbind = \"127.0.0.1:9\"\n\n{pool_toml}"
    );
    Config::parse("config.toml", &text, None)
}

/// A proxy on 127.0.0.1:0 for pool "default", with `pool_toml`'s pool settings.
async fn start(db: &TestDb, protocol: Protocol, pool_toml: &str) -> load_balancer::Running {
    let mut config = common::config(db, protocol, AlgorithmKind::RoundRobin);
    config.pools = pools(pool_toml).expect("valid pool settings").pools;
    load_balancer::start(&config).await.expect("proxy starts")
}

/// `[pools.default.tls]` trusting the test CA, with `more` lines.
fn tls_pool(pki: &Pki, more: &str) -> String {
    format!(
        "[pools.default.tls]\nca = \"{}\"\n{more}",
        pki.path("ca.pem")
    )
}

/// `lb_upstream_errors_total{kind="connect"}` of the worker at `address`.
async fn connect_errors(running: &load_balancer::Running, address: &str) -> f64 {
    upstream_errors(running, address, "kind=\"connect\"").await
}

/// `lb_upstream_errors_total` of the worker at `address`, summed over the series whose
/// line also contains `kind` (`""`: every kind).
async fn upstream_errors(running: &load_balancer::Running, address: &str, kind: &str) -> f64 {
    let (code, text) = get(&client(), running.admin.unwrap(), "/metrics").await;
    assert_eq!(code, 200);
    text.lines()
        .filter(|l| l.starts_with("lb_upstream_errors_total{"))
        .filter(|l| l.contains(&format!("worker=\"{address}\"")) && l.contains(kind))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn http_to_a_tls_worker_reuses_its_pooled_connection() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let a = TlsBackend::start("a", &pki, "server", None).await;
    let lb = start(&db, Protocol::Http, &tls_pool(&pki, "")).await;
    common::add_addresses(&db, &lb, &[a.addr]).await;

    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, lb.listeners[0], "/").await, (200, "a".to_string()));
    }
    assert_eq!(
        a.handshakes.load(Ordering::SeqCst),
        1,
        "one TLS connection, reused"
    );
    // An IP address host: no SNI (TLS has none for addresses), verified against the IP.
    assert_eq!(*a.sni.lock().unwrap(), vec![None]);
    assert_eq!(a.client_certs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn server_name_is_sent_as_sni() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let a = TlsBackend::start("a", &pki, "server", None).await;
    let lb = start(
        &db,
        Protocol::Http,
        &tls_pool(&pki, "server_name = \"localhost\"\n"),
    )
    .await;
    common::add_addresses(&db, &lb, &[a.addr]).await;
    assert_eq!(
        get(&client(), lb.listeners[0], "/").await,
        (200, "a".to_string())
    );
    assert_eq!(*a.sni.lock().unwrap(), vec![Some("localhost".to_string())]);

    // Without `server_name`: a worker written with a host name sends it, and is verified
    // against it.
    let db = TestDb::new().await;
    let lb = start(&db, Protocol::Http, &tls_pool(&pki, "")).await;
    common::change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address) VALUES ('localhost:{}')",
            a.addr.port()
        ),
    )
    .await;
    assert_eq!(
        get(&client(), lb.listeners[0], "/").await,
        (200, "a".to_string())
    );
    assert_eq!(a.sni.lock().unwrap()[1], Some("localhost".to_string()));
}

#[tokio::test]
async fn verify_false_accepts_a_certificate_of_any_issuer() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let other = TlsBackend::start("other", &pki, "other", None).await;
    let lb = start(&db, Protocol::Http, "[pools.default.tls]\nverify = false\n").await;
    common::add_addresses(&db, &lb, &[other.addr]).await;
    assert_eq!(
        get(&client(), lb.listeners[0], "/").await,
        (200, "other".to_string())
    );
    assert_eq!(other.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn mtls_works_with_client_cert_and_fails_without() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let a = TlsBackend::start("a", &pki, "server", Some("ca")).await;
    let address = a.addr.to_string();
    let with = tls_pool(
        &pki,
        &format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    );
    let lb = start(&db, Protocol::Http, &with).await;
    common::change(
        &db,
        &lb,
        &format!("INSERT INTO workers(worker_address) VALUES ('{address}')"),
    )
    .await;
    assert_eq!(
        get(&client(), lb.listeners[0], "/").await,
        (200, "a".to_string())
    );
    assert_eq!(a.client_certs.load(Ordering::SeqCst), 1);

    // The same worker from a proxy without a client certificate: the worker refuses it
    // (under TLS 1.3 its alert comes with the first response), the client gets 502 and the
    // failure is counted against the worker.
    let without = start(&db, Protocol::Http, &tls_pool(&pki, "")).await;
    let c = client();
    eventually_within("the second proxy sees the worker", WAIT, async || {
        !without.ring.load().pools.is_empty() && without.ring.load().pools[0].workers.len() == 1
    })
    .await;
    assert_eq!(get(&c, without.listeners[0], "/").await.0, 502);
    assert!(upstream_errors(&without, &address, "").await >= 1.0);
    assert_eq!(a.client_certs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_certificate_is_a_connect_error_retried_on_another_worker() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let good = TlsBackend::start("good", &pki, "server", None).await;
    let bad = TlsBackend::start("bad", &pki, "other", None).await;
    let lb = start(&db, Protocol::Http, &tls_pool(&pki, "")).await;
    common::change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address) VALUES ('{}'), ('{}')",
            good.addr, bad.addr
        ),
    )
    .await;
    // Round robin over both: every request that picked the bad one went on to the good one.
    let c = client();
    for _ in 0..4 {
        assert_eq!(
            get(&c, lb.listeners[0], "/").await,
            (200, "good".to_string())
        );
    }
    assert_eq!(bad.handshakes.load(Ordering::SeqCst), 0);
    assert!(connect_errors(&lb, &bad.addr.to_string()).await >= 1.0);

    // What the log line says: the verification, not a network fault.
    let config = pools(&tls_pool(&pki, "")).unwrap();
    let connector = Connector::new(&config.pool("default"));
    let worker = Worker {
        state: Default::default(),
        id: 1,
        version: 1,
        weight: 1,
        pool: "default".into(),
        address: Address::new(&bad.addr.to_string()),
        pool_load: Default::default(),
    };
    let error = connector
        .open(&worker, "127.0.0.1:1".parse().unwrap())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        error.to_string(),
        format!(
            "TLS to {}: certificate verification failed: UnknownIssuer",
            bad.addr
        )
    );
}

#[tokio::test]
async fn health_checks_over_tls_mark_a_cleartext_worker_unhealthy() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let tls = TlsBackend::start("tls", &pki, "server", None).await;
    let plain = Backend::start("plain").await;
    let checks = "[pools.default.health_check]\ntype = \"http\"\npath = \"/\"\n\
                  interval = \"50ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let lb = start(
        &db,
        Protocol::Http,
        &format!("{checks}{}", tls_pool(&pki, "")),
    )
    .await;
    common::change(
        &db,
        &lb,
        &format!(
            "INSERT INTO workers(worker_address) VALUES ('{}'), ('{}')",
            tls.addr, plain.addr
        ),
    )
    .await;
    let plain_address = plain.addr.to_string();
    eventually_within("the cleartext worker fails its checks", WAIT, async || {
        worker_status(&status(&lb).await, &plain_address)["healthy"] == false
    })
    .await;
    let s = status(&lb).await;
    assert_eq!(
        worker_status(&s, &tls.addr.to_string())["healthy"],
        true,
        "{s}"
    );
    assert!(tls.handshakes.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_tcp_listener_originates_tls_to_a_tls_pool() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let a = TlsBackend::start("a", &pki, "server", None).await;
    let lb = start(&db, Protocol::Tcp, &tls_pool(&pki, "")).await;
    common::add_addresses(&db, &lb, &[a.addr]).await;
    let reply = common::raw(
        lb.listeners[0],
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\na"), "{reply}");
    assert_eq!(a.handshakes.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_files_are_refused_naming_key_and_file() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let e = pools(&format!("[pools.default.tls]\nca = \"{missing}\"\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "`pools.default.tls.ca`: {missing:?} cannot be read: No such file or directory (os error 2)"
        )
    );

    let (cert, key) = (pki.path("client.pem"), pki.path("server.key"));
    let e = pools(&tls_pool(
        &pki,
        &format!("client_cert = \"{cert}\"\nclient_key = \"{key}\"\n"),
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "`pools.default.tls.client_key` {key:?} is not the private key of \
             `pools.default.tls.client_cert` {cert:?}"
        )
    );

    let e = pools(&tls_pool(&pki, &format!("client_cert = \"{cert}\"\n"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`pools.default.tls.client_cert` needs `pools.default.tls.client_key`"
    );

    // A key file for a CA: no certificate in it.
    let e = pools(&format!(
        "[pools.default.tls]\nca = \"{}\"\n",
        pki.path("server.key")
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "`pools.default.tls.ca`: {:?} holds no PEM certificate",
            pki.path("server.key")
        )
    );

    // Switched off: its files are not read.
    let c = pools(&format!(
        "[pools.default.tls]\nenabled = false\nca = \"{missing}\"\n"
    ))
    .unwrap();
    assert_eq!(c.pool("default").tls, None);
}
