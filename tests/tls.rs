//! TLS termination on listeners, end to end: certificates made per test with `openssl` (a
//! test CA signing RSA and ECDSA leaves), the real proxy, a rustls client (and `curl`,
//! `openssl s_client`), backends from `common`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, TestDb, WAIT, add};
use load_balancer::config::{
    AcceptAnyCertificate, AlgorithmKind, CertificateFiles, Config, Protocol, TlsConfig, TlsVersion,
};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------
// Certificates

/// A directory of test certificates, signed by its own CA; removed when dropped.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
}

#[derive(Clone, Copy)]
enum Kind {
    Rsa,
    Ecdsa,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&ca_key),
            "-out",
            s(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=lb test CA",
        ]);
        Pki { dir, ca }
    }

    /// A leaf for `names` (DNS subjectAltNames) signed by the CA, written to `stem.pem` and
    /// `stem.key`.
    fn leaf(&self, stem: &str, kind: Kind, names: &[&str]) -> CertificateFiles {
        let files = CertificateFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        self.sign(&files, kind, names);
        files
    }

    /// Writes a new certificate and key into `files` (the files are replaced by rename, as
    /// certbot and most deploy tools do).
    fn sign(&self, files: &CertificateFiles, kind: Kind, names: &[&str]) {
        let n = self.dir.join(format!("tmp-{}", common::rand_suffix()));
        let (key, csr, cert, ext) = (
            n.with_extension("key"),
            n.with_extension("csr"),
            n.with_extension("pem"),
            n.with_extension("ext"),
        );
        let newkey = match kind {
            Kind::Rsa => vec!["-newkey", "rsa:2048"],
            Kind::Ecdsa => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        };
        let mut args = vec!["req", "-new", "-nodes"];
        args.extend(newkey);
        args.extend(["-keyout", s(&key), "-out", s(&csr), "-subj"]);
        let subject = format!("/CN={}", names[0]);
        args.push(&subject);
        openssl(&args);
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.ca),
            "-CAkey",
            s(&self.dir.join("ca.key")),
            "-CAcreateserial",
            "-out",
            s(&cert),
            "-days",
            "1",
            "-extfile",
            s(&ext),
        ]);
        std::fs::rename(&cert, &files.cert).unwrap();
        std::fs::rename(&key, &files.key).unwrap();
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The leaf certificate of a PEM file, as a client sees it served.
fn leaf_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

// ---------------------------------------------------------------------------------------
// The proxy

fn tls_config(certificates: Vec<CertificateFiles>, protocol: Protocol) -> TlsConfig {
    TlsConfig {
        certificates,
        min_version: TlsVersion::Tls12,
        alpn: match protocol {
            Protocol::Http => vec!["h2".into(), "http/1.1".into()],
            Protocol::Tcp => Vec::new(),
        },
        accept_proxy: None,
    }
}

/// A config whose one listener terminates TLS with `certificates`, and a handshake timeout
/// (`header_read_timeout`) of one second.
fn config(db: &TestDb, protocol: Protocol, certificates: Vec<CertificateFiles>) -> Config {
    let mut config = common::config(db, protocol, AlgorithmKind::RoundRobin);
    config.listeners[0].tls = Some(tls_config(certificates, protocol));
    config.listeners[0].header_read_timeout = Duration::from_secs(1);
    config
}

struct Proxy {
    running: load_balancer::Running,
    addr: SocketAddr,
    _backend: Backend,
    _db: TestDb,
}

async fn start(protocol: Protocol, certificates: Vec<CertificateFiles>) -> Proxy {
    start_with(protocol, certificates, |_| {}).await
}

/// [`start`] with the config changed by `edit` first.
async fn start_with(
    protocol: Protocol,
    certificates: Vec<CertificateFiles>,
    edit: impl FnOnce(&mut Config),
) -> Proxy {
    let db = TestDb::new().await;
    let mut config = config(&db, protocol, certificates);
    edit(&mut config);
    let running = load_balancer::start(&config).await.expect("proxy starts");
    let backend = Backend::start("b1").await;
    add(&db, &running, &[&backend]).await;
    Proxy {
        addr: running.listeners[0],
        running,
        _backend: backend,
        _db: db,
    }
}

// ---------------------------------------------------------------------------------------
// Clients

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client that verifies the proxy against the test CA.
fn verifying(pki: &Pki, alpn: &[&str]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf_der(&pki.ca)).unwrap();
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    TlsConnector::from(Arc::new(c))
}

/// A client that accepts any certificate (it still checks the handshake's signatures), to
/// see which one is served for a name none covers; `sni`: whether it sends SNI at all.
fn probing(sni: bool) -> TlsConnector {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        .with_no_client_auth();
    c.enable_sni = sni;
    TlsConnector::from(Arc::new(c))
}

async fn connect(
    connector: &TlsConnector,
    proxy: SocketAddr,
    name: &str,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(proxy).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
}

/// The leaf certificate the proxy serves to a handshake naming `name`.
async fn served(
    connector: &TlsConnector,
    proxy: SocketAddr,
    name: &str,
) -> CertificateDer<'static> {
    let tls = connect(connector, proxy, name).await.expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP/1.1 GET over `tls` (the connection closes after it): status and body.
async fn get(mut tls: TlsStream<TcpStream>, host: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut response))
        .await
        .expect("response timed out")
        .expect("response read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// One request on a new verified connection: what a well-behaved client gets meanwhile.
async fn good_request(pki: &Pki, proxy: SocketAddr) {
    let tls = connect(&verifying(pki, &["http/1.1"]), proxy, "a.test")
        .await
        .expect("a good client's handshake");
    assert_eq!(get(tls, "a.test", "/").await, (200, "b1".to_string()));
}

// ---------------------------------------------------------------------------------------
// Certificates by SNI, ALPN, forwarding

#[tokio::test]
async fn sni_picks_rsa_and_ecdsa_certificates_and_unknown_names_get_the_first() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let b = pki.leaf("b", Kind::Ecdsa, &["b.test", "*.wild.test"]);
    let p = start(Protocol::Http, vec![a.clone(), b.clone()]).await;
    let verified = verifying(&pki, &[]);

    assert_eq!(served(&verified, p.addr, "a.test").await, leaf_der(&a.cert));
    assert_eq!(served(&verified, p.addr, "b.test").await, leaf_der(&b.cert));
    assert_eq!(
        served(&verified, p.addr, "x.wild.test").await,
        leaf_der(&b.cert)
    );
    // A wildcard covers one label only.
    assert_eq!(
        served(&probing(true), p.addr, "y.x.wild.test").await,
        leaf_der(&a.cert)
    );
    assert_eq!(
        served(&probing(true), p.addr, "unknown.test").await,
        leaf_der(&a.cert)
    );
    assert_eq!(
        served(&probing(false), p.addr, "unknown.test").await,
        leaf_der(&a.cert)
    );

    let tls = connect(&verified, p.addr, "b.test").await.unwrap();
    assert_eq!(get(tls, "b.test", "/").await, (200, "b1".to_string()));
    let ecdsa = connect(&verified, p.addr, "b.test").await.unwrap();
    assert_eq!(
        ecdsa
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .version(),
        &rustls::version::TLS13
    );
}

#[tokio::test]
async fn alpn_h2_goes_to_http2_and_http11_to_http1_and_workers_are_told_https() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Ecdsa, &["a.test"]);
    let p = start(Protocol::Http, vec![a]).await;

    let tls = connect(&verifying(&pki, &["h2", "http/1.1"]), p.addr, "a.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(tls).await.expect("h2 over TLS");
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = hyper::Request::get("https://a.test/headers")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let common::H2End::Complete(headers) = common::h2_body(&mut body).await else {
        panic!("h2 body broken");
    };
    let headers = String::from_utf8(headers).unwrap();
    assert!(headers.contains("x-forwarded-proto: https\n"), "{headers}");
    assert!(headers.contains("proto=https"), "{headers}");

    let tls = connect(&verifying(&pki, &["http/1.1"]), p.addr, "a.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, headers) = get(tls, "a.test", "/headers").await;
    assert_eq!(status, 200);
    assert!(headers.contains("x-forwarded-proto: https\n"), "{headers}");
    assert!(
        headers.contains("forwarded: for=127.0.0.1;proto=https;host=\"a.test\"\n"),
        "{headers}"
    );

    // No ALPN at all: HTTP/1.
    let tls = connect(&verifying(&pki, &[]), p.addr, "a.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(get(tls, "a.test", "/").await, (200, "b1".to_string()));
}

#[tokio::test]
async fn a_tls_tcp_listener_terminates_and_relays_bytes() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let p = start(Protocol::Tcp, vec![a]).await;
    let tls = connect(&verifying(&pki, &[]), p.addr, "a.test")
        .await
        .unwrap();
    // The worker speaks HTTP; the TCP listener relays the decrypted bytes as they are.
    let (status, headers) = get(tls, "a.test", "/headers").await;
    assert_eq!(status, 200);
    assert!(!headers.contains("x-forwarded-proto"), "{headers}");
}

// ---------------------------------------------------------------------------------------
// Certificate reload

/// Clients making a new TLS connection per request until `stop`: (ok, failed).
fn handshake_load(
    pki: &Pki,
    proxy: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..4)
        .map(|_| {
            let (stop, connector) = (stop.clone(), verifying(pki, &["http/1.1"]));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let status = match connect(&connector, proxy, "a.test").await {
                        Ok(tls) => get(tls, "a.test", "/").await.0,
                        Err(_) => 0,
                    };
                    match status {
                        200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test]
async fn certificate_swap_under_load_fails_no_request() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let old = leaf_der(&a.cert);
    // Idle keep-alive connections live long enough for the one opened before the swap.
    let p = start_with(Protocol::Http, vec![a.clone()], |c| {
        c.listeners[0].header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let verified = verifying(&pki, &[]);

    // A connection opened before the swap, used after it.
    let mut before = connect(&verified, p.addr, "a.test").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = handshake_load(&pki, p.addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Renewed, and with another key type: the cert file is replaced first, the key a moment
    // later, as a deploy tool copying two files does (in between the pair does not match).
    pki.sign(&a, Kind::Ecdsa, &["a.test"]);
    let new = leaf_der(&a.cert);
    assert_ne!(old, new);
    let deadline = Instant::now() + WAIT;
    while served(&verified, p.addr, "a.test").await != new {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = common::finish(&stop, clients).await;
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 0);

    // The connection made before still works, with the certificate it was made with.
    assert_eq!(before.get_ref().1.peer_certificates().unwrap()[0], old);
    before
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    before.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}

#[tokio::test]
async fn sighup_rereads_certificates_at_once() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Ecdsa, &["a.test"]);
    let p = start(Protocol::Http, vec![a.clone()]).await;
    pki.sign(&a, Kind::Ecdsa, &["a.test"]);
    p.running.on_sighup();
    assert_eq!(
        served(&verifying(&pki, &[]), p.addr, "a.test").await,
        leaf_der(&a.cert)
    );
}

/// The log lines written while `f` runs (on this thread), as text.
fn logs_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_old_certificate_and_is_logged() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let old = leaf_der(&a.cert);
    let p = start(Protocol::Http, vec![a.clone()]).await;
    let verified = verifying(&pki, &[]);

    std::fs::write(&a.cert, "not a certificate\n").unwrap();
    // The watcher's next checks find it broken ...
    tokio::time::sleep(load_balancer::tls::WATCH_INTERVAL * 2).await;
    assert_eq!(served(&verified, p.addr, "a.test").await, old);
    good_request(&pki, p.addr).await;

    // ... and say which file (the same check, on this thread, to read what it logs).
    let certificates = load_balancer::tls::Certificates::load(
        std::slice::from_ref(&other_files(&pki)),
        provider(),
    )
    .unwrap();
    std::fs::write(
        &other_files(&pki).key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n",
    )
    .unwrap();
    let logged = logs_of(|| assert_eq!(certificates.refresh(false), 0));
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(logged.contains(s(&other_files(&pki).key)), "{logged}");
    assert!(
        logged.contains("the previous one is still served"),
        "{logged}"
    );
    assert_eq!(
        certificates.pick(Some("o.test")).cert[0],
        leaf_der(&other_files(&pki).cert)
    );

    // SIGHUP with the file still broken: the same.
    p.running.on_sighup();
    assert_eq!(served(&verified, p.addr, "a.test").await, old);
    // Repaired: served.
    pki.sign(&a, Kind::Rsa, &["a.test"]);
    p.running.on_sighup();
    assert_eq!(served(&verified, p.addr, "a.test").await, leaf_der(&a.cert));
}

/// A second pair in the same directory (made on first use).
fn other_files(pki: &Pki) -> CertificateFiles {
    let files = CertificateFiles {
        cert: pki.dir.join("o.pem"),
        key: pki.dir.join("o.key"),
    };
    if !files.cert.exists() {
        pki.sign(&files, Kind::Ecdsa, &["o.test"]);
    }
    files
}

#[tokio::test]
async fn a_reload_whose_certificates_do_not_load_changes_nothing() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Ecdsa, &["a.test"]);
    let mut p = start(Protocol::Http, vec![a.clone()]).await;
    let mut next = config(&p._db, Protocol::Http, vec![a.clone(), other_files(&pki)]);
    next.listeners[0].bind = p.addr;
    std::fs::write(&other_files(&pki).cert, "").unwrap();
    let e = p.running.reload(next.clone(), WAIT).await.unwrap_err();
    assert!(
        e.to_string().contains("o.pem holds no PEM certificate"),
        "{e}"
    );
    assert_eq!(
        served(&probing(true), p.addr, "o.test").await,
        leaf_der(&a.cert)
    );
    good_request(&pki, p.addr).await;

    // Fixed: the reload applies, and the new certificate is served by name.
    std::fs::remove_file(&other_files(&pki).cert).unwrap();
    let o = other_files(&pki);
    p.running.reload(next, WAIT).await.unwrap();
    assert_eq!(
        served(&verifying(&pki, &[]), p.addr, "o.test").await,
        leaf_der(&o.cert)
    );
}

/// How a new connection from `connector` (which keeps its sessions) was set up, after a
/// request on it (TLS 1.3 tickets arrive after the handshake).
async fn handshake_kind(connector: &TlsConnector, proxy: SocketAddr) -> rustls::HandshakeKind {
    let tls = connect(connector, proxy, "a.test").await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    assert_eq!(get(tls, "a.test", "/").await.0, 200);
    kind
}

#[tokio::test]
async fn sessions_resume_across_a_reload_that_keeps_the_tls_table() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Ecdsa, &["a.test"]);
    let mut p = start(Protocol::Http, vec![a.clone()]).await;
    let client = verifying(&pki, &["http/1.1"]);
    assert_eq!(
        handshake_kind(&client, p.addr).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        handshake_kind(&client, p.addr).await,
        rustls::HandshakeKind::Resumed
    );

    // Same table (another setting changed): the listener's TLS state, tickets included, stays.
    let mut next = config(&p._db, Protocol::Http, vec![a.clone()]);
    next.listeners[0].bind = p.addr;
    next.listeners[0].algorithm = AlgorithmKind::Random;
    p.running.reload(next.clone(), WAIT).await.unwrap();
    assert_eq!(
        handshake_kind(&client, p.addr).await,
        rustls::HandshakeKind::Resumed
    );

    // A changed table: built afresh, so the old tickets no longer decrypt.
    next.listeners[0].tls.as_mut().unwrap().alpn = vec!["http/1.1".into()];
    p.running.reload(next, WAIT).await.unwrap();
    assert_eq!(
        handshake_kind(&client, p.addr).await,
        rustls::HandshakeKind::Full
    );
}

// ---------------------------------------------------------------------------------------
// Bad input: each closes its own connection, and nothing else

/// Reads until the proxy closes `s` (EOF or reset), discarding what it sends (an alert);
/// panics if it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the proxy did not close the connection");
}

/// The ClientHello a rustls client sends for `a.test`, as bytes on the wire.
fn client_hello() -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        .with_no_client_auth();
    let mut c =
        rustls::ClientConnection::new(Arc::new(config), "a.test".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// A ClientHello whose SNI host name is `len` bytes long.
fn client_hello_with_sni(len: usize) -> Vec<u8> {
    let name = vec![b'a'; len];
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes()); // server_name_list
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(&name);
    let mut extensions = Vec::new();
    extensions.extend_from_slice(&[0, 0]); // server_name
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);
    extensions.extend_from_slice(&[0, 0x2b, 0, 3, 2, 3, 4]); // supported_versions: TLS 1.3
    extensions.extend_from_slice(&[0, 0x0d, 0, 4, 0, 2, 4, 3]); // ecdsa_secp256r1_sha256
    extensions.extend_from_slice(&[0, 0x0a, 0, 4, 0, 2, 0, 0x1d]); // supported_groups: x25519
    extensions.extend_from_slice(&[0, 0x33, 0, 38, 0, 36, 0, 0x1d, 0, 32]); // key_share
    extensions.extend_from_slice(&[9; 32]); // any 32 bytes are an x25519 public key
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_closed() {
    let pki = Pki::new();
    let p = start(
        Protocol::Http,
        vec![pki.leaf("a", Kind::Ecdsa, &["a.test"])],
    )
    .await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        &[0xff; 64][..],
        // A handshake record header of the right type, then nonsense.
        &[0x16, 3, 1, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0][..],
    ] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        closed_within(&mut s, Duration::from_millis(500)).await;
        good_request(&pki, p.addr).await;
    }
}

#[tokio::test]
async fn a_truncated_handshake_is_closed() {
    let pki = Pki::new();
    let p = start(
        Protocol::Http,
        vec![pki.leaf("a", Kind::Ecdsa, &["a.test"])],
    )
    .await;
    let hello = client_hello();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    closed_within(&mut s, Duration::from_millis(500)).await;
    good_request(&pki, p.addr).await;
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_closed_after_header_read_timeout() {
    let pki = Pki::new();
    let p = start(
        Protocol::Http,
        vec![pki.leaf("a", Kind::Ecdsa, &["a.test"])],
    )
    .await;
    let hello = client_hello();
    // Half a ClientHello, and the connection held open; and one that says nothing at all.
    let mut half = TcpStream::connect(p.addr).await.unwrap();
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    let started = Instant::now();
    good_request(&pki, p.addr).await;
    closed_within(&mut half, Duration::from_secs(3)).await;
    closed_within(&mut silent, Duration::from_secs(3)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    good_request(&pki, p.addr).await;
}

#[tokio::test]
async fn a_10kb_sni_is_closed() {
    let pki = Pki::new();
    let p = start(
        Protocol::Http,
        vec![pki.leaf("a", Kind::Ecdsa, &["a.test"])],
    )
    .await;
    // The hand-made hello is sound: with a short name it gets a ServerHello.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&client_hello_with_sni(6)).await.unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], 0x16, "a handshake record (ServerHello) answers");

    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&client_hello_with_sni(10 * 1024))
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_millis(500)).await;
    good_request(&pki, p.addr).await;
}

#[tokio::test]
async fn a_tls_record_flood_is_closed() {
    let pki = Pki::new();
    let p = start(
        Protocol::Http,
        vec![pki.leaf("a", Kind::Ecdsa, &["a.test"])],
    )
    .await;
    let record = |kind: u8, first: &[u8]| {
        let mut r = vec![kind, 3, 3, 0x40, 0];
        r.extend_from_slice(first);
        r.resize(5 + 0x4000, 0x41);
        r
    };
    for flood in [
        // A ClientHello that says it is 16 MiB long, sent as full records.
        record(0x16, &[1, 0xff, 0xff, 0xff]),
        // Application data before any handshake.
        record(0x17, &[]),
        // Alerts and ChangeCipherSpec records, endlessly.
        record(0x15, &[1, 0]),
        record(0x14, &[1]),
    ] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let writer = tokio::spawn(async move {
            loop {
                if s.write_all(&flood).await.is_err() {
                    return;
                }
                counter.fetch_add(flood.len() as u64, Ordering::Relaxed);
            }
        });
        good_request(&pki, p.addr).await;
        tokio::time::timeout(Duration::from_secs(3), writer)
            .await
            .expect("the flood's connection was not closed")
            .unwrap();
        // Closed at once, not after reading megabytes.
        assert!(sent.load(Ordering::Relaxed) < 16 << 20);
        good_request(&pki, p.addr).await;
    }
}

// ---------------------------------------------------------------------------------------
// Real clients: curl and openssl s_client

/// Runs `name` with `args` (bounded by 20 s), `input` on its stdin: success and output.
fn tool(name: &str, args: &[&str], input: &[u8]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .arg("20")
        .arg(name)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e} (apt-get install -y openssl curl)"));
    let _ = child.stdin.take().unwrap().write_all(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_s_client_see_the_right_certificates_and_resume_sessions() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let b = pki.leaf("b", Kind::Ecdsa, &["b.test"]);
    let p = start(Protocol::Http, vec![a, b]).await;
    let port = p.addr.port().to_string();
    let ca = s(&pki.ca).to_string();
    let (addr, sessions) = (p.addr.to_string(), pki.dir.join("session"));

    let curl = |name: &'static str, version: &'static str| {
        let (port, ca) = (port.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            let resolve = format!("{name}:{port}:127.0.0.1");
            let url = format!("https://{name}:{port}/headers");
            tool(
                "curl",
                &[
                    "-sS",
                    version,
                    "--cacert",
                    &ca,
                    "--resolve",
                    &resolve,
                    "-w",
                    "\nversion=%{http_version}",
                    &url,
                ],
                b"",
            )
        })
    };
    let (ok, out) = curl("a.test", "--http1.1").await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("x-forwarded-proto: https"), "{out}");
    assert!(out.ends_with("version=1.1"), "{out}");
    let (ok, out) = curl("b.test", "--http2").await.unwrap();
    assert!(ok, "{out}");
    assert!(out.ends_with("version=2"), "{out}");

    let s_client = move |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            // A request, and reading on until the proxy closes: TLS 1.3 tickets come after
            // the handshake, and the response ends with the proxy's close_notify.
            let mut all = vec![
                "s_client".to_string(),
                "-connect".into(),
                addr,
                "-ign_eof".into(),
            ];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            tool(
                "openssl",
                &all,
                b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            )
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["-CAfile".to_string(), ca.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (_, out) = s_client(args(&["-servername", "b.test"])).await.unwrap();
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("CN = b.test"), "{out}");
    let (_, out) = s_client(args(&["-servername", "a.test", "-tls1_2"]))
        .await
        .unwrap();
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("CN = a.test"), "{out}");
    assert!(out.contains("TLSv1.2"), "{out}");

    // Resumption: TLS 1.3 by ticket, TLS 1.2 by session ID (tickets off).
    let sess = s(&sessions).to_string();
    for version in [&["-tls1_3"][..], &["-tls1_2", "-no_ticket"][..]] {
        let mut first = vec!["-servername", "a.test", "-sess_out", &sess];
        first.extend(version);
        let (_, out) = s_client(args(&first)).await.unwrap();
        assert!(out.contains("New, TLSv1"), "{out}");
        let mut again = vec!["-servername", "a.test", "-sess_in", &sess];
        again.extend(version);
        let (_, out) = s_client(args(&again)).await.unwrap();
        assert!(out.contains("Reused, TLSv1"), "{version:?}: {out}");
    }
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2() {
    let pki = Pki::new();
    let db = TestDb::new().await;
    let mut c = config(
        &db,
        Protocol::Http,
        vec![pki.leaf("a", Kind::Ecdsa, &["a.test"])],
    );
    c.listeners[0].tls.as_mut().unwrap().min_version = TlsVersion::Tls13;
    let running = load_balancer::start(&c).await.unwrap();
    let addr = running.listeners[0];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf_der(&pki.ca)).unwrap();
    let tls12 = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refused = connect(&TlsConnector::from(Arc::new(tls12)), addr, "a.test").await;
    assert!(refused.is_err());
    let tls13 = connect(&verifying(&pki, &[]), addr, "a.test")
        .await
        .unwrap();
    assert_eq!(
        tls13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

// ---------------------------------------------------------------------------------------
// Configuration errors

fn config_text(tls: &str) -> String {
    format!(
        "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/x\"\n\n[[listeners]]\nbind = \"127.0.0.1:8443\"\n[listeners.tls]\n{tls}\n"
    )
}

/// The rendered diagnostic of a refused config, and the line its label points at.
fn refused(text: &str) -> (String, String) {
    let e = Config::parse("config.toml", text, None).unwrap_err();
    let load_balancer::config::ConfigError::Invalid { span, .. } = &e else {
        panic!("not an Invalid diagnostic: {e:?}");
    };
    let line_start = text[..span.offset()].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap().to_string();
    let mut rendered = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut rendered, &e)
        .unwrap();
    (rendered, line)
}

#[test]
fn config_errors_name_the_file_and_point_at_the_entry() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let b = pki.leaf("b", Kind::Ecdsa, &["b.test"]);
    let entry = |cert: &Path, key: &Path| {
        format!(
            "certificates = [\n  {{ cert = \"{}\",\n    key = \"{}\" }},\n]",
            s(cert),
            s(key)
        )
    };

    // A valid table parses, with the defaults.
    let c = Config::parse("config.toml", &config_text(&entry(&a.cert, &a.key)), None).unwrap();
    let tls = c.listeners[0].tls.clone().unwrap();
    assert_eq!(tls.certificates, vec![a.clone()]);
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.alpn, vec!["h2", "http/1.1"]);

    let (text, line) = refused(&config_text(&entry(&a.cert, &b.key)));
    assert!(
        text.contains(&format!(
            "the private key in {} does not match the certificate in {}",
            s(&b.key),
            s(&a.cert)
        )),
        "{text}"
    );
    assert!(line.contains("key = "), "{line}");

    let missing = pki.dir.join("missing.pem");
    let (text, line) = refused(&config_text(&entry(&missing, &a.key)));
    assert!(
        text.contains(&format!("cannot read {}", s(&missing))),
        "{text}"
    );
    assert!(line.contains("cert = "), "{line}");

    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "# nothing here\n").unwrap();
    let (text, line) = refused(&config_text(&entry(&empty, &a.key)));
    assert!(
        text.contains(&format!("{} holds no PEM certificate", s(&empty))),
        "{text}"
    );
    assert!(line.contains("cert = "), "{line}");

    let (text, line) = refused(&config_text(&entry(&a.cert, &a.cert)));
    assert!(
        text.contains(&format!("{} holds no PEM private key", s(&a.cert))),
        "{text}"
    );
    assert!(line.contains("key = "), "{line}");

    let (text, _) = refused(&config_text(&format!(
        "{}\nmin_version = \"1.1\"",
        entry(&a.cert, &a.key)
    )));
    assert!(text.contains("must be \"1.2\" or \"1.3\""), "{text}");
    let (text, _) = refused(&config_text(&format!(
        "{}\nalpn = [\"spdy/3\"]",
        entry(&a.cert, &a.key)
    )));
    assert!(text.contains("cannot offer \"spdy/3\""), "{text}");
    let (text, _) = refused(&config_text("certificates = []"));
    assert!(
        text.contains("a TLS listener needs a certificate"),
        "{text}"
    );

    // accept_proxy is accepted in the tls table: it is the listener's accept_proxy.
    let text = config_text(&format!("{}\naccept_proxy = true", entry(&a.cert, &a.key))).replace(
        "[listeners.tls]",
        "trusted_proxies = [\"127.0.0.1/32\"]\n[listeners.tls]",
    );
    let c = Config::parse("config.toml", &text, None).unwrap();
    assert!(c.listeners[0].accept_proxy);
    assert_eq!(
        c.listeners[0].tls.as_ref().unwrap().accept_proxy,
        Some(true)
    );
}

#[test]
fn check_config_reports_a_key_mismatch() {
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Rsa, &["a.test"]);
    let b = pki.leaf("b", Kind::Ecdsa, &["b.test"]);
    let path = pki.dir.join("config.toml");
    let text = config_text(&format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        s(&a.cert),
        s(&b.key)
    ));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .args(["--config", s(&path), "check-config"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    assert!(stderr.contains(s(&b.key)), "{stderr}");
}

/// The binary itself: SIGHUP re-reads the certificates (before it rereads the config).
#[tokio::test]
async fn sighup_to_the_process_rereads_certificates() {
    use tokio::io::AsyncBufReadExt;
    let pki = Pki::new();
    let a = pki.leaf("a", Kind::Ecdsa, &["a.test"]);
    let db = TestDb::new().await;
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let path = pki.dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{}\"\n\n[[listeners]]\nbind = \"{addr}\"\n[listeners.tls]\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            db.url,
            s(&a.cert),
            s(&a.key)
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_load_balancer"))
        .arg("--config")
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut until = async |wanted: &str| {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push(line.clone());
                if line.contains(wanted) {
                    return;
                }
            }
            panic!("exited before logging {wanted:?}: {seen:#?}");
        })
        .await
        .unwrap_or_else(|_| panic!("never logged {wanted:?}"));
    };
    until("listening").await;
    let verified = verifying(&pki, &[]);
    assert_eq!(served(&verified, addr, "a.test").await, leaf_der(&a.cert));

    pki.sign(&a, Kind::Rsa, &["a.test"]);
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    until("certificate loaded: new handshakes get it").await;
    until("configuration reloaded").await;
    assert_eq!(served(&verified, addr, "a.test").await, leaf_der(&a.cert));
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
}
